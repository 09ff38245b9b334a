//! The real binary: `init`, `serve` and `dev` as API.md's command-line table
//! says, configuration precedence, key-file permissions, and logs free of
//! secrets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Output, Stdio};

use common::http;
use common::process::{
    self, free_addr, in_vault, init_shares, strongroom, terminate, verify_data_dir,
    wait_until_listening,
};
use serde_json::Value;

fn run(args: &[&str]) -> Output {
    strongroom(args).stdin(Stdio::null()).output().unwrap()
}

/// Runs the CLI, asserts that it failed, and returns what it wrote to stderr.
fn refused(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A server of the vault in `dir` whose stderr `terminate` returns.
fn serve(dir: &Path) -> (Child, SocketAddr) {
    process::serve(dir, Stdio::piped())
}

#[test]
fn init_with_shares_prints_them_once_and_refuses_a_second_init() {
    let dir = tempfile::tempdir().unwrap();
    let out = init_shares(dir.path());
    let shares = out["shares"].as_array().unwrap();
    assert_eq!(shares.len(), 5);
    assert!(
        shares
            .iter()
            .all(|s| s.as_str().unwrap().starts_with("srs1-"))
    );
    assert!(out["admin_api_key"].as_str().unwrap().starts_with("srk_"));
    let root = dir.path().join("keys/root.json");
    assert_eq!(
        std::fs::metadata(&root).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(dir.path().join("keys/audit.pub").exists());
    let again = in_vault(dir.path(), "init", &["--shares", "3", "--threshold", "2"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already initialised"));
}

#[test]
fn init_with_a_passphrase_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passphrase");
    std::fs::write(&file, "a long and private passphrase\n").unwrap();
    let args = |data: &str| {
        vec![
            "init".to_owned(),
            "--data-dir".into(),
            dir.path().join(data).to_str().unwrap().into(),
            "--keys-dir".into(),
            dir.path()
                .join(format!("{data}-keys"))
                .to_str()
                .unwrap()
                .into(),
            "--passphrase-file".into(),
            file.to_str().unwrap().into(),
            "--json".into(),
        ]
    };
    // A passphrase file others can read is refused.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = strongroom(&[]).args(args("a")).output().unwrap();
    assert!(!refused.status.success());
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = strongroom(&[]).args(args("b")).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(value["admin_api_key"].as_str().unwrap().starts_with("srk_"));
    assert!(value.get("shares").is_none());
    let root = std::fs::read_to_string(dir.path().join("b-keys/root.json")).unwrap();
    assert!(
        root.contains("\"m_kib\": 65536") && root.contains("\"t\": 3") && root.contains("\"p\": 4")
    );
    assert!(!root.contains("private passphrase"));
}

#[test]
fn serve_starts_sealed_unseals_with_shares_and_seals() {
    let dir = tempfile::tempdir().unwrap();
    let init = init_shares(dir.path());
    let admin = init["admin_api_key"].as_str().unwrap();
    let (child, addr) = serve(dir.path());
    let health = http(addr, "GET", "/v1/sys/health", None, None);
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["sealed"], true);
    assert_eq!(
        http(addr, "POST", "/v1/sys/seal", Some(admin), None).status,
        503
    );

    for (i, index) in [4usize, 0, 2].iter().enumerate() {
        let body = serde_json::json!({ "share": init["shares"][*index] }).to_string();
        let reply = http(addr, "POST", "/v1/sys/unseal", None, Some(&body));
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["progress"], if i < 2 { i + 1 } else { 0 });
    }
    let health = http(addr, "GET", "/v1/sys/health", None, None);
    assert_eq!(health.status, 200);
    assert!(health.header("x-request-id").is_some());
    assert_eq!(
        http(addr, "POST", "/v1/sys/seal", Some(admin), None).status,
        200
    );
    assert_eq!(http(addr, "GET", "/v1/sys/health", None, None).status, 503);

    let (status, log) = terminate(child);
    assert!(status.success(), "{log}");
    // No secret reaches the log.
    assert!(!log.contains(admin));
    for share in init["shares"].as_array().unwrap() {
        let share = share.as_str().unwrap();
        assert!(!log.contains(&share[22..60]), "a share reached the log");
    }
    assert!(log.contains("vault unsealed") && log.contains("vault sealed"));
}

#[test]
fn serve_refuses_a_key_file_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    init_shares(dir.path());
    let root = dir.path().join("keys/root.json");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = in_vault(dir.path(), "serve", &["--listen", &free_addr().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}

#[test]
fn configuration_file_env_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    init_shares(dir.path());
    let config = dir.path().join("strongroom.toml");
    // Unknown fields are refused.
    std::fs::write(&config, "listne = \"127.0.0.1:1\"\n").unwrap();
    let out = run(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listne"));

    // The file supplies the directories; a bad listen address in the
    // environment is overridden by the flag.
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nkeys_dir = \"{}\"\nlisten = \"not an address\"\n[tls]\ndisabled = true\n",
            dir.path().join("data").display(),
            dir.path().join("keys").display()
        ),
    )
    .unwrap();
    let addr = free_addr();
    let mut child = strongroom(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--listen",
        &addr.to_string(),
    ])
    .env("STRONGROOM_LISTEN", "also not an address")
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_until_listening(addr, &mut child);
    assert_eq!(http(addr, "GET", "/v1/sys/health", None, None).status, 503);
    let (status, stderr) = terminate(child);
    assert!(status.success(), "{status}: {stderr}");

    // Without the flag, the environment wins over the file.
    let out = strongroom(&["serve", "--config", config.to_str().unwrap()])
        .env("STRONGROOM_LISTEN", "env-address")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("env-address"));
}

