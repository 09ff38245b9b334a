//! Scale: loads N card records through the bulk path (each record sealed
//! under its own DEK, each with its own tokens, index entry and audit
//! entry, 1,000 per transaction) and reports load throughput, disk bytes
//! per record, resident memory, detokenize req/s at 10 k, 1 M and N records,
//! and the audit verification rate over the N entries.
//! `cargo bench --bench scale -- [--records 1000000] [--engine sled|…] [--cache-mib 256]`
//! (`STRONGROOM_BENCH_DIR=/big/disk` to put the data elsewhere).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

mod common;

/// The server binary's allocator, so the in-process figures are the
/// server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use serde_json::json;
use strongroom::access::Role;
use strongroom::api::{AppState, router};
use strongroom::audit::{AuditEvent, Outcome};
use strongroom::clock::{Clock, SystemClock};
use strongroom::crypto::PasswordPolicy;
use strongroom::records::{RecordData, RecordType};
use strongroom::store::Engine;
use tower::ServiceExt;

/// A Luhn-valid 19-digit Visa number for `n`.
fn pan(n: u64) -> String {
    let body = format!("4{n:017}");
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

fn disk_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            disk_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Detokenize requests (one token each, a random one of `tokens`) per
/// second through the router, 16 at a time, for `seconds`.
fn detokenize_rate(
    rt: &tokio::runtime::Runtime,
    state: &AppState,
    key: &str,
    tokens: &[String],
    seconds: f64,
) -> f64 {
    let app = router(state.clone());
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let started = Instant::now();
        let tasks: Vec<_> = (0..16u64)
            .map(|t| {
                let (app, key, tokens) = (app.clone(), key.to_owned(), tokens.to_vec());
                tokio::spawn(async move {
                    let mut done = 0u64;
                    let mut i = t.wrapping_mul(2_654_435_761);
                    while Instant::now() < deadline {
                        i = i.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        let token = &tokens[(i >> 33) as usize % tokens.len()];
                        let req = axum::http::Request::builder()
                            .method("POST")
                            .uri("/v1/tokens/detokenize")
                            .header("authorization", format!("Bearer {key}"))
                            .header("content-type", "application/json")
                            .body(axum::body::Body::from(
                                json!({"tokens": [token]}).to_string(),
                            ))
                            .unwrap();
                        let res = app.clone().oneshot(req).await.unwrap();
                        assert_eq!(res.status(), 200);
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total as f64 / started.elapsed().as_secs_f64()
    })
}

/// Detokenize req/s at this many records, measured as the load passes it.
#[derive(Debug)]
struct Sample {
    records: u64,
    rate: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = !args.iter().any(|a| a == "--bench");
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let records: u64 = arg("--records").map_or(if quick { 2_000 } else { 1_000_000 }, |v| {
        v.parse().unwrap()
    });
    let engine: Engine = arg("--engine").map_or(Engine::DEFAULT, |v| v.parse().unwrap());
    let cache_mib: u64 = arg("--cache-mib")
        .map_or(strongroom::store::DEFAULT_CACHE_BYTES >> 20, |v| {
            v.parse().unwrap()
        });
    // Detokenize is measured as the load passes each of these sizes.
    let marks: Vec<u64> = [10_000, 1_000_000, records]
        .into_iter()
        .map(|m| {
            if quick {
                m.min(records / 2).max(100)
            } else {
                m
            }
        })
        .filter(|m| *m <= records)
        .collect();
    let seconds = if quick { 0.3 } else { 5.0 };

    let bench = common::vault_on(
        engine,
        cache_mib << 20,
        PasswordPolicy::danger_insecure_for_tests(),
    );
    let (state, store, data_dir) = (&bench.state, &bench.store, bench.data_dir());
    let clock = SystemClock;
    let key = state
        .create_service_now("bench", "payments", vec![Role::PaymentService])
        .unwrap();
    let owner = state
        .principals
        .list()
        .unwrap()
        .into_iter()
        .find(|p| p.name == "payments")
        .unwrap()
        .id;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rss_before = rss_mib();

    // A sample of the tokens, at most 1 M spread evenly over the load, so
    // the benchmark's own memory stays small at 10 M records (and random
    // picks from it still reach the whole store).
    let every = (records / 1_000_000).max(1);
    let mut tokens = Vec::with_capacity((records / every) as usize + 1);
    let mut samples: Vec<Sample> = Vec::new();
    let mut paused = 0.0;
    let started = Instant::now();
    let mut n = 0u64;
    while n < records {
        let mut batch = Vec::with_capacity(1000);
        let mut minted = HashSet::new();
        while batch.len() < 1000 && n < records {
            let body = json!({"pan": pan(n), "exp_month": 12, "exp_year": 2031});
            let data = RecordData::parse(RecordType::Card, body, clock.now()).unwrap();
            let created = state.vault.prepare_create(&owner, None, &data).unwrap();
            // Two records of one batch must not draw the same token.
            if !minted.insert(created.pan_token.clone())
                || !minted.insert(Some(created.token.clone()))
            {
                continue;
            }
            if n.is_multiple_of(every) {
                tokens.push(created.token.clone());
            }
            let event = AuditEvent::new(owner.as_str(), "record.create", Outcome::Allowed)
                .target(created.meta.id.clone());
            batch.push((event, created.tx));
            n += 1;
        }
        state.audit.record_many(batch).unwrap();
        if marks.contains(&n) && n < records {
            let pause = Instant::now();
            let rate = detokenize_rate(&rt, state, key.expose_secret(), &tokens, seconds);
            samples.push(Sample { records: n, rate });
            paused += pause.elapsed().as_secs_f64();
            if n >= 1_000_000 || quick {
                eprintln!("{n} records: detokenize {rate:.0} req/s");
            }
        }
        if !quick && n.is_multiple_of(1_000_000) {
            eprintln!(
                "{n} records loaded, {:.0} records/s so far, {:.0} MiB resident",
                n as f64 / (started.elapsed().as_secs_f64() - paused),
                rss_mib()
            );
        }
    }
    let load_secs = started.elapsed().as_secs_f64() - paused;
    store.flush().unwrap();
    let rss_loaded = rss_mib();
    let bytes = disk_bytes(&data_dir);
    // Our own bytes (keys and values as handed to the engine), by kind.
    let mut own: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    store
        .snapshot(&mut |k, v| {
            let kind = match k.get(..3) {
                Some(b"au/") => "audit (au/)",
                Some(b"rec") => "records (rec/)",
                Some(b"tk/") => "token records (tk/)",
                Some(b"bi/") => "index entries (bi/)",
                _ => "other",
            };
            let slot = own.entry(kind.to_owned()).or_default();
            slot.0 += 1;
            slot.1 += (k.len() + v.len()) as u64;
            Ok(())
        })
        .unwrap();
    let rate = detokenize_rate(&rt, state, key.expose_secret(), &tokens, seconds);
    samples.push(Sample { records, rate });
    drop(tokens);

    // Audit verification over every entry of the load (one per record).
    let public_key = bench.audit_public_key();
    let verify_started = Instant::now();
    let verification = strongroom::audit::verify_store(store.as_ref(), &public_key, false);
    let verify_secs = verify_started.elapsed().as_secs_f64();
    assert!(verification.ok, "{verification:?}");

    println!(
        "engine:                   {} (cache {cache_mib} MiB)",
        engine.as_str()
    );
    println!("records loaded:           {records}");
    println!(
        "load throughput:          {:.0} records/s ({load_secs:.1} s)",
        records as f64 / load_secs
    );
    println!(
        "disk:                     {:.0} MiB, {:.0} bytes/record",
        bytes as f64 / 1_048_576.0,
        bytes as f64 / records as f64
    );
    println!(
        "resident memory:          {rss_loaded:.0} MiB after loading (was {rss_before:.0} MiB before)"
    );
    let own_total: u64 = own.values().map(|(_, bytes)| bytes).sum();
    println!(
        "own bytes:                {:.0} bytes/record (keys and values handed to the engine)",
        own_total as f64 / records as f64
    );
    for (kind, (pairs, bytes)) in &own {
        println!(
            "  {kind:<24}{pairs} pairs, {:.0} bytes/record, {:.0} bytes/pair",
            *bytes as f64 / records as f64,
            *bytes as f64 / *pairs as f64
        );
    }
    for sample in &samples {
        println!(
            "detokenize (1 token/req): {:.0} req/s at {} records",
            sample.rate, sample.records
        );
    }
    println!(
        "audit verify:             {:.0} entries/s ({} entries in {verify_secs:.1} s)",
        verification.entries as f64 / verify_secs,
        verification.entries
    );
    if quick {
        assert!(samples.iter().all(|s| s.rate > 0.0));
    }
}
