//! The console's handlers: each reads a form or a query, makes the API
//! calls a client would make, and renders the answer.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::api::Reply;
use super::session::{CSRF_FIELD, Cx, Form, LOGIN_COOKIE, SESSION_COOKIE, Staff, set_cookie};
use super::views::{self, *};
use super::{Answer, ConsoleState, HOME, Refusal, see_other};
use crate::access::Role;
use crate::crypto::constant_time_eq;
use crate::records::RecordType;

/// Search hits whose masked summary the results page reads (each one an
/// audited record read); the rest are listed by id.
const SUMMARISED_MATCHES: usize = 20;
/// Audit entries per console page.
const AUDIT_PAGE: usize = 50;
/// The most entries one export holds (1000 per API page).
const EXPORT_PAGES: usize = 100;

/// The first page for each kind of person.
pub async fn home(cx: Cx) -> Answer {
    let staff = cx.staff()?;
    let to = if staff.has(Role::ComplianceOfficer) {
        "/console/search"
    } else if staff.has(Role::ComplianceApprover) {
        "/console/approvals"
    } else if staff.has(Role::Auditor) {
        "/console/audit"
    } else if staff.has(Role::Admin) {
        "/console/admin/principals"
    } else {
        return Ok(views::refusal(
            StatusCode::FORBIDDEN,
            "Your account has no role the console serves.",
        ));
    };
    Ok(see_other(to))
}

pub async fn not_found(cx: Cx) -> Response {
    let staff = match &cx.session {
        super::session::Session::Staff(staff) => Some(staff),
        _ => None,
    };
    render(
        StatusCode::NOT_FOUND,
        &MessagePage {
            c: Chrome::new("Not found", staff),
            message: "There is no such page.".into(),
            link: Some((HOME.into(), "Back to the console".into())),
        },
    )
}

/// Sets `key` of the JSON object `object`.
fn insert(object: &mut Value, key: &str, value: Value) {
    if let Some(map) = object.as_object_mut() {
        map.insert(key.to_owned(), value);
    }
}

/// `?a=b&c=d` as a map (the first value of each name).
fn query_map(query: Option<String>) -> BTreeMap<String, String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or_default()).unwrap_or_default();
    let mut map = BTreeMap::new();
    for (k, v) in pairs {
        map.entry(k).or_insert(v);
    }
    map
}

/// `text` when it is a plain id or name (`a-z`, `0-9`, `_`, `-`, at most
/// 64): what a notice may repeat from the address bar, so a crafted link
/// cannot put sentences of its own in the console's mouth.
fn plain(text: &str) -> Option<&str> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    ok.then_some(text)
}

/// Percent-encodes one path segment or query value.
fn encode(text: &str) -> String {
    serde_urlencoded::to_string([("", text)])
        .map(|s| s.trim_start_matches('=').to_owned())
        .unwrap_or_default()
}

/// Turns an API refusal into errors next to the form's fields: a
/// `reason_required` names whichever of reason and ticket is blank; field
/// errors name their field. Anything else is for the whole page.
fn form_errors(reply: &Reply, form: &Form, fields: &[&str]) -> (FieldErrors, Option<String>) {
    let mut errors = FieldErrors::default();
    match reply.code() {
        "reason_required" => {
            for (field, message) in [
                ("reason", "Give the reason for this lookup."),
                ("ticket", "Give the case ticket this lookup is for."),
            ] {
                if form.text(field).is_empty() {
                    errors.set(field, message);
                }
            }
            if errors.is_empty() {
                errors.set("reason", "A reason and a case ticket are both required.");
            }
            (errors, None)
        }
        "validation_failed" => {
            let mut other = Vec::new();
            for (field, message) in reply.field_errors() {
                let name = field.split(['.', '[']).next().unwrap_or_default();
                if fields.contains(&name) {
                    errors.set(name, message);
                } else {
                    other.push(format!("{field}: {message}"));
                }
            }
            let page = if !other.is_empty() {
                Some(other.join("; "))
            } else if errors.is_empty() {
                Some(page_error(reply))
            } else {
                None
            };
            (errors, page)
        }
        _ => (errors, Some(page_error(reply))),
    }
}

/// A refusal as one sentence, with the wait when there is one.
fn page_error(reply: &Reply) -> String {
    match (reply.code(), reply.retry_after) {
        ("rate_limited", Some(secs)) => {
            format!("{} Try again in {}.", reply.detail(), wait_text(secs))
        }
        _ => reply.detail(),
    }
}

