//! The HTTP API in-process (router + `oneshot`): sys endpoints, the sealed
//! gate, authentication and roles, problem+json, request ids, body limits.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use common::*;
use serde_json::{Value, json};
use strongroom::api::{AVAILABLE_WHILE_SEALED, AppSettings, openapi_document, router};

const BODY_LIMIT: usize = 4096;

fn app(vault: &TestVault) -> Router {
    vault.app()
}

fn app_with_limit(vault: &TestVault, unseal_failures_per_minute: u32) -> Router {
    router(vault.state_with(AppSettings {
        unseal_failures_per_minute,
        ..test_settings()
    }))
}

async fn unseal(app: &Router, body: Value) -> Reply {
    call(app, "POST", "/v1/sys/unseal", None, Some(body)).await
}

fn assert_problem(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    assert_eq!(reply.headers["content-type"], "application/problem+json");
    assert_eq!(reply.body["code"], code, "{:?}", reply.body);
    assert_eq!(reply.body["status"], status);
    assert!(
        reply.body["type"].is_string()
            && reply.body["title"].is_string()
            && reply.body["detail"].is_string()
    );
    assert!(reply.headers.contains_key("x-request-id"));
}

/// Every route of API.md, with path parameters filled in.
const CONTRACT_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/sys/seal"),
    ("POST", "/v1/principals"),
    ("GET", "/v1/principals"),
    ("DELETE", "/v1/principals/prn_x"),
    ("POST", "/v1/auth/login"),
    ("POST", "/v1/auth/logout"),
    ("POST", "/v1/records/card"),
    ("POST", "/v1/records/bank_account"),
    ("POST", "/v1/records/kyc"),
    ("GET", "/v1/records/card_x"),
    ("PATCH", "/v1/records/card_x"),
    ("DELETE", "/v1/records/card_x"),
    ("POST", "/v1/records/card_x/reveal"),
    ("POST", "/v1/search"),
    ("POST", "/v1/access-requests"),
    ("POST", "/v1/access-requests/ar_x/approve"),
    ("POST", "/v1/access-requests/ar_x/deny"),
    ("POST", "/v1/tokens"),
    ("POST", "/v1/tokens/detokenize"),
    ("DELETE", "/v1/tokens/tok_x"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/audit/verify"),
    ("GET", "/v1/keys"),
    ("POST", "/v1/keys/card/rotate"),
    ("POST", "/v1/keys/rewrap"),
    ("GET", "/v1/keys/rewrap"),
];

/// Every operation of the OpenAPI document, so a new endpoint is covered
/// without editing this test.
fn documented_routes() -> Vec<(String, String)> {
    let doc = serde_json::to_value(openapi_document()).unwrap();
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let concrete = path
                .split('/')
                .map(|seg| if seg.starts_with('{') { "x" } else { seg })
                .collect::<Vec<_>>()
                .join("/");
            routes.push((method.to_uppercase(), concrete));
        }
    }
    routes
}

#[tokio::test]
async fn health_reports_seal_state_and_version() {
    let vault = passphrase_vault();
    let app = app(&vault);
    let reply = call(&app, "GET", "/v1/sys/health", None, None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["status"], "ok");
    assert_eq!(reply.body["sealed"], false);
    assert_eq!(reply.body["version"], env!("CARGO_PKG_VERSION"));

    vault.keyring.seal();
    let reply = call(&app, "GET", "/v1/sys/health", None, None).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, json!({"status": "sealed", "sealed": true}));
}

#[tokio::test]
async fn while_sealed_every_data_route_answers_503_sealed() {
    let vault = passphrase_vault();
    let app = app(&vault);
    vault.keyring.seal();
    let mut routes: Vec<(String, String)> = CONTRACT_ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    routes.extend(documented_routes());
    let mut checked = 0;
    for (method, path) in routes {
        if AVAILABLE_WHILE_SEALED.contains(&path.as_str()) {
            continue;
        }
        let body = matches!(method.as_str(), "POST" | "PATCH").then(|| json!({}));
        let reply = call(&app, &method, &path, Some(&vault.admin_api_key), body).await;
        assert_problem(&reply, 503, "sealed");
        checked += 1;
    }
    assert!(checked >= CONTRACT_ROUTES.len());
    // The public ones still answer.
    assert_eq!(
        status_of(&app, "GET", "/v1/openapi.json", None, None).await,
        200
    );
    let reply = unseal(&app, json!({"passphrase": PASSPHRASE})).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["sealed"], false);
}

