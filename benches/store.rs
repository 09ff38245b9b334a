//! Durable commits per second of each storage engine, with 1, 16 and 64
//! concurrent writers sharing flushes (group commit): each commit is a
//! small transaction (one 512-byte put plus a precondition on its own key)
//! and returns only once it is on disk.
//!
//! `cargo bench --bench store` measures every engine;
//! `cargo bench --bench store -- --engine fjall` one of them. Without
//! `--bench` (as `cargo test --benches` runs it) each run is a short smoke
//! test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use strongroom::store::{DEFAULT_CACHE_BYTES, Engine, Store, Transaction, open_engine};

/// Commits per second and the slowest commit, for `writers` threads over
/// `seconds`.
fn run(engine: Engine, writers: usize, duration: Duration) -> (f64, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = open_engine(engine, dir.path(), DEFAULT_CACHE_BYTES).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let value = vec![0xabu8; 512];
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|t| {
            let (store, stop, count, value) = (
                Arc::clone(&store),
                Arc::clone(&stop),
                Arc::clone(&count),
                value.clone(),
            );
            std::thread::spawn(move || {
                let mut worst = Duration::ZERO;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("bench/{t:02}/{i:010}").into_bytes();
                    let t0 = Instant::now();
                    store
                        .commit(
                            Transaction::new()
                                .expect(key.clone(), None)
                                .put(key, value.clone()),
                        )
                        .unwrap();
                    worst = worst.max(t0.elapsed());
                    count.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                worst
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let worst = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .max()
        .unwrap_or_default();
    let elapsed = started.elapsed().as_secs_f64();
    (count.load(Ordering::Relaxed) as f64 / elapsed, worst)
}

/// The engines named by `--engine NAME` (repeatable), or all of them.
fn engines(args: &[String]) -> Result<Vec<Engine>, String> {
    let mut chosen = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let name = if arg == "--engine" {
            args.next().ok_or("--engine needs a name")?.as_str()
        } else if let Some(name) = arg.strip_prefix("--engine=") {
            name
        } else {
            continue;
        };
        chosen.push(name.parse::<Engine>()?);
    }
    Ok(if chosen.is_empty() {
        Engine::ALL.to_vec()
    } else {
        chosen
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // as a short smoke test.
    let quick = !args.iter().any(|a| a == "--bench");
    let duration = if quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(5)
    };
    let engines = match engines(&args) {
        Ok(engines) => engines,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    println!(
        "durable commits (one 512-byte put with a precondition, each on disk before it returns)"
    );
    for engine in engines {
        for writers in [1, 16, 64] {
            let (rate, worst) = run(engine, writers, duration);
            assert!(rate > 0.0, "{} committed nothing", engine.as_str());
            println!(
                "  {:<5} {writers:>2} writer(s): {rate:>9.0} commits/s  (slowest {:.1} ms)",
                engine.as_str(),
                worst.as_secs_f64() * 1e3
            );
        }
    }
}
