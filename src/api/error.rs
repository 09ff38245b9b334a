//! The one table from domain errors to HTTP: status, stable `code`, title.
//! Bodies are RFC 9457 `application/problem+json`. A 5xx body never says
//! why; the log does (and the log never holds personal data or secrets).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::access::AccessError;
use crate::keyring::KeyringError;
use crate::store::StoreError;

/// A validation failure on one field. The message never repeats the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable code (API.md "Conventions").
    pub code: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// Every error a handler can answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    Unauthenticated,
    Forbidden,
    Sealed,
    NotFound,
    MethodNotAllowed,
    Malformed(&'static str),
    Validation(Vec<FieldError>),
    PayloadTooLarge,
    RateLimited {
        retry_after_secs: u64,
    },
    Conflict(&'static str),
    /// An `Idempotency-Key` used before with another request.
    IdempotencyMismatch,
    UnsealFailed(&'static str),
    Integrity,
    AuditUnavailable,
    /// The change and its audit entry were applied, but the store's sync
    /// failed: not acknowledged, yet they may still become durable.
    AuditNotDurable,
    /// The store did not answer a readiness probe (in time).
    StoreUnavailable,
    Internal,
    Erased,
    TokenExpired,
    TokenRevoked,
    ReasonRequired,
    ApprovalRequired,
    /// A legal hold stops this erasure (docs/lifecycle.md, "Legal hold").
    LegalHold,
    /// A hold is released by another compliance approver than the one who
    /// placed it.
    FourEyesRequired,
    /// The relay body is neither JSON nor a form.
    UnsupportedMediaType,
    /// A relay route that a second admin has not approved (yet).
    RoutePending,
    /// A relay route an admin disabled.
    RouteDisabled,
    /// A relay needs a card's CVC and this node holds none for it.
    CvcUnavailable,
    /// The relay destination is not allowed (docs/payment-path.md "SSRF
    /// defences"); the detail names the rule, never an address.
    DestinationRefused(&'static str),
    /// The relay could not reach the upstream or complete TLS with it.
    UpstreamUnavailable,
    /// The upstream did not answer within the route's time.
    UpstreamTimeout,
    /// The upstream's answer passed `relay.max_body_bytes`.
    UpstreamTooLarge,
}

impl ApiError {
    /// Status, stable code and title: the whole mapping, in one place.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::Malformed(_) => (
                StatusCode::BAD_REQUEST,
                "malformed_request",
                "Malformed request",
            ),
            Self::UnsealFailed(_) => (StatusCode::BAD_REQUEST, "unseal_failed", "Unseal failed"),
            Self::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Unauthenticated",
            ),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found", "Not found"),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
            ),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            Self::IdempotencyMismatch => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_mismatch",
                "Idempotency key reused",
            ),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
            ),
            Self::Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "Validation failed",
            ),
            Self::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Rate limited",
            ),
            Self::Integrity => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "integrity_error",
                "Integrity error",
            ),
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Internal error",
            ),
            Self::Sealed => (StatusCode::SERVICE_UNAVAILABLE, "sealed", "Sealed"),
            Self::Erased => (StatusCode::GONE, "erased", "Erased"),
            Self::TokenExpired => (StatusCode::GONE, "token_expired", "Token expired"),
            Self::TokenRevoked => (StatusCode::GONE, "token_revoked", "Token revoked"),
            Self::ReasonRequired => (
                StatusCode::BAD_REQUEST,
                "reason_required",
                "Reason required",
            ),
            Self::ApprovalRequired => (
                StatusCode::FORBIDDEN,
                "approval_required",
                "Approval required",
            ),
            Self::LegalHold => (StatusCode::CONFLICT, "legal_hold", "Legal hold"),
            Self::FourEyesRequired => (
                StatusCode::FORBIDDEN,
                "four_eyes_required",
                "Four eyes required",
            ),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
            ),
            Self::RoutePending => (StatusCode::CONFLICT, "route_pending", "Route pending"),
            Self::RouteDisabled => (StatusCode::CONFLICT, "route_disabled", "Route disabled"),
            Self::CvcUnavailable => (StatusCode::CONFLICT, "cvc_unavailable", "CVC unavailable"),
            Self::AuditUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "Audit unavailable",
            ),
            Self::AuditNotDurable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "Audit unavailable",
            ),
            Self::StoreUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "Store unavailable",
            ),
            Self::DestinationRefused(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "destination_refused",
                "Destination refused",
            ),
            Self::UpstreamUnavailable => (
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "Upstream unavailable",
            ),
            Self::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "Upstream timeout",
            ),
            Self::UpstreamTooLarge => (
                StatusCode::BAD_GATEWAY,
                "upstream_too_large",
                "Upstream answer too large",
            ),
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::Unauthenticated => "A valid credential is required.".into(),
            Self::Forbidden => "Your roles do not allow this operation.".into(),
            Self::Sealed => "The vault is sealed; unseal it first.".into(),
            Self::NotFound => "No such resource.".into(),
            Self::MethodNotAllowed => "This resource does not support that method.".into(),
            Self::Malformed(why) | Self::Conflict(why) | Self::UnsealFailed(why) => (*why).into(),
            Self::Validation(_) => "The request body failed validation; see errors.".into(),
            Self::PayloadTooLarge => "The request body exceeds the configured limit.".into(),
            Self::IdempotencyMismatch => "This Idempotency-Key was used with another request \
                within the last 24 hours; use a new key for a new request."
                .into(),
            Self::RateLimited { retry_after_secs } => {
                format!("Too many attempts; retry after {retry_after_secs} seconds.")
            }
            Self::Integrity | Self::Internal => "The server could not complete the request.".into(),
            Self::AuditUnavailable => {
                "The audit log could not be written; nothing was done.".into()
            }
            Self::AuditNotDurable => "The change and its audit entry may have been written, but \
                the store could not confirm they are on disk: the change was not acknowledged and \
                may still become durable. Check its outcome before retrying."
                .into(),
            Self::StoreUnavailable => "The store did not answer; this node is not ready.".into(),
            Self::Erased => "The record was erased.".into(),
            Self::TokenExpired => "The token has expired or used up its uses.".into(),
            Self::TokenRevoked => "The token was revoked.".into(),
            Self::ReasonRequired => "A reason and a case ticket are required.".into(),
            Self::ApprovalRequired => {
                "These fields need an access request approved by another person.".into()
            }
            Self::LegalHold => {
                "A legal hold is placed on this record or its subject; nothing was changed.".into()
            }
            Self::FourEyesRequired => "You placed this hold; another compliance approver must \
                release it."
                .into(),
            Self::UnsupportedMediaType => {
                "The body must be application/json or application/x-www-form-urlencoded.".into()
            }
            Self::RoutePending => {
                "The relay route waits for a second admin's approval; nothing was sent.".into()
            }
            Self::RouteDisabled => "The relay route is disabled; nothing was sent.".into(),
            Self::CvcUnavailable => "No CVC is held for this card on this node (never attached, \
                already used, expired, or attached on another node); nothing was sent."
                .into(),
            Self::DestinationRefused(why) => format!("The relay destination is refused: {why}."),
            Self::UpstreamUnavailable => {
                "The upstream could not be reached or its TLS certificate was not trusted; nothing \
                 was received from it."
                    .into()
            }
            Self::UpstreamTimeout => "The upstream did not answer in time; the request may or \
                may not have reached it."
                .into(),
            Self::UpstreamTooLarge => {
                "The upstream's answer exceeds the relay's size limit; it was not returned.".into()
            }
        }
    }

    pub fn problem(&self) -> Problem {
        let (status, code, title) = self.parts();
        Problem {
            problem_type: format!("urn:strongroom:problem:{code}"),
            title,
            status: status.as_u16(),
            detail: self.detail(),
            code,
            errors: match self {
                Self::Validation(errors) => errors.clone(),
                _ => Vec::new(),
            },
        }
    }

    /// A validation error on one field.
    pub fn field(field: &str, message: &str) -> Self {
        Self::Validation(vec![FieldError {
            field: field.to_owned(),
            message: message.to_owned(),
        }])
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if matches!(self, Self::AuditNotDurable | Self::UpstreamTimeout) {
            response
                .extensions_mut()
                .insert(super::idempotency::OutcomeUnknown);
        }
        let headers = response.headers_mut();
        if let Self::RateLimited { retry_after_secs } = self
            && let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string())
        {
            headers.insert(header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<KeyringError> for ApiError {
    fn from(e: KeyringError) -> Self {
        match e {
            KeyringError::Sealed => Self::Sealed,
            KeyringError::UnsealFailed(why) => Self::UnsealFailed(why),
            KeyringError::Integrity => {
                tracing::error!("integrity error: a stored ciphertext failed authentication");
                Self::Integrity
            }
            other => {
                tracing::error!(error = %other, "keyring failure");
                Self::Internal
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failure");
        Self::Internal
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Unauthenticated => Self::Unauthenticated,
            AccessError::Invalid { field, message } => Self::field(field, message),
            AccessError::Keyring(k) => k.into(),
            other => {
                tracing::error!(error = %other, "access failure");
                Self::Internal
            }
        }
    }
}

impl From<crate::vault::VaultError> for ApiError {
    fn from(e: crate::vault::VaultError) -> Self {
        use crate::vault::VaultError as V;
        match e {
            V::NotFound => Self::NotFound,
            V::Erased => Self::Erased,
            V::Keyring(k) => k.into(),
            V::Store(s) => s.into(),
            V::Corrupt => {
                tracing::error!("a stored vault record does not parse");
                Self::Integrity
            }
            V::TokenSpace => Self::Conflict("Could not mint a unique token; try again."),
        }
    }
}

impl From<crate::lifecycle::LifecycleError> for ApiError {
    fn from(e: crate::lifecycle::LifecycleError) -> Self {
        use crate::lifecycle::LifecycleError as L;
        match e {
            L::Keyring(k) => k.into(),
            L::Store(s) => s.into(),
        }
    }
}

impl From<Vec<crate::records::Invalid>> for ApiError {
    fn from(errors: Vec<crate::records::Invalid>) -> Self {
        Self::Validation(
            errors
                .into_iter()
                .map(|e| FieldError {
                    field: e.field,
                    message: e.message.to_owned(),
                })
                .collect(),
        )
    }
}

impl From<crate::relay::upstream::UpstreamError> for ApiError {
    fn from(e: crate::relay::upstream::UpstreamError) -> Self {
        use crate::relay::upstream::{DestinationError as D, UpstreamError as U};
        match e {
            U::Destination(d) => Self::DestinationRefused(match d {
                D::NonGlobal(_) => {
                    "its host resolves to a loopback, private, link-local or other non-public address"
                }
                D::Unresolvable => "its host name does not resolve",
                D::NotHttps => "only https:// destinations are allowed",
                D::PathEscapes => "the path must stay under the route's base path",
                D::Userinfo | D::Query | D::Fragment | D::NoHost | D::Unparsable => {
                    "the route's base URL is not an allowed https URL"
                }
            }),
            U::Unavailable(_) => Self::UpstreamUnavailable,
            U::Timeout => Self::UpstreamTimeout,
            U::TooLarge => Self::UpstreamTooLarge,
            U::InvalidCa => Self::field("ca_pem", "holds no usable PEM certificate"),
        }
    }
}

impl From<crate::relay::splice::SpliceError> for ApiError {
    fn from(e: crate::relay::splice::SpliceError) -> Self {
        use crate::relay::splice::SpliceError as S;
        match e {
            S::Malformed(_) => Self::Malformed("The body does not parse as its content type says."),
            S::Missing { .. } => {
                tracing::error!("relay render without a value for a placeholder");
                Self::Internal
            }
            other => Self::field(other.location(), other.message()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table matches API.md's status for every stable code.
    #[test]
    fn codes_and_statuses_follow_the_contract() {
        let cases = [
            (ApiError::Unauthenticated, 401, "unauthenticated"),
            (ApiError::Forbidden, 403, "forbidden"),
            (ApiError::Sealed, 503, "sealed"),
            (ApiError::NotFound, 404, "not_found"),
            (ApiError::field("pan", "bad"), 422, "validation_failed"),
            (ApiError::Malformed("x"), 400, "malformed_request"),
            (ApiError::PayloadTooLarge, 413, "payload_too_large"),
            (
                ApiError::RateLimited {
                    retry_after_secs: 3,
                },
                429,
                "rate_limited",
            ),
            (ApiError::Conflict("x"), 409, "conflict"),
            (ApiError::Integrity, 500, "integrity_error"),
            (ApiError::AuditUnavailable, 503, "audit_unavailable"),
            (ApiError::AuditNotDurable, 503, "audit_unavailable"),
            (ApiError::StoreUnavailable, 503, "store_unavailable"),
            (ApiError::UnsealFailed("x"), 400, "unseal_failed"),
            (ApiError::Erased, 410, "erased"),
            (ApiError::TokenExpired, 410, "token_expired"),
            (ApiError::TokenRevoked, 410, "token_revoked"),
            (ApiError::ReasonRequired, 400, "reason_required"),
            (ApiError::ApprovalRequired, 403, "approval_required"),
            (ApiError::LegalHold, 409, "legal_hold"),
            (ApiError::FourEyesRequired, 403, "four_eyes_required"),
            (
                ApiError::UnsupportedMediaType,
                415,
                "unsupported_media_type",
            ),
            (ApiError::RoutePending, 409, "route_pending"),
            (ApiError::RouteDisabled, 409, "route_disabled"),
            (ApiError::CvcUnavailable, 409, "cvc_unavailable"),
            (
                ApiError::DestinationRefused("x"),
                422,
                "destination_refused",
            ),
            (ApiError::UpstreamUnavailable, 502, "upstream_unavailable"),
            (ApiError::UpstreamTimeout, 504, "upstream_timeout"),
            (ApiError::UpstreamTooLarge, 502, "upstream_too_large"),
        ];
        for (error, status, code) in cases {
            let (s, c, _) = error.parts();
            assert_eq!((s.as_u16(), c), (status, code), "{error:?}");
            let problem = error.problem();
            assert_eq!(problem.status, status);
            assert_eq!(problem.code, code);
        }
    }

    /// Relay transport errors map to their own codes, and neither the
    /// detail nor the field ever carries an address, a token or a value.
    #[test]
    fn relay_errors_map_to_their_codes_without_values() {
        use crate::relay::splice::{BodyKind, SpliceError, Template};
        use crate::relay::upstream::{DestinationError as D, UpstreamError as U};
        let cases = [
            (
                U::Destination(D::NonGlobal("loopback")),
                422,
                "destination_refused",
            ),
            (U::Destination(D::NotHttps), 422, "destination_refused"),
            (U::Destination(D::PathEscapes), 422, "destination_refused"),
            (U::Unavailable("tls"), 502, "upstream_unavailable"),
            (U::Timeout, 504, "upstream_timeout"),
            (U::TooLarge, 502, "upstream_too_large"),
            (U::InvalidCa, 422, "validation_failed"),
        ];
        for (error, status, code) in cases {
            let problem = ApiError::from(error).problem();
            assert_eq!((problem.status, problem.code), (status, code));
            assert!(!problem.detail.contains("127.0.0.1"));
        }
        let token = "tok_0123456789abcdef0123456789abcdef";
        let body = format!(r#"{{"card":{{"number":"x {{{{{token}:pan}}}}"}}}}"#);
        let error = Template::parse(BodyKind::Json, body.as_bytes()).unwrap_err();
        let problem = ApiError::from(error).problem();
        assert_eq!((problem.status, problem.code), (422, "validation_failed"));
        assert_eq!(problem.errors[0].field, "/card/number");
        let shown = serde_json::to_string(&problem).unwrap();
        assert!(!shown.contains(token), "{shown}");
        let malformed = ApiError::from(SpliceError::Malformed("JSON")).problem();
        assert_eq!(malformed.code, "malformed_request");
        let missing = ApiError::from(SpliceError::Missing {
            location: "/a".into(),
        })
        .problem();
        assert_eq!(missing.status, 500);
    }

    #[test]
    fn a_500_says_nothing_about_its_cause() {
        let detail = ApiError::from(KeyringError::Io("/secret/path: denied".into()))
            .problem()
            .detail;
        assert!(!detail.contains("secret"));
    }

    #[test]
    fn rate_limited_carries_retry_after() {
        let response = ApiError::RateLimited {
            retry_after_secs: 7,
        }
        .into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}
