//! `/v1/relay`: routes under dual control (admin) and their invocation
//! (payment service).
//!
//! Invocation order (docs/payment-path.md, "Relay routes and invocation"):
//! authorise; route exists (404), is active (409 `route_pending` /
//! `route_disabled`), allows the method (405); body JSON or form (415);
//! no placeholder in the path, query or any header (422 naming where);
//! body parsed structurally (400 / 422); every placeholder's field on the
//! route's allow-list (422); every token the caller's own and usable (the
//! token's own code, as detokenize); every field a field of its record's
//! type with a value (422); CVCs taken (409 `cvc_unavailable`); then one
//! audit entry per record sent, committed together with the use counts
//! (the reservation), and only then the upstream request. Everything after
//! the body is read runs to the end whether or not the client stays.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use super::extract::{Caller, JsonBody, RequestContext};
use super::tokens::{Usable, usable_token};
use super::{ApiError, AppState, FieldError, Problem};
use crate::access::{Operation, Principal};
use crate::audit::{AuditEvent, Outcome};
use crate::canary::AccessPath;
use crate::cvc::TakenCvc;
use crate::relay::invoke::{FORWARDED_REQUEST_HEADERS, body_kind, check_path, field_value};
use crate::relay::routes::{
    self, ApprovalError, Route, RouteError, RouteInput, RouteStatus, field_of,
};
use crate::relay::splice::{BodyKind, Placeholder, SpliceError, Template, refuse_in};
use crate::relay::{mask, upstream};
use crate::store::Transaction;
use crate::vault::Opened;

/// The header that tells a relay caller who answered.
pub const RELAY_HEADER: HeaderName = HeaderName::from_static("x-strongroom-relay");
const INVOKE_PREFIX: &str = "/v1/relay/";
const ROUTES_PREFIX: &str = "/v1/relay/routes";

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::Keyring(k) => k.into(),
            RouteError::Store(s) => s.into(),
            RouteError::Corrupt => {
                tracing::error!("a stored relay route does not parse");
                Self::Integrity
            }
        }
    }
}

/// How an audit entry names a route the request names: its name when it
/// can be one, else (a value pasted into the path) its fingerprint.
fn route_target(state: &AppState, name: &str) -> Option<String> {
    if routes::valid_name(name) {
        Some(name.to_owned())
    } else {
        state.audit.fingerprint(name)
    }
}

// ---- routes ----

#[derive(Serialize, ToSchema)]
pub struct RouteState {
    pub name: String,
    pub status: RouteStatus,
}

#[derive(Serialize, ToSchema)]
pub struct RouteList {
    /// Every route, by name; header values are never returned.
    pub routes: Vec<Route>,
}

/// What a route's audit entry says about it: destination, methods,
/// fields, header names. Never a header value.
fn describe(route: &Route) -> String {
    format!(
        "version {}; base_url {}; methods {}; fields {}; headers {}; ca_pem {}",
        route.version,
        route.base_url,
        route
            .methods
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(","),
        route.fields.join(","),
        route.header_names.join(","),
        if route.ca_pem.is_some() {
            "own"
        } else {
            "platform roots"
        },
    )
}

fn validate(name: &str, input: &RouteInput) -> Result<routes::RouteSpec, ApiError> {
    routes::validate(name, input, |url| upstream::check_base_url(url).is_ok())
        .map_err(ApiError::from)
}

