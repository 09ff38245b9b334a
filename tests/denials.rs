//! Every denial names what the request tried to reach, so an investigator
//! asking "who tried to reach record X?" finds every attempt; what is not
//! an id this vault issued appears only as a fingerprint.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use axum::Router;
use common::*;
use serde_json::{Value, json};
use strongroom::access::Role;

const STAFF_PASSWORD: &str = "staff password 12";
const PAN: &str = "4242424242424242";

struct Scene {
    vault: TestVault,
    app: Router,
    payments: String,
    other_payments: String,
    auditor: String,
    officer: String,
    card_id: String,
    card_token: String,
    kyc_id: String,
}

async fn scene() -> Scene {
    let vault = passphrase_vault();
    let app = vault.app();
    let payments = vault.service("payments", Role::PaymentService);
    let other_payments = vault.service("other-payments", Role::PaymentService);
    let auditor = vault.service("auditor", Role::Auditor);
    vault.staff("officer", Role::ComplianceOfficer, STAFF_PASSWORD);
    let officer = call(
        &app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"username": "officer", "password": STAFF_PASSWORD})),
    )
    .await
    .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let card = call(
        &app,
        "POST",
        "/v1/records/card",
        Some(&payments),
        Some(json!({"pan": PAN, "exp_month": 12, "exp_year": 2030})),
    )
    .await;
    assert_eq!(card.status, 201, "{}", card.body);
    let kyc = call(
        &app,
        "POST",
        "/v1/records/kyc",
        Some(&payments),
        Some(json!({
            "subject_ref": "user-42",
            "legal_name": {"given": "Ada", "family": "Lovelace"},
            "date_of_birth": "1815-12-10",
            "national_id": {"type": "passport", "number": "925076473", "country": "GB"}
        })),
    )
    .await;
    assert_eq!(kyc.status, 201, "{}", kyc.body);
    Scene {
        card_id: card.body["id"].as_str().unwrap().to_owned(),
        card_token: card.body["token"].as_str().unwrap().to_owned(),
        kyc_id: kyc.body["id"].as_str().unwrap().to_owned(),
        vault,
        app,
        payments,
        other_payments,
        auditor,
        officer,
    }
}

impl Scene {
    async fn denials(&self) -> Vec<Value> {
        let page = call(
            &self.app,
            "GET",
            "/v1/audit?limit=1000",
            Some(&self.vault.admin_api_key),
            None,
        )
        .await;
        assert_eq!(page.status, 200);
        page.body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["outcome"] == "denied")
            .cloned()
            .collect()
    }

    /// Asserts a denied `action` naming `target` was audited.
    async fn assert_denied(&self, action: &str, target: &str) {
        let denials = self.denials().await;
        assert!(
            denials
                .iter()
                .any(|e| e["action"] == action && e["target"] == target),
            "no {action} denial on {target}: {denials:#?}"
        );
    }
}

#[tokio::test]
async fn denials_name_the_record_token_request_or_principal() {
    let s = scene().await;
    let kyc_path = format!("/v1/records/{}", s.kyc_id);
    // A role that may not: 403, and the denial names the record.
    let cases = [
        (
            "POST",
            format!("{kyc_path}/reveal"),
            &s.payments,
            Some(json!({"fields": ["legal_name"], "reason": "r", "ticket": "T-1"})),
            "record.reveal",
        ),
        ("GET", kyc_path.clone(), &s.auditor, None, "record.read"),
        (
            "PATCH",
            kyc_path.clone(),
            &s.auditor,
            Some(json!({"email": "a@b.example"})),
            "record.update",
        ),
        ("DELETE", kyc_path.clone(), &s.officer, None, "record.erase"),
        (
            "POST",
            "/v1/access-requests".to_owned(),
            &s.payments,
            Some(
                json!({"record_id": s.kyc_id, "fields": ["national_id"], "reason": "r", "ticket": "T-1"}),
            ),
            "access.request",
        ),
    ];
    for (method, path, who, body, action) in cases {
        let reply = call(&s.app, method, &path, Some(who), body).await;
        assert_eq!(reply.status, 403, "{method} {path}: {}", reply.body);
        s.assert_denied(action, &s.kyc_id).await;
    }

    // Tokens: the denial names what the token stands for, never the token.
    let reply = call(
        &s.app,
        "POST",
        "/v1/tokens/detokenize",
        Some(&s.auditor),
        Some(json!({"tokens": [s.card_token]})),
    )
    .await;
    assert_eq!(reply.status, 403);
    s.assert_denied("token.detokenize", &s.card_id).await;
    let reply = call(
        &s.app,
        "DELETE",
        &format!("/v1/tokens/{}", s.card_token),
        Some(&s.officer),
        None,
    )
    .await;
    assert_eq!(reply.status, 403);
    s.assert_denied("token.revoke", &s.card_id).await;

    // An access request and a principal.
    let ar = call(
        &s.app,
        "POST",
        "/v1/access-requests",
        Some(&s.officer),
        Some(json!({"record_id": s.kyc_id, "fields": ["national_id"], "reason": "r", "ticket": "T-1"})),
    )
    .await;
    assert_eq!(ar.status, 201);
    let ar = ar.body["id"].as_str().unwrap().to_owned();
    for verb in ["approve", "deny"] {
        let reply = call(
            &s.app,
            "POST",
            &format!("/v1/access-requests/{ar}/{verb}"),
            Some(&s.officer),
            None,
        )
        .await;
        assert_eq!(reply.status, 403);
    }
    s.assert_denied("access.approve", &ar).await;
    s.assert_denied("access.deny", &ar).await;
    let list = call(
        &s.app,
        "GET",
        "/v1/principals",
        Some(&s.vault.admin_api_key),
        None,
    )
    .await;
    let officer_id = list.body["principals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "officer")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = call(
        &s.app,
        "DELETE",
        &format!("/v1/principals/{officer_id}"),
        Some(&s.auditor),
        None,
    )
    .await;
    assert_eq!(reply.status, 403);
    s.assert_denied("principal.disable", &officer_id).await;

    // Whatever was denied, no token reached the audit log.
    let text = Value::Array(s.denials().await).to_string();
    assert!(!text.contains(&s.card_token));
}

