//! The console in a real browser: headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`; `.ci/run` installs them and
//! sets `STRONGROOM_REQUIRE_BROWSER=1`, so a missing browser fails there
//! instead of skipping). One test walks the flows of CONSOLE.md with four
//! people in four browser sessions, saving a screenshot of each main page
//! under `target/console-screenshots/`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::call;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const PASSWORD: &str = common::STAFF_PASSWORD;
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const NATIONAL_ID: &str = "QZ1234567";

/// The browser, or `None` (and a note) when this machine has none and the
/// run does not require one.
fn browser_available() -> bool {
    let present =
        std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists();
    if !present {
        assert!(
            std::env::var_os("STRONGROOM_REQUIRE_BROWSER").is_none(),
            "STRONGROOM_REQUIRE_BROWSER is set but {CHROMEDRIVER} or {CHROMIUM} is missing"
        );
        eprintln!(
            "skipped: no {CHROMIUM} / {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        );
    }
    present
}

/// A chromedriver process on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver() -> Driver {
    let port = common::process::free_addr().port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    common::wait_until("chromedriver listens", || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    Driver {
        child,
        url: format!("http://{addr}"),
    }
}

/// A new headless browser session with its own profile (its own cookies).
async fn browser(driver: &Driver) -> Client {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"],
        },
        "goog:loggingPrefs": {"browser": "ALL"},
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session")
}

/// The browser's console log since the last read (chromedriver's log
/// endpoint).
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(r#"{"type":"browser"}"#.to_owned()),
        )
    }
}

/// Asserts the browser logged no error (a CSP violation, a failed load, a
/// script error) since the last check.
async fn assert_no_console_errors(client: &Client, who: &str) {
    let log = client.issue_cmd(BrowserLog).await.expect("the browser log");
    let errors: Vec<&Value> = log
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
                .collect()
        })
        .unwrap_or_default();
    assert!(errors.is_empty(), "{who}'s browser console: {errors:?}");
}

fn screenshots_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).unwrap();
}

