//! No credential reaches the store, the audit log or the log output. In a
//! test binary of its own: it installs the process-wide log subscriber.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use serde_json::json;
use strongroom::audit::export_store;

const STAFF_PASSWORD: &str = "staff password 123";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_credential_reaches_the_store_the_audit_log_or_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let vault = shares_vault(3, 2);
    let app = vault.app();
    let Reply {
        status: _,
        body: created,
        ..
    } = call(
        &app,
        "POST",
        "/v1/principals",
        Some(&vault.admin_api_key),
        Some(json!({"name": "svc", "kind": "service", "roles": ["auditor"]})),
    )
    .await;
    let service_key = created["api_key"].as_str().unwrap().to_owned();
    call(&app, "POST", "/v1/principals", Some(&vault.admin_api_key), Some(json!({"name": "frank", "kind": "staff", "roles": ["auditor"], "password": STAFF_PASSWORD}))).await;
    let Reply {
        status: _,
        body: session,
        ..
    } = call(
        &app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"username": "frank", "password": STAFF_PASSWORD})),
    )
    .await;
    let token = session["token"].as_str().unwrap().to_owned();
    // A password typed into the username field.
    let typed_as_username = "Hunter2-typed-in-the-wrong-box";
    call(
        &app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"username": typed_as_username, "password": "x"})),
    )
    .await;
    call(
        &app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"username": "frank", "password": "frank's wrong password"})),
    )
    .await;
    assert_eq!(
        call(&app, "GET", "/v1/audit", Some(&token), None)
            .await
            .status,
        200
    );
    assert_eq!(
        call(&app, "GET", "/v1/audit", Some(&service_key), None)
            .await
            .status,
        200
    );
    call(&app, "POST", "/v1/auth/logout", Some(&token), None).await;
    vault.state.seal();
    vault.store.flush().unwrap();

    let secrets = [
        vault.admin_api_key.as_str(),
        service_key.as_str(),
        token.as_str(),
        STAFF_PASSWORD,
        typed_as_username,
        &typed_as_username.to_lowercase(),
        "frank's wrong password",
    ];
    let dirs = [vault.data_dir(), vault.keys_dir()];
    let dirs: Vec<&std::path::Path> = dirs.iter().map(|d| d.as_path()).collect();
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("request"),
        "the log capture saw nothing: {} bytes: {log}",
        log.len()
    );
    let mut export = Vec::new();
    export_store(vault.store.as_ref(), &mut export).unwrap();
    let export = String::from_utf8(export).unwrap();
    assert!(export.contains("auth.login_failed"));
    for secret in secrets {
        assert!(
            files_containing(&dirs, secret.as_bytes()).is_empty(),
            "{secret:?} is on disk"
        );
        assert!(!log.contains(secret), "{secret:?} is in the log");
        assert!(!export.contains(secret), "{secret:?} is in the audit log");
    }
}
