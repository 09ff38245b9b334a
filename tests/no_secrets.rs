//! Invariant 1: no credential, key or plaintext personal data reaches the
//! store, the audit log or the log output. In a test binary of its own: it
//! installs the process-wide log subscriber, shared by its tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use serde_json::{Value, json};
use strongroom::audit::export_store;

const STAFF_PASSWORD: &str = "staff password 123";

#[tokio::test]
async fn no_credential_reaches_the_store_the_audit_log_or_the_logs() {
    let captured = captured_log();
    let vault = shares_vault(3, 2);
    let app = vault.app();
    let Reply {
        status: _,
        body: created,
        ..
    } = call(
        &app,
        "POST",
        "/v1/principals",
        Some(&vault.admin_api_key),
        Some(json!({"name": "svc", "kind": "service", "roles": ["auditor"]})),
    )
    .await;
    let service_key = created["api_key"].as_str().unwrap().to_owned();
    call(&app, "POST", "/v1/principals", Some(&vault.admin_api_key), Some(json!({"name": "frank", "kind": "staff", "roles": ["auditor"], "password": STAFF_PASSWORD}))).await;
    let Reply {
        status: _,
        body: session,
        ..
    } = call(
        &app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"username": "frank", "password": STAFF_PASSWORD})),
    )
    .await;
    let token = session["token"].as_str().unwrap().to_owned();
    // A password typed into the username field.
    let typed_as_username = "Hunter2-typed-in-the-wrong-box";
    call(
        &app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"username": typed_as_username, "password": "x"})),
    )
    .await;
    call(
        &app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"username": "frank", "password": "frank's wrong password"})),
    )
    .await;
    assert_eq!(
        status_of(&app, "GET", "/v1/audit", Some(&token), None).await,
        200
    );
    assert_eq!(
        status_of(&app, "GET", "/v1/audit", Some(&service_key), None).await,
        200
    );
    call(&app, "POST", "/v1/auth/logout", Some(&token), None).await;
    vault.state.seal();
    vault.store.flush().unwrap();

    let secrets = [
        vault.admin_api_key.as_str(),
        service_key.as_str(),
        token.as_str(),
        STAFF_PASSWORD,
        typed_as_username,
        &typed_as_username.to_lowercase(),
        "frank's wrong password",
    ];
    let dirs = [vault.data_dir(), vault.keys_dir()];
    let dirs: Vec<&std::path::Path> = dirs.iter().map(|d| d.as_path()).collect();
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("request"),
        "the log capture saw nothing: {} bytes: {log}",
        log.len()
    );
    let mut export = Vec::new();
    export_store(vault.store.as_ref(), &mut export).unwrap();
    let export = String::from_utf8(export).unwrap();
    assert!(export.contains("auth.login_failed"));
    for secret in secrets {
        assert!(
            files_containing(&dirs, secret.as_bytes()).is_empty(),
            "{secret:?} is on disk"
        );
        assert!(!log.contains(secret), "{secret:?} is in the log");
        assert!(!export.contains(secret), "{secret:?} is in the audit log");
    }
}

