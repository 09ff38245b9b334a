//! `Idempotency-Key` (docs/lifecycle.md, "Idempotency keys"): one record
//! however many times a creation is retried, in parallel or not; another
//! body under the same key is 422 `idempotency_mismatch`; keys are per
//! principal; answers are kept sealed for 24 hours.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;

use common::{audit_entries, call_with, fast_settings, new_vault_with, test_settings};
use serde_json::json;
use strongroom::access::Role;
use strongroom::clock::ManualClock;
use strongroom::keyring::SealMethod;
use zeroize::Zeroizing;

const PAN: &str = "4242424242424242";

fn card(subject: &str) -> serde_json::Value {
    json!({"pan": PAN, "exp_month": 12, "exp_year": 2030, "holder_name": "Ada Lovelace", "subject_ref": subject})
}

struct Setup {
    vault: common::TestVault,
    app: axum::Router,
    payments: String,
    clock: Arc<ManualClock>,
}

fn setup() -> Setup {
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let vault = new_vault_with(
        SealMethod::Passphrase(Zeroizing::new(common::PASSPHRASE.into())),
        fast_settings(),
        clock.clone(),
        test_settings(),
    );
    let payments = vault.service("payments", Role::PaymentService);
    Setup {
        app: vault.app(),
        vault,
        payments,
        clock,
    }
}

