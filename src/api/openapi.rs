//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{FieldError, Problem};
use super::{audit, auth, keys, principals, sys};
use crate::access::{Principal, PrincipalKind, Role};
use crate::audit::{AuditEntry, Checkpoint, Outcome, Verification};
use crate::keyring::{KekMetadata, UnsealProgress};

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
    ),
    components(schemas(
        Problem, FieldError, UnsealProgress, sys::Health, sys::UnsealRequest, sys::SealState,
        principals::CreatePrincipal, principals::CreatedPrincipal, principals::PrincipalList,
        Principal, PrincipalKind, Role, auth::Login, auth::Session,
        audit::AuditPage, AuditEntry, Checkpoint, Outcome, Verification,
        keys::KeyList, KekMetadata,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "sys", description = "Seal state and health"),
        (name = "principals", description = "Services and staff (admin)"),
        (name = "auth", description = "Staff sessions"),
        (name = "audit", description = "The tamper-evident audit log (auditor, admin)"),
        (name = "keys", description = "KEK metadata and rotation (admin)"),
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
