//! `GET /v1/sys/metrics`, the request-counting layer, and the separate
//! metrics listener (config `metrics_listen`).
//!
//! What is counted and under which names is `crate::metrics`; this module
//! adds what belongs to one server state (seal state, audit head), read at
//! each scrape. It must never put a raw request path in a label: paths
//! carry tokens and ids, so requests are labelled by their route template.

use std::fmt::Write as _;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::extract::{Caller, RequestContext};
use super::{ApiError, AppState};
use crate::access::Operation;

/// The media type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// The label of a request that matched no route (404s): one value for
/// every such path.
const UNMATCHED: &str = "unmatched";

/// Counts every request by route template, method and status, and times
/// it. Added with `Router::layer`, so it runs after routing and sees the
/// matched template.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = crate::metrics::method_label(req.method());
    let started = Instant::now();
    let response = next.run(req).await;
    crate::metrics::http_request(
        route.as_ref().map_or(UNMATCHED, MatchedPath::as_str),
        method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Metrics in the Prometheus text format.
#[utoipa::path(get, path = "/v1/sys/metrics", tag = "sys", operation_id = "metrics",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4 (docs/operations.md, \"Readiness and metrics\")", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 403, description = "`forbidden`: neither `admin` nor `metrics`", body = super::Problem, content_type = "application/problem+json"),
    ))]
pub async fn metrics(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
) -> Result<Response, ApiError> {
    state
        .authorize(&caller, Operation::SysMetrics, &ctx)
        .await?;
    exposition(&state).await
}

/// The scrape of the separate listener: no credential (it is meant for a
/// loopback or private address), served while sealed too.
async fn open_metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    exposition(&state).await
}

/// The router of the separate metrics listener: `GET /metrics` and nothing
/// else.
pub fn listener_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(open_metrics))
        .fallback(super::not_found)
        .method_not_allowed_fallback(super::method_not_allowed)
        .with_state(state)
}

/// The recorder's families, then this state's own gauges.
async fn exposition(state: &AppState) -> Result<Response, ApiError> {
    let Some(handle) = crate::metrics::install() else {
        return Err(ApiError::Internal);
    };
    let mut text = handle.render();
    let sealed = state.keyring.is_sealed();
    gauge(
        &mut text,
        "strongroom_sealed",
        "1 while this node is sealed, else 0",
        u64::from(sealed),
    );
    // The cluster's head as this node's store gives it; left out when the
    // store does not answer (then /v1/sys/ready says 503 too).
    if let Some(seq) = head_seq(state).await {
        gauge(
            &mut text,
            "strongroom_audit_head_sequence",
            "Sequence number of the newest audit entry",
            seq,
        );
    }
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROMETHEUS_TEXT),
    );
    Ok(response)
}

/// The audit head's seq for a scrape. A read within the last second
/// answers for it, as for readiness: the metrics listener takes no
/// credential, so a flood of scrapes must cost the database one read a
/// second, not one per scrape.
async fn head_seq(state: &AppState) -> Option<u64> {
    let last = *state
        .last_head
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((at, seq)) = last
        && at.elapsed() < super::sys::PROBE_REUSE
    {
        return Some(seq);
    }
    let stored =
        super::sys::probe_store(state, &state.store_probes, crate::audit::log::HEAD_KEY).await?;
    let seq = stored
        .as_deref()
        .and_then(crate::audit::log::head_seq)
        .unwrap_or(0);
    *state
        .last_head
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), seq));
    Some(seq)
}

fn gauge(text: &mut String, name: &str, help: &str, value: u64) {
    // Writing to a String does not fail.
    let _ = write!(
        text,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n\n"
    );
}
