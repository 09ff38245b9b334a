//! Readiness (`GET /v1/sys/ready`) and metrics (`GET /v1/sys/metrics`, the
//! separate metrics listener), through the HTTP API.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use common::*;
use serde_json::json;
use strongroom::access::Role;
use strongroom::api::{AppState, PROMETHEUS_TEXT, router};
use strongroom::clock::SystemClock;
use strongroom::store::{KeyValue, Store, StoreError, Transaction};
use tower::ServiceExt;

const PAN: &str = "4242424242424242";

/// What [`ProbedStore`]'s reads do.
const READS_WORK: u8 = 0;
const READS_FAIL: u8 = 1;
const READS_HANG: u8 = 2;
/// Only reads of the audit head hang (scrapes'), the rest work.
const HEAD_READS_HANG: u8 = 3;

/// The audit head's key (what a scrape reads).
const HEAD_KEY: &[u8] = b"au/head";

/// A store whose reads can be made to fail (with a message that must not
/// reach any answer) or to hang until released; everything else passes
/// through.
struct ProbedStore {
    inner: Arc<dyn Store>,
    mode: AtomicU8,
    /// Reads now hanging, and the condition that wakes them.
    hanging: Mutex<usize>,
    wake: Condvar,
    /// Reads of the audit head so far.
    head_reads: std::sync::atomic::AtomicUsize,
}

impl ProbedStore {
    fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            mode: AtomicU8::new(READS_WORK),
            hanging: Mutex::new(0),
            wake: Condvar::new(),
            head_reads: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        self.wake.notify_all();
    }

    fn hanging(&self) -> usize {
        *self.hanging.lock().unwrap()
    }
}

impl Store for ProbedStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if key == HEAD_KEY {
            self.head_reads.fetch_add(1, Ordering::SeqCst);
        }
        match self.mode.load(Ordering::SeqCst) {
            READS_FAIL => Err(StoreError::Backend("disk on fire at /secret/path".into())),
            mode @ (READS_HANG | HEAD_READS_HANG) if mode == READS_HANG || key == HEAD_KEY => {
                let mut hanging = self.hanging.lock().unwrap();
                *hanging += 1;
                while self.mode.load(Ordering::SeqCst) == mode {
                    hanging = self.wake.wait(hanging).unwrap();
                }
                *hanging -= 1;
                drop(hanging);
                self.inner.get(key)
            }
            _ => self.inner.get(key),
        }
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.scan(prefix, after, limit)
    }

    fn apply(&self, tx: Transaction) -> Result<(), StoreError> {
        self.inner.apply(tx)
    }

    fn apply_locked(
        &self,
        lock: &[u8],
        round: &mut strongroom::store::Round<'_>,
    ) -> Result<(), StoreError> {
        self.inner.apply_locked(lock, round)
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }

    fn snapshot(
        &self,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.inner.snapshot(visit)
    }
}

/// A vault whose server state reads through a [`ProbedStore`].
fn probed_vault() -> (TestVault, Arc<ProbedStore>, Router) {
    let (vault, probed, state) = probed_state();
    (vault, probed, router(state))
}

/// [`probed_vault`]'s server state, for the metrics listener too.
fn probed_state() -> (TestVault, Arc<ProbedStore>, AppState) {
    let vault = passphrase_vault();
    let probed = Arc::new(ProbedStore::new(Arc::clone(&vault.store)));
    let state = AppState::new(
        Arc::clone(&vault.keyring),
        Arc::clone(&probed) as Arc<dyn Store>,
        Arc::new(SystemClock),
        test_settings(),
    );
    (vault, probed, state)
}

#[tokio::test]
async fn ready_is_200_unsealed_and_503_sealed_without_a_credential() {
    let vault = passphrase_vault();
    let app = vault.app();
    let reply = call(&app, "GET", "/v1/sys/ready", None, None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, json!({"ready": true}));

    let reply = call(
        &app,
        "POST",
        "/v1/sys/seal",
        Some(&vault.admin_api_key),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = call(&app, "GET", "/v1/sys/ready", None, None).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body["code"], "sealed");
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/problem+json")
    );

    let reply = call(
        &app,
        "POST",
        "/v1/sys/unseal",
        None,
        Some(json!({"passphrase": PASSPHRASE})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        call(&app, "GET", "/v1/sys/ready", None, None).await.status,
        200
    );
}

