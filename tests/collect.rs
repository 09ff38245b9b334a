//! Collect through the HTTP API: publishable keys, their origins and rate
//! limits, CORS on the collect routes only, and the ephemeral CVC.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ConnectInfo;
use common::*;
use serde_json::{Value, json};
use strongroom::access::Role;
use strongroom::api::{AppSettings, AppState};
use strongroom::clock::ManualClock;
use strongroom::config::CollectSettings;
use strongroom::keyring::{SealMethod, UnsealInput};
use zeroize::Zeroizing;

const OTHER_ORIGIN: &str = "https://evil.example";
const DEV_ORIGIN: &str = "http://localhost:3000";

struct World {
    vault: TestVault,
    app: Router,
    clock: Arc<ManualClock>,
    payments: String,
    payments_id: String,
    other_payments: String,
    /// Publishable key of `payments`, allowed from TEST_ORIGIN and DEV_ORIGIN.
    spk: String,
    spk_id: String,
    /// Publishable key of `other_payments`, from TEST_ORIGIN.
    other_spk: String,
}

fn settings_with(collect: CollectSettings) -> AppSettings {
    AppSettings {
        collect,
        ..test_settings()
    }
}

async fn world_with(settings: AppSettings) -> World {
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2026-11-29 09:00 UTC),
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
    let payments_id = vault.principal_id("payments");
    let spk = publishable_key(
        &app,
        &vault.admin_api_key,
        "checkout-web",
        &payments_id,
        &[TEST_ORIGIN, DEV_ORIGIN],
    )
    .await;
    let spk_id = vault.principal_id("checkout-web");
    let other_spk = publishable_key(
        &app,
        &vault.admin_api_key,
        "other-checkout",
        &vault.principal_id("other-payments"),
        &[TEST_ORIGIN],
    )
    .await;
    World {
        vault,
        app,
        clock,
        payments,
        payments_id,
        other_payments,
        spk,
        spk_id,
        other_spk,
    }
}

async fn world() -> World {
    world_with(test_settings()).await
}

fn card() -> Value {
    json!({"pan": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2030, "holder_name": "Ada Lovelace"})
}

fn amex() -> Value {
    json!({"pan": "3782 822463 10005", "exp_month": 1, "exp_year": 2031})
}

/// A request from a browser page on `origin` (if any) with `bearer`.
async fn from_origin(
    app: &Router,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    origin: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
    call_with(app, method, path, bearer, body, &headers).await
}

/// `POST /v1/records/card` with the publishable key from TEST_ORIGIN.
async fn collect(w: &World, body: Value) -> Reply {
    from_origin(
        &w.app,
        "POST",
        "/v1/records/card",
        Some(&w.spk),
        Some(TEST_ORIGIN),
        Some(body),
    )
    .await
}

/// A card created with the publishable key from TEST_ORIGIN; its id.
async fn collected(w: &World, body: Value) -> String {
    let reply = collect(w, body).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_owned()
}

async fn attach(w: &World, bearer: &str, card_id: &str, cvc: Value) -> Reply {
    from_origin(
        &w.app,
        "POST",
        &format!("/v1/records/{card_id}/cvc"),
        Some(bearer),
        Some(TEST_ORIGIN),
        Some(json!({ "cvc": cvc })),
    )
    .await
}

