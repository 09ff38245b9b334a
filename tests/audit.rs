//! The audit log: entries for every access, queries, verification, tamper
//! detection on a store and on an export, fail-closed writes, and no
//! secret in the store, the log or the audit entries.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;

use common::*;
use serde_json::{Value, json};
use strongroom::access::Role;
use strongroom::api::router;
use strongroom::audit::{ExportLine, export_store, verify_lines, verify_store};
use strongroom::clock::SystemClock;
use strongroom::crypto::Key256;
use strongroom::keyring::SealMethod;
use strongroom::store::Store;

const STAFF_PASSWORD: &str = "staff password 123";

/// The store key of audit entry `seq` (docs/audit.md "Storage").
fn entry_key(seq: u64) -> Vec<u8> {
    [b"au/e/".as_slice(), &seq.to_be_bytes()].concat()
}

/// The store key of the checkpoint at `seq`.
fn checkpoint_key(seq: u64) -> Vec<u8> {
    [b"au/c/".as_slice(), &seq.to_be_bytes()].concat()
}

fn public_key(vault: &TestVault) -> Vec<u8> {
    hex::decode(
        std::fs::read_to_string(vault.keys_dir().join("audit.pub"))
            .unwrap()
            .trim(),
    )
    .unwrap()
}

/// `count` audited writes through the API: services `<names>-<i>`.
async fn some_history(vault: &TestVault, names: &str, count: usize) {
    let app = vault.app();
    for i in 0..count {
        let status = status_of(
            &app,
            "POST",
            "/v1/principals",
            Some(&vault.admin_api_key),
            Some(json!({"name": format!("{names}-{i}"), "kind": "service", "roles": ["auditor"]})),
        )
        .await;
        assert_eq!(status, 201);
    }
}

/// A vault with some history, sealed so its tail is signed.
async fn vault_with_history() -> TestVault {
    let vault = passphrase_vault();
    some_history(&vault, "svc", 6).await;
    let app = vault.app();
    call(&app, "GET", "/v1/keys", Some(&vault.admin_api_key), None).await;
    call(
        &app,
        "POST",
        "/v1/sys/seal",
        Some(&vault.admin_api_key),
        None,
    )
    .await;
    assert!(vault.keyring.is_sealed());
    vault
}

#[tokio::test]
async fn every_access_is_audited_and_queryable() {
    let vault = passphrase_vault();
    let app = vault.app();
    let auditor = vault.service("auditor", Role::Auditor);
    let payments = vault.service("payments", Role::PaymentService);
    let denied_request = axum::http::Request::builder()
        .uri("/v1/principals")
        .header("authorization", format!("Bearer {payments}"))
        .header("x-request-id", "req-under-test")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(send_request(&app, denied_request).await.status, 403);
    assert_eq!(
        status_of(&app, "GET", "/v1/keys", Some(&vault.admin_api_key), None).await,
        200
    );
    assert_eq!(
        status_of(
            &app,
            "POST",
            "/v1/keys/kyc/rotate",
            Some(&vault.admin_api_key),
            None
        )
        .await,
        200
    );

    let Reply {
        status, body: page, ..
    } = call(&app, "GET", "/v1/audit", Some(&auditor), None).await;
    assert_eq!(status, 200);
    let entries = page["entries"].as_array().unwrap();
    // admin, auditor, payments creations; the denial; key.read; key.rotate.
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "principal.create",
            "principal.create",
            "principal.create",
            "principal.list",
            "key.read",
            "key.rotate",
            "audit.read"
        ]
    );
    let denied = &entries[3];
    assert_eq!(denied["outcome"], "denied");
    assert_eq!(denied["request_id"], "req-under-test");
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1);
        for field in ["time", "actor", "action", "outcome", "prev_hash", "hash"] {
            assert!(e[field].is_string(), "{field} missing in {e}");
        }
        if i > 0 {
            assert_eq!(e["prev_hash"], entries[i - 1]["hash"]);
        }
    }
    assert_eq!(entries[5]["target"], "kek/kyc");

    // Filters and pagination.
    let Reply {
        status: _,
        body: page,
        ..
    } = call(
        &app,
        "GET",
        "/v1/audit?action=principal.create&limit=2",
        Some(&auditor),
        None,
    )
    .await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 2);
    let next = page["next_after"].as_u64().unwrap();
    let Reply {
        status: _,
        body: page,
        ..
    } = call(
        &app,
        "GET",
        &format!("/v1/audit?action=principal.create&after={next}"),
        Some(&auditor),
        None,
    )
    .await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    assert!(page.get("next_after").is_none());
    let actor = denied["actor"].as_str().unwrap();
    let Reply {
        status: _,
        body: page,
        ..
    } = call(
        &app,
        "GET",
        &format!("/v1/audit?actor={actor}"),
        Some(&auditor),
        None,
    )
    .await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    let Reply {
        status: _,
        body: page,
        ..
    } = call(
        &app,
        "GET",
        "/v1/audit?record=kek/kyc",
        Some(&auditor),
        None,
    )
    .await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    let Reply {
        status: _,
        body: page,
        ..
    } = call(
        &app,
        "GET",
        "/v1/audit?since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z",
        Some(&auditor),
        None,
    )
    .await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 0);
    for bad in [
        "limit=0",
        "limit=5000",
        "since=yesterday",
        "bogus=1",
        "after=-1",
    ] {
        let Reply {
            status,
            body: problem,
            ..
        } = call(
            &app,
            "GET",
            &format!("/v1/audit?{bad}"),
            Some(&auditor),
            None,
        )
        .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (422, Some("validation_failed")),
            "{bad}"
        );
    }

    let Reply {
        status,
        body: result,
        ..
    } = call(&app, "GET", "/v1/audit/verify", Some(&auditor), None).await;
    assert_eq!(status, 200);
    assert_eq!(result["ok"], true);
    assert!(result["entries"].as_u64().unwrap() >= 12);
}

