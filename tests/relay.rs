//! Relay routes under dual control, and their invocation against a real
//! HTTPS test processor on 127.0.0.1 (its certificate from a test CA that
//! the route's `ca_pem` trusts). Every refusal asserts that nothing reached
//! the processor.
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
use http_body_util::BodyExt;
use serde_json::{Value, json};
use strongroom::access::Role;
use strongroom::api::AppSettings;
use strongroom::clock::SystemClock;
use strongroom::keyring::SealMethod;
use strongroom::relay::upstream::RelaySettings;
use zeroize::Zeroizing;

use common::processor::{Behaviour, TestProcessor as Processor};
use common::tls::TestCa;
use common::{
    PASSPHRASE, Reply, TestVault, audit_entries, call, fast_settings, files_containing,
    new_vault_with, test_settings,
};

const PAN: &str = "4242424242424242";
const HOLDER: &str = "Ada Lovelace";
const PROCESSOR_KEY: &str = "sk_test_processor_secret_51HxQ";
const STAFF_PASSWORD: &str = "a long staff password for tests";

// ---- the vault ----

struct World {
    vault: TestVault,
    app: Router,
    ca: TestCa,
    admin: String,
    admin2: String,
    admin3: String,
    payments: String,
    other_payments: String,
}

fn world() -> World {
    let settings = AppSettings {
        relay: RelaySettings {
            allow_private_destinations: true,
            ..RelaySettings::default()
        },
        ..test_settings()
    };
    let vault = new_vault_with(
        SealMethod::Passphrase(Zeroizing::new(PASSPHRASE.to_owned())),
        fast_settings(),
        Arc::new(SystemClock),
        settings,
    );
    let app = vault.app();
    let admin = vault.admin_api_key.clone();
    let admin2 = vault.service("admin-2", Role::Admin);
    let admin3 = vault.service("admin-3", Role::Admin);
    let payments = vault.service("payments", Role::PaymentService);
    let other_payments = vault.service("other-payments", Role::PaymentService);
    World {
        vault,
        app,
        ca: TestCa::new("relay test CA"),
        admin,
        admin2,
        admin3,
        payments,
        other_payments,
    }
}

impl World {
    fn route_body(&self, name: &str, processor: &Processor) -> Value {
        json!({
            "name": name,
            "base_url": format!("{}/v1", processor.url()),
            "methods": ["POST"],
            "fields": ["pan", "exp_month", "exp_year", "holder_name", "cvc"],
            "ca_pem": self.ca.cert_pem(),
            "headers": {"Authorization": format!("Bearer {PROCESSOR_KEY}"), "X-Api-Version": "2024-06"},
            "timeout_ms": 10000,
            "response_headers": ["x-processor"],
        })
    }

    /// A route created by `admin` and approved by `admin2`.
    async fn active_route(&self, name: &str, processor: &Processor) {
        self.activate(self.route_body(name, processor)).await;
    }

    /// The route `body` describes, created by `admin` and approved by
    /// `admin2`.
    async fn activate(&self, body: Value) {
        let name = body["name"].as_str().unwrap().to_owned();
        let reply = call(
            &self.app,
            "POST",
            "/v1/relay/routes",
            Some(&self.admin),
            Some(body),
        )
        .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        assert_eq!(reply.body, json!({"name": name, "status": "pending"}));
        let reply = self.approve(&name, &self.admin2).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["status"], "active");
    }

    async fn approve(&self, name: &str, key: &str) -> Reply {
        call(
            &self.app,
            "POST",
            &format!("/v1/relay/routes/{name}/approve"),
            Some(key),
            None,
        )
        .await
    }

    /// A card stored by `key`: its id, token and PAN token.
    async fn card(&self, key: &str) -> (String, String, String) {
        let reply = call(
            &self.app,
            "POST",
            "/v1/records/card",
            Some(key),
            Some(json!({"pan": PAN, "exp_month": 7, "exp_year": 2031, "holder_name": HOLDER})),
        )
        .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        (
            reply.body["id"].as_str().unwrap().to_owned(),
            reply.body["token"].as_str().unwrap().to_owned(),
            reply.body["pan_token"].as_str().unwrap().to_owned(),
        )
    }

    /// Sends a relay call with a raw body and extra headers; the reply and
    /// its raw body text.
    async fn relay_raw(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (Reply, String) {
        use tower::ServiceExt;
        let mut builder = axum::http::Request::builder().method(method).uri(path);
        if let Some(key) = key {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        if let Some(ct) = content_type {
            builder = builder.header("content-type", ct);
        }
        for (n, v) in headers {
            builder = builder.header(*n, *v);
        }
        let response = self
            .app
            .clone()
            .oneshot(builder.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::String(text.clone()));
        (
            Reply {
                status,
                headers,
                body,
            },
            text,
        )
    }

    async fn relay_json(&self, path: &str, key: &str, body: Value) -> (Reply, String) {
        self.relay_raw(
            "POST",
            path,
            Some(key),
            Some("application/json"),
            &[],
            &body.to_string(),
        )
        .await
    }
}

fn charge(token: &str) -> Value {
    json!({
        "amount": 1999,
        "currency": "eur",
        "card": {
            "number": format!("{{{{{token}:pan}}}}"),
            "exp_month": format!("{{{{{token}:exp_month}}}}"),
            "exp_year": format!("{{{{{token}:exp_year}}}}"),
            "name": format!("{{{{{token}:holder_name}}}}"),
        }
    })
}

fn assert_refused(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.body["code"], code, "{}", reply.body);
    assert_eq!(reply.headers["content-type"], "application/problem+json");
    assert_eq!(reply.headers["x-strongroom-relay"], "refused");
}

