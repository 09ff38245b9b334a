//! TLS at the edge: the server certificate `serve` presents, the client
//! certificates it asks for, and the accept loop that serves the API over
//! HTTPS (or, for `dev` and `tls.disabled`, plain HTTP).
//!
//! This module owns connections, not requests: it hands every request to
//! the router with the client's address (`ConnectInfo<SocketAddr>`) and the
//! client certificate the connection presented ([`PeerCertificate`]), and
//! leaves deciding what a certificate is worth to `api` (a principal bound
//! to certificates). It must never log key material, and never let one slow
//! or silent client hold up accepting the next one: every handshake runs in
//! a task of its own, under [`HANDSHAKE_TIMEOUT`].

use std::fs::File;
use std::io::Read as _;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use zeroize::Zeroizing;

/// How long a client may take over its TLS handshake before the
/// connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request's head (HTTP/1.1) once
/// connected: a slow-loris connection is closed after this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stop waits for open connections to finish once asked to
/// (idle ones close at once; a request in flight is answered). A client
/// that never reads its connection's shutdown notice (an HTTP/2 GOAWAY is
/// acknowledged by the client) cannot keep the server, and its keys, up
/// beyond this.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The largest certificate, key or CA file read (a bundle of a few hundred
/// certificates fits; a file of gigabytes is not read into memory).
const MAX_PEM_FILE: u64 = 1024 * 1024;

/// A start-up error about the TLS files, said plainly; never holds any of
/// their contents.
#[derive(Debug, thiserror::Error)]
#[error("tls: {0}")]
pub struct TlsError(pub String);

/// The client certificate the request's connection presented (and the TLS
/// layer verified against `tls.client_ca_file`), as fingerprints; `None`
/// for a connection without one, and for every plain-HTTP connection. Put
/// on every request by [`serve`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCertificate(pub Option<CertificateFingerprints>);

/// A certificate's fingerprints, lowercase hex: what `client_cert_sha256`
/// binds a principal to. Fingerprints are not secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFingerprints {
    /// SHA-256 of the certificate (DER).
    pub cert_sha256: String,
    /// SHA-256 of its SubjectPublicKeyInfo (DER): unchanged when the same
    /// key is certified again, so a binding may survive a renewal.
    pub spki_sha256: String,
}

impl CertificateFingerprints {
    /// The fingerprints of a DER certificate; `None` if its
    /// SubjectPublicKeyInfo cannot be found (never for a certificate the
    /// TLS layer verified).
    pub fn of(der: &[u8]) -> Option<Self> {
        let spki = subject_public_key_info(der)?;
        Some(Self {
            cert_sha256: sha256_hex(der),
            spki_sha256: sha256_hex(spki),
        })
    }

    /// Whether either fingerprint is one of `bound`.
    pub fn matches_any(&self, bound: &[String]) -> bool {
        bound
            .iter()
            .any(|b| *b == self.cert_sha256 || *b == self.spki_sha256)
    }
}

impl PeerCertificate {
    /// Whether the connection presented one of the certificates (or keys)
    /// in `bound`.
    pub fn matches_any(&self, bound: &[String]) -> bool {
        self.0.as_ref().is_some_and(|f| f.matches_any(bound))
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(crate::crypto::sha256(bytes))
}

/// One DER element, and what follows it.
struct DerElement<'a> {
    tag: u8,
    /// Header and contents.
    whole: &'a [u8],
    contents: &'a [u8],
    rest: &'a [u8],
}

/// The DER element at the start of `input`. Definite lengths only (DER
/// has no other), of at most four length bytes.
fn der_element(input: &[u8]) -> Option<DerElement<'_>> {
    let (&tag, after_tag) = input.split_first()?;
    let (&first, after_first) = after_tag.split_first()?;
    let (length, body) = if first < 0x80 {
        (usize::from(first), after_first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, body) = after_first.split_at_checked(count)?;
        let length = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (length, body)
    };
    let header = input.len().checked_sub(body.len())?;
    let (contents, rest) = body.split_at_checked(length)?;
    let whole = input.get(..header.checked_add(length)?)?;
    Some(DerElement {
        tag,
        whole,
        contents,
        rest,
    })
}

