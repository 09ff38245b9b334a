//! The outbound client: how card data leaves the vault, and where it may
//! not go (PAYMENT-PATH.md "What the relay refuses").
//!
//! - HTTPS only (the URL is checked, and the client is `https_only`), TLS
//!   1.2 or 1.3 through rustls, the certificate verified against the
//!   platform's roots or, when a route has a `ca_pem`, against that bundle
//!   **only** (the platform roots are then not consulted).
//! - No proxy from the environment (`HTTPS_PROXY` would otherwise send card
//!   data through whoever set it), no redirects (a 3xx comes back as it is:
//!   following one would let a processor, or whoever controls its DNS,
//!   send card data on to a destination no admin approved).
//! - Destination checks: a host name is resolved by [`CheckedResolver`],
//!   once per new connection, with `tokio::net::lookup_host`; if **any**
//!   address is not a global unicast address (see [`non_global`]) nothing
//!   is connected. The connector connects only to the addresses the
//!   resolver returned: there is no second lookup, so DNS rebinding (a
//!   first answer that is public, a second that is 127.0.0.1) has nothing
//!   to rebind. reqwest never calls the resolver for an IP-literal host, so
//!   [`Upstream::send`] checks literal addresses itself before anything is
//!   sent. `relay.allow_private_destinations` lifts the address check (for
//!   test and on-premise processors); nothing else.
//! - Pooled connections stay safe: reqwest keeps idle connections per
//!   (scheme, host, port) and client. A pooled connection was opened to an
//!   address that passed the check when it was opened, and its TLS session
//!   is bound to that host's verified certificate; reusing it sends to that
//!   same checked peer. A later DNS change cannot move an open connection,
//!   and a new connection goes through the resolver (and the check) again.
//!   Clients are per trust configuration (platform roots, or one `ca_pem`),
//!   so a connection verified against one route's CA is never reused for a
//!   route that trusts something else.
//! - Limits: connect timeout (`relay.connect_timeout_ms`), the whole
//!   request under the route's `timeout`, the answer's body read in chunks
//!   and refused as soon as it passes `relay.max_body_bytes` (never
//!   buffered beyond the cap). A compressed answer is refused (the relay
//!   asks for `identity`): masking must see the bytes the caller gets.
//!
//! This module must never log a request body, an answer body or a header
//! value: they hold card data and the processor's credentials.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use zeroize::Zeroizing;

/// Defaults, documented in docs/operations.md `[relay]`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(5000);
/// Distinct `ca_pem` trust configurations whose clients are kept.
const MAX_CLIENTS: usize = 64;

/// Configuration `[relay]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    /// Lifts the check against loopback, private, link-local and other
    /// non-global destination addresses. Off by default; `dev` sets it.
    pub allow_private_destinations: bool,
    /// The most an upstream answer's body may hold.
    pub max_body_bytes: usize,
    pub connect_timeout: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            allow_private_destinations: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// Why a destination is refused. Never holds a resolved address, a header
/// or a body; `NonGlobal` names the kind of range only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("not a URL")]
    Unparsable,
    #[error("only https:// destinations are allowed")]
    NotHttps,
    #[error("a destination may not carry a user name or password")]
    Userinfo,
    #[error("a base URL may not carry a query")]
    Query,
    #[error("a base URL may not carry a fragment")]
    Fragment,
    #[error("a destination needs a host")]
    NoHost,
    #[error("the request path must start with / and stay under the route's base path")]
    PathEscapes,
    #[error("the destination resolves to a {0} address")]
    NonGlobal(&'static str),
    #[error("the destination's host name does not resolve")]
    Unresolvable,
}

