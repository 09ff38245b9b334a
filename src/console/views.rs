//! The console's pages: compile-time templates (askama, under
//! `templates/console/`), escaped by default, with no inline script or
//! style.

use std::collections::BTreeMap;

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use serde_json::Value;

use super::session::Staff;
use crate::access::Role;
use crate::api::ApiError;

/// What every page's frame shows: the title, who is signed in (and so
/// which sections the menu offers), the CSRF token for its forms, and a
/// notice or an error for the whole page.
pub struct Chrome {
    pub title: String,
    pub user: Option<User>,
    pub csrf: String,
    pub notice: Option<String>,
    pub error: Option<String>,
}

/// The signed-in person, as the menu needs them.
pub struct User {
    pub id: String,
    pub name: String,
    pub officer: bool,
    pub approver: bool,
    pub auditor: bool,
    pub admin: bool,
}

impl Chrome {
    pub fn new(title: impl Into<String>, staff: Option<&Staff>) -> Self {
        Self {
            title: title.into(),
            user: staff.map(|s| User {
                id: s.principal.id.clone(),
                name: s.principal.name.clone(),
                officer: s.has(Role::ComplianceOfficer),
                approver: s.has(Role::ComplianceApprover),
                auditor: s.has(Role::Auditor),
                admin: s.has(Role::Admin),
            }),
            csrf: staff.map(|s| s.csrf.clone()).unwrap_or_default(),
            notice: None,
            error: None,
        }
    }

    pub fn notice(mut self, notice: impl Into<String>) -> Self {
        self.notice = Some(notice.into());
        self
    }

    pub fn error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }
}

/// Errors shown next to the fields they are about.
#[derive(Default)]
pub struct FieldErrors(BTreeMap<String, String>);

impl FieldErrors {
    pub fn set(&mut self, field: &str, message: impl Into<String>) {
        self.0.insert(field.to_owned(), message.into());
    }

    pub fn get(&self, field: &str) -> Option<&str> {
        self.0.get(field).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `field` has an error (for `aria-invalid`).
    pub fn has(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }
}

/// Renders `page` with `status`.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console page could not be rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "The page could not be shown.",
            )
                .into_response()
        }
    }
}

/// A page with a title and one message.
#[derive(Template)]
#[template(path = "console/message.html")]
pub struct MessagePage {
    pub c: Chrome,
    pub message: String,
    pub link: Option<(String, String)>,
}

/// A refusal page (no session needed).
pub fn refusal(status: StatusCode, message: &str) -> Response {
    render(
        status,
        &MessagePage {
            c: Chrome::new("Refused", None),
            message: message.to_owned(),
            link: Some(("/console".into(), "Back to the console".into())),
        },
    )
}

/// The page of a sealed vault.
pub fn sealed() -> Response {
    render(
        StatusCode::SERVICE_UNAVAILABLE,
        &MessagePage {
            c: Chrome::new("The vault is sealed", None),
            message: "The vault is sealed: nobody can sign in until an operator unseals it.".into(),
            link: None,
        },
    )
}

/// The page for a session that ended (expired, signed out elsewhere, or
/// its principal disabled).
pub fn signed_out() -> Response {
    render(
        StatusCode::UNAUTHORIZED,
        &MessagePage {
            c: Chrome::new("Signed out", None),
            message: "Your session has ended. Sign in again to go on.".into(),
            link: Some(("/console/sign-in".into(), "Sign in".into())),
        },
    )
}

/// The page of an API error outside any form.
pub fn api_error(e: &ApiError) -> Response {
    let problem = e.problem();
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    refusal(status, &problem.detail)
}

/// The page of an API refusal (a [`super::api::Reply`]) outside any form.
pub fn reply_error(staff: &Staff, reply: &super::api::Reply) -> Response {
    if reply.code() == "sealed" {
        return sealed();
    }
    if reply.code() == "unauthenticated" {
        return signed_out();
    }
    render(
        reply.status,
        &MessagePage {
            c: Chrome::new("Refused", Some(staff)),
            message: reply.detail(),
            link: Some(("/console".into(), "Back to the console".into())),
        },
    )
}

#[derive(Template)]
#[template(path = "console/sign_in.html")]
pub struct SignInPage {
    pub c: Chrome,
    pub username: String,
}

/// One search hit, with the masked summary the officer may see.
pub struct Match {
    pub id: String,
    pub record_type: String,
    pub subject_ref: String,
    pub summary: String,
}

#[derive(Template)]
#[template(path = "console/search.html")]
pub struct SearchPage {
    pub c: Chrome,
    pub field: String,
    pub value: String,
    pub country: String,
    pub reason: String,
    pub ticket: String,
    pub errors: FieldErrors,
    pub matches: Option<Vec<Match>>,
    /// Matches beyond those summarised.
    pub more: usize,
}

/// A record's field for the record page.
pub struct FieldRow {
    pub name: String,
    pub value: String,
}