/// Creates a route, pending until another admin approves it.
#[utoipa::path(post, path = "/v1/relay/routes", tag = "relay", operation_id = "create_relay_route",
    security(("bearer" = [])),
    request_body(content = RouteInput, content_type = "application/json"),
    responses(
        (status = 201, description = "Created, pending approval by another admin", body = RouteState),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: a route of that name exists", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_route(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    body: JsonBody,
) -> Result<(StatusCode, Json<RouteState>), ApiError> {
    state
        .authorize(&caller, Operation::RelayRouteCreate, &ctx)
        .await?;
    let input: RouteInput = body.parse()?;
    let name = input.name.clone().unwrap_or_default();
    let spec = validate(&name, &input)?;
    let admin = &caller.principal().id;
    let event = ctx
        .event(admin, "relay.route.create", Outcome::Allowed)
        .target(name.clone());
    if state.relay_routes.get(&name)?.is_some() {
        state
            .record(AuditEvent {
                outcome: Outcome::Error,
                reason: Some("a route of that name exists".into()),
                ..event
            })
            .await?;
        return Err(ApiError::Conflict("A route of that name exists."));
    }
    let (route, tx) = state.relay_routes.prepare_create(&spec, admin)?;
    state
        .commit(
            AuditEvent {
                reason: Some(describe(&route)),
                ..event
            },
            tx,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(RouteState {
            name: route.name,
            status: route.status,
        }),
    ))
}

/// Replaces a route's whole definition; it is pending again until another
/// admin (neither its creator nor this changer) approves it.
#[utoipa::path(put, path = "/v1/relay/routes/{name}", tag = "relay", operation_id = "change_relay_route",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Route name")),
    request_body(content = RouteInput, content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced, pending approval", body = RouteState),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: a concurrent change won", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn change_route(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(name): Path<String>,
    body: JsonBody,
) -> Result<Json<RouteState>, ApiError> {
    state
        .authorize_on(&caller, Operation::RelayRouteChange, &ctx, || {
            Ok(vec![route_target(&state, &name)])
        })
        .await?;
    let input: RouteInput = body.parse()?;
    let Some((current, stored)) = state.relay_routes.get(&name)? else {
        return Err(ApiError::NotFound);
    };
    let spec = validate(&name, &input)?;
    let admin = &caller.principal().id;
    let (route, tx) = state
        .relay_routes
        .prepare_change(&current, stored, &spec, admin)?;
    state
        .commit(
            AuditEvent {
                reason: Some(format!(
                    "was {:?}; now pending; {}",
                    current.status,
                    describe(&route)
                )),
                ..ctx
                    .event(admin, "relay.route.change", Outcome::Allowed)
                    .target(name)
            },
            tx,
        )
        .await?;
    Ok(Json(RouteState {
        name: route.name,
        status: route.status,
    }))
}

/// What the approver reviewed: `?version=N` (from `GET
/// /v1/relay/routes`). Given, the approval is for that version only: a
/// route changed since is 409, never approved unseen.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ApproveQuery {
    /// The route version the approver reviewed.
    pub version: Option<u64>,
}

/// Approves a pending route: by an admin who neither created nor last
/// changed it. Approving an active or disabled route is 409; with
/// `?version=N`, so is approving a route no longer at version N.
#[utoipa::path(post, path = "/v1/relay/routes/{name}/approve", tag = "relay", operation_id = "approve_relay_route",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Route name"), ApproveQuery),
    responses(
        (status = 200, description = "Active: the route carries data", body = RouteState),
        (status = 403, description = "`forbidden`: not an admin, or the admin who created or last changed it", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: a query that is not `version=<number>`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: not pending (already active, or disabled), not at the version named, or a concurrent change won", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn approve_route(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<RouteState>, ApiError> {
    state
        .authorize_on(&caller, Operation::RelayRouteApprove, &ctx, || {
            Ok(vec![route_target(&state, &name)])
        })
        .await?;
    let seen: ApproveQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|_| ApiError::field("query", "only version=<number> is accepted"))?;
    let admin = &caller.principal().id;
    let event = ctx.event(admin, "relay.route.approve", Outcome::Allowed);
    let refused = |outcome, reason: &str| AuditEvent {
        outcome,
        reason: Some(reason.to_owned()),
        target: route_target(&state, &name),
        ..event.clone()
    };
    match state
        .relay_routes
        .prepare_approve(&name, admin, seen.version)?
    {
        Ok((route, tx)) => {
            state
                .commit(
                    AuditEvent {
                        reason: Some(describe(&route)),
                        ..event.target(name)
                    },
                    tx,
                )
                .await?;
            Ok(Json(RouteState {
                name: route.name,
                status: route.status,
            }))
        }
        Err(ApprovalError::NotFound) => {
            state
                .record(refused(Outcome::Denied, "no such route"))
                .await?;
            Err(ApiError::NotFound)
        }
        Err(ApprovalError::OwnRoute) => {
            state
                .record(refused(
                    Outcome::Denied,
                    "self-approval: the approver created or last changed this route",
                ))
                .await?;
            Err(ApiError::Forbidden)
        }
        Err(ApprovalError::VersionChanged { current }) => {
            state
                .record(refused(
                    Outcome::Denied,
                    &format!("the route changed since it was read: now version {current}"),
                ))
                .await?;
            Err(ApiError::Conflict(
                "The route changed since you read it; read it again (GET /v1/relay/routes) and approve the version you reviewed.",
            ))
        }
        Err(ApprovalError::NotPending(status)) => {
            let (reason, detail) = match status {
                RouteStatus::Disabled => (
                    "the route is disabled",
                    "The route is disabled; change it (PUT) to make it pending again.",
                ),
                _ => (
                    "the route is already active",
                    "The route is already active.",
                ),
            };
            state.record(refused(Outcome::Error, reason)).await?;
            Err(ApiError::Conflict(detail))
        }
    }
}