/// SIGTERM the moment the port accepts connections stops the server
/// cleanly: the handler is in place before the port opens.
#[test]
fn sigterm_as_soon_as_the_port_opens_is_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    init_shares(dir.path());
    for _ in 0..5 {
        let (child, _) = serve(dir.path());
        let (status, stderr) = terminate(child);
        assert!(status.success(), "{status}: {stderr}");
    }
}

#[test]
fn dev_prints_credentials_as_json_and_serves_unsealed() {
    let (child, creds, addr) = process::dev(
        strongroom(&["dev", "--json", "--listen", "127.0.0.1:0"]),
        Stdio::piped(),
    );
    let url = creds["url"].as_str().unwrap();
    let admin = creds["admin_api_key"].as_str().unwrap();
    for key in [
        "admin_api_key",
        "second_admin_api_key",
        "payment_service_api_key",
        "auditor_api_key",
    ] {
        assert!(creds[key].as_str().unwrap().starts_with("srk_"), "{key}");
    }
    assert!(url.starts_with("http://127.0.0.1:"));
    // The console and a login for each kind of staff, to try it at once.
    assert_eq!(creds["console_url"], format!("{url}/console"));
    for (name, login) in creds["staff"].as_object().unwrap() {
        assert_eq!(login["username"], name.as_str());
        assert!(login["password"].as_str().unwrap().len() >= 32);
    }
    let mut staff: Vec<&String> = creds["staff"].as_object().unwrap().keys().collect();
    staff.sort();
    assert_eq!(staff, ["admin-staff", "approver", "audit-staff", "officer"]);
    let sign_in = http(addr, "GET", "/console/sign-in", None, None);
    assert_eq!(sign_in.status, 200);
    // Plain HTTP: the cookie cannot be Secure, and is otherwise strict.
    let cookie = sign_in.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly; SameSite=Strict; Path=/console"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "{cookie}");
    let health = http(addr, "GET", "/v1/sys/health", None, None);
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["sealed"], false);
    assert_eq!(
        http(addr, "POST", "/v1/sys/seal", Some(admin), None).status,
        200
    );
    let body = serde_json::json!({"passphrase": creds["unseal_passphrase"]}).to_string();
    assert_eq!(
        http(addr, "POST", "/v1/sys/unseal", None, Some(&body)).json()["sealed"],
        false
    );
    let (status, log) = terminate(child);
    assert!(status.success(), "{log}");
    assert!(!log.contains(admin));
    assert!(!log.contains(creds["unseal_passphrase"].as_str().unwrap()));
    // dev lets the relay reach local test processors, and says so.
    assert!(
        log.contains("relay.allow_private_destinations = true"),
        "{log}"
    );
}

#[test]
fn non_loopback_listen_is_refused_without_tls() {
    let out = run(&["dev", "--listen", "0.0.0.0:0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TLS"));
}