#[tokio::test]
async fn ready_is_503_when_the_store_fails_and_says_nothing_of_why() {
    let (_vault, probed, app) = probed_vault();
    assert_eq!(
        call(&app, "GET", "/v1/sys/ready", None, None).await.status,
        200
    );
    probed.set(READS_FAIL);
    // A probe's answer stands for the next second's probes (so a flood of
    // them costs one read a second): wait it out.
    let reuse = std::time::Duration::from_millis(1100);
    tokio::time::sleep(reuse).await;
    let (status, content_type, body) = text(&app, "/v1/sys/ready", None).await;
    assert_eq!(status, 503);
    assert!(content_type.starts_with("application/problem+json"));
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["code"], "store_unavailable");
    assert!(
        !body.contains("fire") && !body.contains("/secret"),
        "{body}"
    );
    assert!(!body.contains(env!("CARGO_PKG_VERSION")), "{body}");
    probed.set(READS_WORK);
    tokio::time::sleep(reuse).await;
    assert_eq!(
        call(&app, "GET", "/v1/sys/ready", None, None).await.status,
        200
    );
}

/// A store that stops answering makes the probe answer 503 (after its
/// bounded wait) rather than hang; reads that hang keep their places, so a
/// dead database cannot pile up blocked threads, and once the store
/// answers again the node is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_when_the_store_hangs_and_hung_reads_are_bounded() {
    let (_vault, probed, app) = probed_vault();
    probed.set(READS_HANG);
    for _ in 0..6 {
        let reply = call(&app, "GET", "/v1/sys/ready", None, None).await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.body["code"], "store_unavailable");
    }
    // Readiness has one place: the probes after the first never reached
    // the store.
    assert_eq!(probed.hanging(), 1);
    probed.set(READS_WORK);
    let mut status = 0;
    for _ in 0..1000 {
        status = call(&app, "GET", "/v1/sys/ready", None, None).await.status;
        if status == 200 {
            break;
        }
        tokio::task::yield_now().await;
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(status, 200);
    assert_eq!(probed.hanging(), 0);
}

/// The metrics listener takes no credential. Scrapes whose store reads
/// hang hold every scrape place, yet a fresh readiness probe still reads
/// the store in its own place and answers 200: whoever can reach the
/// listener cannot take the node out of its load balancer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_cannot_take_the_readiness_probes_place() {
    let (_vault, probed, state) = probed_state();
    let listener = strongroom::api::metrics_listener_router(state.clone());
    let app = router(state);
    probed.set(HEAD_READS_HANG);
    let scrapes: Vec<_> = (0..6)
        .map(|_| {
            let listener = listener.clone();
            tokio::spawn(async move { text(&listener, "/metrics", None).await.0 })
        })
        .collect();
    for _ in 0..400 {
        if probed.hanging() == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(probed.hanging(), 4, "the scrapes hold every scrape place");
    let reply = call(&app, "GET", "/v1/sys/ready", None, None).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    // Scrapes whose head read hangs still answer, without the head.
    for scrape in scrapes {
        assert_eq!(scrape.await.unwrap(), 200);
    }
    probed.set(READS_WORK);
}

/// A flood of scrapes costs the store one read of the head a second.
#[tokio::test]
async fn a_flood_of_scrapes_reads_the_head_about_once_a_second() {
    let (_vault, probed, state) = probed_state();
    let listener = strongroom::api::metrics_listener_router(state);
    probed.head_reads.store(0, Ordering::SeqCst);
    for _ in 0..30 {
        let (status, _, body) = text(&listener, "/metrics", None).await;
        assert_eq!(status, 200);
        assert!(
            sample(
                &parse_exposition(&body),
                "strongroom_audit_head_sequence",
                &[]
            )
            .is_some_and(|s| s >= 1.0)
        );
    }
    let reads = probed.head_reads.load(Ordering::SeqCst);
    assert!((1..=2).contains(&reads), "{reads} reads of the head");
}

