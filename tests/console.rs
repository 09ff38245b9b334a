//! The console over HTTP, in process: headers and cookie flags, CSRF and
//! origin checks, sessions, and that every console action is an ordinary,
//! audited API operation with no privilege of its own. The browser flows
//! are in `console_browser.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use common::{audit_entries, call, fast_settings, new_vault_with, test_settings};
use strongroom::access::Role;
use strongroom::console::{CONTENT_SECURITY_POLICY, CSRF_FIELD, LOGIN_COOKIE, SESSION_COOKIE};
use strongroom::keyring::SealMethod;
use zeroize::Zeroizing;

const PASSWORD: &str = common::STAFF_PASSWORD;
const CLIENT: &str = "192.0.2.44";

/// A page from the console: status, headers, HTML.
struct Page {
    status: u16,
    headers: axum::http::HeaderMap,
    html: String,
}

impl Page {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// The value of the first hidden CSRF field.
    fn csrf(&self) -> String {
        let marker = format!("name=\"{CSRF_FIELD}\" value=\"");
        let start = self.html.find(&marker).expect("a CSRF field") + marker.len();
        let end = self.html[start..].find('"').unwrap() + start;
        self.html[start..end].to_owned()
    }
}

/// A browser-like client of the console: a cookie jar and a client
/// address.
struct Browser {
    app: axum::Router,
    cookies: Vec<(String, String)>,
}

impl Browser {
    fn new(app: &axum::Router) -> Self {
        Self {
            app: app.clone(),
            cookies: Vec::new(),
        }
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        form: Option<&[(&str, &str)]>,
        headers: &[(&str, &str)],
    ) -> Page {
        let mut builder = Request::builder().method(method).uri(path);
        builder = builder.header("host", "vault.test");
        if !self.cookies.is_empty() {
            let jar = self
                .cookies
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            builder = builder.header("cookie", jar);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let body = match form {
            Some(fields) => {
                builder = builder.header("content-type", "application/x-www-form-urlencoded");
                Body::from(serde_urlencoded::to_string(fields).unwrap())
            }
            None => Body::empty(),
        };
        let mut request = builder.body(body).unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(CLIENT.parse().unwrap(), 40000)));
        let reply = common::send_request(&self.app, request).await;
        let html = match &reply.body {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        let page = Page {
            status: reply.status,
            headers: reply.headers,
            html,
        };
        for set in page.set_cookies() {
            let pair = set.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != name);
            if !value.is_empty() && !set.contains("Max-Age=0") {
                self.cookies.push((name.to_owned(), value.to_owned()));
            }
        }
        page
    }

    async fn get(&mut self, path: &str) -> Page {
        self.send("GET", path, None, &[]).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        self.send("POST", path, Some(form), &[("origin", "http://vault.test")])
            .await
    }

    /// Signs in as `username`; the page after the redirect's target.
    async fn sign_in(&mut self, username: &str, password: &str) -> Page {
        let form = self.get("/console/sign-in").await;
        let csrf = form.csrf();
        self.post(
            "/console/sign-in",
            &[
                (CSRF_FIELD, &csrf),
                ("username", username),
                ("password", password),
            ],
        )
        .await
    }
}

struct Setup {
    vault: common::TestVault,
    app: axum::Router,
    card_id: String,
}

/// A vault with an officer, an approver, an auditor and an admin (staff),
/// and one stored card.
async fn setup() -> Setup {
    let (vault, payments) = common::staff_vault();
    let app = vault.app();
    let card = call(
        &app,
        "POST",
        "/v1/records/card",
        Some(&payments),
        Some(serde_json::json!({"pan": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2030, "holder_name": "Ada Lovelace", "subject_ref": "user-42"})),
    )
    .await;
    assert_eq!(card.status, 201, "{}", card.body);
    Setup {
        card_id: card.body["id"].as_str().unwrap().to_owned(),
        vault,
        app,
    }
}

