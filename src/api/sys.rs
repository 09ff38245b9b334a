//! `/v1/sys/*`: health, unseal, seal.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use super::extract::{ApiJson, Caller, RequestContext};
use super::{ApiError, AppState, Problem};
use crate::access::Operation;
use crate::audit::{AuditEvent, Outcome};
use crate::clock::Clock;
use crate::keyring::{KeyringError, UnsealInput, UnsealProgress};

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `sealed`.
    pub status: &'static str,
    pub sealed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'static str>,
}

/// Liveness and seal state.
#[utoipa::path(get, path = "/v1/sys/health", tag = "sys", operation_id = "health",
    responses(
        (status = 200, description = "Unsealed and serving", body = Health),
        (status = 503, description = "Sealed", body = Health),
    ))]
pub async fn health(State(state): State<AppState>) -> Response {
    if state.keyring.is_sealed() {
        let body = Health {
            status: "sealed",
            sealed: true,
            version: None,
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    } else {
        Json(Health {
            status: "ok",
            sealed: false,
            version: Some(env!("CARGO_PKG_VERSION")),
        })
        .into_response()
    }
}

/// Exactly one of `passphrase` or `share`.
/// Failed unseals are counted for the whole vault, not per client.
const UNSEAL_KEY: &str = "vault";

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnsealRequest {
    pub passphrase: Option<String>,
    pub share: Option<String>,
}

/// The unseal body as the document gives it: exactly one of a passphrase
/// or a share (documentation only: the handler parses [`UnsealRequest`]
/// and answers 422 for neither or both).
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum UnsealBody {
    Passphrase(UnsealPassphrase),
    Share(UnsealShare),
}

#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct UnsealPassphrase {
    pub passphrase: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct UnsealShare {
    /// One Shamir share as `init` printed it.
    pub share: String,
}

/// Submits a passphrase or one share.
#[utoipa::path(post, path = "/v1/sys/unseal", tag = "sys", operation_id = "unseal",
    request_body(content = UnsealBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Accepted (or already unsealed); progress so far", body = UnsealProgress),
        (status = 400, description = "`unseal_failed`: a wrong passphrase or an invalid share; or `malformed_request`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: neither or both of passphrase and share, or an unknown field", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: too many failed attempts", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`audit_unavailable`: the attempt could not be audited, so it does not stand", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn unseal(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiJson(body): ApiJson<UnsealRequest>,
) -> Result<Json<UnsealProgress>, ApiError> {
    let input = match (body.passphrase, body.share) {
        (Some(p), None) => UnsealInput::Passphrase(Zeroizing::new(p)),
        (None, Some(s)) => UnsealInput::Share(Zeroizing::new(s)),
        _ => {
            return Err(ApiError::field(
                "body",
                "give exactly one of passphrase or share",
            ));
        }
    };
    // Already unsealed: nothing to do, nothing to audit (or anyone could
    // grow the audit log at will).
    if !state.keyring.is_sealed() {
        return Ok(Json(state.keyring.unseal_status()));
    }
    let clock: Arc<dyn Clock> = Arc::clone(&state.clock);
    if let Some(retry_after_secs) = state.unseal_failures.retry_after(UNSEAL_KEY, clock.now()) {
        return Err(ApiError::RateLimited { retry_after_secs });
    }
    let _permit = state
        .unseal_work
        .acquire()
        .await
        .map_err(|_| ApiError::Internal)?;
    let keyring = Arc::clone(&state.keyring);
    let result = tokio::task::spawn_blocking(move || keyring.unseal(input))
        .await
        .map_err(|_| ApiError::Internal)?;
    match result {
        Ok(progress) => {
            let event = AuditEvent {
                reason: Some(format!(
                    "progress {}/{}",
                    progress.progress, progress.threshold
                )),
                ..ctx.event("anonymous", "sys.unseal", Outcome::Allowed)
            };
            if let Err(e) = state.record(event).await {
                // Fail closed: an unseal that left no entry does not stand.
                state.keyring.seal();
                return Err(e);
            }
            if !progress.sealed {
                tracing::info!("vault unsealed");
                // Sign whatever an unclean stop left unsigned.
                if let Err(e) = state.audit.checkpoint() {
                    tracing::error!(error = %e, "audit checkpoint at unseal failed");
                }
            }
            Ok(Json(progress))
        }
        Err(KeyringError::UnsealFailed(why)) => {
            state.unseal_failures.record(UNSEAL_KEY, clock.now());
            tracing::warn!(reason = why, "unseal attempt refused");
            let event = AuditEvent {
                reason: Some(why.to_owned()),
                ..ctx.event("anonymous", "sys.unseal", Outcome::Denied)
            };
            state.record(event).await?;
            Err(ApiError::UnsealFailed(why))
        }
        Err(other) => Err(other.into()),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SealState {
    pub sealed: bool,
}

/// Seals the vault: every key is dropped and zeroized.
#[utoipa::path(post, path = "/v1/sys/seal", tag = "sys", operation_id = "seal",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Sealed", body = SealState),
        (status = 403, description = "`forbidden`: not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`sealed`: already sealed; or `audit_unavailable`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn seal(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
) -> Result<Json<SealState>, ApiError> {
    state.authorize(&caller, Operation::SysSeal, &ctx).await?;
    let actor = caller.principal().id.clone();
    drop(caller);
    state
        .record(ctx.event(&actor, "sys.seal", Outcome::Allowed))
        .await?;
    state.seal();
    tracing::info!(actor = %actor, "vault sealed");
    Ok(Json(SealState { sealed: true }))
}