fn cors_headers(reply: &Reply) -> Vec<String> {
    reply
        .headers
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn publishable_keys_are_made_for_an_enabled_payment_service_only() {
    let w = world().await;
    let admin = w.vault.admin_api_key.clone();
    let create = |body: Value| {
        let app = w.app.clone();
        let admin = admin.clone();
        async move { call(&app, "POST", "/v1/principals", Some(&admin), Some(body)).await }
    };
    // What the directory shows of a publishable key: its owner and origins.
    let list = call(&w.app, "GET", "/v1/principals", Some(&admin), None).await;
    let listed = list.body["principals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == w.spk_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(listed["kind"], "publishable");
    assert_eq!(listed["roles"], json!(["collector"]));
    assert_eq!(listed["owner"], w.payments_id.as_str());
    assert_eq!(listed["allowed_origins"], json!([TEST_ORIGIN, DEV_ORIGIN]));
    assert!(w.spk.starts_with("spk_") && w.spk.len() == 68);
    // Other principals show neither field.
    let service = list.body["principals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == w.payments_id.as_str())
        .unwrap()
        .clone();
    assert!(service.get("owner").is_none() && service.get("allowed_origins").is_none());
    // Its creation is audited with the owner named.
    let entries = audit_entries(&w.vault);
    let created = entries
        .iter()
        .find(|e| e["action"] == "principal.create" && e["target"] == w.spk_id.as_str())
        .unwrap();
    assert!(
        created["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("owner: {}", w.payments_id)),
        "{created}"
    );

    let auditor = w.vault.service("auditor-svc", Role::Auditor);
    let auditor_id = w.vault.principal_id("auditor-svc");
    w.vault
        .staff("staffer", Role::Auditor, "staff password 123");
    let staff_id = w.vault.principal_id("staffer");
    let disabled = w.vault.service("gone-payments", Role::PaymentService);
    drop(disabled);
    let disabled_id = w.vault.principal_id("gone-payments");
    let reply = call(
        &w.app,
        "DELETE",
        &format!("/v1/principals/{disabled_id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(reply.status, 204);

    let good = |owner: &str| json!({"name": "web", "kind": "publishable", "roles": ["collector"], "owner": owner, "allowed_origins": [TEST_ORIGIN]});
    // 422 naming `owner` for anything but an enabled payment service.
    let unknown_owner = format!("prn_{}", "0".repeat(24));
    for owner in [
        unknown_owner.as_str(),
        disabled_id.as_str(),
        auditor_id.as_str(),
        staff_id.as_str(),
        w.spk_id.as_str(),
        "not-an-id",
    ] {
        let reply = create(good(owner)).await;
        assert_eq!(reply.status, 422, "{owner}: {}", reply.body);
        assert_eq!(reply.body["errors"][0]["field"], "owner", "{owner}");
    }
    let mut missing_owner = good(&w.payments_id);
    missing_owner.as_object_mut().unwrap().remove("owner");
    let reply = create(missing_owner).await;
    assert_eq!(
        (reply.status, reply.body["errors"][0]["field"].as_str()),
        (422, Some("owner"))
    );
    // 422 naming `allowed_origins` for anything but 1-16 exact origins.
    let seventeen: Vec<String> = (0..17).map(|i| format!("https://s{i}.example")).collect();
    for origins in [
        json!([]),
        json!(seventeen),
        json!(["https://shop.example/"]),
        json!(["https://shop.example/checkout"]),
        json!(["https://Shop.example"]),
        json!(["http://shop.example"]),
        json!(["https://shop.example:443"]),
        json!(["https://*.example"]),
        json!(["*"]),
        json!(["null"]),
    ] {
        let mut body = good(&w.payments_id);
        body["allowed_origins"] = origins.clone();
        let reply = create(body).await;
        assert_eq!(reply.status, 422, "{origins}: {}", reply.body);
        assert_eq!(reply.body["errors"][0]["field"], "allowed_origins");
    }
    let mut body = good(&w.payments_id);
    body.as_object_mut().unwrap().remove("allowed_origins");
    assert_eq!(
        create(body).await.body["errors"][0]["field"],
        "allowed_origins"
    );
    // Roles: collector only, and only for publishable keys.
    for roles in [
        json!(["payment_service"]),
        json!(["collector", "auditor"]),
        json!(["admin"]),
        json!([]),
    ] {
        let mut body = good(&w.payments_id);
        body["roles"] = roles.clone();
        let reply = create(body).await;
        assert_eq!(reply.status, 422, "{roles}");
        assert_eq!(reply.body["errors"][0]["field"], "roles");
    }
    let reply =
        create(json!({"name": "svc-collector", "kind": "service", "roles": ["collector"]})).await;
    assert_eq!(reply.body["errors"][0]["field"], "roles");
    let reply = create(json!({"name": "stf-collector", "kind": "staff", "roles": ["collector"], "password": "staff password 123"})).await;
    assert_eq!(reply.body["errors"][0]["field"], "roles");
    // Owner and origins belong to publishable keys; passwords do not.
    let reply = create(
        json!({"name": "svc2", "kind": "service", "roles": ["auditor"], "owner": w.payments_id}),
    )
    .await;
    assert_eq!(reply.body["errors"][0]["field"], "owner");
    let reply = create(json!({"name": "svc3", "kind": "service", "roles": ["auditor"], "allowed_origins": [TEST_ORIGIN]})).await;
    assert_eq!(reply.body["errors"][0]["field"], "allowed_origins");
    let mut body = good(&w.payments_id);
    body["password"] = json!("a long enough password");
    assert_eq!(create(body).await.body["errors"][0]["field"], "password");
    // Only an admin creates one.
    for key in [&w.payments, &auditor, &w.spk] {
        let reply = from_origin(
            &w.app,
            "POST",
            "/v1/principals",
            Some(key),
            Some(TEST_ORIGIN),
            Some(good(&w.payments_id)),
        )
        .await;
        assert_eq!(reply.status, 403, "{}", reply.body);
    }
    // Nothing was created by any refused attempt.
    let names: HashSet<String> = w
        .vault
        .state
        .principals
        .list()
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert!(!names.contains("web") && !names.contains("svc-collector"));
    // And the good one works.
    let reply = create(good(&w.payments_id)).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert!(reply.body["api_key"].as_str().unwrap().starts_with("spk_"));
}

#[tokio::test]
async fn a_collector_creates_cards_for_its_owner_and_sees_only_the_create_answer() {
    let w = world().await;
    // A page cannot say whose card it is (anyone holds the public key):
    // subject_ref from a publishable key is refused, and nothing is stored.
    let mut with_subject = card();
    with_subject["subject_ref"] = json!("user-42");
    let reply = collect(&w, with_subject).await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert_eq!(reply.body["errors"][0]["field"], "subject_ref");
    assert!(
        !audit_entries(&w.vault)
            .iter()
            .any(|e| e["action"] == "record.create"),
        "no record made"
    );
    let reply = collect(&w, card()).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let keys: HashSet<&str> = reply
        .body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        HashSet::from([
            "id",
            "token",
            "pan_token",
            "brand",
            "last4",
            "exp_month",
            "exp_year"
        ])
    );
    assert_eq!(reply.body["brand"], "visa");
    assert_eq!(reply.body["last4"], "4242");
    assert_eq!(
        (
            reply.body["exp_month"].as_u64(),
            reply.body["exp_year"].as_u64()
        ),
        (Some(12), Some(2030))
    );
    let text = reply.body.to_string();
    assert!(!text.contains("4242424242424242") && !text.contains("Lovelace"));
    let id = reply.body["id"].as_str().unwrap().to_owned();
    // The record is the owner's: it reads it; another service does not.
    let read = call(
        &w.app,
        "GET",
        &format!("/v1/records/{id}"),
        Some(&w.payments),
        None,
    )
    .await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert!(read.body["subject_ref"].is_null());
    let other = call(
        &w.app,
        "GET",
        &format!("/v1/records/{id}"),
        Some(&w.other_payments),
        None,
    )
    .await;
    assert_eq!(other.status, 404);
    assert_eq!(w.vault.state.vault.meta(&id).unwrap().owner, w.payments_id);
    // Audited with the publishable key as actor and the owner named.
    let entries = audit_entries(&w.vault);
    let entry = entries
        .iter()
        .find(|e| e["action"] == "record.create" && e["target"] == id.as_str())
        .unwrap();
    assert_eq!(entry["actor"], w.spk_id.as_str());
    assert_eq!(entry["reason"], format!("for {}", w.payments_id));
    // From the development origin too.
    let dev = from_origin(
        &w.app,
        "POST",
        "/v1/records/card",
        Some(&w.spk),
        Some(DEV_ORIGIN),
        Some(card()),
    )
    .await;
    assert_eq!(dev.status, 201);
    // A card with a CVC in it is still refused (CVCs go to their own route).
    let mut with_cvc = card();
    with_cvc["cvc"] = json!("123");
    let refused = collect(&w, with_cvc).await;
    assert_eq!(refused.status, 422);
    assert!(!refused.body.to_string().contains("\"123\""));
    // Bad input is problem+json, never 500.
    let bad = collect(
        &w,
        json!({"pan": "4242 4242 4242 4241", "exp_month": 12, "exp_year": 2030}),
    )
    .await;
    assert_eq!(
        (bad.status, bad.body["code"].as_str()),
        (422, Some("validation_failed"))
    );
    assert!(!bad.body.to_string().contains("4241"));
}

/// Every route a publishable key may not call answers 403 (audited, by
/// the policy table), from an allowed origin, and nothing happens.
#[tokio::test]
async fn a_collector_gets_403_on_every_other_route() {
    let w = world().await;
    let card_id = collected(&w, card()).await;
    let token = call(
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
    let officer_password = "officer password 1";
    w.vault
        .staff("officer", Role::ComplianceOfficer, officer_password);
    let session = call(
        &w.app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"username": "officer", "password": officer_password})),
    )
    .await
    .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let request = call(
        &w.app,
        "POST",
        "/v1/access-requests",
        Some(&session),
        Some(json!({"record_id": card_id, "fields": ["pan"], "reason": "r", "ticket": "CASE-1"})),
    )
    .await;
    assert_eq!(request.status, 201, "{}", request.body);
    let request_id = request.body["id"].as_str().unwrap().to_owned();
    let routes: Vec<(&str, String, Option<Value>)> = vec![
        ("POST", "/v1/sys/seal".into(), None),
        (
            "POST",
            "/v1/principals".into(),
            Some(json!({"name": "x", "kind": "service", "roles": ["auditor"]})),
        ),
        ("GET", "/v1/principals".into(), None),
        ("DELETE", format!("/v1/principals/{}", w.payments_id), None),
        ("DELETE", format!("/v1/principals/{}", w.spk_id), None),
        ("POST", "/v1/auth/logout".into(), None),
        ("GET", "/v1/audit".into(), None),
        ("GET", "/v1/audit/verify".into(), None),
        ("GET", "/v1/keys".into(), None),
        ("POST", "/v1/keys/card/rotate".into(), None),
        (
            "POST",
            "/v1/records/bank_account".into(),
            Some(json!({"iban": "DE89 3704 0044 0532 0130 00"})),
        ),
        (
            "POST",
            "/v1/records/kyc".into(),
            Some(json!({"legal_name": {"given": "Ada", "family": "Lovelace"}})),
        ),
        ("GET", format!("/v1/records/{card_id}"), None),
        (
            "PATCH",
            format!("/v1/records/{card_id}"),
            Some(json!({"exp_month": 11})),
        ),
        ("DELETE", format!("/v1/records/{card_id}"), None),
        (
            "POST",
            format!("/v1/records/{card_id}/reveal"),
            Some(json!({"fields": ["pan"], "reason": "r", "ticket": "CASE-1"})),
        ),
        (
            "POST",
            "/v1/search".into(),
            Some(
                json!({"field": "pan", "value": "4242424242424242", "reason": "r", "ticket": "CASE-1"}),
            ),
        ),
        (
            "POST",
            "/v1/access-requests".into(),
            Some(
                json!({"record_id": card_id, "fields": ["pan"], "reason": "r", "ticket": "CASE-1"}),
            ),
        ),
        (
            "POST",
            format!("/v1/access-requests/{request_id}/approve"),
            None,
        ),
        (
            "POST",
            format!("/v1/access-requests/{request_id}/deny"),
            None,
        ),
        (
            "POST",
            "/v1/tokens".into(),
            Some(json!({"value": "a secret", "kind": "generic"})),
        ),
        (
            "POST",
            "/v1/tokens/detokenize".into(),
            Some(json!({"tokens": [token]})),
        ),
        ("DELETE", format!("/v1/tokens/{token}"), None),
    ];
    let before = audit_entries(&w.vault).len();
    for (method, path, body) in &routes {
        let reply = from_origin(
            &w.app,
            method,
            path,
            Some(&w.spk),
            Some(TEST_ORIGIN),
            body.clone(),
        )
        .await;
        assert_eq!(reply.status, 403, "{method} {path}: {}", reply.body);
        assert_eq!(reply.body["code"], "forbidden", "{method} {path}");
        assert!(cors_headers(&reply).is_empty(), "{method} {path}");
    }
    // Every refusal is audited as a denial by the key.
    let denials = audit_entries(&w.vault)
        .into_iter()
        .skip(before)
        .filter(|e| e["actor"] == w.spk_id.as_str() && e["outcome"] == "denied")
        .count();
    assert!(
        denials >= routes.len(),
        "{denials} denials for {} routes",
        routes.len()
    );
    // Nothing happened: unsealed, the card and its token stand, the
    // principals are enabled.
    assert!(!w.vault.keyring.is_sealed());
    let read = call(
        &w.app,
        "GET",
        &format!("/v1/records/{card_id}"),
        Some(&w.payments),
        None,
    )
    .await;
    assert_eq!(read.status, 200);
    let detok = call(
        &w.app,
        "POST",
        "/v1/tokens/detokenize",
        Some(&w.payments),
        Some(json!({"tokens": [token]})),
    )
    .await;
    assert_eq!(detok.status, 200, "{}", detok.body);
    assert!(
        w.vault
            .state
            .principals
            .list()
            .unwrap()
            .iter()
            .all(|p| !p.disabled)
    );
    // The key still works for what it may do.
    collected(&w, card()).await;
}

#[tokio::test]
async fn a_publishable_key_needs_one_of_its_origins() {
    let w = world().await;
    let before = audit_entries(&w.vault).len();
    for origin in [
        None,
        Some(OTHER_ORIGIN),
        Some("null"),
        Some("https://shop.example.evil.example"),
        Some("https://SHOP.example"),
        Some("http://shop.example"),
    ] {
        let reply = from_origin(
            &w.app,
            "POST",
            "/v1/records/card",
            Some(&w.spk),
            origin,
            Some(card()),
        )
        .await;
        assert_eq!(reply.status, 403, "{origin:?}: {}", reply.body);
        assert_eq!(reply.body["code"], "forbidden");
        // No CORS header for a refused origin.
        assert!(
            header(&reply, "access-control-allow-origin").is_none(),
            "{origin:?}"
        );
    }
    // Two Origin headers are no origin.
    let two = call_with(
        &w.app,
        "POST",
        "/v1/records/card",
        Some(&w.spk),
        Some(card()),
        &[("origin", TEST_ORIGIN), ("origin", TEST_ORIGIN)],
    )
    .await;
    assert_eq!(two.status, 403);
    // Each refusal is audited; no card was made.
    let refusals: Vec<Value> = audit_entries(&w.vault)
        .into_iter()
        .skip(before)
        .filter(|e| e["action"] == "collect.origin_refused")
        .collect();
    assert_eq!(refusals.len(), 7);
    assert!(
        refusals
            .iter()
            .all(|e| e["actor"] == w.spk_id.as_str() && e["outcome"] == "denied")
    );
    assert_eq!(refusals[0]["reason"], "no origin");
    assert!(
        !audit_entries(&w.vault)
            .iter()
            .skip(before)
            .any(|e| e["action"] == "record.create")
    );
    // The other key's origins are its own: TEST_ORIGIN only, not DEV_ORIGIN.
    let reply = from_origin(
        &w.app,
        "POST",
        "/v1/records/card",
        Some(&w.other_spk),
        Some(DEV_ORIGIN),
        Some(card()),
    )
    .await;
    assert_eq!(reply.status, 403);
    // Service keys are not bound to origins (servers send none).
    let reply = call(
        &w.app,
        "POST",
        "/v1/records/card",
        Some(&w.payments),
        Some(card()),
    )
    .await;
    assert_eq!(reply.status, 201);
}

#[tokio::test]
async fn disabling_the_owner_or_the_key_makes_it_unusable_at_once() {
    let w = world().await;
    collected(&w, card()).await;
    let preflight = |app: Router| async move {
        from_origin(
            &app,
            "OPTIONS",
            "/v1/records/card",
            None,
            Some(DEV_ORIGIN),
            None,
        )
        .await
        .status
    };
    assert_eq!(preflight(w.app.clone()).await, 204);
    // Disable the owner service: the key is refused (401, as a disabled
    // principal's key is), and its origins no longer get CORS.
    let reply = call(
        &w.app,
        "DELETE",
        &format!("/v1/principals/{}", w.payments_id),
        Some(&w.vault.admin_api_key),
        None,
    )
    .await;
    assert_eq!(reply.status, 204);
    let reply = collect(&w, card()).await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    assert_eq!(preflight(w.app.clone()).await, 403);
    // The other owner's key still works; TEST_ORIGIN is still its own.
    let reply = from_origin(
        &w.app,
        "POST",
        "/v1/records/card",
        Some(&w.other_spk),
        Some(TEST_ORIGIN),
        Some(card()),
    )
    .await;
    assert_eq!(reply.status, 201);
    let reply = from_origin(
        &w.app,
        "OPTIONS",
        "/v1/records/card",
        None,
        Some(TEST_ORIGIN),
        None,
    )
    .await;
    assert_eq!(reply.status, 204);
    // A disabled publishable key: refused; its origin loses CORS.
    let other_spk_id = w.vault.principal_id("other-checkout");
    let reply = call(
        &w.app,
        "DELETE",
        &format!("/v1/principals/{other_spk_id}"),
        Some(&w.vault.admin_api_key),
        None,
    )
    .await;
    assert_eq!(reply.status, 204);
    let reply = from_origin(
        &w.app,
        "POST",
        "/v1/records/card",
        Some(&w.other_spk),
        Some(TEST_ORIGIN),
        Some(card()),
    )
    .await;
    assert_eq!(reply.status, 401);
    let reply = from_origin(
        &w.app,
        "OPTIONS",
        "/v1/records/card",
        None,
        Some(TEST_ORIGIN),
        None,
    )
    .await;
    assert_eq!(reply.status, 403);
    // A new key for the origin brings it back, at once.
    let owner = w.vault.principal_id("other-payments");
    publishable_key(
        &w.app,
        &w.vault.admin_api_key,
        "new-checkout",
        &owner,
        &[TEST_ORIGIN],
    )
    .await;
    let reply = from_origin(
        &w.app,
        "OPTIONS",
        "/v1/records/card",
        None,
        Some(TEST_ORIGIN),
        None,
    )
    .await;
    assert_eq!(reply.status, 204);
    // A key whose prefix is changed to a service key's does not pass.
    let disguised = w.spk.replacen("spk_", "srk_", 1);
    assert_eq!(
        call(&w.app, "GET", "/v1/keys", Some(&disguised), None)
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn cors_only_on_the_collect_routes_and_only_for_allowed_origins() {
    let w = world().await;
    let card_id = collected(&w, card()).await;
    let cvc_path = format!("/v1/records/{card_id}/cvc");
    for path in ["/v1/records/card", cvc_path.as_str()] {
        for origin in [TEST_ORIGIN, DEV_ORIGIN] {
            let reply = call_with(
                &w.app,
                "OPTIONS",
                path,
                None,
                None,
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                    (
                        "access-control-request-headers",
                        "authorization, content-type",
                    ),
                ],
            )
            .await;
            assert_eq!(reply.status, 204, "{path} {origin}: {}", reply.body);
            assert_eq!(header(&reply, "access-control-allow-origin"), Some(origin));
            assert_eq!(header(&reply, "access-control-allow-methods"), Some("POST"));
            assert_eq!(
                header(&reply, "access-control-allow-headers"),
                Some("authorization, content-type, x-request-id")
            );
            assert_eq!(header(&reply, "access-control-max-age"), Some("600"));
            assert_eq!(header(&reply, "vary"), Some("origin"));
            assert!(header(&reply, "access-control-allow-credentials").is_none());
        }
        // Another origin, or none: refused, without a CORS header.
        for origin in [Some(OTHER_ORIGIN), Some("null"), None] {
            let reply = from_origin(&w.app, "OPTIONS", path, None, origin, None).await;
            assert_eq!(reply.status, 403, "{path} {origin:?}");
            assert!(cors_headers(&reply).is_empty(), "{path} {origin:?}");
        }
    }
    // Actual responses on the collect routes: ACAO for an allowed origin.
    let reply = collect(&w, card()).await;
    assert_eq!(reply.status, 201);
    assert_eq!(
        header(&reply, "access-control-allow-origin"),
        Some(TEST_ORIGIN)
    );
    assert_eq!(header(&reply, "vary"), Some("origin"));
    let reply = attach(&w, &w.spk, &card_id, json!("123")).await;
    assert_eq!(reply.status, 204);
    assert_eq!(
        header(&reply, "access-control-allow-origin"),
        Some(TEST_ORIGIN)
    );
    // Errors too, so the page can read them (a 422 here).
    let reply = attach(&w, &w.spk, &card_id, json!("12")).await;
    assert_eq!(reply.status, 422);
    assert_eq!(
        header(&reply, "access-control-allow-origin"),
        Some(TEST_ORIGIN)
    );
    // A refused origin's answer has none.
    let reply = from_origin(
        &w.app,
        "POST",
        "/v1/records/card",
        Some(&w.spk),
        Some(OTHER_ORIGIN),
        Some(card()),
    )
    .await;
    assert_eq!(reply.status, 403);
    assert!(cors_headers(&reply).is_empty());
    // Every other route sends no CORS header at all, whatever the origin,
    // method or credential.
    let others: Vec<(&str, String, Option<&str>)> = vec![
        ("GET", "/v1/sys/health".into(), None),
        ("GET", "/v1/openapi.json".into(), None),
        ("OPTIONS", "/v1/sys/health".into(), None),
        ("OPTIONS", format!("/v1/records/{card_id}"), None),
        ("OPTIONS", "/v1/records/kyc".into(), None),
        ("OPTIONS", "/v1/tokens/detokenize".into(), None),
        ("OPTIONS", "/v1/nowhere".into(), None),
        (
            "GET",
            format!("/v1/records/{card_id}"),
            Some(w.payments.as_str()),
        ),
        (
            "GET",
            format!("/v1/records/{card_id}"),
            Some(w.spk.as_str()),
        ),
        ("POST", "/v1/records/kyc".into(), Some(w.spk.as_str())),
        (
            "GET",
            "/v1/principals".into(),
            Some(w.vault.admin_api_key.as_str()),
        ),
        ("POST", "/v1/auth/login".into(), None),
        ("GET", "/v1/nowhere".into(), Some(w.spk.as_str())),
    ];
    for (method, path, bearer) in &others {
        for origin in [TEST_ORIGIN, OTHER_ORIGIN] {
            let reply = call_with(
                &w.app,
                method,
                path,
                *bearer,
                None,
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                ],
            )
            .await;
            assert!(
                cors_headers(&reply).is_empty(),
                "{method} {path} {origin}: {:?}",
                reply.headers
            );
            assert_ne!(reply.status, 204, "{method} {path}");
        }
    }
}

/// A request from `addr` (as the server's `ConnectInfo` gives it).
async fn from_address(app: &Router, bearer: &str, addr: SocketAddr) -> u16 {
    let request = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/records/card")
        .header("authorization", format!("Bearer {bearer}"))
        .header("origin", TEST_ORIGIN)
        .header("content-type", "application/json")
        .extension(ConnectInfo(addr))
        .body(axum::body::Body::from(card().to_string()))
        .unwrap();
    let reply = send_request(app, request).await;
    if reply.status == 429 {
        assert_eq!(reply.body["code"], "rate_limited");
        let wait: u64 = header(&reply, "retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
    }
    reply.status
}

/// Sends `n` requests at once; how many answered each status.
async fn burst(
    app: &Router,
    n: usize,
    request: impl Fn(usize) -> (String, SocketAddr),
) -> BTreeMap<u16, usize> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let app = app.clone();
            let (key, addr) = request(i);
            tokio::spawn(async move { from_address(&app, &key, addr).await })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for task in tasks {
        *counts.entry(task.await.unwrap()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_key_limit_lets_exactly_its_limit_through_in_parallel() {
    let w = world_with(settings_with(CollectSettings {
        per_key_per_minute: 5,
        per_address_per_minute: 1000,
        ..CollectSettings::default()
    }))
    .await;
    let addr = |i: usize| SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 40000));
    let spk = w.spk.clone();
    let counts = burst(&w.app, 40, |i| (spk.clone(), addr(i))).await;
    assert_eq!(counts, BTreeMap::from([(201, 5), (429, 35)]));
    // Another key has its own window.
    let other = w.other_spk.clone();
    let counts = burst(&w.app, 8, |i| (other.clone(), addr(100 + i))).await;
    assert_eq!(counts, BTreeMap::from([(201, 5), (429, 3)]));
    // A minute later the window has room again.
    w.clock.advance(time::Duration::seconds(60));
    let counts = burst(&w.app, 7, |i| (spk.clone(), addr(200 + i))).await;
    assert_eq!(counts, BTreeMap::from([(201, 5), (429, 2)]));
    // Exactly as many cards were made as were let through.
    let created = audit_entries(&w.vault)
        .iter()
        .filter(|e| e["action"] == "record.create")
        .count();
    assert_eq!(created, 15);
    // Service keys are not counted against any collect window.
    assert_eq!(
        call(
            &w.app,
            "POST",
            "/v1/records/card",
            Some(&w.payments),
            Some(card())
        )
        .await
        .status,
        201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_address_limit_lets_exactly_its_limit_through_in_parallel() {
    let w = world_with(settings_with(CollectSettings {
        per_key_per_minute: 1000,
        per_address_per_minute: 4,
        ..CollectSettings::default()
    }))
    .await;
    let here = SocketAddr::from(([192, 0, 2, 7], 50000));
    let there = SocketAddr::from(([192, 0, 2, 8], 50000));
    let (spk, other) = (w.spk.clone(), w.other_spk.clone());
    // Two keys from one address share the address's window.
    let counts = burst(&w.app, 30, |i| {
        (
            if i % 2 == 0 {
                spk.clone()
            } else {
                other.clone()
            },
            SocketAddr::new(here.ip(), 50000 + i as u16),
        )
    })
    .await;
    assert_eq!(counts, BTreeMap::from([(201, 4), (429, 26)]));
    // Unknown keys from that address are refused before any lookup.
    let unknown = format!("spk_{}", "a".repeat(64));
    assert_eq!(from_address(&w.app, &unknown, here).await, 429);
    // Another address has its own window; an unknown key there costs one.
    assert_eq!(from_address(&w.app, &unknown, there).await, 401);
    let counts = burst(&w.app, 10, |_| (spk.clone(), there)).await;
    assert_eq!(counts, BTreeMap::from([(201, 3), (429, 7)]));
    w.clock.advance(time::Duration::seconds(60));
    assert_eq!(from_address(&w.app, &spk, here).await, 201);
}

#[tokio::test]
async fn cvcs_attach_for_the_owner_and_its_key_only() {
    let w = world().await;
    let card_id = collected(&w, card()).await;
    let amex_id = collected(&w, amex()).await;
    let cvcs = &w.vault.state.cvcs;
    // The publishable key attaches one to its owner's card.
    let reply = attach(&w, &w.spk, &card_id, json!("123")).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    assert_eq!(reply.body, Value::Null);
    assert!(cvcs.holds(&card_id));
    // Audited as `card.cvc_attached`, naming the card only.
    let entries = audit_entries(&w.vault);
    let entry = entries
        .iter()
        .rev()
        .find(|e| e["action"] == "card.cvc_attached")
        .unwrap();
    assert_eq!(entry["target"], card_id.as_str());
    assert_eq!(entry["actor"], w.spk_id.as_str());
    assert_eq!(entry["outcome"], "allowed");
    assert_eq!(entry["reason"], format!("for {}", w.payments_id));
    // Another service, another owner's key: not found, nothing replaced.
    for key in [&w.other_payments, &w.other_spk] {
        let reply = attach(&w, key, &card_id, json!("999")).await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (404, Some("not_found"))
        );
    }
    let denied = audit_entries(&w.vault)
        .into_iter()
        .filter(|e| {
            e["action"] == "card.cvc_attached"
                && e["outcome"] == "denied"
                && e["target"] == card_id.as_str()
        })
        .count();
    assert_eq!(denied, 2);
    // Roles without the operation: 403.
    let auditor = w.vault.service("auditor-svc", Role::Auditor);
    for key in [&w.vault.admin_api_key, &auditor] {
        let reply = attach(&w, key, &card_id, json!("999")).await;
        assert_eq!(reply.status, 403);
    }
    // No credential: 401.
    let reply = from_origin(
        &w.app,
        "POST",
        &format!("/v1/records/{card_id}/cvc"),
        None,
        Some(TEST_ORIGIN),
        Some(json!({"cvc": "999"})),
    )
    .await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        cvcs.take(&card_id).as_deref().map(String::as_str),
        Some("123")
    );
    // Single use.
    assert_eq!(cvcs.take(&card_id), None);
    // The owner service itself may attach too; a new one replaces the old.
    assert_eq!(
        attach(&w, &w.payments, &card_id, json!("111")).await.status,
        204
    );
    assert_eq!(attach(&w, &w.spk, &card_id, json!("222")).await.status, 204);
    assert_eq!(cvcs.len(), 1);
    assert_eq!(
        cvcs.take(&card_id).as_deref().map(String::as_str),
        Some("222")
    );
    // Amex takes 4 digits.
    assert_eq!(
        attach(&w, &w.spk, &amex_id, json!("1234")).await.status,
        204
    );
    assert_eq!(
        cvcs.take(&amex_id).as_deref().map(String::as_str),
        Some("1234")
    );
    // Unknown ids, records that are not cards, erased cards.
    let bank = call(
        &w.app,
        "POST",
        "/v1/records/bank_account",
        Some(&w.payments),
        Some(json!({"iban": "DE89 3704 0044 0532 0130 00"})),
    )
    .await
    .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let unknown = format!("card_{}", "0".repeat(24));
    for id in [unknown.as_str(), bank.as_str(), "nonsense", "tok_abc"] {
        let reply = attach(&w, &w.payments, id, json!("123")).await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (404, Some("not_found")),
            "{id}"
        );
    }
    let reply = call(
        &w.app,
        "DELETE",
        &format!("/v1/records/{card_id}"),
        Some(&w.payments),
        None,
    )
    .await;
    assert_eq!(reply.status, 204);
    let reply = attach(&w, &w.spk, &card_id, json!("123")).await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (410, Some("erased"))
    );
    assert!(cvcs.is_empty());
}

#[tokio::test]
async fn bad_cvcs_are_422_naming_cvc_and_never_echoed() {
    let w = world().await;
    let card_id = collected(&w, card()).await;
    let amex_id = collected(&w, amex()).await;
    let path = format!("/v1/records/{card_id}/cvc");
    let cases: Vec<(String, Value)> = vec![
        (card_id.clone(), json!({"cvc": "12"})),
        (card_id.clone(), json!({"cvc": "1234"})),
        (card_id.clone(), json!({"cvc": "12a"})),
        (card_id.clone(), json!({"cvc": " 123"})),
        (card_id.clone(), json!({"cvc": "９８７"})),
        (card_id.clone(), json!({"cvc": ""})),
        (card_id.clone(), json!({"cvc": 987})),
        (card_id.clone(), json!({"cvc": null})),
        (card_id.clone(), json!({"cvc": ["987"]})),
        (card_id.clone(), json!({})),
        (amex_id.clone(), json!({"cvc": "987"})),
        (amex_id.clone(), json!({"cvc": "98765"})),
    ];
    for (id, body) in cases {
        for key in [&w.spk, &w.payments] {
            let reply = from_origin(
                &w.app,
                "POST",
                &format!("/v1/records/{id}/cvc"),
                Some(key),
                Some(TEST_ORIGIN),
                Some(body.clone()),
            )
            .await;
            assert_eq!(reply.status, 422, "{body}: {}", reply.body);
            assert_eq!(reply.body["code"], "validation_failed");
            assert_eq!(reply.body["errors"][0]["field"], "cvc", "{body}");
            let text = reply.body.to_string();
            for secret in ["987", "9876", "12a", "1234"] {
                assert!(!text.contains(secret), "{body} echoed in {text}");
            }
        }
    }
    // Unknown fields are named, not echoed.
    let reply = from_origin(
        &w.app,
        "POST",
        &path,
        Some(&w.spk),
        Some(TEST_ORIGIN),
        Some(json!({"cvc": "123", "cvv": "987"})),
    )
    .await;
    assert_eq!(reply.status, 422);
    assert!(!reply.body.to_string().contains("987"));
    // Not JSON: 400; nothing held after any of it.
    let reply = call_with(
        &w.app,
        "POST",
        &path,
        Some(&w.payments),
        None,
        &[("content-type", "text/plain")],
    )
    .await;
    assert_eq!(reply.status, 400);
    assert!(w.vault.state.cvcs.is_empty());
}

#[tokio::test]
async fn a_cvc_is_gone_at_expiry() {
    let w = world_with(settings_with(CollectSettings {
        cvc_ttl_seconds: 120,
        ..test_settings().collect
    }))
    .await;
    let card_id = collected(&w, card()).await;
    assert_eq!(attach(&w, &w.spk, &card_id, json!("123")).await.status, 204);
    w.clock.advance(time::Duration::seconds(119));
    assert!(w.vault.state.cvcs.holds(&card_id));
    w.clock.advance(time::Duration::seconds(1));
    assert!(!w.vault.state.cvcs.holds(&card_id));
    assert_eq!(w.vault.state.cvcs.take(&card_id), None);
    // Attached again: held again, for the full time.
    assert_eq!(attach(&w, &w.spk, &card_id, json!("456")).await.status, 204);
    w.clock.advance(time::Duration::seconds(119));
    assert_eq!(
        w.vault
            .state
            .cvcs
            .take(&card_id)
            .as_deref()
            .map(String::as_str),
        Some("456")
    );
}

#[tokio::test]
async fn cvcs_are_bounded_and_a_full_store_answers_429() {
    let w = world_with(settings_with(CollectSettings {
        max_cvcs: 2,
        ..test_settings().collect
    }))
    .await;
    let cards = [
        collected(&w, card()).await,
        collected(&w, card()).await,
        collected(&w, card()).await,
    ];
    assert_eq!(
        attach(&w, &w.spk, &cards[0], json!("123")).await.status,
        204
    );
    w.clock.advance(time::Duration::seconds(100));
    assert_eq!(
        attach(&w, &w.spk, &cards[1], json!("123")).await.status,
        204
    );
    let reply = attach(&w, &w.spk, &cards[2], json!("123")).await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (429, Some("rate_limited"))
    );
    assert_eq!(header(&reply, "retry-after"), Some("800"));
    assert!(!w.vault.state.cvcs.holds(&cards[2]));
    let refused = audit_entries(&w.vault)
        .into_iter()
        .rev()
        .find(|e| e["action"] == "card.cvc_attached")
        .unwrap();
    assert_eq!(
        (refused["outcome"].as_str(), refused["target"].as_str()),
        (Some("error"), Some(cards[2].as_str()))
    );
    // Replacing a held one needs no room; one used makes room.
    assert_eq!(
        attach(&w, &w.spk, &cards[1], json!("456")).await.status,
        204
    );
    assert!(w.vault.state.cvcs.take(&cards[0]).is_some());
    assert_eq!(
        attach(&w, &w.spk, &cards[2], json!("123")).await.status,
        204
    );
}

#[tokio::test]
async fn cvcs_are_cleared_on_seal_and_gone_on_restart() {
    let w = world().await;
    let card_id = collected(&w, card()).await;
    assert_eq!(attach(&w, &w.spk, &card_id, json!("123")).await.status, 204);
    let reply = call(
        &w.app,
        "POST",
        "/v1/sys/seal",
        Some(&w.vault.admin_api_key),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(w.vault.state.cvcs.is_empty());
    // Sealed: the route answers 503 like every data route, and takes nothing.
    let reply = attach(&w, &w.spk, &card_id, json!("123")).await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (503, Some("sealed"))
    );
    w.vault
        .keyring
        .unseal(UnsealInput::Passphrase(Zeroizing::new(PASSPHRASE.into())))
        .unwrap();
    assert_eq!(w.vault.state.cvcs.take(&card_id), None);
    // Attach again, then "restart": a new server state over the same store
    // and keyring holds nothing (no CVC was persisted).
    assert_eq!(attach(&w, &w.spk, &card_id, json!("456")).await.status, 204);
    let restarted = AppState::new(
        Arc::clone(&w.vault.keyring),
        Arc::clone(&w.vault.store),
        w.clock.clone(),
        test_settings(),
    );
    assert!(restarted.cvcs.is_empty());
    assert_eq!(restarted.cvcs.take(&card_id), None);
    assert_eq!(
        w.vault
            .state
            .cvcs
            .take(&card_id)
            .as_deref()
            .map(String::as_str),
        Some("456")
    );
}

#[tokio::test]
async fn a_cvc_whose_audit_entry_fails_is_not_held() {
    let (vault, faulty) = faulty_vault();
    let app = vault.app();
    let payments = vault.service("payments", Role::PaymentService);
    let spk = publishable_key(
        &app,
        &vault.admin_api_key,
        "web",
        &vault.principal_id("payments"),
        &[TEST_ORIGIN],
    )
    .await;
    let card_id = call_with(
        &app,
        "POST",
        "/v1/records/card",
        Some(&spk),
        Some(card()),
        &[("origin", TEST_ORIGIN)],
    )
    .await
    .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    faulty.set_failing(true);
    let reply = call(
        &app,
        "POST",
        &format!("/v1/records/{card_id}/cvc"),
        Some(&payments),
        Some(json!({"cvc": "123"})),
    )
    .await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (503, Some("audit_unavailable"))
    );
    assert!(!vault.state.cvcs.holds(&card_id));
    faulty.set_failing(false);
    let reply = call(
        &app,
        "POST",
        &format!("/v1/records/{card_id}/cvc"),
        Some(&payments),
        Some(json!({"cvc": "123"})),
    )
    .await;
    assert_eq!(reply.status, 204);
    assert!(vault.state.cvcs.holds(&card_id));
}

