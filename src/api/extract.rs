//! Request extractors: JSON bodies that fail as problem+json without
//! echoing input, and the authenticated caller.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{StatusCode, header, request::Parts};
use serde::de::DeserializeOwned;

use std::net::SocketAddr;

use axum::extract::ConnectInfo;

use super::{ApiError, AppState, RequestId};
use crate::access::{Authenticated, Credential, Principal};
use crate::audit::{AuditEvent, Outcome};
use crate::store::StoreError;
use crate::tls::PeerCertificate;

/// A JSON body, read but not yet parsed, so a handler can authorise the
/// caller first. Wrong content type → 400 `malformed_request`; over the body
/// limit → 413 `payload_too_large`.
pub struct JsonBody(pub Bytes);

impl JsonBody {
    /// Parses the body (see [`parse_json`]).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        parse_json(&self.0)
    }
}

fn is_json(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json);
        if !json_type {
            return Err(ApiError::Malformed("The body must be application/json."));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::Malformed("The request body could not be read.")
            }
        })?;
        Ok(Self(bytes))
    }
}

/// A JSON body parsed at once, for routes with nothing to authorise first:
/// broken JSON → 400 `malformed_request`; the wrong shape → 422
/// `validation_failed` naming the field path, never the value.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        JsonBody::from_request(req, state)
            .await?
            .parse()
            .map(ApiJson)
    }
}

/// Parses JSON, reporting only the path of a field that does not fit.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        use serde_json::error::Category;
        match e.inner().classify() {
            Category::Data => {
                let field = crate::records::safe_field_path(e.path());
                ApiError::field(&field, "missing, unknown, or of the wrong type")
            }
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::Malformed("The body is not valid JSON.")
            }
        }
    })?;
    deserializer
        .end()
        .map_err(|_| ApiError::Malformed("The body is not valid JSON."))?;
    Ok(value)
}

/// The request's bearer credential, if it sent one.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The authenticated caller behind the request's bearer credential (an API
/// key or a session token). While sealed no credential can be checked, so
/// this answers 503 `sealed`. A principal bound to client certificates
/// (`client_cert_sha256`) is accepted only on a connection that presented
/// one of them ([`crate::tls::PeerCertificate`]); otherwise 401, audited
/// as `auth.client_cert_refused`: whoever sent it holds the principal's
/// credential, so unlike a wrong credential this is worth an entry.
pub struct Caller(pub Authenticated);

impl Caller {
    pub fn principal(&self) -> &Principal {
        &self.0.principal
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let credential = bearer(&parts.headers).ok_or(ApiError::Unauthenticated)?;
        // A publishable key is public: its client address pays for the
        // attempt before the key is even looked up.
        if crate::access::looks_like_publishable_key(credential) {
            super::collect::admit_address(state, parts)?;
        }
        let keys = state.keyring.keys()?;
        let mut authenticated = state.principals.authenticate(
            &*keys.credential_key()?,
            &state.settings.sessions,
            credential,
        )?;
        drop(keys);
        if authenticated.principal.kind == crate::access::PrincipalKind::Publishable {
            super::collect::admit_publishable(state, parts, &authenticated.principal).await?;
        }
        let bound = &authenticated.principal.client_cert_sha256;
        if !bound.is_empty() {
            let presented = parts
                .extensions
                .get::<PeerCertificate>()
                .cloned()
                .unwrap_or_default();
            if !presented.matches_any(bound) {
                let ctx = RequestContext::from_request_parts(parts, state).await?;
                return Err(refuse_unbound_connection(
                    state,
                    &ctx,
                    &authenticated.principal,
                    &presented,
                )
                .await);
            }
        }
        if let (Some(touch), Credential::Session { key }) =
            (authenticated.touch.take(), &authenticated.credential)
        {
            let store = std::sync::Arc::clone(&state.store);
            let key = key.clone();
            let touched = tokio::task::spawn_blocking(move || match store.commit(touch) {
                // Changed since it was read: still there means another
                // request touched it first; gone means it was ended.
                Err(StoreError::Conflict) => match store.get(key.as_bytes()) {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err(ApiError::Unauthenticated),
                    Err(e) => Err(e.into()),
                },
                other => other.map_err(ApiError::from),
            })
            .await
            .map_err(|_| ApiError::Internal)?;
            touched?;
        }
        Ok(Self(authenticated))
    }
}

/// Audits a bound principal's credential arriving without one of its
/// certificates, then answers 401. The entry is written whether or not the
/// client waits for the answer.
async fn refuse_unbound_connection(
    state: &AppState,
    ctx: &RequestContext,
    principal: &Principal,
    presented: &PeerCertificate,
) -> ApiError {
    let reason = match &presented.0 {
        None => "credential of a certificate-bound principal on a connection without a client certificate".to_owned(),
        Some(certificate) => format!(
            "credential of a certificate-bound principal on a connection with another client certificate (sha256 {})",
            certificate.cert_sha256
        ),
    };
    tracing::warn!(
        request_id = %ctx.request_id,
        principal = %principal.id,
        client = ctx.client.as_deref().unwrap_or("unknown"),
        certificate_presented = presented.0.is_some(),
        "API key of a certificate-bound principal without its client certificate; refused"
    );
    // Each refusal costs the sender nothing but a request; past a budget a
    // minute, they are answered and logged, not written to the audit log.
    if !matches!(
        state.cert_refusals.take(&principal.id, state.clock.now()),
        Ok(Ok(()))
    ) {
        return ApiError::Unauthenticated;
    }
    let event = AuditEvent {
        reason: Some(reason),
        ..ctx
            .event(&principal.id, "auth.client_cert_refused", Outcome::Denied)
            .target(principal.id.clone())
    };
    let state = state.clone();
    match super::to_the_end(async move { state.record(event).await }).await {
        Ok(_) => ApiError::Unauthenticated,
        Err(e) => e,
    }
}

/// What every audit entry records about the request.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub client: Option<String>,
}

impl RequestContext {
    /// An audit event for this request.
    pub fn event(&self, actor: &str, action: &'static str, outcome: Outcome) -> AuditEvent {
        AuditEvent {
            request_id: Some(self.request_id.clone()),
            client: self.client.clone(),
            ..AuditEvent::new(actor, action, outcome)
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::from_parts(parts))
    }
}

impl RequestContext {
    /// The context of the request whose parts these are.
    pub fn from_parts(parts: &Parts) -> Self {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let client = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        Self { request_id, client }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        pan: String,
    }

    #[test]
    fn json_errors_never_echo_values() {
        let err = parse_json::<Body>(br#"{"pan": 4242424242424242}"#).unwrap_err();
        let problem = err.problem();
        assert_eq!(problem.code, "validation_failed");
        assert_eq!(problem.errors[0].field, "pan");
        assert!(!serde_json::to_string(&problem).unwrap().contains("4242"));

        let err = parse_json::<Body>(br#"{"pan": "1", "cvv": "123"}"#).unwrap_err();
        assert_eq!(err.problem().code, "validation_failed");
        assert!(
            !serde_json::to_string(&err.problem())
                .unwrap()
                .contains("123")
        );

        assert_eq!(
            parse_json::<Body>(b"{not json").unwrap_err().problem().code,
            "malformed_request"
        );
        assert_eq!(
            parse_json::<Body>(br#"{"pan":"1"} trailing"#)
                .unwrap_err()
                .problem()
                .code,
            "malformed_request"
        );
    }

    #[test]
    fn content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/jsonx"));
    }
}