// ---- invocation ----

#[tokio::test]
async fn the_processor_gets_the_card_and_the_caller_gets_none_of_it() {
    let w = world();
    let processor = Processor::start(&w.ca, Behaviour::Charge).await;
    w.active_route("acme", &processor).await;
    let (card_id, token, _) = w.card(&w.payments).await;

    let (reply, text) = w
        .relay_raw(
            "POST",
            "/v1/relay/acme/charges?expand=source",
            Some(&w.payments),
            Some("application/json"),
            &[
                ("idempotency-key", "order-1"),
                ("x-custom", "not forwarded"),
                ("accept", "application/json"),
            ],
            &charge(&token).to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{text}");
    assert_eq!(reply.headers["x-strongroom-relay"], "upstream");
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.headers["x-processor"], "test");
    assert_eq!(reply.body, json!({"id": "ch_1", "status": "succeeded"}));
    for secret in [PAN, HOLDER, "2031", PROCESSOR_KEY] {
        assert!(!text.contains(secret), "{secret} in the answer");
    }

    let received = processor.received();
    assert_eq!(received.len(), 1);
    let got = &received[0];
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/v1/charges?expand=source");
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(
        body,
        json!({"amount": 1999, "currency": "eur", "card": {"number": PAN, "exp_month": "07", "exp_year": "2031", "name": HOLDER}})
    );
    // The route's credential, never the caller's; only the chosen headers.
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {PROCESSOR_KEY}").as_str())
    );
    assert_eq!(got.header("x-api-version"), Some("2024-06"));
    assert_eq!(got.header("idempotency-key"), Some("order-1"));
    assert_eq!(got.header("accept"), Some("application/json"));
    assert!(got.header("x-custom").is_none());
    assert!(!got.headers.iter().any(|(_, v)| v.contains(&w.payments)));

    // Audited: one entry naming the card before sending, one with the
    // upstream status after; never a value.
    let entries = audit_entries(&w.vault);
    let invokes: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "relay.invoke")
        .collect();
    assert!(
        invokes
            .iter()
            .any(|e| e["target"] == card_id.as_str() && e["outcome"] == "allowed"),
        "{invokes:?}"
    );
    let finished = invokes
        .iter()
        .find(|e| e["target"] == "acme")
        .expect("the answer's entry");
    let reason = finished["reason"].as_str().unwrap();
    assert!(
        reason.contains("upstream status 200") && reason.contains(&card_id),
        "{reason}"
    );
    let all = serde_json::to_string(&entries).unwrap();
    for secret in [PAN, HOLDER, PROCESSOR_KEY, &token] {
        assert!(!all.contains(secret), "{secret} in the audit log");
    }
    // Neither the PAN nor the processor's key is in the data directory.
    for secret in [PAN, PROCESSOR_KEY] {
        assert!(
            files_containing(&[&w.vault.data_dir()], secret.as_bytes()).is_empty(),
            "{secret} on disk"
        );
    }
}

#[tokio::test]
async fn pan_tokens_and_form_bodies_work_too() {
    let w = world();
    let processor = Processor::start(&w.ca, Behaviour::Charge).await;
    // No response header allow-listed: only content-type comes back.
    let mut body = w.route_body("acme", &processor);
    body["response_headers"] = json!([]);
    w.activate(body).await;
    let (_, _, pan_token) = w.card(&w.payments).await;
    let form = format!(
        "amount=100&card%5Bnumber%5D={{{{{pan_token}:pan}}}}&card%5Bexp_month%5D={{{{{pan_token}:exp_month}}}}"
    );
    let (reply, text) = w
        .relay_raw(
            "POST",
            "/v1/relay/acme/charges",
            Some(&w.payments),
            Some("application/x-www-form-urlencoded"),
            &[],
            &form,
        )
        .await;
    assert_eq!(reply.status, 200, "{text}");
    assert!(
        reply.headers.get("x-processor").is_none(),
        "not allow-listed"
    );
    assert_eq!(reply.headers["content-type"], "application/json");
    let received = processor.received();
    assert_eq!(received.len(), 1);
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&received[0].body).unwrap();
    assert!(
        pairs.contains(&("card[number]".into(), PAN.into())),
        "{pairs:?}"
    );
    assert!(pairs.contains(&("card[exp_month]".into(), "07".into())));
    assert_eq!(
        received[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
}

#[tokio::test]
async fn an_echoing_processor_is_masked() {
    let w = world();
    let processor = Processor::start(&w.ca, Behaviour::EchoError).await;
    w.active_route("acme", &processor).await;
    let (_, token, _) = w.card(&w.payments).await;
    let (reply, text) = w
        .relay_json("/v1/relay/acme/charges", &w.payments, charge(&token))
        .await;
    assert_eq!(reply.status, 402, "{text}");
    assert_eq!(reply.headers["x-strongroom-relay"], "upstream");
    assert_eq!(reply.headers["content-type"], "application/json");
    // The processor did get (and echo) the PAN; the caller sees it masked.
    assert!(processor.received()[0].body_text().contains(PAN));
    assert!(text.contains("card declined"));
    for secret in [PAN, HOLDER, "2031"] {
        assert!(!text.contains(secret), "{secret} unmasked in {text}");
    }
}

/// Method, path, extra headers, body, and the refusal's status and code.
type Case<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, String)>,
    String,
    u16,
    &'a str,
);