/// The SubjectPublicKeyInfo (the whole DER element) of an X.509
/// certificate (RFC 5280 §4.1): the seventh field of `tbsCertificate`, or
/// the sixth when the optional `[0] version` is absent.
fn subject_public_key_info(der: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const VERSION: u8 = 0xa0;
    let certificate = der_element(der).filter(|e| e.tag == SEQUENCE)?;
    let tbs = der_element(certificate.contents).filter(|e| e.tag == SEQUENCE)?;
    let mut fields = tbs.contents;
    if fields.first() == Some(&VERSION) {
        fields = der_element(fields)?.rest;
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        fields = der_element(fields)?.rest;
    }
    let spki = der_element(fields).filter(|e| e.tag == SEQUENCE)?;
    Some(spki.whole)
}

/// Reads a PEM file for TLS after checking who may change (and, for a
/// private key, read) it: the same rule as `keys/` (docs/operations.md).
/// The check and the read are on the same open file, so the file checked
/// is the file read.
fn read_pem_file(
    setting: &str,
    path: &Path,
    private: bool,
) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    let file = File::open(path)
        .map_err(|e| TlsError(format!("{setting} {} cannot be read: {e}", path.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| TlsError(format!("{setting} {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(TlsError(format!(
            "{setting} {} is not a file",
            path.display()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if private && mode & 0o077 != 0 {
        return Err(TlsError(format!(
            "{setting} {} is a private key open to group or others (mode {mode:o}); chmod 600 it",
            path.display()
        )));
    }
    if !private && mode & 0o022 != 0 {
        return Err(TlsError(format!(
            "{setting} {} may be changed by group or others (mode {mode:o}); chmod 644 it",
            path.display()
        )));
    }
    // Whoever owns the file can change its mode and its contents: the
    // user the server runs as, or root (the owner of /proc/self is this
    // process's effective user).
    if let Ok(me) = std::fs::metadata("/proc/self")
        && meta.uid() != me.uid()
        && meta.uid() != 0
    {
        return Err(TlsError(format!(
            "{setting} {} belongs to user {}, neither root nor the user the server runs as ({}); chown it",
            path.display(),
            meta.uid(),
            me.uid()
        )));
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| TlsError(format!("{setting} {}: {e}", path.display())))?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_PEM_FILE {
        return Err(TlsError(format!(
            "{setting} {} is larger than 1 MiB",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Every certificate in a PEM file, in order; at least one.
fn certificates(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem_file(setting, path, false)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            TlsError(format!(
                "{setting} {} is not a PEM file of certificates",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{setting} {} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")",
            path.display()
        )));
    }
    Ok(certs)
}

/// The rustls server configuration of `serve`: this certificate chain and
/// key (PEM), TLS 1.3 and 1.2 only, with the ring provider, HTTP/2 and
/// HTTP/1.1 offered by ALPN. With `client_ca_file`, a client certificate
/// is asked for and, when one is presented, verified against that CA (a
/// presented certificate that does not verify ends the handshake); a
/// client without one may still connect, as an unbound principal.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates("tls.cert_file", cert_file)?;
    let key_pem = read_pem_file("tls.key_file", key_file, true)?;
    // The parser's error could quote a line of the file: not repeated.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        TlsError(format!(
            "tls.key_file {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            key_file.display()
        ))
    })?;
    drop(key_pem);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError(format!("cannot offer TLS 1.2 and 1.3: {e}")))?;
    let builder = match client_ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates("tls.client_ca_file", path)? {
                roots.add(cert).map_err(|e| {
                    TlsError(format!(
                        "tls.client_ca_file {} holds a certificate that cannot be a CA: {e}",
                        path.display()
                    ))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError(format!("tls.client_ca_file {}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError(format!(
            "tls.cert_file {} and tls.key_file {} do not make a usable certificate: {e}",
            cert_file.display(),
            key_file.display()
        ))
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `app` on `listener` until `signal` resolves: over TLS with
/// `tls`, else plain HTTP. Each connection is served in a task of its own
/// (a TLS handshake first, under [`HANDSHAKE_TIMEOUT`]), HTTP/1.1 or
/// HTTP/2, and each request carries `ConnectInfo<SocketAddr>` and a
/// [`PeerCertificate`]. On the signal it stops accepting, lets requests in
/// flight finish, and returns once every connection has closed, or after
/// [`SHUTDOWN_GRACE`] with those still open left to be dropped with the
/// runtime.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    app: Router,
    signal: impl Future<Output = ()> + Send + 'static,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    // Dropping `stop_rx` (on the signal) closes `stop_tx`: every
    // connection watches for that. Each connection holds a clone of
    // `open_rx`; `open_tx` is closed once all are gone.
    let (stop_tx, stop_rx) = watch::channel(());
    tokio::spawn(async move {
        signal.await;
        drop(stop_rx);
    });
    let (open_tx, open_rx) = watch::channel(());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop_tx.closed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        // Requests are small and answered whole: no reason to wait for
        // more bytes before sending.
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            peer,
            app: app.clone(),
            stop: stop_tx.clone(),
            _open: open_rx.clone(),
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => connection.handshake_and_serve(acceptor, stream).await,
                None => connection.serve(stream, PeerCertificate(None)).await,
            }
        });
    }
    drop(listener);
    drop(open_rx);
    if tokio::time::timeout(SHUTDOWN_GRACE, open_tx.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = open_tx.receiver_count(),
            "connections still open {} s after the stop signal; closing them",
            SHUTDOWN_GRACE.as_secs()
        );
    }
}