#[tokio::test]
async fn other_owners_records_and_tokens_are_not_found_and_audited_as_denials() {
    let s = scene().await;
    let card_path = format!("/v1/records/{}", s.card_id);
    for (method, body, action) in [
        ("GET", None, "record.read"),
        (
            "PATCH",
            Some(json!({"holder_name": "Eve"})),
            "record.update",
        ),
        ("DELETE", None, "record.erase"),
    ] {
        let reply = call(&s.app, method, &card_path, Some(&s.other_payments), body).await;
        assert_eq!(reply.status, 404, "{method}: {}", reply.body);
        s.assert_denied(action, &s.card_id).await;
    }
    let reply = call(
        &s.app,
        "DELETE",
        &format!("/v1/tokens/{}", s.card_token),
        Some(&s.other_payments),
        None,
    )
    .await;
    assert_eq!(reply.status, 404);
    s.assert_denied("token.revoke", &s.card_id).await;
    let reply = call(
        &s.app,
        "POST",
        "/v1/tokens/detokenize",
        Some(&s.other_payments),
        Some(json!({"tokens": [s.card_token]})),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.body["results"][&s.card_token]["error"], "not_found",
        "{}",
        reply.body
    );
    s.assert_denied("token.detokenize", &s.card_id).await;
    // And the token still works for its owner: nothing was revoked.
    let own = call(
        &s.app,
        "POST",
        "/v1/tokens/detokenize",
        Some(&s.payments),
        Some(json!({"tokens": [s.card_token]})),
    )
    .await;
    assert_eq!(own.body["results"][&s.card_token]["view"], "masked");
}

#[tokio::test]
async fn a_value_typed_where_an_id_belongs_is_audited_only_as_a_fingerprint() {
    let s = scene().await;
    // A PAN pasted into the path by a caller who may not read records.
    let reply = call(
        &s.app,
        "GET",
        &format!("/v1/records/{PAN}"),
        Some(&s.auditor),
        None,
    )
    .await;
    assert_eq!(reply.status, 403);
    let reply = call(
        &s.app,
        "POST",
        "/v1/tokens/detokenize",
        Some(&s.auditor),
        Some(json!({"tokens": [PAN]})),
    )
    .await;
    assert_eq!(reply.status, 403);
    let denials = s.denials().await;
    let text = Value::Array(denials.clone()).to_string();
    assert!(!text.contains(PAN), "a PAN reached the audit log");
    for action in ["record.read", "token.detokenize"] {
        assert!(
            denials.iter().any(|e| e["action"] == action
                && e["target"].as_str().is_some_and(|t| t.starts_with("hmac:"))),
            "{action}: {denials:#?}"
        );
    }
}

#[tokio::test]
async fn a_refused_batch_writes_a_bounded_number_of_entries() {
    let s = scene().await;
    let before = s.denials().await.len();
    // As many as the test server's 4 KiB body limit takes.
    let junk: Vec<String> = (0..300).map(|i| format!("t{i}")).collect();
    let reply = call(
        &s.app,
        "POST",
        "/v1/tokens/detokenize",
        Some(&s.auditor),
        Some(json!({"tokens": junk})),
    )
    .await;
    assert_eq!(reply.status, 403);
    let written = s.denials().await.len() - before;
    assert!(
        (1..=10).contains(&written),
        "one refused request wrote {written} entries"
    );
}

#[tokio::test]
async fn an_id_that_reaches_past_a_record_is_not_found() {
    let s = scene().await;
    // `card_…/body` would name the record's sealed body in the store.
    for path in [
        format!("/v1/records/{}%2Fbody", s.card_id),
        format!("/v1/records/{}%2fbody", s.card_id),
    ] {
        let reply = call(&s.app, "GET", &path, Some(&s.payments), None).await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (404, Some("not_found")),
            "{path}: {}",
            reply.body
        );
    }
    let reply = call(
        &s.app,
        "POST",
        "/v1/access-requests",
        Some(&s.officer),
        Some(json!({"record_id": format!("{}/body", s.card_id), "fields": ["pan"], "reason": "r", "ticket": "T-1"})),
    )
    .await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (404, Some("not_found")),
        "{}",
        reply.body
    );
}