#[tokio::test]
async fn refusals_send_nothing() {
    let w = world();
    let processor = Processor::start(&w.ca, Behaviour::Charge).await;
    w.active_route("acme", &processor).await;
    let (card_id, token, _) = w.card(&w.payments).await;
    let (_, others_token, _) = w.card(&w.other_payments).await;

    // A route that allows fewer fields, a route only for PUT.
    let mut narrow = w.route_body("narrow", &processor);
    narrow["fields"] = json!(["pan"]);
    narrow["methods"] = json!(["PUT"]);
    assert_eq!(
        call(
            &w.app,
            "POST",
            "/v1/relay/routes",
            Some(&w.admin),
            Some(narrow)
        )
        .await
        .status,
        201
    );
    assert_eq!(w.approve("narrow", &w.admin3).await.status, 200);

    let pan = |t: &str| format!("{{{{{t}:pan}}}}");
    let cases: Vec<Case> = vec![
        // Field not on the allow-list (exp_month on `narrow`).
        (
            "PUT",
            "/v1/relay/narrow/x",
            vec![],
            json!({"n": pan(&token), "m": format!("{{{{{token}:exp_month}}}}")}).to_string(),
            422,
            "validation_failed",
        ),
        // Method the route does not allow.
        (
            "POST",
            "/v1/relay/narrow/x",
            vec![],
            json!({"n": pan(&token)}).to_string(),
            405,
            "method_not_allowed",
        ),
        // Another owner's token.
        (
            "POST",
            "/v1/relay/acme/x",
            vec![],
            json!({"n": pan(&others_token)}).to_string(),
            404,
            "not_found",
        ),
        // An unknown token.
        (
            "POST",
            "/v1/relay/acme/x",
            vec![],
            json!({"n": pan("tok_00000000000000000000000000000000")}).to_string(),
            404,
            "not_found",
        ),
        // A field that is no card field.
        (
            "POST",
            "/v1/relay/acme/x",
            vec![],
            json!({"n": format!("{{{{{token}:iban}}}}")}).to_string(),
            422,
            "validation_failed",
        ),
        // Placeholders outside whole body values.
        (
            "POST",
            "/v1/relay/acme/x",
            vec![],
            json!({pan(&token): "1"}).to_string(),
            422,
            "validation_failed",
        ),
        (
            "POST",
            "/v1/relay/acme/x",
            vec![],
            json!({"n": format!("card {}", pan(&token))}).to_string(),
            422,
            "validation_failed",
        ),
        (
            "POST",
            "/v1/relay/acme/x",
            vec![("x-card", pan(&token))],
            json!({"n": 1}).to_string(),
            422,
            "validation_failed",
        ),
        (
            "POST",
            "/v1/relay/acme/x",
            vec![("idempotency-key", pan(&token))],
            json!({"n": 1}).to_string(),
            422,
            "validation_failed",
        ),
        // Path escapes.
        (
            "POST",
            "/v1/relay/acme/a/../../admin",
            vec![],
            json!({"n": 1}).to_string(),
            422,
            "validation_failed",
        ),
        // The CVC: none is held on this node.
        (
            "POST",
            "/v1/relay/acme/x",
            vec![],
            json!({"n": pan(&token), "c": format!("{{{{{token}:cvc}}}}")}).to_string(),
            409,
            "cvc_unavailable",
        ),
        // Unknown route.
        (
            "POST",
            "/v1/relay/nope/x",
            vec![],
            json!({"n": pan(&token)}).to_string(),
            404,
            "not_found",
        ),
        // Not JSON.
        (
            "POST",
            "/v1/relay/acme/x",
            vec![],
            "{not json".to_owned(),
            400,
            "malformed_request",
        ),
    ];
    for (method, path, headers, body, status, code) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (reply, text) = w
            .relay_raw(
                method,
                path,
                Some(&w.payments),
                Some("application/json"),
                &headers,
                body,
            )
            .await;
        assert_refused(&reply, *status, code);
        assert!(!text.contains(PAN) && !text.contains(&token), "{text}");
    }
    // A placeholder in the query (raw and percent-encoded).
    for query in [
        format!("?q={}", pan(&token)),
        format!("?q=%7B%7B{token}:pan%7D%7D"),
    ] {
        let (reply, _) = w
            .relay_json(
                &format!("/v1/relay/acme/x{query}"),
                &w.payments,
                json!({"n": 1}),
            )
            .await;
        assert_refused(&reply, 422, "validation_failed");
        assert_eq!(reply.body["errors"][0]["field"], "query");
    }
    // Not JSON nor a form.
    let (reply, _) = w
        .relay_raw(
            "POST",
            "/v1/relay/acme/x",
            Some(&w.payments),
            Some("text/plain"),
            &[],
            "x",
        )
        .await;
    assert_refused(&reply, 415, "unsupported_media_type");

    // A revoked token, then an erased record.
    assert_eq!(
        call(
            &w.app,
            "DELETE",
            &format!("/v1/tokens/{token}"),
            Some(&w.payments),
            None
        )
        .await
        .status,
        204
    );
    let (reply, _) = w
        .relay_json("/v1/relay/acme/x", &w.payments, json!({"n": pan(&token)}))
        .await;
    assert_refused(&reply, 410, "token_revoked");
    let (erased_id, erased_token, _) = w.card(&w.payments).await;
    assert_eq!(
        call(
            &w.app,
            "DELETE",
            &format!("/v1/records/{erased_id}"),
            Some(&w.payments),
            None
        )
        .await
        .status,
        204
    );
    let (reply, _) = w
        .relay_json(
            "/v1/relay/acme/x",
            &w.payments,
            json!({"n": pan(&erased_token)}),
        )
        .await;
    assert_refused(&reply, 410, "erased");

    assert_eq!(processor.count(), 0, "a refused relay sent something");
    // The refusals are audited, naming the card where there was one.
    let denied: Vec<Value> = audit_entries(&w.vault)
        .into_iter()
        .filter(|e| e["action"] == "relay.invoke" && e["outcome"] == "denied")
        .collect();
    assert!(denied.len() >= cases.len(), "{denied:?}");
    assert!(denied.iter().any(|e| e["target"] == card_id.as_str()));
    assert!(
        denied.iter().any(|e| e["target"] == erased_id.as_str()
            && e["reason"].as_str().unwrap().contains("erased"))
    );
}