#[tokio::test]
async fn metrics_are_prometheus_text_labelled_by_route_template_never_by_path() {
    let vault = passphrase_vault();
    let app = vault.app();
    let payments = vault.service("payments", Role::PaymentService);
    let scraper = vault.service("scraper", Role::Metrics);

    let card = call(
        &app,
        "POST",
        "/v1/records/card",
        Some(&payments),
        Some(json!({"pan": PAN, "exp_month": 12, "exp_year": 2031, "holder_name": "Ada Lovelace"})),
    )
    .await;
    assert_eq!(card.status, 201, "{}", card.body);
    let id = card.body["id"].as_str().unwrap().to_owned();
    let token = card.body["token"].as_str().unwrap().to_owned();
    let read = call(
        &app,
        "GET",
        &format!("/v1/records/{id}"),
        Some(&payments),
        None,
    )
    .await;
    assert_eq!(read.status, 200, "{}", read.body);
    let detokenized = call(
        &app,
        "POST",
        "/v1/tokens/detokenize",
        Some(&payments),
        Some(json!({"tokens": [token]})),
    )
    .await;
    assert_eq!(detokenized.status, 200, "{}", detokenized.body);
    // A path that matches no route, carrying a PAN and the token.
    let stray = call(
        &app,
        "GET",
        &format!("/v1/{PAN}/{token}"),
        Some(&payments),
        None,
    )
    .await;
    assert_eq!(stray.status, 404);
    // A method no route serves, sent as a made-up token.
    let odd = Request::builder()
        .method(axum::http::Method::from_bytes(b"X4242424242424242").unwrap())
        .uri("/v1/sys/health")
        .body(Body::empty())
        .unwrap();
    app.clone().oneshot(odd).await.unwrap();

    for credential in [&scraper, &vault.admin_api_key] {
        let (status, content_type, body) = text(&app, "/v1/sys/metrics", Some(credential)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(content_type, PROMETHEUS_TEXT);
        let samples = parse_exposition(&body);
        // The template, not the path; and the stray path under one label.
        let reads = sample(
            &samples,
            "strongroom_http_requests_total",
            &[
                ("route", "/v1/records/{id}"),
                ("method", "GET"),
                ("status", "200"),
            ],
        );
        assert!(reads.is_some_and(|n| n >= 1.0), "{body}");
        let stray = sample(
            &samples,
            "strongroom_http_requests_total",
            &[("route", "unmatched"), ("status", "404")],
        );
        assert!(stray.is_some_and(|n| n >= 1.0), "{body}");
        assert!(
            sample(
                &samples,
                "strongroom_http_requests_total",
                &[("method", "other")]
            )
            .is_some(),
            "{body}"
        );
        assert!(
            sample(
                &samples,
                "strongroom_http_request_duration_seconds_bucket",
                &[
                    ("route", "/v1/tokens/detokenize"),
                    ("method", "POST"),
                    ("le", "+Inf")
                ],
            )
            .is_some_and(|n| n >= 1.0),
            "{body}"
        );
        for family in [
            "strongroom_audit_round_jobs_bucket",
            "strongroom_audit_round_entries_bucket",
            "strongroom_audit_flush_duration_seconds_bucket",
            "strongroom_audit_flush_duration_seconds_count",
        ] {
            assert!(sample(&samples, family, &[]).is_some(), "{family}: {body}");
        }
        assert_eq!(sample(&samples, "strongroom_sealed", &[]), Some(0.0));
        let head = sample(&samples, "strongroom_audit_head_sequence", &[]).unwrap();
        assert!(head >= 3.0, "{head}");
        // No card number, token, record id or principal id anywhere.
        for secret in [PAN, token.as_str(), id.as_str(), "prn_", "card_"] {
            assert!(!body.contains(secret), "{secret} in the metrics");
        }
        for (_, labels, _) in &samples {
            for (key, value) in labels {
                if key == "route" {
                    assert!(value == "unmatched" || value.starts_with("/v1/"), "{value}");
                }
            }
        }
    }
}

#[tokio::test]
async fn metrics_need_admin_or_metrics_and_the_metrics_role_stands_alone() {
    let vault = passphrase_vault();
    let app = vault.app();
    // 401 without a credential, or with one that is not one.
    assert_eq!(
        call(&app, "GET", "/v1/sys/metrics", None, None).await.body["code"],
        "unauthenticated"
    );
    let unknown = format!("srk_{}", "a".repeat(64));
    for bad in ["nonsense", unknown.as_str()] {
        let reply = call(&app, "GET", "/v1/sys/metrics", Some(bad), None).await;
        assert_eq!(reply.status, 401, "{bad}");
    }
    // Only GET.
    let reply = call(
        &app,
        "POST",
        "/v1/sys/metrics",
        Some(&vault.admin_api_key),
        None,
    )
    .await;
    assert_eq!(reply.status, 405);

    // A metrics key is made through the API, for a service only, alone.
    let create = |body: serde_json::Value| {
        let app = app.clone();
        let admin = vault.admin_api_key.clone();
        async move { call(&app, "POST", "/v1/principals", Some(&admin), Some(body)).await }
    };
    let made = create(json!({"name": "prom", "kind": "service", "roles": ["metrics"]})).await;
    assert_eq!(made.status, 201, "{}", made.body);
    let scraper = made.body["api_key"].as_str().unwrap().to_owned();
    for refused in [
        json!({"name": "prom2", "kind": "service", "roles": ["metrics", "auditor"]}),
        json!({"name": "prom3", "kind": "service", "roles": ["metrics", "admin"]}),
        json!({"name": "prom4", "kind": "staff", "roles": ["metrics"], "password": "a long password 123"}),
        json!({"name": "prom5", "kind": "service", "roles": ["metric"]}),
    ] {
        let reply = create(refused.clone()).await;
        assert_eq!(reply.status, 422, "{refused}: {}", reply.body);
    }
    // The scraper reads metrics and nothing else.
    assert_eq!(
        status_of(&app, "GET", "/v1/sys/metrics", Some(&scraper), None).await,
        200
    );
    for (method, path) in [
        ("GET", "/v1/principals"),
        ("GET", "/v1/audit"),
        ("GET", "/v1/keys"),
        ("GET", "/v1/sys/backup"),
        ("POST", "/v1/sys/seal"),
    ] {
        let reply = call(&app, method, path, Some(&scraper), None).await;
        assert_eq!(reply.status, 403, "{method} {path}: {}", reply.body);
    }
    assert!(!vault.keyring.is_sealed());
}

/// Sealed, nobody can authenticate: the API's metrics answer 503 `sealed`;
/// the separate listener still serves them (no credential), sealed = 1,
/// and serves nothing else.
#[tokio::test]
async fn sealed_metrics_come_from_the_separate_listener_only() {
    let vault = passphrase_vault();
    let app = vault.app();
    let listener = strongroom::api::metrics_listener_router(vault.state.clone());
    let (status, content_type, body) = text(&listener, "/metrics", None).await;
    assert_eq!((status, content_type.as_str()), (200, PROMETHEUS_TEXT));
    assert_eq!(
        sample(&parse_exposition(&body), "strongroom_sealed", &[]),
        Some(0.0)
    );

    vault.state.seal();
    let reply = call(
        &app,
        "GET",
        "/v1/sys/metrics",
        Some(&vault.admin_api_key),
        None,
    )
    .await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body["code"], "sealed");
    let (status, _, body) = text(&listener, "/metrics", None).await;
    assert_eq!(status, 200);
    let samples = parse_exposition(&body);
    assert_eq!(sample(&samples, "strongroom_sealed", &[]), Some(1.0));
    // The head is stored in the clear: still readable while sealed.
    assert!(sample(&samples, "strongroom_audit_head_sequence", &[]).is_some_and(|s| s >= 1.0));
    for path in ["/v1/sys/metrics", "/v1/sys/health", "/v1/principals", "/"] {
        let (status, _, _) = text(&listener, path, None).await;
        assert_eq!(status, 404, "{path}");
    }
}