#[test]
fn audit_verify_and_export_after_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let init = init_shares(dir.path());
    let admin = init["admin_api_key"].as_str().unwrap();
    let (child, addr) = serve(dir.path());
    for index in [0, 1, 2] {
        let body = serde_json::json!({ "share": init["shares"][index] }).to_string();
        http(addr, "POST", "/v1/sys/unseal", None, Some(&body));
    }
    let body = r#"{"name":"svc","kind":"service","roles":["auditor"]}"#;
    assert_eq!(
        http(addr, "POST", "/v1/principals", Some(admin), Some(body)).status,
        201
    );
    assert_eq!(http(addr, "GET", "/v1/keys", Some(admin), None).status, 200);
    let (status, _) = terminate(child);
    assert!(status.success());

    let keys = dir.path().join("keys");
    let verify = in_vault(dir.path(), "audit", &[]).output().unwrap();
    assert!(!verify.status.success(), "audit needs a subcommand");
    let data = dir.path().join("data");
    let verify = verify_data_dir(&data, &keys);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let result: Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(result["ok"], true);
    // init's admin, the unseal shares, the principal, key.read.
    assert!(result["entries"].as_u64().unwrap() >= 6);

    let export = strongroom(&["audit", "export", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let file = dir.path().join("export.jsonl");
    std::fs::write(&file, &export.stdout).unwrap();
    let public_key = keys.join("audit.pub");
    let check = |file: &Path| {
        strongroom(&[
            "audit",
            "verify",
            "--file",
            file.to_str().unwrap(),
            "--public-key",
            public_key.to_str().unwrap(),
        ])
        .output()
        .unwrap()
    };
    assert!(check(&file).status.success());

    // One changed character in the export fails, naming the entry.
    let text = String::from_utf8(export.stdout.clone()).unwrap();
    // A real server records the client's address.
    assert!(text.contains("\"client\":\"127.0.0.1\""), "{text}");
    let tampered = text.replacen(
        "\"action\":\"principal.create\"",
        "\"action\":\"principal.list\"",
        2,
    );
    assert_ne!(tampered, text);
    let bad = dir.path().join("tampered.jsonl");
    std::fs::write(&bad, tampered).unwrap();
    let out = check(&bad);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed at entry"));

    // A changed byte in the data directory fails too.
    {
        let store = open_existing_store(&data);
        let (key, value) = store.scan_prefix(b"au/e/").unwrap().remove(0);
        let at = value
            .windows(14)
            .position(|w| w == b"strongroom-cli")
            .unwrap();
        let mut changed = value.clone();
        changed[at + 13] = b'j';
        store.put(&key, &changed).unwrap();
    }
    let verify = verify_data_dir(&data, &keys);
    assert!(!verify.status.success());
    assert!(String::from_utf8_lossy(&verify.stderr).contains("failed at entry"));
}

/// The store a data directory holds, with the engine found there.
fn open_existing_store(data: &Path) -> std::sync::Arc<dyn strongroom::store::Store> {
    let engine = strongroom::store::Engine::detect(data).expect("a store");
    strongroom::store::open_engine(engine, data, 64 << 20).unwrap()
}

/// What the offline commands say they expected.
const EXPECTED_LAYOUTS: &str = "expected the data directory of `strongroom init` / `serve`";

/// `audit export` and `audit verify` pointed at a directory without a store
/// (empty, missing, or a sled database no vault was initialised in) exit
/// non-zero saying what they expected, print nothing, and create nothing.
#[test]
fn offline_commands_never_create_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = dir.path().join("missing");
    let keys = dir.path().join("keys");
    for data in [&empty, &missing] {
        let data = data.to_str().unwrap();
        for args in [
            &["audit", "export", "--data-dir", data][..],
            &["audit", "verify", "--data-dir", data],
            &[
                "audit",
                "verify",
                "--data-dir",
                data,
                "--keys-dir",
                keys.to_str().unwrap(),
            ],
        ] {
            let out = run(args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} succeeded");
            assert!(out.stdout.is_empty(), "{args:?} printed something");
            assert!(
                stderr.contains(EXPECTED_LAYOUTS) && stderr.contains("dev --data-dir"),
                "{args:?}: {stderr}"
            );
        }
    }
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "an offline command created something"
    );
    assert!(!missing.exists() && !keys.exists());

    // A sled database that holds no vault (what `audit export` used to
    // leave behind) is not a Strongroom store either. (Reading it at all
    // means opening it with sled, which may write a snapshot there.)
    let foreign = dir.path().join("foreign");
    drop(strongroom::store::SledStore::open(&foreign).unwrap());
    for command in ["export", "verify"] {
        let out = run(&["audit", command, "--data-dir", foreign.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}");
        assert!(out.stdout.is_empty(), "{command}");
        assert!(
            stderr.contains("no Strongroom vault"),
            "{command}: {stderr}"
        );
    }
}

