//! `/v1/sys/*`: health, readiness, unseal, seal.

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

/// Failed unseals are counted for the whole vault, not per client.
const UNSEAL_KEY: &str = "vault";

/// The longest passphrase or share accepted, in bytes: far beyond any real
/// one (a share is 98 characters), and a bound on what reaches Argon2id.
pub const MAX_UNSEAL_INPUT_BYTES: usize = 1024;

/// Exactly one of `passphrase` or `share`, each at most 1024 bytes.
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
        (status = 422, description = "`validation_failed`: neither or both of passphrase and share, one over 1024 bytes, or an unknown field", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: too many failed attempts", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`audit_unavailable`: the attempt could not be audited, so it does not stand", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn unseal(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiJson(body): ApiJson<UnsealRequest>,
) -> Result<Json<UnsealProgress>, ApiError> {
    let (field, input) = match (body.passphrase, body.share) {
        (Some(p), None) => ("passphrase", UnsealInput::Passphrase(Zeroizing::new(p))),
        (None, Some(s)) => ("share", UnsealInput::Share(Zeroizing::new(s))),
        _ => {
            return Err(ApiError::field(
                "body",
                "give exactly one of passphrase or share",
            ));
        }
    };
    let length = match &input {
        UnsealInput::Passphrase(text) | UnsealInput::Share(text) => text.len(),
    };
    if length > MAX_UNSEAL_INPUT_BYTES {
        return Err(ApiError::field(field, "must be at most 1024 bytes"));
    }
    // Already unsealed: nothing to do, nothing to audit (or anyone could
    // grow the audit log at will).
    if !state.keyring.is_sealed() {
        return Ok(Json(state.keyring.unseal_status()));
    }
    // A client that hangs up cannot stop the attempt: it keeps its permit,
    // its place in the limit and its audit entry to the end.
    super::to_the_end(attempt(state, ctx, input)).await
}

/// One unseal attempt, whole: one at a time, reserved against the failure
/// limit before the check, audited, and the head signed once unsealed.
async fn attempt(
    state: AppState,
    ctx: RequestContext,
    input: UnsealInput,
) -> Result<Json<UnsealProgress>, ApiError> {
    let _one_at_a_time = state
        .unseal_work
        .acquire()
        .await
        .map_err(|_| ApiError::Internal)?;
    // The attempt before this one may have unsealed the vault.
    if !state.keyring.is_sealed() {
        return Ok(Json(state.keyring.unseal_status()));
    }
    let reserved_at = state.clock.now();
    if let Err(retry_after_secs) = state.unseal_failures.take(UNSEAL_KEY, reserved_at)? {
        return Err(ApiError::RateLimited { retry_after_secs });
    }
    let keyring = Arc::clone(&state.keyring);
    let result = tokio::task::spawn_blocking(move || keyring.unseal(input))
        .await
        .map_err(|_| ApiError::Internal)?;
    match result {
        Ok(progress) => {
            // Accepted material is not a failure: its reservation goes back.
            if let Err(e) = state.unseal_failures.give_back(UNSEAL_KEY, reserved_at) {
                // The failure stays counted: stricter, never looser.
                tracing::warn!(error = %e, "could not give back an unseal reservation");
            }
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
                let audit = state.audit.clone();
                match tokio::task::spawn_blocking(move || audit.checkpoint()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "audit checkpoint at unseal failed"),
                    Err(_) => tracing::error!("audit checkpoint at unseal did not run"),
                }
            }
            Ok(Json(progress))
        }
        Err(KeyringError::UnsealFailed(why)) => {
            tracing::warn!(reason = why, "unseal attempt refused");
            let event = AuditEvent {
                reason: Some(why.to_owned()),
                ..ctx.event("anonymous", "sys.unseal", Outcome::Denied)
            };
            state.record(event).await?;
            Err(ApiError::UnsealFailed(why))
        }
        // Counted all the same: the limit errs on the side of refusing.
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
    let event = ctx.event(&actor, "sys.seal", Outcome::Allowed);
    // The seal happens whatever becomes of the request or of its entry: it
    // runs in a task of its own (a client that hangs up cannot stop it),
    // and the entry is best effort, for at most SEAL_AUDIT_WAIT: a vault
    // whose audit log cannot be written is a vault to seal, not to keep
    // open. The entry is written first only because, once sealed, the log
    // has no key to sign it with.
    let sealing = state.clone();
    let recorded = super::to_the_end(async move {
        let recorded = tokio::time::timeout(SEAL_AUDIT_WAIT, sealing.record(event)).await;
        sealing.seal();
        Ok(recorded)
    })
    .await?;
    match recorded {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(error = ?e, "sealed without its audit entry"),
        Err(_) => tracing::error!("sealed; its audit entry was not written in time"),
    }
    tracing::info!(actor = %actor, "vault sealed");
    Ok(Json(SealState { sealed: true }))
}

