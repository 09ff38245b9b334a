//! TLS at the edge and mutual TLS, through the real binary: `serve` refuses
//! to start without a certificate (unless TLS is explicitly disabled, which
//! it warns about), serves HTTPS with TLS 1.2 and 1.3 only and HTTP/1.1 and
//! HTTP/2, refuses private keys others can read, and refuses a
//! certificate-bound service's API key on a connection that did not present
//! one of its certificates (docs/payment-path.md "TLS and mutual TLS").
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::process::{Server, in_vault, init_shares, plain_http_config};
use common::tls::{Issued, TestCa, tls_stream};
use common::{HttpResponse, http, try_http};
use common::{https, try_https};
use serde_json::{Value, json};

/// A vault (`init` with shares) and the TLS files for it, issued by a
/// test CA that also issues client certificates.
struct Vault {
    dir: tempfile::TempDir,
    init: Value,
    ca: TestCa,
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl Vault {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let init = init_shares(dir.path());
        let ca = TestCa::new("strongroom test clients and server");
        let server = ca.server(&[]);
        let tls = dir.path().join("tls");
        std::fs::create_dir(&tls).unwrap();
        let (cert, key, client_ca) = (
            tls.join("cert.pem"),
            tls.join("key.pem"),
            tls.join("client-ca.pem"),
        );
        write(&cert, &server.cert_pem, 0o644);
        write(&key, &server.key_pem, 0o600);
        write(&client_ca, &ca.cert_pem(), 0o644);
        Self {
            dir,
            init,
            ca,
            cert,
            key,
            client_ca,
        }
    }

    fn admin(&self) -> &str {
        self.init["admin_api_key"].as_str().unwrap()
    }

    /// A configuration file with these `[tls]` lines.
    fn config(&self, tls: &str) -> PathBuf {
        let path = self.dir.path().join("strongroom.toml");
        std::fs::write(&path, format!("[tls]\n{tls}\n")).unwrap();
        path
    }

    /// HTTPS with the certificate and key, client certificates optional.
    fn tls_config(&self, client_ca: bool) -> PathBuf {
        let mut lines = format!(
            "cert_file = {:?}\nkey_file = {:?}",
            self.cert.to_str().unwrap(),
            self.key.to_str().unwrap()
        );
        if client_ca {
            lines.push_str(&format!(
                "\nclient_ca_file = {:?}",
                self.client_ca.to_str().unwrap()
            ));
        }
        self.config(&lines)
    }