/// `dev --data-dir D` lays out `D/store` and `D/keys`: the offline commands
/// take D (or D/store) and find `keys/audit.pub` beside the store, not in
/// the working directory; without it there, the error names the flags.
#[test]
fn offline_commands_understand_the_dev_layout() {
    let dir = tempfile::tempdir().unwrap();
    let vault = dir.path().join("vault");
    let (child, creds, addr) = process::dev_in(&vault, &[], Stdio::piped());
    let card = r#"{"pan":"4242424242424242","exp_month":12,"exp_year":2031}"#;
    let key = creds["payment_service_api_key"].as_str().unwrap();
    assert_eq!(
        http(addr, "POST", "/v1/records/card", Some(key), Some(card)).status,
        201
    );
    let (status, log) = terminate(child);
    assert!(status.success(), "{log}");

    // Run from a directory with no `keys/` in it.
    let elsewhere = tempfile::tempdir().unwrap();
    let offline = |args: &[&str]| {
        strongroom(args)
            .current_dir(elsewhere.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let store = vault.join("store");
    for data in [&vault, &store] {
        let out = offline(&["audit", "verify", "--data-dir", data.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let result: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(result["ok"], true);
    }
    let export = offline(&["audit", "export", "--data-dir", vault.to_str().unwrap()]);
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let text = String::from_utf8(export.stdout).unwrap();
    assert!(
        text.lines().count() > 1 && text.contains("\"record.create\""),
        "{text}"
    );

    // Keys moved away from beside the store: say which flag to give.
    let moved = dir.path().join("moved-keys");
    std::fs::rename(vault.join("keys"), &moved).unwrap();
    let out = offline(&["audit", "verify", "--data-dir", vault.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("--keys-dir") && stderr.contains("--public-key"),
        "{stderr}"
    );
    assert!(!elsewhere.path().join("keys").exists());
    let out = offline(&[
        "audit",
        "verify",
        "--data-dir",
        vault.to_str().unwrap(),
        "--keys-dir",
        moved.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Each engine: `init` creates its store as `[store] engine` says; `serve`
/// with a configuration naming no engine (or another) opens the data
/// directory with the engine found there, unseals, and the log verifies
/// offline. So a data directory made before a change of default keeps
/// working.
#[test]
fn a_data_directory_keeps_the_engine_it_was_created_with() {
    use strongroom::store::Engine;
    for engine in Engine::ALL {
        let dir = tempfile::tempdir().unwrap();
        let create = dir.path().join("create.toml");
        std::fs::write(
            &create,
            format!("[store]\nengine = \"{}\"\n", engine.as_str()),
        )
        .unwrap();
        let out = in_vault(
            dir.path(),
            "init",
            &["--shares", "3", "--threshold", "2", "--json", "--config"],
        )
        .arg(&create)
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let init: Value = serde_json::from_slice(&out.stdout).unwrap();
        let data = dir.path().join("data");
        assert_eq!(Engine::detect(&data), Some(engine));

        // Served with the default engine configured, or each other one.
        for other in Engine::ALL {
            let config = dir.path().join("serve.toml");
            std::fs::write(
                &config,
                format!(
                    "[tls]\ndisabled = true\n[store]\nengine = \"{}\"\n",
                    other.as_str()
                ),
            )
            .unwrap();
            let (child, addr) = process::serve_with_config(dir.path(), &config, Stdio::piped());
            for share in init["shares"].as_array().unwrap().iter().take(2) {
                let body = serde_json::json!({ "share": share }).to_string();
                let reply = http(addr, "POST", "/v1/sys/unseal", None, Some(&body));
                assert_eq!(reply.status, 200, "{}", engine.as_str());
            }
            assert_eq!(http(addr, "GET", "/v1/sys/health", None, None).status, 200);
            let (status, log) = terminate(child);
            assert!(status.success(), "{log}");
            assert_eq!(
                Engine::detect(&data),
                Some(engine),
                "still {}",
                engine.as_str()
            );
        }
        let verify = verify_data_dir(&data, &dir.path().join("keys"));
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stderr)
        );
    }
}

/// `serve` pointed at a data directory without a store says so and
/// creates nothing there.
#[test]
fn serve_refuses_a_data_directory_without_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = process::plain_http_config(dir.path());
    let out = in_vault(
        dir.path(),
        "serve",
        &["--listen", "127.0.0.1:0", "--config"],
    )
    .arg(&config)
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds no Strongroom store"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&data).unwrap().count(),
        0,
        "nothing created"
    );
}

/// A configuration file in `dir` whose store is the test schema's database
/// and whose keys live in `dir/keys` (its `data_dir`, `dir/data`, must stay
/// unused).
fn postgres_config(dir: &Path, url: &str) -> std::path::PathBuf {
    let path = dir.join("pg.toml");
    let keys = dir.join("keys");
    std::fs::write(
        &path,
        format!(
            "store = {}\nkeys_dir = {}\ndata_dir = {}\n",
            toml_string(url),
            toml_string(keys.to_str().unwrap()),
            toml_string(dir.join("data").to_str().unwrap())
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[test]
fn migrate_creates_the_postgres_schema_once_and_says_what_it_did() {
    let Some(schema) = common::pg::schema() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = postgres_config(dir.path(), schema.url());
    let config = config.to_str().unwrap();
    let first = run(&["migrate", "--config", config, "--json"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let report: Value = serde_json::from_slice(&first.stdout).unwrap();
    let latest = strongroom::store::schema_version();
    assert_eq!(report["from"], 0);
    assert_eq!(report["to"], latest);
    assert_eq!(
        report["applied"].as_array().unwrap().len(),
        usize::try_from(latest).unwrap()
    );
    let again = run(&["migrate", "--config", config]);
    assert!(again.status.success());
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(text.contains("nothing to do"), "{text}");
    // The schema is there, the vault is not: serve-side offline commands
    // say so rather than creating one.
    let err = refused(&["audit", "verify", "--config", config]);
    assert!(err.contains("no Strongroom vault"), "{err}");
}

#[test]
fn migrate_refuses_an_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("embedded.toml");
    std::fs::write(&config, "[store]\nengine = \"fjall\"\n").unwrap();
    let err = refused(&["migrate", "--config", config.to_str().unwrap()]);
    assert!(err.contains("embedded"), "{err}");
}

#[test]
fn offline_audit_verify_creates_no_postgres_schema() {
    let Some(schema) = common::pg::schema() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = postgres_config(dir.path(), schema.url());
    for _ in 0..2 {
        let err = refused(&["audit", "verify", "--config", config.to_str().unwrap()]);
        assert!(err.contains("strongroom migrate"), "{err}");
    }
}

#[test]
fn init_on_postgres_then_the_offline_verifier_reads_the_chain() {
    let Some(schema) = common::pg::schema() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = postgres_config(dir.path(), schema.url());
    let config = config.to_str().unwrap();
    let passphrase = dir.path().join("passphrase");
    std::fs::write(&passphrase, "correct horse battery staple\n").unwrap();
    std::fs::set_permissions(&passphrase, std::fs::Permissions::from_mode(0o600)).unwrap();
    let init = run(&[
        "init",
        "--config",
        config,
        "--passphrase-file",
        passphrase.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    // No data directory was made: the store is the database.
    assert!(!dir.path().join("data").exists());
    let verify = run(&["audit", "verify", "--config", config]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let result: Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(result["ok"], true);
    assert!(result["entries"].as_u64().unwrap() >= 1);
    let export = run(&["audit", "export", "--config", config]);
    assert!(export.status.success());
    assert!(!export.stdout.is_empty());
    // A second init finds the vault in the database and refuses.
    let again = run(&[
        "init",
        "--config",
        config,
        "--passphrase-file",
        passphrase.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
}
