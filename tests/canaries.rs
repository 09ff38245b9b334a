//! Canaries (docs/lifecycle.md, "Canaries"): records planted by an admin,
//! answered on every path exactly like real ones, each access raising one
//! alarm: an audit entry with outcome `canary`, a WARN line without values,
//! `strongroom_canary_alarms_total{path}` and a webhook through the relay's
//! client. The metric is process-wide, so the tests here take turns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use serde_json::{Value, json};
use strongroom::access::Role;
use strongroom::api::AppSettings;
use strongroom::canary::{CanarySettings, Webhook};
use strongroom::clock::SystemClock;
use strongroom::keyring::SealMethod;
use strongroom::relay::upstream::RelaySettings;
use zeroize::Zeroizing;

use common::processor::{Behaviour, TestProcessor};
use common::tls::TestCa;
use common::*;

/// The IIN canary cards are made under in these tests.
const IIN: &str = "431940";
const REAL_PAN: &str = "4242424242424242";

/// One test at a time: the alarm metric is the process's.
static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct World {
    vault: TestVault,
    app: Router,
    admin: String,
    payments: String,
    payments_id: String,
    other_payments: String,
    officer: String,
    approver: String,
    ca: TestCa,
    /// Receives the webhook's alarms.
    hooks: TestProcessor,
}

async fn session(app: &Router, name: &str) -> String {
    let reply = call(
        app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"username": name, "password": STAFF_PASSWORD})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["token"].as_str().unwrap().to_owned()
}

/// Settings whose webhook posts to `hooks`; loopback destinations allowed
/// when `private` (the test processor and receiver are on 127.0.0.1).
fn settings(ca: &TestCa, hooks: &TestProcessor, private: bool) -> AppSettings {
    AppSettings {
        relay: RelaySettings {
            allow_private_destinations: private,
            ..RelaySettings::default()
        },
        canaries: CanarySettings {
            webhook: Some(Webhook {
                url: format!("{}/alarms/strongroom", hooks.url()),
                ca_pem: Some(ca.cert_pem()),
            }),
            card_iin: None,
        },
        ..test_settings()
    }
}

async fn world_over(vault: TestVault, ca: TestCa, hooks: TestProcessor) -> World {
    captured_log();
    let app = vault.app();
    let payments = vault.service("payments", Role::PaymentService);
    let other_payments = vault.service("other-payments", Role::PaymentService);
    vault.staff("olivia", Role::ComplianceOfficer, STAFF_PASSWORD);
    vault.staff("abel", Role::ComplianceApprover, STAFF_PASSWORD);
    World {
        admin: vault.admin_api_key.clone(),
        payments_id: vault.principal_id("payments"),
        officer: session(&app, "olivia").await,
        approver: session(&app, "abel").await,
        vault,
        app,
        payments,
        other_payments,
        ca,
        hooks,
    }
}

async fn world_with(behaviour: Behaviour, private: bool) -> World {
    let ca = TestCa::new("canary test CA");
    let hooks = TestProcessor::start(&ca, behaviour).await;
    let vault = new_vault_with(
        SealMethod::Passphrase(Zeroizing::new(PASSPHRASE.to_owned())),
        fast_settings(),
        Arc::new(SystemClock),
        settings(&ca, &hooks, private),
    );
    world_over(vault, ca, hooks).await
}

async fn world() -> World {
    world_with(Behaviour::Charge, true).await
}

/// The canaries made: (id, type, token, pan_token).
struct Made {
    card: (String, String, String),
    kyc: (String, String),
    bank: (String, String),
}

impl World {
    async fn post(&self, path: impl Into<String>, key: &str, body: Value) -> Reply {
        self.send("POST", path.into(), key, Some(body)).await
    }

    async fn send(&self, method: &str, path: String, key: &str, body: Option<Value>) -> Reply {
        call(&self.app, method, &path, Some(key), body).await
    }

