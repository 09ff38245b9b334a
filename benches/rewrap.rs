//! The rewrap under load (issue 14's Show; docs/lifecycle.md):
//!
//! `cargo bench --bench rewrap -- [--records 100000] [--connections 16] [--seconds 10]`
//!
//! starts `strongroom dev` (release build) in a temporary directory, stores
//! `--records` cards, measures the request latency of detokenize and
//! store-card idle, rotates the card KEK and starts a rewrap, measures the
//! same again while it runs (and that its progress moves), kills the server
//! with SIGKILL part-way, starts it again (`serve` over the same
//! directories), unseals it, follows the job to its end (it must go on from
//! where it was, not from zero), destroys the old card KEK version and
//! reads every card back. Prints a table and one JSON line. Under
//! `cargo test` it does the same with a few hundred records as a smoke test,
//! except that it does not wait out the destroy grace (60 s): its destroy
//! must be refused within it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod http;
mod measure;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use http::{HttpClient, Scenario, send};
use measure::{Outcome, arg};

fn scenario(
    name: &'static str,
    method: hyper::Method,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> Scenario {
    Scenario {
        name,
        method,
        path: path.to_owned(),
        bearer: Some(bearer.to_owned()),
        body: body.map(|b| b.to_string()),
    }
}

async fn call(client: &HttpClient, base: &str, s: &Scenario) -> (u16, Value) {
    let (status, body) = send(client, base, s).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A distinct Luhn-valid 16-digit card number for `n`.
fn pan(n: u64) -> String {
    let body = format!("4{n:014}");
    let sum: u32 = body
        .chars()
        .rev()
        .enumerate()
        .map(|(i, c)| {
            let d = c.to_digit(10).unwrap();
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

fn serve(dir: &std::path::Path, config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_strongroom"))
        .args([
            "serve",
            "--data-dir",
            dir.join("store").to_str().unwrap(),
            "--keys-dir",
            dir.join("keys").to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ])
        .env("STRONGROOM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("serve.log")).unwrap())
        .spawn()
        .unwrap()
}

/// Runs `scenarios` one after the other for `seconds` each.
async fn measure_all(
    client: &HttpClient,
    base: &str,
    scenarios: &[Scenario],
    connections: usize,
    seconds: f64,
) -> Vec<Outcome> {
    let mut out = Vec::new();
    for s in scenarios {
        let name = s.name;
        let (client, base, s) = (client.clone(), Arc::new(base.to_owned()), s.clone());
        let call = move || {
            let (client, base, s) = (client.clone(), Arc::clone(&base), s.clone());
            async move { matches!(send(&client, &base, &s).await, Ok((status, _)) if status < 300) }
        };
        out.push(measure::drive(name, call, connections, seconds).await);
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = !args.iter().any(|a| a == "--bench");
    let records: u64 =
        arg(&args, "--records").map_or(if quick { 300 } else { 100_000 }, |v| v.parse().unwrap());
    let connections: usize =
        arg(&args, "--connections").map_or(if quick { 4 } else { 16 }, |v| v.parse().unwrap());
    let seconds: f64 =
        arg(&args, "--seconds").map_or(if quick { 0.5 } else { 10.0 }, |v| v.parse().unwrap());
    // A smoke test's job must still be running while it is measured and
    // killed: small batches, a small duty.
    // A full run measures the defaults ([keys] rewrap_batch 100,
    // rewrap_duty_percent 10).
    let pace = if quick {
        "rewrap_batch = 20\nrewrap_duty_percent = 2\n"
    } else {
        ""
    };
    let batch: u64 = if quick { 20 } else { 100 };

    let dir = tempfile::tempdir().unwrap();
    let vault = dir.path().join("vault");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("rewrap.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\n[tls]\ndisabled = true\n[keys]\n{pace}destroy_grace_seconds = 60\n"
        ),
    )
    .unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_strongroom"))
        .args([
            "dev",
            "--json",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            vault.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ])
        .env("STRONGROOM_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let creds: Value = serde_json::from_str(&line).unwrap();
    let base = creds["url"]
        .as_str()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let payments = creds["payment_service_api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin = creds["admin_api_key"].as_str().unwrap().to_owned();
    let passphrase = creds["unseal_passphrase"].as_str().unwrap().to_owned();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections.max(64))
        .build_http();
    let post = |name, path: &str, bearer: &str, body: Value| {
        scenario(name, hyper::Method::POST, path, bearer, Some(body))
    };

    // The records.
    eprintln!("rewrap bench: storing the cards");
    let started = Instant::now();
    let (ids, token) = rt.block_on(async {
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (client, base, payments, next) =
                    (client.clone(), base.clone(), payments.clone(), Arc::clone(&next));
                tokio::spawn(async move {
                    let mut made = Vec::new();
                    loop {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if n >= records {
                            return made;
                        }
                        let card = json!({"pan": pan(n), "exp_month": 12, "exp_year": 2031, "holder_name": "Ada Lovelace"});
                        let (status, body) = call(&client, &base, &scenario("setup", hyper::Method::POST, "/v1/records/card", &payments, Some(card))).await;
                        assert_eq!(status, 201, "{body}");
                        made.push((body["id"].as_str().unwrap().to_owned(), body["token"].as_str().unwrap().to_owned()));
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let token = all[0].1.clone();
        (all.into_iter().map(|(id, _)| id).collect::<Vec<_>>(), token)
    });
    let fill_seconds = started.elapsed().as_secs_f64();
    let card = json!({"pan": "4242424242424242", "exp_month": 12, "exp_year": 2031, "holder_name": "Ada Lovelace"});
    let load = vec![
        post(
            "detokenize, 1 token",
            "/v1/tokens/detokenize",
            &payments,
            json!({"tokens": [token]}),
        ),
        post("POST /v1/records/card", "/v1/records/card", &payments, card),
    ];

    // Idle.
    eprintln!("rewrap bench: measuring idle");
    let idle = rt.block_on(measure_all(&client, &base, &load, connections, seconds));

    // Rotate, start the rewrap, measure while it runs.
    eprintln!("rewrap bench: rotating and rewrapping under load");
    let get = |path: &str| scenario("get", hyper::Method::GET, path, &admin, None);
    let progress = |client: &HttpClient, base: &str| {
        rt.block_on(call(client, base, &get("/v1/keys/rewrap"))).1
    };
    let (status, _) = rt.block_on(call(
        &client,
        &base,
        &post("rotate", "/v1/keys/card/rotate", &admin, json!({})),
    ));
    let rotated = Instant::now();
    assert_eq!(status, 200);
    let (status, body) = rt.block_on(call(
        &client,
        &base,
        &post("rewrap", "/v1/keys/rewrap", &admin, json!({})),
    ));
    assert_eq!(status, 202, "{body}");
    std::thread::sleep(Duration::from_secs(if quick { 1 } else { 3 }));
    let before = progress(&client, &base);
    let during = rt.block_on(measure_all(&client, &base, &load, connections, seconds));
    let after = progress(&client, &base);
    let moved = after["done"].as_u64().unwrap() > before["done"].as_u64().unwrap();
    let still_running = after["state"] == "running";

    // SIGKILL part-way, start again, unseal, follow to the end.
    eprintln!("rewrap bench: killing and restarting the server");
    let done_at_kill = progress(&client, &base)["done"].as_u64().unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    let mut server = serve(&vault, &config);
    rt.block_on(async {
        // Opening a store killed mid-write replays its journal first.
        for _ in 0..6000 {
            // Any answer will do: it is sealed (503) until unsealed below.
            if send(
                &client,
                &base,
                &Scenario {
                    name: "health",
                    method: hyper::Method::GET,
                    path: "/v1/sys/health".into(),
                    bearer: None,
                    body: None,
                },
            )
            .await
            .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the restarted server does not answer: {}",
            std::fs::read_to_string(vault.join("serve.log")).unwrap_or_default()
        );
    });
    let (status, body) = rt.block_on(call(
        &client,
        &base,
        &Scenario {
            name: "unseal",
            method: hyper::Method::POST,
            path: "/v1/sys/unseal".into(),
            bearer: None,
            body: Some(json!({"passphrase": passphrase}).to_string()),
        },
    ));
    assert_eq!(status, 200, "{body}");
    eprintln!("rewrap bench: unsealed; following the job");
    let resumed_at = Instant::now();
    let mut first_after_restart = None;
    let finished = loop {
        let p = progress(&client, &base);
        if first_after_restart.is_none() && p["done"].as_u64().unwrap_or(0) > 0 {
            first_after_restart = Some(p["done"].as_u64().unwrap());
        }
        if p["state"] == "finished" {
            break p;
        }
        assert!(
            resumed_at.elapsed() < Duration::from_secs(3600),
            "the rewrap does not end: {p}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let finish_seconds = resumed_at.elapsed().as_secs_f64();
    let resumed = first_after_restart.unwrap_or(0) >= done_at_kill.saturating_sub(batch);
    let total = finished["done"].as_u64().unwrap();

    // The old version goes; every card still opens.
    eprintln!("rewrap bench: destroying the old version, reading every card");
    // The destroy grace (60 s, the least a configuration may set): writes
    // that took the old version before the rotation have landed. A smoke
    // test does not wait it out: within it the destroy is refused, and a
    // full run destroys.
    let wait_out = !quick || rotated.elapsed() >= Duration::from_secs(55);
    if wait_out {
        std::thread::sleep(Duration::from_secs(61).saturating_sub(rotated.elapsed()));
    }
    let (status, body) = rt.block_on(call(
        &client,
        &base,
        &scenario(
            "destroy",
            hyper::Method::DELETE,
            "/v1/keys/card/versions/1",
            &admin,
            None,
        ),
    ));
    let destroyed = status == 204;
    if wait_out {
        assert!(destroyed, "{status} {body}");
    } else {
        assert_eq!(status, 409, "within the destroy grace: {body}");
    }
    let opened = rt.block_on(async {
        let ids = Arc::new(ids);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (client, base, payments, ids, next) = (
                    client.clone(),
                    base.clone(),
                    payments.clone(),
                    Arc::clone(&ids),
                    Arc::clone(&next),
                );
                tokio::spawn(async move {
                    let mut ok = 0u64;
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(id) = ids.get(i) else { return ok };
                        let (status, body) = call(
                            &client,
                            &base,
                            &scenario(
                                "read",
                                hyper::Method::GET,
                                &format!("/v1/records/{id}"),
                                &payments,
                                None,
                            ),
                        )
                        .await;
                        if status == 200 && body["holder_name"] == "A. L." {
                            ok += 1;
                        }
                    }
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += t.await.unwrap();
        }
        ok
    });
    let _ = server.kill();
    let _ = server.wait();

    println!(
        "{records} cards stored in {fill_seconds:.1} s; {connections} connections, {seconds} s per scenario; server and load tool on this machine"
    );
    println!(
        "{:<24} {:>10} {:>9} {:>9} {:>10} {:>9} {:>9}",
        "scenario", "idle req/s", "idle p99", "req/s", "p99 (rw)", "p99 ×", "errors"
    );
    let mut rows = Vec::new();
    for (i, d) in idle.iter().zip(&during) {
        let ratio = d.percentile(0.99) / i.percentile(0.99).max(f64::MIN_POSITIVE);
        println!(
            "{:<24} {:>10.0} {:>9.2} {:>9.0} {:>10.2} {:>9.2} {:>9}",
            i.name,
            i.rate(),
            i.percentile(0.99),
            d.rate(),
            d.percentile(0.99),
            ratio,
            i.errors + d.errors
        );
        rows.push(json!({"scenario": i.name, "idle_req_per_s": i.rate(), "idle_p99_ms": i.percentile(0.99),
            "rewrap_req_per_s": d.rate(), "rewrap_p99_ms": d.percentile(0.99), "p99_ratio": ratio, "errors": i.errors + d.errors}));
    }
    println!(
        "progress moved under load: {moved} ({} → {} of {}; still running: {still_running}); killed at {done_at_kill}, first seen after restart {:?} (resumed: {resumed}); finished {total} read, {} rewrapped, {} unreadable, {finish_seconds:.1} s after the unseal; card v1 destroyed: {}; cards that open: {opened} of {records}",
        before["done"],
        after["done"],
        total,
        first_after_restart,
        finished["rewrapped"],
        finished["failed"],
        destroyed
    );
    println!(
        "{}",
        json!({"records": records, "connections": connections, "seconds": seconds, "results": rows,
        "progress_moved": moved, "killed_at": done_at_kill, "first_after_restart": first_after_restart, "resumed": resumed,
        "read": total, "rewrapped": finished["rewrapped"], "failed": finished["failed"], "destroyed": destroyed, "opened": opened})
    );
    assert!(moved, "the rewrap's progress did not move under load");
    assert!(resumed, "the rewrap started again from the beginning");
    assert_eq!(finished["failed"], 0);
    assert_eq!(opened, records, "cards that no longer open");
}
