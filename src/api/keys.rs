//! `/v1/keys`: KEK metadata and rotation (admin). Never key bytes.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;

use super::extract::{Caller, RequestContext};
use super::{ApiError, AppState, AuditedChange, Problem};
use crate::access::Operation;
use crate::audit::Outcome;
use crate::keyring::{KekMetadata, Purpose};

/// The KEK families, as the rotate path names them (documentation only:
/// `Purpose::parse` reads the path).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum KeyPurpose {
    Kyc,
    Card,
    Bank,
    Generic,
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KekMetadata>,
}

/// Every KEK version per purpose: version, creation time, encryptions.
#[utoipa::path(get, path = "/v1/keys", tag = "keys", operation_id = "list_keys",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "KEK metadata", body = KeyList),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
) -> Result<Json<KeyList>, ApiError> {
    state.authorize(&caller, Operation::KeysRead, &ctx).await?;
    state
        .record(ctx.event(&caller.principal().id, "key.read", Outcome::Allowed))
        .await?;
    Ok(Json(KeyList {
        keys: state.keyring.kek_metadata()?,
    }))
}

/// Adds a KEK version for `purpose` (kyc, card, bank, generic); new writes
/// use it, older versions still decrypt.
#[utoipa::path(post, path = "/v1/keys/{purpose}/rotate", tag = "keys", operation_id = "rotate_key",
    security(("bearer" = [])),
    params(("purpose" = KeyPurpose, Path, description = "The KEK family")),
    responses(
        (status = 200, description = "The new version", body = KekMetadata),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no such purpose", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn rotate(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(purpose): Path<String>,
) -> Result<Json<KekMetadata>, ApiError> {
    state
        .authorize(&caller, Operation::KeysRotate, &ctx)
        .await?;
    let purpose = Purpose::parse(&purpose).ok_or(ApiError::NotFound)?;
    let event = ctx
        .event(&caller.principal().id, "key.rotate", Outcome::Allowed)
        .target(format!("kek/{}", purpose.as_str()));
    let state2 = state.clone();
    let version = tokio::task::spawn_blocking(move || {
        // The new version and its audit entry are one transaction.
        let change = AuditedChange::new(&state2.audit, event);
        state2
            .keyring
            .rotate_with(purpose, &|tx| change.commit(tx))
            .map_err(|e| change.refusal(e))
    })
    .await
    .map_err(|_| ApiError::Internal)??;
    let metadata = state
        .keyring
        .kek_metadata()?
        .into_iter()
        .find(|m| m.purpose == purpose && m.version == version)
        .ok_or(ApiError::Internal)?;
    Ok(Json(metadata))
}