/// Every route, without header values.
#[utoipa::path(get, path = "/v1/relay/routes", tag = "relay", operation_id = "list_relay_routes",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every route, without header values", body = RouteList),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_routes(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
) -> Result<Json<RouteList>, ApiError> {
    state
        .authorize(&caller, Operation::RelayRouteList, &ctx)
        .await?;
    let routes = state.relay_routes.list()?;
    state
        .record(ctx.event(&caller.principal().id, "relay.route.list", Outcome::Allowed))
        .await?;
    Ok(Json(RouteList { routes }))
}

/// Disables a route at once and destroys its header values.
#[utoipa::path(delete, path = "/v1/relay/routes/{name}", tag = "relay", operation_id = "delete_relay_route",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Route name")),
    responses(
        (status = 204, description = "Disabled"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: a concurrent change won", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_route(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .authorize_on(&caller, Operation::RelayRouteDelete, &ctx, || {
            Ok(vec![route_target(&state, &name)])
        })
        .await?;
    let admin = &caller.principal().id;
    let Some((route, tx)) = state.relay_routes.prepare_disable(&name, admin)? else {
        return Err(ApiError::NotFound);
    };
    state
        .commit(
            AuditEvent {
                reason: Some(format!(
                    "disabled; header values destroyed; {}",
                    describe(&route)
                )),
                ..ctx
                    .event(admin, "relay.route.delete", Outcome::Allowed)
                    .target(name)
            },
            tx,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- invocation ----

/// Marks every answer on an invocation path that did not come from the
/// upstream (a refusal by the vault, whichever layer gave it) with
/// `x-strongroom-relay: refused`, so a client can always tell the two
/// apart.
pub async fn mark_refusals(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let invocation = path.starts_with(INVOKE_PREFIX)
        && !(path == ROUTES_PREFIX || path.starts_with("/v1/relay/routes/"));
    let mut response = next.run(req).await;
    if invocation && !response.headers().contains_key(&RELAY_HEADER) {
        response
            .headers_mut()
            .insert(RELAY_HEADER, HeaderValue::from_static("refused"));
    }
    response
}

/// What the relay takes from the caller's request.
struct Invocation {
    principal: Principal,
    ctx: RequestContext,
    name: String,
    method: String,
    /// The path to append to the base URL, with its leading `/`, as sent.
    path: String,
    query: Option<String>,
    /// The caller's headers, without its `Authorization`.
    headers: HeaderMap,
    kind: BodyKind,
    body: Bytes,
}

/// What the upstream answered, masked.
struct Answer {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Unmasked as sent back by `send`; masked by `relay`.
    body: Zeroizing<Vec<u8>>,
}

/// The invocation route, once per method it takes (POST, PUT, PATCH):
/// each its own operation in the OpenAPI document.
macro_rules! invoke_with {
    ($method:ident, $name:ident, $operation:literal) => {
        /// Forwards a request to a route with its placeholders replaced by
        /// values (see [`invoke`]).
        #[utoipa::path($method, path = "/v1/relay/{name}/{path}", tag = "relay", operation_id = $operation,
            security(("bearer" = [])),
            params(
                ("name" = String, Path, description = "Route name"),
                ("path" = String, Path, description = "Appended to the route's base URL (may hold slashes)"),
            ),
            request_body(content = Object, description = "JSON or `application/x-www-form-urlencoded`, with `{{<token>:<field>}}` placeholders as whole values",
                content(
                    (Object = "application/json"),
                    (Object = "application/x-www-form-urlencoded"),
                )),
            responses(
                (status = "default", description = "The upstream's own answer, any status, its body masked, with `x-strongroom-relay: upstream`"),
                (status = 403, description = "`forbidden`: not a payment service", body = Problem, content_type = "application/problem+json"),
                (status = 404, description = "`not_found`: no such route, or a token that is unknown or another owner's", body = Problem, content_type = "application/problem+json"),
                (status = 405, description = "`method_not_allowed`: the route does not allow this method", body = Problem, content_type = "application/problem+json"),
                (status = 409, description = "`route_pending`, `route_disabled`, `cvc_unavailable`, or `conflict` (a concurrent use won)", body = Problem, content_type = "application/problem+json"),
                (status = 410, description = "`token_revoked`, `token_expired` or `erased`", body = Problem, content_type = "application/problem+json"),
                (status = 415, description = "`unsupported_media_type`: neither JSON nor a form", body = Problem, content_type = "application/problem+json"),
                (status = 502, description = "`upstream_unavailable` or `upstream_too_large`", body = Problem, content_type = "application/problem+json"),
                (status = 504, description = "`upstream_timeout`", body = Problem, content_type = "application/problem+json"),
            ))]
        pub async fn $name(
            state: State<AppState>,
            ctx: RequestContext,
            caller: Caller,
            request: Request,
        ) -> Result<Response, ApiError> {
            invoke(state, ctx, caller, request).await
        }
    };
}

