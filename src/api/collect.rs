//! Collect: what a publishable key (`spk_…`, role `collector`) may reach
//! from a browser, and the ephemeral CVC route.
//!
//! - [`cors`]: CORS on the collect routes only ([`COLLECT_ROUTES`]); every
//!   other route sends no CORS header at all. A preflight is answered only
//!   for an origin some usable publishable key allows, read from the store
//!   each time (no cache to go stale when a key or its owner is disabled).
//! - [`admit_address`] and [`admit_publishable`] (called by the `Caller`
//!   extractor): per-address and per-key sliding windows, reserved before
//!   the work, and the `Origin` check.
//! - [`attach_cvc`]: `POST /v1/records/{id}/cvc`.
//!
//! A CVC must never reach a log line, an audit entry, the store or a
//! response: it goes from the parsed body straight into `crate::cvc`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::extract::{Caller, JsonBody, RequestContext};
use super::{ApiError, AppState, Problem};
use crate::access::{Operation, Principal, PrincipalKind};
use crate::audit::{AuditEvent, Outcome};
use crate::cvc::CvcError;
use crate::records::{Brand, RecordData, RecordType};

/// The routes a publishable key may call, as the router spells them: the
/// only routes with CORS.
pub const COLLECT_ROUTES: [&str; 2] = ["/v1/records/card", "/v1/records/{id}/cvc"];

/// How long a browser may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// The audit action of a refused publishable-key request (wrong or no
/// origin).
const ORIGIN_REFUSED: &str = "collect.origin_refused";

fn is_collect_route(req: &Request) -> bool {
    req.extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| COLLECT_ROUTES.contains(&p.as_str()))
}

/// The request's `Origin`, if it sent exactly one that is text.
fn origin_of(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::ORIGIN).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()
}

/// CORS for the collect routes, nothing for any other.
pub async fn cors(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !is_collect_route(&req) {
        return next.run(req).await;
    }
    let origin = origin_of(req.headers()).map(str::to_owned);
    let allowed = match &origin {
        Some(origin) => match state.principals.origin_allowed(origin) {
            Ok(allowed) => allowed,
            Err(e) => return ApiError::from(e).into_response(),
        },
        None => false,
    };
    if req.method() == Method::OPTIONS {
        // A preflight: answered for an allowed origin only; anything else
        // is refused without a CORS header, so the browser stops there.
        let (true, Some(origin)) = (allowed, origin) else {
            return ApiError::Forbidden.into_response();
        };
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        allow_origin(headers, &origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, x-request-id"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(PREFLIGHT_MAX_AGE),
        );
        return response;
    }
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    if let (true, Some(origin)) = (allowed, origin) {
        allow_origin(headers, &origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-request-id, retry-after"),
        );
    }
    response
}

fn allow_origin(headers: &mut HeaderMap, origin: &str) {
    if let Ok(value) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.insert(header::VARY, HeaderValue::from_static("origin"));
    }
}

/// The client address a per-address limit counts against: the peer's IP.
/// Without one (a request that did not come over a socket) every such
/// request shares one count, which fails safe.
fn client_address(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| address_bucket(c.0.ip()))
}

/// The rate-limit bucket of a client address: an IPv4 address itself; an
/// IPv6 address by its /64 (one subscriber gets a whole /64, so counting
/// /128s would give each shopper unlimited addresses). IPv4-mapped IPv6
/// addresses count as their IPv4 address.
fn address_bucket(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                format!("{a:x}:{b:x}:{c:x}:{d:x}::/64")
            }
        },
    }
}

/// Reserves one request in the client address's window, before a
/// publishable key is even looked up (guessing keys costs the same).
pub fn admit_address(state: &AppState, parts: &Parts) -> Result<(), ApiError> {
    state
        .collect_per_address
        .take(&client_address(parts), state.clock.now())?
        .map_err(|retry_after_secs| ApiError::RateLimited { retry_after_secs })
}

/// Admits an authenticated publishable key: one request reserved in its
/// window, then its `Origin` must be one of its allowed origins (a missing
/// `Origin` is refused: browsers send it on every cross-origin request, so
/// only a non-browser leaves it out, and that should be a service key).
/// A refusal is audited and answers 403.
pub async fn admit_publishable(
    state: &AppState,
    parts: &Parts,
    principal: &Principal,
) -> Result<(), ApiError> {
    state
        .collect_per_key
        .take(&principal.id, state.clock.now())?
        .map_err(|retry_after_secs| ApiError::RateLimited { retry_after_secs })?;
    let reason = match origin_of(&parts.headers) {
        Some(origin) if principal.allowed_origins.iter().any(|o| o == origin) => return Ok(()),
        Some(_) => "origin not allowed for this key",
        None => "no origin",
    };
    let ctx = RequestContext::from_parts(parts);
    let event = AuditEvent {
        reason: Some(reason.into()),
        ..ctx.event(&principal.id, ORIGIN_REFUSED, Outcome::Denied)
    };
    state.record(event).await?;
    Err(ApiError::Forbidden)
}

/// The audit note of something a publishable key did for its owner.
fn on_behalf(principal: &Principal) -> Option<String> {
    (principal.kind == PrincipalKind::Publishable).then(|| format!("for {}", principal.acts_for()))
}

/// A CVC to attach. Wiped from memory when dropped.
#[derive(Deserialize, ToSchema, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct AttachCvc {
    /// 3 digits; 4 for American Express. Never stored, logged or echoed.
    /// (Missing or `null` is a 422 naming `cvc`, like a wrong value.)
    #[schema(
        pattern = "^[0-9]{3,4}$",
        example = "123",
        required = true,
        nullable = false
    )]
    #[serde(default)]
    pub cvc: Option<String>,
}

