//! What the load benchmarks share: driving one request shape from many
//! connections, one run's outcome (rate, latency percentiles) and their
//! `--flag value` arguments.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One scenario or run: requests, errors and every latency, sorted by the
/// caller before percentiles are read.
pub struct Outcome {
    pub name: &'static str,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub latencies_us: Vec<u32>,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    /// The `p` quantile (0–1) of the sorted latencies, in milliseconds.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }
}

/// The value after `name` in `args`, if any.
pub fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Runs `call` back to back on `connections` tasks for `seconds`; `call`
/// answers whether the request succeeded. Latencies of successes only.
pub async fn drive<F, Fut>(name: &'static str, call: F, connections: usize, seconds: f64) -> Outcome
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let call = Arc::clone(&call);
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    if call().await {
                        lat.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    } else {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let (mut latencies_us, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (lat, err) = t.await.unwrap();
        latencies_us.extend(lat);
        errors += err;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    Outcome {
        name,
        requests: latencies_us.len() as u64,
        errors,
        seconds,
        latencies_us,
    }
}
