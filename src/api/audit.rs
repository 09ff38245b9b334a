//! `/v1/audit`: reading and verifying the log (auditor, admin).

use axum::Json;
use axum::extract::{RawQuery, State};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use super::extract::{Caller, RequestContext};
use super::{ApiError, AppState, Problem};
use crate::access::Operation;
use crate::audit::{AuditEntry, AuditQuery, Outcome, Verification};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Principal id.
    pub actor: Option<String>,
    /// Target id (a record, a principal…).
    pub record: Option<String>,
    /// Dotted action name, e.g. `auth.login_failed`.
    pub action: Option<String>,
    /// RFC 3339; entries at or after.
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// RFC 3339; entries before.
    #[param(format = DateTime)]
    pub until: Option<String>,
    /// 1-1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    #[serde(
        default,
        deserialize_with = "crate::records::whole_number::query_option"
    )]
    pub limit: Option<usize>,
    /// Sequence number to continue after (the previous page's `next_after`).
    #[serde(
        default,
        deserialize_with = "crate::records::whole_number::query_option"
    )]
    pub after: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    /// Oldest first.
    pub entries: Vec<AuditEntry>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}

fn parse_time(field: &str, text: Option<String>) -> Result<Option<OffsetDateTime>, ApiError> {
    text.map(|t| {
        crate::clock::parse_rfc3339(&t)
            .ok_or_else(|| ApiError::field(field, "must be an RFC 3339 time"))
    })
    .transpose()
}

/// Entries, oldest first, filtered and paginated by sequence number.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", operation_id = "audit_entries",
    security(("bearer" = [])), params(AuditParams),
    responses(
        (status = 200, description = "A page of entries", body = AuditPage),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: an unknown parameter, a bad time or limit", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn entries(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<AuditPage>, ApiError> {
    state.authorize(&caller, Operation::AuditRead, &ctx).await?;
    let params: AuditParams = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|_| ApiError::field("query", "unknown parameter or wrong type"))?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::field("limit", "must be between 1 and 1000"));
    }
    let query = AuditQuery {
        since: parse_time("since", params.since)?,
        until: parse_time("until", params.until)?,
        actor: params.actor,
        target: params.record,
        action: params.action,
        after: params.after.unwrap_or(0),
        limit,
    };
    state
        .record(ctx.event(&caller.principal().id, "audit.read", Outcome::Allowed))
        .await?;
    let state2 = state.clone();
    let (entries, next_after) = tokio::task::spawn_blocking(move || state2.audit.query(&query))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|e| {
            tracing::error!(error = %e, "audit query failed");
            ApiError::Integrity
        })?;
    Ok(Json(AuditPage {
        entries,
        next_after,
    }))
}

/// Verifies the whole chain and every signature, and that the log still
/// reaches the newest signed head seen (this process's, or
/// `keys/audit.head`): a rolled-back or empty log is not ok.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", operation_id = "audit_verify",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The verdict", body = Verification),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn verify(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
) -> Result<Json<Verification>, ApiError> {
    state
        .authorize(&caller, Operation::AuditVerify, &ctx)
        .await?;
    state
        .record(ctx.event(&caller.principal().id, "audit.verify", Outcome::Allowed))
        .await?;
    let audit = state.audit.clone();
    let result = tokio::task::spawn_blocking(move || audit.verify())
        .await
        .map_err(|_| ApiError::Internal)??;
    Ok(Json(result))
}
