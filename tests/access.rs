//! Principals, sessions, lockout and the role × endpoint matrix, through the
//! HTTP API.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use common::*;
use serde_json::{Value, json};
use strongroom::access::{Operation, PrincipalKind, Role, allows};
use strongroom::clock::ManualClock;
use strongroom::keyring::{SealMethod, UnsealInput};
use tower::ServiceExt;
use zeroize::Zeroizing;

const STAFF_PASSWORD: &str = "staff password 123";

async fn login(app: &Router, username: &str, password: &str) -> Reply {
    call(
        app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"username": username, "password": password})),
    )
    .await
}

/// The status `GET /v1/audit/verify` answers `credential`: a cheap probe of
/// whether a credential still works.
async fn verify_status(app: &Router, credential: &str) -> u16 {
    status_of(app, "GET", "/v1/audit/verify", Some(credential), None).await
}

/// A credential holding exactly `role`: an API key for roles a service may
/// hold, otherwise a staff session.
async fn credential_for(vault: &TestVault, app: &Router, role: Role, n: usize) -> String {
    let name = format!("{role:?}-{n}").to_lowercase();
    if role == Role::Collector {
        let owner = vault.principal_id("fixture-payments");
        publishable_key(app, &vault.admin_api_key, &name, &owner, &[TEST_ORIGIN]).await
    } else if role.fits(PrincipalKind::Service) {
        vault.service(&name, role)
    } else {
        vault.staff(&name, role, STAFF_PASSWORD);
        let Reply { status, body, .. } = login(app, &name, STAFF_PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }
}

fn card_body() -> Value {
    json!({"pan": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2031, "holder_name": "Ada Lovelace", "subject_ref": "user-42"})
}

fn kyc_body() -> Value {
    json!({"subject_ref": "user-42", "legal_name": {"given": "Ada", "family": "Lovelace"}, "date_of_birth": "1815-12-10", "nationality": "GB"})
}

/// A card stored through the API with `key`; its id and token.
async fn stored_card(app: &Router, key: &str) -> (String, String) {
    let reply = call(
        app,
        "POST",
        "/v1/records/card",
        Some(key),
        Some(card_body()),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    (
        reply.body["id"].as_str().unwrap().to_owned(),
        reply.body["token"].as_str().unwrap().to_owned(),
    )
}

/// A card of `subject` stored through the API with `key`; its id.
async fn stored_card_of(app: &Router, key: &str, subject: &str) -> String {
    let mut body = card_body();
    body["subject_ref"] = json!(subject);
    let reply = call(app, "POST", "/v1/records/card", Some(key), Some(body)).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_owned()
}

/// Principals that make fixtures for the matrix.
struct Fixtures {
    payments: String,
    officer: String,
    /// A second admin, to approve relay routes the vault's admin creates.
    admin2: String,
    /// The HTTPS processor relay routes point at.
    processor: common::processor::TestProcessor,
}

/// A relay route to the fixture processor that may carry PANs.
fn route_body(name: &str, fx: &Fixtures) -> Value {
    json!({
        "name": name,
        "base_url": fx.processor.url(),
        "methods": ["POST"],
        "fields": ["pan"],
        "ca_pem": fx.processor.ca_pem(),
        "headers": {"authorization": "Bearer sk_matrix"},
    })
}

/// Creates relay route `name` as the vault's first admin; approved by the
/// second when `approve`.
async fn relay_route(vault: &TestVault, app: &Router, fx: &Fixtures, name: &str, approve: bool) {
    let reply = call(
        app,
        "POST",
        "/v1/relay/routes",
        Some(&vault.admin_api_key),
        Some(route_body(name, fx)),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    if approve {
        let path = format!("/v1/relay/routes/{name}/approve");
        let reply = call(app, "POST", &path, Some(&fx.admin2), None).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
}

/// One valid request per operation, for a caller holding `role` with
/// `credential`. The match is exhaustive, so a new operation does not
/// compile until it has a row here.
async fn sample(
    vault: &TestVault,
    app: &Router,
    fx: &Fixtures,
    op: Operation,
    n: usize,
    role: Role,
    credential: &str,
) -> (&'static str, String, Option<Value>) {
    // Ownership applies to services: a payment service works on its own.
    let owner = if role == Role::PaymentService {
        credential
    } else {
        fx.payments.as_str()
    };
    match op {
        Operation::SysSeal => ("POST", "/v1/sys/seal".into(), None),
        Operation::SysBackup => ("GET", "/v1/sys/backup".into(), None),
        Operation::SysMetrics => ("GET", "/v1/sys/metrics".into(), None),
        Operation::PrincipalCreate => (
            "POST",
            "/v1/principals".into(),
            Some(json!({"name": format!("created-{n}"), "kind": "service", "roles": ["auditor"]})),
        ),
        Operation::PrincipalList => ("GET", "/v1/principals".into(), None),
        Operation::PrincipalDisable => {
            let name = format!("victim-{n}");
            vault.service(&name, Role::Auditor);
            (
                "DELETE",
                format!("/v1/principals/{}", vault.principal_id(&name)),
                None,
            )
        }
        Operation::AuditRead => ("GET", "/v1/audit?limit=5".into(), None),
        Operation::AuditVerify => ("GET", "/v1/audit/verify".into(), None),
        Operation::KeysRead => ("GET", "/v1/keys".into(), None),
        Operation::KeysRotate => ("POST", "/v1/keys/card/rotate".into(), None),
        Operation::KeysRewrap => ("POST", "/v1/keys/rewrap".into(), None),
        Operation::KeysDestroy => {
            // The rewrap the matrix started (KeysRewrap) has no runner in
            // tests: it is run to its end, since none may run meanwhile.
            while vault.state.rewrap_step().unwrap() == strongroom::api::rewrap::Step::Batch {}
            // A version made and replaced at once: no DEK uses it.
            let mut made = 0;
            for _ in 0..2 {
                let reply = call(
                    app,
                    "POST",
                    "/v1/keys/kyc/rotate",
                    Some(&vault.admin_api_key),
                    None,
                )
                .await;
                assert_eq!(reply.status, 200, "{}", reply.body);
                made = reply.body["version"].as_u64().unwrap();
            }
            (
                "DELETE",
                format!("/v1/keys/kyc/versions/{}", made - 1),
                None,
            )
        }
        // Canaries for the fixture payment service, a card among them.
        Operation::CanaryCreate => (
            "POST",
            "/v1/canaries".into(),
            Some(json!({
                "owner": vault.principal_id("fixture-payments"),
                "types": ["card", "kyc", "bank_account"],
                "subject_ref": format!("cus-canary-{n}"),
                "card_iin": "431940",
            })),
        ),
        Operation::RecordCreate(t) => {
            let body = match t {
                // A page's key may not say whose card it is.
                strongroom::records::RecordType::Card if role == Role::Collector => {
                    let mut body = card_body();
                    body.as_object_mut().unwrap().remove("subject_ref");
                    body
                }
                strongroom::records::RecordType::Card => card_body(),
                strongroom::records::RecordType::BankAccount => {
                    json!({"iban": "DE89 3704 0044 0532 0130 00", "holder_name": "Ada Lovelace"})
                }
                strongroom::records::RecordType::Kyc => kyc_body(),
            };
            ("POST", format!("/v1/records/{}", t.as_str()), Some(body))
        }
        Operation::RecordRead => (
            "GET",
            format!("/v1/records/{}", stored_card(app, owner).await.0),
            None,
        ),
        Operation::RecordUpdate => (
            "PATCH",
            format!("/v1/records/{}", stored_card(app, owner).await.0),
            Some(json!({"exp_month": 11})),
        ),
        Operation::RecordErase => (
            "DELETE",
            format!("/v1/records/{}", stored_card(app, owner).await.0),
            None,
        ),
        Operation::RecordReveal => (
            "POST",
            format!("/v1/records/{}/reveal", stored_card(app, owner).await.0),
            Some(json!({"fields": ["exp_month"], "reason": "matrix", "ticket": "CASE-1"})),
        ),
        Operation::RecordSearch => (
            "POST",
            "/v1/search".into(),
            Some(
                json!({"field": "email", "value": "nobody@example.org", "reason": "matrix", "ticket": "CASE-1"}),
            ),
        ),
        Operation::AccessRequestCreate => (
            "POST",
            "/v1/access-requests".into(),
            Some(
                json!({"record_id": stored_card(app, owner).await.0, "fields": ["pan"], "reason": "matrix", "ticket": "CASE-1"}),
            ),
        ),
        Operation::AccessRequestList => ("GET", "/v1/access-requests".into(), None),
        Operation::AccessRequestApprove | Operation::AccessRequestDeny => {
            let (id, _) = stored_card(app, &fx.payments).await;
            let body =
                json!({"record_id": id, "fields": ["pan"], "reason": "matrix", "ticket": "CASE-1"});
            let reply = call(
                app,
                "POST",
                "/v1/access-requests",
                Some(&fx.officer),
                Some(body),
            )
            .await;
            let request = reply.body["id"].as_str().unwrap().to_owned();
            let verb = if op == Operation::AccessRequestApprove {
                "approve"
            } else {
                "deny"
            };
            (
                "POST",
                format!("/v1/access-requests/{request}/{verb}"),
                None,
            )
        }
        Operation::TokenCreate => (
            "POST",
            "/v1/tokens".into(),
            Some(json!({"value": "a secret", "kind": "generic"})),
        ),
        Operation::TokenDetokenize => {
            let (_, token) = stored_card(app, owner).await;
            (
                "POST",
                "/v1/tokens/detokenize".into(),
                Some(json!({"tokens": [token]})),
            )
        }
        Operation::TokenRevoke => (
            "DELETE",
            format!("/v1/tokens/{}", stored_card(app, owner).await.1),
            None,
        ),
        Operation::CvcAttach => (
            "POST",
            format!("/v1/records/{}/cvc", stored_card(app, owner).await.0),
            Some(json!({"cvc": "123"})),
        ),
        Operation::RelayRouteCreate => (
            "POST",
            "/v1/relay/routes".into(),
            Some(route_body(&format!("create-{n}"), fx)),
        ),
        Operation::RelayRouteChange => {
            let name = format!("change-{n}");
            relay_route(vault, app, fx, &name, false).await;
            (
                "PUT",
                format!("/v1/relay/routes/{name}"),
                Some(route_body(&name, fx)),
            )
        }
        Operation::RelayRouteApprove => {
            let name = format!("approve-{n}");
            relay_route(vault, app, fx, &name, false).await;
            ("POST", format!("/v1/relay/routes/{name}/approve"), None)
        }
        Operation::RelayRouteList => ("GET", "/v1/relay/routes".into(), None),
        Operation::RelayRouteDelete => {
            let name = format!("delete-{n}");
            relay_route(vault, app, fx, &name, false).await;
            ("DELETE", format!("/v1/relay/routes/{name}"), None)
        }
        Operation::SubjectRead => {
            let subject = format!("read-{n}");
            stored_card_of(app, owner, &subject).await;
            (
                "GET",
                format!("/v1/subjects/{subject}?reason=matrix&ticket=CASE-1"),
                None,
            )
        }
        Operation::SubjectErase => {
            let subject = format!("erase-{n}");
            stored_card_of(app, owner, &subject).await;
            (
                "DELETE",
                format!("/v1/subjects/{subject}"),
                Some(json!({"reason": "matrix", "ticket": "CASE-1"})),
            )
        }
        Operation::SubjectClose => ("POST", format!("/v1/subjects/close-{n}/close"), None),
        Operation::HoldPlace => (
            "POST",
            format!("/v1/records/{}/hold", stored_card(app, owner).await.0),
            Some(json!({"reason": "matrix", "ticket": "CASE-1"})),
        ),
        Operation::HoldRelease => {
            let (id, _) = stored_card(app, &fx.payments).await;
            let justification = json!({"reason": "matrix", "ticket": "CASE-1"});
            let path = format!("/v1/records/{id}/hold");
            let held = call(
                app,
                "POST",
                &path,
                Some(&fx.officer),
                Some(justification.clone()),
            )
            .await;
            assert_eq!(held.status, 201, "{}", held.body);
            ("POST", format!("{path}/release"), Some(justification))
        }
        Operation::TokenErase => {
            let reply = call(
                app,
                "POST",
                "/v1/tokens",
                Some(owner),
                Some(json!({"value": "a secret", "kind": "generic"})),
            )
            .await;
            assert_eq!(reply.status, 201, "{}", reply.body);
            let token = reply.body["token"].as_str().unwrap();
            ("DELETE", format!("/v1/tokens/{token}?erase=true"), None)
        }
        Operation::RelayInvoke => {
            let name = format!("invoke-{n}");
            relay_route(vault, app, fx, &name, true).await;
            let (_, token) = stored_card(app, owner).await;
            (
                "POST",
                format!("/v1/relay/{name}/charges"),
                Some(json!({"card": format!("{{{{{token}:pan}}}}")})),
            )
        }
    }
}

#[tokio::test]
async fn role_matrix_is_generated_from_the_policy_table() {
    // Relay routes point at a processor on 127.0.0.1.
    let vault = new_vault_with(
        SealMethod::Passphrase(Zeroizing::new(PASSPHRASE.to_owned())),
        fast_settings(),
        Arc::new(strongroom::clock::SystemClock),
        strongroom::api::AppSettings {
            relay: strongroom::relay::upstream::RelaySettings {
                allow_private_destinations: true,
                ..Default::default()
            },
            ..test_settings()
        },
    );
    let app = vault.app();
    let ca = common::tls::TestCa::new("matrix CA");
    let fx = Fixtures {
        payments: vault.service("fixture-payments", Role::PaymentService),
        officer: credential_for(&vault, &app, Role::ComplianceOfficer, 0).await,
        admin2: vault.service("fixture-admin-2", Role::Admin),
        processor: common::processor::TestProcessor::start(
            &ca,
            common::processor::Behaviour::Charge,
        )
        .await,
    };
    let mut n = 0;
    let mut checked = 0;
    for op in Operation::ALL {
        for role in Role::ALL {
            n += 1;
            let credential = credential_for(&vault, &app, role, n).await;
            let (method, path, body) = sample(&vault, &app, &fx, op, n, role, &credential).await;
            let Reply {
                status,
                body: reply,
                ..
            } = call_as(&app, method, &path, Some(&credential), body).await;
            if allows(role, op) {
                assert!(
                    (200..300).contains(&status),
                    "{role:?} {op:?}: {status} {reply}"
                );
                if op == Operation::SysSeal {
                    assert!(vault.keyring.is_sealed() && !vault.keyring.holds_key_material());
                    vault
                        .keyring
                        .unseal(UnsealInput::Passphrase(Zeroizing::new(PASSPHRASE.into())))
                        .unwrap();
                }
            } else {
                assert_eq!(status, 403, "{role:?} {op:?}: {reply}");
                assert_eq!(reply["code"], "forbidden");
                assert!(!vault.keyring.is_sealed());
                // The denial is in the audit log.
                let Reply {
                    status: _,
                    body: page,
                    ..
                } = call(
                    &app,
                    "GET",
                    &format!("/v1/audit?action={}&limit=1000", op.action()),
                    Some(&vault.admin_api_key),
                    None,
                )
                .await;
                let denied = page["entries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["outcome"] == "denied" && e["action"] == op.action());
                assert!(denied, "{role:?} {op:?}: denial not audited");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, Operation::ALL.len() * Role::ALL.len());
}

/// Readiness needs no credential: every role (and none, and a bad one)
/// gets the same answer, 200 while unsealed and 503 `sealed` while sealed.
#[tokio::test]
async fn readiness_answers_every_role_alike() {
    let vault = new_vault_with(
        SealMethod::Passphrase(Zeroizing::new(PASSPHRASE.to_owned())),
        fast_settings(),
        Arc::new(strongroom::clock::SystemClock),
        test_settings(),
    );
    let app = vault.app();
    vault.service("fixture-payments", Role::PaymentService);
    let mut credentials = vec![None, Some("nonsense".to_owned())];
    for (n, role) in Role::ALL.into_iter().enumerate() {
        credentials.push(Some(credential_for(&vault, &app, role, n).await));
    }
    for credential in &credentials {
        let reply = call_as(&app, "GET", "/v1/sys/ready", credential.as_deref(), None).await;
        assert_eq!(
            (reply.status, reply.body.clone()),
            (200, json!({"ready": true})),
            "{credential:?}"
        );
    }
    vault.keyring.seal();
    for credential in &credentials {
        let reply = call_as(&app, "GET", "/v1/sys/ready", credential.as_deref(), None).await;
        assert_eq!(reply.status, 503, "{credential:?}");
        assert_eq!(reply.body["code"], "sealed");
    }
}

#[tokio::test]
async fn missing_malformed_unknown_disabled_and_ended_credentials_are_401() {
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2026-06-01 09:00 UTC),
    ));
    let vault = new_vault(
        SealMethod::Passphrase(Zeroizing::new(PASSPHRASE.into())),
        fast_settings(),
        clock.clone(),
    );
    let app = vault.app();
    let unknown_key = format!("srk_{}", "a".repeat(64));
    let unknown_session = format!("sst_{}", "b".repeat(64));
    for bad in [
        "",
        "nonsense",
        "srk_123",
        unknown_key.as_str(),
        unknown_session.as_str(),
    ] {
        let Reply { status, body, .. } = call(&app, "GET", "/v1/principals", Some(bad), None).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthenticated")),
            "{bad:?}"
        );
    }
    let Reply { status, .. } = call(&app, "GET", "/v1/principals", None, None).await;
    assert_eq!(status, 401);
    let basic = Request::builder()
        .uri("/v1/principals")
        .header("authorization", format!("Basic {}", vault.admin_api_key))
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.clone().oneshot(basic).await.unwrap().status(), 401);

    // Disabled: its key stops at once.
    let doomed = vault.service("doomed", Role::Auditor);
    assert_eq!(verify_status(&app, &doomed).await, 200);
    let id = vault.principal_id("doomed");
    assert_eq!(
        status_of(
            &app,
            "DELETE",
            &format!("/v1/principals/{id}"),
            Some(&vault.admin_api_key),
            None
        )
        .await,
        204
    );
    assert_eq!(verify_status(&app, &doomed).await, 401);

    // Expired: idle for 15 minutes.
    vault.staff("idle", Role::Auditor, STAFF_PASSWORD);
    let Reply {
        status: _,
        body: session,
        ..
    } = login(&app, "idle", STAFF_PASSWORD).await;
    let token = session["token"].as_str().unwrap();
    clock.advance(time::Duration::minutes(14));
    assert_eq!(verify_status(&app, token).await, 200);
    clock.advance(time::Duration::minutes(14));
    // Used 14 minutes ago (last_seen moved on the last call): still alive.
    assert_eq!(verify_status(&app, token).await, 200);
    clock.advance(time::Duration::minutes(16));
    assert_eq!(verify_status(&app, token).await, 401);

    // Absolute: eight hours, however busy.
    let Reply {
        status: _,
        body: session,
        ..
    } = login(&app, "idle", STAFF_PASSWORD).await;
    let token = session["token"].as_str().unwrap();
    for _ in 0..48 {
        clock.advance(time::Duration::minutes(10));
        let Reply { status, .. } = call(&app, "GET", "/v1/audit/verify", Some(token), None).await;
        if status == 401 {
            break;
        }
    }
    assert_eq!(verify_status(&app, token).await, 401);
}

#[tokio::test]
async fn login_and_logout() {
    let vault = passphrase_vault();
    let app = vault.app();
    vault.staff("alice", Role::Auditor, STAFF_PASSWORD);
    let Reply {
        status,
        body: session,
        ..
    } = login(&app, "alice", STAFF_PASSWORD).await;
    assert_eq!(status, 200);
    let token = session["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("sst_") && token.len() == 68);
    assert!(session["expires_at"].as_str().unwrap().ends_with('Z'));
    // Usernames are case-insensitive.
    assert_eq!(login(&app, "ALICE", STAFF_PASSWORD).await.status, 200);
    assert_eq!(
        status_of(&app, "GET", "/v1/audit?limit=1", Some(&token), None).await,
        200
    );
    assert_eq!(
        status_of(&app, "POST", "/v1/auth/logout", Some(&token), None).await,
        204
    );
    assert_eq!(
        status_of(&app, "GET", "/v1/audit?limit=1", Some(&token), None).await,
        401
    );
    assert_eq!(
        status_of(&app, "POST", "/v1/auth/logout", Some(&token), None).await,
        401
    );
    // Logout with an API key is a malformed request, not a logout.
    let Reply { status, body, .. } = call(
        &app,
        "POST",
        "/v1/auth/logout",
        Some(&vault.admin_api_key),
        None,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("malformed_request"))
    );

    // Wrong password, unknown user, a service's name: all the same 401.
    for (user, password) in [
        ("alice", "wrong password!!"),
        ("nobody", STAFF_PASSWORD),
        ("admin", STAFF_PASSWORD),
    ] {
        let Reply { status, body, .. } = login(&app, user, password).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthenticated")),
            "{user}"
        );
    }
    let Reply {
        status: _,
        body: page,
        ..
    } = call(
        &app,
        "GET",
        "/v1/audit?action=auth.login_failed",
        Some(&vault.admin_api_key),
        None,
    )
    .await;
    let failures = page["entries"].as_array().unwrap();
    assert_eq!(failures.len(), 3);
    // Attempted usernames appear only as HMACs.
    assert!(
        failures
            .iter()
            .all(|e| e["target"].as_str().unwrap().starts_with("hmac:"))
    );
    assert!(!page.to_string().contains("nobody"));
    let Reply {
        status: _,
        body: page,
        ..
    } = call(
        &app,
        "GET",
        "/v1/audit?action=auth.login",
        Some(&vault.admin_api_key),
        None,
    )
    .await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn repeated_failures_lock_the_username_for_a_growing_period() {
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2026-06-01 09:00 UTC),
    ));
    let vault = new_vault(
        SealMethod::Passphrase(Zeroizing::new(PASSPHRASE.into())),
        fast_settings(),
        clock.clone(),
    );
    let app = vault.app();
    vault.staff("bob", Role::Auditor, STAFF_PASSWORD);
    for _ in 0..5 {
        assert_eq!(login(&app, "bob", "not the password").await.status, 401);
    }
    // Locked: even the right password is refused.
    let Reply {
        status,
        body,
        headers,
    } = call(
        &app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"username": "bob", "password": STAFF_PASSWORD})),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")));
    assert_eq!(headers["retry-after"], "60");
    clock.advance(time::Duration::seconds(61));
    // One more failure after the lock: twice as long.
    assert_eq!(login(&app, "bob", "not the password").await.status, 401);
    let Reply {
        status: _,
        body: _,
        headers,
    } = call(
        &app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"username": "bob", "password": STAFF_PASSWORD})),
    )
    .await;
    assert_eq!(headers["retry-after"], "120");
    clock.advance(time::Duration::seconds(121));
    assert_eq!(login(&app, "bob", STAFF_PASSWORD).await.status, 200);
    // Success cleared the count.
    assert_eq!(login(&app, "bob", "not the password").await.status, 401);
    assert_eq!(login(&app, "bob", STAFF_PASSWORD).await.status, 200);

    // While locked, refusals are audited at most once a minute.
    let locked_entries = |vault: &TestVault| {
        audit_entries(vault)
            .iter()
            .filter(|e| e["reason"] == "locked")
            .count()
    };
    for _ in 0..5 {
        assert_eq!(login(&app, "bob", "not the password").await.status, 401);
    }
    let before = locked_entries(&vault);
    for _ in 0..20 {
        assert_eq!(login(&app, "bob", STAFF_PASSWORD).await.status, 429);
    }
    assert_eq!(locked_entries(&vault) - before, 1);

    // Unknown usernames lock the same way, so locking reveals nothing.
    for _ in 0..5 {
        assert_eq!(login(&app, "ghost", "whatever whatever").await.status, 401);
    }
    assert_eq!(login(&app, "ghost", "whatever whatever").await.status, 429);
}