async fn fill(client: &Client, css: &str, text: &str) {
    let field = client.find(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

/// Clicks `css`; when the click loads another page (a link, a submit
/// button), waits until it has replaced this one.
async fn click(client: &Client, css: &str) {
    let navigates =
        css.contains("button") || css.contains(" a[") || css.starts_with("a[") || css == "#go";
    let old = client.find(Locator::Css("html")).await.unwrap();
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
    if !navigates {
        return;
    }
    let started = std::time::Instant::now();
    // The old document's root goes stale once the next page replaced it.
    while old.tag_name().await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "clicking {css} loaded no page"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("body"))
        .await
        .unwrap();
}

async fn text_of(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

async fn has(client: &Client, css: &str) -> bool {
    client.find(Locator::Css(css)).await.is_ok()
}

/// Asserts the current page came with the console's CSP and `no-store`,
/// as the browser itself reads them (a same-origin `fetch` of the page).
async fn assert_strict_headers(client: &Client) {
    let headers = client
        .execute(
            "return fetch(location.href, {credentials: 'same-origin'}).then(r => \
             [r.headers.get('content-security-policy'), r.headers.get('cache-control')]);",
            vec![],
        )
        .await
        .unwrap();
    let url = client.current_url().await.unwrap();
    assert_eq!(
        headers[0],
        strongroom::console::CONTENT_SECURITY_POLICY,
        "{url}"
    );
    assert_eq!(headers[1], "no-store", "{url}");
}

/// Signs `client` in as `username` through the sign-in page.
async fn sign_in(client: &Client, base: &str, username: &str, shot: Option<&str>) {
    client
        .goto(&format!("{base}/console/sign-in"))
        .await
        .unwrap();
    fill(client, "#username", username).await;
    fill(client, "#password", PASSWORD).await;
    if let Some(name) = shot {
        screenshot(client, name).await;
    }
    click(client, "form button[type=submit]").await;
    assert!(
        has(client, "form.sign-out").await,
        "{username} is not signed in: {}",
        client.source().await.unwrap()
    );
}

/// Serves `app` on a free loopback port, with each request's client
/// address; the base URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    format!("http://{addr}")
}

/// Another origin's page (another port is another origin) with a form
/// that posts to the console: what a phishing page would do.
async fn foreign_page(action: String, csrf: String) -> String {
    let html = format!(
        "<!DOCTYPE html><html><head><title>elsewhere</title></head><body>\
         <form method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"fields\" value=\"national_id\">\
         <input type=\"hidden\" name=\"reason\" value=\"phished\">\
         <input type=\"hidden\" name=\"ticket\" value=\"EVIL-1\">\
         <button id=\"go\" type=\"submit\">Win a prize</button></form></body></html>"
    );
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let html = html.clone();
            async move { axum::response::Html(html) }
        }),
    );
    serve(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officer_approver_reveal_and_auditor_in_a_real_browser() {
    if !browser_available() {
        return;
    }
    let (vault, payments) = common::staff_vault();
    let app = vault.app();
    let kyc = call(
        &app,
        "POST",
        "/v1/records/kyc",
        Some(&payments),
        Some(json!({
            "subject_ref": "user-42",
            "legal_name": {"given": "Ada", "family": "Lovelace"},
            "date_of_birth": "1815-12-10",
            "nationality": "GB",
            "address": {"line1": "12 St James's Square", "city": "London", "postal_code": "SW1Y 4JH", "country": "GB"},
            "national_id": {"type": "passport", "number": NATIONAL_ID, "country": "GB"},
            "email": "ada@example.com",
            "phone": "+442079460000"
        })),
    )
    .await;
    assert_eq!(kyc.status, 201, "{}", kyc.body);
    let kyc_id = kyc.body["id"].as_str().unwrap().to_owned();
    call(
        &app,
        "POST",
        "/v1/records/card",
        Some(&payments),
        Some(json!({"pan": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2030, "holder_name": "Ada Lovelace", "subject_ref": "user-42"})),
    )
    .await;
    let base = serve(app).await;
    let driver = start_driver();

    // The officer signs in and searches by national id.
    let officer = browser(&driver).await;
    sign_in(&officer, &base, "olivia", Some("sign-in")).await;
    assert!(
        officer
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/console/search")
    );
    officer
        .find(Locator::Css("#field"))
        .await
        .unwrap()
        .select_by_value("national_id")
        .await
        .unwrap();
    fill(&officer, "#value", NATIONAL_ID).await;
    fill(&officer, "#country", "GB").await;
    fill(&officer, "#reason", "AML review of a flagged payout").await;
    fill(&officer, "#ticket", "CASE-1234").await;
    click(&officer, "form.card button[type=submit]").await;
    let matches = text_of(&officer, "#matches").await;
    assert!(
        matches.contains(&kyc_id) && matches.contains("user-42"),
        "{matches}"
    );
    assert!(
        !matches.contains(NATIONAL_ID),
        "a search result shows the national id: {matches}"
    );
    screenshot(&officer, "search-results").await;
    assert_strict_headers(&officer).await;

    // Opens the record: masked, with the reveal and request forms.
    click(&officer, &format!("#matches a[href$='{kyc_id}']")).await;
    let masked = text_of(&officer, "#masked").await;
    assert!(
        !masked.contains(NATIONAL_ID) && !masked.contains("Lovelace"),
        "{masked}"
    );
    screenshot(&officer, "record").await;
    assert_strict_headers(&officer).await;

    // A reveal without a reason: the error is next to the reason field.
    click(&officer, "#reveal-form input[value=date_of_birth]").await;
    fill(&officer, "#reveal-ticket", "CASE-1234").await;
    click(&officer, "#reveal-form button[type=submit]").await;
    assert!(has(&officer, "#reveal-reason-error").await);
    assert!(!has(&officer, "#reveal-ticket-error").await);
    assert!(!officer.source().await.unwrap().contains("1815-12-10"));
    screenshot(&officer, "reveal-error").await;

    // The national id needs a second person: ask for approval.
    click(&officer, "#request-form input[value=national_id]").await;
    fill(
        &officer,
        "#request-reason",
        "AML review of a flagged payout",
    )
    .await;
    fill(&officer, "#request-ticket", "CASE-1234").await;
    click(&officer, "#request-form button[type=submit]").await;
    let notice = text_of(&officer, ".notice").await;
    assert!(notice.contains("sent"), "{notice}");
    let request_id = notice
        .split_whitespace()
        .find(|w| w.starts_with("ar_"))
        .unwrap()
        .to_owned();

    // Approving one's own request is not offered (an officer has no
    // queue) and is refused when forced with a hand-made form that
    // carries the officer's own valid CSRF token.
    let record_page = officer.current_url().await.unwrap();
    officer
        .execute(
            "const f = document.createElement('form'); f.method = 'post'; \
             f.action = '/console/approvals/' + arguments[0] + '/approve'; \
             const t = document.querySelector('#request-form input[name=csrf]').cloneNode(); \
             f.appendChild(t); document.body.appendChild(f); f.submit();",
            vec![json!(request_id)],
        )
        .await
        .unwrap();
    officer
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(".message"))
        .await
        .unwrap();
    let forced = officer.source().await.unwrap();
    assert!(forced.contains("Refused"), "{forced}");
    assert!(!forced.contains("approved"));
    let _ = officer.issue_cmd(BrowserLog).await;
    officer.goto(record_page.as_str()).await.unwrap();

    // A form sent from another origin, even with the officer's own CSRF
    // token, is refused (and the SameSite cookie does not even go with it).
    let record_url = officer.current_url().await.unwrap();
    let csrf = officer
        .find(Locator::Css("#request-form input[name=csrf]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    let elsewhere = foreign_page(
        format!("{base}/console/records/{kyc_id}/access-requests"),
        csrf,
    )
    .await;
    officer.goto(&elsewhere).await.unwrap();
    click(&officer, "#go").await;
    let refused = officer.source().await.unwrap();
    assert!(
        refused.contains("Refused") || refused.contains("Sign in"),
        "{refused}"
    );
    assert!(!refused.contains("sent. An approver"));
    // chromium logs the refused navigation's 403 as an error: read it
    // here, so the check below is about the console's own pages.
    let _ = officer.issue_cmd(BrowserLog).await;
    // A form whose CSRF field was removed is refused too.
    officer.goto(record_url.as_str()).await.unwrap();
    officer
        .execute(
            "document.querySelector('#request-form input[name=csrf]').remove();",
            vec![],
        )
        .await
        .unwrap();
    click(&officer, "#request-form input[value=national_id]").await;
    fill(&officer, "#request-reason", "again").await;
    fill(&officer, "#request-ticket", "CASE-1234").await;
    click(&officer, "#request-form button[type=submit]").await;
    assert!(officer.source().await.unwrap().contains("security token"));
    let _ = officer.issue_cmd(BrowserLog).await;

    // The approver, in a second browser, sees the request and approves.
    let approver = browser(&driver).await;
    sign_in(&approver, &base, "abel", None).await;
    approver
        .goto(&format!("{base}/console/approvals"))
        .await
        .unwrap();
    let row = text_of(&approver, &format!("#request-{request_id}")).await;
    assert!(
        row.contains("CASE-1234") && row.contains("national_id"),
        "{row}"
    );
    screenshot(&approver, "approvals").await;
    assert_strict_headers(&approver).await;
    click(
        &approver,
        &format!("form[action='/console/approvals/{request_id}/approve'] button"),
    )
    .await;
    assert!(text_of(&approver, ".notice").await.contains("approved"));
    assert_no_console_errors(&approver, "approver").await;

    // The officer reveals the national id, under the approved ticket.
    officer.goto(record_url.as_str()).await.unwrap();
    click(&officer, "#reveal-form input[value=national_id]").await;
    fill(&officer, "#reveal-reason", "AML review of a flagged payout").await;
    fill(&officer, "#reveal-ticket", "CASE-1234").await;
    click(&officer, "#reveal-form button[type=submit]").await;
    let revealed = text_of(&officer, "#revealed").await;
    assert!(revealed.contains(NATIONAL_ID), "{revealed}");
    screenshot(&officer, "revealed").await;
    assert_no_console_errors(&officer, "officer").await;

    // The session cookie's flags, as the browser holds them.
    let cookies = officer.get_all_cookies().await.unwrap();
    let session = cookies
        .iter()
        .find(|c| c.name() == strongroom::console::SESSION_COOKIE)
        .expect("the session cookie");
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(session.path(), Some("/console"));
    assert_eq!(format!("{:?}", session.same_site()), "Some(Strict)");

    // The auditor sees the whole story in the audit page.
    let auditor = browser(&driver).await;
    sign_in(&auditor, &base, "audrey", None).await;
    auditor
        .goto(&format!("{base}/console/audit"))
        .await
        .unwrap();
    let entries = text_of(&auditor, "#entries").await;
    for action in [
        "record.search",
        "access.request",
        "access.approve",
        "record.reveal",
    ] {
        assert!(entries.contains(action), "{action} missing: {entries}");
    }
    assert!(entries.contains("CASE-1234"));
    assert!(!entries.contains(NATIONAL_ID));
    screenshot(&auditor, "audit").await;
    assert_strict_headers(&auditor).await;
    click(&auditor, "a[href='/console/audit/verify']").await;
    assert!(
        text_of(&auditor, "#chain-status")
            .await
            .contains("verifies")
    );
    assert_no_console_errors(&auditor, "auditor").await;

    // The admin pages.
    let admin = browser(&driver).await;
    sign_in(&admin, &base, "adam", None).await;
    for (path, name) in [
        ("/console/admin/principals", "admin-principals"),
        ("/console/admin/keys", "admin-keys"),
        ("/console/admin/routes", "admin-routes"),
    ] {
        admin.goto(&format!("{base}{path}")).await.unwrap();
        screenshot(&admin, name).await;
        assert_strict_headers(&admin).await;
    }
    assert_no_console_errors(&admin, "admin").await;

    for client in [officer, approver, auditor, admin] {
        client.close().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}