/// Why a relay could not be completed upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The destination is not allowed (422 `destination_refused`).
    #[error("destination refused: {0}")]
    Destination(#[from] DestinationError),
    /// Connecting, TLS (including an untrusted certificate) or the exchange
    /// failed (502 `upstream_unavailable`).
    #[error("upstream unavailable: {0}")]
    Unavailable(&'static str),
    /// The request did not finish within its time (504 `upstream_timeout`).
    #[error("upstream timed out")]
    Timeout,
    /// The answer's body passed the cap (502 `upstream_too_large`).
    #[error("upstream answer larger than the cap")]
    TooLarge,
    /// A route's `ca_pem` holds no usable certificate (422 `validation_failed`
    /// on `ca_pem`; route creation should have refused it).
    #[error("ca_pem holds no usable certificate")]
    InvalidCa,
}

/// One request to send. Everything in it has already been decided by the
/// caller: which headers (never the relay caller's `Authorization`), which
/// body (already spliced).
pub struct UpstreamRequest {
    /// The route's base URL (checked by [`check_base_url`] at creation).
    pub base_url: String,
    /// PEM bundle: when present, the only roots trusted for this request.
    pub ca_pem: Option<String>,
    /// The whole request: connect, send, answer and body.
    pub timeout: Duration,
    pub method: Method,
    /// Appended to the base URL: `/charges?expand=x`; empty for the base.
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for UpstreamRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamRequest")
            .field("method", &self.method)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// The answer, as the processor gave it (not yet masked).
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    /// Every header of the answer; the caller allow-lists what it passes on.
    pub headers: HeaderMap,
    pub body: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for UpstreamResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamResponse")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// Checks a route's base URL: `https`, a host, no user info, no query, no
/// fragment. Addresses are checked when a request is sent (a name may
/// resolve differently later), and an IP literal also here by
/// [`Upstream::check_literal`] when the caller has the settings.
pub fn check_base_url(text: &str) -> Result<Url, DestinationError> {
    let url = Url::parse(text).map_err(|_| DestinationError::Unparsable)?;
    if url.scheme() != "https" {
        return Err(DestinationError::NotHttps);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(DestinationError::Userinfo);
    }
    if url.query().is_some() {
        return Err(DestinationError::Query);
    }
    if url.fragment().is_some() {
        return Err(DestinationError::Fragment);
    }
    match url.host_str() {
        None | Some("") => Err(DestinationError::NoHost),
        Some(_) => Ok(url),
    }
}

/// The base URL with `path_and_query` appended, refused if the result
/// leaves the base path (`/../`, `%2e%2e`) or changes anything before it.
pub fn join(base: &Url, path_and_query: &str) -> Result<Url, DestinationError> {
    if !(path_and_query.is_empty() || path_and_query.starts_with('/'))
        || path_and_query.contains('#')
        || path_and_query.contains('\\')
    {
        return Err(DestinationError::PathEscapes);
    }
    let base_path = base.path().trim_end_matches('/');
    let mut text = String::with_capacity(base.as_str().len() + path_and_query.len());
    text.push_str(base.scheme());
    text.push_str("://");
    text.push_str(base.host_str().ok_or(DestinationError::NoHost)?);
    if let Some(port) = base.port() {
        text.push(':');
        text.push_str(&port.to_string());
    }
    text.push_str(base_path);
    text.push_str(path_and_query);
    let url = Url::parse(&text).map_err(|_| DestinationError::PathEscapes)?;
    let same_origin = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
        && url.username().is_empty()
        && url.password().is_none();
    let path = url.path();
    let under = base_path.is_empty()
        || path == base_path
        || path
            .strip_prefix(base_path)
            .is_some_and(|rest| rest.starts_with('/'));
    if same_origin && under {
        Ok(url)
    } else {
        Err(DestinationError::PathEscapes)
    }
}

/// `None` for a global unicast address, else the kind of range it is in.
/// IPv4-mapped, IPv4-compatible and NAT64 (64:ff9b::/96) IPv6 addresses are
/// judged by the IPv4 address they carry. For IPv6 only 2000::/3 is global
/// at all, less the special ranges in it.
pub fn non_global(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_global_v4(v4),
        IpAddr::V6(v6) => non_global_v6(v6),
    }
}

fn non_global_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let bits = u32::from(ip);
    let within = |net: u32, len: u32| bits >> (32 - len) == net >> (32 - len);
    if ip.is_unspecified() {
        Some("unspecified")
    } else if a == 0 {
        Some("this-network (0.0.0.0/8)")
    } else if a == 127 {
        Some("loopback")
    } else if a == 10 || within(0xac10_0000, 12) || (a == 192 && b == 168) {
        Some("private (RFC 1918)")
    } else if within(0x6440_0000, 10) {
        Some("shared (CGNAT 100.64.0.0/10)")
    } else if a == 169 && b == 254 {
        Some("link-local (incl. cloud metadata)")
    } else if a == 192 && b == 0 && c == 0 {
        Some("IETF protocol assignment (192.0.0.0/24)")
    } else if (a == 192 && b == 0 && c == 2)
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
    {
        Some("documentation")
    } else if a == 192 && b == 88 && c == 99 {
        Some("6to4 relay anycast")
    } else if within(0xc612_0000, 15) {
        Some("benchmarking (198.18.0.0/15)")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if (224..=239).contains(&a) {
        Some("multicast")
    } else if a >= 240 {
        Some("reserved (240.0.0.0/4)")
    } else {
        None
    }
}

fn non_global_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let bits = u128::from(ip);
    let within = |net: u128, len: u32| bits >> (128 - len) == net >> (128 - len);
    let embedded_v4 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if within(0xffff_0000_0000, 96) {
        // ::ffff:a.b.c.d, IPv4-mapped: as global as the IPv4 address.
        non_global_v4(embedded_v4)
    } else if within(0, 96) {
        // ::a.b.c.d, IPv4-compatible (deprecated).
        non_global_v4(embedded_v4).or(Some("IPv4-compatible (deprecated)"))
    } else if within(0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96) {
        // NAT64 well-known prefix: reaches the IPv4 address it carries.
        non_global_v4(embedded_v4)
    } else if ip.is_multicast() {
        Some("multicast")
    } else if within(0xfc00_0000_0000_0000_0000_0000_0000_0000, 7) {
        Some("unique local (fc00::/7)")
    } else if within(0xfe80_0000_0000_0000_0000_0000_0000_0000, 10) {
        Some("link-local (fe80::/10)")
    } else if within(0xfec0_0000_0000_0000_0000_0000_0000_0000, 10) {
        Some("site-local (deprecated)")
    } else if within(0x2001_0db8_0000_0000_0000_0000_0000_0000, 32)
        || within(0x3fff_0000_0000_0000_0000_0000_0000_0000, 20)
    {
        Some("documentation")
    } else if within(0x2001_0000_0000_0000_0000_0000_0000_0000, 23) {
        Some("IETF protocol assignment (2001::/23, incl. Teredo)")
    } else if within(0x2002_0000_0000_0000_0000_0000_0000_0000, 16) {
        Some("6to4 (2002::/16)")
    } else if s[0] & 0xe000 != 0x2000 {
        Some("reserved (outside 2000::/3)")
    } else {
        None
    }
}