    /// `serve` with `config`, which must fail: its stderr.
    fn serve_fails(&self, config: Option<&Path>) -> String {
        let addr = common::process::free_addr().to_string();
        let mut args = vec!["--listen", addr.as_str()];
        if let Some(config) = config {
            args.extend(["--config", config.to_str().unwrap()]);
        }
        let out = in_vault(self.dir.path(), "serve", &args).output().unwrap();
        assert!(!out.status.success(), "serve started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A client trusting the test CA, presenting `client` if given.
    fn client(&self, client: Option<&Issued>) -> Arc<rustls::ClientConfig> {
        self.ca.client_config(client)
    }

    /// Unseals the server at `addr` over HTTPS with three shares.
    fn unseal(&self, addr: SocketAddr) {
        for index in [0, 1, 2] {
            let body = json!({ "share": self.init["shares"][index] }).to_string();
            let reply = https(
                addr,
                self.client(None),
                "POST",
                "/v1/sys/unseal",
                None,
                Some(&body),
            );
            assert_eq!(reply.status, 200);
        }
    }
}

/// A client configuration offering only `version`.
fn only(
    ca: &TestCa,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    Arc::new(config)
}

fn card_body() -> String {
    json!({"pan": "4242424242424242", "exp_month": 12, "exp_year": 2030, "holder_name": "Ada Lovelace"})
        .to_string()
}

fn problem_code(reply: &HttpResponse) -> String {
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    reply.json()["code"].as_str().unwrap().to_owned()
}

#[test]
fn serve_refuses_to_start_without_a_certificate_and_says_why() {
    let vault = Vault::new();
    let stderr = vault.serve_fails(None);
    assert!(
        stderr.contains("serve needs TLS")
            && stderr.contains("tls.cert_file")
            && stderr.contains("tls.key_file")
            && stderr.contains("tls.disabled = true"),
        "{stderr}"
    );
    // Half a configuration is refused, naming what is missing.
    let cert_only = vault.config(&format!("cert_file = {:?}", vault.cert.to_str().unwrap()));
    let stderr = vault.serve_fails(Some(&cert_only));
    assert!(stderr.contains("tls.key_file is not"), "{stderr}");
    // So is a contradiction.
    let both = vault.config(&format!(
        "disabled = true\ncert_file = {:?}\nkey_file = {:?}",
        vault.cert.to_str().unwrap(),
        vault.key.to_str().unwrap()
    ));
    let stderr = vault.serve_fails(Some(&both));
    assert!(
        stderr.contains("tls.disabled = true cannot be combined"),
        "{stderr}"
    );
    // A missing file is named.
    let missing = vault.config(&format!(
        "cert_file = {:?}\nkey_file = \"/nonexistent/strongroom/key.pem\"",
        vault.cert.to_str().unwrap()
    ));
    let stderr = vault.serve_fails(Some(&missing));
    assert!(
        stderr.contains("tls.key_file /nonexistent/strongroom/key.pem cannot be read"),
        "{stderr}"
    );
}

/// `tls.disabled = true` serves plain HTTP and says so at every start; a
/// certificate-bound principal's key never works there (no client
/// certificate can reach the server), an unbound one does.
#[test]
fn tls_disabled_serves_plain_http_warns_and_refuses_bound_keys() {
    let vault = Vault::new();
    let config = plain_http_config(vault.dir.path());
    for _ in 0..2 {
        let server = Server::start(vault.dir.path(), &config);
        assert_eq!(
            http(server.addr, "GET", "/v1/sys/health", None, None).status,
            503
        );
        let log = server.stop();
        assert!(
            log.contains("WARN") && log.contains("TLS is disabled (tls.disabled = true)"),
            "{log}"
        );
    }

    let server = Server::start(vault.dir.path(), &config);
    let addr = server.addr;
    for index in [0, 1, 2] {
        let body = json!({ "share": vault.init["shares"][index] }).to_string();
        assert_eq!(
            http(addr, "POST", "/v1/sys/unseal", None, Some(&body)).status,
            200
        );
    }
    let client = vault.ca.client("payments");
    let create = |name: &str, bound: bool| {
        let mut body = json!({"name": name, "kind": "service", "roles": ["payment_service"]});
        if bound {
            body["client_cert_sha256"] = json!([client.sha256_hex()]);
        }
        let reply = http(
            addr,
            "POST",
            "/v1/principals",
            Some(vault.admin()),
            Some(&body.to_string()),
        );
        assert_eq!(reply.status, 201);
        reply.json()["api_key"].as_str().unwrap().to_owned()
    };
    let bound = create("bound", true);
    let unbound = create("unbound", false);
    let reply = http(
        addr,
        "POST",
        "/v1/records/card",
        Some(&bound),
        Some(&card_body()),
    );
    assert_eq!(reply.status, 401);
    assert_eq!(problem_code(&reply), "unauthenticated");
    assert_eq!(
        http(
            addr,
            "POST",
            "/v1/records/card",
            Some(&unbound),
            Some(&card_body())
        )
        .status,
        201
    );
    server.stop();
}

#[test]
fn https_serves_the_api_with_tls_1_2_and_1_3_over_http_1_1_and_http_2() {
    let vault = Vault::new();
    let server = Server::start(vault.dir.path(), &vault.tls_config(false));
    let addr = server.addr;
    let health = https(
        addr,
        vault.client(None),
        "GET",
        "/v1/sys/health",
        None,
        None,
    );
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["sealed"], true);
    assert!(health.header("x-request-id").is_some());
    vault.unseal(addr);
    assert_eq!(
        https(
            addr,
            vault.client(None),
            "GET",
            "/v1/sys/health",
            None,
            None
        )
        .status,
        200
    );

    // Each version the server offers, negotiated as asked.
    for (version, expected) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let mut stream = tls_stream(addr, only(&vault.ca, version)).unwrap();
        assert_eq!(stream.conn.protocol_version(), Some(expected));
        let reply = common::exchange(
            &mut stream,
            "localhost",
            "GET",
            "/v1/principals",
            Some(vault.admin()),
            None,
        )
        .unwrap();
        assert_eq!(reply.status, 200, "{expected:?}");
    }
    // A client offering both gets TLS 1.3.
    let stream = tls_stream(addr, vault.client(None)).unwrap();
    assert_eq!(
        stream.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    drop(stream);

    // HTTP/2, chosen by ALPN.
    let mut h2 = (*vault.client(None)).clone();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use http_body_util::{BodyExt, Empty};
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(h2))
            .connect(
                rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        let request = hyper::Request::get("https://localhost/v1/principals")
            .header("authorization", format!("Bearer {}", vault.admin()))
            .body(Empty::<axum::body::Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let list: Value = serde_json::from_slice(&body).unwrap();
        assert!(list["principals"].as_array().is_some_and(|p| !p.is_empty()));
    });
    // Closes the HTTP/2 connection (its task lives in this runtime).
    drop(runtime);

