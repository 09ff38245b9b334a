//! Background rewrap and KEK retirement (docs/lifecycle.md, "Rewrap and
//! key retirement").
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::sync::Arc;

use common::{Reply, TestVault, audit_entries, call, call_with, new_vault_with, test_settings};
use serde_json::json;
use strongroom::access::Role;
use strongroom::api::AppSettings;
use strongroom::api::rewrap::{RewrapSettings, Step};
use strongroom::clock::SystemClock;
use strongroom::keyring::{Purpose, SealMethod};
use zeroize::Zeroizing;

fn vault_with_batch(batch: usize) -> TestVault {
    new_vault_with(
        SealMethod::Passphrase(Zeroizing::new(common::PASSPHRASE.into())),
        common::fast_settings(),
        Arc::new(SystemClock),
        AppSettings {
            rewrap: RewrapSettings {
                batch,
                duty_percent: 100,
            },
            ..test_settings()
        },
    )
}

async fn post(app: &axum::Router, key: &str, path: &str, body: serde_json::Value) -> Reply {
    let reply = call(app, "POST", path, Some(key), Some(body)).await;
    assert!(
        (200..300).contains(&reply.status),
        "{path}: {} {}",
        reply.status,
        reply.body
    );
    reply
}

fn card(n: u32) -> serde_json::Value {
    // Distinct Luhn-valid numbers: 4242 4242 4242 xxxx with a check digit.
    let body = format!("424242424242{n:03}");
    let digits: Vec<u32> = body.chars().map(|c| c.to_digit(10).unwrap()).collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                *d
            }
        })
        .sum();
    let check = (10 - sum % 10) % 10;
    json!({"pan": format!("{body}{check}"), "exp_month": 12, "exp_year": 2030, "holder_name": "Ada Lovelace", "subject_ref": format!("user-{n}")})
}

/// What a vault holds, to be read back after a rewrap: card ids, generic
/// tokens and their values.
struct Holdings {
    cards: Vec<String>,
    generic: Vec<(String, String)>,
}

