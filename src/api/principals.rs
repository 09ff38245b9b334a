//! `/v1/principals`: create, list, disable (admin).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{Caller, JsonBody, RequestContext};
use super::{ApiError, AppState, Problem};
use crate::access::{Operation, Principal, PrincipalKind, Role};
use crate::audit::{AuditEvent, Outcome};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePrincipal {
    /// 1-64 of `a-z 0-9 . _ -`; a staff member's username.
    pub name: String,
    pub kind: PrincipalKind,
    pub roles: Vec<Role>,
    /// Staff only: at least 12 characters.
    pub password: Option<String>,
    /// Publishable keys only: the id of their service (`prn_…`).
    pub owner: Option<String>,
    /// Publishable keys only: 1 to 16 exact web origins.
    pub allowed_origins: Option<Vec<String>>,
    /// Services only: the client certificates (SHA-256 of the DER
    /// certificate or of its SPKI, lowercase hex) its API key needs.
    pub client_cert_sha256: Option<Vec<String>>,
}

/// The create body as the document gives it: a service (API key, no
/// password) or a staff member (password), each with the roles its kind
/// may hold (documentation only: the handler parses [`CreatePrincipal`]).
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum NewPrincipal {
    Service(NewService),
    Staff(NewStaff),
    Publishable(NewPublishable),
}

/// A publishable key (`spk_…`): ships in a checkout page, creates cards and
/// attaches CVCs for `owner` from `allowed_origins`, nothing else
/// (docs/payment-path.md, "Collect").
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct NewPublishable {
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,63}$")]
    pub name: String,
    pub kind: PublishableKind,
    #[schema(min_items = 1)]
    pub roles: Vec<PublishableRole>,
    /// The id of an enabled service principal holding `payment_service`:
    /// the cards collected are its own. Disabling it disables the key.
    #[schema(pattern = "^prn_[0-9a-f]{24}$")]
    pub owner: String,
    /// Exact web origins, as browsers send them in `Origin`:
    /// `https://host[:port]`, lower case, no path, no default port;
    /// `http://` only for `localhost` and `127.0.0.1`.
    #[schema(min_items = 1, max_items = 16)]
    pub allowed_origins: Vec<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum PublishableKind {
    Publishable,
}

/// The one role a publishable key holds.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum PublishableRole {
    Collector,
}

#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct NewService {
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,63}$")]
    pub name: String,
    pub kind: ServiceKind,
    #[schema(min_items = 1)]
    pub roles: Vec<ServiceRole>,
    /// Binds the service's API key to client certificates (mTLS): the key
    /// is refused (401) on a connection that did not present one of these.
    /// Each is the SHA-256 of a DER certificate or of its
    /// SubjectPublicKeyInfo, as 64 lowercase hex digits.
    #[schema(max_items = 8)]
    pub client_cert_sha256: Option<Vec<CertFingerprint>>,
}

/// SHA-256 of a DER certificate or of its SubjectPublicKeyInfo, lowercase
/// hex (`openssl x509 -outform der | sha256sum`).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
pub struct CertFingerprint(String);

#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct NewStaff {
    /// The username.
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,63}$")]
    pub name: String,
    pub kind: StaffKind,
    #[schema(min_items = 1)]
    pub roles: Vec<StaffRole>,
    /// At least 12 characters, at most 1024 bytes.
    #[schema(min_length = 12, max_length = 1024)]
    pub password: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum ServiceKind {
    Service,
}

#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum StaffKind {
    Staff,
}

/// The roles a service may hold (`Role::fits`).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum ServiceRole {
    Admin,
    Auditor,
    PaymentService,
    Metrics,
}