    // Plain HTTP to the TLS port gets no HTTP answer, and the server
    // carries on.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    plain
        .write_all(b"GET /v1/sys/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = plain.read_to_end(&mut raw);
    assert!(
        !raw.windows(5).any(|w| w == b"HTTP/"),
        "plain HTTP was answered: {:?}",
        String::from_utf8_lossy(&raw)
    );
    assert!(try_http(addr, "GET", "/v1/sys/health", None, None).is_err());
    assert_eq!(
        https(
            addr,
            vault.client(None),
            "GET",
            "/v1/sys/health",
            None,
            None
        )
        .status,
        200
    );
    server.stop();
}

/// A TLS extension: type, length, data.
fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut out = kind.to_be_bytes().to_vec();
    out.extend((data.len() as u16).to_be_bytes());
    out.extend(data);
    out
}

/// A ClientHello record, hand-built (no client library sends TLS 1.1 or
/// lower any more): `version` as its client_version, one
/// ECDHE-ECDSA-AES128-GCM-SHA256 cipher suite (the test server's key is
/// ECDSA P-256), X25519, and no supported_versions extension (which is how
/// a client of TLS 1.2 or lower speaks).
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut body = version.to_vec();
    body.extend([7u8; 32]); // random
    body.push(0); // session id
    body.extend([0, 2, 0xc0, 0x2b]);
    body.extend([1, 0]); // null compression
    let mut extensions = Vec::new();
    extensions.extend(extension(0x000a, &[0, 2, 0, 0x1d])); // supported_groups: x25519
    extensions.extend(extension(0x000b, &[1, 0])); // ec_point_formats: uncompressed
    extensions.extend(extension(0x000d, &[0, 2, 4, 3])); // signature_algorithms: ecdsa_secp256r1_sha256
    extensions.extend(extension(0x0017, &[])); // extended_master_secret
    extensions.extend(extension(0xff01, &[0])); // renegotiation_info
    body.extend((extensions.len() as u16).to_be_bytes());
    body.extend(extensions);
    let mut handshake = vec![1]; // client_hello
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 3, 1];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// What the server sends first in answer to `hello`: at least a record
/// header and two bytes.
fn first_answer(addr: SocketAddr, hello: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(hello).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while answer.len() < 7 {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend(&buffer[..n]),
        }
    }
    answer
}

/// TLS 1.1, 1.0 and SSL 3 are refused with a protocol_version alert, while
/// the same hello as TLS 1.2 gets a ServerHello.
#[test]
fn tls_1_1_and_lower_are_refused() {
    let vault = Vault::new();
    let server = Server::start(vault.dir.path(), &vault.tls_config(false));
    let answer = first_answer(server.addr, &client_hello([3, 3]));
    assert_eq!(answer.first(), Some(&0x16), "TLS 1.2: a handshake record");
    assert_eq!(answer.get(5), Some(&2), "TLS 1.2: a ServerHello");
    for old in [[3, 2], [3, 1], [3, 0]] {
        let answer = first_answer(server.addr, &client_hello(old));
        assert_eq!(answer.len(), 7, "{old:?}: {answer:?}");
        assert_eq!(answer[0], 0x15, "{old:?}: an alert, not a handshake");
        assert_eq!(answer[6], 70, "{old:?}: protocol_version");
    }
    server.stop();
}