#[tokio::test]
async fn checkpoints_every_n_entries_and_on_seal() {
    let vault = new_vault_with(
        SealMethod::Shares {
            count: 3,
            threshold: 2,
        },
        fast_settings(),
        Arc::new(SystemClock),
        strongroom::api::AppSettings {
            audit_checkpoint_every: 4,
            ..test_settings()
        },
    );
    for i in 0..9 {
        vault.service(&format!("s{i}"), Role::Auditor);
    }
    // 10 entries (admin + 9): checkpoints at 4 and 8…
    let checkpoints: Vec<u64> = vault
        .store
        .scan_prefix(b"au/c/")
        .unwrap()
        .iter()
        .map(|(k, _)| u64::from_be_bytes(k[5..].try_into().unwrap()))
        .collect();
    assert_eq!(checkpoints, [4, 8]);
    // …and every round's head is signed when it is written, so even a
    // strict check passes at once.
    let strict = verify_store(vault.store.as_ref(), &public_key(&vault), true);
    assert!(strict.ok, "{strict:?}");
    assert_eq!(strict.entries, 10);
    assert_eq!(strict.checkpoint.as_ref().unwrap().seq, 10);
    // Seal adds a checkpoint over the head.
    vault.state.seal();
    assert!(vault.store.get(&checkpoint_key(10)).unwrap().is_some());
    let strict = verify_store(vault.store.as_ref(), &public_key(&vault), true);
    assert!(strict.ok, "{strict:?}");
    assert_eq!(strict.checkpoint.unwrap().seq, 10);
}