/// The host of `url` if it is an IP literal (the URL parser has already
/// normalised `0x7f.1` and `2130706433` to `127.0.0.1`; IPv6 comes
/// bracketed).
fn literal_ip(url: &Url) -> Result<Option<IpAddr>, DestinationError> {
    let host = url.host_str().ok_or(DestinationError::NoHost)?;
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<Ipv6Addr>()
            .map(|ip| Some(IpAddr::V6(ip)))
            .map_err(|_| DestinationError::Unparsable);
    }
    Ok(host.parse::<Ipv4Addr>().ok().map(IpAddr::V4))
}

/// Refuses the list if any address is non-global (unless allowed), or if
/// it is empty.
pub fn check_addresses(addrs: &[IpAddr], allow_private: bool) -> Result<(), DestinationError> {
    if addrs.is_empty() {
        return Err(DestinationError::Unresolvable);
    }
    if allow_private {
        return Ok(());
    }
    match addrs.iter().find_map(|ip| non_global(*ip)) {
        Some(kind) => Err(DestinationError::NonGlobal(kind)),
        None => Ok(()),
    }
}

/// Resolves once with the system resolver and refuses the whole answer if
/// any address in it is non-global. The addresses it returns are the only
/// ones the connector tries.
#[derive(Debug, Clone)]
pub struct CheckedResolver {
    allow_private: bool,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|_| DestinationError::Unresolvable)?
                .collect();
            let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
            check_addresses(&ips, allow_private)?;
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// The relay's outbound client, one per process (`AppInner::relay_upstream`).
pub struct Upstream {
    settings: RelaySettings,
    resolver: Arc<CheckedResolver>,
    /// Per trust configuration: `None` = platform roots, else SHA-256 of
    /// the route's `ca_pem`.
    clients: Mutex<HashMap<Option<[u8; 32]>, reqwest::Client>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub fn new(settings: RelaySettings) -> Self {
        Self {
            resolver: Arc::new(CheckedResolver {
                allow_private: settings.allow_private_destinations,
            }),
            settings,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Refuses an IP-literal host in a non-global range (unless allowed).
    /// reqwest does not resolve literals, so this is their only check.
    pub fn check_literal(&self, url: &Url) -> Result<(), DestinationError> {
        let Some(ip) = literal_ip(url)? else {
            return Ok(());
        };
        check_addresses(&[ip], self.settings.allow_private_destinations)
    }

    fn client(&self, ca_pem: Option<&str>) -> Result<reqwest::Client, UpstreamError> {
        let key = ca_pem.map(|pem| crate::crypto::sha256(pem.as_bytes()));
        if let Ok(clients) = self.clients.lock()
            && let Some(client) = clients.get(&key)
        {
            return Ok(client.clone());
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            .connect_timeout(self.settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .dns_resolver(self.resolver.clone());
        builder = match ca_pem {
            None => builder.tls_built_in_root_certs(true),
            Some(pem) => {
                let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                    .map_err(|_| UpstreamError::InvalidCa)?;
                if certs.is_empty() {
                    return Err(UpstreamError::InvalidCa);
                }
                certs
                    .into_iter()
                    .fold(builder.tls_built_in_root_certs(false), |b, c| {
                        b.add_root_certificate(c)
                    })
            }
        };
        let client = builder.build().map_err(|e| {
            tracing::error!(error = %e, "relay client cannot be built");
            if ca_pem.is_some() {
                UpstreamError::InvalidCa
            } else {
                UpstreamError::Unavailable("no usable platform root certificates")
            }
        })?;
        if let Ok(mut clients) = self.clients.lock() {
            if clients.len() >= MAX_CLIENTS
                && let Some(old) = clients.keys().next().copied()
            {
                clients.remove(&old);
            }
            clients.insert(key, client.clone());
        }
        Ok(client)
    }

    /// Sends one request and reads its answer, within the limits.
    pub async fn send(&self, request: UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> {
        let base = check_base_url(&request.base_url)?;
        let url = join(&base, &request.path_and_query)?;
        self.check_literal(&url)?;
        let client = self.client(request.ca_pem.as_deref())?;
        let mut headers = request.headers;
        for name in [
            header::HOST,
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::CONNECTION,
            header::ACCEPT_ENCODING,
            header::TE,
            header::UPGRADE,
        ] {
            headers.remove(name);
        }
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let body: Vec<u8> = request.body.to_vec();
        let cap = self.settings.max_body_bytes;
        let exchange = async move {
            let mut response = client
                .request(request.method, url)
                .headers(headers)
                .body(body)
                .timeout(request.timeout)
                .send()
                .await
                .map_err(map_reqwest)?;
            if response.content_length().is_some_and(|n| n > cap as u64) {
                return Err(UpstreamError::TooLarge);
            }
            // Every content-encoding header and every coding in each: one
            // `gzip` anywhere means bytes the masking cannot read.
            let encoded = response
                .headers()
                .get_all(header::CONTENT_ENCODING)
                .iter()
                .flat_map(|v| v.as_bytes().split(|b| *b == b','))
                .any(|coding| !coding.trim_ascii().eq_ignore_ascii_case(b"identity"));
            if encoded {
                return Err(UpstreamError::Unavailable(
                    "the answer is compressed and cannot be masked",
                ));
            }
            let status = response.status();
            let headers = response.headers().clone();
            let content_type = headers.get(header::CONTENT_TYPE).cloned();
            let mut out = Zeroizing::new(Vec::with_capacity(
                response
                    .content_length()
                    .and_then(|n| usize::try_from(n).ok())
                    .unwrap_or(8 * 1024)
                    .min(cap),
            ));
            while let Some(chunk) = response.chunk().await.map_err(map_reqwest)? {
                if out.len() + chunk.len() > cap {
                    return Err(UpstreamError::TooLarge);
                }
                if out.capacity() < out.len() + chunk.len() {
                    // Grow by copying into a new zeroizing buffer, so the
                    // old one is wiped rather than freed with data in it.
                    let mut bigger = Zeroizing::new(Vec::with_capacity(
                        (out.capacity() * 2).max(out.len() + chunk.len()).min(cap),
                    ));
                    bigger.extend_from_slice(&out);
                    out = bigger;
                }
                out.extend_from_slice(&chunk);
            }
            Ok(UpstreamResponse {
                status,
                content_type,
                headers,
                body: out,
            })
        };
        tokio::time::timeout(request.timeout, exchange)
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }
}

/// A reqwest failure as an [`UpstreamError`]: the resolver's refusal if it
/// is one, then time-outs, then anything else as unavailable. The cause is
/// logged (it holds no body or header); the caller's answer does not say it.
fn map_reqwest(e: reqwest::Error) -> UpstreamError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<DestinationError>() {
            return UpstreamError::Destination(refused.clone());
        }
        source = s.source();
    }
    if e.is_timeout() {
        return UpstreamError::Timeout;
    }
    let connect = e.is_connect();
    tracing::warn!(error = %e.without_url(), "relay upstream failed");
    if connect {
        UpstreamError::Unavailable("could not connect or complete TLS")
    } else {
        UpstreamError::Unavailable("the exchange with the upstream failed")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap())
    }
    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().unwrap())
    }

