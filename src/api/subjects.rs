//! `/v1/subjects/*` and legal holds: a data subject's records and tokens
//! (GDPR art. 15), the erasure of all of them in one step (art. 17), the
//! end of a relationship (retention), and holds that stop every erasure
//! (docs/lifecycle.md, "Subjects, retention, legal hold").
//!
//! A `subject_ref` never reaches a log or an audit entry: the audit names
//! a subject by its fingerprint (`hmac:…`), and the store by its
//! blind-index digest.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::compliance::justification;
use super::extract::{Caller, JsonBody, RequestContext};
use super::{ApiError, AppState, Problem};
use crate::access::Operation;
use crate::audit::{AuditEvent, Outcome};
use crate::clock::rfc3339;
use crate::lifecycle::{HoldTarget, Lifecycle, ReleaseError};
use crate::records::RecordType;
use crate::store::Transaction;
use crate::tokens::{TokenFormat, TokenState};
use crate::vault::RecordMeta;

/// The preconditions that no legal hold is placed on `id` (a record or a
/// generic value) nor on `subject`; `None` when one is. Every change a hold
/// stops (an erasure of any kind, a `PATCH`) carries them, so a hold placed
/// meanwhile fails the change rather than being lost.
pub(super) fn hold_guard(
    state: &AppState,
    id: &str,
    subject: Option<&str>,
) -> Result<Option<Transaction>, ApiError> {
    let digest = match subject {
        Some(subject) => Some(state.vault.subject_digest(subject)?),
        None => None,
    };
    Ok(state.lifecycle.erasure_guard(id, digest.as_deref())?)
}

/// The erasure of live record `meta` with its last-use time, guarded by
/// [`hold_guard`]; `None` when a hold stops it.
pub(super) fn guarded_erasure(
    state: &AppState,
    meta: &RecordMeta,
) -> Result<Option<Transaction>, ApiError> {
    let Some(guard) = hold_guard(state, &meta.id, meta.subject_ref.as_deref())? else {
        return Ok(None);
    };
    Ok(Some(
        state
            .vault
            .prepare_erase(meta)?
            .merge(guard)
            .merge(Lifecycle::forget_use(&meta.id)),
    ))
}

/// Audits `event` as refused by a legal hold; the 409 to answer.
pub(super) async fn refuse_held(state: &AppState, event: AuditEvent) -> ApiError {
    let denied = AuditEvent {
        outcome: Outcome::Denied,
        reason: Some(match &event.reason {
            Some(reason) => format!("{reason}; legal hold"),
            None => "legal hold".into(),
        }),
        ..event
    };
    match state.record(denied).await {
        Ok(_) => ApiError::LegalHold,
        Err(e) => e,
    }
}

/// Commits a change of `id` (of `subject`) guarded by [`hold_guard`] with
/// `event`. A conflict is a change since it was read: a hold placed
/// meanwhile (read again) is answered `legal_hold`, anything else
/// `conflict`; each audited.
pub(super) async fn commit_guarded(
    state: &AppState,
    event: AuditEvent,
    tx: Transaction,
    id: &str,
    subject: Option<&str>,
) -> Result<(), ApiError> {
    if state.try_commit(event.clone(), tx).await?.is_some() {
        return Ok(());
    }
    if hold_guard(state, id, subject)?.is_none() {
        return Err(refuse_held(state, event).await);
    }
    state
        .record(AuditEvent {
            outcome: Outcome::Error,
            reason: Some("conflict".into()),
            ..event
        })
        .await?;
    Err(ApiError::Conflict(
        "The change conflicts with the stored state.",
    ))
}

/// The path's subject, checked as records check it (422 otherwise).
fn subject_of(raw: &str) -> Result<String, ApiError> {
    crate::records::subject_ref(raw).map_err(|e| vec![e].into())
}

/// A reason and a case ticket, in a request body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Justification {
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

