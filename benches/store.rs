//! Durable store puts per second with 1 and 32 concurrent writers (group
//! commit). `cargo bench --bench store`. Each put returns only once it is
//! flushed to disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use strongroom::store::{SledStore, Store};

fn run(writers: usize, seconds: u64) -> (f64, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
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
                    let t0 = Instant::now();
                    store
                        .put(format!("bench/{t}/{i:010}").as_bytes(), &value)
                        .unwrap();
                    worst = worst.max(t0.elapsed());
                    count.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                worst
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let worst = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .max()
        .unwrap_or_default();
    let elapsed = started.elapsed().as_secs_f64();
    (count.load(Ordering::Relaxed) as f64 / elapsed, worst)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // as a short smoke test.
    let quick = !std::env::args().any(|a| a == "--bench");
    let seconds = if quick { 1 } else { 5 };
    println!("durable sled puts (512-byte values, each flushed before it returns)");
    for writers in [1, 32] {
        let (rate, worst) = run(writers, seconds);
        println!(
            "  {writers:>2} writer(s): {rate:>9.0} puts/s  (slowest put {:.1} ms)",
            worst.as_secs_f64() * 1e3
        );
    }
}