#[test]
fn private_keys_others_can_read_are_refused() {
    let vault = Vault::new();
    let config = vault.tls_config(true);
    for open in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&vault.key, std::fs::Permissions::from_mode(open)).unwrap();
        let stderr = vault.serve_fails(Some(&config));
        assert!(
            stderr.contains("tls.key_file")
                && stderr.contains("open to group or others")
                && stderr.contains("chmod 600"),
            "{open:o}: {stderr}"
        );
    }
    // A CA file others may change could let them mint client certificates.
    std::fs::set_permissions(&vault.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&vault.client_ca, std::fs::Permissions::from_mode(0o666)).unwrap();
    let stderr = vault.serve_fails(Some(&config));
    assert!(
        stderr.contains("tls.client_ca_file") && stderr.contains("chmod 644"),
        "{stderr}"
    );
    std::fs::set_permissions(&vault.client_ca, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = Server::start(vault.dir.path(), &config);
    assert_eq!(
        https(
            server.addr,
            vault.client(None),
            "GET",
            "/v1/sys/health",
            None,
            None
        )
        .status,
        503
    );
    server.stop();
}

/// The SHA-256 of a client certificate's SubjectPublicKeyInfo.
fn spki_sha256(issued: &Issued) -> String {
    let key = rcgen::KeyPair::from_pem(&issued.key_pem).unwrap();
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &key.public_key_der(),
    ))
}