    #[test]
    fn non_global_ipv4_ranges() {
        let refused = [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this-network"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("10.0.0.1", "RFC 1918"),
            ("10.255.255.255", "RFC 1918"),
            ("172.16.0.1", "RFC 1918"),
            ("172.31.255.255", "RFC 1918"),
            ("192.168.1.1", "RFC 1918"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.255", "CGNAT"),
            ("169.254.169.254", "link-local"),
            ("169.254.0.1", "link-local"),
            ("192.0.0.8", "IETF"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("192.88.99.1", "6to4"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "broadcast"),
        ];
        for (ip, kind) in refused {
            let got = non_global(v4(ip)).unwrap_or_else(|| panic!("{ip} passed"));
            assert!(got.contains(kind), "{ip}: {got}");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "169.253.255.255",
            "192.167.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "11.0.0.1",
        ] {
            assert_eq!(non_global(v4(ip)), None, "{ip}");
        }
    }

    #[test]
    fn non_global_ipv6_ranges() {
        let refused = [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.1.2.3", "RFC 1918"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:0.0.0.0", "unspecified"),
            ("::127.0.0.1", "loopback"),
            ("::8.8.8.8", "IPv4-compatible"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b:1::1", "reserved"),
            ("100::1", "reserved"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("ff0e::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("2001::1", "IETF"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
            ("2002:7f00:1::1", "6to4"),
            ("4000::1", "reserved"),
            ("::2", "this-network"),
        ];
        for (ip, kind) in refused {
            let got = non_global(v6(ip)).unwrap_or_else(|| panic!("{ip} passed"));
            assert!(got.contains(kind), "{ip}: {got}");
        }
        for ip in [
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2001:200::1",
            "3ffe::1",
        ] {
            assert_eq!(non_global(v6(ip)), None, "{ip}");
        }
    }

    #[test]
    fn one_bad_address_refuses_the_whole_answer() {
        let mixed = [v4("93.184.216.34"), v6("2606:4700::1"), v4("10.0.0.7")];
        assert_eq!(
            check_addresses(&mixed, false),
            Err(DestinationError::NonGlobal("private (RFC 1918)"))
        );
        assert_eq!(check_addresses(&mixed, true), Ok(()));
        assert_eq!(check_addresses(&mixed[..2], false), Ok(()));
        assert_eq!(
            check_addresses(&[], true),
            Err(DestinationError::Unresolvable)
        );
    }

    #[tokio::test]
    async fn the_resolver_refuses_localhost_which_is_loopback_in_every_form() {
        let resolver = CheckedResolver {
            allow_private: false,
        };
        let name: Name = "localhost".parse().unwrap();
        let e = match resolver.resolve(name).await {
            Ok(_) => panic!("localhost passed"),
            Err(e) => e,
        };
        assert!(matches!(
            e.downcast_ref::<DestinationError>(),
            Some(DestinationError::NonGlobal("loopback"))
        ));
        let allowed = CheckedResolver {
            allow_private: true,
        };
        let addrs: Vec<SocketAddr> = allowed
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }

    #[test]
    fn base_urls() {
        assert!(check_base_url("https://api.acme-pay.test/v1").is_ok());
        assert!(check_base_url("https://api.acme-pay.test:8443").is_ok());
        let cases = [
            ("http://api.acme-pay.test/v1", DestinationError::NotHttps),
            ("ftp://x/", DestinationError::NotHttps),
            ("https://u:p@api.test/", DestinationError::Userinfo),
            ("https://u@api.test/", DestinationError::Userinfo),
            ("https://api.test/v1?k=1", DestinationError::Query),
            ("https://api.test/v1#x", DestinationError::Fragment),
            ("not a url", DestinationError::Unparsable),
        ];
        for (url, want) in cases {
            assert_eq!(check_base_url(url).map(|_| ()), Err(want), "{url}");
        }
    }

    #[test]
    fn joined_paths_stay_under_the_base() {
        let base = check_base_url("https://api.test/v1").unwrap();
        assert_eq!(
            join(&base, "/charges?x=1").unwrap().as_str(),
            "https://api.test/v1/charges?x=1"
        );
        assert_eq!(join(&base, "").unwrap().as_str(), "https://api.test/v1");
        for bad in [
            "/../admin",
            "/%2e%2e/admin",
            "/x/../../admin",
            "charges",
            "/x#f",
            "/x\\..\\..\\y",
            "@evil.test/",
        ] {
            assert_eq!(
                join(&base, bad),
                Err(DestinationError::PathEscapes),
                "{bad}"
            );
        }
        let root = check_base_url("https://api.test").unwrap();
        assert_eq!(
            join(&root, "//evil.test/x").map(|u| u.host_str().map(str::to_owned)),
            Ok(Some("api.test".to_owned()))
        );
    }

    #[test]
    fn literal_addresses_are_checked_without_a_lookup() {
        let upstream = Upstream::new(RelaySettings::default());
        for url in [
            "https://127.0.0.1/",
            "https://10.0.0.1/",
            "https://169.254.169.254/latest",
            "https://[::1]/",
            "https://[::ffff:7f00:1]/",
            "https://0x7f.1/",
            "https://2130706433/",
        ] {
            let parsed = Url::parse(url).unwrap();
            assert!(
                matches!(
                    upstream.check_literal(&parsed),
                    Err(DestinationError::NonGlobal(_))
                ),
                "{url}"
            );
        }
        let lenient = Upstream::new(RelaySettings {
            allow_private_destinations: true,
            ..RelaySettings::default()
        });
        assert!(
            lenient
                .check_literal(&Url::parse("https://127.0.0.1/").unwrap())
                .is_ok()
        );
    }
}