#[tokio::test]
async fn dual_control() {
    let w = world();
    let processor = Processor::start(&w.ca, Behaviour::Charge).await;
    let (_, token, _) = w.card(&w.payments).await;
    let body = w.route_body("acme", &processor);
    assert_eq!(
        call(
            &w.app,
            "POST",
            "/v1/relay/routes",
            Some(&w.admin),
            Some(body.clone())
        )
        .await
        .status,
        201
    );
    // Same name again.
    let reply = call(
        &w.app,
        "POST",
        "/v1/relay/routes",
        Some(&w.admin2),
        Some(body.clone()),
    )
    .await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (409, Some("conflict"))
    );

    // Pending: nothing goes.
    let (reply, _) = w
        .relay_json("/v1/relay/acme/x", &w.payments, charge(&token))
        .await;
    assert_refused(&reply, 409, "route_pending");

    // Self-approval is refused and audited.
    let reply = w.approve("acme", &w.admin).await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (403, Some("forbidden"))
    );
    let self_approval = audit_entries(&w.vault).into_iter().any(|e| {
        e["action"] == "relay.route.approve"
            && e["outcome"] == "denied"
            && e["target"] == "acme"
            && e["reason"].as_str().unwrap().contains("self-approval")
    });
    assert!(self_approval);
    let (reply, _) = w
        .relay_json("/v1/relay/acme/x", &w.payments, charge(&token))
        .await;
    assert_refused(&reply, 409, "route_pending");

    // A second admin approves; approving again is 409.
    assert_eq!(w.approve("acme", &w.admin2).await.body["status"], "active");
    assert_eq!(w.approve("acme", &w.admin3).await.status, 409);
    let (reply, _) = w
        .relay_json("/v1/relay/acme/x", &w.payments, charge(&token))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(processor.count(), 1);

    // A change (by admin2) makes it pending again; neither the creator nor
    // the changer may approve it; a third admin may.
    let mut changed = body.clone();
    changed["fields"] = json!(["pan", "exp_month", "exp_year", "holder_name"]);
    let reply = call(
        &w.app,
        "PUT",
        "/v1/relay/routes/acme",
        Some(&w.admin2),
        Some(changed),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["status"], "pending");
    let (reply, _) = w
        .relay_json("/v1/relay/acme/x", &w.payments, charge(&token))
        .await;
    assert_refused(&reply, 409, "route_pending");
    assert_eq!(w.approve("acme", &w.admin).await.status, 403);
    assert_eq!(w.approve("acme", &w.admin2).await.status, 403);
    assert_eq!(w.approve("acme", &w.admin3).await.status, 200);
    let (reply, _) = w
        .relay_json("/v1/relay/acme/x", &w.payments, charge(&token))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(processor.count(), 2);

    // Delete disables at once.
    assert_eq!(
        call(
            &w.app,
            "DELETE",
            "/v1/relay/routes/acme",
            Some(&w.admin),
            None
        )
        .await
        .status,
        204
    );
    let (reply, _) = w
        .relay_json("/v1/relay/acme/x", &w.payments, charge(&token))
        .await;
    assert_refused(&reply, 409, "route_disabled");
    assert_eq!(w.approve("acme", &w.admin3).await.status, 409);
    assert_eq!(processor.count(), 2);

    // Every change is audited.
    let actions: Vec<String> = audit_entries(&w.vault)
        .into_iter()
        .filter(|e| e["target"] == "acme" && e["outcome"] == "allowed")
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    for action in [
        "relay.route.create",
        "relay.route.approve",
        "relay.route.change",
        "relay.route.delete",
    ] {
        assert!(actions.iter().any(|a| a == action), "{action}: {actions:?}");
    }
}

#[tokio::test]
async fn the_list_holds_no_header_values_and_the_store_no_plaintext_key() {
    let w = world();
    let processor = Processor::start(&w.ca, Behaviour::Charge).await;
    w.active_route("acme", &processor).await;
    let auditor = w.vault.service("auditor", Role::Auditor);
    for key in [&w.admin, &auditor] {
        let reply = call(&w.app, "GET", "/v1/relay/routes", Some(key), None).await;
        assert_eq!(reply.status, 200);
        let text = reply.body.to_string();
        assert!(!text.contains(PROCESSOR_KEY));
        let route = &reply.body["routes"][0];
        assert_eq!(route["name"], "acme");
        assert_eq!(route["status"], "active");
        assert_eq!(
            route["header_names"],
            json!(["authorization", "x-api-version"])
        );
        assert_eq!(route["base_url"], format!("{}/v1", processor.url()));
        assert!(route["created_by"].is_string() && route["approved_by"].is_string());
        assert_ne!(route["created_by"], route["approved_by"]);
    }
    assert!(files_containing(&[&w.vault.data_dir()], PROCESSOR_KEY.as_bytes()).is_empty());
    let export = serde_json::to_string(&audit_entries(&w.vault)).unwrap();
    assert!(!export.contains(PROCESSOR_KEY));
}

