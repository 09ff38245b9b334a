//! Property tests over the HTTP API: a payment-service credential never
//! receives plaintext (invariant 6), and no body sent to a POST route makes
//! the server answer 5xx (invariant 8).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use axum::Router;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use strongroom::access::Role;

const PASSWORD: &str = "staff password 123";

/// A Luhn-valid 16-digit Visa number from 15 random digits.
fn visa() -> impl Strategy<Value = String> {
    proptest::collection::vec(0u32..10, 14).prop_map(|digits| {
        let mut pan: Vec<u32> = std::iter::once(4).chain(digits).collect();
        let sum: u32 = pan
            .iter()
            .rev()
            .enumerate()
            .map(|(i, d)| {
                if i % 2 == 0 {
                    let x = d * 2;
                    if x > 9 { x - 9 } else { x }
                } else {
                    *d
                }
            })
            .sum();
        pan.push((10 - sum % 10) % 10);
        pan.iter()
            .map(|d| char::from_digit(*d, 10).unwrap())
            .collect()
    })
}

#[derive(Debug, Clone)]
struct Person {
    given: String,
    family: String,
    dob: String,
    street: String,
    postcode: String,
    passport: String,
    pan: String,
}

fn person() -> impl Strategy<Value = Person> {
    (
        "Zq[a-z]{4,10}",
        "Xv[a-z]{5,12}",
        (1930i32..2005, 1u8..=12, 1u8..=28),
        "[1-9][0-9]{1,3} [A-Z][a-z]{4,9} (Road|Lane|Street)",
        "[A-Z]{2}[0-9] [0-9][A-Z]{2}",
        "[A-Z][0-9]{8}",
        visa(),
    )
        .prop_map(
            |(given, family, (y, m, d), street, postcode, passport, pan)| Person {
                given,
                family,
                dob: format!("{y:04}-{m:02}-{d:02}"),
                street,
                postcode,
                passport,
                pan,
            },
        )
}

struct World {
    _vault: TestVault,
    app: Router,
    payments: String,
}

fn world(rt: &tokio::runtime::Runtime) -> (TestVault, Router, String) {
    let vault = passphrase_vault();
    let app = vault.app();
    let payments = vault.service("payments", Role::PaymentService);
    let _ = rt;
    (vault, app, payments)
}

/// Every response a payment service gets for one person's data.
async fn payment_service_responses(w: &World, p: &Person) -> Vec<String> {
    let key = Some(w.payments.as_str());
    let mut out = Vec::new();
    let mut keep = |reply: Reply| {
        out.push(reply.body.to_string());
        reply.body
    };
    let card = keep(call(&w.app, "POST", "/v1/records/card", key, Some(json!({"pan": p.pan, "exp_month": 12, "exp_year": 2031, "holder_name": format!("{} {}", p.given, p.family)}))).await);
    let kyc = keep(call(&w.app, "POST", "/v1/records/kyc", key, Some(json!({
        "legal_name": {"given": p.given, "family": p.family}, "date_of_birth": p.dob,
        "address": {"line1": p.street, "city": "Testville", "postal_code": p.postcode, "country": "GB"},
        "national_id": {"type": "passport", "number": p.passport, "country": "GB"}
    }))).await);
    let (card_id, kyc_id) = (
        card["id"].as_str().unwrap_or("card_x").to_owned(),
        kyc["id"].as_str().unwrap_or("kyc_x").to_owned(),
    );
    for id in [&card_id, &kyc_id] {
        keep(call(&w.app, "GET", &format!("/v1/records/{id}"), key, None).await);
        keep(call(&w.app, "POST", &format!("/v1/records/{id}/reveal"), key, Some(json!({"fields": ["national_id", "pan", "date_of_birth", "legal_name", "address"], "reason": "r", "ticket": "T"}))).await);
        keep(
            call(
                &w.app,
                "POST",
                "/v1/access-requests",
                key,
                Some(json!({"record_id": id, "fields": ["pan"], "reason": "r", "ticket": "T"})),
            )
            .await,
        );
    }
    keep(call(&w.app, "PATCH", &format!("/v1/records/{kyc_id}"), key, Some(json!({"address": {"line1": p.street, "city": "Othertown", "postal_code": p.postcode, "country": "GB"}}))).await);
    keep(
        call(
            &w.app,
            "PATCH",
            &format!("/v1/records/{kyc_id}"),
            key,
            Some(json!({"date_of_birth": "not a date"})),
        )
        .await,
    );
    keep(
        call(
            &w.app,
            "PATCH",
            &format!("/v1/records/{card_id}"),
            key,
            Some(json!({"pan": format!("{}0", p.pan)})),
        )
        .await,
    );
    let tokens = json!({"tokens": [card["token"], card["pan_token"], kyc["token"]]});
    keep(call(&w.app, "POST", "/v1/tokens/detokenize", key, Some(tokens)).await);
    for field in ["pan", "national_id"] {
        keep(call(&w.app, "POST", "/v1/search", key, Some(json!({"field": field, "value": p.pan, "country": "GB", "reason": "r", "ticket": "T"}))).await);
    }
    out
}

