//! The payment path and compliance lookups through the HTTP API: records,
//! masked views, tokens, search, reveal and four-eyes approvals.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use axum::Router;
use common::*;
use serde_json::{Value, json};
use strongroom::access::Role;
use strongroom::api::AppSettings;
use strongroom::clock::{Clock, ManualClock};
use strongroom::keyring::SealMethod;
use strongroom::records::{RecordData, RecordType, luhn_valid};
use zeroize::Zeroizing;

const PAN: &str = "4242424242424242";
const OFFICER_PASSWORD: &str = "officer password 1";

struct World {
    vault: TestVault,
    app: Router,
    payments: String,
    other_payments: String,
    officer: String,
    officer2: String,
    approver: String,
    clock: Arc<ManualClock>,
}

async fn session(app: &Router, name: &str) -> String {
    let reply = call(
        app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"username": name, "password": OFFICER_PASSWORD})),
    )
    .await;
    reply.body["token"].as_str().unwrap().to_owned()
}

async fn world_with(settings: AppSettings) -> World {
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2026-11-27 09:00 UTC),
    ));
    let vault = new_vault_with(
        SealMethod::Passphrase(Zeroizing::new(PASSPHRASE.into())),
        fast_settings(),
        clock.clone(),
        settings,
    );
    let app = vault.app();
    let payments = vault.service("payments", Role::PaymentService);
    let other_payments = vault.service("other-payments", Role::PaymentService);
    for (name, role) in [
        ("officer", Role::ComplianceOfficer),
        ("officer2", Role::ComplianceOfficer),
        ("approver", Role::ComplianceApprover),
    ] {
        vault.staff(name, role, OFFICER_PASSWORD);
    }
    let officer = session(&app, "officer").await;
    let officer2 = session(&app, "officer2").await;
    let approver = session(&app, "approver").await;
    World {
        vault,
        app,
        payments,
        other_payments,
        officer,
        officer2,
        approver,
        clock,
    }
}

async fn world() -> World {
    world_with(test_settings()).await
}

