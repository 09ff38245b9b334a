//! Relay routes: where card data may go, under dual control.
//!
//! A route is created or changed by one admin and carries data only once a
//! different admin has approved that very version. The route itself (its
//! destination, methods, field allow-list, trusted CA, header names,
//! status and who did what) decides where card data goes, so it is stored
//! sealed with the keyring's state key under `rl/route/<name>`: edited on
//! disk (an `active` flipped in, a base URL swapped), it is an integrity
//! error, never a destination. The values of its configured headers (the
//! processor's own API key) are encrypted like a record — a fresh DEK under
//! the `generic` KEK, AAD naming the route and its version — under
//! `rl/headers/<name>`, and are never returned or logged.
//!
//! Nothing here knows HTTP or who may call what; it validates, stores and
//! returns transactions for the API to commit with their audit entries.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::clock::{Clock, rfc3339};
use crate::keyring::{Keyring, KeyringError, Purpose, RecordContext, SealedRecord};
use crate::records::{Invalid, RecordType};
use crate::store::{Store, StoreError, Transaction};

const ROUTE_PREFIX: &str = "rl/route/";
pub const HEADERS_PREFIX: &str = "rl/headers/";
/// The record type named in the AAD of sealed header values.
const HEADERS_CONTEXT: &str = "relay_route_headers";

/// Default whole-request timeout of a route.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
pub const MIN_TIMEOUT_MS: u64 = 100;
pub const MAX_TIMEOUT_MS: u64 = 60_000;
const MAX_NAME_LEN: usize = 64;
const MAX_BASE_URL_LEN: usize = 2048;
const MAX_HEADERS: usize = 32;
const MAX_HEADER_VALUE_LEN: usize = 4096;
const MAX_CA_PEM_LEN: usize = 64 * 1024;
const MAX_CA_CERTS: usize = 16;

/// Field names a route may allow-list, by record type. KYC fields go by
/// their dotted names. `cvc` is not stored: it comes from the in-memory
/// CVC store (see `crate::cvc`).
pub const CARD_FIELDS: [&str; 5] = ["pan", "exp_month", "exp_year", "holder_name", "cvc"];
pub const BANK_FIELDS: [&str; 5] = [
    "iban",
    "account_number",
    "routing_number",
    "country",
    "holder_name",
];
pub const KYC_FIELDS: [&str; 16] = [
    "legal_name.given",
    "legal_name.middle",
    "legal_name.family",
    "date_of_birth",
    "nationality",
    "address.line1",
    "address.line2",
    "address.city",
    "address.region",
    "address.postal_code",
    "address.country",
    "national_id.type",
    "national_id.number",
    "national_id.country",
    "email",
    "phone",
];

/// Whether `field` is a value of records of `record_type` a route can carry.
pub fn field_of(record_type: RecordType, field: &str) -> bool {
    match record_type {
        RecordType::Card => CARD_FIELDS.contains(&field),
        RecordType::BankAccount => BANK_FIELDS.contains(&field),
        RecordType::Kyc => KYC_FIELDS.contains(&field),
    }
}

fn known_field(field: &str) -> bool {
    RecordType::ALL.into_iter().any(|t| field_of(t, field))
}

/// Request headers a route may not configure: hop-by-hop headers, and
/// those the relay itself sets from the request (`host`, `content-length`,
/// `content-type`) or that would change how the body is framed.
const REFUSED_REQUEST_HEADERS: [&str; 13] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// Upstream response headers a route may not pass back: framing and
/// hop-by-hop headers (the vault frames its own answer), cookies (the
/// processor's session is the vault's, not the caller's), and the relay's
/// own marker.
const REFUSED_RESPONSE_HEADERS: [&str; 13] = [
    "content-length",
    "content-encoding",
    "set-cookie",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "x-strongroom-relay",
];

/// Errors of the route store.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored relay route is corrupt")]
    Corrupt,
}

/// Where a route stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RouteStatus {
    /// Created or changed; waits for a second admin.
    Pending,
    /// Approved: carries data.
    Active,
    /// Disabled by an admin; its header values are destroyed.
    Disabled,
}

/// The methods a route may forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum RelayMethod {
    #[serde(rename = "POST")]
    Post,
    #[serde(rename = "PUT")]
    Put,
    #[serde(rename = "PATCH")]
    Patch,
}

impl RelayMethod {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "POST" => Some(Self::Post),
            "PUT" => Some(Self::Put),
            "PATCH" => Some(Self::Patch),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
        }
    }
}