#[test]
fn a_payment_service_never_receives_plaintext() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (vault, app, payments) = world(&rt);
    let w = World {
        _vault: vault,
        app,
        payments,
    };
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    runner
        .run(&person(), |p| {
            let responses = rt.block_on(payment_service_responses(&w, &p));
            let all = responses.join("\n");
            prop_assert!(
                all.contains("\"last4\""),
                "the masked views were not exercised"
            );
            for secret in [
                &p.pan,
                &p.passport,
                &p.given,
                &p.family,
                &p.dob,
                &p.street,
                &p.postcode,
            ] {
                prop_assert!(
                    !all.contains(secret.as_str()),
                    "{secret:?} reached a payment service: {all}"
                );
            }
            Ok(())
        })
        .unwrap();
}

const FIELD_NAMES: [&str; 24] = [
    "pan",
    "exp_month",
    "exp_year",
    "holder_name",
    "subject_ref",
    "iban",
    "account_number",
    "routing_number",
    "country",
    "legal_name",
    "given",
    "family",
    "date_of_birth",
    "address",
    "national_id",
    "email",
    "phone",
    "fields",
    "reason",
    "ticket",
    "tokens",
    "value",
    "kind",
    "record_id",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
        "[0-9 -]{0,22}".prop_map(Value::from),
    ];
    let key = prop_oneof![
        proptest::sample::select(FIELD_NAMES.to_vec()).prop_map(String::from),
        "[a-zA-Z_]{1,10}"
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn no_body_makes_a_post_route_answer_5xx() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let vault = passphrase_vault();
    let app = vault.app();
    let payments = vault.service("payments", Role::PaymentService);
    vault.staff("officer", Role::ComplianceOfficer, PASSWORD);
    vault.staff("approver", Role::ComplianceApprover, PASSWORD);
    let (officer, approver, card_id) = rt.block_on(async {
        let login = |name: &str| {
            let app = app.clone();
            let body = json!({"username": name, "password": PASSWORD});
            async move {
                call(&app, "POST", "/v1/auth/login", None, Some(body))
                    .await
                    .body["token"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            }
        };
        let card = call(
            &app,
            "POST",
            "/v1/records/card",
            Some(&payments),
            Some(json!({"pan": "4242424242424242", "exp_month": 12, "exp_year": 2031})),
        )
        .await;
        (
            login("officer").await,
            login("approver").await,
            card.body["id"].as_str().unwrap().to_owned(),
        )
    });
    // Every POST route of the OpenAPI document but seal (it takes no body,
    // and sealing would turn every later answer into 503), with a caller
    // allowed to call it.
    let doc = serde_json::to_value(strongroom::api::openapi_document()).unwrap();
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if item.get("post").is_none() || path == "/v1/sys/seal" {
            continue;
        }
        let concrete = path
            .replace("{type}", "card")
            .replace(
                "{id}",
                if path.contains("access-requests") {
                    "ar_x"
                } else {
                    &card_id
                },
            )
            .replace("{purpose}", "card");
        let caller = if path.starts_with("/v1/principals") || path.starts_with("/v1/keys") {
            Some(vault.admin_api_key.clone())
        } else if path.ends_with("/approve") || path.ends_with("/deny") {
            Some(approver.clone())
        } else if path.contains("reveal")
            || path.contains("search")
            || path.contains("access-requests")
        {
            Some(officer.clone())
        } else if path.starts_with("/v1/records") || path.starts_with("/v1/tokens") {
            Some(payments.clone())
        } else {
            None
        };
        routes.push((concrete, caller));
    }
    assert!(routes.len() >= 13, "{routes:?}");
    let mut runner = TestRunner::new(Config {
        cases: 48,
        ..Config::default()
    });
    runner
        .run(&json_value(), |body| {
            let statuses = rt.block_on(async {
                let mut out = Vec::new();
                for (path, caller) in &routes {
                    let reply =
                        call(&app, "POST", path, caller.as_deref(), Some(body.clone())).await;
                    out.push((path.clone(), reply.status, reply.body));
                }
                out
            });
            for (path, status, reply) in statuses {
                prop_assert!(status < 500, "{path} answered {status} to {body}: {reply}");
            }
            Ok(())
        })
        .unwrap();
    // Bytes that are not JSON at all.
    let junk = ["", "{", "[1,2", "null", "\u{0}", "{\"pan\":}", "\u{feff}{}"];
    rt.block_on(async {
        for (path, caller) in &routes {
            for text in junk {
                let mut req = axum::http::Request::builder()
                    .method("POST")
                    .uri(path.as_str())
                    .header("content-type", "application/json");
                if let Some(c) = caller {
                    req = req.header("authorization", format!("Bearer {c}"));
                }
                let reply =
                    send_request(&app, req.body(axum::body::Body::from(text)).unwrap()).await;
                assert!(
                    reply.status < 500,
                    "{path} answered {} to {text:?}",
                    reply.status
                );
            }
        }
    });
}
