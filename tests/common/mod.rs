//! Helpers shared by the integration tests.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use strongroom::access::Role;
use strongroom::api::{AppSettings, AppState, router};
use strongroom::clock::{Clock, SystemClock};
use strongroom::crypto::{KdfPolicy, PasswordPolicy};
use strongroom::keyring::{Keyring, KeyringSettings, SealMethod};
use strongroom::store::{Engine, Store};
use zeroize::Zeroizing;

pub mod pg;
pub mod process;
pub mod processor;
pub mod tls;

/// Keyring settings with a cheap Argon2id, so tests do not spend 64 MiB per
/// unseal. Production parameters are tested by the CLI tests.
pub fn fast_settings() -> KeyringSettings {
    KeyringSettings {
        kdf_policy: KdfPolicy::danger_insecure_for_tests(),
        ..KeyringSettings::default()
    }
}

pub const PASSPHRASE: &str = "correct horse battery staple";

/// Server settings for tests: a cheap password hash, a small body limit.
pub fn test_settings() -> AppSettings {
    AppSettings {
        body_limit_bytes: 4096,
        unseal_failures_per_minute: 5,
        password_policy: PasswordPolicy::danger_insecure_for_tests(),
        // Requests through `oneshot` share one client address: tests of the
        // collect limits set their own.
        collect: strongroom::config::CollectSettings {
            per_key_per_minute: 1_000_000,
            per_address_per_minute: 1_000_000,
            ..strongroom::config::CollectSettings::default()
        },
        // Tests destroy a KEK version right after rotating; the grace has
        // tests of its own (tests/rewrap.rs).
        kek_destroy_grace: time::Duration::ZERO,
        ..AppSettings::default()
    }
}

/// The origin test publishable keys allow (see [`publishable_key`]).
pub const TEST_ORIGIN: &str = "https://shop.example";