/// What an admin sends to create (or, whole, to replace) a route. Header
/// values are wiped when it is dropped.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteInput {
    /// 1–64 of `a-z 0-9 _ -`, starting with a letter or digit; not `routes`.
    /// On `PUT` it may be left out; if given it must be the path's name.
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    #[serde(default)]
    pub name: Option<String>,
    /// `https://host[:port][/path]`: no user info, query or fragment.
    #[schema(example = "https://api.acme-pay.test/v1")]
    pub base_url: String,
    /// A non-empty subset of `POST`, `PUT`, `PATCH`.
    #[schema(min_items = 1)]
    pub methods: Vec<String>,
    /// The values that may be placed into requests on this route.
    #[schema(example = json!(["pan", "exp_month", "exp_year", "cvc"]), min_items = 1)]
    pub fields: Vec<String>,
    /// PEM certificates: when given, the destination's certificate must
    /// chain to one of these instead of the platform roots.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// Headers sent on every request of this route (the processor's own
    /// credential). Values are sealed at rest and never returned.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Whole-request timeout, 100–60000 ms; default 10000.
    #[schema(minimum = 100, maximum = 60000)]
    #[serde(default, deserialize_with = "crate::records::whole_number::option")]
    pub timeout_ms: Option<u64>,
    /// Upstream response headers passed back to the caller besides
    /// `content-type`.
    #[serde(default)]
    pub response_headers: Vec<String>,
    /// Paths under `base_url` that callers may reach: a request's path must
    /// be one of these or lie below one (`/charges` allows `/charges` and
    /// `/charges/ch_1`). Empty: any path. Name only the processor's
    /// endpoints that take card data; an endpoint that reads stored data
    /// back would let a caller read what it relayed.
    #[schema(example = json!(["/charges", "/payment_intents"]))]
    #[serde(default)]
    pub paths: Vec<String>,
    /// Ids of the payment services that may invoke the route (its
    /// processor credential is theirs to use). Empty: any payment service.
    #[serde(default)]
    pub callers: Vec<String>,
}

impl Drop for RouteInput {
    fn drop(&mut self) {
        for value in self.headers.values_mut() {
            value.zeroize();
        }
    }
}

/// A validated route definition, ready to store.
pub struct RouteSpec {
    pub name: String,
    pub base_url: String,
    pub methods: Vec<RelayMethod>,
    pub fields: Vec<String>,
    pub ca_pem: Option<String>,
    /// Lower-case names and their values.
    pub headers: Vec<(String, Zeroizing<String>)>,
    pub timeout_ms: u64,
    pub response_headers: Vec<String>,
    pub paths: Vec<String>,
    pub callers: Vec<String>,
}

impl std::fmt::Debug for RouteSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteSpec")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field(
                "header_names",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Whether `name` can name a route. `routes` would shadow the admin paths.
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    first_ok
        && name.len() <= MAX_NAME_LEN
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && name != "routes"
}

fn header_name(raw: &str) -> Option<String> {
    let lower = raw.to_ascii_lowercase();
    axum::http::HeaderName::from_bytes(lower.as_bytes())
        .ok()
        .map(|_| lower)
}

/// Checks a CA bundle: PEM certificates only (no private key), each one a
/// usable trust anchor.
pub(crate) fn check_ca_pem(pem: &str) -> Result<(), &'static str> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    if pem.len() > MAX_CA_PEM_LEN {
        return Err("must be at most 64 KiB");
    }
    if rustls_pki_types::PrivateKeyDer::pem_slice_iter(pem.as_bytes())
        .next()
        .is_some()
    {
        return Err("must hold certificates only, never a private key");
    }
    let mut roots = rustls::RootCertStore::empty();
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|_| "is not valid PEM")?;
        roots
            .add(cert)
            .map_err(|_| "holds a certificate that cannot be a trust anchor")?;
        count += 1;
        if count > MAX_CA_CERTS {
            return Err("must hold at most 16 certificates");
        }
    }
    if count == 0 {
        return Err("must hold at least one PEM certificate");
    }
    Ok(())
}