/// Deletes the last entry and its checkpoint, and points the head record
/// at the entry before, consistently.
fn cut_last_entry_with_checkpoint_and_head(s: &dyn Store) {
    let last = s.scan_prefix(b"au/e/").unwrap().len() as u64;
    let prev = serde_json::to_value(stored_entry(s, last - 1)).unwrap();
    s.delete(&entry_key(last)).unwrap();
    s.delete(&checkpoint_key(last)).unwrap();
    s.put(
        b"au/head",
        json!({"seq": last - 1, "hash": prev["hash"]})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
}

/// Each tampering of a stored log, and the first sequence number verify
/// must report.
#[tokio::test]
async fn tampering_with_a_data_directory_is_detected() {
    type Tamper = fn(&dyn Store, &TestVault);
    let cases: Vec<(&str, Tamper, u64)> = vec![
        (
            "change a field",
            |s, _| {
                let key = entry_key(3u64);
                let mut e = stored_entry(s, 3);
                e.actor = "someone-else".into();
                s.put(&key, &e.to_stored().unwrap()).unwrap();
            },
            3,
        ),
        (
            "change a field and fix its hash",
            |s, _| {
                let key = entry_key(3u64);
                let mut e = stored_entry(s, 3);
                e.outcome = strongroom::audit::Outcome::Denied;
                e.hash = hex::encode(e.compute_hash());
                s.put(&key, &e.to_stored().unwrap()).unwrap();
            },
            4,
        ),
        (
            "delete an entry",
            |s, _| {
                s.delete(&entry_key(4u64)).unwrap();
            },
            4,
        ),
        (
            "swap two entries",
            |s, _| {
                let (k2, k3) = (entry_key(2u64), entry_key(3u64));
                let (v2, v3) = (s.get(&k2).unwrap().unwrap(), s.get(&k3).unwrap().unwrap());
                s.put(&k2, &v3).unwrap();
                s.put(&k3, &v2).unwrap();
            },
            2,
        ),
        (
            "cut the tail",
            |s, _| {
                let last = s.scan_prefix(b"au/e/").unwrap().len() as u64;
                s.delete(&entry_key(last)).unwrap();
            },
            0,
        ),
        (
            "cut the tail with its checkpoint and head",
            |s, _| cut_last_entry_with_checkpoint_and_head(s),
            // The signed head still names the cut entry.
            0,
        ),
        (
            "cut the tail with its checkpoint, signed head and head record",
            |s, _| {
                cut_last_entry_with_checkpoint_and_head(s);
                s.delete(b"au/signed").unwrap();
            },
            // Nothing signs any entry any more.
            1,
        ),
        (
            "forge the signed head",
            |s, _| {
                let mut c: Value =
                    serde_json::from_slice(&s.get(b"au/signed").unwrap().unwrap()).unwrap();
                let seq = c["seq"].as_u64().unwrap();
                s.delete(&checkpoint_key(seq)).unwrap();
                let forger =
                    strongroom::crypto::SigningKey::from_seed(&Key256::random().unwrap()).unwrap();
                let hash = hex::decode(c["hash"].as_str().unwrap()).unwrap();
                let msg = strongroom::audit::Checkpoint::signed_message(
                    seq,
                    &hash,
                    c["time"].as_str().unwrap(),
                );
                c["signature"] = json!(hex::encode(forger.sign(&msg)));
                s.put(b"au/signed", c.to_string().as_bytes()).unwrap();
            },
            0,
        ),
        (
            "forge a checkpoint",
            |s, _| {
                let (key, bytes) = s.scan_prefix(b"au/c/").unwrap().pop().unwrap();
                let mut c: Value = serde_json::from_slice(&bytes).unwrap();
                let forger =
                    strongroom::crypto::SigningKey::from_seed(&Key256::random().unwrap()).unwrap();
                let hash = hex::decode(c["hash"].as_str().unwrap()).unwrap();
                let msg = strongroom::audit::Checkpoint::signed_message(
                    c["seq"].as_u64().unwrap(),
                    &hash,
                    c["time"].as_str().unwrap(),
                );
                c["signature"] = json!(hex::encode(forger.sign(&msg)));
                s.put(&key, c.to_string().as_bytes()).unwrap();
            },
            0,
        ),
    ];
    // 0 means "the last entry before tampering".
    for (what, tamper, expected_seq) in cases {
        let vault = vault_with_history().await;
        let key = public_key(&vault);
        let before = verify_store(vault.store.as_ref(), &key, true);
        assert!(before.ok, "{before:?}");
        let last = before.entries;
        tamper(vault.store.as_ref(), &vault);
        let after = verify_store(vault.store.as_ref(), &key, true);
        assert!(!after.ok, "{what}: not detected");
        let expected = if expected_seq == 0 {
            last
        } else {
            expected_seq
        };
        assert_eq!(after.first_bad_seq, Some(expected), "{what}: {after:?}");
        assert!(after.problem.is_some());
    }
}

#[tokio::test]
async fn tampering_with_an_export_is_detected() {
    let vault = vault_with_history().await;
    let key = public_key(&vault);
    let mut out = Vec::new();
    export_store(vault.store.as_ref(), &mut out).unwrap();
    let lines: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(lines.last().unwrap().contains("\"kind\":\"checkpoint\""));
    let verify = |lines: &[String]| {
        verify_lines(
            lines
                .iter()
                .map(|l| serde_json::from_str::<ExportLine>(l).map_err(|e| e.to_string())),
            &key,
            true,
        )
    };
    assert!(verify(&lines).ok);

    let entry_lines: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("\"kind\":\"entry\""))
        .collect();
    let mut changed = lines.clone();
    changed[entry_lines[2]] = changed[entry_lines[2]].replace("principal.create", "principal.list");
    let mut deleted = lines.clone();
    deleted.remove(entry_lines[3]);
    let mut swapped = lines.clone();
    swapped.swap(entry_lines[1], entry_lines[2]);
    let mut cut = lines.clone();
    cut.truncate(entry_lines[entry_lines.len() - 2] + 1);
    let mut no_final_checkpoint = lines.clone();
    no_final_checkpoint.pop();
    let mut garbage = lines.clone();
    garbage[entry_lines[1]] = "{\"kind\":\"entry\",\"seq\":2}".into();
    for (what, tampered) in [
        ("changed", changed),
        ("deleted", deleted),
        ("swapped", swapped),
        ("cut", cut),
        ("final checkpoint dropped", no_final_checkpoint),
        ("garbage", garbage),
    ] {
        let result = verify(&tampered);
        assert!(!result.ok, "{what}: not detected");
        assert!(result.first_bad_seq.is_some());
    }
}