#[tokio::test]
async fn no_personal_data_reaches_the_store_the_audit_log_or_the_logs() {
    let captured = captured_log();
    let vault = passphrase_vault();
    let app = vault.app();
    let payments = vault.service("payments", strongroom::access::Role::PaymentService);
    for (name, role) in [
        ("officer", strongroom::access::Role::ComplianceOfficer),
        ("approver", strongroom::access::Role::ComplianceApprover),
    ] {
        vault.staff(name, role, STAFF_PASSWORD);
    }
    let login = |name: &'static str| {
        let app = app.clone();
        async move {
            call(
                &app,
                "POST",
                "/v1/auth/login",
                None,
                Some(json!({"username": name, "password": STAFF_PASSWORD})),
            )
            .await
            .body["token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let officer = login("officer").await;
    let approver = login("approver").await;

    // Distinctive values, each of which must never be found in the clear.
    let pan = "5555555555554444";
    let iban = "GB82WEST12345698765432";
    let (given, family) = ("Wilhelmina", "Quixotefeather");
    let (dob, street, postcode) = ("1987-03-14", "77 Zanzibar Crescent", "ZX9 8QY");
    let (passport, email, phone) = ("X98765432", "wilhelmina.q@example.net", "+442071838750");
    let generic = "generic-secret-value-8841";
    let card = call(&app, "POST", "/v1/records/card", Some(&payments), Some(json!({"pan": pan, "exp_month": 7, "exp_year": 2031, "holder_name": format!("{given} {family}")}))).await;
    assert_eq!(card.status, 201);
    let bank = call(
        &app,
        "POST",
        "/v1/records/bank_account",
        Some(&payments),
        Some(json!({"iban": iban, "holder_name": family})),
    )
    .await;
    assert_eq!(bank.status, 201);
    let kyc = call(&app, "POST", "/v1/records/kyc", Some(&payments), Some(json!({
        "legal_name": {"given": given, "family": family}, "date_of_birth": dob,
        "address": {"line1": street, "city": "Lymington", "postal_code": postcode, "country": "GB"},
        "national_id": {"type": "passport", "number": passport, "country": "GB"},
        "email": email, "phone": phone
    }))).await;
    assert_eq!(kyc.status, 201);
    let kyc_id = kyc.body["id"].as_str().unwrap().to_owned();
    let token = call(
        &app,
        "POST",
        "/v1/tokens",
        Some(&payments),
        Some(json!({"value": generic, "kind": "generic"})),
    )
    .await
    .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    call(
        &app,
        "POST",
        "/v1/tokens/detokenize",
        Some(&payments),
        Some(json!({"tokens": [token, card.body["token"], card.body["pan_token"]]})),
    )
    .await;
    // Search and reveal, including the four-eyes path.
    let why = |extra: Value| {
        let mut body = json!({"reason": "AML review", "ticket": "CASE-9"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for (field, value) in [
        ("national_id", passport),
        ("email", email),
        ("phone", phone),
        ("pan", pan),
    ] {
        let reply = call(
            &app,
            "POST",
            "/v1/search",
            Some(&officer),
            Some(why(
                json!({"field": field, "value": value, "country": "GB"}),
            )),
        )
        .await;
        assert_eq!(
            reply.body["matches"].as_array().unwrap().len(),
            1,
            "{field}"
        );
    }
    let ar = call(
        &app,
        "POST",
        "/v1/access-requests",
        Some(&officer),
        Some(why(json!({"record_id": kyc_id, "fields": ["national_id"]}))),
    )
    .await
    .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    call(
        &app,
        "POST",
        &format!("/v1/access-requests/{ar}/approve"),
        Some(&approver),
        None,
    )
    .await;
    let revealed = call(&app, "POST", &format!("/v1/records/{kyc_id}/reveal"), Some(&officer), Some(why(json!({"fields": ["national_id", "date_of_birth", "address", "legal_name", "email", "phone"]})))).await;
    assert_eq!(revealed.body["fields"]["national_id"]["number"], passport);
    call(
        &app,
        "PATCH",
        &format!("/v1/records/{kyc_id}"),
        Some(&payments),
        Some(json!({"phone": "+442071838751"})),
    )
    .await;
    vault.state.seal();
    vault.store.flush().unwrap();

    let dirs = [vault.data_dir(), vault.keys_dir()];
    let dirs: Vec<&std::path::Path> = dirs.iter().map(|d| d.as_path()).collect();
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let mut export = Vec::new();
    export_store(vault.store.as_ref(), &mut export).unwrap();
    let export = String::from_utf8(export).unwrap();
    assert!(export.contains("record.reveal") && export.contains("record.search"));
    for secret in [
        pan,
        iban,
        given,
        family,
        dob,
        street,
        postcode,
        passport,
        email,
        phone,
        "+442071838751",
        generic,
        "GB:X98765432",
    ] {
        assert!(
            files_containing(&dirs, secret.as_bytes()).is_empty(),
            "{secret:?} is on disk"
        );
        assert!(!log.contains(secret), "{secret:?} is in the log");
        assert!(!export.contains(secret), "{secret:?} is in the audit log");
    }
}