/// Validates `input` for a route named `name` (the path's name on a
/// change, the body's on a create). `check_base_url` is the destination
/// check (`upstream::check_base_url`): https only, a host, no user info,
/// query or fragment. Errors name fields, never values.
pub fn validate(
    name: &str,
    input: &RouteInput,
    check_base_url: impl Fn(&str) -> bool,
) -> Result<RouteSpec, Vec<Invalid>> {
    let mut errors = Vec::new();
    let mut add = |field: &str, message: &'static str| {
        errors.push(Invalid {
            field: field.to_owned(),
            message,
        });
    };
    if !valid_name(name) {
        add(
            "name",
            "must be 1-64 of a-z, 0-9, _ and -, starting with a letter or digit, and not `routes`",
        );
    }
    if input.name.as_deref().is_some_and(|n| n != name) {
        add("name", "must be the route's name in the path");
    }
    let base_url = input.base_url.trim_end_matches('/').to_owned();
    if input.base_url.len() > MAX_BASE_URL_LEN || !check_base_url(&input.base_url) {
        add(
            "base_url",
            "must be an https:// URL with a host, and no user info, query or fragment",
        );
    }
    let mut methods = Vec::new();
    for raw in &input.methods {
        match RelayMethod::parse(raw) {
            Some(m) if !methods.contains(&m) => methods.push(m),
            Some(_) => add("methods", "must not repeat a method"),
            None => add("methods", "may hold only POST, PUT and PATCH"),
        }
    }
    if input.methods.is_empty() {
        add("methods", "must name at least one method");
    }
    let mut fields: Vec<String> = Vec::new();
    for field in &input.fields {
        if !known_field(field) {
            add(
                "fields",
                "holds a name that is no card, bank account or KYC field (see docs/payment-path.md)",
            );
        } else if fields.contains(field) {
            add("fields", "must not repeat a field");
        } else {
            fields.push(field.clone());
        }
    }
    if input.fields.is_empty() {
        add("fields", "must name at least one field");
    }
    if let Some(pem) = &input.ca_pem
        && let Err(message) = check_ca_pem(pem)
    {
        add("ca_pem", message);
    }
    if input.headers.len() > MAX_HEADERS {
        add("headers", "must hold at most 32 headers");
    }
    let mut headers: Vec<(String, Zeroizing<String>)> = Vec::new();
    for (raw_name, value) in &input.headers {
        let Some(lower) = header_name(raw_name) else {
            add("headers", "holds a name that is not a valid header name");
            continue;
        };
        if REFUSED_REQUEST_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-strongroom-") {
            add(
                "headers",
                "may not set host, content-length, content-type, hop-by-hop or x-strongroom- headers",
            );
            continue;
        }
        if headers.iter().any(|(n, _)| *n == lower) {
            add(
                "headers",
                "names a header twice (names are case-insensitive)",
            );
            continue;
        }
        if value.is_empty()
            || value.len() > MAX_HEADER_VALUE_LEN
            || axum::http::HeaderValue::from_str(value).is_err()
        {
            add(
                "headers",
                "holds a value that is empty, over 4096 bytes, or not a valid header value",
            );
            continue;
        }
        if value.contains("{{") {
            add("headers", "may not hold placeholders");
            continue;
        }
        headers.push((lower, Zeroizing::new(value.clone())));
    }
    let timeout_ms = input.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        add("timeout_ms", "must be between 100 and 60000");
    }
    let mut response_headers: Vec<String> = Vec::new();
    for raw in &input.response_headers {
        match header_name(raw) {
            Some(lower) if REFUSED_RESPONSE_HEADERS.contains(&lower.as_str()) => add(
                "response_headers",
                "may not name framing, hop-by-hop, content-type or x-strongroom-relay headers",
            ),
            Some(lower) if response_headers.contains(&lower) => {
                add("response_headers", "must not repeat a header")
            }
            Some(lower) => response_headers.push(lower),
            None => add(
                "response_headers",
                "holds a name that is not a valid header name",
            ),
        }
    }
    if input.response_headers.len() > MAX_HEADERS {
        add("response_headers", "must hold at most 32 headers");
    }
    let mut paths: Vec<String> = Vec::new();
    for raw in &input.paths {
        let path = if raw.len() > 1 {
            raw.trim_end_matches('/')
        } else {
            raw.as_str()
        };
        if raw.len() > 256
            || super::invoke::check_path(path).is_err()
            || path.contains("{{")
            || path.contains('?')
        {
            add(
                "paths",
                "holds a path that is not /-rooted, over 256 bytes, or has . or .. segments, ;, a query or placeholders",
            );
        } else if paths.iter().any(|p| p == path) {
            add("paths", "must not repeat a path");
        } else {
            paths.push(path.to_owned());
        }
    }
    if input.paths.len() > MAX_HEADERS {
        add("paths", "must hold at most 32 paths");
    }
    let mut callers: Vec<String> = Vec::new();
    for raw in &input.callers {
        if !crate::vault::has_issued_shape(raw, &["prn_"]) {
            add("callers", "holds something that is no principal id (prn_…)");
        } else if callers.contains(raw) {
            add("callers", "must not repeat a principal");
        } else {
            callers.push(raw.clone());
        }
    }
    if input.callers.len() > MAX_HEADERS {
        add("callers", "must hold at most 32 principals");
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(RouteSpec {
        name: name.to_owned(),
        base_url,
        methods,
        fields,
        ca_pem: input.ca_pem.clone(),
        headers,
        timeout_ms,
        response_headers,
        paths,
        callers,
    })
}

