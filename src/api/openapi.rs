//! The OpenAPI 3.1 document, generated from the handlers' annotations.
//!
//! Each handler's `#[utoipa::path]` lists what the handler itself answers.
//! What the layers around every handler answer is added here, in one
//! place, by [`Layers`]: the sealed gate (503 `sealed`), the body limit
//! (413), the JSON body extractor (400, 422), the bearer extractor (401),
//! the audit (503 `audit_unavailable`), a server fault (500), and the
//! `x-request-id` header on every response. Every error is
//! `application/problem+json`.

use axum::Json;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Ref, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, RefOr};
use utoipa::{Modify, OpenApi};

use super::AVAILABLE_WHILE_SEALED;
use super::error::{FieldError, Problem};
use super::{
    audit, auth, backup, canaries, collect, compliance, keys, metrics, principals, records, relay,
    rewrap, subjects, sys, tokens,
};
use crate::access::{Principal, PrincipalKind, RequestStatus, Role};
use crate::audit::{AuditEntry, Checkpoint, Outcome, Verification};
use crate::keyring::{KekMetadata, UnsealProgress};
use crate::records::{
    Address, BankAccountInput, Brand, CardInput, KycInput, LegalName, NationalId, NationalIdType,
    RecordType,
};
use crate::relay::routes::{RelayMethod, Route, RouteInput, RouteStatus};
use crate::tokens::TokenFormat;

/// The media type of every error.
pub const PROBLEM_JSON: &str = "application/problem+json";

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// What the layers around the handlers answer (see the module docs).
struct Layers;

fn problem(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

/// The relay invocation's path in the document: every answer on it says
/// whose it is (`x-strongroom-relay`).
const RELAY_INVOKE_PATH: &str = "/v1/relay/{name}/{path}";

impl Layers {
    fn operation(path: &str, operation: &mut Operation) {
        let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
        let has_body = operation.request_body.is_some();
        let gated = !AVAILABLE_WHILE_SEALED.contains(&path);
        let responses = &mut operation.responses.responses;
        let mut add = |status: &str, description: &str| {
            responses
                .entry(status.to_owned())
                .or_insert_with(|| problem(description).into());
        };
        if has_body {
            add(
                "400",
                "`malformed_request`: not JSON, or not `application/json`",
            );
            add("413", "`payload_too_large`: over the body limit");
            add(
                "422",
                "`validation_failed`: the body does not fit the schema; `errors` names the fields, never their values",
            );
        }
        if secured {
            add(
                "401",
                "`unauthenticated`: no valid bearer credential, or a certificate-bound service's key on a connection without one of its client certificates",
            );
            // The bearer extractor counts a publishable key against its
            // per-key and per-address budgets on whatever route it is sent.
            add(
                "429",
                "`rate_limited`: a publishable key over its per-key budget, or its client address over its per-minute budget",
            );
        }
        if gated {
            add(
                "503",
                "`sealed`: the vault is sealed; or `audit_unavailable`: the audit entry could not be written, so nothing was done",
            );
        }
        add(
            "500",
            "`internal_error` or `integrity_error`; the body never says why",
        );
        for (status, response) in responses.iter_mut() {
            let RefOr::T(response) = response else {
                continue;
            };
            response.headers.insert(
                "x-request-id".to_owned(),
                HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(Type::String))
                    .description(Some(
                        "The request's own id if it sent a well-formed one, else a fresh one",
                    ))
                    .build(),
            );
            if path == RELAY_INVOKE_PATH {
                response.headers.insert(
                    "x-strongroom-relay".to_owned(),
                    HeaderBuilder::new()
                        .schema(ObjectBuilder::new().schema_type(Type::String))
                        .description(Some(
                            "`upstream`: the processor's own answer (masked); `refused`: the vault's refusal, nothing or nothing more was sent",
                        ))
                        .build(),
                );
            }
            if status == "429" {
                response.headers.insert(
                    "retry-after".to_owned(),
                    HeaderBuilder::new()
                        .schema(ObjectBuilder::new().schema_type(Type::Integer))
                        .description(Some("Seconds to wait"))
                        .build(),
                );
            }
        }
    }
}

/// The `Idempotency-Key` header of a creating POST, and its two answers.
fn idempotent(operation: &mut Operation) {
    use utoipa::openapi::Required;
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    operation.parameters.get_or_insert_with(Vec::new).push(
        ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "The same key from the same principal with the same request within 24 hours answers the first response again (`idempotent-replayed: true`); docs/lifecycle.md",
            ))
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(super::idempotency::MAX_KEY_LEN))
                    .pattern(Some(super::idempotency::KEY_PATTERN)),
            ))
            .build(),
    );
    let responses = &mut operation.responses.responses;
    for (status, response) in responses.iter_mut() {
        if let (true, RefOr::T(response)) = (status.starts_with('2'), response) {
            response.headers.insert(
                super::idempotency::REPLAYED.to_owned(),
                HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(Type::String))
                    .description(Some(
                        "`true` when this is the first answer to this `Idempotency-Key`, given again",
                    ))
                    .build(),
            );
        }
    }
    responses.entry("409".to_owned()).or_insert_with(|| {
        problem("`conflict`: a request with this `Idempotency-Key` is still running").into()
    });
    responses.entry("422".to_owned()).or_insert_with(|| {
        problem("`idempotency_mismatch`: the `Idempotency-Key` was used with another request; or `validation_failed`").into()
    });
}

