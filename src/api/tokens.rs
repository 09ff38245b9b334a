//! `/v1/tokens`: tokenize a generic value, detokenize up to 1000 tokens,
//! revoke.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::extract::{Caller, JsonBody, RequestContext};
use super::{ApiError, AppState, Problem};
use crate::access::{Operation, Principal, Role};
use crate::audit::{AuditEvent, Outcome};
use crate::canary::AccessPath;
use crate::records::masked_view;
use crate::store::Transaction;
use crate::tokens::{TokenFormat, TokenRecord, TokenState, TokenTarget};
use crate::vault::RecordMeta;

const MAX_BATCH: usize = 1000;
/// Tokens of a refused batch named in its denial entries, at most.
const DENIAL_TARGETS: usize = 10;
const MAX_VALUE_BYTES: usize = 4096;
const MAX_TTL_SECONDS: u64 = 10 * 366 * 24 * 3600;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    /// The value to seal (1–4096 bytes of text).
    #[schema(min_length = 1, max_length = 4096)]
    pub value: String,
    /// Only `generic`: cards, bank accounts and KYC get their tokens when
    /// stored as records.
    #[schema(value_type = TokenKind)]
    pub kind: String,
    /// `random` (default) or `deterministic`.
    #[schema(value_type = Option<GenericTokenFormat>)]
    pub format: Option<TokenFormat>,
    /// 1 second to 10 years.
    #[schema(minimum = 1, maximum = 316_224_000)]
    #[serde(default, deserialize_with = "crate::records::whole_number::option")]
    pub ttl_seconds: Option<u64>,
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::records::whole_number::option")]
    pub max_uses: Option<u64>,
}

/// What `POST /v1/tokens` tokenizes (documentation only).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum TokenKind {
    Generic,
}

/// The formats `POST /v1/tokens` mints (documentation only:
/// format-preserving tokens are minted for cards only).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum GenericTokenFormat {
    Random,
    Deterministic,
}

#[derive(Serialize, ToSchema)]
pub struct Tokenized {
    pub token: String,
    pub expires_at: Option<String>,
}

/// Tokenizes one generic value.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", operation_id = "tokenize",
    security(("bearer" = [])),
    request_body(content = TokenizeRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The token", body = Tokenized),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: no unique token could be minted", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    body: JsonBody,
) -> Result<(StatusCode, Json<Tokenized>), ApiError> {
    state
        .authorize(&caller, Operation::TokenCreate, &ctx)
        .await?;
    let request: TokenizeRequest = body.parse()?;
    let value = zeroize::Zeroizing::new(request.value);
    if request.kind != "generic" {
        return Err(ApiError::field("kind", "must be generic"));
    }
    if value.is_empty() || value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::field("value", "must be 1 to 4096 bytes"));
    }
    let format = request.format.unwrap_or(TokenFormat::Random);
    if format == TokenFormat::FormatPreserving {
        return Err(ApiError::field(
            "format",
            "format-preserving tokens are minted for cards only",
        ));
    }
    if request
        .ttl_seconds
        .is_some_and(|t| t == 0 || t > MAX_TTL_SECONDS)
    {
        return Err(ApiError::field(
            "ttl_seconds",
            "must be between 1 second and 10 years",
        ));
    }
    if request.max_uses == Some(0) {
        return Err(ApiError::field("max_uses", "must be at least 1"));
    }
    let principal = caller.principal();
    let (token, record, tx) = state.vault.prepare_generic_token(
        &principal.id,
        value.as_bytes(),
        format,
        request.ttl_seconds,
        request.max_uses,
    )?;
    let target = match &record.target {
        TokenTarget::Generic { id } | TokenTarget::Record { id } => id.clone(),
    };
    state
        .commit(
            ctx.event(&principal.id, "token.create", Outcome::Allowed)
                .target(target),
            tx,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Tokenized {
            token,
            expires_at: record.expires_at.and_then(crate::clock::rfc3339_unix),
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    /// 1 to 1000 tokens.
    #[schema(min_items = 1, max_items = 1000)]
    pub tokens: Vec<String>,
}

/// What `detokenize` answers (documentation only: the handler builds this
/// shape with `json!`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Detokenized {
    /// Per token: `{"view":"masked"|"plain","value":…}`, or
    /// `{"error":"not_found"|"token_expired"|"token_revoked"|"erased"}`.
    pub results: Map<String, Value>,
}

/// What one token resolves to, and what to write and audit for it.
struct Resolved {
    result: Value,
    event: AuditEvent,
    tx: Transaction,
}

fn error(code: &str) -> Value {
    json!({ "error": code })
}