/// Invariant 1 for CVCs: attached (and refused) CVCs are nowhere in the
/// data directory, the audit export or the log. A CVC is a few digits, so
/// the raw-byte scan looks for it as a JSON string (`"8317"`) and in the
/// `cvc` field; the store is also compared before and after: attaching a
/// CVC writes audit entries and nothing else, and no audit entry holds it.
#[tokio::test]
async fn no_cvc_reaches_the_store_the_audit_log_or_the_logs() {
    let captured = captured_log();
    let w = world().await;
    let card_id = collected(&w, card()).await;
    let amex_id = collected(&w, amex()).await;
    let before: BTreeMap<Vec<u8>, Vec<u8>> = w
        .vault
        .store
        .scan_prefix(b"")
        .unwrap()
        .into_iter()
        .collect();
    let (visa_cvc, amex_cvc, refused_cvc) = ("731", "8317", "95827");
    assert_eq!(
        attach(&w, &w.spk, &card_id, json!(visa_cvc)).await.status,
        204
    );
    assert_eq!(
        attach(&w, &w.payments, &amex_id, json!(amex_cvc))
            .await
            .status,
        204
    );
    assert_eq!(
        attach(&w, &w.spk, &card_id, json!(refused_cvc))
            .await
            .status,
        422
    );
    assert_eq!(
        attach(&w, &w.other_payments, &card_id, json!("5296"))
            .await
            .status,
        404
    );
    let after: BTreeMap<Vec<u8>, Vec<u8>> = w
        .vault
        .store
        .scan_prefix(b"")
        .unwrap()
        .into_iter()
        .collect();
    for (key, value) in &after {
        if before.get(key) != Some(value) {
            // The audit entries, and the shared rate windows of the collect
            // limits (issue 12): event times only, 8 bytes each.
            let window = key.starts_with(b"lim/collect_") && value.len() % 8 == 0;
            assert!(
                key.starts_with(b"au/") || window,
                "a CVC attach wrote {}",
                String::from_utf8_lossy(key)
            );
        }
    }
    assert!(
        before.keys().all(|k| after.contains_key(k)),
        "a CVC attach deleted something"
    );
    // The new audit entries: every field but the chain's own hashes is free
    // of the CVCs.
    let new_entries: Vec<Value> = after
        .iter()
        .filter(|(k, v)| k.starts_with(b"au/e/") && before.get(*k) != Some(*v))
        .map(|(_, v)| {
            serde_json::to_value(strongroom::audit::AuditEntry::from_stored(v).unwrap()).unwrap()
        })
        .collect();
    assert_eq!(new_entries.len(), 3, "{new_entries:?}");
    for entry in &new_entries {
        for (field, value) in entry.as_object().unwrap() {
            // Random hex (the chain's hashes, a generated request id) may
            // hold any digits.
            if matches!(field.as_str(), "hash" | "prev_hash" | "request_id") {
                continue;
            }
            let text = value.to_string();
            for cvc in [visa_cvc, amex_cvc, refused_cvc, "5296"] {
                assert!(!text.contains(cvc), "{cvc} in audit field {field}: {text}");
            }
        }
    }
    w.vault.state.seal();
    w.vault.store.flush().unwrap();
    let dirs = [w.vault.data_dir(), w.vault.keys_dir()];
    let dirs: Vec<&std::path::Path> = dirs.iter().map(|d| d.as_path()).collect();
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("request"), "the log capture saw nothing");
    let mut export = Vec::new();
    strongroom::audit::export_store(w.vault.store.as_ref(), &mut export).unwrap();
    let export = String::from_utf8(export).unwrap();
    assert!(export.contains("card.cvc_attached"));
    for cvc in [visa_cvc, amex_cvc, refused_cvc, "5296"] {
        let quoted = format!("\"{cvc}\"");
        let field = format!("cvc\":\"{cvc}");
        for needle in [&quoted, &field] {
            assert!(
                files_containing(&dirs, needle.as_bytes()).is_empty(),
                "{needle} on disk"
            );
            assert!(!log.contains(needle.as_str()), "{needle} in the log");
            assert!(
                !export.contains(needle.as_str()),
                "{needle} in the audit export"
            );
        }
        assert!(!log_words(&log).contains(cvc), "{cvc} in the log");
    }
    assert!(!log.contains("\"cvc\""), "a CVC body reached the log");
    // Nor do the publishable keys themselves.
    for key in [&w.spk, &w.other_spk] {
        let digits = key.trim_start_matches("spk_");
        for secret in [key.as_str(), digits] {
            assert!(
                files_containing(&dirs, secret.as_bytes()).is_empty(),
                "a publishable key is on disk"
            );
            assert!(
                !log.contains(secret) && !export.contains(secret),
                "a publishable key was logged or audited"
            );
        }
    }
}