/// An accept that failed. The client's own failures (it hung up before
/// being accepted) are nothing; anything else (out of file descriptors) is
/// logged and waited out for a second, as hyper and axum do, rather than
/// spinning.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// One accepted connection.
struct Connection {
    peer: SocketAddr,
    app: Router,
    /// Closed when the server is stopping.
    stop: watch::Sender<()>,
    /// Held while the connection is open.
    _open: watch::Receiver<()>,
}

impl Connection {
    async fn handshake_and_serve(self, acceptor: tokio_rustls::TlsAcceptor, stream: TcpStream) {
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
        let stream = tokio::select! {
            done = handshake => done,
            () = self.stop.closed() => return,
        };
        let stream = match stream {
            Ok(Ok(stream)) => stream,
            // Scanners, plain HTTP and untrusted client certificates end
            // here; each is the client's problem, so not above debug.
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                return;
            }
        };
        let presented = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| CertificateFingerprints::of(leaf));
        let certificate = match presented {
            None => PeerCertificate(None),
            Some(Some(fingerprints)) => PeerCertificate(Some(fingerprints)),
            Some(None) => {
                // rustls verified it, so it parses; if not, fail closed.
                tracing::warn!(peer = %self.peer, "client certificate without a readable public key; connection closed");
                return;
            }
        };
        self.serve(stream, certificate).await;
    }

    async fn serve<I>(self, io: I, certificate: PeerCertificate)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            peer,
            app,
            stop,
            _open,
        } = self;
        let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(certificate.clone());
            tower::ServiceExt::oneshot(app.clone(), request)
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        builder.http2().timer(TokioTimer::new());
        let connection = builder.serve_connection(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        let mut stopping = false;
        loop {
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                    }
                    break;
                }
                () = stop.closed(), if !stopping => {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(ca: &rcgen::CertifiedKey, name: &str) -> rcgen::CertifiedKey {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca.cert, &ca.key_pair).unwrap();
        rcgen::CertifiedKey {
            cert,
            key_pair: key,
        }
    }

    fn ca() -> rcgen::CertifiedKey {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        rcgen::CertifiedKey {
            cert,
            key_pair: key,
        }
    }

    /// The SPKI found by walking the DER is the key's own SPKI (as rcgen
    /// encodes it), for a v3 certificate and for the CA.
    #[test]
    fn the_spki_fingerprint_is_the_keys() {
        let ca = ca();
        let leaf = issue(&ca, "svc");
        for certified in [&ca, &leaf] {
            let spki = subject_public_key_info(certified.cert.der()).unwrap();
            assert_eq!(spki, certified.key_pair.public_key_der().as_slice());
            let fingerprints = CertificateFingerprints::of(certified.cert.der()).unwrap();
            assert_eq!(fingerprints.cert_sha256, sha256_hex(certified.cert.der()));
            assert_eq!(
                fingerprints.spki_sha256,
                sha256_hex(&certified.key_pair.public_key_der())
            );
            assert_eq!(fingerprints.cert_sha256.len(), 64);
            assert!(
                fingerprints
                    .cert_sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
        }
        // Another certificate for the same key: another certificate
        // fingerprint, the same SPKI fingerprint.
        let mut params = rcgen::CertificateParams::new(vec!["svc".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "svc renewed");
        let renewed = params
            .signed_by(&leaf.key_pair, &ca.cert, &ca.key_pair)
            .unwrap();
        let (a, b) = (
            CertificateFingerprints::of(leaf.cert.der()).unwrap(),
            CertificateFingerprints::of(renewed.der()).unwrap(),
        );
        assert_ne!(a.cert_sha256, b.cert_sha256);
        assert_eq!(a.spki_sha256, b.spki_sha256);
    }

    #[test]
    fn bindings_match_either_fingerprint_and_nothing_else() {
        let ca = ca();
        let leaf = issue(&ca, "svc");
        let fingerprints = CertificateFingerprints::of(leaf.cert.der()).unwrap();
        let other = CertificateFingerprints::of(issue(&ca, "other").cert.der()).unwrap();
        let by_cert = vec![fingerprints.cert_sha256.clone()];
        let by_spki = vec![other.cert_sha256.clone(), fingerprints.spki_sha256.clone()];
        assert!(PeerCertificate(Some(fingerprints.clone())).matches_any(&by_cert));
        assert!(PeerCertificate(Some(fingerprints.clone())).matches_any(&by_spki));
        assert!(!PeerCertificate(Some(other.clone())).matches_any(&by_cert));
        assert!(!PeerCertificate(None).matches_any(&by_cert));
        assert!(!PeerCertificate(Some(fingerprints)).matches_any(&[]));
    }

    /// Truncated or malformed DER gives `None`, never a panic.
    #[test]
    fn broken_der_is_refused() {
        let ca = ca();
        let der = issue(&ca, "svc").cert.der().to_vec();
        for end in 0..der.len() {
            assert!(
                CertificateFingerprints::of(&der[..end]).is_none(),
                "a certificate cut to {end} bytes"
            );
        }
        assert!(CertificateFingerprints::of(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(CertificateFingerprints::of(&[0x30, 0x80]).is_none());
        assert!(CertificateFingerprints::of(&[0x31, 0x00]).is_none());
        assert!(CertificateFingerprints::of(b"not a certificate").is_none());
    }

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn files_are_checked_before_they_are_used() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        let leaf = issue(&ca, "localhost");
        let cert = write(dir.path(), "cert.pem", &leaf.cert.pem(), 0o644);
        let key = write(dir.path(), "key.pem", &leaf.key_pair.serialize_pem(), 0o600);
        let ca_file = write(dir.path(), "ca.pem", &ca.cert.pem(), 0o644);
        assert!(server_config(&cert, &key, None).is_ok());
        let config = server_config(&cert, &key, Some(&ca_file)).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );

        for open in [0o640, 0o604, 0o660, 0o644] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(open)).unwrap();
            let e = server_config(&cert, &key, None).unwrap_err().to_string();
            assert!(
                e.contains("tls.key_file") && e.contains("chmod 600"),
                "{open:o}: {e}"
            );
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(server_config(&cert, &key, None).is_ok());

        for writable in [0o664, 0o646] {
            std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(writable)).unwrap();
            let e = server_config(&cert, &key, None).unwrap_err().to_string();
            assert!(
                e.contains("tls.cert_file") && e.contains("chmod 644"),
                "{e}"
            );
            std::fs::set_permissions(&ca_file, std::fs::Permissions::from_mode(writable)).unwrap();
            std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = server_config(&cert, &key, Some(&ca_file))
                .unwrap_err()
                .to_string();
            assert!(e.contains("tls.client_ca_file"), "{e}");
            std::fs::set_permissions(&ca_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }

        // Wrong contents, each named by its setting; a key's own bytes are
        // never repeated.
        let not_pem = write(
            dir.path(),
            "x.pem",
            "-----BEGIN nonsense\nsecret-ish\n",
            0o600,
        );
        let e = server_config(&not_pem, &key, None).unwrap_err().to_string();
        assert!(e.contains("tls.cert_file"), "{e}");
        let e = server_config(&cert, &not_pem, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tls.key_file") && !e.contains("secret-ish"),
            "{e}"
        );
        let e = server_config(&cert, &cert, None).unwrap_err().to_string();
        assert!(e.contains("tls.key_file"), "{e}");
        // A key that is not the certificate's.
        let stranger = write(
            dir.path(),
            "stranger.pem",
            &rcgen::KeyPair::generate().unwrap().serialize_pem(),
            0o600,
        );
        let e = server_config(&cert, &stranger, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("do not make a usable certificate"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = server_config(&missing, &key, None).unwrap_err().to_string();
        assert!(e.contains("cannot be read"), "{e}");
        let e = server_config(&cert, &key, Some(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a file"), "{e}");
    }
}
