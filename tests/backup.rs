//! `strongroom backup` and `strongroom restore` through the real binary:
//! a consistent backup taken from a running server while cards are being
//! stored, restored into a new directory that serves, unseals with the same
//! shares and verifies; tampered, truncated and foreign backups refused
//! with nothing created; `GET /v1/sys/backup` for admins only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::http;
use common::process::{
    Server, init_shares, plain_http_config, serve_with_config, strongroom, terminate,
    verify_data_dir,
};
use serde_json::{Value, json};

const PAN: &str = "4000056655665556";

fn unseal(addr: SocketAddr, init: &Value) {
    for index in [0, 2, 4] {
        let body = json!({ "share": init["shares"][index] }).to_string();
        assert_eq!(
            http(addr, "POST", "/v1/sys/unseal", None, Some(&body)).status,
            200
        );
    }
    assert_eq!(http(addr, "GET", "/v1/sys/health", None, None).status, 200);
}

fn service(addr: SocketAddr, admin: &str, name: &str, role: &str) -> String {
    let body = json!({"name": name, "kind": "service", "roles": [role]}).to_string();
    let reply = http(addr, "POST", "/v1/principals", Some(admin), Some(&body));
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()["api_key"].as_str().unwrap().to_owned()
}

fn store_card(addr: SocketAddr, key: &str, pan: &str) -> Option<String> {
    let body = json!({"pan": pan, "exp_month": 12, "exp_year": 2031, "holder_name": "Ada Lovelace", "subject_ref": "user-42"}).to_string();
    let reply = common::try_http(addr, "POST", "/v1/records/card", Some(key), Some(&body)).ok()?;
    (reply.status == 201).then(|| reply.json()["id"].as_str().unwrap().to_owned())
}

/// `strongroom backup --out <out> --url http://<addr>` with `key` in
/// STRONGROOM_API_KEY.
fn backup(addr: SocketAddr, key: &str, out: &Path) -> Output {
    strongroom(&[
        "backup",
        "--out",
        out.to_str().unwrap(),
        "--url",
        &format!("http://{addr}"),
    ])
    .env("STRONGROOM_API_KEY", key)
    .stdin(Stdio::null())
    .output()
    .unwrap()
}

/// `strongroom restore --in <file> --data-dir <dir>/data --keys-dir <dir>/keys [extra…]`.
fn restore(file: &Path, dir: &Path, extra: &[&str]) -> Output {
    restore_to(file, &dir.join("data"), &dir.join("keys"), extra)
}