/// The OpenAPI document has the CVC route and the publishable-key fields.
#[test]
fn the_openapi_document_has_the_collect_additions() {
    let doc = serde_json::to_value(strongroom::api::openapi_document()).unwrap();
    let op = &doc["paths"]["/v1/records/{id}/cvc"]["post"];
    assert_eq!(op["operationId"], "attach_cvc");
    for status in ["204", "401", "403", "404", "410", "422", "429", "503"] {
        assert!(op["responses"][status].is_object(), "{status}");
    }
    assert!(op["responses"]["429"]["headers"]["retry-after"].is_object());
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["AttachCvc"]["properties"]["cvc"]["pattern"],
        "^[0-9]{3,4}$"
    );
    assert_eq!(schemas["AttachCvc"]["additionalProperties"], false);
    let principal = &schemas["Principal"]["properties"];
    assert!(principal["owner"].is_object() && principal["allowed_origins"].is_object());
    let kinds = schemas["PrincipalKind"]["enum"].as_array().unwrap();
    assert!(kinds.contains(&json!("publishable")));
    let roles = schemas["Role"]["enum"].as_array().unwrap();
    assert!(roles.contains(&json!("collector")));
    let publishable = &schemas["NewPublishable"];
    let required: HashSet<&str> = publishable["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        required,
        HashSet::from(["name", "kind", "roles", "owner", "allowed_origins"])
    );
    assert_eq!(publishable["properties"]["allowed_origins"]["maxItems"], 16);
    let variants = schemas["NewPrincipal"]["oneOf"].as_array().unwrap();
    assert!(
        variants
            .iter()
            .any(|v| v["$ref"] == "#/components/schemas/NewPublishable")
    );
    let collected = &schemas["CollectedCard"]["properties"];
    assert!(collected.get("fingerprint").is_none() && collected["id"].is_object());
}

/// Erasing a card drops the CVC held for it at once: it is not left to its
/// TTL (second review, finding B10).
#[tokio::test]
async fn erasing_a_card_drops_its_cvc() {
    let w = world().await;
    let card_id = collected(&w, card()).await;
    let reply = attach(&w, &w.spk, &card_id, json!("123")).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    assert!(w.vault.state.cvcs.holds(&card_id));
    let reply = call(
        &w.app,
        "DELETE",
        &format!("/v1/records/{card_id}"),
        Some(&w.payments),
        None,
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    assert!(!w.vault.state.cvcs.holds(&card_id));
}
