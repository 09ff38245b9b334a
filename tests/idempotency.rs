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
        async move {
            call_with(
                &app,
                "POST",
                "/v1/records/card",
                Some(&key),
                Some(card("user-1")),
                &[("idempotency-key", "order-7-attempt")],
            )
            .await
        }
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
    let again = call_with(
        &s.app,
        "POST",
        "/v1/records/card",
        Some(&s.payments),
        Some(card("user-1")),
        &[("idempotency-key", "order-7-attempt")],
    )
    .await;
    assert_eq!(again.status, 201);
    assert_eq!(&again.body["id"], id);
    assert_eq!(again.body["token"], created[0].body["token"]);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(creations(&s.vault), 1);
}

#[tokio::test]
async fn another_body_under_the_same_key_is_refused() {
    let s = setup();
    let first = call_with(
        &s.app,
        "POST",
        "/v1/records/card",
        Some(&s.payments),
        Some(card("user-1")),
        &[("idempotency-key", "k-1")],
    )
    .await;
    assert_eq!(first.status, 201);
    let other = call_with(
        &s.app,
        "POST",
        "/v1/records/card",
        Some(&s.payments),
        Some(card("user-2")),
        &[("idempotency-key", "k-1")],
    )
    .await;
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
        let reply = call_with(
            &s.app,
            "POST",
            "/v1/records/card",
            Some(key),
            Some(card("user-1")),
            &[("idempotency-key", "shared-name")],
        )
        .await;
        assert_eq!(reply.status, 201);
        assert!(reply.headers.get("idempotent-replayed").is_none());
    }
    assert_eq!(creations(&s.vault), 2);
    s.clock
        .advance(time::Duration::hours(24) + time::Duration::seconds(1));
    let later = call_with(
        &s.app,
        "POST",
        "/v1/records/card",
        Some(&s.payments),
        Some(card("user-1")),
        &[("idempotency-key", "shared-name")],
    )
    .await;
    assert_eq!(later.status, 201);
    assert!(later.headers.get("idempotent-replayed").is_none());
    assert_eq!(creations(&s.vault), 3);
}

/// The stored answer holds a token: it is sealed, so neither the token nor
/// the key is anywhere in the store in clear.
#[tokio::test]
async fn the_kept_answer_is_sealed() {
    let s = setup();
    let reply = call_with(
        &s.app,
        "POST",
        "/v1/records/card",
        Some(&s.payments),
        Some(card("user-1")),
        &[("idempotency-key", "sealed-answer-key")],
    )
    .await;
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
        let reply = call_with(
            &s.app,
            "POST",
            "/v1/records/card",
            Some(&s.payments),
            Some(card("user-1")),
            &[("idempotency-key", bad)],
        )
        .await;
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
