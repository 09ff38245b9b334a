//! Relay overhead (PAYMENT-PATH.md "How fast"): the same charge request
//! sent (a) through the vault's relay, with placeholders, and (b) straight
//! to the same local HTTPS processor with the real values, same
//! connections, same run. Reports req/s, p50/p99 and the ratio relay/direct
//! (goal ≥ 0.5).
//!
//! `cargo bench --bench relay -- [--connections 64] [--seconds 10] [--json FILE]`
//!
//! It starts `strongroom dev` (which allows private relay destinations) on
//! a free loopback port and the test processor (tests/common/processor.rs)
//! on another, then through the HTTP API: creates a second admin, stores a
//! card, creates a route to the processor with the processor's CA as
//! `ca_pem`, approves it as the second admin, and drives
//! `POST /v1/relay/bench/charges`. Under `cargo test` it runs each side for
//! a moment as a smoke test.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../tests/common/processor.rs"]
mod processor;
#[path = "../tests/common/tls.rs"]
mod tls;

mod measure;

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;

use serde_json::{Value, json};

use measure::{Outcome, arg};
use processor::{Behaviour, TestProcessor};

type Call = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

async fn run(name: &'static str, call: Call, connections: usize, seconds: f64) -> Outcome {
    measure::drive(name, move || call(), connections, seconds).await
}

