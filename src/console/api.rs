//! The API, called in process: the console's only way to do anything.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use serde_json::Value;
use tower::ServiceExt;

use super::session::Cx;
use super::views::at;

/// The largest API answer the console reads (an audit page of 1000
/// entries fits with room to spare).
const ANSWER_LIMIT: usize = 16 * 1024 * 1024;

/// The API router, as the console calls it.
#[derive(Clone)]
pub struct Api(Router);

/// One API answer: its status, its `Retry-After` (seconds) if any, and
/// its JSON body (`Null` when it had none).
pub struct Reply {
    pub status: StatusCode,
    pub retry_after: Option<u64>,
    pub body: Value,
}

impl Reply {
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// The problem's `code`, when the API refused.
    pub fn code(&self) -> &str {
        at(&self.body, "code").as_str().unwrap_or_default()
    }

    /// The problem's `detail` (or title): safe to show, it never echoes
    /// input.
    pub fn detail(&self) -> String {
        at(&self.body, "detail")
            .as_str()
            .or_else(|| at(&self.body, "title").as_str())
            .unwrap_or("The request failed.")
            .to_owned()
    }

    /// The problem's field errors, as (field, message).
    pub fn field_errors(&self) -> Vec<(String, String)> {
        at(&self.body, "errors")
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| {
                        Some((
                            at(e, "field").as_str()?.to_owned(),
                            at(e, "message").as_str()?.to_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Api {
    pub fn new(router: Router) -> Self {
        Self(router)
    }

    /// Calls `method path` with the request's session (if any) as the
    /// bearer credential, the request's id, client address and client
    /// certificate, and `body` as JSON.
    pub async fn call(&self, cx: &Cx, method: Method, path: &str, body: Option<&Value>) -> Reply {
        self.call_as(cx, cx.token.as_deref(), method, path, body)
            .await
    }

    /// Like [`Api::call`], with `token` (or none) as the credential.
    pub async fn call_as(
        &self,
        cx: &Cx,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Reply {
        match self.try_call(cx, token, method, path, body).await {
            Ok(reply) => reply,
            Err(()) => Reply {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                retry_after: None,
                body: serde_json::json!({"code": "internal", "detail": "The console could not reach the API."}),
            },
        }
    }

    async fn try_call(
        &self,
        cx: &Cx,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, ()> {
        let bytes = match body {
            Some(value) => serde_json::to_vec(value).map_err(|_| ())?,
            None => Vec::new(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(bytes))
            .map_err(|_| ())?;
        let headers = request.headers_mut();
        if body.is_some() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if let Ok(id) = HeaderValue::from_str(&cx.request_id) {
            headers.insert("x-request-id", id);
        }
        if let Some(token) = token
            && let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {token}"))
        {
            headers.insert(header::AUTHORIZATION, bearer);
        }
        let extensions = request.extensions_mut();
        if let Some(client) = cx.client {
            extensions.insert(client);
        }
        if let Some(certificate) = cx.certificate.clone() {
            extensions.insert(certificate);
        }
        let response = self.0.clone().oneshot(request).await.map_err(|_| ())?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let bytes = axum::body::to_bytes(response.into_body(), ANSWER_LIMIT)
            .await
            .map_err(|_| ())?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok(Reply {
            status,
            retry_after,
            body,
        })
    }
}