#[test]
fn a_bound_service_key_needs_its_client_certificate() {
    let vault = Vault::new();
    let server = Server::start(vault.dir.path(), &vault.tls_config(true));
    let addr = server.addr;
    vault.unseal(addr);
    let payments_cert = vault.ca.client("payments");
    let renewal_cert = vault.ca.client("payments-next");
    let other_cert = vault.ca.client("someone-else");
    let foreign_ca = TestCa::new("not the configured client CA");
    let foreign_cert = foreign_ca.client("payments");
    let by_key_cert = vault.ca.client("by-key");

    let create = |body: Value| {
        https(
            addr,
            vault.client(None),
            "POST",
            "/v1/principals",
            Some(vault.admin()),
            Some(&body.to_string()),
        )
    };
    let bound_reply = create(json!({
        "name": "payments", "kind": "service", "roles": ["payment_service"],
        "client_cert_sha256": [payments_cert.sha256_hex(), renewal_cert.sha256_hex(), payments_cert.sha256_hex()],
    }));
    assert_eq!(bound_reply.status, 201);
    let bound = bound_reply.json()["api_key"].as_str().unwrap().to_owned();
    let bound_id = bound_reply.json()["id"].as_str().unwrap().to_owned();
    let spki_reply = create(json!({
        "name": "by-key", "kind": "service", "roles": ["payment_service"],
        "client_cert_sha256": [spki_sha256(&by_key_cert)],
    }));
    assert_eq!(spki_reply.status, 201);
    let by_key = spki_reply.json()["api_key"].as_str().unwrap().to_owned();
    let unbound_reply =
        create(json!({"name": "legacy", "kind": "service", "roles": ["payment_service"]}));
    assert_eq!(unbound_reply.status, 201);
    let unbound = unbound_reply.json()["api_key"].as_str().unwrap().to_owned();

    let store_card = |config: Arc<rustls::ClientConfig>, key: &str| {
        try_https(
            addr,
            config,
            "POST",
            "/v1/records/card",
            Some(key),
            Some(&card_body()),
        )
    };
    // The bound key alone, or with another certificate the CA issued: 401.
    for presented in [None, Some(&other_cert), Some(&by_key_cert)] {
        let reply = store_card(vault.client(presented), &bound).unwrap();
        assert_eq!(reply.status, 401, "{:?}", presented.map(|c| c.sha256_hex()));
        assert_eq!(problem_code(&reply), "unauthenticated");
        assert!(reply.header("x-request-id").is_some());
    }
    // A certificate from another CA does not get through the handshake.
    assert!(store_card(vault.client(Some(&foreign_cert)), &bound).is_err());
    // With either of its certificates: stored.
    for presented in [&payments_cert, &renewal_cert] {
        let reply = store_card(vault.client(Some(presented)), &bound).unwrap();
        assert_eq!(
            reply.status,
            201,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    // A resumed session still carries the certificate of the handshake it
    // resumes: the same client, a second connection.
    let resuming = vault.client(Some(&payments_cert));
    for (round, kind) in [
        (0, rustls::HandshakeKind::Full),
        (1, rustls::HandshakeKind::Resumed),
    ] {
        let mut stream = tls_stream(addr, Arc::clone(&resuming)).unwrap();
        assert_eq!(stream.conn.handshake_kind(), Some(kind), "round {round}");
        let reply = common::exchange(
            &mut stream,
            "localhost",
            "POST",
            "/v1/records/card",
            Some(&bound),
            Some(&card_body()),
        )
        .unwrap();
        assert_eq!(reply.status, 201, "round {round}");
    }
    // Bound by public key: any certificate for that key.
    assert_eq!(store_card(vault.client(None), &by_key).unwrap().status, 401);
    assert_eq!(
        store_card(vault.client(Some(&by_key_cert)), &by_key)
            .unwrap()
            .status,
        201
    );
    // An unbound service works with or without a certificate.
    for presented in [None, Some(&other_cert)] {
        assert_eq!(
            store_card(vault.client(presented), &unbound)
                .unwrap()
                .status,
            201
        );
    }

    // The list shows each binding (duplicates dropped), and nothing for
    // the unbound service.
    let list = https(
        addr,
        vault.client(None),
        "GET",
        "/v1/principals",
        Some(vault.admin()),
        None,
    )
    .json();
    let principal = |name: &str| {
        list["principals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        principal("payments")["client_cert_sha256"],
        json!([payments_cert.sha256_hex(), renewal_cert.sha256_hex()])
    );
    assert_eq!(
        principal("by-key")["client_cert_sha256"],
        json!([spki_sha256(&by_key_cert)])
    );
    assert!(principal("legacy").get("client_cert_sha256").is_none());

    // Each refusal is audited against the principal; no refused request
    // stored anything.
    let audit = |query: &str| {
        https(
            addr,
            vault.client(None),
            "GET",
            &format!("/v1/audit?{query}"),
            Some(vault.admin()),
            None,
        )
        .json()["entries"]
            .as_array()
            .unwrap()
            .clone()
    };
    let refusals = audit(&format!("action=auth.client_cert_refused&actor={bound_id}"));
    assert_eq!(refusals.len(), 3, "{refusals:?}");
    for entry in &refusals {
        assert_eq!(entry["outcome"], "denied");
        assert_eq!(entry["target"], bound_id.as_str());
        assert_eq!(entry["client"], "127.0.0.1");
    }
    assert!(
        refusals[0]["reason"]
            .as_str()
            .unwrap()
            .contains("without a client certificate")
    );
    assert!(
        refusals[1]["reason"]
            .as_str()
            .unwrap()
            .contains(&other_cert.sha256_hex())
    );
    let stored = audit(&format!("actor={bound_id}"))
        .into_iter()
        .filter(|e| e["outcome"] == "allowed")
        .count();
    assert_eq!(
        stored, 4,
        "only the four requests with its certificates did anything"
    );

    let log = server.stop();
    for key in [&bound, &by_key, &unbound] {
        assert!(!log.contains(key.as_str()), "an API key reached the log");
    }
    assert!(
        log.contains("without its client certificate; refused"),
        "{log}"
    );
}

#[test]
fn bindings_are_validated_and_only_for_services() {
    let vault = Vault::new();
    let server = Server::start(vault.dir.path(), &vault.tls_config(true));
    let addr = server.addr;
    vault.unseal(addr);
    let create = |key: &str, body: Value| {
        https(
            addr,
            vault.client(None),
            "POST",
            "/v1/principals",
            Some(key),
            Some(&body.to_string()),
        )
    };
    let good = "ab".repeat(32);
    let nine: Vec<String> = (0..9).map(|i| format!("{i:064x}")).collect();
    let service = |fingerprints: Value| json!({"name": "svc", "kind": "service", "roles": ["payment_service"], "client_cert_sha256": fingerprints});
    let field = "client_cert_sha256";
    for (bad, named) in [
        (service(json!(["AB".repeat(32)])), field),
        (service(json!(["ab".repeat(31)])), field),
        (service(json!([format!("{}zz", "ab".repeat(31))])), field),
        (service(json!([good.clone(), "not hex"])), field),
        (service(json!(nine)), field),
        // The wrong JSON types fail parsing, which names the path.
        (service(json!("ab")), field),
        (service(json!([42])), "client_cert_sha256[0]"),
        (
            json!({"name": "alice", "kind": "staff", "roles": ["compliance_officer"],
                   "password": "a long enough password", "client_cert_sha256": [good.clone()]}),
            field,
        ),
    ] {
        let reply = create(vault.admin(), bad.clone());
        assert_eq!(reply.status, 422, "{bad}");
        assert_eq!(problem_code(&reply), "validation_failed");
        let problem = reply.json();
        assert_eq!(problem["errors"][0]["field"], named, "{bad}");
        // The value is never echoed.
        assert!(
            !String::from_utf8_lossy(&reply.body).contains("abab"),
            "{bad}"
        );
    }
    // Nothing was created by any of them.
    let list = https(
        addr,
        vault.client(None),
        "GET",
        "/v1/principals",
        Some(vault.admin()),
        None,
    )
    .json();
    assert_eq!(list["principals"].as_array().unwrap().len(), 1);

    // Who may bind: admin only (the create rule); a payment service is
    // refused before its body is looked at.
    let payments = create(
        vault.admin(),
        json!({"name": "payments", "kind": "service", "roles": ["payment_service"]}),
    );
    assert_eq!(payments.status, 201);
    let payments_key = payments.json()["api_key"].as_str().unwrap().to_owned();
    let auditor = create(
        vault.admin(),
        json!({"name": "auditor", "kind": "service", "roles": ["auditor"]}),
    );
    let auditor_key = auditor.json()["api_key"].as_str().unwrap().to_owned();
    for key in [&payments_key, &auditor_key] {
        let reply = create(key, service(json!([good.clone()])));
        assert_eq!(reply.status, 403);
        assert_eq!(problem_code(&reply), "forbidden");
    }
    let reply = create(vault.admin(), service(json!([good.clone(), good.clone()])));
    assert_eq!(reply.status, 201);
    server.stop();
}

/// A request that reached the router without passing through the TLS
/// layer (no `PeerCertificate` at all, as in-process) is treated as one
/// without a certificate: a bound key is refused and the refusal audited.
#[tokio::test]
async fn a_request_without_connection_details_is_refused_for_a_bound_key() {
    let vault = common::passphrase_vault();
    let app = vault.app();
    let admin = vault.admin_api_key.clone();
    let body = json!({"name": "bound", "kind": "service", "roles": ["payment_service"],
                      "client_cert_sha256": ["cd".repeat(32)]});
    let created = common::call(&app, "POST", "/v1/principals", Some(&admin), Some(body)).await;
    assert_eq!(created.status, 201);
    let key = created.body["api_key"].as_str().unwrap().to_owned();
    let id = created.body["id"].as_str().unwrap().to_owned();
    let card: Value = serde_json::from_str(&card_body()).unwrap();
    let reply = common::call(&app, "POST", "/v1/records/card", Some(&key), Some(card)).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.body["code"], "unauthenticated");
    let entries = common::audit_entries(&vault);
    let refused: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "auth.client_cert_refused")
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["actor"], id.as_str());
    assert_eq!(refused[0]["outcome"], "denied");
    assert!(!entries.iter().any(|e| e["action"] == "record.create"));

    // A stolen bound key sent over and over: every request is refused, but
    // only a budget a minute becomes a durable audit entry.
    let budget = strongroom::api::CERT_REFUSALS_AUDITED_PER_MINUTE;
    let card: Value = serde_json::from_str(&card_body()).unwrap();
    let replies = futures_join(&app, &key, &card, budget + 10).await;
    assert!(replies.iter().all(|status| *status == 401), "{replies:?}");
    let refused = common::audit_entries(&vault)
        .into_iter()
        .filter(|e| e["action"] == "auth.client_cert_refused")
        .count();
    assert_eq!(refused, budget);
}

/// `count` card creations with `key` at once; their statuses.
async fn futures_join(app: &axum::Router, key: &str, card: &Value, count: usize) -> Vec<u16> {
    let calls: Vec<_> = (0..count)
        .map(|_| {
            let (app, key, card) = (app.clone(), key.to_owned(), card.clone());
            tokio::spawn(async move {
                common::call(&app, "POST", "/v1/records/card", Some(&key), Some(card))
                    .await
                    .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap());
    }
    statuses
}
