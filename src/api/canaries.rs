//! `POST /v1/canaries` (admin), and the alarm every access path raises
//! when what it opened is a canary ([`AppState::touched`]).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{Caller, JsonBody, RequestContext};
use super::{ApiError, AppState, Problem};
use crate::access::{Operation, Principal, PrincipalKind};
use crate::audit::{AuditEvent, Outcome};
use crate::canary::{self, AccessPath, CanaryError, Persona};
use crate::records::{self, RecordData, RecordType};
use crate::relay::upstream::UpstreamRequest;
use crate::vault::{Opened, RecordMeta};

impl AppState {
    /// The one point where a canary is told apart, called by every path
    /// that opens a record for a caller, once per record per access, after
    /// the answer is settled and before its audit entry is written (the
    /// subject lookup too, with [`AccessPath::SubjectLookup`]). For a real
    /// record: `Allowed`,
    /// nothing else. For a canary: `Canary`, the outcome of the access's
    /// audit entry, and the rest of the alarm at once: a WARN line (ids
    /// only), the metric, and the webhook in a task of its own, so neither
    /// a slow receiver nor a client that hangs up changes the answer or
    /// stops the alarm.
    pub fn touched(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        path: AccessPath,
        meta: &RecordMeta,
        opened: &Opened,
    ) -> Outcome {
        if !opened.is_canary() {
            return Outcome::Allowed;
        }
        tracing::warn!(
            canary = %meta.id,
            record_type = meta.record_type.as_str(),
            path = path.as_str(),
            actor = %principal.id,
            request_id = %ctx.request_id,
            "canary record touched"
        );
        crate::metrics::canary_alarm(path);
        if let Some(webhook) = &self.settings.canaries.webhook {
            // A place in the bounded queue, taken before anything is built
            // or spawned: a flood of canary touches costs no more. A drop
            // is counted as a failure, and logged at debug only (the touch
            // has its WARN line already).
            let Ok(place) = self.canary_webhook_places.clone().try_acquire_owned() else {
                crate::metrics::canary_webhook_failed();
                tracing::debug!(
                    canary = %meta.id,
                    "canary webhook queue full: this alarm's delivery is dropped"
                );
                return Outcome::Canary;
            };
            let webhook = webhook.clone();
            let body = canary::webhook_body(
                &meta.id,
                meta.record_type,
                path,
                &principal.id,
                &ctx.request_id,
                &crate::clock::rfc3339(self.clock.now()),
            );
            let state = self.clone();
            let canary_id = meta.id.clone();
            tokio::spawn(async move {
                let _place = place;
                // Deliveries wait their turn (16 at once).
                let Ok(_turn) = state.canary_webhooks.acquire().await else {
                    return;
                };
                deliver(&state, webhook, body, &canary_id).await;
            });
        }
        Outcome::Canary
    }
}