/// One JSON call to the vault; the status and the parsed body.
async fn api(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method, url).bearer_auth(key);
    if let Some(body) = body {
        request = request.json_body(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

trait JsonBody {
    fn json_body(self, body: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, body: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(body.to_string())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = !args.iter().any(|a| a == "--bench");
    let connections: usize =
        arg(&args, "--connections").map_or(if quick { 4 } else { 64 }, |v| v.parse().unwrap());
    let seconds: f64 =
        arg(&args, "--seconds").map_or(if quick { 0.3 } else { 10.0 }, |v| v.parse().unwrap());

    let mut server = Command::new(env!("CARGO_BIN_EXE_strongroom"))
        .args(["dev", "--json", "--listen", "127.0.0.1:0"])
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
    let base = creds["url"].as_str().unwrap().to_owned();
    let admin = creds["admin_api_key"].as_str().unwrap().to_owned();
    let payments = creds["payment_service_api_key"]
        .as_str()
        .unwrap()
        .to_owned();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ca = tls::TestCa::new("bench processor CA");
    let stub = rt.block_on(TestProcessor::start(&ca, Behaviour::Charge));
    // Plain HTTP to the dev server (loopback); HTTPS to the processor,
    // trusting only its CA. Both keep up to `connections` idle connections.
    let vault = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap();
    let direct = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap();

    let card = json!({"pan": "4242424242424242", "exp_month": 12, "exp_year": 2031, "holder_name": "Ada Lovelace"});
    let setup = rt.block_on(async {
        let post = reqwest::Method::POST;
        let (status, second) = api(
            &vault,
            post.clone(),
            format!("{base}/v1/principals"),
            &admin,
            Some(json!({"name": "second-admin", "kind": "service", "roles": ["admin"]})),
        )
        .await;
        assert_eq!(status, 201, "second admin: {second}");
        let second = second["api_key"].as_str().unwrap().to_owned();
        let (status, stored) = api(
            &vault,
            post.clone(),
            format!("{base}/v1/records/card"),
            &payments,
            Some(card.clone()),
        )
        .await;
        assert_eq!(status, 201, "card: {stored}");
        let token = stored["token"].as_str().unwrap().to_owned();
        let route = json!({
            "name": "bench",
            "base_url": stub.url(),
            "methods": ["POST"],
            "fields": ["pan", "exp_month", "exp_year"],
            "ca_pem": stub.ca_pem(),
            "headers": {"authorization": "Bearer sk_bench_processor"},
            "timeout_ms": 10000,
        });
        let (status, created) = api(
            &vault,
            post.clone(),
            format!("{base}/v1/relay/routes"),
            &admin,
            Some(route),
        )
        .await;
        if status == 404 || status == 405 {
            return None;
        }
        assert_eq!(status, 201, "route: {created}");
        let (status, approved) = api(
            &vault,
            post,
            format!("{base}/v1/relay/routes/bench/approve"),
            &second,
            None,
        )
        .await;
        assert_eq!(status, 200, "approve: {approved}");
        Some(token)
    });
    let Some(token) = setup else {
        let _ = server.kill();
        let _ = server.wait();
        eprintln!(
            "relay bench: this build has no relay routes (POST /v1/relay/routes is 404); nothing measured"
        );
        assert!(
            std::env::var_os("STRONGROOM_REQUIRE_RELAY").is_none(),
            "STRONGROOM_REQUIRE_RELAY is set and the relay routes are missing"
        );
        return;
    };

    let charge = |number: &str, month: &str, year: &str| {
        json!({
            "amount": 1999,
            "currency": "eur",
            "description": "bench order 42",
            "card": {"number": number, "exp_month": month, "exp_year": year},
        })
        .to_string()
    };
    let relayed = Arc::new(charge(
        &format!("{{{{{token}:pan}}}}"),
        &format!("{{{{{token}:exp_month}}}}"),
        &format!("{{{{{token}:exp_year}}}}"),
    ));
    let plain = Arc::new(charge("4242424242424242", "12", "2031"));
    let relay_url = Arc::new(format!("{base}/v1/relay/bench/charges"));
    let direct_url = Arc::new(format!("{}/charges", stub.url()));
    let payments = Arc::new(payments);

    let via_relay: Call = {
        let (client, url, body, key) = (vault.clone(), relay_url, relayed, payments);
        Arc::new(move || {
            let (client, url, body, key) = (
                client.clone(),
                Arc::clone(&url),
                Arc::clone(&body),
                Arc::clone(&key),
            );
            Box::pin(async move {
                match client
                    .post(url.as_str())
                    .bearer_auth(key.as_str())
                    .header("content-type", "application/json")
                    .body(body.as_str().to_owned())
                    .send()
                    .await
                {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            })
        })
    };
    let straight: Call = {
        let (client, url, body) = (direct.clone(), direct_url, plain);
        Arc::new(move || {
            let (client, url, body) = (client.clone(), Arc::clone(&url), Arc::clone(&body));
            Box::pin(async move {
                match client
                    .post(url.as_str())
                    .bearer_auth("sk_bench_processor")
                    .header("content-type", "application/json")
                    .body(body.as_str().to_owned())
                    .send()
                    .await
                {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            })
        })
    };
    // Direct first, then relay, then direct again: the two direct runs
    // show how steady the machine was.
    let outcomes = vec![
        rt.block_on(run(
            "direct to processor",
            Arc::clone(&straight),
            connections,
            seconds,
        )),
        rt.block_on(run("via relay", via_relay, connections, seconds)),
        rt.block_on(run(
            "direct to processor (again)",
            straight,
            connections,
            seconds,
        )),
    ];
    let _ = server.kill();
    let _ = server.wait();

    let direct_rate = (outcomes[0].rate() + outcomes[2].rate()) / 2.0;
    let ratio = outcomes[1].rate() / direct_rate.max(f64::MIN_POSITIVE);
    println!(
        "{connections} connections, {seconds} s per run, vault, processor and load on this machine"
    );
    println!(
        "{:<30} {:>10} {:>9} {:>9} {:>7}",
        "run", "req/s", "p50 ms", "p99 ms", "errors"
    );
    let mut rows = Vec::new();
    for o in &outcomes {
        println!(
            "{:<30} {:>10.0} {:>9.2} {:>9.2} {:>7}",
            o.name,
            o.rate(),
            o.percentile(0.50),
            o.percentile(0.99),
            o.errors
        );
        rows.push(json!({
            "run": o.name, "requests": o.requests, "errors": o.errors, "req_per_s": o.rate(),
            "p50_ms": o.percentile(0.50), "p99_ms": o.percentile(0.99),
        }));
    }
    println!("relay / direct: {ratio:.2} (goal ≥ 0.5)");
    let report = json!({"connections": connections, "seconds": seconds, "results": rows, "relay_over_direct": ratio});
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
            "a run made no successful request"
        );
        assert!(stub.count() > 0);
    }
}
