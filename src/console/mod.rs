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
    /// Audit exports running on this node (at most one).
    exports: std::sync::Arc<tokio::sync::Semaphore>,
}

/// The console's routes, under `/console`. `api` is the API router the
/// console calls in process.
pub fn router(app: AppState, api_router: Router) -> Router {
    let state = ConsoleState {
        app,
        api: api::Api::new(api_router),
        exports: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
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
        .layer(middleware::from_fn(own_pages_only))
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

/// Answers only what the console's own pages asked for.
///
/// A post must come from the console's own origin: an `Origin` header that
/// names another one (or `null`) is refused, whatever the form holds. The
/// console's own authority is the request's (`:authority` in HTTP/2, where
/// browsers send no `Host`), else its `Host` header.
///
/// Any request a browser marks as sent by another site (`Sec-Fetch-Site`
/// `same-site` or `cross-site`: a sibling subdomain or another port is the
/// same *site*, and `SameSite=Strict` cookies go with it) is refused too,
/// GETs included: an `<img>` or a redirect on such a page must not make an
/// audited record read, an export or a chain walk in a signed-in person's
/// name. Typed addresses and bookmarks (`none`) and the console's own
/// links (`same-origin`) pass. A client that sends neither header (not a
/// browser) still needs the session, and for a post the form's CSRF token.
async fn own_pages_only(req: Request, next: Next) -> Response {
    let h = req.headers();
    let fetch_site_ok = h
        .get("sec-fetch-site")
        .map(|v| v.as_bytes())
        .is_none_or(|site| site == b"same-origin" || site == b"none");
    let is_post = !(req.method() == Method::GET || req.method() == Method::HEAD);
    let origin_ok = !is_post || origin_is_own(&req);
    if fetch_site_ok && origin_ok {
        return next.run(req).await;
    }
    // A link followed from another site (a ticket, a mail): nothing runs,
    // but the page offers the same address as a link of the console's
    // own, one click away.
    let navigation = h
        .get("sec-fetch-mode")
        .is_some_and(|mode| mode.as_bytes() == b"navigate");
    if !is_post && navigation {
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .filter(|p| p.starts_with("/console"))
            .unwrap_or_else(|| HOME.to_owned());
        return views::render(
            StatusCode::OK,
            &views::MessagePage {
                c: views::Chrome::new("Continue to the console", None),
                message: "You followed a link from another site. Nothing was opened yet: continue if you meant to.".into(),
                link: Some((target, "Continue".into())),
            },
        );
    }
    tracing::warn!(
        path = %req.uri().path(),
        method = %req.method(),
        "console request sent by another site refused"
    );
    views::refusal(
        StatusCode::FORBIDDEN,
        "This request was sent by another site, so it was refused. Open the console from its own address and try again.",
    )
}

/// Whether the request's `Origin` (if any) is the console's own.
fn origin_is_own(req: &Request) -> bool {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
    match req.headers().get(header::ORIGIN).map(|v| v.to_str()) {
        None => true,
        Some(Ok(origin)) => authority.is_some_and(|own| {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|theirs| theirs.eq_ignore_ascii_case(&own))
        }),
        Some(Err(_)) => false,
    }
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