/// Batches queued behind a round in progress are committed in one round:
/// one store transaction, each batch checked against the
/// state the batches before it leave, a conflicting batch refused alone
/// (all of it), and the chain intact.
#[test]
fn queued_batches_share_one_round_and_conflicts_stay_their_own() {
    use std::sync::atomic::Ordering::SeqCst;
    use strongroom::audit::{AuditError, AuditEvent, Outcome};
    use strongroom::store::Transaction;
    let (vault, faulty) = faulty_vault();
    let state = &vault.state;
    let entries_before = state.audit.verify().unwrap().entries;
    let event = |name: &str| AuditEvent::new("test", "group.write", Outcome::Allowed).target(name);
    let submit = |name: &'static str, tx: Transaction| {
        let state = state.clone();
        std::thread::spawn(move || state.audit.record_with(event(name), tx))
    };

    // The first batch becomes the committer and waits in its store write.
    let applies_before = faulty.audit_applies.load(SeqCst);
    faulty.hold_audit_applies(true);
    let first = submit("a", Transaction::new().put(b"g/a".to_vec(), b"a".to_vec()));
    wait_until("the first round", || {
        faulty.audit_applies_waiting.load(SeqCst) == 1
    });

    // These queue up behind it, in this order.
    let queued = [
        (
            "x1",
            Transaction::new()
                .expect(b"g/x".to_vec(), None)
                .put(b"g/x".to_vec(), b"1".to_vec()),
        ),
        (
            "x2",
            Transaction::new()
                .expect(b"g/x".to_vec(), None)
                .put(b"g/x".to_vec(), b"2".to_vec()),
        ),
        (
            "after x1",
            Transaction::new()
                .expect(b"g/x".to_vec(), Some(b"1".to_vec()))
                .put(b"g/c".to_vec(), b"c".to_vec()),
        ),
    ];
    let mut handles = Vec::new();
    for (i, (name, tx)) in queued.into_iter().enumerate() {
        handles.push(submit(name, tx));
        wait_until("the batch to queue", || state.audit.pending() == i + 1);
    }
    // A batch of two changes whose second conflicts with x1: none of it.
    let both = {
        let state = state.clone();
        std::thread::spawn(move || {
            state.audit.record_many(vec![
                (
                    event("e"),
                    Transaction::new().put(b"g/e".to_vec(), b"e".to_vec()),
                ),
                (
                    event("e2"),
                    Transaction::new().expect(b"g/x".to_vec(), None),
                ),
            ])
        })
    };
    wait_until("the batch to queue", || state.audit.pending() == 4);

    faulty.hold_audit_applies(false);
    assert_eq!(first.join().unwrap().unwrap().seq, entries_before + 1);
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results[0].as_ref().unwrap().seq, entries_before + 2);
    assert!(matches!(results[1], Err(AuditError::Conflict)));
    assert_eq!(results[2].as_ref().unwrap().seq, entries_before + 3);
    assert!(matches!(both.join().unwrap(), Err(AuditError::Conflict)));

    // Two rounds: the first batch's, then everything queued behind it.
    assert_eq!(faulty.audit_applies.load(SeqCst) - applies_before, 2);
    assert_eq!(state.store.get(b"g/x").unwrap(), Some(b"1".to_vec()));
    assert_eq!(state.store.get(b"g/c").unwrap(), Some(b"c".to_vec()));
    assert_eq!(state.store.get(b"g/e").unwrap(), None);
    let result = state.audit.verify().unwrap();
    assert!(result.ok, "{result:?}");
    assert_eq!(result.entries, entries_before + 3);
}

/// A write from outside the log between a round's checks and its store
/// transaction fails that transaction as a whole; the round is worked out
/// again from the new state, so the batch the write contradicts is refused
/// and the other batch of the round still goes through.
#[test]
fn a_write_behind_the_logs_back_makes_the_round_start_over() {
    use std::sync::atomic::Ordering::SeqCst;
    use strongroom::audit::{AuditError, AuditEvent, Outcome};
    use strongroom::store::Transaction;
    let (vault, faulty) = faulty_vault();
    let state = &vault.state;
    let entries_before = state.audit.verify().unwrap().entries;
    let submit = |tx: Transaction| {
        let state = state.clone();
        std::thread::spawn(move || {
            state
                .audit
                .record_with(AuditEvent::new("test", "group.write", Outcome::Allowed), tx)
        })
    };
    let applies_before = faulty.audit_applies.load(SeqCst);
    faulty.hold_audit_applies(true);
    let first = submit(Transaction::new().put(b"g/a".to_vec(), b"a".to_vec()));
    wait_until("the first round", || {
        faulty.audit_applies_waiting.load(SeqCst) == 1
    });
    let contradicted = submit(
        Transaction::new()
            .expect(b"g/r".to_vec(), None)
            .put(b"g/r".to_vec(), b"mine".to_vec()),
    );
    wait_until("the batch to queue", || state.audit.pending() == 1);
    let other = submit(
        Transaction::new()
            .expect(b"g/q".to_vec(), None)
            .put(b"g/q".to_vec(), b"q".to_vec()),
    );
    wait_until("the batch to queue", || state.audit.pending() == 2);
    faulty.before_next_audit_apply(|inner| inner.put(b"g/r", b"outside").unwrap());
    faulty.hold_audit_applies(false);

    assert_eq!(first.join().unwrap().unwrap().seq, entries_before + 1);
    let contradicted = contradicted.join().unwrap();
    assert!(
        matches!(contradicted, Err(AuditError::Conflict)),
        "{contradicted:?}"
    );
    assert_eq!(other.join().unwrap().unwrap().seq, entries_before + 2);
    assert_eq!(state.store.get(b"g/r").unwrap(), Some(b"outside".to_vec()));
    assert_eq!(state.store.get(b"g/q").unwrap(), Some(b"q".to_vec()));
    // The first round, then the second twice: refused by the store, then
    // worked out again.
    assert_eq!(faulty.audit_applies.load(SeqCst) - applies_before, 3);
    let verified = state.audit.verify().unwrap();
    assert!(verified.ok, "{verified:?}");
    assert_eq!(verified.entries, entries_before + 2);
}