/// The reason and ticket of a subject access, as query parameters.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AccessParams {
    /// Why: required (else 400 `reason_required`), at most 500 characters
    /// once trimmed, no control characters.
    #[param(
        required = true,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub reason: Option<String>,
    /// The case ticket: required (else 400 `reason_required`), 1 to 64
    /// printable ASCII characters once trimmed.
    #[param(required = true, pattern = r"^\s*[!-~]{1,64}\s*$")]
    pub ticket: Option<String>,
}

/// The state of one token, as a subject access shows it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenStateView {
    Usable,
    Expired,
    Revoked,
}

/// One token of a subject's record. The vault keeps no token in clear
/// (only an HMAC of it), so the token itself cannot be shown.
#[derive(Serialize, ToSchema)]
pub struct SubjectToken {
    pub format: TokenFormat,
    pub state: TokenStateView,
    pub created_at: Option<String>,
    pub expires_at: Option<String>,
    pub uses: u64,
    pub max_uses: Option<u64>,
}

/// One record of a subject: its metadata, the masked view of the reader's
/// roles, its tokens, and what governs its erasure.
#[derive(Serialize, ToSchema)]
pub struct SubjectRecord {
    pub id: String,
    #[serde(rename = "type")]
    pub record_type: RecordType,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    /// The masked fields (docs/data-model.md, "Views"); never plaintext.
    pub masked: Map<String, Value>,
    pub tokens: Vec<SubjectToken>,
    /// Whether a legal hold is placed on this record.
    pub legal_hold: bool,
    /// When the record's owner closed the relationship, if it did.
    pub relationship_closed_at: Option<String>,
    /// The last recorded use of one of its tokens (coarse: at most one
    /// update a day).
    pub last_used_at: Option<String>,
}

/// What `GET /v1/subjects/{subject_ref}` answers.
#[derive(Serialize, ToSchema)]
pub struct SubjectView {
    pub subject_ref: String,
    /// Whether a legal hold is placed on the subject as a whole.
    pub legal_hold: bool,
    /// The subject's live records (erased ones hold no data).
    pub records: Vec<SubjectRecord>,
}

fn token_view(record: &crate::tokens::TokenRecord, now: OffsetDateTime) -> SubjectToken {
    SubjectToken {
        format: record.format,
        state: match record.state(now) {
            TokenState::Usable => TokenStateView::Usable,
            TokenState::Expired => TokenStateView::Expired,
            TokenState::Revoked => TokenStateView::Revoked,
        },
        created_at: crate::clock::rfc3339_unix(record.created_at),
        expires_at: record.expires_at.and_then(crate::clock::rfc3339_unix),
        uses: record.uses,
        max_uses: record.max_uses,
    }
}

