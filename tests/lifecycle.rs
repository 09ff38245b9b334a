//! The data lifecycle (docs/lifecycle.md): what an erasure leaves behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{call, passphrase_vault};
use serde_json::json;
use strongroom::access::Role;

/// An erased record's tombstone keeps no `subject_ref` in clear: only an
/// HMAC that answers "was this subject's record erased?".
#[tokio::test]
async fn a_tombstone_keeps_no_subject_ref_in_clear() {
    let vault = passphrase_vault();
    let payments = vault.service("payments", Role::PaymentService);
    let app = vault.app();
    let subject = "user-erase-me-77";
    let card = call(
        &app,
        "POST",
        "/v1/records/card",
        Some(&payments),
        Some(json!({"pan": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2030, "holder_name": "Ada Lovelace", "subject_ref": subject})),
    )
    .await;
    assert_eq!(card.status, 201);
    let id = card.body["id"].as_str().unwrap().to_owned();
    let in_records = |needle: &[u8]| {
        vault
            .store
            .scan_prefix(b"rec/")
            .unwrap()
            .iter()
            .any(|(_, v)| v.windows(needle.len()).any(|w| w == needle))
    };
    assert!(
        in_records(subject.as_bytes()),
        "a live record keeps its subject"
    );
    let erased = call(
        &app,
        "DELETE",
        &format!("/v1/records/{id}"),
        Some(&payments),
        None,
    )
    .await;
    assert_eq!(erased.status, 204);
    assert!(
        !in_records(subject.as_bytes()),
        "the tombstone holds the subject in clear"
    );
    let tombstone = vault.state.vault.meta(&id).unwrap();
    assert!(tombstone.erased_at.is_some());
    assert_eq!(
        tombstone.subject_ref,
        Some(vault.state.vault.erased_subject_ref(subject).unwrap())
    );
    // Its tokens still answer `erased`.
    let token = card.body["token"].as_str().unwrap();
    let detok = call(
        &app,
        "POST",
        "/v1/tokens/detokenize",
        Some(&payments),
        Some(json!({"tokens": [token]})),
    )
    .await;
    assert_eq!(detok.body["results"][token]["error"], "erased");
}