invoke_with!(post, invoke_post, "invoke_relay");
invoke_with!(put, invoke_put, "invoke_relay_put");
invoke_with!(patch, invoke_patch, "invoke_relay_patch");

/// Forwards a request to a route with its placeholders replaced by values.
pub async fn invoke(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    // The route name and the path after it, from the request's own path
    // (still percent-encoded): a name with anything to decode is no valid
    // name, and the path goes upstream as the caller sent it.
    let (name, path) = request
        .uri()
        .path()
        .strip_prefix(INVOKE_PREFIX)
        .and_then(|rest| rest.split_once('/'))
        .map(|(name, rest)| (name.to_owned(), format!("/{rest}")))
        .ok_or(ApiError::NotFound)?;
    state
        .authorize_on(&caller, Operation::RelayInvoke, &ctx, || {
            Ok(vec![route_target(&state, &name)])
        })
        .await?;
    let method = request.method().as_str().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let kind = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(body_kind)
        .ok_or(ApiError::UnsupportedMediaType)?;
    // The caller's headers go into the relay's task, all but its own
    // credential, which it needs no longer.
    let mut headers = request.headers().clone();
    headers.remove(header::AUTHORIZATION);
    let body = Bytes::from_request(request, &state)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::Malformed("The request body could not be read.")
            }
        })?;
    let invocation = Invocation {
        principal: caller.principal().clone(),
        ctx,
        name,
        method,
        path,
        query,
        headers,
        kind,
        body,
    };
    let answer = super::to_the_end(relay(state, invocation)).await?;
    let mut response = (answer.status, answer.body.to_vec()).into_response();
    let out = response.headers_mut();
    if let Some(content_type) = answer.content_type {
        out.insert(header::CONTENT_TYPE, content_type);
    }
    for (name, value) in answer.headers {
        out.append(name, value);
    }
    out.insert(RELAY_HEADER, HeaderValue::from_static("upstream"));
    Ok(response)
}

