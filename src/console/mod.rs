//! The compliance console at `/console` (docs/console.md): server-rendered
//! pages for officers, approvers, auditors and admins.
//!
//! The console has no privilege of its own. Its cookie holds the same
//! opaque session `POST /v1/auth/login` gives, and every action is an
//! ordinary API call made in process ([`Api`]) with that session as the
//! bearer credential: the same policy table, validation, limits and audit
//! entries (with the console request's id and client address) as a client
//! of the API would get. What the console adds is HTML, a CSRF token on
//! every form, an origin check on every post, and strict headers.

mod api;
mod pages;
mod session;
mod views;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::api::AppState;

pub use session::{CSRF_FIELD, LOGIN_COOKIE, SESSION_COOKIE};

/// The console's Content-Security-Policy: nothing but its own origin, no
/// inline script or style, no framing, forms only to itself.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// The console's one style sheet (first party, no inline style).
const STYLE_SHEET: &str = include_str!("../../assets/console.css");
/// Its icon (else every browser asks for `/favicon.ico`, outside the
/// console, and logs the 404).
const ICON: &str = include_str!("../../assets/favicon.svg");

/// What every console handler has: the API's state and the API itself.
#[derive(Clone)]
pub struct ConsoleState {
    app: AppState,
    api: api::Api,
}

/// The console's routes, under `/console`. `api` is the API router the
/// console calls in process.
pub fn router(app: AppState, api_router: Router) -> Router {
    let state = ConsoleState {
        app,
        api: api::Api::new(api_router),
    };
    Router::new()
        .route("/console", get(pages::home))
        .route("/console/", get(pages::home))
        .route(
            "/console/sign-in",
            get(pages::sign_in_form).post(pages::sign_in),
        )
        .route("/console/sign-out", post(pages::sign_out))
        .route(
            "/console/search",
            get(pages::search_form).post(pages::search),
        )
        .route("/console/records/{id}", get(pages::record))
        .route("/console/records/{id}/reveal", post(pages::reveal))
        .route(
            "/console/records/{id}/access-requests",
            post(pages::request_access),
        )
        .route("/console/approvals", get(pages::approvals))
        .route("/console/approvals/{id}/{decision}", post(pages::decide))
        .route("/console/audit", get(pages::audit))
        .route("/console/audit/verify", get(pages::audit_verify))
        .route("/console/audit/export", get(pages::audit_export))
        .route(
            "/console/admin/principals",
            get(pages::principals).post(pages::create_principal),
        )
        .route(
            "/console/admin/principals/{id}/disable",
            post(pages::disable_principal),
        )
        .route("/console/admin/keys", get(pages::keys))
        .route(
            "/console/admin/keys/{purpose}/rotate",
            post(pages::rotate_key),
        )
        .route(
            "/console/admin/routes",
            get(pages::routes).post(pages::create_route),
        )
        .route(
            "/console/admin/routes/{name}/approve",
            post(pages::approve_route),
        )
        .route("/console/static/console.css", get(style_sheet))
        .route("/console/static/icon.svg", get(icon))
        // Unknown console paths (the API router's fallback answers the rest).
        .route(
            "/console/{*rest}",
            get(pages::not_found).post(pages::not_found),
        )
        .layer(middleware::from_fn(same_origin_posts))
        .layer(middleware::from_fn(headers))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .layer(middleware::from_fn(crate::api::request_id))
        .with_state(state)
}

async fn style_sheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLE_SHEET,
    )
        .into_response()
}

async fn icon() -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml")], ICON).into_response()
}

/// The headers of every console answer: the CSP, no caching anywhere, no
/// sniffing, no referrer to other origins, no framing.
async fn headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Not `no-referrer`: under it a browser sends `Origin: null` with
        // every form post, and the origin check below could not tell the
        // console's own forms from a sandboxed attacker's.
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.insert(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// Refuses a post that a browser says came from another origin: an
/// `Origin` header that is not this server's own (as the `Host` header
/// names it), or `Sec-Fetch-Site` other than `same-origin`. A client that
/// sends neither (not a browser) still needs the form's CSRF token.
async fn same_origin_posts(req: Request, next: Next) -> Response {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return next.run(req).await;
    }
    let h = req.headers();
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_ok = match h.get(header::ORIGIN).map(|v| v.to_str()) {
        None => true,
        Some(Ok(origin)) => host.is_some_and(|host| {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
        }),
        Some(Err(_)) => false,
    };
    let fetch_site_ok = h
        .get("sec-fetch-site")
        .map(|v| v.as_bytes())
        .is_none_or(|site| site == b"same-origin");
    if origin_ok && fetch_site_ok {
        return next.run(req).await;
    }
    tracing::warn!(
        path = %req.uri().path(),
        "console post from another origin refused"
    );
    views::refusal(
        StatusCode::FORBIDDEN,
        "This form was sent from another site, so it was refused. Open the console and try again.",
    )
}

/// A page that ends a handler early: a refusal, the sign-in redirect, the
/// sealed page (boxed: a `Response` is large to pass back through `?`).
pub struct Refusal(Box<Response>);

impl From<Response> for Refusal {
    fn from(response: Response) -> Self {
        Self(Box::new(response))
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// What a console handler answers: its page, or a page that cut it short.
pub type Answer = Result<Response, Refusal>;

/// The route of the console's home, for links and redirects.
pub const HOME: &str = "/console";

/// Redirects a browser with 303 See Other (after a post, the next load is
/// a GET).
fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}