/// A batch is answered only after a flush that covers it, and the
/// committer does not wait for that flush: the next batch is applied while
/// it runs (pipelined), and is answered after a flush of its own.
#[test]
fn nothing_is_acknowledged_before_its_flush_and_flushes_do_not_stall_the_committer() {
    use std::sync::atomic::Ordering::SeqCst;
    use strongroom::audit::{AuditEvent, Outcome};
    use strongroom::store::Transaction;
    let (vault, faulty) = faulty_vault();
    let state = &vault.state;
    let submit = |key: &'static [u8]| {
        let state = state.clone();
        std::thread::spawn(move || {
            state.audit.record_with(
                AuditEvent::new("test", "group.write", Outcome::Allowed),
                Transaction::new().put(key.to_vec(), b"v".to_vec()),
            )
        })
    };
    faulty.hold_flushes(true);
    let first = submit(b"g/1");
    wait_until("the first flush", || {
        faulty.flushes_waiting.load(SeqCst) == 1
    });
    let second = submit(b"g/2");
    wait_until("the second batch to be applied", || {
        state.store.get(b"g/2").unwrap().is_some()
    });
    assert!(state.store.get(b"g/1").unwrap().is_some());
    // Applied and visible, but neither caller has heard back.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(!first.is_finished() && !second.is_finished());
    faulty.hold_flushes(false);
    first.join().unwrap().unwrap();
    second.join().unwrap().unwrap();
    assert!(state.audit.verify().unwrap().ok);
}

#[tokio::test]
async fn an_unwritable_audit_entry_fails_the_request_and_changes_nothing() {
    let (vault, faulty) = faulty_vault();
    let (state, keyring, store) = (&vault.state, &vault.keyring, &vault.store);
    let admin = vault.admin_api_key.clone();
    state
        .create_staff_now("test", "erin", vec![Role::Auditor], STAFF_PASSWORD)
        .unwrap();
    let payments = state
        .create_service_now("test", "payments", vec![Role::PaymentService])
        .unwrap()
        .expose_secret()
        .to_owned();
    let app = router(state.clone());
    let entries_before = store.scan_prefix(b"au/e/").unwrap().len();
    let keys_before = keyring.kek_metadata().unwrap();

    faulty.set_failing(true);
    let attempts = [
        (
            "POST",
            "/v1/principals",
            Some(&admin),
            Some(json!({"name": "new", "kind": "service", "roles": ["auditor"]})),
        ),
        ("GET", "/v1/principals", Some(&admin), None),
        ("POST", "/v1/keys/card/rotate", Some(&admin), None),
        ("GET", "/v1/audit", Some(&admin), None),
        ("GET", "/v1/principals", Some(&payments), None),
        (
            "POST",
            "/v1/auth/login",
            None,
            Some(json!({"username": "erin", "password": STAFF_PASSWORD})),
        ),
        (
            "POST",
            "/v1/auth/login",
            None,
            Some(json!({"username": "erin", "password": "wrong password!"})),
        ),
        // Not a seal: an unwritable log must never keep a vault unsealed
        // (tests/duties.rs::a_seal_never_waits_on_the_audit_log).
    ];
    for (method, path, bearer, body) in attempts {
        let Reply {
            status,
            body: problem,
            ..
        } = call(&app, method, path, bearer.map(String::as_str), body).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (503, Some("audit_unavailable")),
            "{method} {path}"
        );
    }
    faulty.set_failing(false);

    assert_eq!(store.scan_prefix(b"au/e/").unwrap().len(), entries_before);
    assert!(
        state
            .principals
            .list()
            .unwrap()
            .iter()
            .all(|p| p.name != "new")
    );
    assert_eq!(keyring.kek_metadata().unwrap(), keys_before);
    assert!(store.scan_prefix(b"ac/session/").unwrap().is_empty());
    // The one exception: a login attempt is counted against the lockout
    // before its password is checked, and a check that happened stays
    // counted even when its entry could not be written (the limit errs
    // towards refusing). Both of erin's attempts are in that one count...
    assert_eq!(store.scan_prefix(b"ac/lockout/").unwrap().len(), 1);
    assert!(!keyring.is_sealed());
    assert!(state.audit.verify().unwrap().ok);
    // ... which a successful login clears.
    let Reply { status, .. } = call(
        &app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"username": "erin", "password": STAFF_PASSWORD})),
    )
    .await;
    assert_eq!(status, 200);
    assert!(store.scan_prefix(b"ac/lockout/").unwrap().is_empty());
}