/// Posts one alarm to the webhook through the relay's client: HTTPS only,
/// the destination's addresses checked as a relay route's are, no proxy,
/// no redirect. A failure is logged (ids only) and counted, not retried.
async fn deliver(
    state: &AppState,
    webhook: canary::Webhook,
    body: serde_json::Value,
    canary_id: &str,
) {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    let request = UpstreamRequest {
        base_url: webhook.url,
        ca_pem: webhook.ca_pem,
        timeout: canary::WEBHOOK_TIMEOUT,
        method: axum::http::Method::POST,
        path_and_query: String::new(),
        headers,
        body: zeroize::Zeroizing::new(body.to_string().into_bytes()),
    };
    match state.relay_upstream.send(request).await {
        Ok(answer) if answer.status.is_success() => {}
        Ok(answer) => {
            crate::metrics::canary_webhook_failed();
            tracing::error!(
                canary = %canary_id,
                status = answer.status.as_u16(),
                "canary webhook refused the alarm"
            );
        }
        Err(e) => {
            crate::metrics::canary_webhook_failed();
            tracing::error!(canary = %canary_id, error = %e, "canary webhook not reached");
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCanaries {
    /// The principal the canaries belong to, as if it had stored them: an
    /// active service that may create records of each type (a payment
    /// service), so its own reads of them work like reads of real ones.
    pub owner: String,
    /// Distinct record types, one canary each; all three when absent.
    #[schema(min_items = 1, max_items = 3)]
    pub types: Option<Vec<RecordType>>,
    /// The customer id the canaries are filed under, as a payment service
    /// would set it; none when absent.
    #[schema(min_length = 1, max_length = 128, pattern = "^[!-~]+$")]
    pub subject_ref: Option<String>,
    /// For a card: the issuer identification number (6 to 8 digits, in a
    /// brand's range) of a range no card is issued from; `[canaries]
    /// card_iin` when absent (one of the two is required for a card).
    #[schema(pattern = "^[0-9]{6,8}$")]
    pub card_iin: Option<String>,
}

/// One canary made: its id and tokens, as a payment service gets them for
/// a record it stores. Never a value.
#[derive(Serialize, ToSchema)]
pub struct CreatedCanary {
    /// `card_…`, `bank_…` or `kyc_…`, like any record's.
    pub id: String,
    #[serde(rename = "type")]
    pub record_type: RecordType,
    /// The record's random token (`tok_…`).
    pub token: String,
    /// A card's format-preserving PAN token; `null` otherwise.
    pub pan_token: Option<String>,
    /// A card's or bank account's fingerprint for its owner; `null` for KYC.
    pub fingerprint: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedCanaries {
    pub canaries: Vec<CreatedCanary>,
}

/// Checks the request and makes each canary's data.
fn canary_data(
    state: &AppState,
    request: &CreateCanaries,
) -> Result<(Principal, Vec<RecordData>), ApiError> {
    let types = request
        .types
        .clone()
        .unwrap_or_else(|| RecordType::ALL.to_vec());
    if types.is_empty() || types.len() > RecordType::ALL.len() {
        return Err(ApiError::field("types", "name 1 to 3 record types"));
    }
    for (i, t) in types.iter().enumerate() {
        if types.get(..i).is_some_and(|earlier| earlier.contains(t)) {
            return Err(ApiError::field(&format!("types[{i}]"), "is named twice"));
        }
    }
    // Checked whether or not a card is asked for: the document's pattern
    // holds for every request.
    if let Some(iin) = &request.card_iin {
        canary::check_iin(iin).map_err(|_| {
            ApiError::field("card_iin", "must be 6 to 8 digits in a card brand's range")
        })?;
    }
    if let Some(subject) = &request.subject_ref {
        records::subject_ref(subject).map_err(|e| ApiError::from(vec![e]))?;
    }
    let owner = state
        .principals
        .principal(&request.owner)?
        .filter(|p| {
            p.kind != PrincipalKind::Publishable
                && types.iter().all(|t| p.may(Operation::RecordCreate(*t)))
        })
        .ok_or_else(|| {
            ApiError::field(
                "owner",
                "must be an active principal that may create records of each type (a payment service)",
            )
        })?;
    let now = state.clock.now();
    let persona = Persona::new().map_err(fault)?;
    let mut made = Vec::with_capacity(types.len());
    for t in types {
        let data = match t {
            RecordType::Card => {
                let iin = request
                    .card_iin
                    .as_deref()
                    .or(state.settings.canaries.card_iin.as_deref())
                    .ok_or_else(|| {
                        ApiError::field(
                            "card_iin",
                            "is required for a card: no [canaries] card_iin is configured",
                        )
                    })?;
                canary::card(&persona, iin, now).map_err(|e| match e {
                    CanaryError::Iin => {
                        ApiError::field("card_iin", "must be 6 to 8 digits in a card brand's range")
                    }
                    e => fault(e),
                })?
            }
            RecordType::Kyc => canary::kyc(&persona, now).map_err(fault)?,
            RecordType::BankAccount => canary::bank_account(&persona).map_err(fault)?,
        };
        made.push(data);
    }
    Ok((owner, made))
}

fn fault(e: CanaryError) -> ApiError {
    tracing::error!(error = %e, "canary data could not be made");
    ApiError::Internal
}

/// Creates canary records owned by a payment service, and their tokens.
#[utoipa::path(post, path = "/v1/canaries", tag = "records", operation_id = "create_canaries",
    security(("bearer" = [])),
    request_body(content = CreateCanaries, content_type = "application/json"),
    responses(
        (status = 201, description = "Created: ids and tokens only", body = CreatedCanaries),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: no unique token could be minted", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: an unknown field, a type named twice, an owner that is not an active payment service, no or a bad `card_iin`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    body: JsonBody,
) -> Result<(StatusCode, Json<CreatedCanaries>), ApiError> {
    state
        .authorize(&caller, Operation::CanaryCreate, &ctx)
        .await?;
    let request: CreateCanaries = body.parse()?;
    let (owner, made) = canary_data(&state, &request)?;
    let admin = &caller.principal().id;
    let mut batch = Vec::with_capacity(made.len());
    let mut canaries = Vec::with_capacity(made.len());
    for data in &made {
        let created = state
            .vault
            .prepare_canary(&owner.id, request.subject_ref.clone(), data)?;
        let event = AuditEvent {
            reason: Some(format!("owner {}", owner.id)),
            ..ctx
                .event(admin, Operation::CanaryCreate.action(), Outcome::Allowed)
                .target(created.meta.id.clone())
        };
        batch.push((event, created.tx));
        canaries.push(CreatedCanary {
            id: created.meta.id,
            record_type: data.record_type(),
            token: created.token,
            pan_token: created.pan_token,
            fingerprint: created.fingerprint,
        });
    }
    state.commit_many(batch).await?;
    Ok((StatusCode::CREATED, Json(CreatedCanaries { canaries })))
}