fn wait_text(secs: u64) -> String {
    match secs {
        0..=1 => "a second".into(),
        2..=119 => format!("{secs} seconds"),
        _ => format!("{} minutes", secs.div_ceil(60)),
    }
}

/// Whether the reply means the page cannot go on (sealed, signed out).
fn fatal(staff: &Staff, reply: &Reply) -> Option<Response> {
    matches!(reply.code(), "sealed" | "unauthenticated").then(|| views::reply_error(staff, reply))
}

// ---- sign in and out ----

pub async fn sign_in_form(State(state): State<ConsoleState>, cx: Cx) -> Answer {
    if cx.staff().is_ok() {
        return Ok(see_other(HOME));
    }
    Ok(sign_in_page(
        &state,
        &cx,
        StatusCode::OK,
        String::new(),
        None,
    ))
}

/// The sign-in page, with a CSRF cookie for its form (the one it has, or a
/// new one).
fn sign_in_page(
    state: &ConsoleState,
    cx: &Cx,
    status: StatusCode,
    username: String,
    error: Option<String>,
) -> Response {
    let token = match cx.login_csrf.clone() {
        Some(token) if token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()) => token,
        _ => match crate::crypto::random_array::<16>() {
            Ok(bytes) => hex::encode(bytes),
            Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        },
    };
    let mut c = Chrome::new("Sign in", None);
    c.csrf = token.clone();
    c.error = error;
    let mut response = render(status, &SignInPage { c, username });
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, LOGIN_COOKIE, Some(&token)),
    );
    response
}

pub async fn sign_in(State(state): State<ConsoleState>, cx: Cx, body: Bytes) -> Answer {
    let form = Form::parse(&body)?;
    let sent = form.get(CSRF_FIELD).unwrap_or_default();
    let expected = cx.login_csrf.as_deref().unwrap_or_default();
    if expected.is_empty() || !constant_time_eq(sent.as_bytes(), expected.as_bytes()) {
        tracing::warn!(request_id = %cx.request_id, "console sign-in without its CSRF token refused");
        return Ok(views::refusal(
            StatusCode::FORBIDDEN,
            "This form's security token is missing or out of date, so it was refused. Reload the page and try again.",
        ));
    }
    let username = form.text("username");
    let password = form.get("password").unwrap_or_default();
    let reply = state
        .api
        .call_as(
            &cx,
            None,
            Method::POST,
            "/v1/auth/login",
            Some(&json!({"username": username, "password": password})),
        )
        .await;
    if reply.ok() {
        let Some(token) = at(&reply.body, "token").as_str() else {
            return Ok(StatusCode::INTERNAL_SERVER_ERROR.into_response());
        };
        let mut response = see_other(HOME);
        let h = response.headers_mut();
        h.append(
            header::SET_COOKIE,
            set_cookie(&state, SESSION_COOKIE, Some(token)),
        );
        h.append(header::SET_COOKIE, set_cookie(&state, LOGIN_COOKIE, None));
        return Ok(response);
    }
    let error = match reply.code() {
        "sealed" => return Ok(views::sealed()),
        "rate_limited" => format!(
            "Too many failed sign-ins for this account: it is locked. Try again in {}.",
            wait_text(reply.retry_after.unwrap_or(60))
        ),
        "unauthenticated" | "validation_failed" | "malformed_request" => {
            "Wrong username or password.".into()
        }
        _ => reply.detail(),
    };
    Ok(sign_in_page(
        &state,
        &cx,
        reply.status,
        username,
        Some(error),
    ))
}

pub async fn sign_out(State(state): State<ConsoleState>, cx: Cx, body: Bytes) -> Answer {
    let form = Form::parse(&body)?;
    cx.poster(&form)?;
    let reply = state
        .api
        .call(&cx, Method::POST, "/v1/auth/logout", None)
        .await;
    if !reply.ok() && reply.code() != "unauthenticated" {
        tracing::warn!(request_id = %cx.request_id, status = %reply.status, "console sign-out: the API did not end the session");
    }
    let mut response = see_other("/console/sign-in");
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(&state, SESSION_COOKIE, None));
    Ok(response)
}

// ---- officers: search, record, reveal, approval requests ----