fn creations(vault: &common::TestVault) -> usize {
    audit_entries(vault)
        .iter()
        .filter(|e| e["action"] == "record.create" && e["outcome"] == "allowed")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_parallel_retries_make_one_record() {
    let s = setup();
    let replies = futures_join(50, |_| {
        let app = s.app.clone();
        let key = s.payments.clone();
        async move { post_card(&app, &key, "user-1", "order-7-attempt").await }
    })
    .await;
    assert_eq!(creations(&s.vault), 1);
    let created: Vec<_> = replies.iter().filter(|r| r.status == 201).collect();
    assert!(!created.is_empty());
    let id = &created[0].body["id"];
    for reply in &replies {
        match reply.status {
            // The first answer, or the same answer again.
            201 => assert_eq!(&reply.body["id"], id),
            // Still running when this retry came.
            409 => assert_eq!(reply.body["code"], "conflict"),
            other => panic!("{other}: {}", reply.body),
        }
    }
    // Once answered, a retry gets the same answer, marked as a replay.
    let again = post_card(&s.app, &s.payments, "user-1", "order-7-attempt").await;
    assert_eq!(again.status, 201);
    assert_eq!(&again.body["id"], id);
    assert_eq!(again.body["token"], created[0].body["token"]);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(creations(&s.vault), 1);
}

#[tokio::test]
async fn another_body_under_the_same_key_is_refused() {
    let s = setup();
    let first = post_card(&s.app, &s.payments, "user-1", "k-1").await;
    assert_eq!(first.status, 201);
    let other = post_card(&s.app, &s.payments, "user-2", "k-1").await;
    assert_eq!(other.status, 422, "{}", other.body);
    assert_eq!(other.body["code"], "idempotency_mismatch");
    assert!(!other.body.to_string().contains("user-2"));
    assert_eq!(creations(&s.vault), 1);
}

#[tokio::test]
async fn keys_belong_to_their_principal_and_last_a_day() {
    let s = setup();
    let other = s.vault.service("payments-2", Role::PaymentService);
    for key in [&s.payments, &other] {
        let reply = post_card(&s.app, key, "user-1", "shared-name").await;
        assert_eq!(reply.status, 201);
        assert!(reply.headers.get("idempotent-replayed").is_none());
    }
    assert_eq!(creations(&s.vault), 2);
    s.clock
        .advance(time::Duration::hours(24) + time::Duration::seconds(1));
    let later = post_card(&s.app, &s.payments, "user-1", "shared-name").await;
    assert_eq!(later.status, 201);
    assert!(later.headers.get("idempotent-replayed").is_none());
    assert_eq!(creations(&s.vault), 3);
}

/// The stored answer holds a token: it is sealed, so neither the token nor
/// the key is anywhere in the store in clear.
#[tokio::test]
async fn the_kept_answer_is_sealed() {
    let s = setup();
    let reply = post_card(&s.app, &s.payments, "user-1", "sealed-answer-key").await;
    assert_eq!(reply.status, 201);
    let token = reply.body["token"].as_str().unwrap().to_owned();
    s.vault.store.flush().unwrap();
    for (key, value) in s.vault.store.scan_prefix(b"idem/").unwrap() {
        for needle in [token.as_bytes(), b"sealed-answer-key".as_slice()] {
            assert!(!key.windows(needle.len()).any(|w| w == needle));
            assert!(!value.windows(needle.len()).any(|w| w == needle));
        }
    }
    assert_eq!(s.vault.store.scan_prefix(b"idem/").unwrap().len(), 1);
}

#[tokio::test]
async fn a_bad_key_or_no_key() {
    let s = setup();
    let long = "k".repeat(256);
    for bad in [long.as_str(), "tab\there"] {
        let reply = post_card(&s.app, &s.payments, "user-1", bad).await;
        assert_eq!(reply.status, 422, "{bad:?}");
        assert_eq!(reply.body["errors"][0]["field"], "Idempotency-Key");
    }
    assert_eq!(creations(&s.vault), 0);
    // Without the header, each POST creates.
    for _ in 0..2 {
        let reply = call_with(
            &s.app,
            "POST",
            "/v1/records/card",
            Some(&s.payments),
            Some(card("user-1")),
            &[],
        )
        .await;
        assert_eq!(reply.status, 201);
    }
    assert_eq!(creations(&s.vault), 2);
}

/// `POST /v1/records/card` for `subject` as `bearer`, under the
/// idempotency key `key`.
async fn post_card(app: &axum::Router, bearer: &str, subject: &str, key: &str) -> common::Reply {
    call_with(
        app,
        "POST",
        "/v1/records/card",
        Some(bearer),
        Some(card(subject)),
        &[("idempotency-key", key)],
    )
    .await
}

/// Runs `n` futures made by `make` at once; their outputs in order.
async fn futures_join<F, Fut, T>(n: usize, make: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = (0..n).map(|i| tokio::spawn(make(i))).collect();
    let mut out = Vec::with_capacity(n);
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

/// A certificate-bound service's key on a connection without its
/// certificate is refused by the handler (401, audited): a kept answer
/// under its idempotency key must not be handed out instead.
#[tokio::test]
async fn a_bound_key_without_its_certificate_gets_no_replay() {
    use strongroom::tls::{CertificateFingerprints, PeerCertificate};
    let s = setup();
    let fingerprint = "ab".repeat(32);
    let created = common::call(
        &s.app,
        "POST",
        "/v1/principals",
        Some(&s.vault.admin_api_key),
        Some(json!({"name": "bound-payments", "kind": "service", "roles": ["payment_service"], "client_cert_sha256": [fingerprint]})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let key = created.body["api_key"].as_str().unwrap().to_owned();
    let send = |certificate: Option<CertificateFingerprints>| {
        let app = s.app.clone();
        let key = key.clone();
        async move {
            let mut request = axum::http::Request::builder()
                .method("POST")
                .uri("/v1/records/card")
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/json")
                .header("idempotency-key", "bound-1")
                .body(axum::body::Body::from(card("user-9").to_string()))
                .unwrap();
            request
                .extensions_mut()
                .insert(PeerCertificate(certificate));
            common::send_request(&app, request).await
        }
    };
    let with = send(Some(CertificateFingerprints {
        cert_sha256: "ab".repeat(32),
        spki_sha256: "cd".repeat(32),
    }))
    .await;
    assert_eq!(with.status, 201, "{}", with.body);
    let without = send(None).await;
    assert_eq!(without.status, 401, "{}", without.body);
    assert!(without.headers.get("idempotent-replayed").is_none());
    assert!(
        !without
            .body
            .to_string()
            .contains(with.body["token"].as_str().unwrap())
    );
}

/// An answer refused for who asked (401, 403) is not kept: the key is not
/// spent on it.
#[tokio::test]
async fn a_forbidden_answer_does_not_spend_the_key() {
    let s = setup();
    let auditor = s.vault.service("auditor", Role::Auditor);
    let refused = post_card(&s.app, &auditor, "user-1", "k-403").await;
    assert_eq!(refused.status, 403);
    assert!(s.vault.store.scan_prefix(b"idem/").unwrap().is_empty());
}

/// A replay is on the record, like the first answer.
#[tokio::test]
async fn a_replay_is_audited() {
    let s = setup();
    for _ in 0..2 {
        let reply = call_with(
            &s.app,
            "POST",
            "/v1/tokens",
            Some(&s.payments),
            Some(json!({"value": "gift-card-1234", "kind": "generic"})),
            &[("idempotency-key", "tok-1")],
        )
        .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    let replays: Vec<_> = audit_entries(&s.vault)
        .into_iter()
        .filter(|e| e["action"] == "idempotency.replay")
        .collect();
    assert_eq!(replays.len(), 1);
    assert_eq!(replays[0]["actor"], s.vault.principal_id("payments"));
}