/// A field a reveal may name.
pub struct Revealable {
    pub name: String,
    pub needs_approval: bool,
}

#[derive(Template)]
#[template(path = "console/record.html")]
pub struct RecordPage {
    pub c: Chrome,
    pub id: String,
    pub record_type: String,
    pub version: String,
    pub created_at: String,
    pub updated_at: String,
    pub subject_ref: String,
    pub fields: Vec<FieldRow>,
    pub revealable: Vec<Revealable>,
    pub can_reveal: bool,
    pub chosen: Vec<String>,
    pub reason: String,
    pub ticket: String,
    pub errors: FieldErrors,
    /// Which form the errors are about: "reveal" or "request".
    pub errors_for: String,
}

impl RecordPage {
    pub fn chose(&self, field: &str) -> bool {
        self.chosen.iter().any(|f| f == field)
    }

    pub fn approval_fields(&self) -> Vec<&Revealable> {
        self.revealable
            .iter()
            .filter(|r| r.needs_approval)
            .collect()
    }

    /// The error of `field` in form `form`.
    pub fn error_of(&self, form: &str, field: &str) -> Option<&str> {
        (self.errors_for == form)
            .then(|| self.errors.get(field))
            .flatten()
    }
}

#[derive(Template)]
#[template(path = "console/revealed.html")]
pub struct RevealedPage {
    pub c: Chrome,
    pub id: String,
    pub fields: Vec<FieldRow>,
}

/// One row of the approvers' queue.
pub struct QueueRow {
    pub id: String,
    pub record_id: String,
    pub fields: String,
    pub requester: String,
    pub reason: String,
    pub ticket: String,
    pub age: String,
    /// The signed-in approver's own request: not approvable.
    pub own: bool,
}

#[derive(Template)]
#[template(path = "console/approvals.html")]
pub struct ApprovalsPage {
    pub c: Chrome,
    pub rows: Vec<QueueRow>,
}

/// One audit entry row.
pub struct AuditRow {
    pub seq: String,
    pub time: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub reason: String,
    pub ticket: String,
    pub client: String,
    pub request_id: String,
}

#[derive(Template)]
#[template(path = "console/audit.html")]
pub struct AuditPage {
    pub c: Chrome,
    pub actor: String,
    pub record: String,
    pub action: String,
    pub since: String,
    pub until: String,
    pub errors: FieldErrors,
    pub rows: Vec<AuditRow>,
    /// The query string of the next page, if there is one.
    pub next: Option<String>,
    /// The query string of these filters (for the export link).
    pub filters: String,
}

#[derive(Template)]
#[template(path = "console/verify.html")]
pub struct VerifyPage {
    pub c: Chrome,
    pub ok: bool,
    pub entries: String,
    pub head: String,
    pub first_bad: String,
    pub checkpoint: String,
}

pub struct PrincipalRow {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub roles: String,
    pub created_at: String,
    pub disabled: bool,
    pub own: bool,
}

#[derive(Template)]
#[template(path = "console/principals.html")]
pub struct PrincipalsPage {
    pub c: Chrome,
    pub rows: Vec<PrincipalRow>,
    pub roles: Vec<&'static str>,
    pub name: String,
    pub kind: String,
    pub chosen: Vec<String>,
    pub errors: FieldErrors,
    /// A new service's API key, shown once.
    pub new_key: Option<(String, String)>,
}

impl PrincipalsPage {
    pub fn chose(&self, role: &str) -> bool {
        self.chosen.iter().any(|r| r == role)
    }
}

pub struct KeyRow {
    pub purpose: String,
    pub version: String,
    pub created_at: String,
    pub encryptions: String,
    pub active: bool,
}

#[derive(Template)]
#[template(path = "console/keys.html")]
pub struct KeysPage {
    pub c: Chrome,
    pub rows: Vec<KeyRow>,
    pub purposes: Vec<String>,
}

pub struct RouteRow {
    pub name: String,
    pub base_url: String,
    pub methods: String,
    pub fields: String,
    pub status: String,
    pub created_by: String,
    pub approved_by: String,
    /// Pending, and created or changed by someone else: this admin may
    /// approve it.
    pub approvable: bool,
}

#[derive(Template)]
#[template(path = "console/routes.html")]
pub struct RoutesPage {
    pub c: Chrome,
    pub rows: Vec<RouteRow>,
    pub name: String,
    pub base_url: String,
    pub methods: Vec<String>,
    pub fields: String,
    pub paths: String,
    pub errors: FieldErrors,
}

impl RoutesPage {
    pub fn chose(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m == method)
    }
}

/// A JSON value as one line of text: strings bare, objects as
/// `key: value` pairs.
pub fn text_of(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Object(map) => map
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| format!("{k}: {}", text_of(v)))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Array(items) => items.iter().map(text_of).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// Member `key` of a JSON object (`Null` when absent or not an object).
pub fn at<'a>(value: &'a Value, key: &str) -> &'a Value {
    value.get(key).unwrap_or(&Value::Null)
}