/// Stores a record as the payment service; its id.
async fn stored_id(w: &World, kind: &str, body: Value) -> String {
    stored(w, kind, body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Stores a record as the payment service; the answer's body.
async fn stored(w: &World, kind: &str, body: Value) -> Value {
    let reply = call(
        &w.app,
        "POST",
        &format!("/v1/records/{kind}"),
        Some(&w.payments),
        Some(body),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body
}

fn card() -> Value {
    json!({"pan": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2030, "holder_name": "Ada Lovelace", "subject_ref": "user-42"})
}

fn kyc() -> Value {
    json!({
        "subject_ref": "user-42",
        "legal_name": {"given": "Ada", "family": "Lovelace"},
        "date_of_birth": "1815-12-10",
        "nationality": "GB",
        "address": {"line1": "12 St James's Square", "city": "London", "postal_code": "SW1Y 4JH", "country": "GB"},
        "national_id": {"type": "passport", "number": "925076473", "country": "GB"},
        "email": "Ada@Example.org",
        "phone": "+44 20 7946 0958"
    })
}

#[tokio::test]
async fn creating_records_answers_the_contract_shapes() {
    let w = world().await;
    let reply = call(
        &w.app,
        "POST",
        "/v1/records/card",
        Some(&w.payments),
        Some(card()),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let b = &reply.body;
    assert!(b["id"].as_str().unwrap().starts_with("card_"));
    assert!(b["token"].as_str().unwrap().starts_with("tok_"));
    let pan_token = b["pan_token"].as_str().unwrap();
    assert_eq!(
        (&pan_token[..6], &pan_token[12..], pan_token.len()),
        ("424242", "4242", 16)
    );
    assert!(!luhn_valid(pan_token) && pan_token != PAN);
    assert_eq!(
        (b["brand"].as_str(), b["last4"].as_str()),
        (Some("visa"), Some("4242"))
    );
    assert_eq!(
        (b["exp_month"].as_u64(), b["exp_year"].as_u64()),
        (Some(12), Some(2030))
    );
    assert_eq!(b["fingerprint"].as_str().unwrap().len(), 32);
    // The same card again: same fingerprint, other tokens.
    let again = call(
        &w.app,
        "POST",
        "/v1/records/card",
        Some(&w.payments),
        Some(card()),
    )
    .await
    .body;
    assert_eq!(again["fingerprint"], b["fingerprint"]);
    assert_ne!(again["token"], b["token"]);
    assert_ne!(again["pan_token"], b["pan_token"]);

    let bank = call(&w.app, "POST", "/v1/records/bank_account", Some(&w.payments), Some(json!({"iban": "DE89 3704 0044 0532 0130 00", "holder_name": "Ada Lovelace", "subject_ref": "user-42"}))).await;
    assert_eq!(bank.status, 201, "{}", bank.body);
    assert!(bank.body["id"].as_str().unwrap().starts_with("bank_"));
    assert_eq!(
        (bank.body["last4"].as_str(), bank.body["country"].as_str()),
        (Some("3000"), Some("DE"))
    );
    let us = call(&w.app, "POST", "/v1/records/bank_account", Some(&w.payments), Some(json!({"account_number": "000123456789", "routing_number": "011000015", "country": "US"}))).await;
    assert_eq!((us.status, us.body["last4"].as_str()), (201, Some("6789")));

    let k = call(
        &w.app,
        "POST",
        "/v1/records/kyc",
        Some(&w.payments),
        Some(kyc()),
    )
    .await;
    assert_eq!(k.status, 201, "{}", k.body);
    assert!(k.body["id"].as_str().unwrap().starts_with("kyc_"));
    assert_eq!(k.body["version"], 1);
    // Officers may store KYC too.
    assert_eq!(
        status_of(
            &w.app,
            "POST",
            "/v1/records/kyc",
            Some(&w.officer),
            Some(kyc())
        )
        .await,
        201
    );
}

#[tokio::test]
async fn bad_records_are_refused_naming_the_field_never_the_value() {
    let w = world().await;
    let cases = [
        (
            "card",
            json!({"pan": "4242424242424241", "exp_month": 12, "exp_year": 2030}),
            "pan",
        ),
        (
            "card",
            json!({"pan": PAN, "exp_month": 12, "exp_year": 2030, "cvv": "123"}),
            "cvv",
        ),
        (
            "card",
            json!({"pan": PAN, "exp_month": 12, "exp_year": 2030, "CVC": "123"}),
            "CVC",
        ),
        (
            "card",
            json!({"pan": PAN, "exp_month": 1, "exp_year": 2026}),
            "exp_month",
        ),
        (
            "card",
            json!({"pan": PAN, "exp_month": 13, "exp_year": 2030}),
            "exp_month",
        ),
        (
            "card",
            json!({"pan": PAN, "exp_month": 12, "exp_year": 2030, "nickname": "x"}),
            "nickname",
        ),
        (
            "bank_account",
            json!({"iban": "DE89 3704 0044 0532 0130 01"}),
            "iban",
        ),
        (
            "bank_account",
            json!({"account_number": "123", "routing_number": "011000015", "country": "US"}),
            "account_number",
        ),
        (
            "bank_account",
            json!({"account_number": "123456", "routing_number": "011000016", "country": "US"}),
            "routing_number",
        ),
        (
            "kyc",
            json!({"legal_name": {"given": "Ada", "family": "L"}, "date_of_birth": "2023-02-29"}),
            "date_of_birth",
        ),
        (
            "kyc",
            json!({"legal_name": {"given": "Ada", "family": "L"}, "date_of_birth": "2099-01-01"}),
            "date_of_birth",
        ),
        (
            "kyc",
            json!({"legal_name": {"given": "Ada", "family": "L"}, "date_of_birth": "1990-01-01", "nationality": "XX"}),
            "nationality",
        ),
        (
            "kyc",
            json!({"legal_name": {"given": "Ada", "family": "L"}, "date_of_birth": "1990-01-01", "phone": "07946 0958"}),
            "phone",
        ),
        (
            "kyc",
            json!({"legal_name": {"given": "Ada", "family": "L"}, "date_of_birth": "1990-01-01", "email": "ada.example.org"}),
            "email",
        ),
        (
            "kyc",
            json!({"legal_name": {"given": "Ada", "family": "x".repeat(101)}, "date_of_birth": "1990-01-01"}),
            "legal_name.family",
        ),
    ];
    let mut cases = cases.to_vec();
    // Values a client put in key position are not echoed as field names.
    cases.push((
        "card",
        json!({"pan": PAN, "exp_month": 12, "exp_year": 2030, "5555555555554444": 1}),
        "(unrecognised field)",
    ));
    cases.push(("kyc", json!({"legal_name": {"given": "Ada", "family": "L", "ada@example.org": 1}, "date_of_birth": "1990-01-01"}), "legal_name.(unrecognised field)"));
    for (kind, body, field) in cases {
        let text = body.to_string();
        let reply = call(
            &w.app,
            "POST",
            &format!("/v1/records/{kind}"),
            Some(&w.payments),
            Some(body),
        )
        .await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (422, Some("validation_failed")),
            "{text}"
        );
        assert_eq!(
            reply.body["errors"][0]["field"], field,
            "{text}: {}",
            reply.body
        );
        // The problem names fields, never submitted values.
        for secret in [
            "4242424242424241",
            "2023-02-29",
            "07946",
            "ada.example.org",
            "011000016",
            "DE89370400440532013001",
        ] {
            assert!(
                !reply.body.to_string().contains(secret),
                "{text}: value echoed"
            );
        }
    }
    // A record type that does not exist: `/v1/records/passport` would be
    // a record id, which takes GET, PATCH and DELETE only.
    assert_eq!(
        status_of(
            &w.app,
            "POST",
            "/v1/records/passport",
            Some(&w.payments),
            Some(card())
        )
        .await,
        405
    );
}

#[tokio::test]
async fn masked_views_per_role_and_ownership() {
    let w = world().await;
    let id = stored_id(&w, "kyc", kyc()).await;
    let path = format!("/v1/records/{id}");
    let view = call(&w.app, "GET", &path, Some(&w.payments), None).await;
    assert_eq!(view.status, 200);
    let v = &view.body;
    assert_eq!(v["legal_name"], "A. L.");
    assert_eq!(v["date_of_birth"], "1815");
    assert_eq!(v["address"], json!({"country": "GB"}));
    assert_eq!(
        v["national_id"],
        json!({"type": "passport", "country": "GB", "last4": "6473"})
    );
    assert_eq!(v["email"], "a***@example.org");
    assert_eq!(v["phone"], "+********0958");
    assert!(v.get("nationality").is_none());
    for key in [
        "id",
        "type",
        "version",
        "created_at",
        "updated_at",
        "subject_ref",
    ] {
        assert!(!v[key].is_null(), "{key}");
    }
    // Another service: not found. Compliance: everything, masked.
    assert_eq!(
        status_of(&w.app, "GET", &path, Some(&w.other_payments), None).await,
        404
    );
    let officer_view = call(&w.app, "GET", &path, Some(&w.officer), None)
        .await
        .body;
    assert_eq!(officer_view["nationality"], "GB");

    let card_id = stored_id(&w, "card", card()).await;
    let card_path = format!("/v1/records/{card_id}");
    let service_card = call(&w.app, "GET", &card_path, Some(&w.payments), None)
        .await
        .body;
    assert!(service_card.get("first6").is_none());
    // Compliance staff see brand and last 4 only: with the first 6 too, a
    // PAN search would have about 10^5 candidates left to guess.
    for staff in [&w.officer, &w.approver] {
        let staff_card = call(&w.app, "GET", &card_path, Some(staff), None)
            .await
            .body;
        assert_eq!(staff_card["last4"], "4242");
        assert_eq!(staff_card["brand"], "visa");
        assert!(staff_card.get("first6").is_none());
        assert!(!staff_card.to_string().contains("424242"));
    }
    assert_eq!(
        status_of(
            &w.app,
            "GET",
            "/v1/records/card_nope",
            Some(&w.payments),
            None
        )
        .await,
        404
    );
}

/// The sealed body stored for record `id`.
fn sealed_body(vault: &common::TestVault, id: &str) -> Option<Vec<u8>> {
    let meta = vault.state.vault.meta(id).unwrap();
    vault.state.vault.sealed_body(&meta).unwrap()
}

#[tokio::test]
async fn updates_make_versions_and_erasure_kills_tokens() {
    let w = world().await;
    let created = stored(&w, "card", card()).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/records/{id}");
    let body_before = sealed_body(&w.vault, &id).unwrap();
    let patched = call(
        &w.app,
        "PATCH",
        &path,
        Some(&w.payments),
        Some(json!({"exp_year": 2032, "holder_name": null, "subject_ref": "user-43"})),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(
        (
            patched.body["version"].as_u64(),
            patched.body["exp_year"].as_u64()
        ),
        (Some(2), Some(2032))
    );
    assert!(patched.body.get("holder_name").is_none());
    assert_eq!(patched.body["subject_ref"], "user-43");
    let body_after = sealed_body(&w.vault, &id).unwrap();
    // A new DEK: the wrapped DEK at the start of the body changed entirely.
    assert_ne!(body_before[..60], body_after[..60]);
    // Invalid patches change nothing.
    let bad = call(
        &w.app,
        "PATCH",
        &path,
        Some(&w.payments),
        Some(json!({"pan": "1234"})),
    )
    .await;
    assert_eq!(
        (bad.status, bad.body["errors"][0]["field"].as_str()),
        (422, Some("pan"))
    );
    assert_eq!(
        status_of(
            &w.app,
            "PATCH",
            &path,
            Some(&w.payments),
            Some(json!({"cvv": "123"}))
        )
        .await,
        422
    );
    assert_eq!(
        call(&w.app, "GET", &path, Some(&w.payments), None)
            .await
            .body["version"],
        2
    );
    assert_eq!(
        status_of(
            &w.app,
            "PATCH",
            &path,
            Some(&w.other_payments),
            Some(json!({"exp_month": 1}))
        )
        .await,
        404
    );

    // Erase: 204, then 410 for the record and its tokens.
    assert_eq!(
        status_of(&w.app, "DELETE", &path, Some(&w.other_payments), None).await,
        404
    );
    assert_eq!(
        status_of(&w.app, "DELETE", &path, Some(&w.payments), None).await,
        204
    );
    let gone = call(&w.app, "GET", &path, Some(&w.payments), None).await;
    assert_eq!(
        (gone.status, gone.body["code"].as_str()),
        (410, Some("erased"))
    );
    // The sealed body (and its wrapped DEK) is gone, not just hidden.
    assert_eq!(sealed_body(&w.vault, &id), None);
    let stored = w.vault.store.get(format!("rec/{id}").as_bytes()).unwrap();
    assert!(!stored.unwrap().windows(60).any(|w| w == &body_after[..60]));
    let tokens = json!({"tokens": [created["token"], created["pan_token"]]});
    let results = call(
        &w.app,
        "POST",
        "/v1/tokens/detokenize",
        Some(&w.payments),
        Some(tokens),
    )
    .await
    .body;
    for t in [&created["token"], &created["pan_token"]] {
        assert_eq!(results["results"][t.as_str().unwrap()]["error"], "erased");
    }
    // The erasure is audited.
    let audit = call(
        &w.app,
        "GET",
        &format!("/v1/audit?action=record.erase&record={id}"),
        Some(&w.vault.admin_api_key),
        None,
    )
    .await;
    let outcomes: Vec<&str> = audit.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    // The other service's attempt, then the erasure.
    assert_eq!(outcomes, ["denied", "allowed"]);
}

#[tokio::test]
async fn one_detokenize_batch_gives_each_token_its_own_answer() {
    let w = world().await;
    let tokenize = |body: Value, key: String| {
        let app = w.app.clone();
        async move { call(&app, "POST", "/v1/tokens", Some(&key), Some(body)).await }
    };
    let good = tokenize(
        json!({"value": "acct-secret-1234", "kind": "generic"}),
        w.payments.clone(),
    )
    .await;
    assert_eq!(good.status, 201);
    let good = good.body["token"].as_str().unwrap().to_owned();
    let expiring = tokenize(
        json!({"value": "short lived", "kind": "generic", "ttl_seconds": 60}),
        w.payments.clone(),
    )
    .await
    .body;
    assert!(expiring["expires_at"].is_string());
    let expiring = expiring["token"].as_str().unwrap().to_owned();
    let once = tokenize(
        json!({"value": "one use", "kind": "generic", "max_uses": 1}),
        w.payments.clone(),
    )
    .await
    .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked = tokenize(
        json!({"value": "to revoke", "kind": "generic"}),
        w.payments.clone(),
    )
    .await
    .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        status_of(
            &w.app,
            "DELETE",
            &format!("/v1/tokens/{revoked}"),
            Some(&w.other_payments),
            None
        )
        .await,
        404
    );
    assert_eq!(
        status_of(
            &w.app,
            "DELETE",
            &format!("/v1/tokens/{revoked}"),
            Some(&w.payments),
            None
        )
        .await,
        204
    );
    let erased_card = call(
        &w.app,
        "POST",
        "/v1/records/card",
        Some(&w.payments),
        Some(card()),
    )
    .await
    .body;
    let erased = erased_card["token"].as_str().unwrap().to_owned();
    call(
        &w.app,
        "DELETE",
        &format!("/v1/records/{}", erased_card["id"].as_str().unwrap()),
        Some(&w.payments),
        None,
    )
    .await;
    let foreign = tokenize(
        json!({"value": "not yours", "kind": "generic"}),
        w.other_payments.clone(),
    )
    .await
    .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let card_token = call(
        &w.app,
        "POST",
        "/v1/records/card",
        Some(&w.payments),
        Some(card()),
    )
    .await
    .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let unknown = format!("tok_{}", "0".repeat(32));

    // Use the one-use token once.
    let first = call(
        &w.app,
        "POST",
        "/v1/tokens/detokenize",
        Some(&w.payments),
        Some(json!({"tokens": [once]})),
    )
    .await
    .body;
    assert_eq!(first["results"][&once]["value"], "one use");
    w.clock.advance(time::Duration::seconds(61));

    let batch = json!({"tokens": [good, expiring, once, revoked, erased, foreign, card_token, unknown, "garbage"]});
    let reply = call(
        &w.app,
        "POST",
        "/v1/tokens/detokenize",
        Some(&w.payments),
        Some(batch),
    )
    .await;
    assert_eq!(reply.status, 200);
    let r = &reply.body["results"];
    assert_eq!(
        r[&good],
        json!({"view": "plain", "value": "acct-secret-1234"})
    );
    assert_eq!(r[&expiring]["error"], "token_expired");
    assert_eq!(r[&once]["error"], "token_expired");
    assert_eq!(r[&revoked]["error"], "token_revoked");
    assert_eq!(r[&erased]["error"], "erased");
    assert_eq!(r[&foreign]["error"], "not_found");
    assert_eq!(r[&unknown]["error"], "not_found");
    assert_eq!(r["garbage"]["error"], "not_found");
    assert_eq!(r[&card_token]["view"], "masked");
    assert_eq!(r[&card_token]["value"]["last4"], "4242");
    assert!(!reply.body.to_string().contains(PAN));

    // Deterministic tokens: same value and owner, same token.
    let d1 = tokenize(
        json!({"value": "same", "kind": "generic", "format": "deterministic"}),
        w.payments.clone(),
    )
    .await
    .body;
    let d2 = tokenize(
        json!({"value": "same", "kind": "generic", "format": "deterministic"}),
        w.payments.clone(),
    )
    .await
    .body;
    let d3 = tokenize(
        json!({"value": "same", "kind": "generic", "format": "deterministic"}),
        w.other_payments.clone(),
    )
    .await
    .body;
    assert_eq!(d1["token"], d2["token"]);
    assert_ne!(d1["token"], d3["token"]);

    for bad in [
        json!({"tokens": []}),
        json!({"tokens": vec!["x"; 1001]}),
        json!({"token": "x"}),
    ] {
        assert_eq!(
            status_of(
                &w.app,
                "POST",
                "/v1/tokens/detokenize",
                Some(&w.payments),
                Some(bad)
            )
            .await,
            422
        );
    }
    for bad in [
        json!({"value": "", "kind": "generic"}),
        json!({"value": "x", "kind": "card"}),
        json!({"value": "x", "kind": "generic", "format": "format_preserving"}),
        json!({"value": "x", "kind": "generic", "ttl_seconds": 0}),
        json!({"value": "x", "kind": "generic", "max_uses": 0}),
    ] {
        assert_eq!(
            tokenize(bad.clone(), w.payments.clone()).await.status,
            422,
            "{bad}"
        );
    }
}

#[tokio::test]
async fn search_by_blind_index() {
    let w = world().await;
    let id = stored_id(&w, "kyc", kyc()).await;
    let card_id = stored_id(&w, "card", card()).await;
    let search = |body: Value| {
        let app = w.app.clone();
        let officer = w.officer.clone();
        async move { call(&app, "POST", "/v1/search", Some(&officer), Some(body)).await }
    };
    let j = |field: &str, value: &str, country: Option<&str>| json!({"field": field, "value": value, "country": country, "reason": "AML review", "ticket": "CASE-7"});
    for (field, value, country, expected) in [
        ("national_id", "925 076 473", Some("gb"), &id),
        ("email", "ADA@example.ORG", None, &id),
        ("phone", "+44 (20) 7946-0958", None, &id),
        ("pan", "4242-4242-4242-4242", None, &card_id),
    ] {
        let reply = search(j(field, value, country)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let matches = reply.body["matches"].as_array().unwrap();
        assert_eq!(matches.len(), 1, "{field}");
        assert_eq!(&matches[0]["id"], expected);
        assert_eq!(matches[0]["subject_ref"], "user-42");
        assert_eq!(matches[0].as_object().unwrap().len(), 2);
    }
    assert_eq!(
        search(j("national_id", "925076473", Some("FR"))).await.body["matches"],
        json!([])
    );
    assert_eq!(
        search(j("email", "not-an-email", None)).await.body["matches"],
        json!([])
    );
    let no_reason = search(json!({"field": "email", "value": "ada@example.org"})).await;
    assert_eq!(
        (no_reason.status, no_reason.body["code"].as_str()),
        (400, Some("reason_required"))
    );
    assert_eq!(search(j("name", "Ada", None)).await.status, 422);
    assert_eq!(
        search(j("national_id", "925076473", None)).await.status,
        422
    );
    // Erased records drop out.
    call(
        &w.app,
        "DELETE",
        &format!("/v1/records/{id}"),
        Some(&w.payments),
        None,
    )
    .await;
    assert_eq!(
        search(j("email", "ada@example.org", None)).await.body["matches"],
        json!([])
    );
    // Audited with reason, ticket, and an HMAC for the value.
    let audit = call(
        &w.app,
        "GET",
        "/v1/audit?action=record.search",
        Some(&w.vault.admin_api_key),
        None,
    )
    .await
    .body;
    let entry = &audit["entries"][0];
    assert_eq!(entry["ticket"], "CASE-7");
    assert!(entry["target"].as_str().unwrap().starts_with("hmac:"));
    assert!(
        !audit.to_string().contains("925076473") && !audit.to_string().contains("ada@example.org")
    );
}

fn kyc_with_id(id_type: &str, number: &str, country: &str) -> Value {
    json!({
        "legal_name": {"given": "Ada", "family": "Lovelace"},
        "date_of_birth": "1990-01-01",
        "national_id": {"type": id_type, "number": number, "country": country},
    })
}

/// (type, issuing country, a valid number as people write it, an invalid
/// number). docs/data-model.md lists these types and their rules.
const NATIONAL_IDS: &[(&str, &str, &str, &str)] = &[
    ("ssn", "US", "536-22-1234", "666-12-3456"),
    ("itin", "US", "912-70-1234", "912-66-1234"),
    ("nino", "GB", "AB 12 34 56 C", "BG 12 34 56 A"),
    ("sin", "CA", "130 692 544", "130 692 545"),
    ("cpf", "BR", "390.533.447-05", "390.533.447-06"),
    ("dni", "ES", "12345678Z", "12345678A"),
    ("nie", "ES", "X-1234567-L", "X-1234567-A"),
    ("bsn", "NL", "1112.22.333", "1112.22.334"),
    ("pesel", "PL", "44051401359", "44051401358"),
];

#[tokio::test]
async fn national_ids_by_their_common_names_with_their_own_checks() {
    let w = world().await;
    let create = |body: Value| {
        let app = w.app.clone();
        let payments = w.payments.clone();
        async move { call(&app, "POST", "/v1/records/kyc", Some(&payments), Some(body)).await }
    };
    let refused = |reply: &Reply, field: &str, number: &str| {
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (422, Some("validation_failed")),
            "{field}: {}",
            reply.body
        );
        assert_eq!(reply.body["errors"][0]["field"], field, "{}", reply.body);
        // Never the number, in any form.
        let text = reply.body.to_string();
        let compact: String = number.chars().filter(char::is_ascii_alphanumeric).collect();
        assert!(!text.contains(number) && !text.contains(&compact), "{text}");
    };
    for (id_type, country, good, bad) in NATIONAL_IDS {
        let reply = create(kyc_with_id(&id_type.to_uppercase(), good, country)).await;
        assert_eq!(reply.status, 201, "{id_type} {good}: {}", reply.body);
        let id = reply.body["id"].as_str().unwrap().to_owned();
        // Stored normalised: the type by its name, the number compact.
        let view = call(
            &w.app,
            "GET",
            &format!("/v1/records/{id}"),
            Some(&w.officer),
            None,
        )
        .await;
        assert_eq!(view.body["national_id"]["type"], *id_type);
        assert_eq!(view.body["national_id"]["country"], *country);

        let reply = create(kyc_with_id(id_type, bad, country)).await;
        refused(&reply, "national_id.number", bad);
        // A country-specific type from another country is refused.
        let elsewhere = if *country == "FR" { "DE" } else { "FR" };
        let reply = create(kyc_with_id(id_type, good, elsewhere)).await;
        refused(&reply, "national_id.country", good);
    }
    let reply = create(kyc_with_id("social_security", "536-22-1234", "US")).await;
    refused(&reply, "national_id.type", "536-22-1234");
    // The generic types still take any document number.
    let reply = create(kyc_with_id("passport", "925076473", "GB")).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
}

#[tokio::test]
async fn national_ids_are_found_however_they_are_written() {
    let w = world().await;
    let mut ids = Vec::new();
    for (id_type, country, good, _) in NATIONAL_IDS {
        let id = stored_id(&w, "kyc", kyc_with_id(id_type, good, country)).await;
        ids.push((id, *country, *good));
    }
    for (id, country, written) in ids {
        let compact: String = written
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        // Stored as written, found compact and lower-cased, and the other
        // way round.
        for value in [written.to_owned(), compact.to_lowercase()] {
            let reply = call(
                &w.app,
                "POST",
                "/v1/search",
                Some(&w.officer),
                Some(json!({"field": "national_id", "value": value, "country": country, "reason": "KYC refresh", "ticket": "CASE-9"})),
            )
            .await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert_eq!(
                reply.body["matches"],
                json!([{"id": id, "subject_ref": null}]),
                "{value}"
            );
        }
    }
}

#[tokio::test]
async fn reveal_needs_reason_ticket_and_four_eyes_for_the_most_sensitive_fields() {
    let w = world().await;
    let kyc_id = stored_id(&w, "kyc", kyc()).await;
    let other_id = stored_id(&w, "kyc", kyc()).await;
    let reveal = |token: String, id: String, fields: Value| {
        let app = w.app.clone();
        async move {
            let body = json!({"fields": fields, "reason": "AML review", "ticket": "CASE-1234"});
            call(
                &app,
                "POST",
                &format!("/v1/records/{id}/reveal"),
                Some(&token),
                Some(body),
            )
            .await
        }
    };
    // Non-sensitive fields: reason and ticket suffice.
    let reply = reveal(
        w.officer.clone(),
        kyc_id.clone(),
        json!(["date_of_birth", "legal_name"]),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["fields"]["date_of_birth"], "1815-12-10");
    assert_eq!(
        reply.body["fields"]["legal_name"],
        json!({"given": "Ada", "middle": null, "family": "Lovelace"})
    );
    let missing = call(
        &w.app,
        "POST",
        &format!("/v1/records/{kyc_id}/reveal"),
        Some(&w.officer),
        Some(json!({"fields": ["date_of_birth"], "reason": "AML"})),
    )
    .await;
    assert_eq!(
        (missing.status, missing.body["code"].as_str()),
        (400, Some("reason_required"))
    );
    assert_eq!(
        reveal(w.officer.clone(), kyc_id.clone(), json!(["pan"]))
            .await
            .status,
        422
    );
    assert_eq!(
        reveal(w.payments.clone(), kyc_id.clone(), json!(["date_of_birth"]))
            .await
            .status,
        403
    );
    assert_eq!(
        reveal(w.approver.clone(), kyc_id.clone(), json!(["date_of_birth"]))
            .await
            .status,
        403
    );

    // national_id without an approval.
    let denied = reveal(w.officer.clone(), kyc_id.clone(), json!(["national_id"])).await;
    assert_eq!(
        (denied.status, denied.body["code"].as_str()),
        (403, Some("approval_required"))
    );

    let request = |record: &str, fields: Value, token: &str| {
        let app = w.app.clone();
        let body = json!({"record_id": record, "fields": fields, "reason": "AML review", "ticket": "CASE-1234"});
        let token = token.to_owned();
        async move {
            call(
                &app,
                "POST",
                "/v1/access-requests",
                Some(&token),
                Some(body),
            )
            .await
        }
    };
    let created = request(&kyc_id, json!(["national_id"]), &w.officer).await;
    assert_eq!(
        (created.status, created.body["status"].as_str()),
        (201, Some("pending"))
    );
    let ar = created.body["id"].as_str().unwrap().to_owned();
    // Still locked while pending.
    assert_eq!(
        reveal(w.officer.clone(), kyc_id.clone(), json!(["national_id"]))
            .await
            .status,
        403
    );
    let approve = |id: &str, token: &str| {
        let app = w.app.clone();
        let path = format!("/v1/access-requests/{id}/approve");
        let token = token.to_owned();
        async move { call(&app, "POST", &path, Some(&token), None).await }
    };
    assert_eq!(approve(&ar, &w.officer).await.status, 403);
    // No one holds both roles, so no one can approve their own request
    // (tests/duties.rs shows the refusal of such a principal).
    let approved = approve(&ar, &w.approver).await;
    assert_eq!(
        (approved.status, approved.body["status"].as_str()),
        (200, Some("approved"))
    );
    assert!(approved.body["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(approve(&ar, &w.approver).await.status, 409);

    // Granted: only that record, that field, that officer.
    let ok = reveal(
        w.officer.clone(),
        kyc_id.clone(),
        json!(["national_id", "email"]),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["fields"]["national_id"]["number"], "925076473");
    assert_eq!(
        reveal(w.officer.clone(), other_id.clone(), json!(["national_id"]))
            .await
            .status,
        403
    );
    assert_eq!(
        reveal(w.officer2.clone(), kyc_id.clone(), json!(["national_id"]))
            .await
            .status,
        403
    );
    let card_id = stored_id(&w, "card", card()).await;
    let card_ar = request(&card_id, json!(["exp_month"]), &w.officer)
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    approve(&card_ar, &w.approver).await;
    assert_eq!(
        reveal(w.officer.clone(), card_id.clone(), json!(["pan"]))
            .await
            .status,
        403,
        "an approval for another field unlocked pan"
    );

    // A grant expires after 30 minutes (staff log in again: sessions idle
    // out after 15).
    w.clock.advance(time::Duration::minutes(31));
    let officer = session(&w.app, "officer").await;
    let approver = session(&w.app, "approver").await;
    let expired = reveal(officer.clone(), kyc_id.clone(), json!(["national_id"])).await;
    assert_eq!(
        (expired.status, expired.body["code"].as_str()),
        (403, Some("approval_required"))
    );

    // A denied request unlocks nothing.
    let ar2 = request(&kyc_id, json!(["national_id"]), &officer)
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let denied = call(
        &w.app,
        "POST",
        &format!("/v1/access-requests/{ar2}/deny"),
        Some(&approver),
        None,
    )
    .await;
    assert_eq!(denied.body["status"], "denied");
    assert_eq!(
        reveal(officer.clone(), kyc_id.clone(), json!(["national_id"]))
            .await
            .status,
        403
    );

    // Every step is audited with reason and ticket, never with values.
    let audit = call(
        &w.app,
        "GET",
        "/v1/audit?limit=1000",
        Some(&w.vault.admin_api_key),
        None,
    )
    .await
    .body;
    let text = audit.to_string();
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "access.approve" && e["outcome"] == "denied")
    );
    for action in [
        "record.reveal",
        "access.request",
        "access.approve",
        "access.deny",
    ] {
        assert!(text.contains(action), "{action} not audited");
    }
    let reveals: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "record.reveal")
        .collect();
    assert!(
        reveals
            .iter()
            .all(|e| e["ticket"] == "CASE-1234" || e["outcome"] == "denied")
    );
    assert!(reveals.iter().any(|e| e["outcome"] == "denied"));
    assert!(!text.contains("925076473") && !text.contains("1815-12-10"));
}

#[tokio::test]
async fn reveals_are_rate_limited_per_officer() {
    let w = world_with(AppSettings {
        reveals_per_hour: 3,
        ..test_settings()
    })
    .await;
    let id = stored_id(&w, "kyc", kyc()).await;
    let body = json!({"fields": ["date_of_birth"], "reason": "AML review", "ticket": "CASE-1"});
    let path = format!("/v1/records/{id}/reveal");
    for _ in 0..3 {
        assert_eq!(
            status_of(&w.app, "POST", &path, Some(&w.officer), Some(body.clone())).await,
            200
        );
    }
    let limited = call(&w.app, "POST", &path, Some(&w.officer), Some(body.clone())).await;
    assert_eq!(
        (limited.status, limited.body["code"].as_str()),
        (429, Some("rate_limited"))
    );
    assert!(limited.headers.contains_key("retry-after"));
    // Another officer has their own budget; an hour later the first has too.
    assert_eq!(
        status_of(&w.app, "POST", &path, Some(&w.officer2), Some(body.clone())).await,
        200
    );
    w.clock.advance(time::Duration::minutes(61));
    let officer = session(&w.app, "officer").await;
    assert_eq!(
        status_of(&w.app, "POST", &path, Some(&officer), Some(body)).await,
        200
    );
}

#[tokio::test]
async fn ten_thousand_format_preserving_tokens_fail_luhn_keep_six_and_four_and_never_repeat() {
    let w = world().await;
    let owner = "prn_bulk";
    let data = RecordData::parse(
        RecordType::Card,
        json!({"pan": PAN, "exp_month": 12, "exp_year": 2030}),
        w.clock.now(),
    )
    .unwrap();
    let mut seen = HashSet::new();
    for _ in 0..10_000 {
        let created = w
            .vault
            .state
            .vault
            .prepare_create(owner, None, &data)
            .unwrap();
        let token = created.pan_token.clone().unwrap();
        assert_eq!(token.len(), 16);
        assert_eq!((&token[..6], &token[12..]), ("424242", "4242"));
        assert!(!luhn_valid(&token), "{token} passes Luhn");
        assert!(seen.insert(token.clone()), "{token} repeated");
        w.vault.store.commit(created.tx).unwrap();
    }
    assert_eq!(seen.len(), 10_000);
    // A 13-digit PAN leaves too few random digits: no format-preserving token.
    let short = RecordData::parse(
        RecordType::Card,
        json!({"pan": "4222222222222", "exp_month": 12, "exp_year": 2030}),
        w.clock.now(),
    )
    .unwrap();
    assert!(
        w.vault
            .state
            .vault
            .prepare_create(owner, None, &short)
            .unwrap()
            .pan_token
            .is_none()
    );
}

/// A Luhn-valid Visa PAN that no record here holds.
const OTHER_PAN: &str = "4000056655665556";

fn search_body(field: &str, value: &str, country: Option<&str>) -> Value {
    json!({"field": field, "value": value, "country": country, "reason": "AML review", "ticket": "CASE-9"})
}

/// The record.search entries of the audit log, oldest first.
fn search_entries(w: &World) -> Vec<Value> {
    audit_entries(&w.vault)
        .into_iter()
        .filter(|e| e["action"] == "record.search")
        .collect()
}

/// Searching a PAN or a national id is a guess at the most sensitive
/// values: each one, hit or miss, takes one of the officer's quota before
/// the lookup, under any concurrency. Email and phone searches do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pan_and_national_id_searches_take_a_quota_misses_included_under_parallel_searches() {
    let w = world_with(AppSettings {
        sensitive_searches_per_hour: 5,
        ..test_settings()
    })
    .await;
    let card_id = stored_id(&w, "card", card()).await;
    stored_id(&w, "kyc", kyc()).await;
    let searches: Vec<_> = (0..50)
        .map(|_| {
            let app = w.app.clone();
            let officer = w.officer.clone();
            tokio::spawn(async move {
                call(
                    &app,
                    "POST",
                    "/v1/search",
                    Some(&officer),
                    Some(search_body("pan", OTHER_PAN, None)),
                )
                .await
            })
        })
        .collect();
    let (mut answered, mut limited) = (0, 0);
    for search in searches {
        let reply = search.await.unwrap();
        match reply.status {
            200 => {
                assert_eq!(reply.body["matches"], json!([]));
                answered += 1;
            }
            429 => {
                assert_eq!(reply.body["code"], "rate_limited");
                assert!(reply.headers.contains_key("retry-after"));
                limited += 1;
            }
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert_eq!((answered, limited), (5, 45));
    let entries = search_entries(&w);
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["outcome"] == "no_match")
            .count(),
        5
    );
    assert_eq!(
        entries.iter().filter(|e| e["outcome"] == "denied").count(),
        45
    );
    // The quota is spent: a hit and a national id are refused too, without
    // a lookup; email and phone are not counted.
    let search = |token: &str, body: Value| {
        let app = w.app.clone();
        let token = token.to_owned();
        async move { call(&app, "POST", "/v1/search", Some(&token), Some(body)).await }
    };
    let hit = search(&w.officer, search_body("pan", PAN, None)).await;
    assert_eq!(hit.status, 429);
    assert!(hit.body.get("matches").is_none());
    assert_eq!(
        search(
            &w.officer,
            search_body("national_id", "925076473", Some("GB"))
        )
        .await
        .status,
        429
    );
    let email = search(&w.officer, search_body("email", "ada@example.org", None)).await;
    assert_eq!(email.status, 200);
    assert_eq!(email.body["matches"].as_array().unwrap().len(), 1);
    // Another officer has their own quota; an hour later the first has too.
    let other = search(&w.officer2, search_body("pan", PAN, None)).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.body["matches"][0]["id"], card_id.as_str());
    w.clock.advance(time::Duration::minutes(61));
    let officer = session(&w.app, "officer").await;
    assert_eq!(
        search(&officer, search_body("pan", PAN, None)).await.status,
        200
    );
}