    async fn canaries(&self) -> Made {
        let reply = self
            .post(
                "/v1/canaries",
                &self.admin,
                json!({"owner": self.payments_id, "subject_ref": "cus-8812", "card_iin": IIN}),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        let list = reply.body["canaries"].as_array().unwrap().clone();
        let of = |t: &str| {
            list.iter()
                .find(|c| c["type"] == t)
                .unwrap_or_else(|| panic!("no {t} in {list:?}"))
                .clone()
        };
        let s = |v: &Value, k: &str| v[k].as_str().unwrap().to_owned();
        let (card, kyc, bank) = (of("card"), of("kyc"), of("bank_account"));
        Made {
            card: (s(&card, "id"), s(&card, "token"), s(&card, "pan_token")),
            kyc: (s(&kyc, "id"), s(&kyc, "token")),
            bank: (s(&bank, "id"), s(&bank, "token")),
        }
    }

    /// A real record of `kind` stored by the payment service: id and token.
    async fn real(&self, kind: &str, body: Value) -> (String, String) {
        let reply = self
            .post(&format!("/v1/records/{kind}"), &self.payments, body)
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        (
            reply.body["id"].as_str().unwrap().to_owned(),
            reply.body["token"].as_str().unwrap().to_owned(),
        )
    }

    /// Audit entries with outcome `canary`, and the alarm metric for
    /// `path`.
    async fn alarms(&self, path: &str) -> (usize, f64) {
        let audit = audit_entries(&self.vault)
            .iter()
            .filter(|e| e["outcome"] == "canary")
            .count();
        (
            audit,
            self.metric("strongroom_canary_alarms_total", &[("path", path)])
                .await,
        )
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (status, _, body) = text(&self.app, "/v1/sys/metrics", Some(&self.admin)).await;
        assert_eq!(status, 200, "{body}");
        sample(&parse_exposition(&body), name, labels).unwrap_or(0.0)
    }

    /// Runs `access` and checks it raised exactly `n` alarms on `path`.
    async fn expect_alarms<F: std::future::Future<Output = Reply>>(
        &self,
        path: &str,
        n: usize,
        access: F,
    ) -> Reply {
        let (audit, metric) = self.alarms(path).await;
        let reply = access.await;
        let (audit_after, metric_after) = self.alarms(path).await;
        assert_eq!(
            audit_after - audit,
            n,
            "audit alarms on {path}: {}",
            reply.body
        );
        assert_eq!(metric_after - metric, n as f64, "metric alarms on {path}");
        reply
    }

    /// The plaintext of record `id`, read in process (the test's view of
    /// what must never leak).
    fn plaintext(&self, id: &str) -> Value {
        let meta = self.vault.state.vault.meta(id).unwrap();
        serde_json::to_value(&self.vault.state.vault.open(&meta).unwrap().data).unwrap()
    }
}

/// The keys of a JSON object (nested objects by path), for comparing an
/// answer's shape.
fn shape(value: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Value::Object(map) = value {
        for (k, v) in map {
            out.insert(k.clone());
            for inner in shape(v) {
                out.insert(format!("{k}.{inner}"));
            }
        }
    }
    out
}

fn real_card() -> Value {
    json!({"pan": REAL_PAN, "exp_month": 7, "exp_year": 2031, "holder_name": "ADA LOVELACE", "subject_ref": "cus-1"})
}

fn real_kyc() -> Value {
    json!({
        "subject_ref": "cus-1",
        "legal_name": {"given": "Ada", "family": "Lovelace"},
        "date_of_birth": "1815-12-10",
        "nationality": "GB",
        "address": {"line1": "12 St James's Square", "city": "London", "postal_code": "SW1Y 4JH", "country": "GB"},
        "national_id": {"type": "passport", "number": "925076473", "country": "GB"},
        "email": "ada.lovelace@example.org",
        "phone": "+44 20 7946 0958",
    })
}

fn real_bank() -> Value {
    json!({"iban": "GB82 WEST 1234 5698 7654 32", "holder_name": "Ada Lovelace", "subject_ref": "cus-1"})
}

fn justified(mut body: Value) -> Value {
    body["reason"] = json!("AML review");
    body["ticket"] = json!("CASE-77");
    body
}

/// `POST /v1/canaries`: ids and tokens of the shapes real records get,
/// metadata a real record's, no mark anywhere in clear; one entry per
/// canary; bad requests are problem+json; an `Idempotency-Key` replays.
#[tokio::test]
async fn canaries_are_made_like_real_records_and_marked_only_inside_their_sealed_body() {
    let _turn = TURNS.lock().await;
    let w = world().await;
    let made = w.canaries().await;
    let (real_card_id, real_card_token) = w.real("card", real_card()).await;
    let (real_kyc_id, _) = w.real("kyc", real_kyc()).await;
    let (real_bank_id, _) = w.real("bank_account", real_bank()).await;

    let issued = |s: &str, prefix: &str| {
        s.strip_prefix(prefix)
            .is_some_and(|rest| rest.len() == 24 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    assert!(
        issued(&made.card.0, "card_")
            && issued(&made.kyc.0, "kyc_")
            && issued(&made.bank.0, "bank_")
    );
    for token in [&made.card.1, &made.kyc.1, &made.bank.1] {
        assert_eq!(token.len(), real_card_token.len());
        assert_eq!(token[..4], real_card_token[..4]);
    }
    // The PAN token keeps the IIN's first 6 and is 16 digits, as a real one.
    assert!(made.card.2.starts_with(IIN) && made.card.2.len() == 16);
    let pan = w.plaintext(&made.card.0)["pan"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(pan.starts_with(IIN) && strongroom::records::luhn_valid(&pan));

    // Metadata as a real record of the type has it: owner, subject, index
    // entries, tokens.
    for (canary, real) in [
        (&made.card.0, &real_card_id),
        (&made.kyc.0, &real_kyc_id),
        (&made.bank.0, &real_bank_id),
    ] {
        let c = w.vault.state.vault.meta(canary).unwrap();
        let r = w.vault.state.vault.meta(real).unwrap();
        assert_eq!(c.owner, r.owner);
        assert_eq!(c.subject_ref.as_deref(), Some("cus-8812"));
        assert_eq!(
            (c.version, c.index_keys.len(), c.token_keys.len()),
            (r.version, r.index_keys.len(), r.token_keys.len())
        );
    }
    // Nothing in clear says "canary" in records or tokens.
    for prefix in [&b"rec/"[..], b"tk/", b"bi/"] {
        for (key, value) in w.vault.store.scan_prefix(prefix).unwrap() {
            for bytes in [&key, &value] {
                assert!(!bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"canary")));
            }
        }
    }
    let created: Vec<Value> = audit_entries(&w.vault)
        .into_iter()
        .filter(|e| e["action"] == "canary.create")
        .collect();
    assert_eq!(created.len(), 3);
    assert!(created.iter().all(|e| e["outcome"] == "allowed"));

    // Only an admin; and bad requests.
    for key in [&w.payments, &w.officer] {
        let reply = w
            .post(
                "/v1/canaries",
                key,
                json!({"owner": w.payments_id, "types": ["kyc"]}),
            )
            .await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (403, Some("forbidden"))
        );
    }
    let officer_id = w.vault.principal_id("olivia");
    for (body, field) in [
        (
            json!({"owner": w.payments_id, "types": ["kyc", "kyc"]}),
            "types[1]",
        ),
        (json!({"owner": w.payments_id, "types": []}), "types"),
        (
            json!({"owner": w.payments_id, "types": ["pet"]}),
            "types[0]",
        ),
        (
            json!({"owner": "prn_000000000000000000000000", "types": ["kyc"]}),
            "owner",
        ),
        (
            json!({"owner": officer_id, "types": ["card"], "card_iin": IIN}),
            "owner",
        ),
        (
            json!({"owner": w.payments_id, "types": ["card"]}),
            "card_iin",
        ),
        (
            json!({"owner": w.payments_id, "types": ["card"], "card_iin": "999999"}),
            "card_iin",
        ),
        (
            json!({"owner": w.payments_id, "types": ["kyc"], "card_iin": "43a940"}),
            "card_iin",
        ),
        (
            json!({"owner": w.payments_id, "types": ["kyc"], "subject_ref": "two words"}),
            "subject_ref",
        ),
        (json!({"owner": w.payments_id, "canary": true}), "canary"),
        (json!({"types": ["kyc"]}), "body"),
    ] {
        let reply = w.post("/v1/canaries", &w.admin, body.clone()).await;
        assert_eq!(reply.status, 422, "{body}: {}", reply.body);
        assert_eq!(reply.headers["content-type"], "application/problem+json");
        assert_eq!(reply.body["code"], "validation_failed");
        assert!(
            reply.body["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["field"] == field),
            "{body}: {}",
            reply.body
        );
    }

    // The same key, the same request: the first answer, no second set.
    let body = json!({"owner": w.payments_id, "types": ["kyc"]});
    let headers = [("idempotency-key", "canaries-1")];
    let first = call_with(
        &w.app,
        "POST",
        "/v1/canaries",
        Some(&w.admin),
        Some(body.clone()),
        &headers,
    )
    .await;
    let again = call_with(
        &w.app,
        "POST",
        "/v1/canaries",
        Some(&w.admin),
        Some(body),
        &headers,
    )
    .await;
    assert_eq!((first.status, again.status), (201, 201));
    assert_eq!(first.body, again.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let created = audit_entries(&w.vault)
        .into_iter()
        .filter(|e| e["action"] == "canary.create" && e["outcome"] == "allowed")
        .count();
    assert_eq!(created, 4);
}

/// Every path that opens a record answers a canary as it answers a real
/// record of its type, and raises exactly one alarm per canary per access
/// (a real record none); the webhook gets one post per alarm naming the
/// canary, the path and the principal, never a value; the WARN lines hold
/// no value either.
#[tokio::test]
async fn every_access_path_answers_like_a_real_record_and_raises_one_alarm_each() {
    let _turn = TURNS.lock().await;
    let w = world().await;
    let processor = TestProcessor::start(&w.ca, Behaviour::Charge).await;
    let route = json!({
        "name": "acme",
        "base_url": processor.url(),
        "methods": ["POST"],
        "fields": ["pan", "exp_month", "exp_year", "holder_name", "cvc"],
        "ca_pem": w.ca.cert_pem(),
    });
    assert_eq!(
        w.post("/v1/relay/routes", &w.admin, route).await.status,
        201
    );
    let admin2 = w.vault.service("admin-2", Role::Admin);
    let approved = call(
        &w.app,
        "POST",
        "/v1/relay/routes/acme/approve",
        Some(&admin2),
        None,
    )
    .await;
    assert_eq!(approved.status, 200, "{}", approved.body);

    let made = w.canaries().await;
    let (card_id, card_token) = w.real("card", real_card()).await;
    let (kyc_id, kyc_token) = w.real("kyc", real_kyc()).await;
    let (bank_id, bank_token) = w.real("bank_account", real_bank()).await;
    let canary_card = w.plaintext(&made.card.0);
    let canary_kyc = w.plaintext(&made.kyc.0);
    let canary_bank = w.plaintext(&made.bank.0);
    let mut alarms = 0;

    // GET /v1/records/{id}, each type.
    for (canary, real) in [
        (&made.card.0, &card_id),
        (&made.kyc.0, &kyc_id),
        (&made.bank.0, &bank_id),
    ] {
        let path = |id: &str| format!("/v1/records/{id}");
        let c = w
            .expect_alarms(
                "read",
                1,
                call(&w.app, "GET", &path(canary), Some(&w.payments), None),
            )
            .await;
        let r = w
            .expect_alarms(
                "read",
                0,
                call(&w.app, "GET", &path(real), Some(&w.payments), None),
            )
            .await;
        assert_eq!((c.status, r.status), (200, 200));
        assert_eq!(shape(&c.body), shape(&r.body), "{} / {}", c.body, r.body);
        alarms += 1;
    }

    // Detokenize: one token, then a batch of three canaries and a real one.
    let detokenize = |tokens: Vec<&String>| {
        w.post(
            "/v1/tokens/detokenize",
            &w.payments,
            json!({"tokens": tokens}),
        )
    };
    let c = w
        .expect_alarms("detokenize", 1, detokenize(vec![&made.card.1]))
        .await;
    let r = w
        .expect_alarms("detokenize", 0, detokenize(vec![&card_token]))
        .await;
    assert_eq!(
        shape(&c.body["results"][&made.card.1]),
        shape(&r.body["results"][&card_token])
    );
    let batch = w
        .expect_alarms(
            "detokenize",
            3,
            detokenize(vec![
                &made.card.1,
                &made.kyc.1,
                &made.bank.1,
                &kyc_token,
                &bank_token,
            ]),
        )
        .await;
    assert_eq!(batch.status, 200);
    assert_eq!(
        shape(&batch.body["results"][&made.kyc.1]),
        shape(&batch.body["results"][&kyc_token])
    );
    assert_eq!(
        shape(&batch.body["results"][&made.bank.1]),
        shape(&batch.body["results"][&bank_token])
    );
    alarms += 4;

    // A search hit: the canary's email, then the real one's; a PAN search.
    let search = |field: &str, value: &str| {
        w.post(
            "/v1/search",
            &w.officer,
            justified(json!({"field": field, "value": value})),
        )
    };
    let c = w
        .expect_alarms(
            "search",
            1,
            search("email", canary_kyc["email"].as_str().unwrap()),
        )
        .await;
    let r = w
        .expect_alarms("search", 0, search("email", "ada.lovelace@example.org"))
        .await;
    assert_eq!(c.body["matches"][0]["id"], made.kyc.0.as_str());
    assert_eq!(shape(&c.body["matches"][0]), shape(&r.body["matches"][0]));
    w.expect_alarms(
        "search",
        1,
        search("pan", canary_card["pan"].as_str().unwrap()),
    )
    .await;
    w.expect_alarms("search", 0, search("pan", REAL_PAN)).await;
    alarms += 2;

    // Reveal: a field that needs an approval (national id) and one that
    // does not, on the canary and on the real record.
    for id in [&made.kyc.0, &kyc_id] {
        let request = w
            .post(
                "/v1/access-requests",
                &w.officer,
                justified(json!({"record_id": id, "fields": ["national_id"]})),
            )
            .await;
        assert_eq!(request.status, 201, "{}", request.body);
        let ar = request.body["id"].as_str().unwrap();
        let approve = format!("/v1/access-requests/{ar}/approve");
        let approved = call(&w.app, "POST", &approve, Some(&w.approver), None).await;
        assert_eq!(approved.status, 200, "{}", approved.body);
    }
    let reveal = |id: &str| {
        w.post(
            format!("/v1/records/{id}/reveal"),
            &w.officer,
            justified(json!({"fields": ["national_id", "email"]})),
        )
    };
    let c = w.expect_alarms("reveal", 1, reveal(&made.kyc.0)).await;
    let r = w.expect_alarms("reveal", 0, reveal(&kyc_id)).await;
    assert_eq!((c.status, r.status), (200, 200), "{}", c.body);
    assert_eq!(shape(&c.body), shape(&r.body));
    assert_eq!(c.body["fields"]["email"], canary_kyc["email"]);
    alarms += 1;

    // The relay: the canary card goes to the processor like any card.
    let charge = |token: &str| {
        w.post(
            "/v1/relay/acme/charges",
            &w.payments,
            json!({
                "amount": 1999,
                "card": format!("{{{{{token}:pan}}}}"),
                "exp_month": format!("{{{{{token}:exp_month}}}}"),
                "exp_year": format!("{{{{{token}:exp_year}}}}"),
            }),
        )
    };
    let c = w.expect_alarms("relay", 1, charge(&made.card.1)).await;
    let r = w.expect_alarms("relay", 0, charge(&card_token)).await;
    assert_eq!((c.status, r.status), (200, 200), "{}", c.body);
    assert_eq!(shape(&c.body), shape(&r.body));
    assert!(
        processor.received()[0]
            .body_text()
            .contains(canary_card["pan"].as_str().unwrap())
    );
    // The PAN token of the canary works too.
    w.expect_alarms("relay", 1, charge(&made.card.2)).await;
    alarms += 2;

    // An update opens the record to patch it; the canary stays a canary.
    let patch = |id: &str| {
        w.send(
            "PATCH",
            format!("/v1/records/{id}"),
            &w.payments,
            Some(json!({"exp_month": 11})),
        )
    };
    let c = w.expect_alarms("update", 1, patch(&made.card.0)).await;
    let r = w.expect_alarms("update", 0, patch(&card_id)).await;
    assert_eq!((c.status, r.status), (200, 200), "{}", c.body);
    assert_eq!(shape(&c.body), shape(&r.body));
    assert_eq!(c.body["version"], 2);
    w.expect_alarms(
        "read",
        1,
        call(
            &w.app,
            "GET",
            &format!("/v1/records/{}", made.card.0),
            Some(&w.payments),
            None,
        ),
    )
    .await;
    alarms += 2;

    // Attaching a CVC opens the card (its brand decides the CVC's length).
    let cvc = |id: &str| {
        w.post(
            format!("/v1/records/{id}/cvc"),
            &w.payments,
            json!({"cvc": "123"}),
        )
    };
    let c = w.expect_alarms("cvc_attach", 1, cvc(&made.card.0)).await;
    let r = w.expect_alarms("cvc_attach", 0, cvc(&card_id)).await;
    assert_eq!((c.status, r.status), (204, 204), "{}", c.body);
    alarms += 1;

    // Every alarm entry names a canary and its path's action.
    let canary_ids = [&made.card.0, &made.kyc.0, &made.bank.0];
    let entries: Vec<Value> = audit_entries(&w.vault)
        .into_iter()
        .filter(|e| e["outcome"] == "canary")
        .collect();
    assert_eq!(entries.len(), alarms);
    for e in &entries {
        assert!(
            canary_ids.iter().any(|id| e["target"] == id.as_str()),
            "{e}"
        );
    }
    let verified = call(&w.app, "GET", "/v1/audit/verify", Some(&w.admin), None).await;
    assert_eq!(verified.status, 200, "{}", verified.body);
    assert_eq!(verified.body["ok"], true, "{}", verified.body);
    // The export carries the outcome and verifies offline.
    let mut export = Vec::new();
    strongroom::audit::export_store(w.vault.store.as_ref(), &mut export).unwrap();
    let export = String::from_utf8(export).unwrap();
    assert!(export.contains("\"outcome\":\"canary\""));
    let key = hex::decode(
        std::fs::read_to_string(w.vault.keys_dir().join("audit.pub"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let offline = strongroom::audit::verify_lines(
        export
            .lines()
            .map(|l| serde_json::from_str(l).map_err(|e: serde_json::Error| e.to_string())),
        &key,
        false,
    );
    assert!(offline.ok, "{offline:?}");

    // The webhook: one post per alarm, ids only.
    let mut waited = 0;
    while w.hooks.received().len() < alarms {
        waited += 1;
        assert!(
            waited < 3000,
            "{} of {alarms} alarms posted",
            w.hooks.received().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let values: Vec<String> = [
        &canary_card["pan"],
        &canary_card["holder_name"],
        &canary_kyc["email"],
        &canary_kyc["phone"],
        &canary_kyc["national_id"]["number"],
        &canary_kyc["legal_name"]["family"],
        &canary_kyc["address"]["line1"],
        &canary_bank["iban"],
    ]
    .iter()
    .map(|v| v.as_str().unwrap().to_owned())
    .chain([
        made.card.1.clone(),
        made.card.2.clone(),
        made.kyc.1.clone(),
        made.bank.1.clone(),
    ])
    .collect();
    let received = w.hooks.received();
    assert_eq!(received.len(), alarms);
    let principals = [w.payments_id.clone(), w.vault.principal_id("olivia")];
    for hook in &received {
        assert_eq!(
            (hook.method.as_str(), hook.path.as_str()),
            ("POST", "/alarms/strongroom")
        );
        assert_eq!(hook.header("content-type"), Some("application/json"));
        let body: Value = serde_json::from_slice(&hook.body).unwrap();
        assert_eq!(
            shape(&body),
            [
                "canary_id",
                "event",
                "path",
                "principal",
                "record_type",
                "request_id",
                "time"
            ]
            .map(str::to_owned)
            .into()
        );
        assert_eq!(body["event"], "canary.touched");
        assert!(
            canary_ids.iter().any(|id| body["canary_id"] == id.as_str()),
            "{body}"
        );
        assert!(
            principals.iter().any(|p| body["principal"] == p.as_str()),
            "{body}"
        );
        let text = hook.body_text();
        for value in &values {
            assert!(
                !text.contains(value.as_str()),
                "{value} in the webhook: {text}"
            );
        }
    }
    // The WARN lines name the canary, and hold no value.
    let log = String::from_utf8_lossy(&captured_log().0.lock().unwrap()).into_owned();
    assert!(log.lines().any(|l| l.contains("WARN")
        && l.contains("canary record touched")
        && l.contains(made.kyc.0.as_str())));
    for value in &values {
        assert!(!log.contains(value.as_str()), "{value} in the log");
    }
}

/// A caller refused on a canary is refused exactly as on a real record,
/// and that is a denial (audited as one), not an alarm: nothing was opened
/// for it (docs/lifecycle.md, "Canaries").
#[tokio::test]
async fn a_refused_access_to_a_canary_is_a_denial_not_an_alarm() {
    let _turn = TURNS.lock().await;
    let w = world().await;
    let made = w.canaries().await;
    let (card_id, card_token) = w.real("card", real_card()).await;
    let auditor = w.vault.service("auditor", Role::Auditor);
    let record = |id: &str| format!("/v1/records/{id}");

    // Another payment service: not its record, "not found" either way.
    let c = w
        .expect_alarms(
            "read",
            0,
            w.send("GET", record(&made.card.0), &w.other_payments, None),
        )
        .await;
    let r = w
        .send("GET", record(&card_id), &w.other_payments, None)
        .await;
    assert_eq!((c.status, r.status), (404, 404));
    assert_eq!(c.body["code"], r.body["code"]);
    let d = w
        .expect_alarms(
            "detokenize",
            0,
            w.post(
                "/v1/tokens/detokenize",
                &w.other_payments,
                json!({"tokens": [made.card.1]}),
            ),
        )
        .await;
    let rd = w
        .post(
            "/v1/tokens/detokenize",
            &w.other_payments,
            json!({"tokens": [card_token]}),
        )
        .await;
    assert_eq!(
        d.body["results"][&made.card.1],
        rd.body["results"][&card_token]
    );
    // A role that may not read records at all.
    let c = w
        .expect_alarms(
            "read",
            0,
            w.send("GET", record(&made.card.0), &auditor, None),
        )
        .await;
    assert_eq!(
        (c.status, c.body["code"].as_str()),
        (403, Some("forbidden"))
    );
    // A reveal that needs an approval it does not have.
    let c = w
        .expect_alarms(
            "reveal",
            0,
            w.post(
                &format!("/v1/records/{}/reveal", made.kyc.0),
                &w.officer,
                justified(json!({"fields": ["national_id"]})),
            ),
        )
        .await;
    assert_eq!(
        (c.status, c.body["code"].as_str()),
        (403, Some("approval_required"))
    );

    let denied: Vec<Value> = audit_entries(&w.vault)
        .into_iter()
        .filter(|e| e["outcome"] == "denied" && e["target"] == made.card.0.as_str())
        .collect();
    assert_eq!(denied.len(), 3, "{denied:?}");
    assert!(w.hooks.received().is_empty());
}

/// The webhook goes through the relay's client and its destination rules:
/// with private destinations not allowed, a loopback receiver is refused
/// (counted as a failed delivery) and gets nothing, while the access is
/// answered and audited as ever.
#[tokio::test]
async fn the_webhook_keeps_the_relay_destination_rules() {
    let _turn = TURNS.lock().await;
    let w = world_with(Behaviour::Charge, false).await;
    let made = w.canaries().await;
    let failures = w
        .metric("strongroom_canary_webhook_failures_total", &[])
        .await;
    let reply = w
        .expect_alarms(
            "read",
            1,
            call(
                &w.app,
                "GET",
                &format!("/v1/records/{}", made.kyc.0),
                Some(&w.payments),
                None,
            ),
        )
        .await;
    assert_eq!(reply.status, 200);
    let mut waited = 0;
    while w
        .metric("strongroom_canary_webhook_failures_total", &[])
        .await
        < failures + 1.0
    {
        waited += 1;
        assert!(waited < 3000, "the refused delivery was never counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(w.hooks.count(), 0);
}

/// The webhook does not hold the answer: with a receiver that takes a
/// minute, the read is answered while the delivery is still in flight (had
/// the request waited for it, the delivery would have timed out first and
/// been counted as failed); the post then arrives.
#[tokio::test]
async fn a_slow_webhook_does_not_hold_the_answer() {
    let _turn = TURNS.lock().await;
    let w = world_with(Behaviour::Slow(Duration::from_secs(60)), true).await;
    let made = w.canaries().await;
    let failures = w
        .metric("strongroom_canary_webhook_failures_total", &[])
        .await;
    let reply = call(
        &w.app,
        "GET",
        &format!("/v1/records/{}", made.bank.0),
        Some(&w.payments),
        None,
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        w.metric("strongroom_canary_webhook_failures_total", &[])
            .await,
        failures
    );
    let mut waited = 0;
    while w.hooks.count() == 0 {
        waited += 1;
        assert!(waited < 3000, "the alarm was never posted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client that hangs up does not stop the alarm: the webhook is posted
/// while the access's audit entry is still being written, and the entry
/// (outcome `canary`) is written after the client is gone.
#[tokio::test]
async fn a_client_that_hangs_up_still_raises_the_alarm() {
    let _turn = TURNS.lock().await;
    let ca = TestCa::new("canary test CA");
    let hooks = TestProcessor::start(&ca, Behaviour::Charge).await;
    let (vault, faulty) = faulty_vault_app(
        fast_settings(),
        Arc::new(SystemClock),
        settings(&ca, &hooks, true),
    );
    let w = world_over(vault, ca, hooks).await;
    let made = w.canaries().await;
    faulty.hold_audit_applies(true);
    let app = w.app.clone();
    let key = w.payments.clone();
    let path = format!("/v1/records/{}", made.kyc.0);
    let client = tokio::spawn(async move { call(&app, "GET", &path, Some(&key), None).await });
    let mut waited = 0;
    while w.hooks.received().is_empty() {
        waited += 1;
        assert!(waited < 3000, "no alarm posted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.abort();
    assert!(client.await.is_err_and(|e| e.is_cancelled()));
    faulty.hold_audit_applies(false);
    let alarmed = || {
        audit_entries(&w.vault).iter().any(|e| {
            e["outcome"] == "canary"
                && e["action"] == "record.read"
                && e["target"] == made.kyc.0.as_str()
        })
    };
    let mut waited = 0;
    while !alarmed() {
        waited += 1;
        assert!(waited < 3000, "the alarm's audit entry was never written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let body: Value = serde_json::from_slice(&w.hooks.received()[0].body).unwrap();
    assert_eq!(
        (body["canary_id"].as_str(), body["path"].as_str()),
        (Some(made.kyc.0.as_str()), Some("read"))
    );
}