/// The whole relay after the request is read: checks, reservation, send,
/// audit. Runs in a task of its own (`to_the_end`).
async fn relay(state: AppState, call: Invocation) -> Result<Answer, ApiError> {
    let actor = call.principal.id.clone();
    let route_named = route_target(&state, &call.name);
    // The route as the audit log names it: a caller's text that is no
    // valid route name only as its fingerprint.
    let audited_name = route_named.clone().unwrap_or_default();
    let denied = |reason: &str, target: Option<String>| AuditEvent {
        outcome: Outcome::Denied,
        reason: Some(format!("route {audited_name}: {reason}")),
        target,
        ..call.ctx.event(&actor, "relay.invoke", Outcome::Denied)
    };

    // The route: exists, active, allows the method.
    let Some((route, route_stored)) = state.relay_routes.get(&call.name)? else {
        state.record(denied("no such route", route_named)).await?;
        return Err(ApiError::NotFound);
    };
    // A route bound to other callers is, to this caller, no route at all:
    // not even its status is told.
    if !route.allows_caller(&actor) {
        state
            .record(denied("caller not on the route's caller list", route_named))
            .await?;
        return Err(ApiError::NotFound);
    }
    match route.status {
        RouteStatus::Active => {}
        RouteStatus::Pending => {
            state.record(denied("route_pending", route_named)).await?;
            return Err(ApiError::RoutePending);
        }
        RouteStatus::Disabled => {
            state.record(denied("route_disabled", route_named)).await?;
            return Err(ApiError::RouteDisabled);
        }
    }
    if !route.allows_method(&call.method) {
        state
            .record(denied("method not allowed on this route", route_named))
            .await?;
        return Err(ApiError::MethodNotAllowed);
    }

    // Placeholders only ever in the body.
    let kind = call.kind;
    let misplaced = check_outside_body(&call);
    if let Err(e) = misplaced {
        state
            .record(denied(
                &format!("refused: {}", audited_location(e.location())),
                route_named,
            ))
            .await?;
        return Err(e.into());
    }
    if let Err(message) = check_path(&call.path) {
        state.record(denied("refused: path", route_named)).await?;
        return Err(ApiError::field("path", message));
    }
    if !route.allows_path(&call.path) {
        state
            .record(denied(
                "path not on the route's path allow-list",
                route_named,
            ))
            .await?;
        return Err(ApiError::field(
            "path",
            "is not on this route's path allow-list",
        ));
    }
    let template = match Template::parse(kind, &call.body) {
        Ok(template) => template,
        Err(e) => {
            state
                .record(denied(
                    &format!("refused: {}", audited_location(e.location())),
                    route_named,
                ))
                .await?;
            return Err(e.into());
        }
    };

    // Every field on the route's allow-list, before any token is looked at.
    let mut not_allowed: Vec<FieldError> = Vec::new();
    for p in template.placeholders() {
        if !route.allows_field(&p.field) && !not_allowed.iter().any(|e| e.field == p.field) {
            not_allowed.push(FieldError {
                field: p.field.clone(),
                message: "is not on this route's field allow-list".into(),
            });
        }
    }
    if !not_allowed.is_empty() {
        let names: Vec<&str> = not_allowed.iter().map(|e| e.field.as_str()).collect();
        state
            .record(denied(
                &format!("fields not on the allow-list: {}", names.join(",")),
                route_named,
            ))
            .await?;
        return Err(ApiError::Validation(not_allowed));
    }

    // Every token usable by this caller; every field a value of its record.
    let resolved = match resolve_all(&state, &call.principal, template.placeholders()) {
        Ok(resolved) => resolved,
        Err(Refused {
            error,
            target,
            reason,
        }) => {
            state.record(denied(&reason, target)).await?;
            return Err(error);
        }
    };
    let Resolution {
        mut values,
        uses,
        records,
        cvc_cards,
        opened,
    } = resolved?;

    // The route's own headers, before anything is reserved.
    let route_headers = state.relay_routes.header_values(&route)?;

    // CVCs last: taking one uses it up.
    let mut taken: Vec<(String, TakenCvc)> = Vec::new();
    for (placeholder, card_id) in &cvc_cards {
        match state.cvcs.take_until(card_id) {
            Some(cvc) => {
                values.insert(placeholder.clone(), cvc.value.clone());
                taken.push((card_id.clone(), cvc));
            }
            None => {
                restore_cvcs(&state, &taken);
                state
                    .record(denied("cvc_unavailable", Some(card_id.clone())))
                    .await?;
                return Err(ApiError::CvcUnavailable);
            }
        }
    }

    // The reservation: one entry per record sent, with the use counts, in
    // one durable transaction, before any byte leaves.
    let sending = call.ctx.event(&actor, "relay.invoke", Outcome::Allowed);
    let mut batch: Vec<(AuditEvent, Transaction)> = records
        .iter()
        .map(|id| {
            let outcome = match opened.get(id) {
                Some((meta, record)) => state.touched(
                    &call.ctx,
                    &call.principal,
                    AccessPath::Relay,
                    meta,
                    record,
                ),
                None => Outcome::Allowed,
            };
            let event = AuditEvent {
                outcome,
                reason: Some(format!(
                    "route {}: sending {} {}; the answer is in the entry for this route with this request id",
                    call.name, call.method, route.base_url
                )),
                ..sending.clone().target(id.clone())
            };
            (event, Transaction::new())
        })
        .collect();
    // The route as read is part of the reservation: a route disabled or
    // changed before it stops the call.
    let uses = uses.merge(
        state
            .relay_routes
            .expect_unchanged(&route.name, route_stored.clone()),
    );
    if let Some((_, tx)) = batch.first_mut() {
        *tx = std::mem::take(tx).merge(uses);
    } else {
        // A body with no placeholder sends no vault data; the call is
        // still audited before it goes.
        batch.push((
            AuditEvent {
                reason: Some(format!("route {}: sending, no values", call.name)),
                ..sending.clone().target(call.name.clone())
            },
            uses,
        ));
    }
    if let Err(e) = state.commit_many(batch).await {
        restore_cvcs(&state, &taken);
        // A conflict is the reservation's preconditions at work: a token
        // revoked, a record erased or the route changed since they were
        // read. The refusal is audited per record (the reservation's own
        // entries went with it).
        if matches!(e, ApiError::Conflict(_)) {
            let denials: Vec<(AuditEvent, Transaction)> = records
                .iter()
                .map(|id| {
                    let reason = "changed while relaying (token revoked or used, record erased or changed, or route changed); nothing sent";
                    (denied(reason, Some(id.clone())), Transaction::new())
                })
                .collect();
            if !denials.is_empty() {
                state.commit_many(denials).await?;
            }
        }
        return Err(e);
    }

    let body = template.render(&values).map_err(ApiError::from)?;
    let relayed: Vec<&str> = values.values().map(|v| v.as_str()).collect();
    // The path is the caller's text: card-number-like runs in it are masked
    // before it reaches the audit log; the query is never audited.
    let audited_path =
        String::from_utf8_lossy(&mask::mask_body(call.path.as_bytes(), &relayed)).into_owned();
    let summary = format!(
        "route {}; {} {}{}; records {}",
        call.name,
        call.method,
        route.base_url,
        audited_path,
        if records.is_empty() {
            "none".to_owned()
        } else {
            records.join(",")
        }
    );
    let finished = call
        .ctx
        .event(&actor, "relay.invoke", Outcome::Allowed)
        .target(call.name.clone());
    match send(&state, &route, &call, route_headers, body).await {
        Ok(mut answer) => {
            answer.body = Zeroizing::new(mask::mask_body(&answer.body, &relayed));
            // Allow-listed headers are masked as the body is (a Location
            // can carry a card number).
            for (_, value) in &mut answer.headers {
                let masked = mask::mask_body(value.as_bytes(), &relayed);
                if masked != value.as_bytes() {
                    *value = HeaderValue::from_bytes(&masked)
                        .unwrap_or_else(|_| HeaderValue::from_static("[masked]"));
                }
            }
            state
                .record(AuditEvent {
                    reason: Some(format!(
                        "{summary}; upstream status {}",
                        answer.status.as_u16()
                    )),
                    ..finished
                })
                .await?;
            Ok(answer)
        }
        Err(error) => {
            state
                .record(AuditEvent {
                    outcome: Outcome::Error,
                    reason: Some(format!("{summary}; no answer: {}", error.problem().code)),
                    ..finished
                })
                .await?;
            Err(error)
        }
    }
}