/// A stored route (authenticated with the state key). Holds no header
/// value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    pub base_url: String,
    pub methods: Vec<RelayMethod>,
    pub fields: Vec<String>,
    pub ca_pem: Option<String>,
    /// The configured headers' names; their values are sealed.
    pub header_names: Vec<String>,
    pub timeout_ms: u64,
    pub response_headers: Vec<String>,
    /// Paths under `base_url` callers may reach (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Payment services that may invoke the route (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callers: Vec<String>,
    pub status: RouteStatus,
    /// Counts changes; the approval and the sealed header values are bound
    /// to it.
    pub version: u64,
    pub created_by: String,
    pub created_at: String,
    /// Who replaced the definition last (`None` if never changed).
    pub changed_by: Option<String>,
    pub changed_at: Option<String>,
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
    pub disabled_by: Option<String>,
    pub disabled_at: Option<String>,
}

impl Route {
    /// The admin whose definition this version is: the last changer, else
    /// the creator. Neither may approve it.
    pub fn author(&self) -> &str {
        self.changed_by.as_deref().unwrap_or(&self.created_by)
    }

    /// Whether `admin` may approve this version: not its creator, not its
    /// last changer.
    pub fn approvable_by(&self, admin: &str) -> bool {
        admin != self.created_by && self.changed_by.as_deref() != Some(admin)
    }

    /// Whether a request may go to `path` (already checked by
    /// `invoke::check_path`) under the route's base.
    pub fn allows_path(&self, path: &str) -> bool {
        self.paths.is_empty()
            || self.paths.iter().any(|p| {
                p == "/"
                    || path == p
                    || path
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
    }

    /// Whether principal `id` may invoke the route.
    pub fn allows_caller(&self, id: &str) -> bool {
        self.callers.is_empty() || self.callers.iter().any(|c| c == id)
    }

    pub fn allows_method(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m.as_str() == method)
    }

    pub fn allows_field(&self, field: &str) -> bool {
        self.fields.iter().any(|f| f == field)
    }
}

/// Why an approval was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalError {
    NotFound,
    /// The approver created or last changed the route.
    OwnRoute,
    /// Already active, or disabled.
    NotPending(RouteStatus),
    /// The approver named a version, and the route is at another one: it
    /// changed since they read it.
    VersionChanged {
        current: u64,
    },
}

fn route_key(name: &str) -> String {
    format!("{ROUTE_PREFIX}{name}")
}

fn headers_key(name: &str) -> String {
    format!("{HEADERS_PREFIX}{name}")
}

/// The route store.
pub struct Routes {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    clock: Arc<dyn Clock>,
}