pub async fn search_form(cx: Cx) -> Answer {
    let staff = cx.staff()?;
    Ok(render(
        StatusCode::OK,
        &SearchPage {
            c: Chrome::new("Search", Some(staff)),
            field: "national_id".into(),
            value: String::new(),
            country: String::new(),
            reason: String::new(),
            ticket: String::new(),
            errors: FieldErrors::default(),
            matches: None,
            more: 0,
        },
    ))
}

pub async fn search(State(state): State<ConsoleState>, cx: Cx, body: Bytes) -> Answer {
    let form = Form::parse(&body)?;
    let staff = cx.poster(&form)?;
    let mut page = SearchPage {
        c: Chrome::new("Search", Some(staff)),
        field: form.text("field"),
        value: form.text("value"),
        country: form.text("country").to_ascii_uppercase(),
        reason: form.text("reason"),
        ticket: form.text("ticket"),
        errors: FieldErrors::default(),
        matches: None,
        more: 0,
    };
    let mut request = json!({
        "field": page.field,
        "value": page.value,
        "reason": page.reason,
        "ticket": page.ticket,
    });
    if !page.country.is_empty() {
        insert(&mut request, "country", json!(page.country));
    }
    let reply = state
        .api
        .call(&cx, Method::POST, "/v1/search", Some(&request))
        .await;
    if let Some(page) = fatal(staff, &reply) {
        return Ok(page);
    }
    if !reply.ok() {
        let (errors, error) = form_errors(
            &reply,
            &form,
            &["field", "value", "country", "reason", "ticket"],
        );
        page.errors = errors;
        page.c.error = error;
        return Ok(render(reply.status, &page));
    }
    let hits = at(&reply.body, "matches")
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut matches = Vec::new();
    for hit in hits.iter().take(SUMMARISED_MATCHES) {
        let id = at(hit, "id").as_str().unwrap_or_default().to_owned();
        let view = state
            .api
            .call(
                &cx,
                Method::GET,
                &format!("/v1/records/{}", encode(&id)),
                None,
            )
            .await;
        let summary = if view.ok() {
            summary_of(&view.body)
        } else {
            "(not readable)".into()
        };
        matches.push(Match {
            record_type: type_name(&id),
            subject_ref: at(hit, "subject_ref")
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            summary,
            id,
        });
    }
    page.more = hits.len().saturating_sub(matches.len());
    page.matches = Some(matches);
    Ok(render(StatusCode::OK, &page))
}

/// Metadata names of a record view, shown apart from its fields.
const META: [&str; 6] = [
    "id",
    "type",
    "version",
    "created_at",
    "updated_at",
    "subject_ref",
];