/// Every live record and token of a subject, masked: the answer to a
/// data-subject access request. Audited as `subject.read` with reason and
/// ticket, and as `record.read` for each record it shows; 404 (audited as
/// `no_match`) when there is none.
#[utoipa::path(get, path = "/v1/subjects/{subject_ref}", tag = "subjects", operation_id = "read_subject",
    security(("bearer" = [])),
    params(
        ("subject_ref" = String, Path, description = "The customer id in the payment system (1 to 128 printable ASCII characters)", pattern = r"^[!-~]{1,128}$"),
        AccessParams,
    ),
    responses(
        (status = 200, description = "The subject's records (masked) and tokens", body = SubjectView),
        (status = 400, description = "`reason_required`: a reason or a ticket is missing or empty", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: the vault holds no live record of this subject (audited as `no_match`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: a bad subject_ref, reason or ticket, or an unknown query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: the officer's `sensitive_searches_per_hour` are used up (subject accesses count as searches by a person's id)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn read(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(subject_ref): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<SubjectView>, ApiError> {
    state
        .authorize_on(&caller, Operation::SubjectRead, &ctx, || {
            Ok(vec![state.audit.fingerprint(&subject_ref)])
        })
        .await?;
    let params: AccessParams = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|_| ApiError::field("query", "unknown parameter or wrong type"))?;
    let (reason, ticket) = justification(params.reason, params.ticket)?;
    let subject = subject_of(&subject_ref)?;
    let principal = caller.principal();
    // A subject access is a lookup by a person's id, like a search by a
    // national id: it takes the officer's hourly quota of those (reserved
    // before the lookup), and its misses are watched.
    if let Err(retry_after_secs) = state
        .sensitive_searches
        .take(&principal.id, state.clock.now())?
    {
        state
            .record(AuditEvent {
                target: state.audit.fingerprint(&subject),
                reason: Some(format!("{reason}; rate limited")),
                ticket: Some(ticket),
                ..ctx.event(&principal.id, "subject.read", Outcome::Denied)
            })
            .await?;
        return Err(ApiError::RateLimited { retry_after_secs });
    }
    let digest = state.vault.subject_digest(&subject)?;
    let now = state.clock.now();
    let mut records = Vec::new();
    // Per record, its read's outcome: `canary` for a canary (one alarm
    // each, docs/lifecycle.md "Canaries").
    let mut outcomes = Vec::new();
    for meta in state.vault.subject_records(&subject)? {
        // Live as listed (an erasure since makes the commit below no
        // different: the answer is of the records as read).
        let opened = state.vault.open(&meta)?;
        outcomes.push(state.touched(
            &ctx,
            principal,
            crate::canary::AccessPath::SubjectLookup,
            &meta,
            &opened,
        ));
        let view = super::records::view(&meta, &opened.data, principal);
        let mut tokens = Vec::new();
        for key in &meta.token_keys {
            if let Some(token) = state.vault.token_at(key)? {
                tokens.push(token_view(&token, now));
            }
        }
        records.push(SubjectRecord {
            legal_hold: state
                .lifecycle
                .hold(&HoldTarget::Record(meta.id.clone()))?
                .is_some(),
            relationship_closed_at: state
                .lifecycle
                .closed(&meta.owner, &digest)?
                .and_then(|c| crate::clock::rfc3339_unix(c.closed_at)),
            last_used_at: state.lifecycle.last_use(&meta.id)?.map(rfc3339),
            id: view.id,
            record_type: view.record_type,
            version: view.version,
            created_at: view.created_at,
            updated_at: view.updated_at,
            masked: view.fields,
            tokens,
        });
    }
    if records.is_empty() {
        super::compliance::watch_misses(&state, &principal.id, "subject_ref");
        // Nothing held about this subject (or nothing left): audited as a
        // lookup that found nothing.
        state
            .record(AuditEvent {
                target: state.audit.fingerprint(&subject),
                reason: Some(format!("{reason} (records: 0)")),
                ticket: Some(ticket),
                ..ctx.event(&principal.id, "subject.read", Outcome::NoMatch)
            })
            .await?;
        return Err(ApiError::NotFound);
    }
    let held = state
        .lifecycle
        .hold(&HoldTarget::Subject(digest))?
        .is_some();
    let mut batch = vec![(
        AuditEvent {
            target: state.audit.fingerprint(&subject),
            reason: Some(format!("{reason} (records: {})", records.len())),
            ticket: Some(ticket.clone()),
            ..ctx.event(&principal.id, "subject.read", Outcome::Allowed)
        },
        Transaction::new(),
    )];
    for (record, outcome) in records.iter().zip(outcomes) {
        let event = AuditEvent {
            reason: Some(format!("subject access: {reason}")),
            ticket: Some(ticket.clone()),
            ..ctx
                .event(&principal.id, "record.read", outcome)
                .target(record.id.clone())
        };
        batch.push((event, Transaction::new()));
    }
    state.commit_many(batch).await?;
    Ok(Json(SubjectView {
        subject_ref: subject,
        legal_hold: held,
        records,
    }))
}

/// What a subject erasure answers.
#[derive(Serialize, ToSchema)]
pub struct SubjectErased {
    /// The records this request erased.
    pub erased: Vec<String>,
}

/// How often a subject erasure reads again after a concurrent change.
const ERASE_ATTEMPTS: usize = 3;

/// Erases every live record of a subject in one transaction, with one
/// `record.erase` entry per record (and one `subject.erase`); nothing at
/// all when a legal hold is placed on the subject or on any of its
/// records (409 `legal_hold`); 404 when no live record is left.
#[utoipa::path(delete, path = "/v1/subjects/{subject_ref}", tag = "subjects", operation_id = "erase_subject",
    security(("bearer" = [])),
    params(("subject_ref" = String, Path, description = "The customer id in the payment system (1 to 128 printable ASCII characters)", pattern = r"^[!-~]{1,128}$")),
    request_body(content = Justification, content_type = "application/json"),
    responses(
        (status = 200, description = "Erased; the ids of the records this request erased", body = SubjectErased),
        (status = 400, description = "`reason_required`; or `malformed_request`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no live record of this subject (none held, or already erased; audited as `no_match`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`legal_hold`: a hold is placed on the subject or one of its records, nothing erased; or `conflict`: the records kept changing", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn erase(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(subject_ref): Path<String>,
    body: JsonBody,
) -> Result<Json<SubjectErased>, ApiError> {
    state
        .authorize_on(&caller, Operation::SubjectErase, &ctx, || {
            Ok(vec![state.audit.fingerprint(&subject_ref)])
        })
        .await?;
    let request: Justification = body.parse()?;
    let (reason, ticket) = justification(request.reason, request.ticket)?;
    let subject = subject_of(&subject_ref)?;
    let principal = caller.principal();
    let summary = |outcome: Outcome, note: String| AuditEvent {
        target: state.audit.fingerprint(&subject),
        reason: Some(format!("{reason} ({note})")),
        ticket: Some(ticket.clone()),
        ..ctx.event(&principal.id, "subject.erase", outcome)
    };
    let digest = state.vault.subject_digest(&subject)?;
    for _ in 0..ERASE_ATTEMPTS {
        if state
            .lifecycle
            .hold(&HoldTarget::Subject(digest.clone()))?
            .is_some()
        {
            state
                .record(summary(Outcome::Denied, "legal hold on the subject".into()))
                .await?;
            return Err(ApiError::LegalHold);
        }
        let metas = state.vault.subject_records(&subject)?;
        let mut batch = Vec::with_capacity(metas.len() + 1);
        let mut held = Vec::new();
        for meta in &metas {
            match guarded_erasure(&state, meta)? {
                Some(tx) => {
                    let event = AuditEvent {
                        reason: Some(format!("subject erasure: {reason}")),
                        ticket: Some(ticket.clone()),
                        ..ctx
                            .event(&principal.id, "record.erase", Outcome::Allowed)
                            .target(meta.id.clone())
                    };
                    batch.push((event, tx));
                }
                None => held.push(meta.id.clone()),
            }
        }
        if !held.is_empty() {
            let mut denials = vec![(
                summary(
                    Outcome::Denied,
                    format!("legal hold on {} of {} records", held.len(), metas.len()),
                ),
                Transaction::new(),
            )];
            for id in held {
                let event = AuditEvent {
                    reason: Some(format!("subject erasure: {reason}; legal hold")),
                    ticket: Some(ticket.clone()),
                    ..ctx
                        .event(&principal.id, "record.erase", Outcome::Denied)
                        .target(id)
                };
                denials.push((event, Transaction::new()));
            }
            state.commit_many(denials).await?;
            return Err(ApiError::LegalHold);
        }
        if metas.is_empty() {
            // Nothing (left) to erase: another request, or nothing held.
            state
                .record(summary(Outcome::NoMatch, "records: 0".into()))
                .await?;
            return Err(ApiError::NotFound);
        }
        let erased: Vec<String> = metas.iter().map(|m| m.id.clone()).collect();
        // With the subject's records goes what says their owners had one:
        // each owner's close of it.
        let owners: std::collections::BTreeSet<&str> =
            metas.iter().map(|m| m.owner.as_str()).collect();
        let forget_closes = owners.into_iter().fold(Transaction::new(), |tx, owner| {
            tx.merge(Lifecycle::forget_close(owner, &digest))
        });
        batch.insert(
            0,
            (
                summary(Outcome::Allowed, format!("records: {}", erased.len())),
                forget_closes,
            ),
        );
        for meta in &metas {
            if meta.record_type == RecordType::Card {
                state.cvcs.discard(&meta.id);
            }
        }
        if state.try_commit_many(batch).await?.is_some() {
            return Ok(Json(SubjectErased { erased }));
        }
    }
    state
        .record(summary(Outcome::Error, "conflict".into()))
        .await?;
    Err(ApiError::Conflict(
        "The subject's records kept changing; try again.",
    ))
}

/// What closing a relationship answers.
#[derive(Serialize, ToSchema)]
pub struct SubjectClosed {
    /// When the relationship was closed: the close that stands.
    pub closed_at: String,
}

/// Records that the caller's relationship with a subject ended: retention
/// rules counted `after close` start from now for the caller's records of
/// that subject. A close stands while the relationship stays closed (a
/// second close answers its time); once the caller made a record of the
/// subject after it (the customer came back), the next close replaces it.
#[utoipa::path(post, path = "/v1/subjects/{subject_ref}/close", tag = "subjects", operation_id = "close_subject",
    security(("bearer" = [])),
    params(("subject_ref" = String, Path, description = "The customer id in the payment system (1 to 128 printable ASCII characters)", pattern = r"^[!-~]{1,128}$")),
    responses(
        (status = 200, description = "Closed (now, or earlier)", body = SubjectClosed),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: a concurrent close won; retry", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: a bad subject_ref", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn close(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(subject_ref): Path<String>,
) -> Result<Json<SubjectClosed>, ApiError> {
    state
        .authorize_on(&caller, Operation::SubjectClose, &ctx, || {
            Ok(vec![state.audit.fingerprint(&subject_ref)])
        })
        .await?;
    let subject = subject_of(&subject_ref)?;
    let principal = caller.principal();
    let digest = state.vault.subject_digest(&subject)?;
    // The newest of the caller's records of this subject: one made after
    // an earlier close means the relationship began again.
    let newest_created = state
        .vault
        .subject_records(&subject)?
        .iter()
        .filter(|meta| meta.owner == principal.acts_for())
        .filter_map(|meta| crate::clock::parse_rfc3339(&meta.created_at))
        .map(time::OffsetDateTime::unix_timestamp)
        .max();
    let (closed, tx) =
        state
            .lifecycle
            .prepare_close(principal.acts_for(), &digest, newest_created)?;
    let note = if tx.is_empty() {
        "already closed"
    } else {
        "relationship ended"
    };
    let event = AuditEvent {
        target: state.audit.fingerprint(&subject),
        reason: Some(note.into()),
        ..ctx.event(&principal.id, "subject.close", Outcome::Allowed)
    };
    state.commit(event, tx).await?;
    Ok(Json(SubjectClosed {
        closed_at: crate::clock::rfc3339_unix(closed.closed_at).unwrap_or_default(),
    }))
}

/// A hold as its placing answers it.
#[derive(Serialize, ToSchema)]
pub struct HoldState {
    pub held: bool,
    pub placed_by: String,
    pub placed_at: String,
}

/// What a hold is placed on, from a record route's id: a record, or a
/// generic value (`gen_…`); with the precondition that it is still live.
fn record_hold_target(state: &AppState, id: &str) -> Result<(HoldTarget, Transaction), ApiError> {
    if crate::vault::has_issued_shape(id, &["gen_"]) {
        let sealed = state.vault.sealed_generic(id)?.ok_or(ApiError::NotFound)?;
        return Ok((
            HoldTarget::Record(id.to_owned()),
            crate::vault::Vault::expect_generic(id, sealed),
        ));
    }
    let meta = state.vault.live_meta(id)?;
    Ok((
        HoldTarget::Record(meta.id.clone()),
        state.vault.expect_meta(&meta)?,
    ))
}

/// Places a hold on `target` (with `live`, the precondition that what it
/// names still exists) and audits it.
async fn place(
    state: &AppState,
    ctx: &RequestContext,
    caller: &Caller,
    target: HoldTarget,
    audit_target: Option<String>,
    live: Transaction,
    body: &JsonBody,
) -> Result<(StatusCode, Json<HoldState>), ApiError> {
    let request: Justification = body.parse()?;
    let (reason, ticket) = justification(request.reason, request.ticket)?;
    let principal = caller.principal();
    let event = AuditEvent {
        target: audit_target,
        reason: Some(reason.clone()),
        ticket: Some(ticket.clone()),
        ..ctx.event(&principal.id, "hold.place", Outcome::Allowed)
    };
    let Some(tx) = state
        .lifecycle
        .prepare_place(&target, &principal.id, reason, ticket)?
    else {
        return Err(ApiError::Conflict("A legal hold is already placed there."));
    };
    state.commit(event, tx.merge(live)).await?;
    Ok((
        StatusCode::CREATED,
        Json(HoldState {
            held: true,
            placed_by: principal.id.clone(),
            placed_at: rfc3339(state.clock.now()),
        }),
    ))
}

/// Releases the hold on `target` by the caller, who must be another
/// person than the one who placed it.
async fn release(
    state: &AppState,
    ctx: &RequestContext,
    caller: &Caller,
    target: HoldTarget,
    audit_target: Option<String>,
    body: &JsonBody,
) -> Result<Json<HoldReleased>, ApiError> {
    let request: Justification = body.parse()?;
    let (reason, ticket) = justification(request.reason, request.ticket)?;
    let principal = caller.principal();
    let event = AuditEvent {
        target: audit_target,
        reason: Some(reason),
        ticket: Some(ticket),
        ..ctx.event(&principal.id, "hold.release", Outcome::Allowed)
    };
    match state.lifecycle.prepare_release(&target, &principal.id)? {
        Ok((hold, tx)) => {
            let event = AuditEvent {
                reason: event.reason.map(|r| {
                    format!(
                        "{r} (placed by {} under ticket {})",
                        hold.placed_by, hold.ticket
                    )
                }),
                ..event
            };
            state.commit(event, tx).await?;
            Ok(Json(HoldReleased { held: false }))
        }
        Err(ReleaseError::NotHeld) => Err(ApiError::NotFound),
        Err(ReleaseError::OwnHold) => {
            state
                .record(AuditEvent {
                    outcome: Outcome::Denied,
                    reason: event.reason.map(|r| format!("{r}; own hold")),
                    ..event
                })
                .await?;
            Err(ApiError::FourEyesRequired)
        }
    }
}

/// What a release answers.
#[derive(Serialize, ToSchema)]
pub struct HoldReleased {
    pub held: bool,
}

/// Places a legal hold on a record (or a generic value, `gen_…`): no
/// erasure of it, manual or scheduled, happens until it is released.
#[utoipa::path(post, path = "/v1/records/{id}/hold", tag = "subjects", operation_id = "hold_record",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Record id, or a generic value's id (`gen_…`)")),
    request_body(content = Justification, content_type = "application/json"),
    responses(
        (status = 201, description = "Held", body = HoldState),
        (status = 400, description = "`reason_required`; or `malformed_request`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: already held, or the record changed meanwhile", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`erased`: too late", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn hold_record(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<(StatusCode, Json<HoldState>), ApiError> {
    state
        .authorize_on(&caller, Operation::HoldPlace, &ctx, || {
            Ok(vec![state.target_of(&id)])
        })
        .await?;
    let (target, live) = record_hold_target(&state, &id)?;
    place(&state, &ctx, &caller, target, Some(id), live, &body).await
}

/// Places a legal hold on a subject: none of its records (present or
/// future) is erased until it is released.
#[utoipa::path(post, path = "/v1/subjects/{subject_ref}/hold", tag = "subjects", operation_id = "hold_subject",
    security(("bearer" = [])),
    params(("subject_ref" = String, Path, description = "The customer id in the payment system (1 to 128 printable ASCII characters)", pattern = r"^[!-~]{1,128}$")),
    request_body(content = Justification, content_type = "application/json"),
    responses(
        (status = 201, description = "Held", body = HoldState),
        (status = 400, description = "`reason_required`; or `malformed_request`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: already held", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn hold_subject(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(subject_ref): Path<String>,
    body: JsonBody,
) -> Result<(StatusCode, Json<HoldState>), ApiError> {
    state
        .authorize_on(&caller, Operation::HoldPlace, &ctx, || {
            Ok(vec![state.audit.fingerprint(&subject_ref)])
        })
        .await?;
    let subject = subject_of(&subject_ref)?;
    let target = HoldTarget::Subject(state.vault.subject_digest(&subject)?);
    let audit_target = state.audit.fingerprint(&subject);
    place(
        &state,
        &ctx,
        &caller,
        target,
        audit_target,
        Transaction::new(),
        &body,
    )
    .await
}

/// Releases a record's legal hold: a compliance approver other than the
/// one who placed it (403 `four_eyes_required` otherwise).
#[utoipa::path(post, path = "/v1/records/{id}/hold/release", tag = "subjects", operation_id = "release_record_hold",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Record id, or a generic value's id (`gen_…`)")),
    request_body(content = Justification, content_type = "application/json"),
    responses(
        (status = 200, description = "Released", body = HoldReleased),
        (status = 400, description = "`reason_required`; or `malformed_request`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`; or `four_eyes_required`: the caller placed this hold", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no hold there", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: the hold changed meanwhile", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn release_record_hold(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<Json<HoldReleased>, ApiError> {
    state
        .authorize_on(&caller, Operation::HoldRelease, &ctx, || {
            Ok(vec![state.target_of(&id)])
        })
        .await?;
    if !crate::vault::has_issued_shape(&id, &RecordType::ALL.map(RecordType::id_prefix))
        && !crate::vault::has_issued_shape(&id, &["gen_"])
    {
        return Err(ApiError::NotFound);
    }
    let target = HoldTarget::Record(id.clone());
    release(&state, &ctx, &caller, target, Some(id), &body).await
}

/// Releases a subject's legal hold: a compliance approver other than the
/// one who placed it (403 `four_eyes_required` otherwise).
#[utoipa::path(post, path = "/v1/subjects/{subject_ref}/hold/release", tag = "subjects", operation_id = "release_subject_hold",
    security(("bearer" = [])),
    params(("subject_ref" = String, Path, description = "The customer id in the payment system (1 to 128 printable ASCII characters)", pattern = r"^[!-~]{1,128}$")),
    request_body(content = Justification, content_type = "application/json"),
    responses(
        (status = 200, description = "Released", body = HoldReleased),
        (status = 400, description = "`reason_required`; or `malformed_request`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`; or `four_eyes_required`: the caller placed this hold", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no hold there", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: the hold changed meanwhile", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn release_subject_hold(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(subject_ref): Path<String>,
    body: JsonBody,
) -> Result<Json<HoldReleased>, ApiError> {
    state
        .authorize_on(&caller, Operation::HoldRelease, &ctx, || {
            Ok(vec![state.audit.fingerprint(&subject_ref)])
        })
        .await?;
    let subject = subject_of(&subject_ref)?;
    let target = HoldTarget::Subject(state.vault.subject_digest(&subject)?);
    let audit_target = state.audit.fingerprint(&subject);
    release(&state, &ctx, &caller, target, audit_target, &body).await
}