/// A new publishable key called `name` for the service `owner_id`, allowed
/// from `origins`, made through the API by `admin_key`; its `spk_` key.
pub async fn publishable_key(
    app: &axum::Router,
    admin_key: &str,
    name: &str,
    owner_id: &str,
    origins: &[&str],
) -> String {
    let reply = call(
        app,
        "POST",
        "/v1/principals",
        Some(admin_key),
        Some(serde_json::json!({"name": name, "kind": "publishable", "roles": ["collector"], "owner": owner_id, "allowed_origins": origins})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["api_key"].as_str().unwrap().to_owned()
}

/// Like [`call`], with extra request headers.
pub async fn call_with(
    app: &axum::Router,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<serde_json::Value>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut builder = axum::http::Request::builder().method(method).uri(path);
    if let Some(token) = bearer {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = match body {
        Some(value) => {
            builder = builder.header("content-type", "application/json");
            axum::body::Body::from(value.to_string())
        }
        None => axum::body::Body::empty(),
    };
    send_request(app, builder.body(body).unwrap()).await
}

/// [`call`] as a browser on [`TEST_ORIGIN`] would send it when `bearer` is
/// a publishable key (with `Origin`); as is otherwise.
pub async fn call_as(
    app: &axum::Router,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<serde_json::Value>,
) -> Reply {
    if bearer.is_some_and(|b| b.starts_with("spk_")) {
        call_with(app, method, path, bearer, body, &[("origin", TEST_ORIGIN)]).await
    } else {
        call(app, method, path, bearer, body).await
    }
}

/// A vault in a temporary directory, with its server state.
pub struct TestVault {
    pub dir: tempfile::TempDir,
    pub store: Arc<dyn Store>,
    pub keyring: Arc<Keyring>,
    pub state: AppState,
    pub shares: Vec<String>,
    pub admin_api_key: String,
}

impl TestVault {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// The router over this vault's state.
    pub fn app(&self) -> axum::Router {
        router(self.state.clone())
    }

    /// Another server state over the same vault, with other settings.
    pub fn state_with(&self, settings: AppSettings) -> AppState {
        AppState::new(
            Arc::clone(&self.keyring),
            Arc::clone(&self.store),
            Arc::new(SystemClock),
            settings,
        )
    }

    /// A new service principal with `role`; its API key.
    pub fn service(&self, name: &str, role: Role) -> String {
        self.state
            .create_service_now("test", name, vec![role])
            .unwrap()
            .expose_secret()
            .to_owned()
    }

    /// The id of the principal called `name`.
    pub fn principal_id(&self, name: &str) -> String {
        self.state
            .principals
            .list()
            .unwrap()
            .into_iter()
            .find(|p| p.name == name)
            .unwrap()
            .id
    }

    /// A new staff principal with `role` and `password`.
    pub fn staff(&self, name: &str, role: Role, password: &str) {
        self.state
            .create_staff_now("test", name, vec![role], password)
            .unwrap();
    }
}

/// The password of [`staff_vault`]'s people.
pub const STAFF_PASSWORD: &str = "a long staff password for tests";

/// A passphrase vault with one person of each staff role (`olivia` the
/// officer, `abel` the approver, `audrey` the auditor, `adam` the admin,
/// all with [`STAFF_PASSWORD`]) and a payment service; its API key.
pub fn staff_vault() -> (TestVault, String) {
    let vault = new_vault_with(
        SealMethod::Passphrase(Zeroizing::new(PASSPHRASE.into())),
        fast_settings(),
        Arc::new(SystemClock),
        test_settings(),
    );
    for (name, role) in [
        ("olivia", Role::ComplianceOfficer),
        ("abel", Role::ComplianceApprover),
        ("audrey", Role::Auditor),
        ("adam", Role::Admin),
    ] {
        vault.staff(name, role, STAFF_PASSWORD);
    }
    let payments = vault.service("payments", Role::PaymentService);
    (vault, payments)
}

pub fn new_vault_with(
    method: SealMethod,
    settings: KeyringSettings,
    clock: Arc<dyn Clock>,
    app: AppSettings,
) -> TestVault {
    vault_over(|store| store, method, settings, clock, app)
}

/// A vault of 2-of-3 shares whose store is wrapped in a [`FaultyStore`].
pub fn faulty_vault() -> (TestVault, Arc<FaultyStore>) {
    faulty_vault_with(fast_settings(), Arc::new(SystemClock))
}

/// [`faulty_vault`] with other keyring settings and clock.
pub fn faulty_vault_with(
    settings: KeyringSettings,
    clock: Arc<dyn Clock>,
) -> (TestVault, Arc<FaultyStore>) {
    faulty_vault_app(settings, clock, test_settings())
}

/// [`faulty_vault_with`] with other server settings too.
pub fn faulty_vault_app(
    settings: KeyringSettings,
    clock: Arc<dyn Clock>,
    app: AppSettings,
) -> (TestVault, Arc<FaultyStore>) {
    let mut faulty = None;
    let vault = vault_over(
        |sled| {
            let wrapped = Arc::new(FaultyStore::new(sled));
            faulty = Some(Arc::clone(&wrapped));
            wrapped
        },
        SealMethod::Shares {
            count: 3,
            threshold: 2,
        },
        settings,
        clock,
        app,
    );
    (vault, faulty.unwrap())
}

/// A new vault whose store is `wrap` applied to a fresh sled store.
fn vault_over(
    wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
    method: SealMethod,
    settings: KeyringSettings,
    clock: Arc<dyn Clock>,
    app: AppSettings,
) -> TestVault {
    let dir = tempfile::tempdir().unwrap();
    let store = wrap(open_store(&dir.path().join("data")));
    let init = Keyring::init(
        &dir.path().join("keys"),
        Arc::clone(&store),
        Arc::clone(&clock),
        settings,
        method,
    )
    .unwrap();
    let keyring = Arc::new(init.keyring);
    let state = AppState::new(Arc::clone(&keyring), Arc::clone(&store), clock, app);
    let admin = state
        .create_service_now("test", "admin", vec![Role::Admin])
        .unwrap();
    TestVault {
        dir,
        store,
        keyring,
        state,
        shares: init.shares.iter().map(|s| s.to_string()).collect(),
        admin_api_key: admin.expose_secret().to_owned(),
    }
}

pub fn new_vault(
    method: SealMethod,
    settings: KeyringSettings,
    clock: Arc<dyn Clock>,
) -> TestVault {
    new_vault_with(method, settings, clock, test_settings())
}

pub fn passphrase_vault() -> TestVault {
    new_vault(
        SealMethod::Passphrase(Zeroizing::new(PASSPHRASE.to_owned())),
        fast_settings(),
        Arc::new(SystemClock),
    )
}

pub fn shares_vault(count: u8, threshold: u8) -> TestVault {
    new_vault(
        SealMethod::Shares { count, threshold },
        fast_settings(),
        Arc::new(SystemClock),
    )
}

/// The store in `dir` with the engine found there, or a new one of the
/// default engine (what every in-process test vault runs on).
pub fn open_store(dir: &Path) -> Arc<dyn Store> {
    let engine = Engine::detect(dir).unwrap_or(Engine::DEFAULT);
    strongroom::store::open_engine(engine, dir, 64 << 20).unwrap()
}

/// Every audit entry in `vault`'s store, oldest first, as JSON.
pub fn audit_entries(vault: &TestVault) -> Vec<serde_json::Value> {
    vault
        .store
        .scan_prefix(b"au/e/")
        .unwrap()
        .iter()
        .map(|(_, v)| {
            serde_json::to_value(strongroom::audit::AuditEntry::from_stored(v).unwrap()).unwrap()
        })
        .collect()
}

/// Every file below `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// The files below `dirs` that contain `needle`, in raw bytes or as
/// lower- or upper-case hex.
pub fn files_containing(dirs: &[&Path], needle: &[u8]) -> Vec<PathBuf> {
    let forms = [
        needle.to_vec(),
        hex::encode(needle).into_bytes(),
        hex::encode_upper(needle).into_bytes(),
    ];
    let mut hits = Vec::new();
    for dir in dirs {
        for file in files_under(dir) {
            let bytes = std::fs::read(&file).unwrap();
            if forms
                .iter()
                .any(|f| !f.is_empty() && bytes.windows(f.len()).any(|w| w == f.as_slice()))
            {
                hits.push(file);
            }
        }
    }
    hits
}

/// An in-process answer from the router.
pub struct Reply {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    pub body: serde_json::Value,
}

/// Sends `request` through the router (`oneshot`).
pub async fn send_request(
    app: &axum::Router,
    request: axum::http::Request<axum::body::Body>,
) -> Reply {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
            String::from_utf8_lossy(&bytes).into(),
        ))
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// Only the status of [`call`]'s reply.
pub async fn status_of(
    app: &axum::Router,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<serde_json::Value>,
) -> u16 {
    call(app, method, path, bearer, body).await.status
}

/// One request through the router, as JSON when there is a body.
pub async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<serde_json::Value>,
) -> Reply {
    call_with(app, method, path, bearer, body, &[]).await
}

/// A blocking HTTP/1.1 exchange with `Connection: close`: status, headers
/// (lower-case names) and body.
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> HttpResponse {
    try_http(addr, method, path, bearer, body).unwrap()
}

/// Like [`http`], but a connection that fails or is cut (a killed server)
/// is an error instead of a panic.
pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    exchange(&mut stream, &addr.to_string(), method, path, bearer, body)
}