/// Entries of `action` in the vault's audit log.
fn entries_of(vault: &common::TestVault, action: &str) -> Vec<serde_json::Value> {
    audit_entries(vault)
        .into_iter()
        .filter(|e| e["action"] == action)
        .collect()
}

fn assert_console_headers(page: &Page, what: &str) {
    assert_eq!(
        page.header("content-security-policy"),
        CONTENT_SECURITY_POLICY,
        "{what}"
    );
    assert_eq!(page.header("cache-control"), "no-store", "{what}");
    assert_eq!(page.header("x-frame-options"), "DENY", "{what}");
    assert_eq!(page.header("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(page.header("referrer-policy"), "same-origin", "{what}");
}

fn assert_cookie_flags(set_cookie: &str) {
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console", "Secure"] {
        assert!(
            set_cookie.split(';').any(|part| part.trim() == flag),
            "{flag} missing from {set_cookie}"
        );
    }
}

#[tokio::test]
async fn every_page_has_the_csp_no_store_and_strict_cookies() {
    let s = setup().await;
    let mut browser = Browser::new(&s.app);
    let form = browser.get("/console/sign-in").await;
    assert_eq!(form.status, 200);
    assert_console_headers(&form, "sign-in");
    let login_cookie = form.set_cookies();
    assert_eq!(login_cookie.len(), 1);
    assert!(login_cookie[0].starts_with(&format!("{LOGIN_COOKIE}=")));
    assert_cookie_flags(&login_cookie[0]);
    // No script, no inline style, nothing from elsewhere.
    {
        let page = &form.html;
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("style="), "{page}");
        assert!(!page.contains("<style"), "{page}");
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "{page}"
        );
    }

    let signed_in = browser
        .post(
            "/console/sign-in",
            &[
                (CSRF_FIELD, &form.csrf()),
                ("username", "adam"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(signed_in.status, 303);
    assert_console_headers(&signed_in, "sign-in post");
    let session = signed_in
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with(&format!("{SESSION_COOKIE}=")))
        .expect("a session cookie");
    assert_cookie_flags(&session);
    // The cookie holds an API session: the same token works as a bearer.
    let token = browser.cookie(SESSION_COOKIE).unwrap().to_owned();
    assert_eq!(
        call(&s.app, "GET", "/v1/principals", Some(&token), None)
            .await
            .status,
        200
    );

    for path in [
        "/console/admin/principals",
        "/console/admin/keys",
        "/console/admin/routes",
        "/console/audit",
        "/console/audit/verify",
        "/console/no-such-page",
    ] {
        let page = browser.get(path).await;
        assert!(
            page.status == 200 || page.status == 404,
            "{path}: {}",
            page.status
        );
        assert_console_headers(&page, path);
        assert!(!page.html.contains("<script"), "{path}");
        assert!(!page.html.contains("style="), "{path}");
    }
    let css = browser.get("/console/static/console.css").await;
    assert_eq!(css.status, 200);
    assert_eq!(css.header("content-type"), "text/css; charset=utf-8");
}

#[tokio::test]
async fn the_sign_in_form_needs_its_csrf_token() {
    let s = setup().await;
    let mut browser = Browser::new(&s.app);
    browser.get("/console/sign-in").await;
    for token in ["", "0123456789abcdef0123456789abcdef"] {
        let refused = browser
            .post(
                "/console/sign-in",
                &[
                    (CSRF_FIELD, token),
                    ("username", "olivia"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(refused.status, 403, "{token:?}");
        assert!(browser.cookie(SESSION_COOKIE).is_none());
    }
    // Nor was a password checked: no login entry at all.
    assert!(entries_of(&s.vault, "auth.login").is_empty());
}

#[tokio::test]
async fn a_post_without_the_session_csrf_token_or_from_another_origin_changes_nothing() {
    let s = setup().await;
    let mut browser = Browser::new(&s.app);
    assert_eq!(browser.sign_in("olivia", PASSWORD).await.status, 303);
    let record = browser
        .get(&format!("/console/records/{}", s.card_id))
        .await;
    assert_eq!(record.status, 200, "{}", record.html);
    let csrf = record.csrf();
    let path = format!("/console/records/{}/access-requests", s.card_id);
    let form = [
        (CSRF_FIELD, csrf.as_str()),
        ("fields", "pan"),
        ("reason", "chargeback dispute"),
        ("ticket", "CASE-7"),
    ];
    let mut wrong_token = form;
    wrong_token[0].1 = "00000000000000000000000000000000000000000000000000000000000000aa";
    // No token, a made-up one, another origin, a cross-site fetch.
    let missing = browser.post(&path, &form[1..]).await;
    assert_eq!(missing.status, 403);
    let wrong = browser.post(&path, &wrong_token).await;
    assert_eq!(wrong.status, 403);
    let foreign = browser
        .send(
            "POST",
            &path,
            Some(&form),
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(foreign.status, 403);
    let null_origin = browser
        .send("POST", &path, Some(&form), &[("origin", "null")])
        .await;
    assert_eq!(null_origin.status, 403);
    let cross_site = browser
        .send(
            "POST",
            &path,
            Some(&form),
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(cross_site.status, 403);
    assert!(
        entries_of(&s.vault, "access.request").is_empty(),
        "a refused form reached the API"
    );
    // The same form with its token, from the console's own origin, works.
    let sent = browser.post(&path, &form).await;
    assert_eq!(sent.status, 303, "{}", sent.html);
    assert_eq!(entries_of(&s.vault, "access.request").len(), 1);
}

#[tokio::test]
async fn an_api_key_in_the_cookie_is_not_a_console_session() {
    let s = setup().await;
    let mut browser = Browser::new(&s.app);
    browser
        .cookies
        .push((SESSION_COOKIE.into(), s.vault.admin_api_key.clone()));
    let page = browser.get("/console/admin/principals").await;
    assert_eq!(page.status, 401);
    assert!(!page.html.contains("<table id=\"principals\""));
    assert!(entries_of(&s.vault, "principal.list").is_empty());
}

/// The console's forms reach the API as the signed-in person: what the
/// policy table refuses them through the API, it refuses through the
/// console, and the denial is audited the same way.
#[tokio::test]
async fn the_console_has_no_privilege_of_its_own() {
    let s = setup().await;
    let mut auditor = Browser::new(&s.app);
    auditor.sign_in("audrey", PASSWORD).await;
    let search = auditor.get("/console/audit").await;
    let csrf = search.csrf();
    let refused = auditor
        .post(
            "/console/search",
            &[
                (CSRF_FIELD, &csrf),
                ("field", "email"),
                ("value", "ada@example.com"),
                ("reason", "curious"),
                ("ticket", "CASE-1"),
            ],
        )
        .await;
    assert_eq!(refused.status, 403);
    assert!(!refused.html.contains("id=\"matches\""));
    let denied = entries_of(&s.vault, "record.search");
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["outcome"], "denied");

    let mut officer = Browser::new(&s.app);
    officer.sign_in("olivia", PASSWORD).await;
    let audit = officer.get("/console/audit").await;
    assert_eq!(audit.status, 403);
    assert!(!audit.html.contains("id=\"entries\""));
}

#[tokio::test]
async fn a_reveal_without_reason_or_ticket_shows_the_error_next_to_the_field() {
    let s = setup().await;
    let mut officer = Browser::new(&s.app);
    officer.sign_in("olivia", PASSWORD).await;
    let record = officer
        .get(&format!("/console/records/{}", s.card_id))
        .await;
    let csrf = record.csrf();
    let path = format!("/console/records/{}/reveal", s.card_id);
    let no_reason = officer
        .post(
            &path,
            &[
                (CSRF_FIELD, &csrf),
                ("fields", "holder_name"),
                ("reason", ""),
                ("ticket", "CASE-2"),
            ],
        )
        .await;
    assert_eq!(no_reason.status, 400);
    assert!(
        no_reason.html.contains("id=\"reveal-reason-error\""),
        "{}",
        no_reason.html
    );
    assert!(!no_reason.html.contains("id=\"reveal-ticket-error\""));
    assert!(!no_reason.html.contains("Ada Lovelace"));
    let no_ticket = officer
        .post(
            &path,
            &[
                (CSRF_FIELD, &csrf),
                ("fields", "holder_name"),
                ("reason", "dispute"),
                ("ticket", " "),
            ],
        )
        .await;
    assert_eq!(no_ticket.status, 400);
    assert!(no_ticket.html.contains("id=\"reveal-ticket-error\""));
    assert!(!no_ticket.html.contains("Ada Lovelace"));
    // The PAN needs an approval: said next to the fields.
    let pan = officer
        .post(
            &path,
            &[
                (CSRF_FIELD, &csrf),
                ("fields", "pan"),
                ("reason", "dispute"),
                ("ticket", "CASE-2"),
            ],
        )
        .await;
    assert_eq!(pan.status, 403);
    assert!(pan.html.contains("id=\"reveal-fields-error\""));
    assert!(!pan.html.contains("4242424242424242"));

    // With both, the value is shown once, on a page that is not cached
    // and has no link back to itself, and the reveal is audited with the
    // console request's id and client address.
    let shown = officer
        .post(
            &path,
            &[
                (CSRF_FIELD, &csrf),
                ("fields", "holder_name"),
                ("reason", "dispute"),
                ("ticket", "CASE-2"),
            ],
        )
        .await;
    assert_eq!(shown.status, 200, "{}", shown.html);
    assert!(shown.html.contains("Ada Lovelace"));
    assert_eq!(shown.header("cache-control"), "no-store");
    assert!(!shown.html.contains(&format!("href=\"{path}\"")));
    let reveals: Vec<_> = entries_of(&s.vault, "record.reveal")
        .into_iter()
        .filter(|e| e["outcome"] == "allowed")
        .collect();
    assert_eq!(reveals.len(), 1);
    assert_eq!(reveals[0]["request_id"], shown.header("x-request-id"));
    assert_eq!(reveals[0]["client"], CLIENT);
    assert_eq!(reveals[0]["ticket"], "CASE-2");
}

#[tokio::test]
async fn approving_ones_own_request_is_not_offered_and_refused_if_forced() {
    let s = setup().await;
    let mut officer = Browser::new(&s.app);
    officer.sign_in("olivia", PASSWORD).await;
    let record = officer
        .get(&format!("/console/records/{}", s.card_id))
        .await;
    let csrf = record.csrf();
    let sent = officer
        .post(
            &format!("/console/records/{}/access-requests", s.card_id),
            &[
                (CSRF_FIELD, &csrf),
                ("fields", "pan"),
                ("reason", "dispute"),
                ("ticket", "CASE-3"),
            ],
        )
        .await;
    assert_eq!(sent.status, 303);
    let location = sent.header("location").to_owned();
    let request_id = location.split("requested=").nth(1).unwrap().to_owned();
    // The officer has no queue to approve from …
    let queue = officer.get("/console/approvals").await;
    assert_eq!(queue.status, 403);
    assert!(!queue.html.contains("/approve"));
    // … and a forced approval is refused, audited, and changes nothing.
    let forced = officer
        .post(
            &format!("/console/approvals/{request_id}/approve"),
            &[(CSRF_FIELD, &csrf)],
        )
        .await;
    assert_eq!(forced.status, 403);
    let denied: Vec<_> = entries_of(&s.vault, "access.approve");
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["outcome"], "denied");
    let request = s
        .vault
        .state
        .access_requests
        .get(&request_id)
        .unwrap()
        .unwrap();
    assert_eq!(request.status, strongroom::access::RequestStatus::Pending);

    // The approver sees it with approve and deny buttons, and approves.
    let mut approver = Browser::new(&s.app);
    approver.sign_in("abel", PASSWORD).await;
    let queue = approver.get("/console/approvals").await;
    assert_eq!(queue.status, 200);
    assert!(
        queue
            .html
            .contains(&format!("/console/approvals/{request_id}/approve"))
    );
    assert!(queue.html.contains("CASE-3") && queue.html.contains("dispute"));
    let approved = approver
        .post(
            &format!("/console/approvals/{request_id}/approve"),
            &[(CSRF_FIELD, &queue.csrf())],
        )
        .await;
    assert_eq!(approved.status, 303);
    let request = s
        .vault
        .state
        .access_requests
        .get(&request_id)
        .unwrap()
        .unwrap();
    assert_eq!(request.status, strongroom::access::RequestStatus::Approved);
    // Decided: gone from the queue.
    let queue = approver.get("/console/approvals").await;
    assert!(!queue.html.contains(&request_id[..]) || queue.html.contains("approved."));
    assert!(queue.html.contains("id=\"queue-empty\""));
}

#[tokio::test]
async fn a_locked_account_is_told_how_long_to_wait() {
    let s = setup().await;
    let mut browser = Browser::new(&s.app);
    let mut last = None;
    for _ in 0..6 {
        last = Some(browser.sign_in("olivia", "wrong password, again").await);
    }
    let page = last.unwrap();
    assert_eq!(page.status, 429, "{}", page.html);
    assert!(page.html.contains("locked. Try again in"), "{}", page.html);
    assert!(browser.cookie(SESSION_COOKIE).is_none());
    // The right password is refused while locked.
    let right = browser.sign_in("olivia", PASSWORD).await;
    assert_eq!(right.status, 429);
    assert!(browser.cookie(SESSION_COOKIE).is_none());
}

#[tokio::test]
async fn signing_out_ends_the_api_session() {
    let s = setup().await;
    let mut browser = Browser::new(&s.app);
    browser.sign_in("audrey", PASSWORD).await;
    let token = browser.cookie(SESSION_COOKIE).unwrap().to_owned();
    let page = browser.get("/console/audit").await;
    assert_eq!(page.status, 200);
    let out = browser
        .post("/console/sign-out", &[(CSRF_FIELD, &page.csrf())])
        .await;
    assert_eq!(out.status, 303);
    assert!(browser.cookie(SESSION_COOKIE).is_none());
    assert_eq!(
        call(&s.app, "GET", "/v1/audit", Some(&token), None)
            .await
            .status,
        401
    );
    // The old cookie, sent again, is no session.
    browser.cookies.push((SESSION_COOKIE.into(), token));
    assert_eq!(browser.get("/console/audit").await.status, 401);
}

#[tokio::test]
async fn a_sealed_vault_shows_the_sealed_page_and_nothing_else() {
    let s = setup().await;
    let mut browser = Browser::new(&s.app);
    browser.sign_in("audrey", PASSWORD).await;
    s.vault.state.seal();
    let page = browser.get("/console/audit").await;
    assert_eq!(page.status, 503);
    assert!(page.html.contains("sealed"));
    assert!(!page.html.contains("id=\"entries\""));
}

#[tokio::test]
async fn the_audit_page_filters_pages_and_exports_through_the_api() {
    let s = setup().await;
    let mut auditor = Browser::new(&s.app);
    auditor.sign_in("audrey", PASSWORD).await;
    let page = auditor.get("/console/audit?action=record.create").await;
    assert_eq!(page.status, 200);
    assert!(page.html.contains("record.create"));
    assert!(!page.html.contains(">principal.create<"));
    let bad = auditor.get("/console/audit?since=yesterday").await;
    assert_eq!(bad.status, 422);
    assert!(bad.html.contains("id=\"since-error\""));
    let export = auditor
        .get("/console/audit/export?action=record.create")
        .await;
    assert_eq!(export.status, 200);
    assert!(
        export
            .header("content-disposition")
            .starts_with("attachment")
    );
    let lines: Vec<serde_json::Value> = export
        .html
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["action"], "record.create");
    let verify = auditor.get("/console/audit/verify").await;
    assert!(
        verify.html.contains("The chain verifies"),
        "{}",
        verify.html
    );
}

/// HTTP/2 carries the authority in `:authority`, and browsers send no
/// `Host` header: the origin check must read the request's own authority.
#[tokio::test]
async fn posts_over_http2_without_a_host_header_are_the_consoles_own() {
    let s = setup().await;
    let mut browser = Browser::new(&s.app);
    let form = browser.get("/console/sign-in").await;
    let body = serde_urlencoded::to_string([
        (CSRF_FIELD, form.csrf().as_str()),
        ("username", "audrey"),
        ("password", PASSWORD),
    ])
    .unwrap();
    let mut request = Request::builder()
        .method("POST")
        .uri("https://vault.test/console/sign-in")
        .version(axum::http::Version::HTTP_2)
        .header("origin", "https://vault.test")
        .header("sec-fetch-site", "same-origin")
        .header("content-type", "application/x-www-form-urlencoded")
        .header(
            "cookie",
            format!("{LOGIN_COOKIE}={}", browser.cookie(LOGIN_COOKIE).unwrap()),
        )
        .body(Body::from(body))
        .unwrap();
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(CLIENT.parse().unwrap(), 40000)));
    let reply = common::send_request(&s.app, request).await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    // Another authority in the Origin is still another origin.
    let mut foreign = Request::builder()
        .method("POST")
        .uri("https://vault.test/console/sign-in")
        .header("origin", "https://vault.test.evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from("csrf=x"))
        .unwrap();
    foreign
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(CLIENT.parse().unwrap(), 40000)));
    assert_eq!(common::send_request(&s.app, foreign).await.status, 403);
}