#[tokio::test]
async fn a_route_tampered_with_in_the_store_is_refused() {
    let w = world();
    let processor = Processor::start(&w.ca, Behaviour::Charge).await;
    let (_, token, _) = w.card(&w.payments).await;
    assert_eq!(
        call(
            &w.app,
            "POST",
            "/v1/relay/routes",
            Some(&w.admin),
            Some(w.route_body("acme", &processor))
        )
        .await
        .status,
        201
    );
    // Flip "pending" to "active" in the stored bytes.
    let key = b"rl/route/acme";
    let stored = w.vault.store.get(key).unwrap().unwrap();
    let text = String::from_utf8_lossy(&stored).into_owned();
    assert!(text.contains("\"status\":\"pending\""));
    let mut forged = stored.clone();
    let at = text.find("\"pending\"").unwrap();
    forged.splice(at..at + 9, b"\"active\"".iter().copied());
    w.vault.store.put(key, &forged).unwrap();
    let (reply, _) = w
        .relay_json("/v1/relay/acme/x", &w.payments, charge(&token))
        .await;
    assert_refused(&reply, 500, "integrity_error");
    assert_eq!(
        call(&w.app, "GET", "/v1/relay/routes", Some(&w.admin), None)
            .await
            .status,
        500
    );
    // The sealed header values moved to another route do not open either.
    w.vault.store.put(key, &stored).unwrap();
    assert_eq!(w.approve("acme", &w.admin2).await.status, 200);
    let mut other = w.route_body("other", &processor);
    other["headers"] = json!({"authorization": "Bearer other"});
    assert_eq!(
        call(
            &w.app,
            "POST",
            "/v1/relay/routes",
            Some(&w.admin),
            Some(other)
        )
        .await
        .status,
        201
    );
    let acme_headers = w.vault.store.get(b"rl/headers/acme").unwrap().unwrap();
    w.vault
        .store
        .put(b"rl/headers/other", &acme_headers)
        .unwrap();
    assert_eq!(w.approve("other", &w.admin2).await.status, 200);
    let (reply, _) = w
        .relay_json("/v1/relay/other/x", &w.payments, charge(&token))
        .await;
    assert_refused(&reply, 500, "integrity_error");
    assert_eq!(processor.count(), 0);
}

