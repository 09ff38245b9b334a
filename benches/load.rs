//! The load tool: drives a Strongroom server over HTTP with C concurrent
//! connections for T seconds per scenario and reports req/s, p50/p99/p99.9
//! latency and errors, as a table and as JSON.
//!
//! `cargo bench --bench load -- [--connections 64] [--seconds 10] [--json FILE]`
//! starts `strongroom dev` (release build) on a free loopback port, takes its
//! credentials, and runs: health, store-card, detokenize with 1 and with 100
//! tokens, and reveal. `--only detokenize,reveal` runs the scenarios whose
//! names contain one of the words (health always runs: it is the ratio's
//! base). `--target FILE` drives a server that is already running instead:
//! FILE holds the JSON line `strongroom dev --json` printed (that server's
//! credentials: a throw-away dev server only). `--postgres URL --nodes N`
//! runs N `serve` nodes over a fresh schema of that PostgreSQL database
//! instead of one dev server, unseals each, and spreads the requests over
//! them in turn (the schema is dropped at the end). Under
//! `cargo test` it runs each scenario for a moment as a smoke test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod cluster;
mod http;
mod measure;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use http::{HttpClient, Scenario, send};
use measure::{Outcome, arg};

/// The servers under test: requests go to each in turn.
struct Bases {
    urls: Vec<String>,
    next: AtomicUsize,
}

impl Bases {
    fn next(&self) -> &str {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.urls.len();
        &self.urls[i]
    }
}