#[tokio::test]
async fn a_batch_appends_chained_entries_all_or_nothing() {
    use strongroom::audit::{AuditEvent, Outcome};
    use strongroom::store::Transaction;
    let vault = passphrase_vault();
    let event =
        |i: usize| AuditEvent::new("bulk", "bulk.write", Outcome::Allowed).target(format!("t{i}"));
    let batch: Vec<_> = (0..2500)
        .map(|i| {
            (
                event(i),
                Transaction::new().put(format!("bulk/{i:05}"), b"v".to_vec()),
            )
        })
        .collect();
    let entries = vault.state.audit.record_many(batch).unwrap();
    assert_eq!(entries.len(), 2500);
    assert_eq!(vault.store.scan_prefix(b"bulk/").unwrap().len(), 2500);
    let result = verify_store(vault.store.as_ref(), &public_key(&vault), false);
    assert!(result.ok, "{result:?}");
    assert_eq!(result.entries, 2501);
    // Checkpoints at 1000 and 2000 were signed inside the batch, and its
    // head with it.
    assert!(vault.store.get(&checkpoint_key(1000)).unwrap().is_some());
    assert!(vault.store.get(&checkpoint_key(2000)).unwrap().is_some());
    assert!(vault.store.get(&checkpoint_key(2001)).unwrap().is_none());
    assert_eq!(result.checkpoint.unwrap().seq, 2501);

    // One conflicting change and nothing of the batch is written.
    let batch = vec![
        (
            event(1),
            Transaction::new().put(b"bulk/new".to_vec(), b"v".to_vec()),
        ),
        (
            event(2),
            Transaction::new().expect(b"bulk/00001".to_vec(), None),
        ),
    ];
    assert!(vault.state.audit.record_many(batch).is_err());
    assert!(vault.store.get(b"bulk/new").unwrap().is_none());
    assert_eq!(
        verify_store(vault.store.as_ref(), &public_key(&vault), false).entries,
        2501
    );
}

/// The stored entry `seq`.
fn stored_entry(store: &dyn Store, seq: u64) -> strongroom::audit::AuditEntry {
    strongroom::audit::AuditEntry::from_stored(&store.get(&entry_key(seq)).unwrap().unwrap())
        .unwrap()
}

/// How many entries the store holds.
fn stored_entries(store: &dyn Store) -> u64 {
    store.scan_prefix(b"au/e/").unwrap().len() as u64
}

/// Every signature the store holds (checkpoints and the signed head), as
/// the raw records: none of them may name a forged hash.
fn stored_signatures(store: &dyn Store) -> Vec<String> {
    store
        .scan_prefix(b"au/")
        .unwrap()
        .into_iter()
        .filter(|(k, _)| !k.starts_with(b"au/e/") && k.as_slice() != b"au/head")
        .map(|(_, v)| String::from_utf8(v).unwrap())
        .collect()
}