#[tokio::test]
async fn bad_route_definitions() {
    let w = world();
    let processor = Processor::start(&w.ca, Behaviour::Charge).await;
    let good = w.route_body("acme", &processor);
    let with = |key: &str, value: Value| {
        let mut body = good.clone();
        body[key] = value;
        body
    };
    let cases = [
        (with("base_url", json!("http://127.0.0.1:1/v1")), "base_url"),
        (
            with("base_url", json!("https://user:pw@example.com")),
            "base_url",
        ),
        (
            with("base_url", json!("https://example.com/?a=1")),
            "base_url",
        ),
        (with("methods", json!(["GET"])), "methods"),
        (with("fields", json!(["pan", "password"])), "fields"),
        (
            with(
                "ca_pem",
                json!("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            ),
            "ca_pem",
        ),
        (with("headers", json!({"host": "evil.example"})), "headers"),
        (with("headers", json!({"x-a": "line\r\nbreak"})), "headers"),
        (with("timeout_ms", json!(0)), "timeout_ms"),
        (with("name", json!("routes")), "name"),
        (with("name", json!("Bad Name")), "name"),
    ];
    for (body, field) in cases {
        let reply = call(
            &w.app,
            "POST",
            "/v1/relay/routes",
            Some(&w.admin),
            Some(body.clone()),
        )
        .await;
        assert_eq!(reply.status, 422, "{body}: {}", reply.body);
        assert_eq!(reply.body["code"], "validation_failed");
        assert!(
            reply.body["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["field"] == field),
            "{field}: {}",
            reply.body
        );
        assert!(
            !reply.body.to_string().contains("evil")
                && !reply.body.to_string().contains(PROCESSOR_KEY)
        );
    }
    let reply = call(
        &w.app,
        "POST",
        "/v1/relay/routes",
        Some(&w.admin),
        Some(with("extra", json!(1))),
    )
    .await;
    assert_eq!(reply.status, 422);
    let (reply, _) = w
        .relay_raw(
            "POST",
            "/v1/relay/routes",
            Some(&w.admin),
            Some("application/json"),
            &[],
            "{nope",
        )
        .await;
    assert_eq!(reply.status, 400);
    // PUT of an unknown route, approve and delete of unknown routes.
    assert_eq!(
        call(
            &w.app,
            "PUT",
            "/v1/relay/routes/nope",
            Some(&w.admin),
            Some(good.clone())
        )
        .await
        .status,
        404
    );
    assert_eq!(w.approve("nope", &w.admin2).await.status, 404);
    assert_eq!(
        call(
            &w.app,
            "DELETE",
            "/v1/relay/routes/nope",
            Some(&w.admin),
            None
        )
        .await
        .status,
        404
    );
    // Nothing was stored.
    let reply = call(&w.app, "GET", "/v1/relay/routes", Some(&w.admin), None).await;
    assert_eq!(reply.body["routes"], json!([]));
}

// ---- roles ----

async fn staff_session(w: &World, name: &str, role: Role) -> String {
    w.vault.staff(name, role, STAFF_PASSWORD);
    let reply = call(
        &w.app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"username": name, "password": STAFF_PASSWORD})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn roles() {
    let w = world();
    let processor = Processor::start(&w.ca, Behaviour::Charge).await;
    w.active_route("acme", &processor).await;
    let (_, token, _) = w.card(&w.payments).await;
    let auditor = w.vault.service("auditor", Role::Auditor);
    let officer = staff_session(&w, "officer", Role::ComplianceOfficer).await;
    let approver = staff_session(&w, "approver", Role::ComplianceApprover).await;
    let body = w.route_body("second", &processor);

    // Who may not do what: 403, audited.
    for key in [&auditor, &w.payments, &officer, &approver] {
        assert_eq!(
            call(
                &w.app,
                "POST",
                "/v1/relay/routes",
                Some(key),
                Some(body.clone())
            )
            .await
            .status,
            403
        );
        assert_eq!(
            call(
                &w.app,
                "PUT",
                "/v1/relay/routes/acme",
                Some(key),
                Some(body.clone())
            )
            .await
            .status,
            403
        );
        assert_eq!(w.approve("acme", key).await.status, 403);
        assert_eq!(
            call(&w.app, "DELETE", "/v1/relay/routes/acme", Some(key), None)
                .await
                .status,
            403
        );
    }
    for key in [&w.payments, &officer, &approver] {
        assert_eq!(
            call(&w.app, "GET", "/v1/relay/routes", Some(key), None)
                .await
                .status,
            403
        );
    }
    for key in [&w.admin, &auditor, &officer, &approver] {
        let (reply, _) = w.relay_json("/v1/relay/acme/x", key, charge(&token)).await;
        assert_refused(&reply, 403, "forbidden");
    }
    let (reply, _) = w
        .relay_raw(
            "POST",
            "/v1/relay/acme/x",
            None,
            Some("application/json"),
            &[],
            &charge(&token).to_string(),
        )
        .await;
    assert_refused(&reply, 401, "unauthenticated");
    assert_eq!(processor.count(), 0);
    let entries = audit_entries(&w.vault);
    for action in [
        "relay.route.create",
        "relay.route.change",
        "relay.route.approve",
        "relay.route.delete",
        "relay.route.list",
        "relay.invoke",
    ] {
        assert!(
            entries
                .iter()
                .any(|e| e["action"] == action && e["outcome"] == "denied"),
            "{action} denial not audited"
        );
    }
    // Who may: admin lists, auditor lists, payment service invokes.
    assert_eq!(
        call(&w.app, "GET", "/v1/relay/routes", Some(&w.admin), None)
            .await
            .status,
        200
    );
    assert_eq!(
        call(&w.app, "GET", "/v1/relay/routes", Some(&auditor), None)
            .await
            .status,
        200
    );
    let (reply, _) = w
        .relay_json("/v1/relay/acme/x", &w.payments, charge(&token))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(processor.count(), 1);
}

/// A client that hangs up while the processor is still answering: the call
/// still runs to the end, and its answer's audit entry is written.
#[tokio::test]
async fn a_client_that_hangs_up_does_not_cut_the_audit_short() {
    let w = world();
    let processor = Processor::start(
        &w.ca,
        Behaviour::Slow(std::time::Duration::from_millis(300)),
    )
    .await;
    w.active_route("acme", &processor).await;
    let (card_id, token, _) = w.card(&w.payments).await;
    let app = w.app.clone();
    let key = w.payments.clone();
    let body = charge(&token);
    let client = tokio::spawn(async move {
        call(
            &app,
            "POST",
            "/v1/relay/acme/charges",
            Some(&key),
            Some(body),
        )
        .await
    });
    while processor.count() == 0 {
        tokio::task::yield_now().await;
    }
    client.abort();
    assert!(matches!(client.await, Err(e) if e.is_cancelled()));
    // The answer's entry arrives once the processor answers; the card's
    // entry was written before anything was sent.
    let finished = |entries: &[Value]| {
        entries.iter().any(|e| {
            e["action"] == "relay.invoke"
                && e["target"] == "acme"
                && e["reason"]
                    .as_str()
                    .unwrap()
                    .contains("upstream status 200")
        })
    };
    let mut waited = 0;
    while !finished(&audit_entries(&w.vault)) {
        waited += 1;
        assert!(waited < 3000, "the answer's audit entry never came");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        audit_entries(&w.vault)
            .iter()
            .any(|e| e["action"] == "relay.invoke"
                && e["target"] == card_id.as_str()
                && e["outcome"] == "allowed")
    );
    assert_eq!(processor.count(), 1);
}

/// While sealed, an invocation is 503 `sealed`, marked as the vault's own.
#[tokio::test]
async fn sealed_is_refused_too() {
    let w = world();
    let processor = Processor::start(&w.ca, Behaviour::Charge).await;
    w.active_route("acme", &processor).await;
    let (_, token, _) = w.card(&w.payments).await;
    w.vault.state.seal();
    let (reply, _) = w
        .relay_json("/v1/relay/acme/x", &w.payments, charge(&token))
        .await;
    assert_refused(&reply, 503, "sealed");
    // Admin paths carry no relay marker.
    let reply = call(&w.app, "GET", "/v1/relay/routes", Some(&w.admin), None).await;
    assert_eq!(reply.status, 503);
    assert!(reply.headers.get("x-strongroom-relay").is_none());
    assert_eq!(processor.count(), 0);
}

/// A CVC attached to the card reaches the processor once: the caller never
/// sees it, a second relay with it is refused before anything is sent, and
/// a relay refused before sending gives it back without lengthening its life.
#[tokio::test]
async fn a_cvc_is_relayed_once_and_never_shown() {
    const CVC: &str = "739";
    let w = world();
    let processor = Processor::start(&w.ca, Behaviour::Charge).await;
    w.active_route("acme", &processor).await;
    let (card_id, token, _) = w.card(&w.payments).await;
    let (other_id, other_token, _) = w.card(&w.payments).await;
    for id in [&card_id, &other_id] {
        let reply = call(
            &w.app,
            "POST",
            &format!("/v1/records/{id}/cvc"),
            Some(&w.payments),
            Some(json!({"cvc": CVC})),
        )
        .await;
        assert_eq!(reply.status, 204, "{}", reply.body);
    }
    let with_cvc = |token: &str| {
        let mut body = charge(token);
        body["card"]["cvc"] = json!(format!("{{{{{token}:cvc}}}}"));
        body
    };

    // Two cards' CVCs, one of them missing: refused, nothing sent, and the
    // one that was held is given back.
    let (_, third_token, _) = w.card(&w.payments).await;
    let mut both = with_cvc(&token);
    both["second"] = json!(format!("{{{{{third_token}:cvc}}}}"));
    let (reply, _) = w
        .relay_json("/v1/relay/acme/charges", &w.payments, both)
        .await;
    assert_refused(&reply, 409, "cvc_unavailable");
    assert!(processor.received().is_empty());
    assert!(
        w.vault.state.cvcs.holds(&card_id),
        "the held CVC was given back"
    );

    let (reply, text) = w
        .relay_json("/v1/relay/acme/charges", &w.payments, with_cvc(&token))
        .await;
    assert_eq!(reply.status, 200, "{text}");
    assert!(!text.contains(CVC) && !text.contains(PAN));
    let received = processor.received();
    assert_eq!(received.len(), 1);
    let body: Value = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(body["card"]["cvc"], CVC);
    assert_eq!(body["card"]["number"], PAN);

    // Used once: the second relay is refused and sends nothing.
    let (reply, _) = w
        .relay_json("/v1/relay/acme/charges", &w.payments, with_cvc(&token))
        .await;
    assert_refused(&reply, 409, "cvc_unavailable");
    assert_eq!(processor.received().len(), 1);
    // The other card's CVC is untouched by all of this.
    assert!(w.vault.state.cvcs.holds(&other_id));
    let _ = other_token;

    // Never in the audit log or the data directory.
    let all = serde_json::to_string(&audit_entries(&w.vault)).unwrap();
    assert!(!all.contains(&format!("\"{CVC}\"")));
    assert!(files_containing(&[&w.vault.data_dir()], PAN.as_bytes()).is_empty());
}

/// An approval that names the version reviewed approves that version
/// only: a route changed between the approver's read and click is 409 and
/// stays pending (review finding: approval of an unseen destination).
#[tokio::test]
async fn an_approval_is_for_the_version_reviewed() {
    let w = world();
    let processor = Processor::start(&w.ca, Behaviour::Charge).await;
    let body = w.route_body("acme", &processor);
    let reply = call(
        &w.app,
        "POST",
        "/v1/relay/routes",
        Some(&w.admin),
        Some(body.clone()),
    )
    .await;
    assert_eq!(reply.status, 201);
    let listed = call(&w.app, "GET", "/v1/relay/routes", Some(&w.admin2), None).await;
    let seen = listed.body["routes"][0]["version"].as_u64().unwrap();
    // The creator changes it after admin2 read it.
    let mut changed = body.clone();
    changed["base_url"] = json!(format!("{}/v2", processor.url()));
    let reply = call(
        &w.app,
        "PUT",
        "/v1/relay/routes/acme",
        Some(&w.admin),
        Some(changed),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let stale = call(
        &w.app,
        "POST",
        &format!("/v1/relay/routes/acme/approve?version={seen}"),
        Some(&w.admin2),
        None,
    )
    .await;
    assert_eq!(
        (stale.status, stale.body["code"].as_str()),
        (409, Some("conflict"))
    );
    let listed = call(&w.app, "GET", "/v1/relay/routes", Some(&w.admin2), None).await;
    assert_eq!(listed.body["routes"][0]["status"], "pending");
    let current = listed.body["routes"][0]["version"].as_u64().unwrap();
    assert_ne!(current, seen);
    let bad = call(
        &w.app,
        "POST",
        "/v1/relay/routes/acme/approve?version=latest",
        Some(&w.admin2),
        None,
    )
    .await;
    assert_eq!(bad.status, 422);
    let reply = call(
        &w.app,
        "POST",
        &format!("/v1/relay/routes/acme/approve?version={current}"),
        Some(&w.admin2),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(processor.received().is_empty());
}

/// A route bound to callers and paths: another payment service is refused
/// (it may not use this route's processor credential), and so is a path off
/// the allow-list; nothing is sent for either.
#[tokio::test]
async fn callers_and_paths_bound_a_route() {
    let w = world();
    let processor = Processor::start(&w.ca, Behaviour::Charge).await;
    let payments_id = w.vault.principal_id("payments");
    let mut body = w.route_body("acme", &processor);
    body["paths"] = json!(["/charges"]);
    body["callers"] = json!([payments_id]);
    w.activate(body).await;
    let (_, token, _) = w.card(&w.payments).await;
    let (_, other_token, _) = w.card(&w.other_payments).await;

    let (reply, _) = w
        .relay_json(
            "/v1/relay/acme/refunds",
            &w.other_payments,
            json!({"charge": "ch_1"}),
        )
        .await;
    assert_refused(&reply, 404, "not_found");
    let (reply, _) = w
        .relay_json(
            "/v1/relay/acme/charges",
            &w.other_payments,
            charge(&other_token),
        )
        .await;
    assert_refused(&reply, 404, "not_found");
    let (reply, _) = w
        .relay_json("/v1/relay/acme/customers/cus_1", &w.payments, json!({}))
        .await;
    assert_refused(&reply, 422, "validation_failed");
    let (reply, _) = w
        .relay_json("/v1/relay/acme/chargesx", &w.payments, charge(&token))
        .await;
    assert_refused(&reply, 422, "validation_failed");
    assert!(processor.received().is_empty(), "nothing sent");

    let (reply, text) = w
        .relay_json(
            "/v1/relay/acme/charges/ch_9/capture",
            &w.payments,
            charge(&token),
        )
        .await;
    assert_eq!(reply.status, 200, "{text}");
    assert_eq!(processor.count(), 1);
    let denials: Vec<Value> = audit_entries(&w.vault)
        .into_iter()
        .filter(|e| e["action"] == "relay.invoke" && e["outcome"] == "denied")
        .collect();
    assert_eq!(denials.len(), 4, "{denials:?}");
}

/// A header the route passes back is masked like the body: a processor's
/// redirect to a URL holding the card number reaches the caller masked.
#[tokio::test]
async fn passed_back_headers_are_masked() {
    let w = world();
    let processor = Processor::start(
        &w.ca,
        Behaviour::Redirect(format!("https://acs.example/3ds?pan={PAN}&n=1")),
    )
    .await;
    let mut body = w.route_body("acme", &processor);
    body["response_headers"] = json!(["location"]);
    w.activate(body).await;
    let (_, token, _) = w.card(&w.payments).await;
    let (reply, _) = w
        .relay_json("/v1/relay/acme/charges", &w.payments, charge(&token))
        .await;
    assert_eq!(reply.status, 302);
    let location = reply.headers["location"].to_str().unwrap();
    assert!(!location.contains(PAN), "{location}");
    assert!(
        location.starts_with("https://acs.example/3ds?pan=*"),
        "{location}"
    );
    // Cookies are never passed back.
    let mut body = w.route_body("cookies", &processor);
    body["response_headers"] = json!(["set-cookie"]);
    let reply = call(
        &w.app,
        "POST",
        "/v1/relay/routes",
        Some(&w.admin),
        Some(body),
    )
    .await;
    assert_eq!(reply.status, 422, "{}", reply.body);
}

/// A token revoked, or a record erased, after the relay checked it but
/// before its reservation commits: the reservation's preconditions fail,
/// nothing is sent, and the refusal is audited on the record (review
/// finding: "revoke or erase racing a relay").
#[tokio::test]
async fn a_revocation_or_erasure_that_lands_first_stops_the_relay() {
    for erase in [false, true] {
        let settings = AppSettings {
            relay: RelaySettings {
                allow_private_destinations: true,
                ..RelaySettings::default()
            },
            ..test_settings()
        };
        let (vault, faulty) =
            common::faulty_vault_app(fast_settings(), Arc::new(SystemClock), settings);
        let app = vault.app();
        let admin2 = vault.service("admin-2", Role::Admin);
        let payments = vault.service("payments", Role::PaymentService);
        let w = World {
            ca: TestCa::new("relay test CA"),
            admin: vault.admin_api_key.clone(),
            admin2: admin2.clone(),
            admin3: admin2,
            payments: payments.clone(),
            other_payments: payments,
            app,
            vault,
        };
        let processor = Processor::start(&w.ca, Behaviour::Charge).await;
        w.active_route("acme", &processor).await;
        let (card_id, token, _) = w.card(&w.payments).await;

        // Between the checks and the reservation: revoke, or erase.
        let state = w.vault.state.clone();
        let (token_now, card_now) = (token.clone(), card_id.clone());
        faulty.before_next_audit_apply(move |store| {
            let tx = if erase {
                let meta = state.vault.meta(&card_now).unwrap();
                state.vault.prepare_erase(&meta).unwrap()
            } else {
                let (key, record) = state.vault.token(&token_now).unwrap().unwrap();
                state.vault.prepare_revoke(&key, &record).unwrap()
            };
            store.commit(tx).unwrap();
        });
        let (reply, _) = w
            .relay_json("/v1/relay/acme/charges", &w.payments, charge(&token))
            .await;
        assert_refused(&reply, 409, "conflict");
        assert!(
            processor.received().is_empty(),
            "nothing sent (erase: {erase})"
        );
        let denied = audit_entries(&w.vault).into_iter().any(|e| {
            e["action"] == "relay.invoke"
                && e["outcome"] == "denied"
                && e["target"] == card_id.as_str()
                && e["reason"]
                    .as_str()
                    .unwrap()
                    .contains("changed while relaying")
        });
        assert!(
            denied,
            "the refusal is audited on the record (erase: {erase})"
        );
    }
}
