//! The whole payment path through the real binary, over HTTPS with mutual
//! TLS: a checkout page's publishable key collects a card and its CVC, a
//! second admin approves a relay route, and the payment service (bound to
//! its client certificate) charges the card through the relay to a real
//! local HTTPS test processor. Invariants 1 and 6 extended (DESIGN.md): the
//! processor gets the PAN, expiry and CVC; the payment service's responses,
//! every byte of the data and keys directories, the server's log and the
//! audit export hold neither the PAN nor the CVC; the CVC is used once and
//! is gone after a restart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::process::{Server, init_shares, strongroom, verify_data_dir};
use common::processor::{Behaviour, TestProcessor};
use common::tls::{Issued, TestCa, tls_stream};
use common::{HttpResponse, exchange_with, files_containing, log_words};
use serde_json::{Value, json};

/// An American Express test number: its CVC has four digits.
const PAN: &str = "378282246310005";
const CVC: &str = "7391";
const ORIGIN: &str = "https://shop.example";

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// One HTTPS request as `localhost`, with extra headers.
fn request(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    bearer: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> HttpResponse {
    let mut stream = tls_stream(addr, Arc::clone(client)).unwrap();
    let body = body.map(Value::to_string);
    exchange_with(
        &mut stream,
        "localhost",
        method,
        path,
        Some(bearer),
        headers,
        body.as_deref(),
    )
    .unwrap()
}

fn text(reply: &HttpResponse) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// Whether `haystack` holds `cvc` as a value of its own: quoted, after `=`
/// or `:`, or as a whole word. (A bare four-digit run is no evidence: hex
/// hashes and ciphertext are full of them.)
fn holds_cvc(haystack: &str, cvc: &str) -> bool {
    haystack.match_indices(cvc).any(|(at, _)| {
        let before = haystack[..at].chars().next_back();
        let after = haystack[at + cvc.len()..].chars().next();
        let boundary = |c: Option<char>| !c.is_some_and(|c| c.is_ascii_alphanumeric());
        boundary(before) && boundary(after)
    })
}

#[test]
fn collect_then_relay_through_the_real_binary_leaves_no_pan_or_cvc_behind() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let init = init_shares(dir.path());
    let admin = init["admin_api_key"].as_str().unwrap().to_owned();

    // The vault's certificate and the CA of its clients; the processor has
    // a CA of its own, trusted only through the route's `ca_pem`.
    let edge_ca = TestCa::new("strongroom edge test CA");
    let server_cert = edge_ca.server(&[]);
    let payments_cert: Issued = edge_ca.client("payments");
    let processor_ca = TestCa::new("processor test CA");
    let processor = runtime.block_on(TestProcessor::start(&processor_ca, Behaviour::Charge));

    let tls_dir: PathBuf = dir.path().join("tls");
    std::fs::create_dir(&tls_dir).unwrap();
    let (cert, key, client_ca) = (
        tls_dir.join("cert.pem"),
        tls_dir.join("key.pem"),
        tls_dir.join("client-ca.pem"),
    );
    write(&cert, &server_cert.cert_pem, 0o644);
    write(&key, &server_cert.key_pem, 0o600);
    write(&client_ca, &edge_ca.cert_pem(), 0o644);
    let config = dir.path().join("strongroom.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n\
             [relay]\nallow_private_destinations = true\n",
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
            client_ca.to_str().unwrap()
        ),
    )
    .unwrap();

    let anonymous = edge_ca.client_config(None);
    let as_payments = edge_ca.client_config(Some(&payments_cert));
    let unseal = |addr: SocketAddr| {
        for index in 0..3 {
            let body = json!({ "share": init["shares"][index] });
            let reply = request(
                addr,
                &anonymous,
                "POST",
                "/v1/sys/unseal",
                "",
                &[],
                Some(&body),
            );
            assert_eq!(reply.status, 200, "{}", text(&reply));
        }
    };

    let server = Server::start(dir.path(), &config);
    let addr = server.addr;
    unseal(addr);
    let admin_call = |method: &str, path: &str, key: &str, body: Option<Value>| {
        request(addr, &anonymous, method, path, key, &[], body.as_ref())
    };

    // The payment service, bound to its client certificate; a second admin;
    // the checkout page's publishable key.
    let reply = admin_call(
        "POST",
        "/v1/principals",
        &admin,
        Some(
            json!({"name": "payments", "kind": "service", "roles": ["payment_service"],
                    "client_cert_sha256": [payments_cert.sha256_hex()]}),
        ),
    );
    assert_eq!(reply.status, 201, "{}", text(&reply));
    let payments_id = reply.json()["id"].as_str().unwrap().to_owned();
    let payments = reply.json()["api_key"].as_str().unwrap().to_owned();
    let reply = admin_call(
        "POST",
        "/v1/principals",
        &admin,
        Some(json!({"name": "admin-2", "kind": "service", "roles": ["admin"]})),
    );
    assert_eq!(reply.status, 201, "{}", text(&reply));
    let admin2 = reply.json()["api_key"].as_str().unwrap().to_owned();
    let reply = admin_call(
        "POST",
        "/v1/principals",
        &admin,
        Some(
            json!({"name": "checkout-web", "kind": "publishable", "roles": ["collector"],
                    "owner": payments_id, "allowed_origins": [ORIGIN]}),
        ),
    );
    assert_eq!(reply.status, 201, "{}", text(&reply));
    let publishable = reply.json()["api_key"].as_str().unwrap().to_owned();
    assert!(publishable.starts_with("spk_"));

    // Everything the payment service's side (and the page) is answered.
    let mut answers: Vec<String> = Vec::new();

    // Collect: the browser stores the card and attaches its CVC.
    let collect = |path: &str, body: Value| {
        request(
            addr,
            &anonymous,
            "POST",
            path,
            &publishable,
            &[("Origin", ORIGIN)],
            Some(&body),
        )
    };
    let reply = collect(
        "/v1/records/card",
        json!({"pan": PAN, "exp_month": 7, "exp_year": 2031, "holder_name": "Ada Lovelace"}),
    );
    assert_eq!(reply.status, 201, "{}", text(&reply));
    assert_eq!(reply.header("access-control-allow-origin"), Some(ORIGIN));
    answers.push(text(&reply));
    let card_id = reply.json()["id"].as_str().unwrap().to_owned();
    let token = reply.json()["token"].as_str().unwrap().to_owned();
    let reply = collect(&format!("/v1/records/{card_id}/cvc"), json!({ "cvc": CVC }));
    assert_eq!(reply.status, 204, "{}", text(&reply));

    // The route: created by one admin, approved by another.
    let route = json!({
        "name": "acme",
        "base_url": format!("{}/v1", processor.url()),
        "methods": ["POST"],
        "fields": ["pan", "exp_month", "exp_year", "cvc"],
        "ca_pem": processor_ca.cert_pem(),
        "headers": {"authorization": "Bearer sk_test_acme_processor_key"},
    });
    let reply = admin_call("POST", "/v1/relay/routes", &admin, Some(route));
    assert_eq!(reply.status, 201, "{}", text(&reply));
    let reply = admin_call("POST", "/v1/relay/routes/acme/approve", &admin, None);
    assert_eq!(reply.status, 403, "the creator cannot approve");
    let reply = admin_call("POST", "/v1/relay/routes/acme/approve", &admin2, None);
    assert_eq!(reply.status, 200, "{}", text(&reply));

    // The charge: only tokens leave the payment service.
    let charge = json!({
        "amount": 1999,
        "currency": "eur",
        "card": {
            "number": format!("{{{{{token}:pan}}}}"),
            "exp_month": format!("{{{{{token}:exp_month}}}}"),
            "exp_year": format!("{{{{{token}:exp_year}}}}"),
            "cvc": format!("{{{{{token}:cvc}}}}"),
        }
    });
    let relay = |key: &str, client: &Arc<rustls::ClientConfig>| {
        request(
            addr,
            client,
            "POST",
            "/v1/relay/acme/charges",
            key,
            &[],
            Some(&charge),
        )
    };
    // Its key alone, without its certificate, is refused, and nothing is sent.
    let reply = relay(&payments, &anonymous);
    assert_eq!(reply.status, 401, "{}", text(&reply));
    assert_eq!(processor.count(), 0);

    let reply = relay(&payments, &as_payments);
    assert_eq!(reply.status, 200, "{}", text(&reply));
    assert_eq!(reply.header("x-strongroom-relay"), Some("upstream"));
    answers.push(text(&reply));
    let received = processor.received();
    assert_eq!(received.len(), 1);
    let sent: Value = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(
        sent["card"],
        json!({"number": PAN, "exp_month": "07", "exp_year": "2031", "cvc": CVC})
    );
    assert_eq!(
        received[0].header("authorization"),
        Some("Bearer sk_test_acme_processor_key")
    );

    // Used once: the second charge with the CVC is refused, nothing sent.
    let reply = relay(&payments, &as_payments);
    assert_eq!(reply.status, 409, "{}", text(&reply));
    assert_eq!(reply.json()["code"], "cvc_unavailable");
    assert_eq!(reply.header("x-strongroom-relay"), Some("refused"));
    answers.push(text(&reply));
    assert_eq!(processor.count(), 1);

    // A CVC attached again, then a restart: it is gone.
    let reply = collect(&format!("/v1/records/{card_id}/cvc"), json!({ "cvc": CVC }));
    assert_eq!(reply.status, 204, "{}", text(&reply));
    let first_log = server.stop();
    let server = Server::start(dir.path(), &config);
    let addr = server.addr;
    unseal(addr);
    let reply = request(
        addr,
        &as_payments,
        "POST",
        "/v1/relay/acme/charges",
        &payments,
        &[],
        Some(&charge),
    );
    assert_eq!(reply.status, 409, "{}", text(&reply));
    assert_eq!(reply.json()["code"], "cvc_unavailable");
    answers.push(text(&reply));
    assert_eq!(processor.count(), 1, "nothing sent after the restart");
    let second_log = server.stop();

    // The payment service's answers: no PAN, no CVC, no expiry from the relay.
    for answer in &answers {
        assert!(!answer.contains(PAN), "PAN in an answer: {answer}");
        assert!(!holds_cvc(answer, CVC), "CVC in an answer: {answer}");
    }
    assert!(!answers[1].contains("2031"), "expiry in the relay answer");

    // The logs of both runs.
    for log in [&first_log, &second_log] {
        assert!(!log.contains(PAN), "PAN in the log");
        assert!(!log_words(log).contains(CVC), "CVC in the log");
    }

    // Every byte of the data and keys directories.
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    assert!(files_containing(&[&data, &keys], PAN.as_bytes()).is_empty());
    for form in [format!("\"{CVC}\""), format!("={CVC}"), format!(":{CVC}")] {
        assert!(
            files_containing(&[&data, &keys], form.as_bytes()).is_empty(),
            "CVC as {form} on disk"
        );
    }

    // The audit export, which the offline verifier accepts.
    let export = strongroom(&["audit", "export", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(export.status.success());
    let export = String::from_utf8(export.stdout).unwrap();
    assert!(export.contains("relay.invoke") && export.contains("card.cvc_attached"));
    assert!(!export.contains(PAN), "PAN in the audit export");
    assert!(
        !holds_cvc(&export.replace(&card_id, ""), CVC),
        "CVC in the audit export"
    );
    let verified = verify_data_dir(&data, &keys);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
}