/// A token a caller may use now: its store key, its record, and for a
/// record token the (live) record's metadata.
pub(super) struct Usable {
    pub key: String,
    pub record: TokenRecord,
    pub meta: Option<RecordMeta>,
}

/// Why a caller may not use a token: the stable code detokenize and relay
/// answer with, and the audit target (what the token stands for, or the
/// token's fingerprint when it stands for nothing).
pub(super) struct Refusal {
    pub code: &'static str,
    pub target: Option<String>,
}

/// Whether `principal` may use `token` now: it exists, is theirs (or they
/// see every owner's), is neither revoked nor expired nor used up, and its
/// record is not erased. The one check behind detokenize and relay.
pub(super) fn usable_token(
    state: &AppState,
    principal: &Principal,
    token: &str,
) -> Result<Result<Usable, Refusal>, ApiError> {
    let Some((key, record)) = state.vault.token(token)? else {
        return Ok(Err(Refusal {
            code: "not_found",
            target: state.audit.fingerprint(token),
        }));
    };
    let target = Some(record.target.id().to_owned());
    let refuse = |code| {
        Ok(Err(Refusal {
            code,
            target: target.clone(),
        }))
    };
    if !principal.sees(&record.owner) {
        return refuse("not_found");
    }
    match record.state(state.clock.now()) {
        TokenState::Revoked if state.vault.is_erased_generic(&record)? => return refuse("erased"),
        TokenState::Revoked => return refuse("token_revoked"),
        TokenState::Expired => return refuse("token_expired"),
        TokenState::Usable => {}
    }
    let meta = match &record.target {
        TokenTarget::Record { id } => {
            let meta = state.vault.meta(id)?;
            if meta.erased_at.is_some() {
                return refuse("erased");
            }
            Some(meta)
        }
        TokenTarget::Generic { .. } => None,
    };
    Ok(Ok(Usable { key, record, meta }))
}

/// Resolves one token for `caller`. Record tokens always give the masked
/// view of the caller's roles; generic values are plain to their owner only.
fn resolve(
    state: &AppState,
    caller: &Caller,
    ctx: &RequestContext,
    token: &str,
) -> Result<Resolved, ApiError> {
    let principal = caller.principal();
    let base = ctx.event(&principal.id, "token.detokenize", Outcome::Allowed);
    let refuse = |code: &str, target: Option<String>| Resolved {
        result: error(code),
        event: AuditEvent {
            outcome: Outcome::Denied,
            reason: Some(code.to_owned()),
            target,
            ..base.clone()
        },
        tx: Transaction::new(),
    };
    let Usable { key, record, meta } = match usable_token(state, principal, token)? {
        Ok(usable) => usable,
        Err(refusal) => return Ok(refuse(refusal.code, refusal.target)),
    };
    let target_id = record.target.id().to_owned();
    let mut outcome = Outcome::Allowed;
    let mut used = None;
    let value = match (&record.target, meta) {
        (TokenTarget::Record { .. }, Some(meta)) => {
            let opened = state.vault.open(&meta)?;
            outcome = state.touched(ctx, principal, AccessPath::Detokenize, &meta, &opened);
            let mut view = masked_view(&opened.data, &principal.roles);
            if let Value::Object(map) = &mut view {
                map.insert("id".into(), json!(meta.id));
                map.insert("type".into(), json!(meta.record_type));
            }
            used = Some(meta);
            json!({"view": "masked", "value": view})
        }
        (TokenTarget::Record { .. }, None) => return Err(ApiError::Internal),
        (TokenTarget::Generic { id }, _) => {
            let plaintext = match state.vault.open_generic(id) {
                Ok(plaintext) => plaintext,
                // Erased since the token was read.
                Err(crate::vault::VaultError::Erased) => {
                    return Ok(refuse("erased", Some(target_id)));
                }
                Err(e) => return Err(e.into()),
            };
            let text = String::from_utf8_lossy(&plaintext).into_owned();
            let owner_service =
                record.owner == principal.id && principal.roles.contains(&Role::PaymentService);
            if owner_service {
                json!({"view": "plain", "value": text})
            } else {
                let tail = crate::records::last4(&text);
                json!({"view": "masked", "value": format!("****{tail}")})
            }
        }
    };
    let mut tx = if record.max_uses.is_some() {
        state.vault.prepare_use(&key, &record)?
    } else {
        Transaction::new()
    };
    if let Some(meta) = &used {
        let noted = state.lifecycle.note_use(&meta.id)?;
        if !noted.is_empty() {
            // With the record as read: a use racing an erasure never writes
            // the last-use entry back after the erasure deleted it.
            tx = tx.merge(noted).merge(state.vault.expect_meta(meta)?);
        }
    }
    Ok(Resolved {
        result: value,
        event: AuditEvent {
            outcome,
            ..base.target(target_id)
        },
        tx,
    })
}