/// Where a placeholder was refused, as the audit log may hold it: the
/// location names a JSON pointer or a form key, which are the caller's
/// text, so card-number-like runs are masked and the length capped.
fn audited_location(location: &str) -> String {
    let masked = mask::mask_body(location.as_bytes(), &[]);
    String::from_utf8_lossy(&masked).chars().take(128).collect()
}

/// A placeholder in the path, the query or any header is refused: values
/// are only ever spliced into the body.
fn check_outside_body(call: &Invocation) -> Result<(), SpliceError> {
    refuse_in("path", &call.path)?;
    if let Some(query) = &call.query {
        refuse_in("query", query)?;
    }
    // The caller's own `Authorization` was taken out when it was read.
    for (name, value) in &call.headers {
        let text = String::from_utf8_lossy(value.as_bytes());
        refuse_in(&format!("header {}", name.as_str()), &text)?;
    }
    Ok(())
}

/// Why a placeholder cannot be filled: the answer, and what the denial's
/// audit entry names.
struct Refused {
    error: ApiError,
    target: Option<String>,
    reason: String,
}

/// Every placeholder's value, the use-count writes, the records sent, the
/// card ids whose CVC is still to take, and each record sent as opened.
struct Resolution {
    values: HashMap<Placeholder, Zeroizing<String>>,
    uses: Transaction,
    records: Vec<String>,
    cvc_cards: Vec<(Placeholder, String)>,
    opened: HashMap<String, (crate::vault::RecordMeta, Opened)>,
}