/// A page of another origin on the same site (a sibling subdomain, another
/// port) gets the `SameSite=Strict` cookie sent: an image tag there must
/// not make an audited read in the officer's name.
#[tokio::test]
async fn requests_a_browser_marks_as_from_another_site_are_refused_even_gets() {
    let s = setup().await;
    let mut officer = Browser::new(&s.app);
    officer.sign_in("olivia", PASSWORD).await;
    let reads_before = entries_of(&s.vault, "record.read").len();
    let path = format!("/console/records/{}", s.card_id);
    for site in ["same-site", "cross-site"] {
        let page = officer
            .send("GET", &path, None, &[("sec-fetch-site", site)])
            .await;
        assert_eq!(page.status, 403, "{site}");
        assert!(!page.html.contains("id=\"masked\""));
    }
    // A link followed from elsewhere (a ticket, a mail) opens nothing
    // either, but offers the same address as a link of the console's own.
    let followed = officer
        .send(
            "GET",
            &path,
            None,
            &[
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "navigate"),
            ],
        )
        .await;
    assert_eq!(followed.status, 200);
    assert!(
        followed.html.contains(&format!("href=\"{path}\"")),
        "{}",
        followed.html
    );
    assert!(!followed.html.contains("id=\"masked\""));
    assert_eq!(entries_of(&s.vault, "record.read").len(), reads_before);
    // Typed into the address bar, or followed from the console itself.
    for site in ["none", "same-origin"] {
        let page = officer
            .send("GET", &path, None, &[("sec-fetch-site", site)])
            .await;
        assert_eq!(page.status, 200, "{site}");
    }
}