/// One HTTP/1.1 request with `Connection: close` over `stream` (plain TCP,
/// or TLS: see `tls::try_https`), and its response read to the end.
pub fn exchange<S: Read + Write>(
    stream: &mut S,
    host: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<HttpResponse> {
    exchange_with(stream, host, method, path, bearer, &[], body)
}

/// [`exchange`] with extra request headers (an `Origin`, say).
pub fn exchange_with<S: Read + Write>(
    stream: &mut S,
    host: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    extra_headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<HttpResponse> {
    let broken = |what: &str| std::io::Error::other(what.to_owned());
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(token) = bearer {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for (name, value) in extra_headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| broken("no complete response"))?;
    let head = String::from_utf8(raw[..split].to_vec()).map_err(|_| broken("head is not text"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| broken("no status"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v == "chunked")
    {
        body = dechunk(&body);
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// A store that, when told to, fails every commit that writes an audit
/// record: the injected "audit cannot be written" failure.
/// Something done to a store from outside, once.
type StoreHook = Box<dyn FnOnce(&dyn Store) + Send>;

pub struct FaultyStore {
    inner: Arc<dyn Store>,
    pub fail_audit: std::sync::atomic::AtomicBool,
    /// While true, every `flush` fails (after the writes were applied).
    pub fail_flushes: std::sync::atomic::AtomicBool,
    /// While true, `flush` waits (see [`FaultyStore::hold_flushes`]).
    flushes_held: Gate,
    /// While true, an `apply` that writes audit keys waits.
    audit_applies_held: Gate,
    /// Flushes begun, and flushes now waiting on the hold.
    pub flushes: std::sync::atomic::AtomicUsize,
    pub flushes_waiting: std::sync::atomic::AtomicUsize,
    /// Audited applies begun, and those now waiting on the hold.
    pub audit_applies: std::sync::atomic::AtomicUsize,
    pub audit_applies_waiting: std::sync::atomic::AtomicUsize,
    /// Runs once, on the inner store, before the next audited `apply`.
    before_audit_apply: std::sync::Mutex<Option<StoreHook>>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            fail_audit: std::sync::atomic::AtomicBool::new(false),
            fail_flushes: std::sync::atomic::AtomicBool::new(false),
            flushes_held: Gate::default(),
            audit_applies_held: Gate::default(),
            flushes: std::sync::atomic::AtomicUsize::new(0),
            flushes_waiting: std::sync::atomic::AtomicUsize::new(0),
            audit_applies: std::sync::atomic::AtomicUsize::new(0),
            audit_applies_waiting: std::sync::atomic::AtomicUsize::new(0),
            before_audit_apply: std::sync::Mutex::new(None),
        }
    }

    pub fn set_failing(&self, failing: bool) {
        self.fail_audit
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes every `flush` fail (the writes stay applied) until
    /// `set_flush_failing(false)`.
    pub fn set_flush_failing(&self, failing: bool) {
        self.fail_flushes
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes every `flush` wait until `hold_flushes(false)`.
    pub fn hold_flushes(&self, hold: bool) {
        self.flushes_held.set(hold);
    }

    /// Makes every `apply` of audit keys wait until
    /// `hold_audit_applies(false)`.
    pub fn hold_audit_applies(&self, hold: bool) {
        self.audit_applies_held.set(hold);
    }

    /// Writes behind the audit log's back, just before its next `apply`.
    pub fn before_next_audit_apply(&self, f: impl FnOnce(&dyn Store) + Send + 'static) {
        *self.before_audit_apply.lock().unwrap() = Some(Box::new(f));
    }
}

/// A flag that threads wait on while it is set.
#[derive(Default)]
struct Gate {
    closed: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

impl Gate {
    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.opened.notify_all();
    }

    /// Counts the caller in `waiting` while it waits for the gate to open.
    fn pass(&self, waiting: &std::sync::atomic::AtomicUsize) {
        use std::sync::atomic::Ordering::SeqCst;
        let mut closed = self.closed.lock().unwrap();
        waiting.fetch_add(1, SeqCst);
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
        waiting.fetch_sub(1, SeqCst);
    }
}

/// Polls `condition` every millisecond until it holds; panics after 10 s.
pub fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "waited 10 s for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

impl Store for FaultyStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, strongroom::store::StoreError> {
        self.inner.get(key)
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<strongroom::store::KeyValue>, strongroom::store::StoreError> {
        self.inner.scan(prefix, after, limit)
    }

    fn apply(
        &self,
        tx: strongroom::store::Transaction,
    ) -> Result<(), strongroom::store::StoreError> {
        let touches_audit = tx.written_keys().any(|k| k.starts_with(b"au/"));
        if touches_audit {
            self.audit_applies
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Taken before the hold: a hook set while an apply waits is for
            // the next one.
            let hook = self.before_audit_apply.lock().unwrap().take();
            self.audit_applies_held.pass(&self.audit_applies_waiting);
            if let Some(f) = hook {
                f(self.inner.as_ref());
            }
        }
        if touches_audit && self.fail_audit.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(strongroom::store::StoreError::Backend(
                "injected failure".into(),
            ));
        }
        self.inner.apply(tx)
    }

    fn flush(&self) -> Result<(), strongroom::store::StoreError> {
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.flushes_held.pass(&self.flushes_waiting);
        if self.fail_flushes.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(strongroom::store::StoreError::Backend(
                "injected sync failure".into(),
            ));
        }
        self.inner.flush()
    }

    fn snapshot(
        &self,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Result<(), strongroom::store::StoreError>,
    ) -> Result<(), strongroom::store::StoreError> {
        self.inner.snapshot(visit)
    }
}

/// One HTTPS request (HTTP/1.1, `Connection: close`) to `addr` as
/// `localhost`, through `config` (see [`TestCa::client_config`]): the
/// response, or an error if the connection, the handshake or the exchange
/// fails.
pub fn try_https(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<HttpResponse> {
    let mut stream = tls::tls_stream(addr, config)?;
    exchange(&mut stream, "localhost", method, path, bearer, body)
}

/// [`try_https`], which must succeed.
pub fn https(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> HttpResponse {
    try_https(addr, config, method, path, bearer, body).unwrap()
}

/// A log sink for tests: everything written to it, kept.
#[derive(Clone, Default)]
pub struct Captured(pub Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything logged by this test binary, at every level, without colours
/// (installed as the global subscriber on first use).
pub fn captured_log() -> Captured {
    static CAPTURE: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let captured = Captured::default();
            let writer = captured.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber).unwrap();
            captured
        })
        .clone()
}

/// Every word (run of letters and digits) of a log, with colour codes taken
/// out and the latencies (`micros=…`) left out: a CVC is a few digits, so
/// it is looked for as a whole word, which a random hex id cannot be, and
/// `cvc=123` holds the word `123`.
pub fn log_words(log: &str) -> std::collections::HashSet<String> {
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An escape sequence: `ESC [ … letter`.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .lines()
        .flat_map(|line| line.split(' '))
        .filter(|field| !field.starts_with("micros="))
        .flat_map(|field| field.split(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|word| !word.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The body of `GET path` as text, with its status and content type.
pub async fn text(app: &axum::Router, path: &str, bearer: Option<&str>) -> (u16, String, String) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut request = axum::http::Request::builder().uri(path);
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// One sample: its name, labels and value.
pub type Sample = (String, Vec<(String, String)>, f64);

/// Checks `text` against the Prometheus text exposition format 0.0.4 and
/// returns its samples as (name, labels, value).
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    let metric_name = |name: &str| {
        !name.is_empty()
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let kind = words.next().unwrap();
            if kind == "TYPE" {
                let name = words.next().unwrap();
                assert!(metric_name(name), "{line}");
                let ty = words.next().unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                    "{line}"
                );
            } else {
                assert_eq!(kind, "HELP", "{line}");
                assert!(metric_name(words.next().unwrap()), "{line}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                let mut labels = Vec::new();
                // Label values here never hold `",`; split on it.
                for pair in inner.split("\",") {
                    let (key, value) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                    assert!(metric_name(key), "{line}");
                    labels.push((key.to_owned(), value.trim_end_matches('"').to_owned()));
                }
                (name, labels)
            }
        };
        assert!(metric_name(name), "{line}");
        samples.push((name.to_owned(), labels, value));
    }
    samples
}

pub fn label<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The value of the sample `name` whose labels include all of `want`.
pub fn sample(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, labels, _)| n == name && want.iter().all(|(k, v)| label(labels, k) == Some(*v)))
        .map(|(_, _, value)| *value)
}