/// Relay calls are counted by the route's name and the upstream's status
/// class; the card number relayed appears nowhere.
#[tokio::test]
async fn relay_calls_are_counted_by_route_and_outcome() {
    let vault = new_vault_with(
        strongroom::keyring::SealMethod::Passphrase(zeroize::Zeroizing::new(PASSPHRASE.to_owned())),
        fast_settings(),
        Arc::new(SystemClock),
        strongroom::api::AppSettings {
            relay: strongroom::relay::upstream::RelaySettings {
                allow_private_destinations: true,
                ..Default::default()
            },
            ..test_settings()
        },
    );
    let app = vault.app();
    let ca = common::tls::TestCa::new("metrics CA");
    let processor =
        common::processor::TestProcessor::start(&ca, common::processor::Behaviour::Charge).await;
    let admin2 = vault.service("admin-2", Role::Admin);
    let payments = vault.service("payments", Role::PaymentService);
    let reply = call(
        &app,
        "POST",
        "/v1/relay/routes",
        Some(&vault.admin_api_key),
        Some(json!({
            "name": "metered",
            "base_url": processor.url(),
            "methods": ["POST"],
            "fields": ["pan"],
            "ca_pem": processor.ca_pem(),
        })),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let reply = call(
        &app,
        "POST",
        "/v1/relay/routes/metered/approve",
        Some(&admin2),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let card = call(
        &app,
        "POST",
        "/v1/records/card",
        Some(&payments),
        Some(json!({"pan": PAN, "exp_month": 12, "exp_year": 2031})),
    )
    .await;
    assert_eq!(card.status, 201, "{}", card.body);
    let token = card.body["token"].as_str().unwrap().to_owned();
    let reply = call(
        &app,
        "POST",
        "/v1/relay/metered/charges",
        Some(&payments),
        Some(json!({"card": format!("{{{{{token}:pan}}}}")})),
    )
    .await;
    assert!((200..300).contains(&reply.status), "{}", reply.body);

    let (status, _, body) = text(&app, "/v1/sys/metrics", Some(&vault.admin_api_key)).await;
    assert_eq!(status, 200);
    let samples = parse_exposition(&body);
    let calls = sample(
        &samples,
        "strongroom_relay_calls_total",
        &[("route", "metered"), ("outcome", "2xx")],
    );
    assert!(calls.is_some_and(|n| n >= 1.0), "{body}");
    assert!(
        sample(
            &samples,
            "strongroom_http_requests_total",
            &[("route", "/v1/relay/{name}/{*path}"), ("method", "POST")],
        )
        .is_some(),
        "{body}"
    );
    assert!(!body.contains(PAN) && !body.contains(&token) && !body.contains("charges"));
}
