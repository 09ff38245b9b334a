//! The API-key check per request, one durable audit append, the signature
//! each audit round adds, audit appends
//! per second from 1, 8 and 64 writers (group commit), verification speed
//! over 1 M entries, and login cost for known and unknown usernames.
//! `cargo bench --bench access`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

mod common;

use common::vault;
use criterion::{Criterion, criterion_group, criterion_main};
use strongroom::access::{Role, SessionPolicy};
use strongroom::audit::{AuditEvent, Outcome, verify_store};
use strongroom::crypto::{PasswordPepper, PasswordPolicy};

fn api_key_check(c: &mut Criterion) {
    let bench = vault(PasswordPolicy::danger_insecure_for_tests());
    let key = bench
        .state
        .create_service_now("bench", "svc", vec![Role::Auditor])
        .unwrap();
    let keys = bench.state.keyring.keys().unwrap();
    let credential_key = keys.credential_key().unwrap();
    let sessions = SessionPolicy::default();
    c.bench_function("API key check (HMAC + 2 store reads)", |b| {
        b.iter(|| {
            black_box(
                bench
                    .state
                    .principals
                    .authenticate(&credential_key, &sessions, black_box(key.expose_secret()))
                    .unwrap(),
            )
        })
    });
}

fn login_cost(c: &mut Criterion) {
    let bench = vault(PasswordPolicy::owasp());
    bench
        .state
        .create_staff_now(
            "bench",
            "alice",
            vec![Role::Auditor],
            "correct horse battery",
        )
        .unwrap();
    let (_, known_hash) = bench
        .state
        .principals
        .staff_login_record("alice")
        .unwrap()
        .unwrap();
    let policy = PasswordPolicy::owasp();
    let keys = bench.state.keyring.keys().unwrap();
    let pepper = keys.password_pepper().unwrap();
    let dummy = policy
        .hash(
            &PasswordPepper::random().unwrap(),
            "strongroom: no such user",
        )
        .unwrap();
    let mut group = c.benchmark_group("password check (OWASP Argon2id, 19 MiB)");
    group.sample_size(20);
    group.bench_function("known username, wrong password", |b| {
        b.iter(|| black_box(policy.verify(&pepper, &known_hash, "wrong password!!")))
    });
    group.bench_function("unknown username (dummy hash)", |b| {
        b.iter(|| black_box(policy.verify(&pepper, &dummy, "wrong password!!")))
    });
    group.finish();
}

/// One durable audit append (chained, applied, flushed) with no one to
/// share the flush with.
fn audit_append(c: &mut Criterion) {
    let bench = vault(PasswordPolicy::danger_insecure_for_tests());
    let mut group = c.benchmark_group("audit append, durable");
    group.sample_size(30);
    group.bench_function("1 writer", |b| {
        b.iter(|| {
            let event = AuditEvent::new("bench", "bench.append", Outcome::Allowed);
            black_box(bench.state.audit.record(event).unwrap())
        })
    });
    group.finish();
}

/// What each group-commit round adds to sign its head: the Ed25519 key
/// pair built from its seed (no ring key is kept between uses) and one
/// signature.
fn audit_round_signature(c: &mut Criterion) {
    let bench = vault(PasswordPolicy::danger_insecure_for_tests());
    let keys = bench.state.keyring.keys().unwrap();
    let message = strongroom::audit::Checkpoint::signed_message(
        42,
        &[7; 32],
        "2026-01-01T00:00:00.000000000Z",
    );
    c.bench_function("audit round signature (key pair from seed + sign)", |b| {
        b.iter(|| black_box(keys.audit_signing_key().unwrap().sign(black_box(&message))))
    });
}

/// Appends per second from several writers at once (group commit).
fn audit_throughput() {
    let bench = vault(PasswordPolicy::danger_insecure_for_tests());
    for writers in [1usize, 8, 64] {
        let per = 3200 / writers;
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..writers {
                s.spawn(|| {
                    for _ in 0..per {
                        let event = AuditEvent::new("bench", "bench.append", Outcome::Allowed);
                        bench.state.audit.record(event).unwrap();
                    }
                });
            }
        });
        let rate = (per * writers) as f64 / started.elapsed().as_secs_f64();
        println!("audit appends, durable, {writers} writer(s): {rate:.0}/s");
    }
}

fn verify_speed(entries: u64) {
    let bench = vault(PasswordPolicy::danger_insecure_for_tests());
    // Fill through the real append path in batches of 1000 (one flush
    // each): the figure wanted is verification speed.
    let started = Instant::now();
    let mut seq = 0;
    while seq < entries {
        let batch: Vec<_> = (seq..(seq + 1000).min(entries))
            .map(|i| {
                let event = AuditEvent::new("bench", "bench.append", Outcome::Allowed)
                    .target(format!("target-{i}"));
                (event, strongroom::store::Transaction::new())
            })
            .collect();
        seq += batch.len() as u64;
        bench.state.audit.record_many(batch).unwrap();
    }
    bench.state.audit.checkpoint().unwrap();
    let filled = started.elapsed();
    let public_key = bench
        .state
        .keyring
        .keys()
        .unwrap()
        .audit_signing_key()
        .unwrap()
        .public_key();
    let started = Instant::now();
    let result = verify_store(bench.store.as_ref(), &public_key, true);
    let took = started.elapsed();
    assert!(result.ok && result.entries == entries);
    println!(
        "verify {entries} entries: {:.2} s = {:.0} entries/s (fill took {:.1} s)",
        took.as_secs_f64(),
        entries as f64 / took.as_secs_f64(),
        filled.as_secs_f64()
    );
}

fn figures(_: &mut Criterion) {
    let quick = !std::env::args().any(|a| a == "--bench");
    audit_throughput();
    verify_speed(if quick { 2_000 } else { 1_000_000 });
}

criterion_group!(
    benches,
    api_key_check,
    audit_append,
    audit_round_signature,
    login_cost,
    figures
);
criterion_main!(benches);