fn token_error(code: &str) -> ApiError {
    match code {
        "token_revoked" => ApiError::TokenRevoked,
        "token_expired" => ApiError::TokenExpired,
        "erased" => ApiError::Erased,
        _ => ApiError::NotFound,
    }
}

/// Resolves every placeholder (the CVC excepted: see `take_cvc`). Each
/// token is checked as detokenize checks it and counted once, however
/// many of its fields the body uses. The outer error is a fault; the inner
/// one a refusal.
fn resolve_all(
    state: &AppState,
    principal: &Principal,
    placeholders: &[Placeholder],
) -> Result<Result<Resolution, ApiError>, Refused> {
    let mut values = HashMap::new();
    let mut uses = Transaction::new();
    let mut records: Vec<String> = Vec::new();
    let mut cvc_cards = Vec::new();
    let mut tokens: HashMap<&str, crate::vault::RecordMeta> = HashMap::new();
    let mut opened: HashMap<String, (crate::vault::RecordMeta, Opened)> = HashMap::new();
    let fault = |e: ApiError| Ok(Err(e));
    for p in placeholders {
        let meta = match tokens.get(p.token.as_str()) {
            Some(meta) => meta.clone(),
            None => {
                let usable = match usable_token(state, principal, &p.token) {
                    Ok(Ok(usable)) => usable,
                    Ok(Err(refusal)) => {
                        return Err(Refused {
                            error: token_error(refusal.code),
                            target: refusal.target,
                            reason: refusal.code.to_owned(),
                        });
                    }
                    Err(e) => return fault(e),
                };
                let Usable { key, record, meta } = usable;
                let Some(meta) = meta else {
                    return Err(Refused {
                        error: ApiError::field(&p.field, "a generic token has no fields to relay"),
                        target: Some(record.target.id().to_owned()),
                        reason: "a generic token".into(),
                    });
                };
                // Reserved with the audit entries: a use counted, or at
                // least the token as read, so a revocation acknowledged
                // first stops the call before anything is sent.
                let reservation = if record.max_uses.is_some() {
                    state.vault.prepare_use(&key, &record)
                } else {
                    state.vault.expect_token(&key, &record)
                };
                match reservation {
                    Ok(tx) => uses = uses.merge(tx),
                    Err(e) => return fault(e.into()),
                }
                // A relay is a use of the record (retention `after last_use`).
                match state.lifecycle.note_use(&meta.id) {
                    Ok(tx) => uses = uses.merge(tx),
                    Err(e) => return fault(e.into()),
                }
                tokens.insert(p.token.as_str(), meta.clone());
                meta
            }
        };
        if !field_of(meta.record_type, &p.field) {
            return Err(Refused {
                error: ApiError::field(&p.field, "is not a field of the token's record type"),
                target: Some(meta.id.clone()),
                reason: format!(
                    "field {} is not a {} field",
                    p.field,
                    meta.record_type.as_str()
                ),
            });
        }
        if !records.contains(&meta.id) {
            // The record as read, reserved too: an erasure acknowledged
            // first stops the call.
            match state.vault.expect_meta(&meta) {
                Ok(tx) => uses = uses.merge(tx),
                Err(e) => return fault(e.into()),
            }
            records.push(meta.id.clone());
        }
        // Every record sent is opened, a CVC's card too: whether it is a
        // canary is in its sealed body.
        if !opened.contains_key(&meta.id) {
            match state.vault.open(&meta) {
                Ok(record) => {
                    opened.insert(meta.id.clone(), (meta.clone(), record));
                }
                Err(e) => return fault(e.into()),
            }
        }
        if p.field == "cvc" {
            cvc_cards.push((p.clone(), meta.id.clone()));
            continue;
        }
        let value = opened
            .get(&meta.id)
            .and_then(|(_, record)| field_value(&record.data, &p.field));
        let Some(value) = value else {
            return Err(Refused {
                error: ApiError::field(&p.field, "the record has no value for this field"),
                target: Some(meta.id.clone()),
                reason: format!("no value for field {}", p.field),
            });
        };
        values.insert(p.clone(), value);
    }
    Ok(Ok(Resolution {
        values,
        uses,
        records,
        cvc_cards,
        opened,
    }))
}