/// `strongroom restore --in <file> --data-dir <data> --keys-dir <keys> [extra…]`;
/// with `--public-key <vault>/keys/audit.pub` in `extra`, also
/// `--epoch-file <vault>/keys/epoch.json` (the live vault's erasure epoch
/// secrets, which a backup never carries: docs/lifecycle.md).
fn restore_to(file: &Path, data: &Path, keys: &Path, extra: &[&str]) -> Output {
    let epoch_file = extra
        .iter()
        .position(|a| *a == "--public-key")
        .and_then(|i| extra.get(i + 1))
        .and_then(|anchor| Path::new(anchor).parent())
        .map(|live_keys| live_keys.join("epoch.json"))
        .filter(|path| path.is_file());
    let mut command = strongroom(&[
        "restore",
        "--in",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--keys-dir",
        keys.to_str().unwrap(),
    ]);
    if let Some(path) = &epoch_file {
        command.args(["--epoch-file", path.to_str().unwrap()]);
    }
    command.args(extra).stdin(Stdio::null()).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A server whose log goes nowhere: under load its request log would fill
/// a pipe nobody reads until the end (and block the server). Killed if a
/// test fails before stopping it.
struct QuietServer {
    child: Option<std::process::Child>,
    addr: SocketAddr,
}

impl QuietServer {
    fn start(dir: &Path) -> Self {
        let (child, addr) = serve_with_config(dir, &plain_http_config(dir), Stdio::null());
        Self {
            child: Some(child),
            addr,
        }
    }

    fn stop(mut self) {
        let (status, _) = terminate(self.child.take().unwrap());
        assert!(status.success(), "{status}");
    }
}

impl Drop for QuietServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A vault initialised with shares in `dir`, served and unsealed: its init
/// output and server.
fn running_vault(dir: &Path) -> (Value, Server) {
    let init = init_shares(dir);
    let server = Server::start(dir, &plain_http_config(dir));
    unseal(server.addr, &init);
    (init, server)
}

#[test]
fn a_backup_taken_under_load_restores_a_vault_that_unseals_verifies_and_opens_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let init = init_shares(dir.path());
    let server = QuietServer::start(dir.path());
    let addr = server.addr;
    unseal(addr, &init);
    let admin = init["admin_api_key"].as_str().unwrap().to_owned();
    let payments = service(addr, &admin, "payments", "payment_service");
    let first = store_card(addr, &payments, PAN).unwrap();

    // Writers store cards while the backup is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, key) = (Arc::clone(&stop), payments.clone());
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    if let Some(id) = store_card(addr, &key, "5555 5555 5555 4444") {
                        ids.push(id);
                    }
                }
                ids
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let file = dir.path().join("vault.backup");
    let out = backup(addr, &admin, &file);
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let stored: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    server.stop();
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        !bytes.windows(PAN.len()).any(|w| w == PAN.as_bytes()),
        "the backup holds the PAN in the clear"
    );
    // A second backup never replaces the first.
    let again = backup(addr, &admin, &file);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("exists"), "{}", stderr(&again));

    // Restored elsewhere, with the vault's audit.pub as the trust anchor.
    let copy = tempfile::tempdir().unwrap();
    let public_key = dir.path().join("keys/audit.pub");
    let out = restore(
        &file,
        copy.path(),
        &["--public-key", public_key.to_str().unwrap(), "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let restored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(restored["pairs"].as_u64().unwrap() > 0);
    let head = restored["audit_head"][0].as_u64().unwrap();
    assert_eq!(
        std::fs::metadata(copy.path().join("data"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(copy.path().join("keys/root.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let data = copy.path().join("data");
    let keys = copy.path().join("keys");
    let verify = verify_data_dir(&data, &keys);
    assert!(verify.status.success(), "{}", stderr(&verify));

    // The snapshot is consistent: every card whose creation is in the
    // restored log is in the restored store, and no other.
    let export = strongroom(&["audit", "export", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", stderr(&export));
    let created: BTreeSet<String> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|e| e["action"] == "record.create" && e["outcome"] == "allowed")
        .map(|e| e["target"].as_str().unwrap().to_owned())
        .collect();
    assert!(created.contains(&first));
    let during = stored.iter().filter(|id| created.contains(*id)).count();
    assert!(during > 0, "no card was stored before the snapshot");
    let after = stored.len() - during;

    let server = QuietServer::start(copy.path());
    let addr = server.addr;
    assert_eq!(http(addr, "GET", "/v1/sys/health", None, None).status, 503);
    unseal(addr, &init);
    for id in stored.iter().chain([&first]) {
        let status = http(
            addr,
            "GET",
            &format!("/v1/records/{id}"),
            Some(&payments),
            None,
        )
        .status;
        let expected = if created.contains(id) { 200 } else { 404 };
        assert_eq!(status, expected, "{id}");
    }
    let verified = http(addr, "GET", "/v1/audit/verify", Some(&admin), None).json();
    assert_eq!(verified["ok"], true, "{verified}");
    assert!(verified["entries"].as_u64().unwrap() > head);
    server.stop();
    eprintln!(
        "{} cards in the backup, {after} stored after its snapshot",
        during + 1
    );
}

/// A copy of `file` with the byte at `at` flipped.
fn tampered(file: &Path, at: usize, name: &str) -> PathBuf {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[at] ^= 0x01;
    let path = file.with_file_name(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn tampered_truncated_and_foreign_backups_are_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let (init, server) = running_vault(dir.path());
    let admin = init["admin_api_key"].as_str().unwrap();
    let payments = service(server.addr, admin, "payments", "payment_service");
    store_card(server.addr, &payments, PAN).unwrap();
    let file = dir.path().join("vault.backup");
    let out = backup(server.addr, admin, &file);
    assert!(out.status.success(), "{}", stderr(&out));
    server.stop();
    let bytes = std::fs::read(&file).unwrap();
    let len = bytes.len();
    let public_key = dir.path().join("keys/audit.pub");
    let anchor = ["--public-key", public_key.to_str().unwrap()];
    let work = tempfile::tempdir().unwrap();

    let refused = |file: &Path, target: &Path, extra: &[&str], why: &str| {
        let out = restore(file, target, extra);
        assert!(!out.status.success(), "{why}: restored");
        assert!(
            stderr(&out).contains("restore refused"),
            "{why}: {}",
            stderr(&out)
        );
        assert!(!target.join("data").exists(), "{why}: created a store");
        stderr(&out)
    };

    // A byte changed in the header, in a pair, in the trailer's digest, in
    // its signature.
    let pairs_start = 16 + 4 + 4 + u32::from_be_bytes(bytes[20..24].try_into().unwrap()) as usize;
    for (at, what) in [
        (40, "header"),
        (pairs_start + 12, "pair"),
        ((pairs_start + len) / 2, "middle"),
        (len - 80, "digest"),
        (len - 1, "signature"),
    ] {
        let target = work.path().join(what);
        refused(&tampered(&file, at, what), &target, &anchor, what);
        assert!(!target.exists(), "{what}: created {}", target.display());
    }
    // Truncated anywhere, or with bytes after its end.
    for (cut, what) in [(len - 1, "last"), (len / 2, "half"), (10, "magic")] {
        let path = work.path().join(format!("cut-{what}"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let why = refused(&path, &work.path().join(what), &anchor, what);
        assert!(why.contains("truncated"), "{why}");
    }
    let longer = work.path().join("longer");
    std::fs::write(&longer, [bytes.as_slice(), b"x"].concat()).unwrap();
    refused(
        &longer,
        &work.path().join("longer-target"),
        &anchor,
        "longer",
    );

    // No trust anchor: refused, and says why.
    let why = refused(&file, &work.path().join("no-anchor"), &[], "no anchor");
    assert!(why.contains("audit.pub"), "{why}");

    // Another vault's keys directory (a second init): its audit.pub is
    // not the key that signed this backup.
    let other = tempfile::tempdir().unwrap();
    init_shares(other.path());
    let out = strongroom(&[
        "restore",
        "--in",
        file.to_str().unwrap(),
        "--data-dir",
        other.path().join("restored").to_str().unwrap(),
        "--keys-dir",
        other.path().join("keys").to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("another vault"), "{}", stderr(&out));
    assert!(!other.path().join("restored").exists());
    // … nor with this vault's key given: the keys directory is another's.
    let out = strongroom(&[
        "restore",
        "--in",
        file.to_str().unwrap(),
        "--data-dir",
        other.path().join("restored").to_str().unwrap(),
        "--keys-dir",
        other.path().join("keys").to_str().unwrap(),
        "--public-key",
        public_key.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("another vault"), "{}", stderr(&out));
    assert!(!other.path().join("restored").exists());
    // A keys directory holding only another vault's root.json.
    let foreign = work.path().join("foreign");
    std::fs::create_dir_all(foreign.join("keys")).unwrap();
    std::fs::copy(
        other.path().join("keys/root.json"),
        foreign.join("keys/root.json"),
    )
    .unwrap();
    let why = refused(&file, &foreign, &anchor, "foreign root.json");
    assert!(why.contains("belongs to vault"), "{why}");

    // A data directory that holds a store, or anything, is refused.
    let busy = work.path().join("busy");
    std::fs::create_dir_all(busy.join("data")).unwrap();
    std::fs::write(busy.join("data/note"), "mine").unwrap();
    let out = restore(&file, &busy, &anchor);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    let out = restore(&file, dir.path(), &anchor);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already holds a store"),
        "{}",
        stderr(&out)
    );

    // The untouched file restores.
    let good = work.path().join("good");
    let out = restore(&file, &good, &anchor);
    assert!(out.status.success(), "{}", stderr(&out));
    let verify = verify_data_dir(&good.join("data"), &good.join("keys"));
    assert!(verify.status.success(), "{}", stderr(&verify));
}

#[test]
fn only_admins_fetch_a_backup_and_never_while_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let init = init_shares(dir.path());
    let admin = init["admin_api_key"].as_str().unwrap();
    let server = Server::start(dir.path(), &plain_http_config(dir.path()));
    let addr = server.addr;
    let sealed = http(addr, "GET", "/v1/sys/backup", Some(admin), None);
    assert_eq!(sealed.status, 503);
    assert_eq!(sealed.json()["code"], "sealed");
    unseal(addr, &init);
    assert_eq!(http(addr, "GET", "/v1/sys/backup", None, None).status, 401);
    for role in ["auditor", "payment_service"] {
        let key = service(addr, admin, role, role);
        let reply = http(addr, "GET", "/v1/sys/backup", Some(&key), None);
        assert_eq!(reply.status, 403, "{role}");
        assert_eq!(reply.json()["code"], "forbidden");
        // The CLI says why, and writes nothing.
        let out_file = dir.path().join(format!("{role}.backup"));
        let out = backup(addr, &key, &out_file);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("forbidden"), "{}", stderr(&out));
        assert!(!out_file.exists());
    }
    let reply = http(addr, "GET", "/v1/sys/backup", Some(admin), None);
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("application/octet-stream")
    );
    assert!(reply.body.starts_with(b"STRONGROOM-BKUP\n"));
    // Every attempt is in the audit log.
    let page = http(
        addr,
        "GET",
        "/v1/audit?action=sys.backup&limit=100",
        Some(admin),
        None,
    )
    .json();
    let outcomes: Vec<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes.iter().filter(|o| **o == "denied").count(), 4);
    assert_eq!(outcomes.iter().filter(|o| **o == "allowed").count(), 1);
    // Without STRONGROOM_API_KEY the CLI refuses before connecting.
    let out = strongroom(&[
        "backup",
        "--out",
        dir.path().join("x.backup").to_str().unwrap(),
        "--url",
        &format!("http://{addr}"),
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("STRONGROOM_API_KEY"));
    // Plain HTTP only to loopback.
    let out = strongroom(&[
        "backup",
        "--out",
        dir.path().join("y.backup").to_str().unwrap(),
        "--url",
        "http://192.0.2.1:8200",
    ])
    .env("STRONGROOM_API_KEY", admin)
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("https://"), "{}", stderr(&out));
    server.stop();
}

#[test]
fn backup_over_https_trusts_the_given_ca_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let init = init_shares(dir.path());
    let admin = init["admin_api_key"].as_str().unwrap();
    let ca = common::tls::TestCa::new("backup test CA");
    let issued = ca.server(&[]);
    let (cert, key, ca_file) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let config = dir.path().join("tls.toml");
    std::fs::write(
        &config,
        format!("[tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n"),
    )
    .unwrap();
    let server = Server::start(dir.path(), &config);
    let client = ca.client_config(None);
    for index in [1, 3, 4] {
        let body = json!({ "share": init["shares"][index] }).to_string();
        let reply = common::https(
            server.addr,
            client.clone(),
            "POST",
            "/v1/sys/unseal",
            None,
            Some(&body),
        );
        assert_eq!(reply.status, 200);
    }
    let url = format!("https://localhost:{}", server.addr.port());
    let run = |out: &Path, ca: Option<&Path>| {
        let mut args = vec![
            "backup".to_owned(),
            "--out".into(),
            out.to_str().unwrap().into(),
            "--url".into(),
            url.clone(),
        ];
        if let Some(ca) = ca {
            args.extend(["--ca-file".into(), ca.to_str().unwrap().into()]);
        }
        strongroom(&[])
            .args(args)
            .env("STRONGROOM_API_KEY", admin)
            .output()
            .unwrap()
    };
    // The system's roots do not know the test CA.
    let untrusted = dir.path().join("untrusted.backup");
    let out = run(&untrusted, None);
    assert!(!out.status.success());
    assert!(!untrusted.exists());
    let file = dir.path().join("vault.backup");
    let out = run(&file, Some(&ca_file));
    assert!(out.status.success(), "{}", stderr(&out));
    // Nothing but the backup is left in the directory by the transfer.
    assert!(
        std::fs::read_dir(dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("partial"))
    );
    server.stop();
    let restored = tempfile::tempdir().unwrap();
    let public_key = dir.path().join("keys/audit.pub");
    let out = restore(
        &file,
        restored.path(),
        &["--public-key", public_key.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Restored vault"));
}

/// Restoring an older backup with the vault's own keys directory, whose
/// `audit.head` has seen later entries, is a rollback of the log: refused
/// (nothing created) unless `--accept-rollback` says it is meant; then the
/// previous `audit.head` is kept beside the new one, and the restored vault
/// serves and unseals.
#[test]
fn restoring_behind_the_keys_directorys_head_needs_accept_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let init = init_shares(dir.path());
    let admin = init["admin_api_key"].as_str().unwrap();
    let config = plain_http_config(dir.path());
    let server = Server::start(dir.path(), &config);
    unseal(server.addr, &init);
    let file = dir.path().join("old.backup");
    let out = backup(server.addr, admin, &file);
    assert!(out.status.success(), "{}", stderr(&out));
    // Later work the backup does not hold; a clean stop records its head.
    for i in 0..3 {
        service(server.addr, admin, &format!("later-{i}"), "auditor");
    }
    server.stop();
    let head_before = std::fs::read_to_string(dir.path().join("keys/audit.head")).unwrap();

    let target = tempfile::tempdir().unwrap();
    let data = target.path().join("data");
    let keys = dir.path().join("keys");
    let restore_into = |extra: &[&str]| restore_to(&file, &data, &keys, extra);
    let out = restore_into(&[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--accept-rollback"),
        "{}",
        stderr(&out)
    );
    assert!(
        !data.exists(),
        "a refused restore created the data directory"
    );
    assert_eq!(
        std::fs::read_to_string(keys.join("audit.head")).unwrap(),
        head_before
    );

    let out = restore_into(&["--accept-rollback"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let kept: Vec<PathBuf> = std::fs::read_dir(&keys)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("audit.head.before-restore-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read_to_string(&kept[0]).unwrap(), head_before);
    assert_ne!(
        std::fs::read_to_string(keys.join("audit.head")).unwrap(),
        head_before
    );
    // The restored log verifies against the keys directory's new head.
    let verify = verify_data_dir(&data, &keys);
    assert!(verify.status.success(), "{}", stderr(&verify));
}

/// A backup is refused, before anything is spooled, when the free space
/// beside the spool could not hold the store plus the reserve: it must
/// never fill the disk the store writes to.
#[test]
fn a_backup_without_room_for_its_spool_is_refused() {
    let vault = common::passphrase_vault();
    let spool = tempfile::tempdir().unwrap();
    let free = strongroom::backup::free_bytes(spool.path()).unwrap();
    assert!(free > 0);
    let take = |expected: u64| {
        strongroom::backup::Prepared::take(
            vault.store.as_ref(),
            &vault.keyring,
            spool.path(),
            expected,
            None,
            time::OffsetDateTime::now_utc(),
        )
    };
    match take(free) {
        Err(strongroom::backup::BackupError::NoSpace(why)) => {
            assert!(why.contains("Nothing was taken"), "{why}")
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a backup was taken without room for it"),
    }
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
    // With room it is taken.
    let taken = take(0).unwrap();
    assert!(taken.header.pairs > 0);
}

/// The newest backup, restored with the keys directory of the server it
/// came from after a clean stop (whose `audit.head` names the backup's own
/// last entry or one it holds): no rollback, no flag needed; the head the
/// keys directory has stays.
#[test]
fn the_newest_backup_restores_with_its_own_keys_directory() {
    let dir = tempfile::tempdir().unwrap();
    let init = init_shares(dir.path());
    let admin = init["admin_api_key"].as_str().unwrap();
    let server = Server::start(dir.path(), &plain_http_config(dir.path()));
    unseal(server.addr, &init);
    for i in 0..3 {
        service(server.addr, admin, &format!("before-{i}"), "auditor");
    }
    let file = dir.path().join("newest.backup");
    let out = backup(server.addr, admin, &file);
    assert!(out.status.success(), "{}", stderr(&out));
    server.stop();
    let keys = dir.path().join("keys");
    let head_before = std::fs::read_to_string(keys.join("audit.head")).unwrap();

    let target = tempfile::tempdir().unwrap();
    let data = target.path().join("data");
    let out = restore_to(&file, &data, &keys, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(keys.join("audit.head")).unwrap(),
        head_before
    );
    let verify = verify_data_dir(&data, &keys);
    assert!(verify.status.success(), "{}", stderr(&verify));
}

/// A backup of another history signed with the same vault key (a copy
/// restored elsewhere that then ran on its own) is refused with the
/// original keys directory even where its log is longer: the entry the
/// keys directory's head names is not in it. `--accept-rollback` takes it.
#[test]
fn a_backup_of_another_history_is_refused_with_this_keys_directory() {
    let dir = tempfile::tempdir().unwrap();
    let init = init_shares(dir.path());
    let admin = init["admin_api_key"].as_str().unwrap();
    let config = plain_http_config(dir.path());
    let server = Server::start(dir.path(), &config);
    unseal(server.addr, &init);
    let first = dir.path().join("first.backup");
    assert!(backup(server.addr, admin, &first).status.success());
    service(server.addr, admin, "here", "auditor");
    server.stop();

    // The copy: restored elsewhere, served, written to, backed up.
    let copy = tempfile::tempdir().unwrap();
    let public_key = dir.path().join("keys/audit.pub");
    let out = restore(
        &first,
        copy.path(),
        &["--public-key", public_key.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let copy_config = plain_http_config(copy.path());
    let other = Server::start(copy.path(), &copy_config);
    unseal(other.addr, &init);
    for i in 0..5 {
        service(other.addr, admin, &format!("there-{i}"), "auditor");
    }
    let second = copy.path().join("other-history.backup");
    assert!(backup(other.addr, admin, &second).status.success());
    other.stop();

    let target = tempfile::tempdir().unwrap();
    let data = target.path().join("data");
    let keys = dir.path().join("keys");
    let restore_into = |extra: &[&str]| restore_to(&second, &data, &keys, extra);
    let out = restore_into(&[]);
    assert!(!out.status.success(), "another history was restored");
    assert!(stderr(&out).contains("another history"), "{}", stderr(&out));
    assert!(
        !data.exists() || std::fs::read_dir(&data).unwrap().count() == 0,
        "a refused restore left data behind"
    );
    let out = restore_into(&["--accept-rollback"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