#[tokio::test]
async fn seal_needs_an_admin_credential() {
    let vault = passphrase_vault();
    let app = app(&vault);
    assert_problem(
        &call(&app, "POST", "/v1/sys/seal", None, None).await,
        401,
        "unauthenticated",
    );
    let fake = format!("srk_{}", "0".repeat(64));
    for bad in ["garbage", fake.as_str(), ""] {
        assert_problem(
            &call(&app, "POST", "/v1/sys/seal", Some(bad), None).await,
            401,
            "unauthenticated",
        );
    }
    let basic = Request::builder()
        .method("POST")
        .uri("/v1/sys/seal")
        .header("authorization", format!("Basic {}", vault.admin_api_key))
        .body(Body::empty())
        .unwrap();
    assert_problem(&send_request(&app, basic).await, 401, "unauthenticated");
    assert!(!vault.keyring.is_sealed());
}

#[tokio::test]
async fn unseal_with_shares_over_http() {
    let vault = shares_vault(5, 3);
    let other = shares_vault(5, 3);
    let app = app_with_limit(&vault, 100);
    vault.keyring.seal();
    let submit = |share: String| {
        let app = app.clone();
        async move { unseal(&app, json!({ "share": share })).await }
    };
    let reply = submit(vault.shares[3].clone()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.body,
        json!({"sealed": true, "progress": 1, "threshold": 3})
    );

    let mut corrupted = vault.shares[0].clone();
    corrupted.replace_range(20..21, if &corrupted[20..21] == "0" { "1" } else { "0" });
    for bad in [corrupted, other.shares[0].clone(), "nonsense".into()] {
        let reply = submit(bad).await;
        assert_problem(&reply, 400, "unseal_failed");
        assert!(!reply.body.to_string().contains(&vault.shares[0][10..40]));
    }
    let reply = submit(vault.shares[0].clone()).await;
    assert_eq!(
        reply.body,
        json!({"sealed": true, "progress": 2, "threshold": 3})
    );
    let reply = submit(vault.shares[1].clone()).await;
    assert_eq!(
        reply.body,
        json!({"sealed": false, "progress": 0, "threshold": 3})
    );
    assert!(!vault.keyring.is_sealed());
    let reply = call(&app, "GET", "/v1/sys/health", None, None).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn unseal_refuses_bad_bodies() {
    let vault = passphrase_vault();
    let app = app(&vault);
    vault.keyring.seal();
    let neither = unseal(&app, json!({})).await;
    assert_problem(&neither, 422, "validation_failed");
    let both = unseal(&app, json!({"passphrase": "a", "share": "b"})).await;
    assert_problem(&both, 422, "validation_failed");
    let unknown = unseal(&app, json!({"passphrase": "a", "pin": "1"})).await;
    assert_problem(&unknown, 422, "validation_failed");
    assert_eq!(unknown.body["errors"][0]["field"], "pin");
    let wrong_type = unseal(&app, json!({"passphrase": 12345})).await;
    assert_problem(&wrong_type, 422, "validation_failed");
    assert!(!wrong_type.body.to_string().contains("12345"));

    let raw = |content_type: &str, body: &str| {
        Request::builder()
            .method("POST")
            .uri("/v1/sys/unseal")
            .header("content-type", content_type)
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    assert_problem(
        &send_request(&app, raw("application/json", "{\"passphrase\":")).await,
        400,
        "malformed_request",
    );
    assert_problem(
        &send_request(&app, raw("text/plain", "{}")).await,
        400,
        "malformed_request",
    );
    let no_type = Request::builder()
        .method("POST")
        .uri("/v1/sys/unseal")
        .body(Body::from("{}"))
        .unwrap();
    assert_problem(&send_request(&app, no_type).await, 400, "malformed_request");
    let huge = format!("{{\"passphrase\":\"{}\"}}", "a".repeat(BODY_LIMIT * 2));
    assert_problem(
        &send_request(&app, raw("application/json", &huge)).await,
        413,
        "payload_too_large",
    );
    assert!(vault.keyring.is_sealed());
}

#[tokio::test]
async fn unsealing_an_unsealed_vault_changes_and_records_nothing() {
    let vault = passphrase_vault();
    let app = app(&vault);
    let before = vault.store.scan_prefix(b"au/e/").unwrap().len();
    for _ in 0..20 {
        let reply = unseal(&app, json!({"passphrase": "anything at all"})).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body["sealed"], false);
    }
    assert_eq!(vault.store.scan_prefix(b"au/e/").unwrap().len(), before);
}

#[tokio::test]
async fn failed_unseals_are_rate_limited() {
    let vault = passphrase_vault();
    let app = app_with_limit(&vault, 3);
    vault.keyring.seal();
    for _ in 0..3 {
        let reply = unseal(&app, json!({"passphrase": "wrong passphrase!"})).await;
        assert_problem(&reply, 400, "unseal_failed");
    }
    // Now even the right passphrase must wait.
    let reply = unseal(&app, json!({"passphrase": PASSPHRASE})).await;
    assert_problem(&reply, 429, "rate_limited");
    let retry_after: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    assert!(vault.keyring.is_sealed());
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let vault = passphrase_vault();
    let app = app(&vault);
    let with_id = |path: &str, id: &str| {
        Request::builder()
            .uri(path.to_owned())
            .header("x-request-id", id.to_owned())
            .body(Body::empty())
            .unwrap()
    };
    for path in ["/v1/sys/health", "/v1/nope", "/v1/openapi.json"] {
        let reply = send_request(&app, with_id(path, "client-id-123")).await;
        assert_eq!(reply.headers["x-request-id"], "client-id-123", "{path}");
    }
    // A made-up id when none (or an unusable one) is sent.
    let a = call(&app, "GET", "/v1/sys/health", None, None).await;
    let b = call(&app, "GET", "/v1/sys/health", None, None).await;
    let (a, b) = (
        a.headers["x-request-id"].clone(),
        b.headers["x-request-id"].clone(),
    );
    assert_eq!(a.len(), 32);
    assert_ne!(a, b);
    let reply = send_request(&app, with_id("/v1/sys/health", &"x".repeat(500))).await;
    assert_eq!(reply.headers["x-request-id"].len(), 32);
    vault.keyring.seal();
    let reply = send_request(&app, with_id("/v1/records/card", "sealed-req")).await;
    assert_eq!(reply.headers["x-request-id"], "sealed-req");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let vault = passphrase_vault();
    let app = app(&vault);
    assert_problem(
        &call(&app, "GET", "/v1/nope", None, None).await,
        404,
        "not_found",
    );
    assert_problem(&call(&app, "GET", "/", None, None).await, 404, "not_found");
    assert_problem(
        &call(&app, "DELETE", "/v1/sys/health", None, None).await,
        405,
        "method_not_allowed",
    );
}

#[tokio::test]
async fn openapi_document_is_3_1_and_lists_every_route() {
    let vault = passphrase_vault();
    let app = app(&vault);
    let reply = call(&app, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body["openapi"].as_str().unwrap().starts_with("3.1"));
    for (method, path) in [
        ("get", "/v1/sys/health"),
        ("post", "/v1/sys/unseal"),
        ("post", "/v1/sys/seal"),
        ("get", "/v1/openapi.json"),
    ] {
        assert!(
            reply.body["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    assert!(reply.body["components"]["securitySchemes"]["bearer"].is_object());
    // Every documented route exists (no 404/405 from the router).
    for (method, path) in documented_routes() {
        let body = (method == "POST").then(|| json!({}));
        let reply = call(&app, &method, &path, None, body).await;
        assert!(
            reply.status != 404 && reply.status != 405,
            "{method} {path} is documented but not routed"
        );
    }
}

/// Audit entries of `action` with `outcome`.
fn audited(vault: &TestVault, action: &str, outcome: &str) -> usize {
    audit_entries(vault)
        .iter()
        .filter(|e| e["action"] == action && e["outcome"] == outcome)
        .count()
}

/// 30 wrong passphrases at once against a limit of 3 failures a minute: the
/// attempt is reserved before the check, so at most 3 checks happen and
/// every other attempt is 429; even the right passphrase waits afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_wrong_unseals_never_exceed_the_limit() {
    let vault = passphrase_vault();
    let app = app_with_limit(&vault, 3);
    vault.keyring.seal();
    let attempts: Vec<_> = (0..30)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(
                async move { unseal(&app, json!({"passphrase": "wrong passphrase!"})).await },
            )
        })
        .collect();
    let (mut checked, mut limited) = (0, 0);
    for attempt in attempts {
        let reply = attempt.await.unwrap();
        match reply.status {
            400 => {
                assert_problem(&reply, 400, "unseal_failed");
                checked += 1;
            }
            429 => {
                assert_problem(&reply, 429, "rate_limited");
                limited += 1;
            }
            other => panic!("unexpected {other}: {:?}", reply.body),
        }
    }
    assert!(
        (1..=3).contains(&checked),
        "{checked} passphrase checks, the limit is 3"
    );
    assert_eq!(checked + limited, 30);
    assert_eq!(audited(&vault, "sys.unseal", "denied"), checked);
    let reply = unseal(&app, json!({"passphrase": PASSPHRASE})).await;
    assert_problem(&reply, 429, "rate_limited");
    assert!(vault.keyring.is_sealed());
}

#[tokio::test]
async fn overlong_unseal_material_is_refused_before_any_work() {
    let vault = app_vault_sealed();
    let app = app_with_limit(&vault, 1);
    for field in ["passphrase", "share"] {
        let long = "x".repeat(1025);
        let reply = unseal(&app, json!({ field: long })).await;
        assert_problem(&reply, 422, "validation_failed");
        assert_eq!(reply.body["errors"][0]["field"], field);
        assert!(!reply.body.to_string().contains("xxxx"));
    }
    // Neither was checked, audited or counted against the limit of 1.
    assert_eq!(audited(&vault, "sys.unseal", "denied"), 0);
    let reply = unseal(&app, json!({"passphrase": PASSPHRASE})).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert!(!vault.keyring.is_sealed());
}

/// A passphrase vault, sealed.
fn app_vault_sealed() -> TestVault {
    let vault = passphrase_vault();
    vault.keyring.seal();
    vault
}

/// A passphrase vault with the production Argon2id cost (64 MiB, t = 3,
/// p = 4), so an unseal takes far longer than a client waiting 50 ms,
/// served on a loopback port by this process with `unseal_failures` a
/// minute; sealed.
async fn slow_unseal_server(unseal_failures_per_minute: u32) -> (TestVault, std::net::SocketAddr) {
    let vault = new_vault(
        strongroom::keyring::SealMethod::Passphrase(zeroize::Zeroizing::new(PASSPHRASE.into())),
        strongroom::keyring::KeyringSettings::default(),
        std::sync::Arc::new(strongroom::clock::SystemClock),
    );
    let app = router(vault.state_with(AppSettings {
        unseal_failures_per_minute,
        ..test_settings()
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await });
    vault.keyring.seal();
    (vault, addr)
}

/// Sends an unseal request over a raw connection and hangs up ~50 ms later,
/// long before the Argon2id check can answer.
async fn unseal_and_hang_up(addr: std::net::SocketAddr, passphrase: &str) {
    use tokio::io::AsyncWriteExt;
    let body = json!({ "passphrase": passphrase }).to_string();
    let request = format!(
        "POST /v1/sys/unseal HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    drop(stream);
}

/// A client that hangs up during a wrong passphrase's check: the attempt
/// still ends in an audit entry and counts against the limit, so the next
/// attempt (even with the right passphrase) must wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unseal_whose_client_hangs_up_is_still_counted_and_audited() {
    let (vault, addr) = slow_unseal_server(1).await;
    unseal_and_hang_up(addr, "wrong passphrase!").await;
    wait_until("the abandoned attempt's audit entry", || {
        audited(&vault, "sys.unseal", "denied") == 1
    });
    let reply = tokio::task::spawn_blocking(move || {
        let body = json!({ "passphrase": PASSPHRASE }).to_string();
        http(addr, "POST", "/v1/sys/unseal", None, Some(&body))
    })
    .await
    .unwrap();
    assert_eq!(
        reply.status,
        429,
        "{:?}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(vault.keyring.is_sealed());
}

/// A client that hangs up during the right passphrase's check: the vault
/// unseals, and that is audited and the head signed, as for any unseal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unseal_whose_client_hangs_up_still_unseals_and_is_audited() {
    let (vault, addr) = slow_unseal_server(5).await;
    unseal_and_hang_up(addr, PASSPHRASE).await;
    wait_until("the abandoned unseal's audit entry", || {
        audited(&vault, "sys.unseal", "allowed") == 1
    });
    assert!(!vault.keyring.is_sealed());
    wait_until("a checkpoint over the unseal entry", || {
        let last_unseal = audit_entries(&vault)
            .iter()
            .filter(|e| e["action"] == "sys.unseal")
            .filter_map(|e| e["seq"].as_u64())
            .max();
        let signed = vault
            .state
            .audit
            .latest_checkpoint()
            .unwrap()
            .map(|c| c.seq);
        matches!((last_unseal, signed), (Some(u), Some(s)) if s >= u)
    });
}

/// Every operation of the document, as (path, method, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            out.push((path.clone(), method.clone(), operation.clone()));
        }
    }
    out
}

