//! Crash safety with the real binary: 8 clients write cards through the
//! API, the server is killed with SIGKILL mid-stream, restarted and
//! unsealed; every acknowledged write reads back and the audit log
//! verifies. Five rounds on one vault.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{init_shares, serve, terminate, verify_data_dir};
use common::{http, try_http};
use serde_json::{Value, json};

/// The server of the vault in `dir`, unsealed with three of `shares`.
fn start(dir: &Path, shares: &[Value]) -> (Child, SocketAddr) {
    let (child, addr) = serve(dir, Stdio::null());
    for share in &shares[..3] {
        let body = json!({ "share": share }).to_string();
        assert_eq!(
            http(addr, "POST", "/v1/sys/unseal", None, Some(&body)).status,
            200
        );
    }
    assert_eq!(http(addr, "GET", "/v1/sys/health", None, None).status, 200);
    (child, addr)
}

/// Stops the server cleanly (SIGTERM, exit 0).
fn stop(child: Child) {
    let (status, _) = terminate(child);
    assert!(status.success(), "{status}");
}

/// Eight clients store cards until at least `at_least` more are
/// acknowledged, then the server is killed with SIGKILL under them.
fn write_then_kill(
    mut child: Child,
    addr: SocketAddr,
    key: &str,
    acked: &Arc<Mutex<Vec<String>>>,
    at_least: usize,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let before = acked.lock().unwrap().len();
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (stop, acked, key) = (Arc::clone(&stop), Arc::clone(acked), key.to_owned());
            std::thread::spawn(move || {
                let card = json!({"pan": "4242424242424242", "exp_month": 12, "exp_year": 2031})
                    .to_string();
                while !stop.load(Ordering::Relaxed) {
                    // Refused, cut off or unanswered requests were not acknowledged.
                    if let Ok(reply) =
                        try_http(addr, "POST", "/v1/records/card", Some(&key), Some(&card))
                        && reply.status == 201
                    {
                        acked
                            .lock()
                            .unwrap()
                            .push(reply.json()["id"].as_str().unwrap().to_owned());
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < before + at_least && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let total = acked.lock().unwrap().len();
    assert!(
        total >= before + at_least,
        "only {} writes acknowledged",
        total - before
    );
}

#[test]
fn acknowledged_api_writes_survive_kill_9_five_times() {
    let dir = tempfile::tempdir().unwrap();
    let init = init_shares(dir.path());
    let shares = init["shares"].as_array().unwrap().clone();
    let admin = init["admin_api_key"].as_str().unwrap().to_owned();

    let (child, addr) = start(dir.path(), &shares);
    let body = r#"{"name":"payments","kind":"service","roles":["payment_service"]}"#;
    let payments = http(addr, "POST", "/v1/principals", Some(&admin), Some(body)).json()["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut running = Some((child, addr));
    for round in 0..5 {
        let (child, addr) = running.take().unwrap();
        write_then_kill(child, addr, &payments, &acked, 200);

        // Restart, unseal, and read every acknowledged write back.
        let (child, addr) = start(dir.path(), &shares);
        let written = acked.lock().unwrap().clone();
        for id in &written {
            let reply = http(
                addr,
                "GET",
                &format!("/v1/records/{id}"),
                Some(&payments),
                None,
            );
            assert_eq!(reply.status, 200, "round {round}: acknowledged {id} lost");
            assert_eq!(reply.json()["last4"], "4242");
        }
        // The chain holds across the crash (the unseal signed its tail).
        let verify = http(addr, "GET", "/v1/audit/verify", Some(&admin), None).json();
        assert_eq!(verify["ok"], true, "round {round}: {verify}");
        stop(child);
        let offline = verify_data_dir(&dir.path().join("data"), &dir.path().join("keys"));
        assert!(
            offline.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&offline.stderr)
        );
        running = Some(start(dir.path(), &shares));
    }
    if let Some((child, _)) = running {
        stop(child);
    }
    assert!(acked.lock().unwrap().len() >= 1000);
}