impl Routes {
    pub fn new(store: Arc<dyn Store>, keyring: Arc<Keyring>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            keyring,
            clock,
        }
    }

    fn seal_route(&self, route: &Route) -> Result<Vec<u8>, RouteError> {
        Ok(self
            .keyring
            .keys()?
            .state_key()?
            .seal_json(route_key(&route.name).as_bytes(), route)?)
    }

    fn header_context(route: &Route) -> RecordContext<'_> {
        RecordContext {
            id: &route.name,
            record_type: HEADERS_CONTEXT,
            version: route.version,
        }
    }

    /// The writes that store `spec`'s header values for `route`'s version
    /// (or delete them when there are none).
    fn header_writes(
        &self,
        route: &Route,
        spec: &RouteSpec,
        tx: Transaction,
    ) -> Result<Transaction, RouteError> {
        if spec.headers.is_empty() {
            return Ok(tx.delete(headers_key(&route.name)));
        }
        let map: BTreeMap<&str, &str> = spec
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let plaintext = Zeroizing::new(serde_json::to_vec(&map).map_err(|_| RouteError::Corrupt)?);
        let sealed =
            self.keyring
                .seal_record(Purpose::Generic, &Self::header_context(route), &plaintext)?;
        Ok(tx.put(headers_key(&route.name), sealed.encode()))
    }

    /// The KEK (purpose and version) the sealed header values stored at
    /// `key` (under [`HEADERS_PREFIX`], read as `value`) are wrapped under.
    pub fn headers_wrapped_under(value: &[u8]) -> Result<(Purpose, u32), RouteError> {
        Ok((Purpose::Generic, SealedRecord::decode(value)?.kek_version()))
    }

    /// The writes that move the DEK of the header values stored at `key`
    /// (read as `value`) onto the newest generic KEK, on the condition that
    /// they and their route are still as read; `None` when they already
    /// are there. Values of a route that no longer exists are deleted.
    pub fn rewrap_headers(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Transaction>, RouteError> {
        let name = std::str::from_utf8(key)
            .ok()
            .and_then(|key| key.strip_prefix(HEADERS_PREFIX))
            .ok_or(RouteError::Corrupt)?;
        let Some((route, route_bytes)) = self.get(name)? else {
            // Header values of a route that is gone: nothing reads them,
            // and they would keep their KEK version in use. They go.
            return Ok(Some(
                Transaction::new()
                    .expect(route_key(name), None)
                    .expect(key, Some(value.to_vec()))
                    .delete(key),
            ));
        };
        let sealed = SealedRecord::decode(value)?;
        let Some(rewrapped) =
            self.keyring
                .rewrap_record(Purpose::Generic, &Self::header_context(&route), &sealed)?
        else {
            return Ok(None);
        };
        Ok(Some(
            Transaction::new()
                .expect(route_key(name), Some(route_bytes))
                .expect(key, Some(value.to_vec()))
                .put(key, rewrapped.encode()),
        ))
    }

    /// A route and its stored bytes (for a transaction's precondition).
    pub fn get(&self, name: &str) -> Result<Option<(Route, Vec<u8>)>, RouteError> {
        if !valid_name(name) {
            return Ok(None);
        }
        let key = route_key(name);
        let Some(bytes) = self.store.get(key.as_bytes())? else {
            return Ok(None);
        };
        let route: Route = self
            .keyring
            .keys()?
            .state_key()?
            .open_json(key.as_bytes(), &bytes)?;
        if route.name != name {
            return Err(RouteError::Corrupt);
        }
        Ok(Some((route, bytes)))
    }

    /// Every route, by name.
    pub fn list(&self) -> Result<Vec<Route>, RouteError> {
        let keys = self.keyring.keys()?;
        let state_key = keys.state_key()?;
        let mut routes = Vec::new();
        for (key, bytes) in self.store.scan_prefix(ROUTE_PREFIX.as_bytes())? {
            let route: Route = state_key.open_json(&key, &bytes)?;
            if key != route_key(&route.name).as_bytes() {
                return Err(RouteError::Corrupt);
            }
            routes.push(route);
        }
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(routes)
    }

    /// A new pending route by `admin`, and its writes (on condition that
    /// no route of that name exists).
    pub fn prepare_create(
        &self,
        spec: &RouteSpec,
        admin: &str,
    ) -> Result<(Route, Transaction), RouteError> {
        let now = rfc3339(self.clock.now());
        let route = Route {
            version: 1,
            created_by: admin.to_owned(),
            created_at: now,
            changed_by: None,
            changed_at: None,
            ..Self::pending(spec, &spec.name)
        };
        self.write(route, None, spec)
    }

    /// Replaces `current` (read as `stored`) with `spec` by `admin`: the
    /// next version, pending again, whatever the status was.
    pub fn prepare_change(
        &self,
        current: &Route,
        stored: Vec<u8>,
        spec: &RouteSpec,
        admin: &str,
    ) -> Result<(Route, Transaction), RouteError> {
        let route = Route {
            version: current.version + 1,
            created_by: current.created_by.clone(),
            created_at: current.created_at.clone(),
            changed_by: Some(admin.to_owned()),
            changed_at: Some(rfc3339(self.clock.now())),
            ..Self::pending(spec, &current.name)
        };
        self.write(route, Some(stored), spec)
    }

    /// `spec` as a pending, unapproved route named `name` (who and when
    /// are the caller's to fill in).
    fn pending(spec: &RouteSpec, name: &str) -> Route {
        Route {
            name: name.to_owned(),
            base_url: spec.base_url.clone(),
            methods: spec.methods.clone(),
            fields: spec.fields.clone(),
            ca_pem: spec.ca_pem.clone(),
            header_names: spec.headers.iter().map(|(n, _)| n.clone()).collect(),
            timeout_ms: spec.timeout_ms,
            response_headers: spec.response_headers.clone(),
            paths: spec.paths.clone(),
            callers: spec.callers.clone(),
            status: RouteStatus::Pending,
            version: 0,
            created_by: String::new(),
            created_at: String::new(),
            changed_by: None,
            changed_at: None,
            approved_by: None,
            approved_at: None,
            disabled_by: None,
            disabled_at: None,
        }
    }

    /// The writes of `route` (on condition that the stored route is still
    /// `stored`, or that there is none) and of its sealed header values.
    fn write(
        &self,
        route: Route,
        stored: Option<Vec<u8>>,
        spec: &RouteSpec,
    ) -> Result<(Route, Transaction), RouteError> {
        let key = route_key(&route.name);
        let tx = Transaction::new()
            .expect(key.clone(), stored)
            .put(key, self.seal_route(&route)?);
        let tx = self.header_writes(&route, spec, tx)?;
        Ok((route, tx))
    }

    /// A precondition that route `name` is still as read (`stored`): a
    /// relay reserves it with its audit entries, so a route disabled or
    /// changed first stops the call before anything is sent.
    pub fn expect_unchanged(&self, name: &str, stored: Vec<u8>) -> Transaction {
        Transaction::new().expect(route_key(name), Some(stored))
    }

    /// The writes that approve route `name` by `admin`.
    pub fn prepare_approve(
        &self,
        name: &str,
        admin: &str,
        seen_version: Option<u64>,
    ) -> Result<Result<(Route, Transaction), ApprovalError>, RouteError> {
        let Some((route, stored)) = self.get(name)? else {
            return Ok(Err(ApprovalError::NotFound));
        };
        if let Some(seen) = seen_version
            && seen != route.version
        {
            return Ok(Err(ApprovalError::VersionChanged {
                current: route.version,
            }));
        }
        if !route.approvable_by(admin) {
            return Ok(Err(ApprovalError::OwnRoute));
        }
        if route.status != RouteStatus::Pending {
            return Ok(Err(ApprovalError::NotPending(route.status)));
        }
        let approved = Route {
            status: RouteStatus::Active,
            approved_by: Some(admin.to_owned()),
            approved_at: Some(rfc3339(self.clock.now())),
            ..route
        };
        let key = route_key(name);
        let tx = Transaction::new()
            .expect(key.clone(), Some(stored))
            .put(key, self.seal_route(&approved)?);
        Ok(Ok((approved, tx)))
    }

    /// The writes that disable route `name` by `admin` and destroy its
    /// header values; `None` if there is no such route.
    pub fn prepare_disable(
        &self,
        name: &str,
        admin: &str,
    ) -> Result<Option<(Route, Transaction)>, RouteError> {
        let Some((route, stored)) = self.get(name)? else {
            return Ok(None);
        };
        let disabled = Route {
            status: RouteStatus::Disabled,
            header_names: Vec::new(),
            disabled_by: Some(admin.to_owned()),
            disabled_at: Some(rfc3339(self.clock.now())),
            ..route
        };
        let key = route_key(name);
        let tx = Transaction::new()
            .expect(key.clone(), Some(stored))
            .put(key, self.seal_route(&disabled)?)
            .delete(headers_key(name));
        Ok(Some((disabled, tx)))
    }

    /// The configured header values of `route` (its current version).
    pub fn header_values(
        &self,
        route: &Route,
    ) -> Result<Vec<(String, Zeroizing<String>)>, RouteError> {
        if route.header_names.is_empty() {
            return Ok(Vec::new());
        }
        let bytes = self
            .store
            .get(headers_key(&route.name).as_bytes())?
            .ok_or(RouteError::Corrupt)?;
        let sealed = SealedRecord::decode(&bytes)?;
        let plaintext =
            self.keyring
                .open_record(Purpose::Generic, &Self::header_context(route), &sealed)?;
        let map: BTreeMap<String, String> =
            serde_json::from_slice(&plaintext).map_err(|_| RouteError::Corrupt)?;
        let mut out = Vec::with_capacity(map.len());
        for (name, value) in map {
            // The sealed names must be the authenticated route's names.
            if !route.header_names.contains(&name) {
                return Err(RouteError::Corrupt);
            }
            out.push((name, Zeroizing::new(value)));
        }
        if out.len() != route.header_names.len() {
            return Err(RouteError::Corrupt);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: serde_json::Value) -> RouteInput {
        serde_json::from_value(json).unwrap()
    }

    fn https(url: &str) -> bool {
        url.starts_with("https://") && url.len() > 8
    }

    #[test]
    fn names() {
        for ok in ["acme", "a", "acme-pay_2", "0x"] {
            assert!(valid_name(ok), "{ok}");
        }
        let long = "a".repeat(65);
        for bad in [
            "",
            "Acme",
            "-a",
            "_a",
            "a/b",
            "a.b",
            "routes",
            long.as_str(),
            "a b",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_full_route_validates_and_normalises() {
        let spec = validate(
            "acme",
            &input(serde_json::json!({
                "name": "acme",
                "base_url": "https://api.acme.test/v1/",
                "methods": ["POST", "PATCH"],
                "fields": ["pan", "exp_month", "cvc", "national_id.number", "iban"],
                "headers": {"Authorization": "Bearer sk_live_1", "X-Api-Version": "2024-01"},
                "response_headers": ["Request-Id"],
            })),
            https,
        )
        .unwrap();
        assert_eq!(spec.base_url, "https://api.acme.test/v1");
        assert_eq!(spec.methods, [RelayMethod::Post, RelayMethod::Patch]);
        assert_eq!(spec.timeout_ms, DEFAULT_TIMEOUT_MS);
        let names: Vec<&str> = spec.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["authorization", "x-api-version"]);
        assert_eq!(spec.response_headers, ["request-id"]);
        assert!(!format!("{spec:?}").contains("sk_live_1"));
    }

    #[test]
    fn bad_routes_name_their_fields_and_never_echo_values() {
        let cases = [
            (
                serde_json::json!({"base_url": "http://x", "methods": ["POST"], "fields": ["pan"]}),
                "base_url",
            ),
            (
                serde_json::json!({"base_url": "https://x", "methods": ["GET"], "fields": ["pan"]}),
                "methods",
            ),
            (
                serde_json::json!({"base_url": "https://x", "methods": [], "fields": ["pan"]}),
                "methods",
            ),
            (
                serde_json::json!({"base_url": "https://x", "methods": ["POST", "POST"], "fields": ["pan"]}),
                "methods",
            ),
            (
                serde_json::json!({"base_url": "https://x", "methods": ["POST"], "fields": ["cvv"]}),
                "fields",
            ),
            (
                serde_json::json!({"base_url": "https://x", "methods": ["POST"], "fields": []}),
                "fields",
            ),
            (
                serde_json::json!({"base_url": "https://x", "methods": ["POST"], "fields": ["legal_name"]}),
                "fields",
            ),
            (
                serde_json::json!({"base_url": "https://x", "methods": ["POST"], "fields": ["pan"], "headers": {"Host": "evil"}}),
                "headers",
            ),
            (
                serde_json::json!({"base_url": "https://x", "methods": ["POST"], "fields": ["pan"], "headers": {"content-length": "1"}}),
                "headers",
            ),
            (
                serde_json::json!({"base_url": "https://x", "methods": ["POST"], "fields": ["pan"], "headers": {"transfer-encoding": "chunked"}}),
                "headers",
            ),
            (
                serde_json::json!({"base_url": "https://x", "methods": ["POST"], "fields": ["pan"], "headers": {"bad name": "v"}}),
                "headers",
            ),
            (
                serde_json::json!({"base_url": "https://x", "methods": ["POST"], "fields": ["pan"], "headers": {"x-k": "a\r\nInjected: 1"}}),
                "headers",
            ),
            (
                serde_json::json!({"base_url": "https://x", "methods": ["POST"], "fields": ["pan"], "headers": {"x-k": "{{tok:pan}}"}}),
                "headers",
            ),
            (
                serde_json::json!({"base_url": "https://x", "methods": ["POST"], "fields": ["pan"], "headers": {"a": "1", "A": "2"}}),
                "headers",
            ),
            (
                serde_json::json!({"base_url": "https://x", "methods": ["POST"], "fields": ["pan"], "timeout_ms": 99}),
                "timeout_ms",
            ),
            (
                serde_json::json!({"base_url": "https://x", "methods": ["POST"], "fields": ["pan"], "timeout_ms": 60001}),
                "timeout_ms",
            ),
            (
                serde_json::json!({"base_url": "https://x", "methods": ["POST"], "fields": ["pan"], "ca_pem": "not pem"}),
                "ca_pem",
            ),
            (
                serde_json::json!({"base_url": "https://x", "methods": ["POST"], "fields": ["pan"], "response_headers": ["content-length"]}),
                "response_headers",
            ),
            (
                serde_json::json!({"name": "other", "base_url": "https://x", "methods": ["POST"], "fields": ["pan"]}),
                "name",
            ),
        ];
        for (json, field) in cases {
            let text = json.to_string();
            let errors = validate("acme", &input(json), https).unwrap_err();
            assert!(
                errors.iter().any(|e| e.field == field),
                "{text}: {errors:?}"
            );
            for e in &errors {
                assert!(!e.message.contains("evil") && !e.message.contains("Injected"));
            }
        }
    }

    /// An active route `acme` created by `prn_a`, for the tests to vary.
    fn route() -> Route {
        Route {
            name: "acme".into(),
            base_url: "https://x".into(),
            methods: vec![RelayMethod::Post],
            fields: vec!["pan".into()],
            ca_pem: None,
            header_names: Vec::new(),
            timeout_ms: 1000,
            response_headers: Vec::new(),
            paths: Vec::new(),
            callers: Vec::new(),
            status: RouteStatus::Active,
            version: 1,
            created_by: "prn_a".into(),
            created_at: String::new(),
            changed_by: None,
            changed_at: None,
            approved_by: None,
            approved_at: None,
            disabled_by: None,
            disabled_at: None,
        }
    }

    #[test]
    fn approval_is_for_someone_else() {
        let route = Route {
            status: RouteStatus::Pending,
            version: 2,
            changed_by: Some("prn_b".into()),
            ..route()
        };
        assert!(!route.approvable_by("prn_a"));
        assert!(!route.approvable_by("prn_b"));
        assert!(route.approvable_by("prn_c"));
        assert_eq!(route.author(), "prn_b");
    }

    #[test]
    fn paths_and_callers_bound_a_route() {
        let spec = validate(
            "acme",
            &input(
                serde_json::json!({"base_url": "https://x", "methods": ["POST"], "fields": ["pan"],
                "paths": ["/charges/", "/tokens"], "callers": ["prn_0123456789abcdef01234567"]}),
            ),
            https,
        )
        .unwrap();
        assert_eq!(spec.paths, ["/charges", "/tokens"]);
        let route = Route {
            paths: spec.paths.clone(),
            callers: spec.callers.clone(),
            ..route()
        };
        for ok in ["/charges", "/charges/ch_1", "/tokens"] {
            assert!(route.allows_path(ok), "{ok}");
        }
        for bad in ["/chargesx", "/customers/cus_1", "/", "/token"] {
            assert!(!route.allows_path(bad), "{bad}");
        }
        assert!(route.allows_caller("prn_0123456789abcdef01234567"));
        assert!(!route.allows_caller("prn_ffffffffffffffffffffffff"));
        for (json, field) in [
            (serde_json::json!(["charges"]), "paths"),
            (serde_json::json!(["/a/../b"]), "paths"),
            (serde_json::json!(["/a;x"]), "paths"),
            (serde_json::json!(["/a?b=1"]), "paths"),
        ] {
            let body = serde_json::json!({"base_url": "https://x", "methods": ["POST"], "fields": ["pan"], "paths": json});
            let errors = validate("acme", &input(body), https).unwrap_err();
            assert!(errors.iter().any(|e| e.field == field), "{json}");
        }
        let body = serde_json::json!({"base_url": "https://x", "methods": ["POST"], "fields": ["pan"], "callers": ["payments"]});
        let errors = validate("acme", &input(body), https).unwrap_err();
        assert!(errors.iter().any(|e| e.field == "callers"));
    }

    #[test]
    fn fields_belong_to_their_record_types() {
        assert!(field_of(RecordType::Card, "cvc"));
        assert!(!field_of(RecordType::Card, "iban"));
        assert!(field_of(RecordType::BankAccount, "holder_name"));
        assert!(field_of(RecordType::Kyc, "national_id.number"));
        assert!(!field_of(RecordType::Kyc, "pan"));
    }
}
