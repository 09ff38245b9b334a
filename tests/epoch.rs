//! Erasure epochs (docs/lifecycle.md, "Erasure that really erases"): an
//! erasure is final in every copy of the store made before it, backups
//! included, once the epoch it happened in has passed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Reply, TestVault, audit_entries, call, new_vault_with, test_settings};
use serde_json::json;
use strongroom::access::Role;
use strongroom::api::epoch::roll_if_due;
use strongroom::clock::{Clock, ManualClock};
use strongroom::keyring::{Keyring, SealMethod, UnsealInput};
use strongroom::store::{Store, Transaction};
use strongroom::vault::Vault;
use zeroize::Zeroizing;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A copy of the store as it is now (what copying the data directory of a
/// stopped server gives): every pair, into a new store in `dir`.
fn copy_store(vault: &TestVault, dir: &Path) -> Arc<dyn Store> {
    let copy = common::open_store(dir);
    let mut tx = Transaction::new();
    vault
        .store
        .snapshot(&mut |key, value| {
            tx = std::mem::take(&mut tx).put(key.to_vec(), value.to_vec());
            Ok(())
        })
        .unwrap();
    copy.commit(tx).unwrap();
    copy
}

/// Whether record `id` opens from `copy`, for someone holding the vault's
/// passphrase and its keys directory as it is now.
fn opens_from(copy: &Arc<dyn Store>, keys_dir: &Path, clock: Arc<dyn Clock>, id: &str) -> bool {
    let keyring = Arc::new(
        Keyring::open(
            keys_dir,
            Arc::clone(copy),
            Arc::clone(&clock),
            common::fast_settings(),
        )
        .unwrap(),
    );
    // A store whose KEKs are wrapped under an epoch whose secret is gone
    // does not even unseal.
    if let Err(e) = keyring.unseal(UnsealInput::Passphrase(Zeroizing::new(
        common::PASSPHRASE.into(),
    ))) {
        assert!(e.to_string().contains("erasure epoch"), "{e}");
        return false;
    }
    let vault = Vault::new(Arc::clone(copy), keyring, clock);
    let meta = vault.meta(id).unwrap();
    assert!(
        meta.erased_at.is_none(),
        "the copy is from before the erasure"
    );
    vault.open(&meta).is_ok()
}

async fn backup_bytes(vault: &TestVault) -> Vec<u8> {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let request = axum::http::Request::get("/v1/sys/backup")
        .header("authorization", format!("Bearer {}", vault.admin_api_key))
        .body(axum::body::Body::empty())
        .unwrap();
    let response = vault.app().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}

/// The Show of issue 14: a copy of the data directory and a backup, both
/// taken before an erasure, still open the erased record until the epoch
/// passes (the honest window), and never after; live records open
/// throughout; the roll is audited step by step.
#[tokio::test]
async fn an_erasure_is_final_in_older_copies_once_its_epoch_has_passed() {
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let vault = new_vault_with(
        SealMethod::Passphrase(Zeroizing::new(common::PASSPHRASE.into())),
        common::fast_settings(),
        clock.clone(),
        test_settings(),
    );
    let payments = vault.service("payments", Role::PaymentService);
    let app = vault.app();
    let card = |pan: &str, subject: &str| json!({"pan": pan, "exp_month": 12, "exp_year": 2030, "holder_name": "Ada Lovelace", "subject_ref": subject});
    let doomed = call(
        &app,
        "POST",
        "/v1/records/card",
        Some(&payments),
        Some(card("4242 4242 4242 4242", "user-doomed")),
    )
    .await;
    assert_eq!(doomed.status, 201);
    let doomed = doomed.body["id"].as_str().unwrap().to_owned();
    let kept = call(
        &app,
        "POST",
        "/v1/records/card",
        Some(&payments),
        Some(card("5555 5555 5555 4444", "user-kept")),
    )
    .await;
    assert_eq!(kept.status, 201);
    let kept = kept.body["id"].as_str().unwrap().to_owned();
    let generic = call(
        &app,
        "POST",
        "/v1/tokens",
        Some(&payments),
        Some(json!({"kind": "generic", "value": "kept value"})),
    )
    .await;
    assert_eq!(generic.status, 201, "{}", generic.body);
    let generic = generic.body["token"].as_str().unwrap().to_owned();
    // The first check only begins the first period.
    assert_eq!(roll_if_due(&vault.state, DAY).unwrap(), None);

    // Copies taken before the erasure.
    let copy_dir = tempfile::tempdir().unwrap();
    let copy = copy_store(&vault, copy_dir.path());
    let backup_file = copy_dir.path().join("before.backup");
    std::fs::write(&backup_file, backup_bytes(&vault).await).unwrap();
    let keys_dir = vault.keys_dir();
    let as_clock = || -> Arc<dyn Clock> { clock.clone() };
    assert!(opens_from(&copy, &keys_dir, as_clock(), &doomed));

    let erased = call(
        &app,
        "DELETE",
        &format!("/v1/records/{doomed}"),
        Some(&payments),
        None,
    )
    .await;
    assert_eq!(erased.status, 204);
    // Within the period the copy still opens it: the window
    // docs/lifecycle.md states.
    assert!(opens_from(&copy, &keys_dir, as_clock(), &doomed));
    clock.advance(time::Duration::hours(23));
    assert_eq!(roll_if_due(&vault.state, DAY).unwrap(), None, "too early");

    clock.advance(time::Duration::hours(2));
    // The roll: every family rotated, then (the destroy grace is zero in
    // tests; `a_roll_waits_for_the_destroy_grace` waits for it) the rest.
    let rolled = roll_if_due(&vault.state, DAY).unwrap();
    assert_eq!(rolled, Some(2), "epoch 1 began at init");
    assert_eq!(vault.keyring.epochs().unwrap(), vec![2]);

    // The copy no longer opens the erased record (nor anything else).
    assert!(!opens_from(&copy, &keys_dir, as_clock(), &doomed));
    assert!(!opens_from(&copy, &keys_dir, as_clock(), &kept));
    // Nor does the backup restore: its epoch's secret is gone.
    let target = tempfile::tempdir().unwrap();
    let refused = strongroom::backup::restore(&strongroom::backup::RestorePlan {
        file: backup_file.clone(),
        data_dir: target.path().join("data"),
        keys_dir: target.path().join("keys"),
        public_key: Some(keys_dir.join("audit.pub")),
        engine: strongroom::store::Engine::DEFAULT,
        cache_bytes: 16 << 20,
        accept_rollback: false,
        epoch_file: Some(keys_dir.join("epoch.json")),
    })
    .unwrap_err();
    assert!(refused.to_string().contains("erased for good"), "{refused}");
    assert!(!target.path().join("data").exists(), "nothing is created");

    // Live records still open, on the new versions.
    let live = call(
        &app,
        "GET",
        &format!("/v1/records/{kept}"),
        Some(&payments),
        None,
    )
    .await;
    assert_eq!(live.status, 200, "{}", live.body);
    let Reply { body, .. } = call(
        &app,
        "POST",
        "/v1/tokens/detokenize",
        Some(&payments),
        Some(json!({"tokens": [generic]})),
    )
    .await;
    assert_eq!(body["results"][&generic]["value"], "kept value", "{body}");
    let keys = call(&app, "GET", "/v1/keys", Some(&vault.admin_api_key), None).await;
    for key in keys.body["keys"].as_array().unwrap() {
        assert_eq!(key["version"], 2, "older versions are destroyed: {key}");
    }
    // A restarted server (the same keys directory) unseals and opens.
    assert!(opens_live(&vault, &keys_dir, as_clock(), &kept));

    // Audited, as `system`: rotations, the rewrap, the destructions, the
    // new epoch.
    let entries = audit_entries(&vault);
    let by_system = |action: &str| {
        entries
            .iter()
            .filter(|e| e["action"] == action && e["actor"] == "system")
            .count()
    };
    assert_eq!(by_system("key.rotate"), 4);
    assert_eq!(by_system("key.rewrap"), 2);
    assert_eq!(by_system("key.destroy"), 4);
    assert_eq!(by_system("key.epoch"), 1);

    // The next roll is a period later, not before.
    clock.advance(time::Duration::hours(23));
    assert_eq!(roll_if_due(&vault.state, DAY).unwrap(), None);
}

fn opens_live(vault: &TestVault, keys_dir: &Path, clock: Arc<dyn Clock>, id: &str) -> bool {
    opens_from(&vault.store, keys_dir, clock, id)
}

/// Epoch secrets live in the keys directory, sealed, never in the store.
#[tokio::test]
async fn epoch_secrets_are_never_in_the_store() {
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let vault = new_vault_with(
        SealMethod::Passphrase(Zeroizing::new(common::PASSPHRASE.into())),
        common::fast_settings(),
        clock.clone(),
        test_settings(),
    );
    let file = std::fs::read_to_string(vault.keys_dir().join("epoch.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&file).unwrap();
    let sealed = parsed["epochs"][0]["sealed"].as_str().unwrap();
    assert_eq!(parsed["epochs"][0]["epoch"], 1);
    let sealed = hex::decode(sealed).unwrap();
    let in_store = vault
        .store
        .scan_prefix(b"")
        .unwrap()
        .iter()
        .any(|(_, v)| v.windows(16).any(|w| sealed.windows(16).any(|s| s == w)));
    assert!(!in_store, "the epoch file's content is in the store");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(vault.keys_dir().join("epoch.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// The roll rotates first and destroys only once the new versions are
/// older than the destroy grace, so a write that took an old version just
/// before the rotation is never left under a destroyed KEK.
#[tokio::test]
async fn a_roll_waits_for_the_destroy_grace() {
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let vault = new_vault_with(
        SealMethod::Passphrase(Zeroizing::new(common::PASSPHRASE.into())),
        common::fast_settings(),
        clock.clone(),
        strongroom::api::AppSettings {
            kek_destroy_grace: time::Duration::minutes(5),
            ..test_settings()
        },
    );
    assert_eq!(roll_if_due(&vault.state, DAY).unwrap(), None);
    clock.advance(time::Duration::hours(25));
    assert_eq!(
        roll_if_due(&vault.state, DAY).unwrap(),
        None,
        "rotated only"
    );
    let keys = vault.keyring.kek_metadata().unwrap();
    assert_eq!(keys.len(), 8, "two versions of each of the four families");
    clock.advance(time::Duration::minutes(4));
    assert_eq!(
        roll_if_due(&vault.state, DAY).unwrap(),
        None,
        "within the grace"
    );
    assert_eq!(vault.keyring.kek_metadata().unwrap().len(), 8);
    clock.advance(time::Duration::minutes(2));
    assert_eq!(roll_if_due(&vault.state, DAY).unwrap(), Some(2));
    assert_eq!(vault.keyring.kek_metadata().unwrap().len(), 4);
    assert_eq!(vault.keyring.epochs().unwrap(), vec![2]);
    let rotations = audit_entries(&vault)
        .iter()
        .filter(|e| e["action"] == "key.rotate" && e["actor"] == "system")
        .count();
    assert_eq!(rotations, 4, "each family rotated once, not at every check");
}
