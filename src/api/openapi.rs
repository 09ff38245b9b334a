//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{FieldError, Problem};
use super::{audit, auth, compliance, keys, principals, records, sys, tokens};
use crate::access::{Principal, PrincipalKind, RequestStatus, Role};
use crate::audit::{AuditEntry, Checkpoint, Outcome, Verification};
use crate::keyring::{KekMetadata, UnsealProgress};
use crate::records::{Address, BankAccountInput, CardInput, KycInput, LegalName, NationalId};
use crate::tokens::TokenFormat;

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

#[derive(OpenApi)]
#[openapi(
    info(title = "Strongroom", description = "Vault for KYC records and payment credentials. Contract: docs/api.md."),
    paths(
        sys::health, sys::unseal, sys::seal, serve_document,
        principals::create, principals::list, principals::disable,
        auth::login, auth::logout,
        audit::entries, audit::verify,
        keys::list, keys::rotate,
        records::create, records::read, records::update, records::erase,
        compliance::search, compliance::reveal, compliance::request_access, compliance::approve, compliance::deny,
        tokens::create, tokens::detokenize, tokens::revoke,
    ),
    components(schemas(
        Problem, FieldError, UnsealProgress, sys::Health, sys::UnsealRequest, sys::SealState,
        principals::CreatePrincipal, principals::CreatedPrincipal, principals::PrincipalList,
        Principal, PrincipalKind, Role, auth::Login, auth::Session,
        audit::AuditPage, AuditEntry, Checkpoint, Outcome, Verification,
        keys::KeyList, KekMetadata,
        CardInput, BankAccountInput, KycInput, LegalName, Address, NationalId,
        compliance::SearchRequest, compliance::SearchMatch, compliance::RevealRequest,
        compliance::CreateAccessRequest, compliance::AccessRequestState, RequestStatus,
        tokens::TokenizeRequest, tokens::Tokenized, tokens::DetokenizeRequest, TokenFormat,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "sys", description = "Seal state and health"),
        (name = "principals", description = "Services and staff (admin)"),
        (name = "auth", description = "Staff sessions"),
        (name = "audit", description = "The tamper-evident audit log (auditor, admin)"),
        (name = "keys", description = "KEK metadata and rotation (admin)"),
        (name = "records", description = "Cards, bank accounts, KYC: sealed, masked"),
        (name = "compliance", description = "Search, reveal, four-eyes access requests"),
        (name = "tokens", description = "Tokenize, detokenize, revoke"),
    ),
)]
struct ApiDoc;

/// The document as a value.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "sys",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API")))]
pub async fn serve_document() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi_document())
}
