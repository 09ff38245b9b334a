//! Compliance lookups: blind-index search, reveal with reason and ticket,
//! and four-eyes access requests.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::extract::{Caller, JsonBody, RequestContext};
use super::{ApiError, AppState, Problem};
use crate::access::{DecisionError, Operation, RequestStatus};
use crate::audit::{AuditEvent, Outcome};
use crate::canary::AccessPath;
use crate::records::{RecordType, search_value};
use crate::store::Transaction;

/// A reason and a case ticket, both required, both bounded.
pub(super) fn justification(
    reason: Option<String>,
    ticket: Option<String>,
) -> Result<(String, String), ApiError> {
    let reason = reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .ok_or(ApiError::ReasonRequired)?;
    let ticket = ticket
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::ReasonRequired)?;
    if reason.chars().count() > 500 || reason.chars().any(char::is_control) {
        return Err(ApiError::field(
            "reason",
            "must be at most 500 characters, no control characters",
        ));
    }
    if ticket.len() > 64 || !ticket.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::field(
            "ticket",
            "must be at most 64 printable characters",
        ));
    }
    Ok((reason, ticket))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    #[schema(value_type = SearchField)]
    pub field: String,
    pub value: String,
    /// Required for national_id.
    pub country: Option<String>,
    /// Why: required (else 400 `reason_required`), at most 500 characters
    /// once trimmed, no control characters.
    #[schema(
        required = true,
        nullable = false,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub reason: Option<String>,
    /// The case ticket: required (else 400 `reason_required`), 1 to 64
    /// printable ASCII characters once trimmed.
    #[schema(required = true, nullable = false, pattern = r"^\s*[!-~]{1,64}\s*$")]
    pub ticket: Option<String>,
}

/// The fields search can look up (documentation only).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum SearchField {
    NationalId,
    Email,
    Phone,
    Pan,
}

/// What `search` answers (documentation only: the handler builds this
/// shape with `json!`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SearchResult {
    pub matches: Vec<SearchMatch>,
}

/// What `reveal` answers (documentation only, as [`SearchResult`]).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Revealed {
    pub id: String,
    /// Each named field's plaintext; `null` where the record has none.
    pub fields: Map<String, Value>,
}

#[derive(Serialize, ToSchema)]
pub struct SearchMatch {
    pub id: String,
    pub subject_ref: Option<String>,
}

/// Fields whose search is a guess at a value officers see only masked
/// (a national id's last 4; a PAN's brand and last 4): each search takes one
/// of the officer's `sensitive_searches_per_hour`, hit or miss.
const QUOTA_FIELDS: [&str; 2] = ["national_id", "pan"];