/// Rewrites the last stored entry with `change` the way a careful forger
/// would: its hash recomputed and the head record fixed up. The new hash.
fn rewrite_last_entry(
    store: &dyn Store,
    change: impl FnOnce(&mut strongroom::audit::AuditEntry),
) -> String {
    let last = stored_entries(store);
    let mut entry = stored_entry(store, last);
    change(&mut entry);
    entry.hash = hex::encode(entry.compute_hash());
    store
        .put(&entry_key(last), &entry.to_stored().unwrap())
        .unwrap();
    store
        .put(
            b"au/head",
            json!({"seq": last, "hash": entry.hash})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    entry.hash
}

async fn unseal_over_http(vault: &TestVault, passphrase: &str) -> Reply {
    call(
        &vault.app(),
        "POST",
        "/v1/sys/unseal",
        None,
        Some(json!({ "passphrase": passphrase })),
    )
    .await
}

/// Every entry is authenticated when it is written: a crash (the keys are
/// gone, no checkpoint was written at stop) leaves a log that verifies
/// strictly, offline, with only the public key.
#[tokio::test]
async fn after_a_crash_every_entry_is_already_signed() {
    let vault = passphrase_vault();
    some_history(&vault, "crash", 3).await;
    // A crash: no seal-time checkpoint, the keys simply go.
    vault.keyring.seal();
    let strict = verify_store(vault.store.as_ref(), &public_key(&vault), true);
    assert!(strict.ok, "{strict:?}");
    assert_eq!(strict.entries, stored_entries(vault.store.as_ref()));
    // And the next unseal accepts it.
    assert_eq!(unseal_over_http(&vault, PASSPHRASE).await.status, 200);
    assert!(!vault.keyring.is_sealed());
}

/// Someone who can write a stopped server's data directory rewrites the
/// last entry consistently (its hash and the head record fixed up). The
/// rewrite is found out, and unsealing neither signs it nor stands.
#[tokio::test]
async fn a_tail_rewritten_while_stopped_is_detected_and_never_signed() {
    let vault = passphrase_vault();
    some_history(&vault, "rewrite", 3).await;
    vault.keyring.seal();
    let store = vault.store.as_ref();
    let last = stored_entries(store);
    let forged = rewrite_last_entry(store, |e| e.actor = "prn_someone_else".into());

    let found = verify_store(store, &public_key(&vault), false);
    assert!(!found.ok, "{found:?}");
    assert_eq!(found.first_bad_seq, Some(last), "{found:?}");

    let reply = unseal_over_http(&vault, PASSPHRASE).await;
    assert_ne!(reply.status, 200, "{:?}", reply.body);
    assert!(
        vault.keyring.is_sealed(),
        "an unseal over a forged tail stood"
    );
    assert!(
        stored_signatures(store)
            .iter()
            .all(|s| !s.contains(&forged)),
        "the forged head was signed"
    );
    let after = verify_store(store, &public_key(&vault), false);
    assert!(!after.ok, "{after:?}");
    assert_eq!(after.first_bad_seq, Some(last));
}

/// An empty log or export proves nothing and is refused, offline and by
/// export.
#[test]
fn an_empty_log_or_export_is_refused() {
    let vault = passphrase_vault();
    let key = public_key(&vault);
    let empty = verify_lines(std::iter::empty(), &key, true);
    assert!(!empty.ok, "{empty:?}");
    assert_eq!(empty.first_bad_seq, Some(1));
    assert!(empty.problem.unwrap().contains("empty"));
    let lenient = verify_lines(std::iter::empty(), &key, false);
    assert!(!lenient.ok, "{lenient:?}");

    let dir = tempfile::tempdir().unwrap();
    let store = common::open_store(dir.path());
    for strict in [true, false] {
        let result = verify_store(store.as_ref(), &key, strict);
        assert!(!result.ok, "{result:?}");
        assert!(result.problem.unwrap().contains("empty"));
    }
    let mut out = Vec::new();
    let refused = export_store(store.as_ref(), &mut out).unwrap_err();
    assert!(refused.contains("empty"), "{refused}");
    assert!(out.is_empty());
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// A copy of the data directory taken earlier and put back after more
/// writes (a rollback: fewer entries, every one of them properly signed)
/// is refused by the offline verifier and by unseal, and nothing is signed
/// over it.
#[tokio::test]
async fn a_rolled_back_data_directory_is_refused() {
    let vault = passphrase_vault();
    some_history(&vault, "before", 3).await;
    // A clean stop, then a copy of the data directory.
    vault.state.seal();
    vault.store.flush().unwrap();
    let earlier = tempfile::tempdir().unwrap();
    copy_dir(&vault.data_dir(), earlier.path());
    let copied_entries = stored_entries(vault.store.as_ref());
    // More work, and another clean stop.
    assert_eq!(unseal_over_http(&vault, PASSPHRASE).await.status, 200);
    some_history(&vault, "after", 3).await;
    vault.state.seal();
    vault.store.flush().unwrap();

    // The old copy on its own is a well-formed, signed log…
    let copy = common::open_store(earlier.path());
    let alone = verify_store(copy.as_ref(), &public_key(&vault), false);
    assert!(alone.ok && alone.entries == copied_entries, "{alone:?}");
    drop(copy);
    // …but the keys directory has seen a newer signed head.
    let out = common::process::verify_data_dir(earlier.path(), &vault.keys_dir());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a rolled-back log verified: {stderr}"
    );
    assert!(stderr.contains("rolled back"), "{stderr}");

    // Served again over the old copy: unseal must not sign over it.
    let store = common::open_store(earlier.path());
    let keyring = Arc::new(
        strongroom::keyring::Keyring::open(
            &vault.keys_dir(),
            Arc::clone(&store),
            Arc::new(SystemClock),
            fast_settings(),
        )
        .unwrap(),
    );
    let state = strongroom::api::AppState::new(
        Arc::clone(&keyring),
        Arc::clone(&store),
        Arc::new(SystemClock),
        test_settings(),
    );
    let signatures_before = stored_signatures(store.as_ref());
    let reply = call(
        &router(state.clone()),
        "POST",
        "/v1/sys/unseal",
        None,
        Some(json!({ "passphrase": PASSPHRASE })),
    )
    .await;
    assert_ne!(reply.status, 200, "{:?}", reply.body);
    assert!(
        keyring.is_sealed(),
        "an unseal over a rolled-back log stood"
    );
    assert_eq!(stored_signatures(store.as_ref()), signatures_before);
}

/// When the store's sync fails after a round was applied, the caller hears
/// 503 `audit_unavailable` — and, honestly, that the change may still
/// become durable (it was applied; only the sync failed).
#[tokio::test]
async fn a_failed_flush_says_the_change_may_still_become_durable() {
    let (vault, faulty) = faulty_vault();
    let app = vault.app();
    faulty.set_flush_failing(true);
    let Reply { status, body, .. } = call(
        &app,
        "POST",
        "/v1/principals",
        Some(&vault.admin_api_key),
        Some(json!({"name": "unsynced", "kind": "service", "roles": ["auditor"]})),
    )
    .await;
    faulty.set_flush_failing(false);
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("audit_unavailable")),
        "{body}"
    );
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("may still"), "{detail}");
    assert!(!detail.contains("nothing was done"), "{detail}");
    // Indeed it was applied.
    assert!(
        vault
            .state
            .principals
            .list()
            .unwrap()
            .iter()
            .any(|p| p.name == "unsynced")
    );
}

