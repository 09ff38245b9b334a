//! Request extractors: JSON bodies that fail as problem+json without
//! echoing input, and the authenticated caller.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{StatusCode, header, request::Parts};
use serde::de::DeserializeOwned;

use super::{ApiError, AppState};
use crate::access::{Operation, Principal};

/// A JSON body. Wrong content type or broken JSON → 400
/// `malformed_request`; a body of the wrong shape → 422
/// `validation_failed` naming the field path, never the value; over the
/// body limit → 413 `payload_too_large`.
pub struct ApiJson<T>(pub T);

fn is_json(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
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
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses JSON, reporting only the path of a field that does not fit.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        use serde_json::error::Category;
        match e.inner().classify() {
            Category::Data => {
                let path = e.path().to_string();
                let field = if path == "." { "body".to_owned() } else { path };
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

/// The authenticated principal behind the request's bearer credential.
/// While sealed no credential can be checked, so this answers 503 `sealed`.
pub struct Caller(pub Principal);

impl Caller {
    /// Forbidden unless one of the caller's roles allows `op`.
    pub fn require(&self, op: Operation) -> Result<&Principal, ApiError> {
        if self.0.may(op) {
            Ok(&self.0)
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let credential = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(ApiError::Unauthenticated)?;
        let keys = state.keyring.keys()?;
        let principal = state
            .principals
            .authenticate_api_key(&keys.credential_key(), credential)?;
        Ok(Self(principal))
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