#[tokio::test]
async fn two_session_cookies_are_no_session() {
    let s = setup().await;
    let mut browser = Browser::new(&s.app);
    browser.sign_in("audrey", PASSWORD).await;
    let mut planter = Browser::new(&s.app);
    planter.sign_in("adam", PASSWORD).await;
    let planted = planter.cookie(SESSION_COOKIE).unwrap().to_owned();
    browser.cookies.push((SESSION_COOKIE.into(), planted));
    let page = browser.get("/console/audit").await;
    assert_eq!(page.status, 401);
    assert!(!page.html.contains("id=\"entries\""));
}

/// The approvers' queue is the oldest pending requests, oldest first.
#[tokio::test]
async fn the_queue_lists_the_oldest_requests_first() {
    let clock = std::sync::Arc::new(strongroom::clock::ManualClock::new(
        time::OffsetDateTime::now_utc(),
    ));
    let vault = new_vault_with(
        SealMethod::Passphrase(Zeroizing::new(common::PASSPHRASE.into())),
        fast_settings(),
        clock.clone(),
        test_settings(),
    );
    vault.staff("olivia", Role::ComplianceOfficer, PASSWORD);
    vault.staff("abel", Role::ComplianceApprover, PASSWORD);
    let payments = vault.service("payments", Role::PaymentService);
    let app = vault.app();
    let login = |name: &'static str| {
        let app = app.clone();
        async move {
            let reply = call(
                &app,
                "POST",
                "/v1/auth/login",
                None,
                Some(serde_json::json!({"username": name, "password": PASSWORD})),
            )
            .await;
            reply.body["token"].as_str().unwrap().to_owned()
        }
    };
    let officer = login("olivia").await;
    let approver = login("abel").await;
    let mut made = Vec::new();
    for i in 0..6 {
        let card = call(
            &app,
            "POST",
            "/v1/records/card",
            Some(&payments),
            Some(serde_json::json!({"pan": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2030, "holder_name": "Ada Lovelace", "subject_ref": format!("user-{i}")})),
        )
        .await;
        let request = call(
            &app,
            "POST",
            "/v1/access-requests",
            Some(&officer),
            Some(serde_json::json!({"record_id": card.body["id"], "fields": ["pan"], "reason": "review", "ticket": format!("CASE-{i}")})),
        )
        .await;
        assert_eq!(request.status, 201, "{}", request.body);
        made.push(request.body["id"].as_str().unwrap().to_owned());
        clock.advance(time::Duration::seconds(5));
    }
    let queue = call(&app, "GET", "/v1/access-requests", Some(&approver), None).await;
    assert_eq!(queue.status, 200);
    let listed: Vec<String> = queue.body["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, made);
    // Past the queue's limit, the oldest are the ones listed.
    let oldest: Vec<String> = vault
        .state
        .access_requests
        .pending(3)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(oldest, made[..3]);
    // An index entry in the first, unordered shape (`arp/<id>`) is still
    // listed, and goes with its request's decision.
    let legacy = &made[4];
    let ordered: Vec<Vec<u8>> = vault
        .store
        .scan_prefix(b"arp/")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.ends_with(legacy.as_bytes()))
        .collect();
    assert_eq!(ordered.len(), 1);
    vault
        .store
        .commit(
            strongroom::store::Transaction::new()
                .delete(ordered[0].clone())
                .put(format!("arp/{legacy}").into_bytes(), Vec::new()),
        )
        .unwrap();
    let queue = call(&app, "GET", "/v1/access-requests", Some(&approver), None).await;
    assert_eq!(queue.status, 200, "{}", queue.body);
    assert!(queue.body.to_string().contains(legacy.as_str()));
    let denied = call(
        &app,
        "POST",
        &format!("/v1/access-requests/{legacy}/deny"),
        Some(&approver),
        None,
    )
    .await;
    assert_eq!(denied.status, 200);
    assert!(
        vault
            .store
            .get(format!("arp/{legacy}").as_bytes())
            .unwrap()
            .is_none()
    );
    // A decided request leaves the queue.
    let approved = call(
        &app,
        "POST",
        &format!("/v1/access-requests/{}/approve", made[2]),
        Some(&approver),
        None,
    )
    .await;
    assert_eq!(approved.status, 200);
    let queue = call(&app, "GET", "/v1/access-requests", Some(&approver), None).await;
    assert_eq!(queue.body["requests"].as_array().unwrap().len(), 4);
    assert!(!queue.body.to_string().contains(&made[2]));
}