/// The roles a staff member may hold (`Role::fits`).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum StaffRole {
    Admin,
    Auditor,
    ComplianceOfficer,
    ComplianceApprover,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedPrincipal {
    pub id: String,
    /// Services (`srk_…`) and publishable keys (`spk_…`) only; shown this
    /// once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

/// Creates a service (answering its API key, once) or a staff member.
#[utoipa::path(post, path = "/v1/principals", tag = "principals", operation_id = "create_principal",
    security(("bearer" = [])),
    request_body(content = NewPrincipal, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = CreatedPrincipal),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: the name is taken, or the owner changed meanwhile", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: too many password hashes waiting (staff)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    body: JsonBody,
) -> Result<(StatusCode, Json<CreatedPrincipal>), ApiError> {
    state
        .authorize(&caller, Operation::PrincipalCreate, &ctx)
        .await?;
    let request: CreatePrincipal = body.parse()?;
    let actor = caller.principal().id.clone();
    if request.kind != PrincipalKind::Publishable {
        if request.owner.is_some() {
            return Err(ApiError::field(
                "owner",
                "only publishable keys have an owner",
            ));
        }
        if request.allowed_origins.is_some() {
            return Err(ApiError::field(
                "allowed_origins",
                "only publishable keys have allowed origins",
            ));
        }
    }
    let client_cert_sha256 = match (request.kind, request.client_cert_sha256) {
        (_, None) => Vec::new(),
        (PrincipalKind::Service, Some(fingerprints)) => fingerprints,
        (_, Some(_)) => {
            return Err(ApiError::field(
                "client_cert_sha256",
                "only services can be bound to client certificates",
            ));
        }
    };
    let keys = state.keyring.keys()?;
    let (principal, api_key, tx) = match (request.kind, request.password) {
        (PrincipalKind::Publishable, None) => {
            let owner = request.owner.ok_or_else(|| {
                ApiError::field("owner", "a publishable key needs its owner service")
            })?;
            let origins = request.allowed_origins.ok_or_else(|| {
                ApiError::field("allowed_origins", "1 to 16 origins are required")
            })?;
            let (principal, key, tx) = state.principals.prepare_publishable(
                &*keys.credential_key()?,
                &request.name,
                request.roles,
                &owner,
                origins,
            )?;
            (principal, Some(key), tx)
        }
        (PrincipalKind::Publishable, Some(_)) => {
            return Err(ApiError::field(
                "password",
                "publishable keys authenticate by key, not password",
            ));
        }
        (PrincipalKind::Service, None) => {
            let (principal, key, tx) = state.principals.prepare_bound_service(
                &*keys.credential_key()?,
                &request.name,
                request.roles,
                client_cert_sha256,
            )?;
            (principal, Some(key), tx)
        }
        (PrincipalKind::Staff, Some(password)) => {
            let password = zeroize::Zeroizing::new(password);
            let policy = state.settings.password_policy;
            policy
                .check_strength(&password)
                .map_err(|message| ApiError::field("password", message))?;
            // The pepper is fetched on the hashing thread, for that use.
            let keyring = std::sync::Arc::clone(&state.keyring);
            let hash = state
                .passwords
                .run(move || -> Result<String, ApiError> {
                    let keys = keyring.keys()?;
                    policy
                        .hash(&*keys.password_pepper()?, &password)
                        .map_err(|_| ApiError::Internal)
                })
                .await??;
            let (principal, tx) =
                state
                    .principals
                    .prepare_staff(&request.name, request.roles, hash)?;
            (principal, None, tx)
        }
        (PrincipalKind::Service, Some(_)) => {
            return Err(ApiError::field(
                "password",
                "services authenticate by API key, not password",
            ));
        }
        (PrincipalKind::Staff, None) => {
            return Err(ApiError::field("password", "staff need a password"));
        }
    };
    drop(keys);
    let event = AuditEvent {
        reason: Some(creation_note(&caller.principal().name, &principal)),
        ..ctx
            .event(&actor, "principal.create", Outcome::Allowed)
            .target(principal.id.clone())
    };
    state.commit(event, tx).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedPrincipal {
            id: principal.id,
            api_key: api_key.map(|k| k.expose_secret().to_owned()),
        }),
    ))
}

/// The audit reason of a principal's creation: who created whom, with
/// which roles, by name as well as by id, so a reviewer sees at once an
/// admin who made themselves an officer and an approver, and to which
/// client certificates (fingerprints, not secret) its key is bound.
pub(super) fn creation_note(creator: &str, created: &Principal) -> String {
    let roles: Vec<&str> = created.roles.iter().map(|r| r.as_str()).collect();
    let owner = created
        .owner
        .as_deref()
        .map(|o| {
            format!(
                "; owner: {o}; origins: {}",
                created.allowed_origins.join(",")
            )
        })
        .unwrap_or_default();
    let mut note = format!(
        "{creator} created {} ({:?}; roles: {}{owner})",
        created.name,
        created.kind,
        roles.join(",")
    )
    .to_lowercase();
    if !created.client_cert_sha256.is_empty() {
        note.push_str("; client certificates: ");
        note.push_str(&created.client_cert_sha256.join(","));
    }
    note
}

#[derive(Serialize, ToSchema)]
pub struct PrincipalList {
    pub principals: Vec<Principal>,
}

/// Every principal; never a secret.
#[utoipa::path(get, path = "/v1/principals", tag = "principals", operation_id = "list_principals",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every principal", body = PrincipalList),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
) -> Result<Json<PrincipalList>, ApiError> {
    state
        .authorize(&caller, Operation::PrincipalList, &ctx)
        .await?;
    state
        .record(ctx.event(&caller.principal().id, "principal.list", Outcome::Allowed))
        .await?;
    Ok(Json(PrincipalList {
        principals: state.principals.list()?,
    }))
}

/// Disables a principal: its API key and sessions stop working at once.
#[utoipa::path(delete, path = "/v1/principals/{id}", tag = "principals", operation_id = "disable_principal",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Principal id")),
    responses(
        (status = 204, description = "Disabled"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: a concurrent change won", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn disable(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .authorize_on(&caller, Operation::PrincipalDisable, &ctx, || {
            Ok(vec![state.target_of(&id)])
        })
        .await?;
    let event = ctx
        .event(
            &caller.principal().id,
            "principal.disable",
            Outcome::Allowed,
        )
        .target(id.clone());
    let Some((_, tx)) = state.principals.prepare_disable(&id)? else {
        state
            .record(AuditEvent {
                outcome: Outcome::Error,
                reason: Some("not found".into()),
                ..event
            })
            .await?;
        return Err(ApiError::NotFound);
    };
    state.commit(event, tx).await?;
    Ok(StatusCode::NO_CONTENT)
}
