//! `/v1/auth/*`: staff login and logout.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{ApiJson, Caller, RequestContext};
use super::{ApiError, AppState, Problem};
use crate::access::{Attempt, Credential};
use crate::audit::{AuditEvent, Outcome};
use crate::clock::rfc3339;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    #[schema(max_length = 256)]
    pub username: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct Session {
    /// Opaque bearer token (`sst_…`).
    pub token: String,
    /// When the session ends unless used (idle) or at the latest (absolute).
    pub expires_at: String,
}

/// Longest username a login considers (names are at most 64 characters).
const MAX_USERNAME_CHARS: usize = 256;

/// Exchanges a staff username and password for a session token.
/// Repeated failures lock the username for a growing period.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", operation_id = "login",
    request_body(content = Login, content_type = "application/json"),
    responses(
        (status = 200, description = "A session", body = Session),
        (status = 401, description = "`unauthenticated`: wrong username or password", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: a concurrent change won", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: locked for a while, another attempt for this username is being checked, or too many password checks waiting", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn login(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiJson(login): ApiJson<Login>,
) -> Result<Json<Session>, ApiError> {
    // A client that hangs up cannot stop the attempt between its count, its
    // check and its audit entry.
    super::to_the_end(attempt(state, ctx, login)).await
}

/// One login attempt: one check at a time per username, counted against the
/// lockout before the password is checked, audited whatever the outcome.
async fn attempt(
    state: AppState,
    ctx: RequestContext,
    login: Login,
) -> Result<Json<Session>, ApiError> {
    let lockout = state.settings.lockout;
    // Names are at most 64 characters; a far longer one is no one's, and
    // is refused before it costs a count, a hash or an entry.
    if login.username.chars().count() > MAX_USERNAME_CHARS {
        return Err(ApiError::field(
            "username",
            "must be at most 256 characters",
        ));
    }
    let username = login.username.trim().to_lowercase();
    let password = zeroize::Zeroizing::new(login.password);
    let target = state.audit.fingerprint(&username);
    let failed = |actor: &str, reason: &str| AuditEvent {
        target: target.clone(),
        reason: Some(reason.to_owned()),
        ..ctx.event(actor, "auth.login_failed", Outcome::Denied)
    };

    let Some(_checking) = state.logins_in_flight.begin(&username) else {
        // Audited once a minute in all, not per username: usernames are
        // free to invent, so a per-name budget would not bound the log.
        return refuse(
            &state,
            failed("anonymous", "attempt in progress"),
            1,
            "in progress",
        )
        .await;
    };
    let reserved = {
        let state = state.clone();
        let username = username.clone();
        tokio::task::spawn_blocking(move || {
            let keys = state.keyring.keys()?;
            state
                .principals
                .reserve_login_attempt(&*keys.credential_key()?, &lockout, &username)
                .map_err(ApiError::from)
        })
        .await
        .map_err(|_| ApiError::Internal)??
    };
    if let Attempt::Locked { retry_after_secs } = reserved {
        let notice = target.clone().unwrap_or_default();
        return refuse(
            &state,
            failed("anonymous", "locked"),
            retry_after_secs,
            &notice,
        )
        .await;
    }

    let record = state.principals.staff_login_record(&username)?;
    // An unknown username is checked against a dummy hash, so it takes as
    // long as a known one.
    let hash = record
        .as_ref()
        .map_or_else(|| state.dummy_password_hash.clone(), |(_, h)| h.clone());
    let policy = state.settings.password_policy;
    // The pepper is fetched on the hashing thread, for that one use: no
    // copy of it waits in the queue, or outlives a seal.
    let keyring = std::sync::Arc::clone(&state.keyring);
    let verified = state
        .passwords
        .run(move || -> Result<bool, ApiError> {
            let keys = keyring.keys()?;
            Ok(policy.verify(&*keys.password_pepper()?, &hash, &password))
        })
        .await??;

    match record {
        Some((principal, _)) if verified && !principal.disabled => {
            let keys = state.keyring.keys()?;
            let (token, expires_at, tx) = state.principals.prepare_login(
                &*keys.credential_key()?,
                &state.settings.sessions,
                &principal,
                &username,
            )?;
            drop(keys);
            state
                .commit(ctx.event(&principal.id, "auth.login", Outcome::Allowed), tx)
                .await?;
            Ok(Json(Session {
                token: token.expose_secret().to_owned(),
                expires_at: rfc3339(expires_at),
            }))
        }
        other => {
            let actor = other.as_ref().map_or("anonymous", |(p, _)| p.id.as_str());
            let reason = match &other {
                None => "unknown username",
                Some((p, _)) if p.disabled => "disabled",
                Some(_) => "wrong password",
            };
            // The attempt was counted when it was reserved.
            state.record(failed(actor, reason)).await?;
            Err(ApiError::Unauthenticated)
        }
    }
}

/// Refuses an attempt without checking its password: 429. Such refusals
/// cost nothing, so they are audited at most once a minute per
/// `notice_key`, or they could flood the log.
async fn refuse(
    state: &AppState,
    event: AuditEvent,
    retry_after_secs: u64,
    notice_key: &str,
) -> Result<Json<Session>, ApiError> {
    if matches!(
        state.lock_notices.take(notice_key, state.clock.now()),
        Ok(Ok(()))
    ) {
        state.record(event).await?;
    }
    Err(ApiError::RateLimited { retry_after_secs })
}

/// Ends the caller's session.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", operation_id = "logout",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Session ended"),
        (status = 400, description = "`malformed_request`: the credential is an API key, not a session", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: a publishable key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: a concurrent change won", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn logout(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    // A publishable key reaches the collect routes and nothing else.
    if caller.principal().kind == crate::access::PrincipalKind::Publishable {
        state
            .record(ctx.event(&caller.principal().id, "auth.logout", Outcome::Denied))
            .await?;
        return Err(ApiError::Forbidden);
    }
    let Credential::Session { key } = &caller.0.credential else {
        return Err(ApiError::Malformed(
            "Logout ends a session; this credential is an API key.",
        ));
    };
    let principal = caller.principal();
    let tx = state.principals.prepare_logout(key, &principal.id);
    state
        .commit(
            ctx.event(&principal.id, "auth.logout", Outcome::Allowed),
            tx,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