#[tokio::test]
async fn disabling_ends_sessions_and_keys_at_once() {
    let vault = passphrase_vault();
    let app = vault.app();
    vault.staff("carol", Role::Auditor, STAFF_PASSWORD);
    let Reply {
        status: _,
        body: s1,
        ..
    } = login(&app, "carol", STAFF_PASSWORD).await;
    let Reply {
        status: _,
        body: s2,
        ..
    } = login(&app, "carol", STAFF_PASSWORD).await;
    let id = vault.principal_id("carol");
    let Reply { status, .. } = call(
        &app,
        "DELETE",
        &format!("/v1/principals/{id}"),
        Some(&vault.admin_api_key),
        None,
    )
    .await;
    assert_eq!(status, 204);
    for session in [&s1, &s2] {
        assert_eq!(
            status_of(
                &app,
                "GET",
                "/v1/audit?limit=1",
                Some(session["token"].as_str().unwrap()),
                None
            )
            .await,
            401
        );
    }
    assert_eq!(login(&app, "carol", STAFF_PASSWORD).await.status, 401);
    let Reply {
        status: _,
        body: list,
        ..
    } = call(
        &app,
        "GET",
        "/v1/principals",
        Some(&vault.admin_api_key),
        None,
    )
    .await;
    let carol = list["principals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(carol["disabled"], true);
    assert_eq!(
        status_of(
            &app,
            "DELETE",
            "/v1/principals/prn_nope",
            Some(&vault.admin_api_key),
            None
        )
        .await,
        404
    );
}

#[tokio::test]
async fn creating_principals_validates_and_never_lists_secrets() {
    let vault = passphrase_vault();
    let app = vault.app();
    let admin = vault.admin_api_key.clone();
    let create = |body: Value| {
        let app = app.clone();
        let admin = admin.clone();
        async move { call(&app, "POST", "/v1/principals", Some(&admin), Some(body)).await }
    };
    let Reply {
        status,
        body: created,
        ..
    } = create(json!({"name": "payments-api", "kind": "service", "roles": ["payment_service"]}))
        .await;
    assert_eq!(status, 201);
    let api_key = created["api_key"].as_str().unwrap().to_owned();
    assert!(api_key.starts_with("srk_"));
    let Reply { status, body: created, .. } = create(json!({"name": "dora", "kind": "staff", "roles": ["compliance_officer"], "password": STAFF_PASSWORD})).await;
    assert_eq!(status, 201);
    assert!(created.get("api_key").is_none());
    assert_eq!(login(&app, "dora", STAFF_PASSWORD).await.status, 200);

    let cases = [
        (
            json!({"name": "x", "kind": "service", "roles": ["root"]}),
            "roles[0]",
        ),
        (
            json!({"name": "x", "kind": "service", "roles": []}),
            "roles",
        ),
        (
            json!({"name": "x", "kind": "staff", "roles": ["auditor"]}),
            "password",
        ),
        (
            json!({"name": "x", "kind": "staff", "roles": ["auditor"], "password": "short"}),
            "password",
        ),
        (
            json!({"name": "x", "kind": "service", "roles": ["auditor"], "password": STAFF_PASSWORD}),
            "password",
        ),
        (
            json!({"name": "x", "kind": "staff", "roles": ["payment_service"], "password": STAFF_PASSWORD}),
            "roles",
        ),
        (
            json!({"name": "x", "kind": "service", "roles": ["compliance_officer"]}),
            "roles",
        ),
        (
            json!({"name": "Bad Name", "kind": "service", "roles": ["auditor"]}),
            "name",
        ),
        (
            json!({"name": "x", "kind": "robot", "roles": ["auditor"]}),
            "kind",
        ),
        (
            json!({"name": "x", "kind": "service", "roles": ["auditor"], "extra": 1}),
            "extra",
        ),
    ];
    for (body, field) in cases {
        let Reply {
            status,
            body: problem,
            ..
        } = create(body.clone()).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(problem["errors"][0]["field"], field, "{body}: {problem}");
        assert!(!problem.to_string().contains(STAFF_PASSWORD));
    }
    let Reply {
        status,
        body: problem,
        ..
    } = create(json!({"name": "payments-api", "kind": "service", "roles": ["auditor"]})).await;
    assert_eq!((status, problem["code"].as_str()), (409, Some("conflict")));

    let Reply {
        status: _,
        body: list,
        ..
    } = call(&app, "GET", "/v1/principals", Some(&admin), None).await;
    let text = list.to_string();
    assert!(text.contains("payments-api") && text.contains("dora"));
    assert!(!text.contains("srk_") && !text.contains("argon2") && !text.contains(STAFF_PASSWORD));
}

/// The audited failed logins of `reason` ("wrong password", "unknown
/// username", …): one per full password check.
fn failed_logins(vault: &TestVault, reason: &str) -> usize {
    audit_entries(vault)
        .iter()
        .filter(|e| e["action"] == "auth.login_failed" && e["reason"] == reason)
        .count()
}

/// 200 wrong passwords at once for one username: the lockout is a
/// reservation taken before the password check (and one check runs at a
/// time per username), so no more than `threshold` checks happen, each a
/// 401 with its audit entry, and the rest are 429. Every check was counted:
/// the lock falls after exactly 5 in all, and then the right password is
/// refused too. Unknown usernames are held to the same count.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_wrong_passwords_get_no_more_checks_than_the_lockout_allows() {
    let vault = passphrase_vault();
    let app = vault.app();
    vault.staff("dave", Role::Auditor, STAFF_PASSWORD);
    for (username, reason) in [("dave", "wrong password"), ("ghost", "unknown username")] {
        let attempts: Vec<_> = (0..200)
            .map(|_| {
                let app = app.clone();
                tokio::spawn(async move { login(&app, username, "not the password").await })
            })
            .collect();
        let (mut checked, mut limited) = (0, 0);
        for attempt in attempts {
            let Reply { status, body, .. } = attempt.await.unwrap();
            match status {
                401 => checked += 1,
                429 => {
                    assert_eq!(body["code"], "rate_limited");
                    limited += 1;
                }
                other => panic!("{username}: unexpected {other}: {body}"),
            }
        }
        assert!(
            (1..=5).contains(&checked),
            "{username}: {checked} password checks, the lockout allows 5"
        );
        assert_eq!(checked + limited, 200);
        assert_eq!(failed_logins(&vault, reason), checked, "{username}");
        // One at a time now, until the lock: 5 checks in all.
        for _ in 0..10 {
            if login(&app, username, "not the password").await.status != 401 {
                break;
            }
            checked += 1;
        }
        assert_eq!(checked, 5, "{username}");
        assert_eq!(failed_logins(&vault, reason), 5, "{username}");
    }
    // Locked: the right password gets no check and no session.
    let Reply { status, body, .. } = login(&app, "dave", STAFF_PASSWORD).await;
    assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")));
    assert!(body.get("token").is_none());
}