/// A search that finds nothing is audited as `no_match` (the chain still
/// verifies), and a burst of misses by one officer logs a WARN line that
/// names the officer and never the searched values.
#[tokio::test]
async fn search_misses_are_audited_as_no_match_and_a_burst_is_logged() {
    let w = world_with(AppSettings {
        search_miss_alert: 3,
        ..test_settings()
    })
    .await;
    stored_id(&w, "kyc", kyc()).await;
    let log_path = w.vault.dir.path().join("search.log");
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(
            std::fs::File::create(&log_path).unwrap(),
        ))
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    let misses = [
        ("national_id", "111223333", Some("GB")),
        ("pan", OTHER_PAN, None),
        ("email", "nobody@example.org", None),
    ];
    for (field, value, country) in misses {
        let reply = call(
            &w.app,
            "POST",
            "/v1/search",
            Some(&w.officer),
            Some(search_body(field, value, country)),
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body["matches"], json!([]));
    }
    let hit = call(
        &w.app,
        "POST",
        "/v1/search",
        Some(&w.officer2),
        Some(search_body("email", "ada@example.org", None)),
    )
    .await;
    assert_eq!(hit.body["matches"].as_array().unwrap().len(), 1);
    drop(guard);
    let outcomes: Vec<Value> = search_entries(&w)
        .iter()
        .map(|e| e["outcome"].clone())
        .collect();
    assert_eq!(
        outcomes,
        vec![
            json!("no_match"),
            json!("no_match"),
            json!("no_match"),
            json!("allowed")
        ]
    );
    let verify = call(
        &w.app,
        "GET",
        "/v1/audit/verify",
        Some(&w.vault.admin_api_key),
        None,
    )
    .await;
    assert_eq!(verify.status, 200, "{}", verify.body);
    assert_eq!(verify.body["ok"], true, "{}", verify.body);

    let log = std::fs::read_to_string(&log_path).unwrap();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("search misses"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    let officer_id = w
        .vault
        .state
        .principals
        .list()
        .unwrap()
        .into_iter()
        .find(|p| p.name == "officer")
        .unwrap()
        .id;
    assert!(warnings[0].contains(&officer_id), "{}", warnings[0]);
    for value in [
        "111223333",
        OTHER_PAN,
        "nobody@example.org",
        "ada@example.org",
    ] {
        assert!(!log.contains(value), "{value} reached the log");
    }
}

