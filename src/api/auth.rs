//! `/v1/auth/*`: staff login and logout.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{ApiJson, Caller, RequestContext};
use super::{ApiError, AppState, Problem};
use crate::access::Credential;
use crate::audit::{AuditEvent, Outcome};
use crate::clock::rfc3339;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
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

/// Exchanges a staff username and password for a session token.
/// Repeated failures lock the username for a growing period.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", operation_id = "login",
    request_body(content = Login, content_type = "application/json"),
    responses(
        (status = 200, description = "A session", body = Session),
        (status = 401, description = "`unauthenticated`: wrong username or password", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: a concurrent change won", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: locked for a while, or too many password checks waiting", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn login(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiJson(login): ApiJson<Login>,
) -> Result<Json<Session>, ApiError> {
    let keys = state.keyring.keys()?;
    let credential_key = keys.credential_key();
    drop(keys);
    let lockout = state.settings.lockout;
    let username = login.username.trim().to_lowercase();
    let target = state.audit.fingerprint(&username);
    let failed = |actor: &str, reason: &str| AuditEvent {
        target: target.clone(),
        reason: Some(reason.to_owned()),
        ..ctx.event(actor, "auth.login_failed", Outcome::Denied)
    };

    if let Some(retry_after_secs) =
        state
            .principals
            .login_retry_after(&credential_key, &lockout, &username)?
    {
        // Locked refusals cost no password check, so they are audited at
        // most once a minute per username, or they could flood the log.
        if state
            .lock_notices
            .take(target.as_deref().unwrap_or_default(), state.clock.now())
            .is_ok()
        {
            state.record(failed("anonymous", "locked")).await?;
        }
        return Err(ApiError::RateLimited { retry_after_secs });
    }

    let record = state.principals.staff_login_record(&username)?;
    // An unknown username is checked against a dummy hash, so it takes as
    // long as a known one.
    let hash = record
        .as_ref()
        .map_or_else(|| state.dummy_password_hash.clone(), |(_, h)| h.clone());
    let policy = state.settings.password_policy;
    let password = zeroize::Zeroizing::new(login.password);
    let verified = state
        .passwords
        .run(move || policy.verify(&hash, &password))
        .await?;

    match record {
        Some((principal, _)) if verified && !principal.disabled => {
            let (token, expires_at, tx) = state.principals.prepare_login(
                &credential_key,
                &state.settings.sessions,
                &principal,
                &username,
            )?;
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
            let tx =
                state
                    .principals
                    .prepare_login_failure(&credential_key, &lockout, &username)?;
            state.commit(failed(actor, reason), tx).await?;
            Err(ApiError::Unauthenticated)
        }
    }
}

/// Ends the caller's session.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", operation_id = "logout",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Session ended"),
        (status = 400, description = "`malformed_request`: the credential is an API key, not a session", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: a concurrent change won", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn logout(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
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