/// Resolves up to 1000 tokens; each gets its result or its own error code.
#[utoipa::path(post, path = "/v1/tokens/detokenize", tag = "tokens", operation_id = "detokenize",
    security(("bearer" = [])),
    request_body(content = DetokenizeRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "One result per distinct token", body = Detokenized),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: a concurrent change won (a use count, or a change of a record whose first use of the day was being recorded); retry", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn detokenize(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    // A denial names what the first few tokens stand for: enough for "who
    // tried to reach X?", while one refused request can never write more
    // than DENIAL_TARGETS entries.
    let named = || {
        let tokens = body
            .parse::<DetokenizeRequest>()
            .map(|r| r.tokens)
            .unwrap_or_default();
        let mut targets = Vec::new();
        for token in tokens.iter().take(DENIAL_TARGETS) {
            let target = state.token_target(token)?;
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
        Ok(targets)
    };
    state
        .authorize_on(&caller, Operation::TokenDetokenize, &ctx, named)
        .await?;
    let request: DetokenizeRequest = body.parse()?;
    if request.tokens.is_empty() || request.tokens.len() > MAX_BATCH {
        return Err(ApiError::field("tokens", "must hold 1 to 1000 tokens"));
    }
    let mut results = Map::new();
    let mut batch = Vec::new();
    for token in request.tokens {
        if results.contains_key(&token) {
            continue;
        }
        let resolved = resolve(&state, &caller, &ctx, &token)?;
        results.insert(token, resolved.result);
        batch.push((resolved.event, resolved.tx));
    }
    state.commit_many(batch).await?;
    Ok(Json(json!({ "results": results })))
}

/// `DELETE /v1/tokens/{token}`'s query.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RevokeParams {
    /// `true`: erase the generic value the token stands for (its sealed
    /// value is deleted; the token answers `erased` from then on), unless
    /// a legal hold is placed on it. Generic tokens only.
    pub erase: Option<bool>,
}

/// Revokes a token; with `erase=true`, erases the generic value it stands
/// for.
#[utoipa::path(delete, path = "/v1/tokens/{token}", tag = "tokens", operation_id = "revoke_token",
    security(("bearer" = [])),
    params(("token" = String, Path, description = "The token"), RevokeParams),
    responses(
        (status = 204, description = "Revoked (with `erase=true`: erased)"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: unknown, or another owner's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`legal_hold`: a legal hold is placed on the value, nothing erased; or `conflict`: a concurrent change won", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`erased`: the value was erased", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: an unknown query parameter, or `erase=true` for a record's token (erase the record instead)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(token): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    let params: Option<RevokeParams> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or("")).ok();
    let erase = params.as_ref().and_then(|p| p.erase) == Some(true);
    let (op, action) = if erase {
        (Operation::TokenErase, "token.erase")
    } else {
        (Operation::TokenRevoke, "token.revoke")
    };
    state
        .authorize_on(&caller, op, &ctx, || Ok(vec![state.token_target(&token)?]))
        .await?;
    if params.is_none() {
        return Err(ApiError::field("query", "unknown parameter or wrong type"));
    }
    let principal = caller.principal();
    let Some((key, record)) = state.vault.token(&token)? else {
        return Err(ApiError::NotFound);
    };
    if !principal.sees(&record.owner) {
        // Another owner's token is "not found" to this caller, and the
        // attempt is a denial on what the token stands for.
        let event = AuditEvent {
            target: Some(record.target.id().to_owned()),
            reason: Some("not the owner".into()),
            ..ctx.event(&principal.id, action, Outcome::Denied)
        };
        state.record(event).await?;
        return Err(ApiError::NotFound);
    }
    if state.vault.is_erased_generic(&record)? {
        return Err(ApiError::Erased);
    }
    let target = record.target.id().to_owned();
    let event = ctx
        .event(&principal.id, action, Outcome::Allowed)
        .target(target.clone());
    if !erase {
        let tx = state.vault.prepare_revoke(&key, &record)?;
        state.commit(event, tx).await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    if !matches!(record.target, TokenTarget::Generic { .. }) {
        return Err(ApiError::field(
            "erase",
            "applies to generic values; a record is erased with DELETE /v1/records/{id}",
        ));
    }
    let Some(guard) = super::subjects::hold_guard(&state, &target, None)? else {
        return Err(super::subjects::refuse_held(&state, event).await);
    };
    let tx = state
        .vault
        .prepare_erase_generic(&key, &record)?
        .merge(guard);
    super::subjects::commit_guarded(&state, event, tx, &target, None).await?;
    Ok(StatusCode::NO_CONTENT)
}