/// A record view's masked fields as rows.
fn field_rows(view: &Value) -> Vec<FieldRow> {
    view.as_object()
        .map(|map| {
            map.iter()
                .filter(|(k, v)| !META.contains(&k.as_str()) && !v.is_null())
                .map(|(k, v)| FieldRow {
                    name: k.clone(),
                    value: text_of(v),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A one-line masked summary of a record view.
fn summary_of(view: &Value) -> String {
    let text = field_rows(view)
        .into_iter()
        .map(|row| format!("{}: {}", row.name, row.value))
        .collect::<Vec<_>>()
        .join("; ");
    if text.chars().count() > 160 {
        format!("{}…", text.chars().take(160).collect::<String>())
    } else {
        text
    }
}

fn type_name(id: &str) -> String {
    match RecordType::of_id(id) {
        Some(RecordType::Card) => "card",
        Some(RecordType::BankAccount) => "bank account",
        Some(RecordType::Kyc) => "KYC",
        None => "unknown",
    }
    .into()
}

/// The record page for `view`, with empty forms.
fn record_page(staff: &Staff, id: &str, view: &Value) -> RecordPage {
    let revealable = RecordType::of_id(id)
        .map(|t| {
            t.revealable_fields()
                .iter()
                .map(|(name, needs_approval)| Revealable {
                    name: (*name).to_owned(),
                    needs_approval: *needs_approval,
                })
                .collect()
        })
        .unwrap_or_default();
    let text = |k: &str| text_of(&view[k]);
    RecordPage {
        c: Chrome::new(format!("Record {id}"), Some(staff)),
        id: id.to_owned(),
        record_type: type_name(id),
        version: text("version"),
        created_at: text("created_at"),
        updated_at: text("updated_at"),
        subject_ref: text("subject_ref"),
        fields: field_rows(view),
        revealable,
        can_reveal: staff.has(Role::ComplianceOfficer),
        chosen: Vec::new(),
        reason: String::new(),
        ticket: String::new(),
        errors: FieldErrors::default(),
        errors_for: String::new(),
    }
}

/// `GET path` through the API as the signed-in person: the answer's body,
/// or the page of its refusal.
async fn fetch(state: &ConsoleState, cx: &Cx, staff: &Staff, path: &str) -> Result<Value, Refusal> {
    let reply = state.api.call(cx, Method::GET, path, None).await;
    if reply.ok() {
        Ok(reply.body)
    } else {
        Err(views::reply_error(staff, &reply).into())
    }
}

/// Reads record `id` through the API: its masked view, or the page to show.
async fn read_record(
    state: &ConsoleState,
    cx: &Cx,
    staff: &Staff,
    id: &str,
) -> Result<Value, Refusal> {
    fetch(state, cx, staff, &format!("/v1/records/{}", encode(id))).await
}

pub async fn record(
    State(state): State<ConsoleState>,
    cx: Cx,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Answer {
    let staff = cx.staff()?;
    let view = read_record(&state, &cx, staff, &id).await?;
    let mut page = record_page(staff, &id, &view);
    if let Some(request) = query_map(query).get("requested").and_then(|r| plain(r)) {
        page.c = page.c.notice(format!(
            "Access request {request} sent. An approver must approve it before you can reveal those fields."
        ));
    }
    Ok(render(StatusCode::OK, &page))
}

/// The record page again, with the form `errors_for` as it was sent and
/// its errors.
async fn record_with_errors(
    state: &ConsoleState,
    cx: &Cx,
    staff: &Staff,
    id: &str,
    form: &Form,
    errors_for: &str,
    reply: &Reply,
) -> Answer {
    let view = read_record(state, cx, staff, id).await?;
    let mut page = record_page(staff, id, &view);
    let (mut errors, error) = form_errors(reply, form, &["fields", "reason", "ticket"]);
    if reply.code() == "approval_required" {
        errors.set(
            "fields",
            "A field you chose needs an approved access request first: ask for one with the form below.",
        );
    } else if let Some(error) = error {
        page.c = page.c.error(error);
    }
    page.errors = errors;
    page.errors_for = errors_for.to_owned();
    page.chosen = form.all("fields");
    page.reason = form.text("reason");
    page.ticket = form.text("ticket");
    Ok(render(reply.status, &page))
}

pub async fn reveal(
    State(state): State<ConsoleState>,
    cx: Cx,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let form = Form::parse(&body)?;
    let staff = cx.poster(&form)?;
    let request = json!({
        "fields": form.all("fields"),
        "reason": form.text("reason"),
        "ticket": form.text("ticket"),
    });
    let reply = state
        .api
        .call(
            &cx,
            Method::POST,
            &format!("/v1/records/{}/reveal", encode(&id)),
            Some(&request),
        )
        .await;
    if let Some(page) = fatal(staff, &reply) {
        return Ok(page);
    }
    if !reply.ok() {
        return record_with_errors(&state, &cx, staff, &id, &form, "reveal", &reply).await;
    }
    let fields = at(&reply.body, "fields")
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(k, v)| FieldRow {
                    name: k.clone(),
                    value: if v.is_null() {
                        "(none)".into()
                    } else {
                        text_of(v)
                    },
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(render(
        StatusCode::OK,
        &RevealedPage {
            c: Chrome::new("Revealed values", Some(staff)),
            id,
            fields,
        },
    ))
}

pub async fn request_access(
    State(state): State<ConsoleState>,
    cx: Cx,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let form = Form::parse(&body)?;
    let staff = cx.poster(&form)?;
    let request = json!({
        "record_id": id,
        "fields": form.all("fields"),
        "reason": form.text("reason"),
        "ticket": form.text("ticket"),
    });
    let reply = state
        .api
        .call(&cx, Method::POST, "/v1/access-requests", Some(&request))
        .await;
    if let Some(page) = fatal(staff, &reply) {
        return Ok(page);
    }
    if !reply.ok() {
        return record_with_errors(&state, &cx, staff, &id, &form, "request", &reply).await;
    }
    let request_id = at(&reply.body, "id").as_str().unwrap_or_default();
    Ok(see_other(&format!(
        "/console/records/{}?requested={}",
        encode(&id),
        encode(request_id)
    )))
}

// ---- approvers ----

/// How long ago `created_at` (RFC 3339) was, in words.
fn age_of(created_at: &str, now: time::OffsetDateTime) -> String {
    let Some(then) = crate::clock::parse_rfc3339(created_at) else {
        return String::new();
    };
    let secs = (now - then).whole_seconds().max(0);
    match secs {
        0..=59 => "under a minute".into(),
        60..=3599 => format!("{} min", secs / 60),
        3600..=86_399 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}

/// The approvers' queue, with `c` as the frame.
async fn approvals_page(state: &ConsoleState, cx: &Cx, staff: &Staff, c: Chrome) -> Answer {
    let reply = fetch(state, cx, staff, "/v1/access-requests").await?;
    let now = state.app.clock.now();
    let rows = at(&reply, "requests")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let s = |k: &str| text_of(&r[k]);
            QueueRow {
                own: s("requester") == staff.principal.id,
                id: s("id"),
                record_id: s("record_id"),
                fields: s("fields"),
                requester: s("requester"),
                reason: s("reason"),
                ticket: s("ticket"),
                age: age_of(&s("created_at"), now),
            }
        })
        .collect();
    let status = if c.error.is_some() {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::OK
    };
    Ok(render(status, &ApprovalsPage { c, rows }))
}

pub async fn approvals(
    State(state): State<ConsoleState>,
    cx: Cx,
    RawQuery(query): RawQuery,
) -> Answer {
    let staff = cx.staff()?;
    let mut c = Chrome::new("Approval requests", Some(staff));
    let query = query_map(query);
    if let (Some(done), Some(id)) = (query.get("done"), query.get("id").and_then(|i| plain(i))) {
        let word = if done == "approve" {
            "approved"
        } else {
            "denied"
        };
        c = c.notice(format!("Request {id} {word}."));
    }
    approvals_page(&state, &cx, staff, c).await
}

pub async fn decide(
    State(state): State<ConsoleState>,
    cx: Cx,
    Path((id, decision)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    if decision != "approve" && decision != "deny" {
        return Ok(not_found(cx).await);
    }
    let form = Form::parse(&body)?;
    let staff = cx.poster(&form)?;
    let reply = state
        .api
        .call(
            &cx,
            Method::POST,
            &format!("/v1/access-requests/{}/{decision}", encode(&id)),
            None,
        )
        .await;
    if let Some(page) = fatal(staff, &reply) {
        return Ok(page);
    }
    if reply.ok() {
        return Ok(see_other(&format!(
            "/console/approvals?done={decision}&id={}",
            encode(&id)
        )));
    }
    let error = if reply.code() == "forbidden" {
        "Refused: you cannot decide this request (your own requests need another approver).".into()
    } else {
        page_error(&reply)
    };
    let c = Chrome::new("Approval requests", Some(staff)).error(error);
    approvals_page(&state, &cx, staff, c).await
}

// ---- auditors ----

/// The audit filters the console passes on, in order.
const AUDIT_FILTERS: [&str; 5] = ["actor", "record", "action", "since", "until"];

/// The API query of the filters in `query` (only those given).
fn audit_query(query: &BTreeMap<String, String>) -> String {
    AUDIT_FILTERS
        .iter()
        .filter_map(|k| {
            let v = query.get(*k)?.trim();
            (!v.is_empty()).then(|| format!("{k}={}", encode(v)))
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn with(query: &str, more: &str) -> String {
    if query.is_empty() {
        more.to_owned()
    } else {
        format!("{query}&{more}")
    }
}

pub async fn audit(State(state): State<ConsoleState>, cx: Cx, RawQuery(query): RawQuery) -> Answer {
    let staff = cx.staff()?;
    let query = query_map(query);
    let filters = audit_query(&query);
    let mut api_query = with(&filters, &format!("limit={AUDIT_PAGE}"));
    if let Some(after) = query
        .get("after")
        .filter(|a| a.bytes().all(|b| b.is_ascii_digit()) && !a.is_empty())
    {
        api_query = with(&api_query, &format!("after={after}"));
    }
    let field = |k: &str| {
        query
            .get(k)
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let mut page = AuditPage {
        c: Chrome::new("Audit log", Some(staff)),
        actor: field("actor"),
        record: field("record"),
        action: field("action"),
        since: field("since"),
        until: field("until"),
        errors: FieldErrors::default(),
        rows: Vec::new(),
        next: None,
        filters: filters.clone(),
    };
    let reply = state
        .api
        .call(&cx, Method::GET, &format!("/v1/audit?{api_query}"), None)
        .await;
    if let Some(page) = fatal(staff, &reply) {
        return Ok(page);
    }
    if !reply.ok() {
        for (name, message) in reply.field_errors() {
            page.errors.set(&name, message);
        }
        if page.errors.is_empty() {
            page.c = page.c.error(page_error(&reply));
        }
        return Ok(render(reply.status, &page));
    }
    page.rows = at(&reply.body, "entries")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let s = |k: &str| text_of(&e[k]);
            AuditRow {
                seq: s("seq"),
                time: s("time"),
                actor: s("actor"),
                action: s("action"),
                target: s("target"),
                outcome: s("outcome"),
                reason: s("reason"),
                ticket: s("ticket"),
                client: s("client"),
                request_id: s("request_id"),
            }
        })
        .collect();
    page.next = at(&reply.body, "next_after")
        .as_u64()
        .map(|after| with(&filters, &format!("after={after}")));
    Ok(render(StatusCode::OK, &page))
}

pub async fn audit_verify(State(state): State<ConsoleState>, cx: Cx) -> Answer {
    let staff = cx.staff()?;
    let reply = fetch(&state, &cx, staff, "/v1/audit/verify").await?;
    let b = &reply;
    Ok(render(
        StatusCode::OK,
        &VerifyPage {
            c: Chrome::new("Audit chain", Some(staff)),
            ok: at(b, "ok").as_bool().unwrap_or(false),
            entries: text_of(at(b, "entries")),
            head: text_of(at(b, "head")),
            first_bad: text_of(at(b, "first_bad_seq")),
            checkpoint: text_of(at(b, "checkpoint")),
        },
    ))
}

/// The filtered entries as JSON lines, read page by page through the API
/// (each page an audited `audit.read`), at most [`EXPORT_PAGES`] pages.
pub async fn audit_export(
    State(state): State<ConsoleState>,
    cx: Cx,
    RawQuery(query): RawQuery,
) -> Answer {
    let staff = cx.staff()?;
    // One export at a time on this node: each holds its entries in memory.
    let Ok(_one_at_a_time) = state.exports.try_acquire() else {
        return Ok(render(
            StatusCode::TOO_MANY_REQUESTS,
            &MessagePage {
                c: Chrome::new("Export busy", Some(staff)),
                message:
                    "Another export is running on this server. Try again when it has finished."
                        .into(),
                link: Some(("/console/audit".into(), "Back to the audit log".into())),
            },
        ));
    };
    let filters = audit_query(&query_map(query));
    let mut out = Vec::new();
    let mut after = None;
    for _ in 0..EXPORT_PAGES {
        let mut api_query = with(&filters, "limit=1000");
        if let Some(after) = after {
            api_query = with(&api_query, &format!("after={after}"));
        }
        let reply = fetch(&state, &cx, staff, &format!("/v1/audit?{api_query}")).await?;
        for entry in at(&reply, "entries").as_array().into_iter().flatten() {
            out.extend_from_slice(entry.to_string().as_bytes());
            out.push(b'\n');
        }
        after = at(&reply, "next_after").as_u64();
        if after.is_none() {
            break;
        }
    }
    let mut response = (StatusCode::OK, out).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"strongroom-audit.jsonl\""),
    );
    Ok(response)
}

// ---- admins ----

/// Roles an admin may give from the console.
const GIVABLE_ROLES: [Role; 6] = [
    Role::ComplianceOfficer,
    Role::ComplianceApprover,
    Role::Auditor,
    Role::Admin,
    Role::PaymentService,
    Role::Metrics,
];

fn principals_page(staff: &Staff, list: &Value) -> PrincipalsPage {
    let rows = at(list, "principals")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let s = |k: &str| text_of(&p[k]);
            PrincipalRow {
                own: s("id") == staff.principal.id,
                id: s("id"),
                name: s("name"),
                kind: s("kind"),
                roles: s("roles"),
                created_at: s("created_at"),
                disabled: at(p, "disabled").as_bool().unwrap_or(false),
            }
        })
        .collect();
    PrincipalsPage {
        c: Chrome::new("Principals", Some(staff)),
        rows,
        roles: GIVABLE_ROLES.iter().map(|r| r.as_str()).collect(),
        name: String::new(),
        kind: "staff".into(),
        chosen: Vec::new(),
        errors: FieldErrors::default(),
        new_key: None,
    }
}

pub async fn principals(
    State(state): State<ConsoleState>,
    cx: Cx,
    RawQuery(query): RawQuery,
) -> Answer {
    let staff = cx.staff()?;
    let reply = fetch(&state, &cx, staff, "/v1/principals").await?;
    let mut page = principals_page(staff, &reply);
    let query = query_map(query);
    if let Some(done) = query.get("done") {
        page.c = page.c.notice(match done.as_str() {
            "created" => "Principal created.",
            "disabled" => "Principal disabled: its key and sessions no longer work.",
            _ => "Done.",
        });
    }
    Ok(render(StatusCode::OK, &page))
}

pub async fn create_principal(State(state): State<ConsoleState>, cx: Cx, body: Bytes) -> Answer {
    let form = Form::parse(&body)?;
    let staff = cx.poster(&form)?;
    let kind = form.text("kind");
    let mut request = json!({
        "name": form.text("name"),
        "kind": kind,
        "roles": form.all("roles"),
    });
    if kind == "staff" {
        insert(
            &mut request,
            "password",
            json!(form.get("password").unwrap_or_default()),
        );
    }
    let created = state
        .api
        .call(&cx, Method::POST, "/v1/principals", Some(&request))
        .await;
    if let Some(page) = fatal(staff, &created) {
        return Ok(page);
    }
    if created.ok() && at(&created.body, "api_key").is_null() {
        return Ok(see_other("/console/admin/principals?done=created"));
    }
    let list = fetch(&state, &cx, staff, "/v1/principals").await?;
    let mut page = principals_page(staff, &list);
    if created.ok() {
        // Shown once, on this answer to the post only (never cached).
        page.new_key = Some((
            text_of(at(&created.body, "id")),
            text_of(at(&created.body, "api_key")),
        ));
        page.c = page
            .c
            .notice("Service created. Copy its API key now: it is not shown again.");
        return Ok(render(StatusCode::CREATED, &page));
    }
    let (errors, error) = form_errors(&created, &form, &["name", "kind", "roles", "password"]);
    page.errors = errors;
    if let Some(error) = error {
        page.c = page.c.error(error);
    }
    page.name = form.text("name");
    page.kind = kind;
    page.chosen = form.all("roles");
    Ok(render(created.status, &page))
}

pub async fn disable_principal(
    State(state): State<ConsoleState>,
    cx: Cx,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let path = format!("/v1/principals/{}", encode(&id));
    act(
        &state,
        &cx,
        &body,
        Method::DELETE,
        &path,
        "/console/admin/principals?done=disabled",
    )
    .await
}

/// Posts a form whose whole meaning is one API call (`method path`, no
/// body) as the signed-in person: on success, to `done`; else the refusal.
async fn act(
    state: &ConsoleState,
    cx: &Cx,
    body: &[u8],
    method: Method,
    path: &str,
    done: &str,
) -> Answer {
    let form = Form::parse(body)?;
    let staff = cx.poster(&form)?;
    let reply = state.api.call(cx, method, path, None).await;
    if reply.ok() {
        Ok(see_other(done))
    } else {
        Ok(views::reply_error(staff, &reply))
    }
}

pub async fn keys(State(state): State<ConsoleState>, cx: Cx, RawQuery(query): RawQuery) -> Answer {
    let staff = cx.staff()?;
    let reply = state.api.call(&cx, Method::GET, "/v1/keys", None).await;
    if !reply.ok() {
        return Ok(views::reply_error(staff, &reply));
    }
    let rows: Vec<KeyRow> = at(&reply.body, "keys")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|k| {
            let s = |f: &str| text_of(&k[f]);
            KeyRow {
                purpose: s("purpose"),
                version: s("version"),
                created_at: s("created_at"),
                encryptions: s("encryptions"),
                active: at(k, "active").as_bool().unwrap_or(false),
            }
        })
        .collect();
    let mut purposes: Vec<String> = rows.iter().map(|r| r.purpose.clone()).collect();
    purposes.dedup();
    let mut c = Chrome::new("Keys", Some(staff));
    if let Some(rotated) = query_map(query).get("rotated").and_then(|p| plain(p)) {
        c = c.notice(format!(
            "A new {rotated} KEK version is active for new writes."
        ));
    }
    Ok(render(StatusCode::OK, &KeysPage { c, rows, purposes }))
}

pub async fn rotate_key(
    State(state): State<ConsoleState>,
    cx: Cx,
    Path(purpose): Path<String>,
    body: Bytes,
) -> Answer {
    let path = format!("/v1/keys/{}/rotate", encode(&purpose));
    let done = format!("/console/admin/keys?rotated={}", encode(&purpose));
    act(&state, &cx, &body, Method::POST, &path, &done).await
}

fn routes_page(staff: &Staff, list: &Value) -> RoutesPage {
    let rows = at(list, "routes")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let s = |k: &str| text_of(&r[k]);
            let last_author = if at(r, "changed_by").is_null() {
                s("created_by")
            } else {
                s("changed_by")
            };
            RouteRow {
                approvable: s("status") == "pending" && last_author != staff.principal.id,
                name: s("name"),
                base_url: s("base_url"),
                methods: s("methods"),
                fields: s("fields"),
                status: s("status"),
                created_by: s("created_by"),
                approved_by: s("approved_by"),
            }
        })
        .collect();
    RoutesPage {
        c: Chrome::new("Relay routes", Some(staff)),
        rows,
        name: String::new(),
        base_url: String::new(),
        methods: vec!["POST".into()],
        fields: String::new(),
        paths: String::new(),
        errors: FieldErrors::default(),
    }
}

pub async fn routes(
    State(state): State<ConsoleState>,
    cx: Cx,
    RawQuery(query): RawQuery,
) -> Answer {
    let staff = cx.staff()?;
    let reply = fetch(&state, &cx, staff, "/v1/relay/routes").await?;
    let mut page = routes_page(staff, &reply);
    if let Some(done) = query_map(query).get("done") {
        page.c = page.c.notice(match done.as_str() {
            "created" => {
                "Route created. Another admin must approve it before it carries card data."
            }
            "approved" => "Route approved.",
            _ => "Done.",
        });
    }
    Ok(render(StatusCode::OK, &page))
}

/// A text area's non-empty lines, trimmed.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

pub async fn create_route(State(state): State<ConsoleState>, cx: Cx, body: Bytes) -> Answer {
    let form = Form::parse(&body)?;
    let staff = cx.poster(&form)?;
    let fields: Vec<String> = form
        .text("fields")
        .split([',', ' '])
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect();
    let mut request: Map<String, Value> = Map::new();
    request.insert("name".into(), json!(form.text("name")));
    request.insert("base_url".into(), json!(form.text("base_url")));
    request.insert("methods".into(), json!(form.all("methods")));
    request.insert("fields".into(), json!(fields));
    let paths = lines(&form.text("paths"));
    if !paths.is_empty() {
        request.insert("paths".into(), json!(paths));
    }
    let created = state
        .api
        .call(
            &cx,
            Method::POST,
            "/v1/relay/routes",
            Some(&Value::Object(request)),
        )
        .await;
    if let Some(page) = fatal(staff, &created) {
        return Ok(page);
    }
    if created.ok() {
        return Ok(see_other("/console/admin/routes?done=created"));
    }
    let list = fetch(&state, &cx, staff, "/v1/relay/routes").await?;
    let mut page = routes_page(staff, &list);
    let (errors, error) = form_errors(
        &created,
        &form,
        &["name", "base_url", "methods", "fields", "paths"],
    );
    page.errors = errors;
    if let Some(error) = error {
        page.c = page.c.error(error);
    }
    page.name = form.text("name");
    page.base_url = form.text("base_url");
    page.methods = form.all("methods");
    page.fields = form.text("fields");
    page.paths = form.text("paths");
    Ok(render(created.status, &page))
}

pub async fn approve_route(
    State(state): State<ConsoleState>,
    cx: Cx,
    Path(name): Path<String>,
    body: Bytes,
) -> Answer {
    let path = format!("/v1/relay/routes/{}/approve", encode(&name));
    act(
        &state,
        &cx,
        &body,
        Method::POST,
        &path,
        "/console/admin/routes?done=approved",
    )
    .await
}