/// How long a seal waits for its audit entry before sealing without it.
const SEAL_AUDIT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Store reads scrapes may have in flight at once; the readiness probe
/// has one place of its own besides. A read that hangs (a database that
/// stopped answering) keeps its place until it returns, so hung reads
/// cannot pile up blocking threads: once all are taken, probes answer 503
/// at once.
pub(crate) const STORE_PROBES: usize = 4;

/// How long a probe waits for the store before answering 503.
const STORE_PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads `key` off the async runtime, within [`STORE_PROBE_WAIT`], holding
/// one of `places` until the read itself returns. `None` when the store
/// failed, did not answer in time, or every place is taken; why is logged,
/// never answered.
pub(crate) async fn probe_store(
    state: &AppState,
    places: &Arc<tokio::sync::Semaphore>,
    key: &'static [u8],
) -> Option<Option<Vec<u8>>> {
    let Ok(place) = Arc::clone(places).try_acquire_owned() else {
        // Not a warning: a flood of probes would flood the log.
        tracing::debug!("store probe refused: earlier probes have not returned");
        return None;
    };
    let store = Arc::clone(&state.store);
    let read = tokio::task::spawn_blocking(move || {
        let _place = place;
        store.get(key)
    });
    match tokio::time::timeout(STORE_PROBE_WAIT, read).await {
        Ok(Ok(Ok(value))) => Some(value),
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, "store probe failed");
            None
        }
        Ok(Err(_)) => None,
        Err(_) => {
            tracing::warn!("store probe did not answer in time");
            None
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// Always `true` in a 200 answer.
    pub ready: bool,
}

/// Whether this node should get traffic: unsealed, and its store answers
/// (it reads the vault's id back). For load balancers; no credential.
#[utoipa::path(get, path = "/v1/sys/ready", tag = "sys", operation_id = "ready",
    responses(
        (status = 200, description = "Unsealed, and the store answered", body = Readiness),
        (status = 503, description = "`sealed`: this node is sealed; or `store_unavailable`: the store failed or did not answer within 2 seconds", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    if state.keyring.is_sealed() {
        return Err(ApiError::Sealed);
    }
    // A probe that answered within the last second answers for this one:
    // a flood of unauthenticated probes costs one store read a second.
    // Probes read in a place of their own, which no scrape can take.
    let last = *state
        .last_probe
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let answered = match last {
        Some((at, ok)) if at.elapsed() < PROBE_REUSE => Some(ok),
        _ => match probe_store(&state, &state.ready_probe, crate::keyring::VAULT_KEY).await {
            Some(id) => {
                // No vault id: not this vault's store (or an emptied one).
                if id.is_none() {
                    tracing::warn!("store probe: the vault's id is missing");
                }
                let ok = id.is_some();
                *state
                    .last_probe
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((std::time::Instant::now(), ok));
                Some(ok)
            }
            // Its place taken by a probe still running: the last answer,
            // if it is recent enough to still say something.
            None if state.ready_probe.available_permits() == 0 => last
                .filter(|(at, _)| at.elapsed() < STORE_PROBE_WAIT)
                .map(|(_, ok)| ok),
            // The store failed or did not answer in time.
            None => None,
        },
    };
    match answered {
        Some(true) => Ok(Json(Readiness { ready: true })),
        _ => Err(ApiError::StoreUnavailable),
    }
}

/// How long a probe's answer stands for the probes (or scrapes) that
/// follow.
pub(crate) const PROBE_REUSE: std::time::Duration = std::time::Duration::from_secs(1);
