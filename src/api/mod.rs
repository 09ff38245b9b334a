//! The HTTP API (axum): routing, request ids, the sealed gate, and the
//! mapping of every error to problem+json.
//!
//! This module owns HTTP and nothing else: it parses, authorises through
//! `access`, calls the domain modules and shapes responses. It must never
//! hold key material beyond a request, nor put a request body in a log.

mod error;
mod extract;
mod openapi;
mod sys;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, header::HeaderName};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use error::{ApiError, FieldError, Problem};
pub use extract::{ApiJson, Caller, parse_json};
pub use openapi::openapi_document;
pub use sys::UnsealLimiter;

use crate::access::PrincipalDirectory;
use crate::clock::Clock;
use crate::keyring::Keyring;
use crate::store::Store;

/// Paths that work while sealed. Every other path answers 503 `sealed`.
pub const AVAILABLE_WHILE_SEALED: [&str; 3] =
    ["/v1/sys/health", "/v1/sys/unseal", "/v1/openapi.json"];

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    pub keyring: Arc<Keyring>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub principals: PrincipalDirectory,
    pub unseal_limiter: UnsealLimiter,
    pub body_limit_bytes: usize,
}

impl std::ops::Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        keyring: Arc<Keyring>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        body_limit_bytes: usize,
        unseal_failures_per_minute: u32,
    ) -> Self {
        let principals = PrincipalDirectory::new(Arc::clone(&store), Arc::clone(&clock));
        Self(Arc::new(AppInner {
            keyring,
            store,
            clock,
            principals,
            unseal_limiter: UnsealLimiter::new(unseal_failures_per_minute),
            body_limit_bytes,
        }))
    }
}

/// The request id of the request being handled (echoed or generated).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn acceptable_request_id(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let ok = !text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| text.to_owned())
}

fn new_request_id() -> String {
    crate::crypto::random_array::<16>()
        .map(hex::encode)
        .unwrap_or_else(|_| "unavailable".to_owned())
}

/// Echoes a well-formed `x-request-id` or makes one, and logs the request
/// by method, status and time only (paths may carry tokens; bodies never
/// reach the log).
async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(acceptable_request_id)
        .unwrap_or_else(new_request_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let started = Instant::now();
    let mut response = next.run(req).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    tracing::info!(
        request_id = %id,
        %method,
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    response
}

/// While sealed, only the paths in [`AVAILABLE_WHILE_SEALED`] are served.
async fn sealed_gate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.keyring.is_sealed() && !AVAILABLE_WHILE_SEALED.contains(&req.uri().path()) {
        return ApiError::Sealed.into_response();
    }
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let body_limit = state.body_limit_bytes;
    Router::new()
        .route("/v1/sys/health", get(sys::health))
        .route("/v1/sys/unseal", post(sys::unseal))
        .route("/v1/sys/seal", post(sys::seal))
        .route("/v1/openapi.json", get(openapi::serve_document))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), sealed_gate))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}
