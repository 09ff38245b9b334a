//! Security state on disk is authenticated: whoever can write the data
//! directory of a stopped vault cannot grant themselves anything by editing
//! the records that decide who may do what. Each test edits stored bytes
//! beneath the API (through the `Store` trait) the way such an attacker
//! would, then asserts that the request is refused with `integrity_error`
//! and that nothing was granted: no 200, no plaintext, no session.
//! Also: the data directory is private (0700) and the server refuses one
//! that is not; staff password hashes are peppered with a root-derived key.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use common::process::{in_vault, init_shares, strongroom};
use common::*;
use serde_json::{Value, json};
use strongroom::access::Role;
use strongroom::store::Store;

const PASSWORD: &str = "staff password 123";
const NATIONAL_ID: &str = "925076473";
const SECRET: &str = "generic-secret-value-4711";

struct World {
    vault: TestVault,
    app: Router,
    store: Arc<dyn Store>,
    payments: String,
    other: String,
    officer: String,
}

async fn login(app: &Router, name: &str) -> Reply {
    call(
        app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"username": name, "password": PASSWORD})),
    )
    .await
}

async fn world() -> World {
    let vault = passphrase_vault();
    let app = vault.app();
    let store = Arc::clone(&vault.store);
    let payments = vault.service("payments", Role::PaymentService);
    let other = vault.service("other", Role::PaymentService);
    vault.staff("officer", Role::ComplianceOfficer, PASSWORD);
    vault.staff("approver", Role::ComplianceApprover, PASSWORD);
    vault.staff("boss", Role::Admin, PASSWORD);
    let reply = login(&app, "officer").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let officer = reply.body["token"].as_str().unwrap().to_owned();
    World {
        vault,
        app,
        store,
        payments,
        other,
        officer,
    }
}

impl World {
    fn id_of(&self, name: &str) -> String {
        self.vault.principal_id(name)
    }

    /// `GET path` with `key`.
    async fn get(&self, key: &str, path: &str) -> Reply {
        call(&self.app, "GET", path, Some(key), None).await
    }

    /// The one stored key under `prefix` whose value contains `needle`.
    fn key_holding(&self, prefix: &str, needle: &str) -> Vec<u8> {
        let hits: Vec<Vec<u8>> = self
            .store
            .scan_prefix(prefix.as_bytes())
            .unwrap()
            .into_iter()
            .filter(|(_, v)| contains(v, needle.as_bytes()))
            .map(|(k, _)| k)
            .collect();
        assert_eq!(hits.len(), 1, "entries under {prefix} holding {needle}");
        hits.into_iter().next().unwrap()
    }

    fn value(&self, key: &[u8]) -> Vec<u8> {
        self.store.get(key).unwrap().unwrap()
    }

    /// Rewrites the stored value under `key`, replacing each `from` by its
    /// `to`, as an editor of the data directory would; each must occur.
    fn edit(&self, key: &[u8], edits: &[(&str, &str)]) {
        let mut bytes = self.value(key);
        for (from, to) in edits {
            assert!(contains(&bytes, from.as_bytes()), "{from} not stored");
            bytes = replace(&bytes, from.as_bytes(), to.as_bytes());
        }
        self.store.put(key, &bytes).unwrap();
    }

    async fn record(&self, key: &str, kind: &str, body: Value) -> String {
        let reply = call(
            &self.app,
            "POST",
            &format!("/v1/records/{kind}"),
            Some(key),
            Some(body),
        )
        .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.body["id"].as_str().unwrap().to_owned()
    }

    async fn tokenize(&self, key: &str) -> String {
        let reply = call(
            &self.app,
            "POST",
            "/v1/tokens",
            Some(key),
            Some(json!({"value": SECRET, "kind": "generic"})),
        )
        .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.body["token"].as_str().unwrap().to_owned()
    }