async fn run(
    client: HttpClient,
    bases: Arc<Bases>,
    s: Scenario,
    connections: usize,
    seconds: f64,
) -> Outcome {
    let name = s.name;
    let call = move || {
        let (client, bases, s) = (client.clone(), Arc::clone(&bases), s.clone());
        async move {
            let base = bases.next();
            matches!(send(&client, base, &s).await, Ok((status, _)) if status < 300)
        }
    };
    measure::drive(name, call, connections, seconds).await
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = !args.iter().any(|a| a == "--bench");
    let connections: usize =
        arg(&args, "--connections").map_or(if quick { 4 } else { 64 }, |v| v.parse().unwrap());
    let seconds: f64 =
        arg(&args, "--seconds").map_or(if quick { 0.3 } else { 10.0 }, |v| v.parse().unwrap());

    // Either a running server, named by the JSON that `strongroom dev --json`
    // printed, nodes over PostgreSQL, or a dev server of our own with the
    // reveal limit lifted.
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = None;
    let (mut server, creds): (Option<std::process::Child>, Value) =
        match (arg(&args, "--target"), arg(&args, "--postgres")) {
            (Some(file), _) => (
                None,
                serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap(),
            ),
            (None, Some(url)) => {
                let nodes = arg(&args, "--nodes").map_or(1, |n| n.parse().unwrap());
                let started = cluster::Cluster::start(&url, nodes, dir.path());
                let creds = started.credentials.clone();
                cluster = Some(started);
                (None, creds)
            }
            (None, None) => {
                let config = dir.path().join("load.toml");
                // `--engine NAME`: the store engine of the dev server's new data
                // directory (default: the configured default).
                let engine = arg(&args, "--engine")
                    .map(|e| format!("[store]\nengine = \"{e}\"\n"))
                    .unwrap_or_default();
                std::fs::write(&config, format!("reveals_per_hour = 1000000\n{engine}")).unwrap();
                let mut child = Command::new(env!("CARGO_BIN_EXE_strongroom"))
                    .args([
                        "dev",
                        "--json",
                        "--listen",
                        "127.0.0.1:0",
                        "--config",
                        config.to_str().unwrap(),
                    ])
                    .env("STRONGROOM_LOG", "warn")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let mut line = String::new();
                BufReader::new(child.stdout.take().unwrap())
                    .read_line(&mut line)
                    .unwrap();
                (Some(child), serde_json::from_str(&line).unwrap())
            }
        };
    let urls: Vec<String> = match creds["urls"].as_array() {
        Some(urls) => urls
            .iter()
            .map(|u| u.as_str().unwrap().to_owned())
            .collect(),
        None => vec![creds["url"].as_str().unwrap().to_owned()],
    };
    let nodes = urls.len();
    let base = Arc::new(urls[0].clone());
    let bases = Arc::new(Bases {
        urls,
        next: AtomicUsize::new(0),
    });
    let payments = creds["payment_service_api_key"]
        .as_str()
        .unwrap()
        .to_owned();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections)
        .build_http();
    let post = |name, path: &str, bearer: &str, body: Value| Scenario {
        name,
        method: hyper::Method::POST,
        path: path.to_owned(),
        bearer: Some(bearer.to_owned()),
        body: Some(body.to_string()),
    };
    let card = json!({"pan": "4242424242424242", "exp_month": 12, "exp_year": 2031, "holder_name": "Ada Lovelace"});
    let (tokens, card_id, officer) = rt.block_on(async {
        let mut tokens = Vec::new();
        let mut id = String::new();
        for _ in 0..100 {
            let (_, body) = send(
                &client,
                &base,
                &post("setup", "/v1/records/card", &payments, card.clone()),
            )
            .await
            .unwrap();
            let v: Value = serde_json::from_slice(&body).unwrap();
            tokens.push(v["token"].as_str().unwrap().to_owned());
            id = v["id"].as_str().unwrap().to_owned();
        }
        let officer = &creds["staff"]["officer"];
        let login = json!({"username": officer["username"], "password": officer["password"]});
        let (_, body) = send(
            &client,
            &base,
            &Scenario {
                name: "login",
                method: hyper::Method::POST,
                path: "/v1/auth/login".into(),
                bearer: None,
                body: Some(login.to_string()),
            },
        )
        .await
        .unwrap();
        let token = serde_json::from_slice::<Value>(&body).unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned();
        (tokens, id, token)
    });
    let scenarios = vec![
        Scenario {
            name: "GET /v1/sys/health",
            method: hyper::Method::GET,
            path: "/v1/sys/health".into(),
            bearer: None,
            body: None,
        },
        post(
            "POST /v1/records/card",
            "/v1/records/card",
            &payments,
            card.clone(),
        ),
        post(
            "detokenize, 1 token",
            "/v1/tokens/detokenize",
            &payments,
            json!({"tokens": [tokens[0]]}),
        ),
        post(
            "detokenize, 100 tokens",
            "/v1/tokens/detokenize",
            &payments,
            json!({"tokens": tokens}),
        ),
        post(
            "POST /v1/records/{id}/reveal",
            &format!("/v1/records/{card_id}/reveal"),
            &officer,
            json!({"fields": ["exp_month", "holder_name"], "reason": "load test", "ticket": "LOAD-1"}),
        ),
    ];
    // `--only a,b`: run the scenarios whose names contain one of these; the
    // health scenario always runs, as the ratio's base.
    let only: Option<Vec<String>> =
        arg(&args, "--only").map(|v| v.split(',').map(str::to_owned).collect());
    let outcomes: Vec<Outcome> = scenarios
        .into_iter()
        .enumerate()
        .filter(|(i, s)| {
            *i == 0
                || only
                    .as_ref()
                    .is_none_or(|o| o.iter().any(|w| s.name.contains(w.as_str())))
        })
        .map(|(_, s)| s)
        .map(|s| {
            rt.block_on(run(
                client.clone(),
                Arc::clone(&bases),
                s,
                connections,
                seconds,
            ))
        })
        .collect();
    if let Some(server) = server.as_mut() {
        let _ = server.kill();
        let _ = server.wait();
    }
    drop(cluster);

    let health = outcomes[0].rate().max(f64::MIN_POSITIVE);
    println!(
        "{connections} connections, {seconds} s per scenario, {nodes} node(s), servers and load tool on this machine"
    );
    println!(
        "{:<32} {:>10} {:>9} {:>9} {:>9} {:>7} {:>9}",
        "scenario", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "/health"
    );
    let mut rows = Vec::new();
    for o in &outcomes {
        println!(
            "{:<32} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>7} {:>8.0}%",
            o.name,
            o.rate(),
            o.percentile(0.50),
            o.percentile(0.99),
            o.percentile(0.999),
            o.errors,
            100.0 * o.rate() / health
        );
        rows.push(json!({
            "scenario": o.name, "requests": o.requests, "errors": o.errors, "req_per_s": o.rate(),
            "p50_ms": o.percentile(0.50), "p99_ms": o.percentile(0.99), "p999_ms": o.percentile(0.999),
            "ratio_to_health": o.rate() / health,
        }));
    }
    let report =
        json!({"connections": connections, "seconds": seconds, "nodes": nodes, "results": rows});
    if let Some(path) = arg(&args, "--json") {
        std::fs::File::create(path)
            .unwrap()
            .write_all(report.to_string().as_bytes())
            .unwrap();
    } else {
        println!("{report}");
    }
    if quick {
        assert!(
            outcomes.iter().all(|o| o.requests > 0),
            "a scenario made no successful request"
        );
    }
}
