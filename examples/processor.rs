//! A stub payment processor for trying the relay by hand
//! (docs/payment-path.md, "Try it"). A TEST STUB: it serves HTTPS on
//! 127.0.0.1 with a certificate from a throw-away CA made at start, answers
//! every request `200 {"id":"ch_<n>","status":"succeeded"}` (or, with
//! `--echo`, a 402 that echoes the request body, as careless processors
//! do, to see the relay mask it), and PRINTS EVERY REQUEST IT RECEIVES,
//! card numbers included: that is its purpose. Never point real card data
//! at it.
//!
//! `cargo run --example processor -- [--port 9443] [--ca-out processor-ca.pem] [--echo]`
//!
//! It prints its URL and writes the CA certificate (PEM) to `--ca-out`, for
//! the route's `ca_pem`. The same server is the tests' `TestProcessor`
//! (tests/common/processor.rs, included here by path).
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

use std::net::SocketAddr;
use std::time::Duration;

use processor::{Behaviour, TestProcessor};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = arg(&args, "--port").map_or(0, |p| p.parse().expect("--port takes a number"));
    let ca_out = arg(&args, "--ca-out").unwrap_or_else(|| "processor-ca.pem".to_owned());
    let behaviour = if args.iter().any(|a| a == "--echo") {
        Behaviour::EchoError
    } else {
        Behaviour::Charge
    };
    let ca = tls::TestCa::new("strongroom example processor CA");
    let bind: SocketAddr = ([127, 0, 0, 1], port).into();
    let stub = TestProcessor::start_on(bind, &ca, behaviour).await;
    std::fs::write(&ca_out, stub.ca_pem()).expect("cannot write the CA file");
    println!(
        "TEST STUB processor (prints what it receives) at {}",
        stub.url()
    );
    println!("CA certificate for the route's ca_pem written to {ca_out}");
    let mut shown = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let received = stub.received();
        for r in received.iter().skip(shown) {
            println!("--- {} {}", r.method, r.path);
            for (name, value) in &r.headers {
                println!("{name}: {value}");
            }
            println!("\n{}", r.body_text());
        }
        shown = received.len();
    }
}