/// While sealed no key can sign: only seal and unseal entries are written
/// (unsigned), anything else is refused. They are the only entries a
/// verifier accepts after the last signature, and the next unseal signs
/// them — unless one was altered into something else meanwhile.
#[tokio::test]
async fn only_seal_and_unseal_entries_are_written_unsigned_while_sealed() {
    use strongroom::audit::{AuditError, AuditEvent, Outcome};
    for tamper in [false, true] {
        let vault = passphrase_vault();
        some_history(&vault, "sealed", 3).await;
        vault.state.seal();
        let signed_to = stored_entries(vault.store.as_ref());
        let refused = vault.state.audit.record(AuditEvent::new(
            "prn_x",
            "principal.create",
            Outcome::Allowed,
        ));
        assert!(matches!(refused, Err(AuditError::Sealed)), "{refused:?}");
        for _ in 0..2 {
            assert_eq!(
                unseal_over_http(&vault, "not the passphrase at all")
                    .await
                    .status,
                400
            );
        }
        let store = vault.store.as_ref();
        assert_eq!(stored_entries(store), signed_to + 2);
        let lenient = verify_store(store, &public_key(&vault), false);
        assert!(lenient.ok, "{lenient:?}");
        assert_eq!(lenient.unsigned_tail, 2);
        let strict = verify_store(store, &public_key(&vault), true);
        assert_eq!(strict.first_bad_seq, Some(signed_to + 1), "{strict:?}");

        if tamper {
            // Turn the last unsigned entry into something never written
            // unsigned, hashes and head record fixed up.
            let last = signed_to + 2;
            let forged = rewrite_last_entry(store, |e| e.action = "principal.disable".into());
            let found = verify_store(store, &public_key(&vault), false);
            assert_eq!(found.first_bad_seq, Some(last), "{found:?}");
            let reply = unseal_over_http(&vault, PASSPHRASE).await;
            assert_ne!(reply.status, 200, "{:?}", reply.body);
            assert!(vault.keyring.is_sealed());
            assert!(
                stored_signatures(store)
                    .iter()
                    .all(|s| !s.contains(&forged))
            );
        } else {
            assert_eq!(unseal_over_http(&vault, PASSPHRASE).await.status, 200);
            let strict = verify_store(store, &public_key(&vault), true);
            assert!(strict.ok, "{strict:?}");
            assert_eq!(strict.entries, signed_to + 3);
        }
    }
}

/// The live verifier compares the log with the newest signed head seen:
/// a log that ends before `keys/audit.head` is refused as rolled back.
#[tokio::test]
async fn the_live_verifier_refuses_a_log_behind_the_newest_signed_head() {
    let vault = passphrase_vault();
    let app = vault.app();
    let auditor = vault.service("auditor", Role::Auditor);
    let reply = call(&app, "GET", "/v1/audit/verify", Some(&auditor), None).await;
    assert_eq!(reply.body["ok"], true, "{}", reply.body);
    // A head this vault signed, further along than its log.
    let ahead = stored_entries(vault.store.as_ref()) + 10;
    let hash = [7u8; 32];
    let time = "2030-01-01T00:00:00Z";
    let keys = vault.keyring.keys().unwrap();
    let signature =
        keys.audit_signing_key()
            .unwrap()
            .sign(&strongroom::audit::Checkpoint::signed_message(
                ahead, &hash, time,
            ));
    std::fs::write(
        vault.keys_dir().join("audit.head"),
        json!({"seq": ahead, "hash": hex::encode(hash), "time": time, "signature": hex::encode(signature)})
            .to_string(),
    )
    .unwrap();
    drop(keys);
    let Reply { status, body, .. } =
        call(&app, "GET", "/v1/audit/verify", Some(&auditor), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["ok"], false, "{body}");
    assert!(
        body["problem"].as_str().unwrap().contains("rolled back"),
        "{body}"
    );
}

/// `GET /v1/audit/verify` and `audit verify|export` run on a live vault
/// (on a cluster, other nodes never stop writing): rounds committed while
/// the log is walked must not look like tampering (a head naming missing
/// entries, entries no signature read covers), and an export must still
/// end with a signature. Each walk spans several scan batches, so rounds
/// commit in the middle of it.
#[test]
fn verify_and_export_are_consistent_while_writers_keep_committing() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use strongroom::audit::{AuditEvent, Outcome};

    let vault = passphrase_vault();
    let audit = vault.state.audit.clone();
    let event = || AuditEvent::new("prn_writer", "principal.create", Outcome::Allowed);
    for _ in 0..3 {
        audit
            .record_many((0..1000).map(|_| (event(), Default::default())).collect())
            .unwrap();
    }
    let key = public_key(&vault);
    let stop = AtomicBool::new(false);
    let written = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    audit.record(event()).unwrap();
                    written.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let check = || {
            for _ in 0..15 {
                let live = audit.verify().unwrap();
                assert!(live.ok, "GET /v1/audit/verify: {live:?}");
                let offline = verify_store(vault.store.as_ref(), &key, false);
                assert!(offline.ok, "audit verify: {offline:?}");
                let mut out = Vec::new();
                export_store(vault.store.as_ref(), &mut out).unwrap();
                let lines = String::from_utf8(out).unwrap();
                let exported = verify_lines(
                    lines
                        .lines()
                        .map(|l| serde_json::from_str::<ExportLine>(l).map_err(|e| e.to_string())),
                    &key,
                    true,
                );
                assert!(exported.ok, "audit export: {exported:?}");
            }
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check));
        stop.store(true, Ordering::Relaxed);
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    });
    // The writers did write during the checks.
    assert!(written.load(Ordering::Relaxed) > 15);
}