impl Modify for Layers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            if super::idempotency::PATHS.contains(&path.as_str())
                && let Some(post) = item.post.as_mut()
            {
                idempotent(post);
            }
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
                &mut item.trace,
            ]
            .into_iter()
            .flatten()
            {
                Self::operation(path, operation);
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Strongroom", description = "Vault for KYC records and payment credentials. Contract: docs/api.md."),
    paths(
        sys::health, sys::ready, metrics::metrics, sys::unseal, sys::seal, backup::backup, serve_document,
        principals::create, principals::list, principals::disable,
        auth::login, auth::logout,
        audit::entries, audit::verify,
        keys::list, keys::rotate, rewrap::start, rewrap::progress, rewrap::destroy,
        records::create_card, records::create_bank_account, records::create_kyc,
        records::read, records::update, records::erase, collect::attach_cvc, canaries::create,
        compliance::search, compliance::reveal, compliance::request_access, compliance::list_access_requests, compliance::approve, compliance::deny,
        tokens::create, tokens::detokenize, tokens::revoke,
        subjects::read, subjects::erase, subjects::close, subjects::hold_record, subjects::hold_subject, subjects::release_record_hold, subjects::release_subject_hold,
        relay::create_route, relay::list_routes, relay::change_route, relay::delete_route, relay::approve_route, relay::invoke_post, relay::invoke_put, relay::invoke_patch,
    ),
    components(schemas(
        Problem, FieldError, UnsealProgress, sys::Health, sys::Readiness, sys::UnsealBody, sys::UnsealPassphrase, sys::UnsealShare, sys::SealState, backup::BackupFile,
        principals::NewPrincipal, principals::NewService, principals::CertFingerprint, principals::NewStaff, principals::ServiceKind, principals::StaffKind, principals::ServiceRole, principals::StaffRole, principals::CreatedPrincipal, principals::PrincipalList,
        Principal, PrincipalKind, Role, auth::Login, auth::Session,
        audit::AuditPage, AuditEntry, Checkpoint, Outcome, Verification,
        keys::KeyList, KekMetadata, rewrap::RewrapProgress,
        CardInput, BankAccountInput, KycInput, LegalName, Address, NationalId, NationalIdType,
        Brand, RecordType,
        records::NewCard, records::NewBankAccount, records::NewKyc, records::MergePatch,
        canaries::CreateCanaries, canaries::CreatedCanary, canaries::CreatedCanaries,
        records::CreatedCard, records::CollectedCard, collect::AttachCvc, principals::NewPublishable, principals::PublishableKind, principals::PublishableRole, records::CreatedBankAccount, records::CreatedKyc, records::RecordView,
        compliance::SearchRequest, compliance::SearchField, compliance::SearchMatch, compliance::SearchResult, compliance::Revealed, compliance::RevealRequest,
        compliance::CreateAccessRequest, compliance::AccessRequestState, compliance::PendingAccessRequest, compliance::AccessRequestQueue, RequestStatus,
        tokens::TokenizeRequest, tokens::TokenKind, tokens::GenericTokenFormat, tokens::Tokenized, tokens::DetokenizeRequest, tokens::Detokenized, TokenFormat, keys::KeyPurpose,
        RouteInput, Route, RouteStatus, RelayMethod, relay::RouteState, relay::RouteList,
        subjects::Justification, subjects::SubjectView, subjects::SubjectRecord, subjects::SubjectToken, subjects::TokenStateView, subjects::SubjectErased, subjects::SubjectClosed, subjects::HoldState, subjects::HoldReleased,
    )),
    modifiers(&BearerAuth, &Layers),
    tags(
        (name = "sys", description = "Seal state, health, readiness and metrics"),
        (name = "principals", description = "Services and staff (admin)"),
        (name = "auth", description = "Staff sessions"),
        (name = "audit", description = "The tamper-evident audit log (auditor, admin)"),
        (name = "keys", description = "KEK metadata and rotation (admin)"),
        (name = "records", description = "Cards, bank accounts, KYC: sealed, masked"),
        (name = "compliance", description = "Search, reveal, four-eyes access requests"),
        (name = "tokens", description = "Tokenize, detokenize, revoke"),
        (name = "relay", description = "Relay routes under dual control (admin) and their invocation (payment service)"),
        (name = "subjects", description = "Data subjects: access, erasure, end of relationship; legal holds"),
    ),
)]
struct ApiDoc;

/// The document as a value.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "sys", operation_id = "openapi_document",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)))]
pub async fn serve_document() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi_document())
}