/// Whether `cvc` is a CVC of a card of `brand`: 4 digits for American
/// Express, 3 for every other brand.
fn fits_brand(cvc: &str, brand: Brand) -> bool {
    let digits = if brand == Brand::Amex { 4 } else { 3 };
    cvc.len() == digits && cvc.bytes().all(|b| b.is_ascii_digit())
}

/// Attaches a CVC to a card, in this process's memory only, for the next
/// relay call that uses it (once), at most `[collect] cvc_ttl_seconds`.
#[utoipa::path(post, path = "/v1/records/{id}/cvc", tag = "records", operation_id = "attach_cvc",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Card record id (`card_…`)")),
    request_body(content = AttachCvc, content_type = "application/json"),
    responses(
        (status = 204, description = "Held in memory until its first relay use, expiry, seal or restart"),
        (status = 403, description = "`forbidden`: not the owner service or its publishable key; or a publishable key from an origin it does not allow", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no such card, or another owner's", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`erased`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: a publishable key's or client address's limit, or as many CVCs held as allowed", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn attach_cvc(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<StatusCode, ApiError> {
    let action = Operation::CvcAttach.action();
    state
        .authorize_on(&caller, Operation::CvcAttach, &ctx, || {
            Ok(vec![state.target_of(&id)])
        })
        .await?;
    let request: AttachCvc = body.parse()?;
    let cvc_invalid = || ApiError::field("cvc", "must be 3 digits (4 for American Express)");
    if request.cvc.is_none() {
        return Err(cvc_invalid());
    }
    let principal = caller.principal();
    let meta = match state.vault.meta(&id) {
        Ok(meta) if meta.record_type != RecordType::Card => return Err(ApiError::NotFound),
        Ok(meta) if meta.owner == principal.acts_for() => meta,
        Ok(_) => {
            let event = AuditEvent {
                reason: Some("not the owner".into()),
                ..ctx.event(&principal.id, action, Outcome::Denied).target(id)
            };
            state.record(event).await?;
            return Err(ApiError::NotFound);
        }
        Err(e) => return Err(e.into()),
    };
    if meta.erased_at.is_some() {
        return Err(ApiError::Erased);
    }
    let opened = state.vault.open(&meta)?;
    let RecordData::Card(card) = &opened.data else {
        return Err(ApiError::NotFound);
    };
    if !request
        .cvc
        .as_deref()
        .is_some_and(|c| fits_brand(c, card.brand))
    {
        return Err(cvc_invalid());
    }
    let outcome = state.touched(
        &ctx,
        principal,
        crate::canary::AccessPath::CvcAttach,
        &meta,
        &opened,
    );
    drop(opened);
    let event = AuditEvent {
        reason: on_behalf(principal),
        ..ctx.event(&principal.id, action, outcome).target(id.clone())
    };
    // Held, then audited; both finish even if the client hangs up. An entry
    // that cannot be written takes the CVC back out (no audit, no CVC); so
    // does a seal that came in between (its clear may have run first).
    let attaching = state.clone();
    super::to_the_end(async move {
        let cvc = request.cvc.as_deref().unwrap_or_default();
        match attaching.cvcs.put(&id, cvc) {
            Ok(()) => {}
            Err(CvcError::Full { retry_after_secs }) => {
                let refused = AuditEvent {
                    outcome: Outcome::Error,
                    reason: Some("as many CVCs held as allowed".into()),
                    ..event
                };
                attaching.record(refused).await?;
                return Err(ApiError::RateLimited { retry_after_secs });
            }
            Err(CvcError::Invalid) => {
                return Err(ApiError::field(
                    "cvc",
                    "must be 3 digits (4 for American Express)",
                ));
            }
            Err(CvcError::Unavailable) => {
                tracing::error!("no CVC key: the system RNG failed");
                return Err(ApiError::Internal);
            }
        }
        drop(request);
        if let Err(e) = attaching.record(event).await {
            attaching.cvcs.discard(&id);
            return Err(e);
        }
        if attaching.keyring.is_sealed() {
            attaching.cvcs.discard(&id);
            return Err(ApiError::Sealed);
        }
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The audit note of a card a publishable key created for its owner.
pub fn creation_note(principal: &Principal) -> Option<String> {
    on_behalf(principal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let bucket = |text: &str| address_bucket(text.parse().unwrap());
        assert_eq!(bucket("2001:db8:1:2::1"), bucket("2001:db8:1:2:ffff::9"));
        assert_ne!(bucket("2001:db8:1:2::1"), bucket("2001:db8:1:3::1"));
        assert_eq!(bucket("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(bucket("192.0.2.7"), "192.0.2.7");
        assert_ne!(bucket("192.0.2.7"), bucket("192.0.2.8"));
    }

    #[test]
    fn cvc_lengths_follow_the_brand() {
        assert!(fits_brand("123", Brand::Visa));
        assert!(fits_brand("000", Brand::Mastercard));
        assert!(!fits_brand("1234", Brand::Visa));
        assert!(fits_brand("1234", Brand::Amex));
        assert!(!fits_brand("123", Brand::Amex));
        assert!(!fits_brand("12a", Brand::Visa));
        assert!(!fits_brand("", Brand::Unknown));
    }

    #[test]
    fn one_origin_header_or_none() {
        let mut headers = HeaderMap::new();
        assert_eq!(origin_of(&headers), None);
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://a.example"),
        );
        assert_eq!(origin_of(&headers), Some("https://a.example"));
        headers.append(
            header::ORIGIN,
            HeaderValue::from_static("https://b.example"),
        );
        assert_eq!(origin_of(&headers), None);
    }
}