/// A notice repeats only plain ids from the address bar, so a crafted link
/// cannot make the console say something of its own.
#[tokio::test]
async fn notices_repeat_only_plain_ids_from_the_address() {
    let s = setup().await;
    let mut officer = Browser::new(&s.app);
    officer.sign_in("olivia", PASSWORD).await;
    let page = officer
        .get(&format!(
            "/console/records/{}?requested=Call%20the%20helpdesk%20on%20555",
            s.card_id
        ))
        .await;
    assert_eq!(page.status, 200);
    assert!(!page.html.contains("helpdesk"));
    assert!(!page.html.contains("class=\"notice\""));
}

/// Each page that reads through the API, for each staff role: shown
/// exactly when the policy table lets that role make the API call behind
/// it, refused (403, nothing of the page) otherwise.
#[tokio::test]
async fn every_page_for_every_role_follows_the_policy_table() {
    use strongroom::access::{Operation, allows};
    let s = setup().await;
    let pages: Vec<(String, Operation, &str)> = vec![
        (
            format!("/console/records/{}", s.card_id),
            Operation::RecordRead,
            "id=\"masked\"",
        ),
        (
            "/console/approvals".into(),
            Operation::AccessRequestList,
            "<h1>Approval requests</h1>",
        ),
        (
            "/console/audit".into(),
            Operation::AuditRead,
            "id=\"entries\"",
        ),
        (
            "/console/audit/verify".into(),
            Operation::AuditVerify,
            "id=\"chain-status\"",
        ),
        (
            "/console/admin/principals".into(),
            Operation::PrincipalList,
            "id=\"principals\"",
        ),
        (
            "/console/admin/keys".into(),
            Operation::KeysRead,
            "id=\"keys\"",
        ),
        (
            "/console/admin/routes".into(),
            Operation::RelayRouteList,
            "id=\"routes\"",
        ),
    ];
    for (user, role) in [
        ("olivia", Role::ComplianceOfficer),
        ("abel", Role::ComplianceApprover),
        ("audrey", Role::Auditor),
        ("adam", Role::Admin),
    ] {
        let mut browser = Browser::new(&s.app);
        browser.sign_in(user, PASSWORD).await;
        for (path, op, marker) in &pages {
            let page = browser.get(path).await;
            if allows(role, *op) {
                assert_eq!(page.status, 200, "{role:?} {path}");
                assert!(page.html.contains(marker), "{role:?} {path}");
            } else {
                assert_eq!(page.status, 403, "{role:?} {path}");
                assert!(!page.html.contains(marker), "{role:?} {path}");
            }
        }
    }
}