/// 100 reveals at once against a quota of 3: exactly 3 are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reveal_quota_holds_under_parallel_reveals() {
    let w = world_with(AppSettings {
        reveals_per_hour: 3,
        ..test_settings()
    })
    .await;
    let id = stored_id(&w, "kyc", kyc()).await;
    let path = format!("/v1/records/{id}/reveal");
    let body = json!({"fields": ["date_of_birth"], "reason": "AML review", "ticket": "CASE-1"});
    let reveals: Vec<_> = (0..100)
        .map(|_| {
            let (app, officer, path, body) =
                (w.app.clone(), w.officer.clone(), path.clone(), body.clone());
            tokio::spawn(async move { call(&app, "POST", &path, Some(&officer), Some(body)).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for reveal in reveals {
        let reply = reveal.await.unwrap();
        if reply.status == 429 {
            assert!(reply.body.get("fields").is_none());
        }
        statuses.push(reply.status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 97);
}

/// A record and a token stored before the packed format (issue 11): JSON
/// metadata at `rec/<id>` with the body at `rec/<id>/body`, a JSON token
/// record. They read, detokenize, update (into the packed format, the old
/// body key gone) and erase like any other; an edited one is refused.
#[tokio::test]
async fn records_and_tokens_of_the_earlier_format_still_work() {
    let w = world().await;
    let created = stored(&w, "card", card()).await;
    let (id, token) = (
        created["id"].as_str().unwrap().to_owned(),
        created["token"].as_str().unwrap().to_owned(),
    );
    let (vault, store) = (&w.vault.state.vault, &w.vault.store);
    let keys = w.vault.keyring.keys().unwrap();
    let state_key = keys.state_key().unwrap();

    // Rewrite both in the earlier format, as an older version wrote them.
    let meta = vault.meta(&id).unwrap();
    let body = vault.sealed_body(&meta).unwrap().unwrap();
    let meta_key = format!("rec/{id}");
    let legacy_meta = state_key.seal_json(meta_key.as_bytes(), &meta).unwrap();
    assert_eq!(legacy_meta[0], strongroom::keyring::STATE_FORMAT);
    store.put(meta_key.as_bytes(), &legacy_meta).unwrap();
    store
        .put(format!("rec/{id}/body").as_bytes(), &body)
        .unwrap();
    let (token_key, record) = vault.token(&token).unwrap().unwrap();
    let legacy_token = state_key.seal_json(token_key.as_bytes(), &record).unwrap();
    store.put(token_key.as_bytes(), &legacy_token).unwrap();
    drop(state_key);

    let path = format!("/v1/records/{id}");
    let read = call(&w.app, "GET", &path, Some(&w.payments), None).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.body["last4"], created["last4"]);
    let detokenized = call(
        &w.app,
        "POST",
        "/v1/tokens/detokenize",
        Some(&w.payments),
        Some(json!({"tokens": [token]})),
    )
    .await;
    assert_eq!(detokenized.status, 200, "{}", detokenized.body);
    assert_eq!(
        detokenized.body["results"][&token]["value"]["last4"],
        created["last4"]
    );

    // An update's precondition is the stored bytes, so the old format
    // matches; the result is packed and the old body key is gone.
    let patched = call(
        &w.app,
        "PATCH",
        &path,
        Some(&w.payments),
        Some(json!({"exp_year": 2033})),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(
        store.get(meta_key.as_bytes()).unwrap().unwrap()[0],
        2,
        "packed after a write"
    );
    assert_eq!(
        store.get(format!("rec/{id}/body").as_bytes()).unwrap(),
        None
    );
    let read = call(&w.app, "GET", &path, Some(&w.payments), None).await;
    assert_eq!(read.body["exp_year"], 2033);

    // Revoking the old-format token works too.
    assert_eq!(
        status_of(
            &w.app,
            "DELETE",
            &format!("/v1/tokens/{token}"),
            Some(&w.payments),
            None
        )
        .await,
        204
    );

    // An edited old-format value is refused like a packed one.
    let mut edited = legacy_meta.clone();
    let at = edited.len() - 40;
    edited[at] ^= 1;
    store.put(meta_key.as_bytes(), &edited).unwrap();
    let refused = call(&w.app, "GET", &path, Some(&w.payments), None).await;
    assert_eq!(refused.status, 500, "{}", refused.body);
}
