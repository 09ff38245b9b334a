//! Process metrics in the Prometheus text format (docs/operations.md,
//! "Readiness and metrics").
//!
//! This module owns the one recorder of the process and the names of every
//! metric. Label values are chosen here or from bounded sets (a route
//! template, a status code, a relay route's name, an outcome word): never a
//! raw request path, a token, an id, an address or anything a caller typed.
//!
//! One recorder per process, installed as the `metrics` facade's global
//! recorder the first time [`install`] runs: the audit log's committer and
//! flusher run on threads of their own, outside any request, so a recorder
//! scoped to a thread (`metrics::with_local_recorder`) would not see them.
//! Several server states in one process (tests) share it; what belongs to
//! one state (sealed, the audit head) is not kept in the recorder but read
//! from that state at each scrape (see `api::metrics`).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::relay::upstream::{UpstreamError, UpstreamResponse};

/// HTTP requests answered, by route template, method and status.
pub const HTTP_REQUESTS: &str = "strongroom_http_requests_total";
/// Time to answer, by route template and method.
pub const HTTP_DURATION: &str = "strongroom_http_request_duration_seconds";
/// Jobs (callers' batches) per group-commit round of the audit log.
pub const AUDIT_ROUND_JOBS: &str = "strongroom_audit_round_jobs";
/// Audit entries asked for per group-commit round.
pub const AUDIT_ROUND_ENTRIES: &str = "strongroom_audit_round_entries";
/// Time one store flush (the durability point of a round) took.
pub const AUDIT_FLUSH_DURATION: &str = "strongroom_audit_flush_duration_seconds";
/// Relay calls to an upstream, by relay route name and outcome.
pub const RELAY_CALLS: &str = "strongroom_relay_calls_total";
/// Canary alarms raised, by the path that touched the canary.
pub const CANARY_ALARMS: &str = "strongroom_canary_alarms_total";
/// Canary webhook deliveries that failed (no 2xx answer).
pub const CANARY_WEBHOOK_FAILURES: &str = "strongroom_canary_webhook_failures_total";

/// Histogram buckets in seconds: 100 µs to 10 s.
const SECONDS_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Histogram buckets for round sizes.
const ROUND_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// How often histogram samples are folded into their buckets when nobody
/// scrapes (a scrape folds them too): bounds their memory.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder (once; later calls do nothing) and
/// returns its handle. `None` when another recorder was installed first
/// (an embedding program's): metrics then go there and the endpoint says
/// so with a 503.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = builder()?.build_recorder();
            let handle = recorder.handle();
            if ::metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /v1/sys/metrics is off");
                return None;
            }
            describe();
            let upkeep = handle.clone();
            let started = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = started {
                // Scrapes still fold the samples in; without scrapes they
                // grow, so say it.
                tracing::warn!(error = %e, "no thread for metrics upkeep");
            }
            Some(handle)
        })
        .as_ref()
}

fn builder() -> Option<PrometheusBuilder> {
    let built = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Prefix("strongroom_audit_round_".into()),
                &ROUND_BUCKETS,
            )
        });
    match built {
        Ok(builder) => Some(builder),
        Err(e) => {
            tracing::error!(error = %e, "metrics recorder not built");
            None
        }
    }
}

fn describe() {
    use ::metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route template, method and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request, by route template and method"
    );
    describe_histogram!(
        AUDIT_ROUND_JOBS,
        "Callers' batches committed together in one audit group-commit round"
    );
    describe_histogram!(
        AUDIT_ROUND_ENTRIES,
        "Audit entries asked for in one group-commit round"
    );
    describe_histogram!(
        AUDIT_FLUSH_DURATION,
        Unit::Seconds,
        "Time one store flush took (the point where a round becomes durable)"
    );
    describe_counter!(
        RELAY_CALLS,
        "Relay calls to an upstream, by relay route name and outcome"
    );
    describe_counter!(
        CANARY_ALARMS,
        "Canary alarms: accesses to a canary record, by the path that touched it"
    );
    describe_counter!(
        CANARY_WEBHOOK_FAILURES,
        "Canary alarm webhook deliveries that got no 2xx answer"
    );
}

/// The method as a label: one of the methods this API serves, else `other`
/// (a client may send any token as a method).
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// One answered HTTP request. `route` is the matched route template (or a
/// fixed word for none), never the path as sent.
pub fn http_request(route: &str, method: &'static str, status: u16, took: Duration) {
    ::metrics::counter!(
        HTTP_REQUESTS,
        "route" => route.to_owned(),
        "method" => method,
        "status" => status.to_string()
    )
    .increment(1);
    ::metrics::histogram!(HTTP_DURATION, "route" => route.to_owned(), "method" => method)
        .record(took.as_secs_f64());
}

/// One audit round taken from the queue: its jobs and entries.
pub fn audit_round(jobs: usize, entries: usize) {
    ::metrics::histogram!(AUDIT_ROUND_JOBS).record(jobs as f64);
    ::metrics::histogram!(AUDIT_ROUND_ENTRIES).record(entries as f64);
}

/// Runs `flush` (a store flush) and records how long it took.
pub fn timed_flush<T>(flush: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = flush();
    ::metrics::histogram!(AUDIT_FLUSH_DURATION).record(started.elapsed().as_secs_f64());
    result
}

/// Records one relay call to route `route` (a stored route's name) by its
/// outcome, and passes the result on.
pub fn relay_call(
    route: &str,
    result: Result<UpstreamResponse, UpstreamError>,
) -> Result<UpstreamResponse, UpstreamError> {
    let outcome = match &result {
        Ok(answer) => status_class(answer.status.as_u16()),
        Err(UpstreamError::Destination(_)) => "destination_refused",
        Err(UpstreamError::Unavailable(_)) => "unavailable",
        Err(UpstreamError::Timeout) => "timeout",
        Err(UpstreamError::TooLarge) => "too_large",
        Err(UpstreamError::InvalidCa) => "invalid_ca",
    };
    ::metrics::counter!(RELAY_CALLS, "route" => route.to_owned(), "outcome" => outcome)
        .increment(1);
    result
}

/// One canary alarm, labelled by the access path (a fixed word).
pub fn canary_alarm(path: crate::canary::AccessPath) {
    ::metrics::counter!(CANARY_ALARMS, "path" => path.as_str()).increment(1);
}

/// One canary webhook delivery that failed.
pub fn canary_webhook_failed() {
    ::metrics::counter!(CANARY_WEBHOOK_FAILURES).increment(1);
}

/// `2xx`, `4xx`…: the upstream's status by class.
fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_fixed_sets() {
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(999), "other");
        let custom = axum::http::Method::from_bytes(b"SECRET4242").unwrap();
        assert_eq!(method_label(&custom), "other");
        assert_eq!(method_label(&axum::http::Method::PATCH), "PATCH");
    }
}