/// Bad input gets an answer, never a 5xx: an unknown search field or a
/// missing country is named next to its field, a body over the console's limit is
/// refused, and none of it echoes what was sent.
#[tokio::test]
async fn bad_input_is_named_next_to_its_field_and_never_echoed() {
    let s = setup().await;
    let mut officer = Browser::new(&s.app);
    officer.sign_in("olivia", PASSWORD).await;
    let csrf = officer.get("/console/search").await.csrf();
    let bogus = officer
        .post(
            "/console/search",
            &[
                (CSRF_FIELD, &csrf),
                ("field", "shoe_size<script>"),
                ("value", "44"),
                ("reason", "r"),
                ("ticket", "T-1"),
            ],
        )
        .await;
    assert_eq!(bogus.status, 422, "{}", bogus.html);
    assert!(bogus.html.contains("id=\"field-error\""), "{}", bogus.html);
    assert!(!bogus.html.contains("<script>"));
    let country = officer
        .post(
            "/console/search",
            &[
                (CSRF_FIELD, &csrf),
                ("field", "national_id"),
                ("value", "QZ1234567"),
                ("reason", "r"),
                ("ticket", "T-1"),
            ],
        )
        .await;
    assert!(
        country.status == 422 || country.status == 400,
        "{}",
        country.status
    );
    assert!(
        country.html.contains("id=\"country-error\""),
        "{}",
        country.html
    );
    let huge = "x".repeat(100 * 1024);
    let too_big = officer
        .post(
            "/console/search",
            &[(CSRF_FIELD, &csrf), ("field", "email"), ("value", &huge)],
        )
        .await;
    assert_eq!(too_big.status, 413);
    for page in [&bogus, &country, &too_big] {
        assert!(page.status < 500);
    }
}
