//! `/v1/records/*`: create, read (masked), update (merge patch), erase.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::extract::{Caller, JsonBody, RequestContext};
use super::{ApiError, AppState, Problem};
use crate::access::{Operation, Principal};
use crate::audit::{AuditEvent, Outcome};
use crate::records::{self, RecordData, RecordType, masked_view};
use crate::vault::RecordMeta;

/// Takes `subject_ref` out of a body: absent → `None`, null → `Some(None)`.
fn take_subject_ref(body: &mut Map<String, Value>) -> Result<Option<Option<String>>, ApiError> {
    match body.remove("subject_ref") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => records::subject_ref(&s)
            .map(|s| Some(Some(s)))
            .map_err(|e| vec![e].into()),
        Some(_) => Err(ApiError::field("subject_ref", "must be a string")),
    }
}

fn object(body: &JsonBody) -> Result<Map<String, Value>, ApiError> {
    match body.parse::<Value>()? {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::field("body", "must be a JSON object")),
    }
}

/// The masked view of a record for `caller`, with its metadata.
fn view(meta: &RecordMeta, data: &RecordData, caller: &Principal) -> Value {
    let mut out = match masked_view(data, &caller.roles) {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    out.insert("id".into(), json!(meta.id));
    out.insert("type".into(), json!(meta.record_type));
    out.insert("version".into(), json!(meta.version));
    out.insert("created_at".into(), json!(meta.created_at));
    out.insert("updated_at".into(), json!(meta.updated_at));
    out.insert("subject_ref".into(), json!(meta.subject_ref));
    Value::Object(out)
}

/// Loads a record `caller` may see. Another owner's record is "not found",
/// and the attempt is audited as denied.
async fn visible(
    state: &AppState,
    ctx: &RequestContext,
    caller: &Caller,
    id: &str,
    action: &'static str,
) -> Result<RecordMeta, ApiError> {
    let principal = caller.principal();
    let meta = match state.vault.meta(id) {
        Ok(meta) if principal.sees(&meta.owner) => meta,
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
    Ok(meta)
}

/// Stores a card, a bank account or a KYC record.
#[utoipa::path(post, path = "/v1/records/{type}", tag = "records", security(("bearer" = [])),
    params(("type" = String, Path, description = "card, bank_account or kyc")),
    request_body(content = serde_json::Value, description = "CardInput, BankAccountInput or KycInput, plus an optional subject_ref"),
    responses(
        (status = 201, description = "Created; tokens and masked fields only"),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 422, description = "Validation failed; the fields are named, the values never repeated", body = Problem),
    ))]
pub async fn create(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(record_type): Path<String>,
    body: JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let record_type = RecordType::parse(&record_type).ok_or(ApiError::NotFound)?;
    state
        .authorize(&caller, Operation::RecordCreate(record_type), &ctx)
        .await?;
    let mut fields = object(&body)?;
    let subject_ref = take_subject_ref(&mut fields)?.flatten();
    let data = RecordData::parse(record_type, Value::Object(fields), state.clock.now())?;
    let principal = caller.principal();
    // Concurrent creations may pick the same fresh token (a format-preserving
    // one, for many cards with one PAN); the loser mints new ones and retries.
    let mut attempts = 0;
    let created = loop {
        let created = state
            .vault
            .prepare_create(&principal.id, subject_ref.clone(), &data)?;
        let event = ctx
            .event(&principal.id, "record.create", Outcome::Allowed)
            .target(created.meta.id.clone());
        attempts += 1;
        if attempts == 3 {
            state.commit(event, created.tx.clone()).await?;
            break created;
        }
        if state.try_commit(event, created.tx.clone()).await?.is_some() {
            break created;
        }
    };
    let masked = masked_view(&data, &principal.roles);
    let mut out = Map::new();
    out.insert("id".into(), json!(created.meta.id));
    out.insert("token".into(), json!(created.token));
    match &data {
        RecordData::Card(_) => {
            out.insert("pan_token".into(), json!(created.pan_token));
            out.insert("fingerprint".into(), json!(created.fingerprint));
            for key in ["brand", "last4", "exp_month", "exp_year"] {
                out.insert(key.into(), masked.get(key).cloned().unwrap_or(Value::Null));
            }
        }
        RecordData::BankAccount(_) => {
            out.insert("fingerprint".into(), json!(created.fingerprint));
            for key in ["last4", "country"] {
                out.insert(key.into(), masked.get(key).cloned().unwrap_or(Value::Null));
            }
        }
        RecordData::Kyc(_) => {
            out.insert("version".into(), json!(created.meta.version));
        }
    }
    Ok((StatusCode::CREATED, Json(Value::Object(out))))
}

/// The masked view of a record.
#[utoipa::path(get, path = "/v1/records/{id}", tag = "records", security(("bearer" = [])),
    params(("id" = String, Path, description = "Record id")),
    responses((status = 200, description = "Masked view"), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 410, body = Problem)))]
pub async fn read(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .authorize_on(&caller, Operation::RecordRead, &ctx, &[state.target_of(&id)])
        .await?;
    let meta = visible(&state, &ctx, &caller, &id, "record.read").await?;
    let data = state.vault.open(&meta)?;
    state
        .record(
            ctx.event(&caller.principal().id, "record.read", Outcome::Allowed)
                .target(id),
        )
        .await?;
    Ok(Json(view(&meta, &data, caller.principal())))
}

/// Applies a JSON merge patch; the record gets a new version under a new DEK.
#[utoipa::path(patch, path = "/v1/records/{id}", tag = "records", security(("bearer" = [])),
    params(("id" = String, Path, description = "Record id")),
    request_body(content = serde_json::Value, description = "RFC 7396 merge patch of the record's fields"),
    responses((status = 200, description = "Masked view of the new version"), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 410, body = Problem), (status = 422, body = Problem)))]
pub async fn update(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    state
        .authorize_on(&caller, Operation::RecordUpdate, &ctx, &[state.target_of(&id)])
        .await?;
    let mut patch = object(&body)?;
    let meta = visible(&state, &ctx, &caller, &id, "record.update").await?;
    let subject_ref = take_subject_ref(&mut patch)?.unwrap_or_else(|| meta.subject_ref.clone());
    let current = state.vault.open(&meta)?;
    records::refuse_security_codes(&Value::Object(patch.clone()))?;
    let mut merged = current.as_input_json();
    records::merge_patch(&mut merged, &Value::Object(patch));
    let data = RecordData::parse(meta.record_type, merged, state.clock.now())?;
    let (updated, tx) = state.vault.prepare_update(&meta, &data, subject_ref)?;
    state
        .commit(
            ctx.event(&caller.principal().id, "record.update", Outcome::Allowed)
                .target(id),
            tx,
        )
        .await?;
    Ok(Json(view(&updated, &data, caller.principal())))
}

/// Erases a record: its sealed data, DEK and index entries are destroyed;
/// its tokens answer 410 `erased` from now on.
#[utoipa::path(delete, path = "/v1/records/{id}", tag = "records", security(("bearer" = [])),
    params(("id" = String, Path, description = "Record id")),
    responses((status = 204, description = "Erased"), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 410, body = Problem)))]
pub async fn erase(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .authorize_on(&caller, Operation::RecordErase, &ctx, &[state.target_of(&id)])
        .await?;
    let meta = visible(&state, &ctx, &caller, &id, "record.erase").await?;
    let tx = state.vault.prepare_erase(&meta)?;
    state
        .commit(
            ctx.event(&caller.principal().id, "record.erase", Outcome::Allowed)
                .target(id),
            tx,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