async fn fill(vault: &TestVault, payments: &str, cards: u32) -> Holdings {
    let app = vault.app();
    let mut holdings = Holdings {
        cards: Vec::new(),
        generic: Vec::new(),
    };
    for n in 0..cards {
        let reply = post(&app, payments, "/v1/records/card", card(n)).await;
        holdings
            .cards
            .push(reply.body["id"].as_str().unwrap().to_owned());
    }
    for n in 0..5 {
        let value = format!("generic value {n}");
        let reply = post(
            &app,
            payments,
            "/v1/tokens",
            json!({"kind": "generic", "value": value}),
        )
        .await;
        holdings
            .generic
            .push((reply.body["token"].as_str().unwrap().to_owned(), value));
    }
    // A kept idempotent answer holds a DEK too.
    let reply = call_with(
        &app,
        "POST",
        "/v1/records/card",
        Some(payments),
        Some(card(cards + 1)),
        &[("idempotency-key", "rewrap-test-key")],
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    holdings
        .cards
        .push(reply.body["id"].as_str().unwrap().to_owned());
    holdings
}

/// Every card opens (to its owner) and every generic token gives its value.
async fn all_open(vault: &TestVault, payments: &str, holdings: &Holdings) {
    let app = vault.app();
    for id in &holdings.cards {
        let reply = call(
            &app,
            "GET",
            &format!("/v1/records/{id}"),
            Some(payments),
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "{id}: {}", reply.body);
        // The masked view is made from the decrypted record.
        assert_eq!(reply.body["holder_name"], "A. L.", "{}", reply.body);
    }
    let tokens: Vec<&str> = holdings.generic.iter().map(|(t, _)| t.as_str()).collect();
    let reply = post(
        &app,
        payments,
        "/v1/tokens/detokenize",
        json!({ "tokens": tokens }),
    )
    .await;
    for (token, value) in &holdings.generic {
        assert_eq!(
            reply.body["results"][token]["value"], *value,
            "{}",
            reply.body
        );
    }
}

fn versions_in_use(vault: &TestVault, purpose: Purpose) -> std::collections::BTreeSet<u32> {
    let mut used = std::collections::BTreeSet::new();
    for prefix in ["rec/", "gen/"] {
        for (key, value) in vault.store.scan_prefix(prefix.as_bytes()).unwrap() {
            if let Some((p, v)) = vault.state.vault.wrapped_under(&key, &value).unwrap()
                && p == purpose
            {
                used.insert(v);
            }
        }
    }
    used
}

fn run_to_end(vault: &TestVault) -> usize {
    let mut steps = 0;
    loop {
        steps += 1;
        match vault.state.rewrap_step().unwrap() {
            Step::Batch => {}
            Step::Finished => return steps,
            Step::Idle => panic!("the job stopped before its end"),
        }
    }
}

/// The whole path: rotate; the old version cannot be destroyed while DEKs
/// use it; a rewrap moves every DEK (records, generic values, a kept
/// answer) without changing a record; then the old version is destroyed
/// and everything still opens. Each step is audited.
#[tokio::test]
async fn a_rewrap_moves_every_dek_and_the_old_version_can_then_be_destroyed() {
    let vault = vault_with_batch(7);
    let payments = vault.service("payments", Role::PaymentService);
    let admin = vault.admin_api_key.clone();
    let app = vault.app();
    let holdings = fill(&vault, &payments, 20).await;
    let before = vault.state.vault.meta(&holdings.cards[0]).unwrap();
    assert_eq!(versions_in_use(&vault, Purpose::Card), [1].into());
    for purpose in ["card", "generic"] {
        post(
            &app,
            &admin,
            &format!("/v1/keys/{purpose}/rotate"),
            json!({}),
        )
        .await;
    }
    let refused = call(
        &app,
        "DELETE",
        "/v1/keys/card/versions/1",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(refused.body["code"], "conflict");
    let newest = call(
        &app,
        "DELETE",
        "/v1/keys/card/versions/2",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(newest.status, 409, "the newest version must never go");

    let idle = call(&app, "GET", "/v1/keys/rewrap", Some(&admin), None).await;
    assert_eq!(idle.body["state"], "idle");
    let started = post(&app, &admin, "/v1/keys/rewrap", json!({})).await;
    assert_eq!(started.status, 202);
    assert_eq!(started.body["state"], "running");
    let id = started.body["id"].as_str().unwrap().to_owned();
    // One batch: progress moves, some remain.
    assert_eq!(vault.state.rewrap_step().unwrap(), Step::Batch);
    let partway = call(&app, "GET", "/v1/keys/rewrap", Some(&admin), None).await;
    assert_eq!(partway.body["state"], "running");
    assert_eq!(partway.body["done"], 7, "{}", partway.body);
    assert!(partway.body["remaining"].as_u64().unwrap() > 0);
    run_to_end(&vault);
    let done = call(&app, "GET", "/v1/keys/rewrap", Some(&admin), None).await;
    assert_eq!(done.body["state"], "finished", "{}", done.body);
    assert_eq!(done.body["remaining"], 0);
    assert_eq!(done.body["failed"], 0);
    // 21 cards, 5 generic values, one kept answer.
    assert_eq!(done.body["rewrapped"], 27, "{}", done.body);
    assert_eq!(versions_in_use(&vault, Purpose::Card), [2].into());
    assert_eq!(versions_in_use(&vault, Purpose::Generic), [2].into());
    // A rewrap is not a change of the data.
    let after = vault.state.vault.meta(&holdings.cards[0]).unwrap();
    assert_eq!(
        (before.version, &before.updated_at),
        (after.version, &after.updated_at)
    );

    for purpose in ["card", "generic"] {
        let gone = call(
            &app,
            "DELETE",
            &format!("/v1/keys/{purpose}/versions/1"),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(gone.status, 204, "{purpose}: {}", gone.body);
    }
    assert!(
        vault
            .store
            .get(b"kr/kek/card/\0\0\0\x01")
            .unwrap()
            .is_none(),
        "the wrapped key is still in the store"
    );
    let keys = call(&app, "GET", "/v1/keys", Some(&admin), None).await;
    assert!(
        !keys.body["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["purpose"] == "card" && k["version"] == 1),
        "{}",
        keys.body
    );
    let again = call(
        &app,
        "DELETE",
        "/v1/keys/card/versions/1",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(again.status, 404);
    all_open(&vault, &payments, &holdings).await;
    // The kept answer still replays.
    let replay = call_with(
        &app,
        "POST",
        "/v1/records/card",
        Some(&payments),
        Some(card(21)),
        &[("idempotency-key", "rewrap-test-key")],
    )
    .await;
    assert_eq!(replay.status, 201, "{}", replay.body);
    assert_eq!(replay.body["id"].as_str().unwrap(), holdings.cards[20]);

    // Audited: started by the admin, finished by `system`, destroyed.
    let entries = audit_entries(&vault);
    let rewraps: Vec<_> = entries
        .iter()
        .filter(|e| e["action"] == "key.rewrap" && e["target"] == id.as_str())
        .collect();
    assert_eq!(rewraps.len(), 2, "{rewraps:?}");
    assert_eq!(rewraps[0]["actor"], vault.principal_id("admin"));
    assert_eq!(rewraps[1]["actor"], "system");
    assert!(
        rewraps[1]["reason"]
            .as_str()
            .unwrap()
            .contains("27 rewrapped")
    );
    for purpose in ["card", "generic"] {
        assert!(entries.iter().any(|e| e["action"] == "key.destroy"
            && e["target"] == format!("kek/{purpose}/1")
            && e["outcome"] == "allowed"));
    }
}

/// A job stopped part-way (a restart: another server state over the same
/// store) goes on from its cursor; nothing is read twice.
#[tokio::test]
async fn a_rewrap_resumes_where_it_stopped() {
    let vault = vault_with_batch(4);
    let payments = vault.service("payments", Role::PaymentService);
    let admin = vault.admin_api_key.clone();
    let app = vault.app();
    let holdings = fill(&vault, &payments, 12).await;
    post(&app, &admin, "/v1/keys/card/rotate", json!({})).await;
    post(&app, &admin, "/v1/keys/rewrap", json!({})).await;
    for _ in 0..2 {
        assert_eq!(vault.state.rewrap_step().unwrap(), Step::Batch);
    }
    let before = vault.state.rewrap_progress().unwrap();
    assert_eq!(before.done, 8);
    let restarted = vault.state_with(AppSettings {
        rewrap: RewrapSettings {
            batch: 4,
            duty_percent: 100,
        },
        ..test_settings()
    });
    let mut steps = 0;
    while restarted.rewrap_step().unwrap() == Step::Batch {
        steps += 1;
    }
    let after = restarted.rewrap_progress().unwrap();
    assert_eq!(after.state, "finished");
    let total = before.done + before.remaining.unwrap();
    assert_eq!(after.done, total, "entries read twice or skipped");
    assert!(steps >= 2);
    assert_eq!(versions_in_use(&vault, Purpose::Card), [2].into());
    all_open(&vault, &payments, &holdings).await;
}

/// Records written, changed and erased while a rewrap runs: nothing is
/// lost, nothing is left on the old version, and an erased record stays
/// erased (a rewrap never brings a body back).
#[tokio::test]
async fn writes_during_a_rewrap_lose_nothing() {
    let vault = vault_with_batch(3);
    let payments = vault.service("payments", Role::PaymentService);
    let admin = vault.admin_api_key.clone();
    let app = vault.app();
    let holdings = fill(&vault, &payments, 10).await;
    post(&app, &admin, "/v1/keys/card/rotate", json!({})).await;
    post(&app, &admin, "/v1/keys/rewrap", json!({})).await;
    let erased = holdings.cards[9].clone();
    let state = vault.state.clone();
    let runner =
        tokio::task::spawn_blocking(move || while state.rewrap_step().unwrap() == Step::Batch {});
    let mut created = Vec::new();
    for n in 0..6 {
        let id = &holdings.cards[n];
        let reply = call(
            &app,
            "PATCH",
            &format!("/v1/records/{id}"),
            Some(&payments),
            Some(json!({"exp_month": 11})),
        )
        .await;
        // A change racing the rewrap of the same record is refused as a
        // conflict, never half-applied.
        assert!(matches!(reply.status, 200 | 409), "{}", reply.body);
        let new = post(&app, &payments, "/v1/records/card", card(100 + n as u32)).await;
        created.push(new.body["id"].as_str().unwrap().to_owned());
    }
    let gone = call(
        &app,
        "DELETE",
        &format!("/v1/records/{erased}"),
        Some(&payments),
        None,
    )
    .await;
    assert!(matches!(gone.status, 204 | 409), "{}", gone.body);
    runner.await.unwrap();
    if gone.status == 409 {
        let gone = call(
            &app,
            "DELETE",
            &format!("/v1/records/{erased}"),
            Some(&payments),
            None,
        )
        .await;
        assert_eq!(gone.status, 204);
    }
    assert_eq!(versions_in_use(&vault, Purpose::Card), [2].into());
    let still = call(
        &app,
        "GET",
        &format!("/v1/records/{erased}"),
        Some(&payments),
        None,
    )
    .await;
    assert_eq!(still.status, 410, "{}", still.body);
    let live = Holdings {
        cards: holdings
            .cards
            .iter()
            .filter(|id| **id != erased)
            .chain(&created)
            .cloned()
            .collect(),
        generic: holdings.generic,
    };
    all_open(&vault, &payments, &live).await;
}

/// Twenty admins starting a rewrap at once: one job starts, the others are
/// told one runs.
#[tokio::test]
async fn parallel_starts_make_one_job() {
    let vault = vault_with_batch(50);
    let app = vault.app();
    let admin = vault.admin_api_key.clone();
    let starts = (0..20).map(|_| {
        let app = app.clone();
        let admin = admin.clone();
        tokio::spawn(async move { call(&app, "POST", "/v1/keys/rewrap", Some(&admin), None).await })
    });
    let mut accepted = 0;
    for start in starts {
        let reply = start.await.unwrap();
        match reply.status {
            202 => accepted += 1,
            409 => assert_eq!(reply.body["code"], "conflict"),
            other => panic!("{other}: {}", reply.body),
        }
    }
    assert_eq!(accepted, 1);
    let started = audit_entries(&vault)
        .iter()
        .filter(|e| e["action"] == "key.rewrap" && e["outcome"] == "allowed")
        .count();
    assert_eq!(started, 1);
}

/// Bad input is a clean 404, never a 500, and destroys nothing.
#[tokio::test]
async fn bad_purposes_and_versions_are_not_found() {
    let vault = vault_with_batch(50);
    let app = vault.app();
    let admin = vault.admin_api_key.clone();
    post(&app, &admin, "/v1/keys/card/rotate", json!({})).await;
    post(&app, &admin, "/v1/keys/card/rotate", json!({})).await;
    for path in [
        "/v1/keys/nope/versions/1",
        "/v1/keys/card/versions/abc",
        "/v1/keys/card/versions/0",
        "/v1/keys/card/versions/99",
        "/v1/keys/card/versions/1%2F..",
        "/v1/keys/card/versions/-1",
        "/v1/keys/card/versions/4294967296",
        "/v1/keys/kyc/versions/2",
    ] {
        let reply = call(&app, "DELETE", path, Some(&admin), None).await;
        assert_eq!(reply.status, 404, "{path}: {}", reply.body);
        assert_eq!(reply.body["code"], "not_found");
    }
    let keys = call(&app, "GET", "/v1/keys", Some(&admin), None).await;
    assert_eq!(
        keys.body["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["purpose"] == "card")
            .count(),
        3,
        "init's version and the two rotations: nothing destroyed"
    );
}

/// `strongroom keys …` against a running server: rotate, rewrap followed
/// to its end (a line per update when stderr is not a terminal), list,
/// destroy; refusals are the server's problem codes, and the API key only
/// ever comes from the environment.
#[test]
fn the_keys_command_rotates_rewraps_and_destroys() {
    use common::process::{dev, strongroom, terminate};
    let dir = tempfile::tempdir().unwrap();
    // The shortest destroy grace a configuration may set.
    let config = dir.path().join("dev.toml");
    std::fs::write(&config, "[keys]\ndestroy_grace_seconds = 60\n").unwrap();
    let vault = dir.path().join("vault");
    let (child, creds, addr) = dev(
        strongroom(&[
            "dev",
            "--json",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            vault.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ]),
        std::process::Stdio::null(),
    );
    let url = format!("http://{addr}");
    let admin = creds["admin_api_key"].as_str().unwrap();
    let keys = |args: &[&str], key: Option<&str>| {
        let mut command = strongroom(&["keys"]);
        command.args(args).args(["--url", &url]);
        if let Some(key) = key {
            command.env("STRONGROOM_API_KEY", key);
        }
        command.stdin(std::process::Stdio::null()).output().unwrap()
    };
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let no_key = keys(&["list"], None);
    assert!(!no_key.status.success());
    assert!(
        text(&no_key).contains("STRONGROOM_API_KEY"),
        "{}",
        text(&no_key)
    );
    let payments = creds["payment_service_api_key"].as_str().unwrap();
    let refused = keys(&["rotate", "card"], Some(payments));
    assert!(!refused.status.success());
    assert!(text(&refused).contains("forbidden"), "{}", text(&refused));

    let rotated = keys(&["rotate", "card"], Some(admin));
    assert!(rotated.status.success(), "{}", text(&rotated));
    assert!(
        text(&rotated).contains("card KEK version 2 made"),
        "{}",
        text(&rotated)
    );
    let rewrap = keys(&["rewrap"], Some(admin));
    assert!(rewrap.status.success(), "{}", text(&rewrap));
    let out = text(&rewrap);
    assert!(out.contains("started"), "{out}");
    assert!(out.contains("100 %") && out.contains("finished"), "{out}");
    let list = keys(&["list", "--json"], Some(admin));
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert!(
        listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["purpose"] == "card" && k["version"] == 2 && k["active"] == true)
    );
    let newest = keys(&["destroy", "card", "2"], Some(admin));
    assert!(!newest.status.success());
    assert!(text(&newest).contains("conflict"), "{}", text(&newest));
    // Version 2 is moments old: version 1 waits out the destroy grace
    // (its successful destruction is shown through the API above).
    let early = keys(&["destroy", "card", "1"], Some(admin));
    assert!(!early.status.success());
    assert!(
        text(&early).contains("destroy_grace_seconds"),
        "{}",
        text(&early)
    );
    let bad = keys(&["destroy", "../sys", "1"], Some(admin));
    assert!(!bad.status.success());
    assert!(text(&bad).contains("not a KEK purpose"), "{}", text(&bad));
    let (status, _) = terminate(child);
    assert!(status.success());
}

/// A version replaced moments ago is not destroyed (a write that took it
/// just before the rotation may still be on its way), nor while a rewrap
/// runs; both refusals are audited.
#[tokio::test]
async fn no_version_is_destroyed_within_the_grace_or_while_a_rewrap_runs() {
    let clock = Arc::new(strongroom::clock::ManualClock::new(
        time::OffsetDateTime::now_utc(),
    ));
    let vault = new_vault_with(
        SealMethod::Passphrase(Zeroizing::new(common::PASSPHRASE.into())),
        common::fast_settings(),
        clock.clone(),
        AppSettings {
            kek_destroy_grace: time::Duration::minutes(5),
            ..test_settings()
        },
    );
    let app = vault.app();
    let admin = vault.admin_api_key.clone();
    post(&app, &admin, "/v1/keys/bank/rotate", json!({})).await;
    let early = call(
        &app,
        "DELETE",
        "/v1/keys/bank/versions/1",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(early.status, 409, "{}", early.body);
    assert!(
        early.body["detail"]
            .as_str()
            .unwrap()
            .contains("destroy_grace")
    );
    clock.advance(time::Duration::minutes(6));
    post(&app, &admin, "/v1/keys/rewrap", json!({})).await;
    let running = call(
        &app,
        "DELETE",
        "/v1/keys/bank/versions/1",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(running.status, 409, "{}", running.body);
    assert!(
        running.body["detail"]
            .as_str()
            .unwrap()
            .contains("rewrap is running")
    );
    while vault.state.rewrap_step().unwrap() == Step::Batch {}
    let gone = call(
        &app,
        "DELETE",
        "/v1/keys/bank/versions/1",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(gone.status, 204, "{}", gone.body);
    let refusals = audit_entries(&vault)
        .iter()
        .filter(|e| e["action"] == "key.destroy" && e["outcome"] == "error")
        .count();
    assert_eq!(refusals, 2);
}