    async fn detokenize(&self, key: &str, token: &str) -> Reply {
        call(
            &self.app,
            "POST",
            "/v1/tokens/detokenize",
            Some(key),
            Some(json!({"tokens": [token]})),
        )
        .await
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// The request was refused as an integrity error, and nothing it asked for
/// came back.
#[track_caller]
fn refused(reply: &Reply, secrets: &[&str]) {
    assert_ne!(
        reply.status, 200,
        "tampered state was believed: {}",
        reply.body
    );
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (500, Some("integrity_error")),
        "{}",
        reply.body
    );
    let text = reply.body.to_string();
    assert!(reply.body.get("token").is_none(), "{text}");
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
}

fn kyc() -> Value {
    json!({
        "subject_ref": "user-42",
        "legal_name": {"given": "Ada", "family": "Lovelace"},
        "date_of_birth": "1815-12-10",
        "nationality": "GB",
        "national_id": {"type": "passport", "number": NATIONAL_ID, "country": "GB"},
    })
}

fn card() -> Value {
    json!({"pan": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2031, "holder_name": "Ada Lovelace"})
}

#[tokio::test]
async fn an_access_request_flipped_to_approved_on_disk_grants_nothing() {
    let w = world().await;
    let kyc_id = w.record(&w.payments, "kyc", kyc()).await;
    let created = call(
        &w.app,
        "POST",
        "/v1/access-requests",
        Some(&w.officer),
        Some(json!({"record_id": kyc_id, "fields": ["national_id"], "reason": "AML review", "ticket": "CASE-1"})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let request_id = created.body["id"].as_str().unwrap();
    let key = format!("ar/{request_id}");
    let approver = w.id_of("approver");
    w.edit(
        key.as_bytes(),
        &[
            ("\"status\":\"pending\"", "\"status\":\"approved\""),
            (
                "\"decided_by\":null",
                &format!("\"decided_by\":\"{approver}\""),
            ),
            ("\"expires_at\":null", "\"expires_at\":4102444800"),
        ],
    );
    let reveal = call(
        &w.app,
        "POST",
        &format!("/v1/records/{kyc_id}/reveal"),
        Some(&w.officer),
        Some(json!({"fields": ["national_id"], "reason": "AML review", "ticket": "CASE-1"})),
    )
    .await;
    refused(&reveal, &[NATIONAL_ID]);
}

#[tokio::test]
async fn a_lockout_count_lowered_on_disk_gives_no_more_guesses() {
    let w = world().await;
    let wrong = || {
        call(
            &w.app,
            "POST",
            "/v1/auth/login",
            None,
            Some(json!({"username": "approver", "password": "not the password"})),
        )
    };
    for _ in 0..5 {
        assert_eq!(wrong().await.status, 401);
    }
    assert_eq!(wrong().await.status, 429);
    let counts = w.store.scan_prefix(b"ac/lockout/").unwrap();
    assert_eq!(counts.len(), 1);
    let (key, stored) = &counts[0];
    w.edit(key, &[("\"count\":5", "\"count\":0")]);
    assert_ne!(&w.store.get(key).unwrap().unwrap(), stored, "not edited");
    refused(&wrong().await, &[]);
    // A count rewritten in the old unauthenticated format is refused too.
    w.store.put(key, br#"{"count":0,"last":0}"#).unwrap();
    refused(&login(&w.app, "approver").await, &[]);
}

#[tokio::test]
async fn an_api_key_index_entry_pointed_or_moved_to_an_admin_grants_nothing() {
    let w = world().await;
    let (mine, admin) = (w.id_of("payments"), w.id_of("admin"));
    let my_entry = w.key_holding("ac/apikey/", &mine);
    let admin_entry = w.key_holding("ac/apikey/", &admin);
    let original = w.value(&my_entry);
    assert_eq!(
        status_of(&w.app, "GET", "/v1/principals", Some(&w.payments), None).await,
        403
    );

    // The entry's value edited to name the admin.
    w.edit(&my_entry, &[(&mine, &admin)]);
    let reply = w.get(&w.payments, "/v1/principals").await;
    refused(&reply, &[]);

    // The admin's entry, bytes and all, copied under one's own key.
    w.store.put(&my_entry, &w.value(&admin_entry)).unwrap();
    let reply = w.get(&w.payments, "/v1/principals").await;
    refused(&reply, &[]);

    // The earlier, unauthenticated format (the bare id), and a cut tag.
    w.store.put(&my_entry, admin.as_bytes()).unwrap();
    refused(&w.get(&w.payments, "/v1/principals").await, &[]);
    w.store
        .put(&my_entry, &original[..original.len() - 1])
        .unwrap();
    refused(&w.get(&w.payments, "/v1/principals").await, &[]);

    // Put back, the key works as before (and is still no admin).
    w.store.put(&my_entry, &original).unwrap();
    assert_eq!(
        status_of(&w.app, "GET", "/v1/principals", Some(&w.payments), None).await,
        403
    );
}

#[tokio::test]
async fn a_session_moved_to_an_admin_grants_nothing() {
    let w = world().await;
    let (officer, boss) = (w.id_of("officer"), w.id_of("boss"));
    let session = w.key_holding("ac/session/", &officer);
    w.edit(&session, &[(&officer, &boss)]);
    let reply = w.get(&w.officer, "/v1/principals").await;
    refused(&reply, &[]);
}

#[tokio::test]
async fn a_password_hash_copied_to_an_admin_grants_nothing() {
    let w = world().await;
    // An admin whose password the officer does not know.
    w.vault
        .staff("chief", Role::Admin, "the chief's own password");
    let (officer, chief) = (w.id_of("officer"), w.id_of("chief"));
    let officer_hash = w.value(format!("ac/password/{officer}").as_bytes());
    w.store
        .put(format!("ac/password/{chief}").as_bytes(), &officer_hash)
        .unwrap();
    // The officer's password on the admin's name.
    let reply = login(&w.app, "chief").await;
    refused(&reply, &[]);
}

#[tokio::test]
async fn a_principal_given_roles_or_re_enabled_on_disk_grants_nothing() {
    let w = world().await;
    let (officer, other) = (w.id_of("officer"), w.id_of("other"));
    w.edit(
        format!("ac/principal/{officer}").as_bytes(),
        &[("[\"compliance_officer\"]", "[\"admin\"]")],
    );
    let reply = w.get(&w.officer, "/v1/principals").await;
    refused(&reply, &[]);

    // A disabled service switched back on.
    let admin = w.vault.admin_api_key.clone();
    assert_eq!(
        status_of(
            &w.app,
            "DELETE",
            &format!("/v1/principals/{other}"),
            Some(&admin),
            None
        )
        .await,
        204
    );
    w.edit(
        format!("ac/principal/{other}").as_bytes(),
        &[("\"disabled\":true", "\"disabled\":false")],
    );
    let reply = call(
        &w.app,
        "POST",
        "/v1/records/card",
        Some(&w.other),
        Some(card()),
    )
    .await;
    refused(&reply, &[]);
}

#[tokio::test]
async fn a_token_given_to_another_owner_or_unrevoked_on_disk_grants_nothing() {
    let w = world().await;
    let (payments, other) = (w.id_of("payments"), w.id_of("other"));
    let token = w.tokenize(&w.payments).await;
    let record = w.key_holding("tk/", &payments);
    let original = w.value(&record);
    w.edit(&record, &[(&payments, &other)]);
    let reply = w.detokenize(&w.other, &token).await;
    refused(&reply, &[SECRET]);
    w.store.put(&record, &original).unwrap();

    // Revoked, then un-revoked on disk.
    assert_eq!(
        status_of(
            &w.app,
            "DELETE",
            &format!("/v1/tokens/{token}"),
            Some(&w.payments),
            None
        )
        .await,
        204
    );
    // The binary token record ends `… uses, revoked` before its 32-byte tag.
    let mut unrevoked = w.value(&record);
    let flag = unrevoked.len() - 33;
    assert_eq!(unrevoked[flag], 1, "the revoked flag is stored");
    unrevoked[flag] = 0;
    w.store.put(&record, &unrevoked).unwrap();
    let reply = w.detokenize(&w.payments, &token).await;
    refused(&reply, &[SECRET]);
}

#[tokio::test]
async fn a_record_given_to_another_owner_marked_erased_or_swapped_on_disk_is_refused() {
    let w = world().await;
    let (payments, other) = (w.id_of("payments"), w.id_of("other"));
    let mine = w.record(&w.payments, "card", card()).await;
    let theirs = w.record(&w.other, "card", card()).await;
    let meta = format!("rec/{mine}");
    let original = w.value(meta.as_bytes());

    // Another owner: the other service would see the masked card.
    w.edit(meta.as_bytes(), &[(&payments, &other)]);
    let reply = w.get(&w.other, &format!("/v1/records/{mine}")).await;
    refused(&reply, &["4242"]);
    w.store.put(meta.as_bytes(), &original).unwrap();

    // Marked erased on disk: not believed either (no 410 for a live record).
    // The packed metadata holds `… owner, subject_ref, erased_at …`: no
    // subject (0), and an erasure time instead of none.
    w.edit(
        meta.as_bytes(),
        &[(
            &format!("{payments}\u{0}\u{0}"),
            &format!("{payments}\u{0}\u{1}\u{14}2026-01-01T00:00:00Z"),
        )],
    );
    let reply = w.get(&w.payments, &format!("/v1/records/{mine}")).await;
    assert_ne!(reply.status, 410);
    refused(&reply, &[]);
    w.store.put(meta.as_bytes(), &original).unwrap();

    // Two records' metadata swapped: neither is served under the other's id.
    let their_meta = w.value(format!("rec/{theirs}").as_bytes());
    w.store.put(meta.as_bytes(), &their_meta).unwrap();
    let reply = w.get(&w.other, &format!("/v1/records/{mine}")).await;
    refused(&reply, &["4242"]);

    // Nothing else changed: the untouched record still reads.
    let reply = w.get(&w.other, &format!("/v1/records/{theirs}")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test]
async fn stored_password_hashes_are_peppered() {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    let w = world().await;
    let officer = w.id_of("officer");
    let stored = w.value(format!("ac/password/{officer}").as_bytes());
    // `$argon2id$v=19$m=…,t=…,p=…$<salt>$<43 base64 digits of hash>`.
    let start = stored
        .windows(9)
        .position(|w| w == b"$argon2id")
        .expect("a PHC string");
    let last_dollar = stored[start..]
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'$')
        .nth(4)
        .map(|(i, _)| start + i)
        .unwrap();
    let phc = std::str::from_utf8(&stored[start..last_dollar + 1 + 43]).unwrap();
    let hash = PasswordHash::new(phc).unwrap();
    // The right password, without the root-derived pepper: no match, so a
    // stolen data directory alone allows no offline guessing.
    assert!(
        argon2::Argon2::default()
            .verify_password(PASSWORD.as_bytes(), &hash)
            .is_err()
    );
    // With the server (and so the pepper) the password works.
    assert_eq!(login(&w.app, "officer").await.status, 200);
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Runs `command` for at most 60 s; `None` if it was still running (it is
/// then killed).
fn output_within(mut command: std::process::Command) -> Option<std::process::Output> {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(child.wait_with_output().unwrap())
}

#[test]
fn the_data_directory_is_private_and_a_shared_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    init_shares(dir.path());
    let data = dir.path().join("data");
    assert_eq!(mode(&data), 0o700, "init creates the data directory 0700");

    for shared in [0o750, 0o705, 0o777] {
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(shared)).unwrap();
        let addr = common::process::free_addr().to_string();
        let out = output_within(in_vault(dir.path(), "serve", &["--listen", &addr]))
            .unwrap_or_else(|| panic!("serve ran from a data directory of mode {shared:o}"));
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("chmod 700") && stderr.contains(data.to_str().unwrap()),
            "{stderr}"
        );
    }

    // A data directory that does not exist is not created by serve.
    let missing = tempfile::tempdir().unwrap();
    let absent = missing.path().join("nothing-here");
    let out = output_within(strongroom(&[
        "serve",
        "--data-dir",
        absent.to_str().unwrap(),
        "--keys-dir",
        dir.path().join("keys").to_str().unwrap(),
        "--listen",
        &common::process::free_addr().to_string(),
    ]))
    .expect("serve without a data directory stops");
    assert!(!out.status.success());
    assert!(!absent.exists(), "serve created a data directory");
}

#[test]
fn dev_creates_its_directories_private() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("new-dev-dir");
    let mut child = strongroom(&[
        "dev",
        "--json",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("admin_api_key"), "{first}");
    let modes = (mode(&data), mode(&data.join("store")));
    let (status, _) = common::process::terminate(child);
    assert!(status.success());
    assert_eq!(modes, (0o700, 0o700));
}

#[tokio::test]
async fn a_search_index_entry_planted_on_disk_neither_redirects_nor_breaks_a_search() {
    let w = world().await;
    let with_email = |email: &str| {
        let mut body = kyc();
        body["email"] = json!(email);
        body
    };
    let ada = w
        .record(&w.payments, "kyc", with_email("ada@example.org"))
        .await;
    let eve = w
        .record(&w.payments, "kyc", with_email("eve@example.org"))
        .await;
    let entries = w.store.scan_prefix(b"bi/email/").unwrap();
    let (ada_entry, _) = entries
        .iter()
        .find(|(k, _)| k.ends_with(ada.as_bytes()))
        .unwrap();
    let prefix = &ada_entry[..ada_entry.len() - ada.len()];
    // Eve's record made to answer a search for Ada's address, and an entry
    // that points at no record at all.
    w.store
        .put(&[prefix, eve.as_bytes()].concat(), b"")
        .unwrap();
    w.store
        .put(&[prefix, b"kyc_000000000000000000000000"].concat(), b"")
        .unwrap();
    let reply = call(
        &w.app,
        "POST",
        "/v1/search",
        Some(&w.officer),
        Some(json!({"field": "email", "value": "ada@example.org", "reason": "KYC check", "ticket": "CASE-7"})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let ids: Vec<&str> = reply.body["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [ada.as_str()], "a planted entry redirected the search");
}