/// Gives back CVCs taken for a relay that was refused before sending, with
/// the expiry each had, so a refusal neither uses them up nor lengthens
/// their life.
fn restore_cvcs(state: &AppState, taken: &[(String, TakenCvc)]) {
    for (card_id, cvc) in taken {
        if state.cvcs.put_back(card_id, cvc).is_err() {
            tracing::warn!(card = %card_id, "a CVC taken for a refused relay could not be given back");
        }
    }
}

/// Sends the request upstream: the route's headers, and of the caller's
/// only content-type, accept and idempotency-key.
async fn send(
    state: &AppState,
    route: &Route,
    call: &Invocation,
    route_headers: Vec<(String, Zeroizing<String>)>,
    body: Zeroizing<Vec<u8>>,
) -> Result<Answer, ApiError> {
    let mut headers = HeaderMap::new();
    for name in FORWARDED_REQUEST_HEADERS {
        for value in call.headers.get_all(name) {
            headers.append(name, value.clone());
        }
    }
    for (name, value) in route_headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| ApiError::Integrity)?;
        let mut value = HeaderValue::from_str(&value).map_err(|_| ApiError::Integrity)?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    let path_and_query = match &call.query {
        Some(query) => format!("{}?{query}", call.path),
        None => call.path.clone(),
    };
    let method = axum::http::Method::from_bytes(call.method.as_bytes())
        .map_err(|_| ApiError::MethodNotAllowed)?;
    let request = upstream::UpstreamRequest {
        base_url: route.base_url.clone(),
        ca_pem: route.ca_pem.clone(),
        timeout: std::time::Duration::from_millis(route.timeout_ms),
        method,
        path_and_query,
        headers,
        body,
    };
    let response =
        crate::metrics::relay_call(&route.name, state.relay_upstream.send(request).await)?;
    let mut passed = Vec::new();
    for name in &route.response_headers {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            for value in response.headers.get_all(&name) {
                passed.push((name.clone(), value.clone()));
            }
        }
    }
    Ok(Answer {
        status: response.status,
        content_type: response.content_type,
        headers: passed,
        body: response.body,
    })
}