/// Exact-match search by blind index; answers record ids and subject refs
/// only. Searches by `pan` or `national_id` count against a per-officer
/// quota (misses included); a search that finds nothing is audited as
/// `no_match`.
#[utoipa::path(post, path = "/v1/search", tag = "compliance", operation_id = "search",
    security(("bearer" = [])),
    request_body(content = SearchRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Matching records (ids and subject refs only)", body = SearchResult),
        (status = 400, description = "`reason_required`: a reason or a ticket is missing or empty; or `malformed_request`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: an unknown field, or no country for a national id", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: the officer's PAN / national-id search quota is spent", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn search(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    state
        .authorize(&caller, Operation::RecordSearch, &ctx)
        .await?;
    let request: SearchRequest = body.parse()?;
    let value = zeroize::Zeroizing::new(request.value);
    let (reason, ticket) = justification(request.reason, request.ticket)?;
    if !["national_id", "email", "phone", "pan"].contains(&request.field.as_str()) {
        return Err(ApiError::field(
            "field",
            "must be national_id, email, phone or pan",
        ));
    }
    if request.field == "national_id" && request.country.is_none() {
        return Err(ApiError::field(
            "country",
            "is required to search a national id",
        ));
    }
    let principal = caller.principal();
    let normalised = search_value(&request.field, &value, request.country.as_deref());
    let fingerprint = state.audit.fingerprint(&format!(
        "{}\0{}",
        request.field,
        normalised.as_deref().unwrap_or(&value)
    ));
    let event = |outcome: Outcome, note: String| AuditEvent {
        target: fingerprint.clone(),
        reason: Some(format!("{reason} (field: {}{note})", request.field)),
        ticket: Some(ticket.clone()),
        ..ctx.event(&principal.id, "record.search", outcome)
    };
    // Reserved before the lookup, so parallel searches cannot overrun it.
    if QUOTA_FIELDS.contains(&request.field.as_str())
        && let Err(retry_after_secs) = state
            .sensitive_searches
            .take(&principal.id, state.clock.now())?
    {
        state
            .record(event(Outcome::Denied, "; rate limited".into()))
            .await?;
        return Err(ApiError::RateLimited { retry_after_secs });
    }
    let hits = match &normalised {
        Some(v) => state.vault.search(&request.field, v)?,
        None => Vec::new(),
    };
    // Every hit is opened, canary or not (the same work for each): a
    // canary among them is one alarm, an entry of its own.
    let mut alarms = Vec::new();
    for meta in &hits {
        let opened = state.vault.open(meta)?;
        if state.touched(&ctx, principal, AccessPath::Search, meta, &opened) == Outcome::Canary {
            alarms.push(meta.id.clone());
        }
    }
    let matches: Vec<SearchMatch> = hits
        .into_iter()
        .map(|meta| SearchMatch {
            id: meta.id,
            subject_ref: meta.subject_ref,
        })
        .collect();
    let outcome = if matches.is_empty() {
        watch_misses(&state, &principal.id, &request.field);
        Outcome::NoMatch
    } else {
        Outcome::Allowed
    };
    let note = format!(", matches: {}", matches.len());
    let mut batch = vec![(event(outcome, note.clone()), Transaction::new())];
    for id in alarms {
        let alarm = AuditEvent {
            target: Some(id),
            ..event(Outcome::Canary, note.clone())
        };
        batch.push((alarm, Transaction::new()));
    }
    state.commit_many(batch).await?;
    Ok(Json(json!({ "matches": matches })))
}

/// Counts a miss by `officer`; a WARN line (ids and counts only, never a
/// value) each time their misses in the window reach another multiple of
/// `search_miss_alert`: someone may be guessing.
pub(super) fn watch_misses(state: &AppState, officer: &str, field: &str) {
    // A per-node window in memory: it cannot fail.
    let Ok(misses) = state.search_misses.record(officer, state.clock.now()) else {
        return;
    };
    let alert = state.settings.search_miss_alert.max(1);
    if misses.is_multiple_of(alert) {
        tracing::warn!(
            actor = %officer,
            field,
            misses,
            window_minutes = super::SEARCH_MISS_WINDOW.whole_minutes(),
            "burst of blind-index search misses"
        );
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevealRequest {
    /// 1 to 16 distinct fields of the record's type.
    #[schema(min_items = 1, max_items = 16)]
    pub fields: Vec<String>,
    /// Why: required (else 400 `reason_required`), at most 500 characters
    /// once trimmed, no control characters.
    #[schema(
        required = true,
        nullable = false,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub reason: Option<String>,
    /// The case ticket: required (else 400 `reason_required`), 1 to 64
    /// printable ASCII characters once trimmed.
    #[schema(required = true, nullable = false, pattern = r"^\s*[!-~]{1,64}\s*$")]
    pub ticket: Option<String>,
}

/// Checks requested field names against `record_type`; whether any needs an
/// approval.
fn check_fields(record_type: RecordType, fields: &[String]) -> Result<bool, ApiError> {
    if fields.is_empty() || fields.len() > 16 {
        return Err(ApiError::field("fields", "name 1 to 16 fields"));
    }
    let known = record_type.revealable_fields();
    let mut needs_approval = false;
    for (i, name) in fields.iter().enumerate() {
        if fields
            .get(..i)
            .is_some_and(|earlier| earlier.contains(name))
        {
            return Err(ApiError::field(&format!("fields[{i}]"), "is named twice"));
        }
        match known.iter().find(|(f, _)| f == name) {
            Some((_, sensitive)) => needs_approval |= *sensitive,
            None => {
                return Err(ApiError::field(
                    &format!("fields[{i}]"),
                    "is not a field of this record type",
                ));
            }
        }
    }
    Ok(needs_approval)
}

/// Plaintext of named fields, with a reason and a case ticket; national ids
/// and full PANs only with an approved access request.
#[utoipa::path(post, path = "/v1/records/{id}/reveal", tag = "compliance", operation_id = "reveal_record",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Record id")),
    request_body(content = RevealRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The named fields in plaintext", body = Revealed),
        (status = 400, description = "`reason_required`: a reason or a ticket is missing or empty; or `malformed_request`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`, or `approval_required`: no approved access request for these fields", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`erased`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: no field, too many, one named twice, or one the record type lacks", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: the officer's reveals for this hour are used up", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn reveal(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    state
        .authorize_on(&caller, Operation::RecordReveal, &ctx, || {
            Ok(vec![state.target_of(&id)])
        })
        .await?;
    let request: RevealRequest = body.parse()?;
    let (reason, ticket) = justification(request.reason, request.ticket)?;
    let principal = caller.principal();
    let meta = state.vault.live_meta(&id)?;
    let needs_approval = check_fields(meta.record_type, &request.fields)?;
    let event = |outcome: Outcome, note: &str| AuditEvent {
        reason: Some(format!(
            "{reason} (fields: {}{note})",
            request.fields.join(",")
        )),
        ticket: Some(ticket.clone()),
        ..ctx
            .event(&principal.id, "record.reveal", outcome)
            .target(id.clone())
    };
    // An approval is spent by the reveal it allows, in the same commit.
    let mut spend_grants = Transaction::new();
    let mut grant_note = String::new();
    if needs_approval {
        let sensitive: Vec<&str> = request
            .fields
            .iter()
            .map(String::as_str)
            .filter(|f| {
                meta.record_type
                    .revealable_fields()
                    .iter()
                    .any(|(n, s)| n == f && *s)
            })
            .collect();
        match state
            .access_requests
            .take_grants(&principal.id, &id, &sensitive, &ticket)?
        {
            Some((spent, tx)) => {
                grant_note = format!("; approval {}", spent.join(","));
                spend_grants = tx;
            }
            None => {
                state
                    .record(event(
                        Outcome::Denied,
                        "; no unused approved access request with this ticket",
                    ))
                    .await?;
                return Err(ApiError::ApprovalRequired);
            }
        }
    }
    if let Err(retry_after_secs) = state.reveals.take(&principal.id, state.clock.now())? {
        state
            .record(event(Outcome::Denied, "; rate limited"))
            .await?;
        return Err(ApiError::RateLimited { retry_after_secs });
    }
    let opened = state.vault.open(&meta)?;
    let outcome = state.touched(&ctx, principal, AccessPath::Reveal, &meta, &opened);
    if state
        .try_commit(event(outcome, &grant_note), spend_grants)
        .await?
        .is_none()
    {
        // Another reveal spent the approval first.
        state
            .record(event(Outcome::Denied, "; approval already used"))
            .await?;
        return Err(ApiError::ApprovalRequired);
    }
    let mut fields = Map::new();
    for name in &request.fields {
        fields.insert(name.clone(), opened.data.field(name).unwrap_or(Value::Null));
    }
    Ok(Json(json!({ "id": id, "fields": fields })))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccessRequest {
    pub record_id: String,
    /// 1 to 16 distinct fields of the record's type.
    #[schema(min_items = 1, max_items = 16)]
    pub fields: Vec<String>,
    /// Why: required (else 400 `reason_required`), at most 500 characters
    /// once trimmed, no control characters.
    #[schema(
        required = true,
        nullable = false,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub reason: Option<String>,
    /// The case ticket: required (else 400 `reason_required`), 1 to 64
    /// printable ASCII characters once trimmed.
    #[schema(required = true, nullable = false, pattern = r"^\s*[!-~]{1,64}\s*$")]
    pub ticket: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AccessRequestState {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub status: RequestStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// Asks for another person's approval to reveal fields of a record.
#[utoipa::path(post, path = "/v1/access-requests", tag = "compliance", operation_id = "create_access_request",
    security(("bearer" = [])),
    request_body(content = CreateAccessRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Pending", body = AccessRequestState),
        (status = 400, description = "`reason_required`; or `malformed_request`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no such record", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: a concurrent change won", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`erased`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn request_access(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    body: JsonBody,
) -> Result<(StatusCode, Json<AccessRequestState>), ApiError> {
    let named = || {
        let body = body.parse::<serde_json::Value>().ok();
        let record = body.as_ref().and_then(|v| v.get("record_id")?.as_str());
        Ok(record.map(|id| state.target_of(id)).into_iter().collect())
    };
    state
        .authorize_on(&caller, Operation::AccessRequestCreate, &ctx, named)
        .await?;
    let request: CreateAccessRequest = body.parse()?;
    let (reason, ticket) = justification(request.reason, request.ticket)?;
    let meta = state.vault.live_meta(&request.record_id)?;
    check_fields(meta.record_type, &request.fields)?;
    let principal = caller.principal();
    let (created, tx) = state.access_requests.prepare(
        &principal.id,
        &meta.id,
        request.fields,
        reason.clone(),
        ticket.clone(),
    )?;
    let event = AuditEvent {
        reason: Some(format!(
            "{reason} (request {}, fields: {})",
            created.id,
            created.fields.join(",")
        )),
        ticket: Some(ticket),
        ..ctx
            .event(&principal.id, "access.request", Outcome::Allowed)
            .target(meta.id.clone())
    };
    state.commit(event, tx).await?;
    Ok((
        StatusCode::CREATED,
        Json(AccessRequestState {
            id: Some(created.id),
            status: created.status,
            expires_at: None,
        }),
    ))
}

async fn decide(
    state: AppState,
    ctx: RequestContext,
    caller: Caller,
    id: String,
    approve: bool,
) -> Result<Json<AccessRequestState>, ApiError> {
    let op = if approve {
        Operation::AccessRequestApprove
    } else {
        Operation::AccessRequestDeny
    };
    state
        .authorize_on(&caller, op, &ctx, || Ok(vec![state.target_of(&id)]))
        .await?;
    let principal = caller.principal();
    let event = ctx
        .event(&principal.id, op.action(), Outcome::Allowed)
        .target(id.clone());
    match state
        .access_requests
        .prepare_decision(&id, &principal.id, approve)?
    {
        Ok((decided, tx)) => {
            let event = AuditEvent {
                reason: Some(format!(
                    "record {}, fields: {}",
                    decided.record_id,
                    decided.fields.join(",")
                )),
                ticket: Some(decided.ticket.clone()),
                ..event
            };
            state.commit(event, tx).await?;
            Ok(Json(AccessRequestState {
                id: None,
                status: decided.status,
                expires_at: decided.expires_at_text(),
            }))
        }
        Err(DecisionError::NotFound) => Err(ApiError::NotFound),
        Err(DecisionError::OwnRequest) => {
            state
                .record(AuditEvent {
                    outcome: Outcome::Denied,
                    reason: Some("own request".into()),
                    ..event
                })
                .await?;
            Err(ApiError::Forbidden)
        }
        Err(DecisionError::NotPending) => {
            Err(ApiError::Conflict("The request was already decided."))
        }
    }
}

/// Approves another officer's request; the grant lasts 30 minutes.
#[utoipa::path(post, path = "/v1/access-requests/{id}/approve", tag = "compliance", operation_id = "approve_access_request",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Access request id")),
    responses(
        (status = 200, description = "Approved, until `expires_at`", body = AccessRequestState),
        (status = 403, description = "`forbidden`: not an approver, or one's own request", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: already decided", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn approve(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AccessRequestState>, ApiError> {
    decide(state, ctx, caller, id, true).await
}

/// Denies a request.
#[utoipa::path(post, path = "/v1/access-requests/{id}/deny", tag = "compliance", operation_id = "deny_access_request",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Access request id")),
    responses(
        (status = 200, description = "Denied", body = AccessRequestState),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: already decided", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn deny(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AccessRequestState>, ApiError> {
    decide(state, ctx, caller, id, false).await
}

/// One pending request in the approvers' queue.
#[derive(Serialize, ToSchema)]
pub struct PendingAccessRequest {
    pub id: String,
    pub record_id: String,
    pub fields: Vec<String>,
    /// The requesting officer's principal id: a request is never decided
    /// by its requester.
    pub requester: String,
    pub reason: String,
    pub ticket: String,
    pub status: RequestStatus,
    pub created_at: String,
}

/// What `list_access_requests` answers.
#[derive(Serialize, ToSchema)]
pub struct AccessRequestQueue {
    pub requests: Vec<PendingAccessRequest>,
}

/// How many pending requests the queue shows at most.
pub const QUEUE_LIMIT: usize = 200;

/// The approvers' queue: pending requests (at most 200), oldest first,
/// with who asked, for which record and fields, why, and under which
/// ticket. No record data. Audited as `access.list`.
#[utoipa::path(get, path = "/v1/access-requests", tag = "compliance", operation_id = "list_access_requests",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Pending requests, oldest first", body = AccessRequestQueue),
        (status = 403, description = "`forbidden`: not an approver", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_access_requests(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
) -> Result<Json<AccessRequestQueue>, ApiError> {
    state
        .authorize(&caller, Operation::AccessRequestList, &ctx)
        .await?;
    let pending = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || state.access_requests.pending(QUEUE_LIMIT))
            .await
            .map_err(|_| ApiError::Internal)??
    };
    state
        .record(AuditEvent {
            reason: Some(format!("{} pending", pending.len())),
            ..ctx.event(
                &caller.principal().id,
                Operation::AccessRequestList.action(),
                Outcome::Allowed,
            )
        })
        .await?;
    let requests = pending
        .into_iter()
        .map(|r| PendingAccessRequest {
            created_at: crate::clock::rfc3339_unix(r.created_at).unwrap_or_default(),
            id: r.id,
            record_id: r.record_id,
            fields: r.fields,
            requester: r.requester,
            reason: r.reason,
            ticket: r.ticket,
            status: r.status,
        })
        .collect();
    Ok(Json(AccessRequestQueue { requests }))
}