/// The rules an OpenAPI 3.1 validator applies that utoipa does not
/// enforce, and the ones this API adds: every operation answers what its
/// layers can answer, as problem+json.
#[test]
fn openapi_document_is_exact() {
    let doc = serde_json::to_value(openapi_document()).unwrap();
    let ops = operations(&doc);

    // Operation ids are unique (OpenAPI 3.1 §4.8.10).
    let mut ids = std::collections::HashSet::new();
    for (path, method, op) in &ops {
        let id = op["operationId"].as_str().unwrap_or_default();
        assert!(!id.is_empty(), "{method} {path} has no operationId");
        assert!(ids.insert(id.to_owned()), "operationId {id} is not unique");
    }
    // No two paths are the same once their templates are blanked out
    // (§4.8.8: "Templated paths with the same hierarchy but different
    // templated names MUST NOT exist").
    let mut shapes = std::collections::HashMap::new();
    for path in doc["paths"].as_object().unwrap().keys() {
        let shape: Vec<&str> = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "{}" } else { seg })
            .collect();
        if let Some(other) = shapes.insert(shape.join("/"), path.clone()) {
            panic!("{path} and {other} are the same templated path");
        }
    }
    let problem_only = |status: &str, response: &Value, what: &str| {
        let content = response["content"].as_object();
        assert_eq!(
            content.map(|c| c.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["application/problem+json".to_owned()]),
            "{what}: {status} must be application/problem+json"
        );
        assert_eq!(
            response["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem",
            "{what}: {status}"
        );
    };
    for (path, method, op) in &ops {
        let what = format!("{method} {path}");
        let responses = op["responses"].as_object().unwrap();
        let has = |status: &str| responses.contains_key(status);
        // Path parameters are declared.
        for seg in path.split('/').filter(|s| s.starts_with('{')) {
            let name = seg.trim_matches(|c| c == '{' || c == '}');
            assert!(
                op["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == "path")),
                "{what}: path parameter {name} undeclared"
            );
        }
        for (status, response) in responses {
            assert!(
                response["headers"]["x-request-id"].is_object(),
                "{what}: {status} lacks x-request-id"
            );
            // Errors are problem documents; health's 503 is its own body.
            let health = path == "/v1/sys/health";
            if status.starts_with('4') || (status.starts_with('5') && !health) {
                problem_only(status, response, &what);
            }
            if status == "429" {
                assert!(response["headers"]["retry-after"].is_object(), "{what}");
            }
        }
        assert!(has("500"), "{what}: 500");
        if op["security"].as_array().is_some_and(|s| !s.is_empty()) {
            assert!(has("401"), "{what}: 401");
        }
        if !op["requestBody"].is_null() {
            for status in ["400", "413", "422"] {
                assert!(has(status), "{what}: {status}");
            }
            let content = op["requestBody"]["content"].as_object().unwrap();
            assert!(content.contains_key("application/json"), "{what}");
        }
        if !AVAILABLE_WHILE_SEALED.contains(&path.as_str()) {
            assert!(has("503"), "{what}: 503 sealed");
        }
    }

    // One typed path per record type, whose body is the type's schema
    // plus subject_ref, closed to unknown fields.
    let schemas = &doc["components"]["schemas"];
    let resolve = |schema: &Value| -> Value {
        match schema["$ref"].as_str() {
            Some(r) => schemas[r.trim_start_matches("#/components/schemas/")].clone(),
            None => schema.clone(),
        }
    };
    for (path, required, fields) in [
        (
            "/v1/records/card",
            &["pan", "exp_month", "exp_year"][..],
            &["holder_name"][..],
        ),
        (
            "/v1/records/bank_account",
            &[],
            &[
                "iban",
                "account_number",
                "routing_number",
                "country",
                "holder_name",
            ],
        ),
        (
            "/v1/records/kyc",
            &["legal_name", "date_of_birth"],
            &["nationality", "address", "national_id", "email", "phone"],
        ),
    ] {
        let op = &doc["paths"][path]["post"];
        let body = resolve(&op["requestBody"]["content"]["application/json"]["schema"]);
        assert_eq!(body["type"], "object", "{path}");
        assert_eq!(body["additionalProperties"], false, "{path}");
        let properties = body["properties"].as_object().unwrap();
        let mut expected: Vec<&str> = required.iter().chain(fields).copied().collect();
        expected.push("subject_ref");
        expected.sort_unstable();
        let mut got: Vec<&str> = properties.keys().map(String::as_str).collect();
        got.sort_unstable();
        assert_eq!(got, expected, "{path}");
        let mut got_required: Vec<&str> = body["required"]
            .as_array()
            .map(|r| r.iter().map(|v| v.as_str().unwrap()).collect())
            .unwrap_or_default();
        got_required.sort_unstable();
        let mut required = required.to_vec();
        required.sort_unstable();
        assert_eq!(got_required, required, "{path}");
        let created = resolve(&op["responses"]["201"]["content"]["application/json"]["schema"]);
        assert!(created["properties"]["id"].is_object(), "{path}: typed 201");
    }
    // Nested KYC objects are closed too, and the id types are listed.
    for name in ["LegalName", "Address", "NationalId"] {
        assert_eq!(schemas[name]["additionalProperties"], false, "{name}");
    }
    let id_types: Vec<&str> = schemas["NationalIdType"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for t in ["passport", "ssn", "itin", "nino"] {
        assert!(id_types.contains(&t), "{t}");
    }
}

/// The record routes answer the contract's paths, and only those create.
#[tokio::test]
async fn record_creation_has_one_static_path_per_type() {
    let vault = passphrase_vault();
    let app = app(&vault);
    for kind in ["card", "bank_account", "kyc"] {
        let path = format!("/v1/records/{kind}");
        // Reaches the handler: an admin may not create records.
        let reply = call(
            &app,
            "POST",
            &path,
            Some(&vault.admin_api_key),
            Some(json!({})),
        )
        .await;
        assert_problem(&reply, 403, "forbidden");
        // GET on the type's path is not a record read.
        assert_problem(
            &call(&app, "GET", &path, Some(&vault.admin_api_key), None).await,
            405,
            "method_not_allowed",
        );
    }
    // POST on a record id creates nothing.
    let reply = call(
        &app,
        "POST",
        "/v1/records/card_x",
        Some(&vault.admin_api_key),
        Some(json!({})),
    )
    .await;
    assert_problem(&reply, 405, "method_not_allowed");
}
