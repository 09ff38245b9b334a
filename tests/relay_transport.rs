//! The relay's outbound client against a real local HTTPS processor:
//! destination checks (nothing reaches the processor when refused), trust
//! (only the route's CA), no plain HTTP, no redirects, size and time limits.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use common::processor::{Behaviour, TestProcessor};
use common::tls::TestCa;
use reqwest::header::{HeaderMap, HeaderValue};
use strongroom::relay::upstream::{
    DestinationError, RelaySettings, Upstream, UpstreamError, UpstreamRequest,
};
use zeroize::Zeroizing;

fn lenient() -> Upstream {
    Upstream::new(RelaySettings {
        allow_private_destinations: true,
        ..RelaySettings::default()
    })
}

fn strict() -> Upstream {
    Upstream::new(RelaySettings::default())
}

fn request(base_url: &str, ca_pem: Option<&str>) -> UpstreamRequest {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer sk_test_route"),
    );
    UpstreamRequest {
        base_url: base_url.to_owned(),
        ca_pem: ca_pem.map(str::to_owned),
        timeout: Duration::from_secs(20),
        method: reqwest::Method::POST,
        path_and_query: "/charges?expand=x".into(),
        headers,
        body: Zeroizing::new(br#"{"pan":"4242424242424242"}"#.to_vec()),
    }
}

#[tokio::test]
async fn with_the_switch_and_the_route_ca_the_request_arrives_whole() {
    let ca = TestCa::new("processor CA");
    let processor = TestProcessor::start(&ca, Behaviour::Charge).await;
    let upstream = lenient();
    for base in [processor.url(), format!("{}/v1", processor.localhost_url())] {
        let answer = upstream
            .send(request(&base, Some(processor.ca_pem())))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.content_type.unwrap(), "application/json");
        assert_eq!(answer.headers["x-processor"], "test");
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(body["status"], "succeeded");
    }
    let received = processor.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].method, "POST");
    assert_eq!(received[0].path, "/charges?expand=x");
    assert_eq!(received[1].path, "/v1/charges?expand=x");
    assert_eq!(received[0].body, br#"{"pan":"4242424242424242"}"#);
    assert_eq!(
        received[0].header("authorization"),
        Some("Bearer sk_test_route")
    );
    assert_eq!(received[0].header("accept-encoding"), Some("identity"));
}

#[tokio::test]
async fn loopback_private_and_metadata_destinations_are_refused_without_the_switch() {
    let ca = TestCa::new("processor CA");
    let processor = TestProcessor::start(&ca, Behaviour::Charge).await;
    let upstream = strict();
    let port = processor.addr().port();
    for base in [
        processor.url(),
        processor.localhost_url(),
        format!("https://[::1]:{port}"),
        format!("https://10.0.0.1:{port}"),
        "https://169.254.169.254/latest/meta-data".to_owned(),
        format!("https://[::ffff:127.0.0.1]:{port}"),
        format!("https://0x7f.1:{port}"),
    ] {
        let error = upstream
            .send(request(&base, Some(processor.ca_pem())))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                UpstreamError::Destination(DestinationError::NonGlobal(_))
            ),
            "{base}: {error:?}"
        );
    }
    assert_eq!(processor.count(), 0, "the processor must receive nothing");
    // The same upstream with the switch reaches it (the refusal above was
    // the address check, not a broken processor).
    lenient()
        .send(request(
            &processor.localhost_url(),
            Some(processor.ca_pem()),
        ))
        .await
        .unwrap();
    assert_eq!(processor.count(), 1);
}

#[tokio::test]
async fn a_certificate_from_another_ca_or_the_platform_roots_is_refused() {
    let ca = TestCa::new("processor CA");
    let other = TestCa::new("someone else's CA");
    let processor = TestProcessor::start(&ca, Behaviour::Charge).await;
    let upstream = lenient();
    let error = upstream
        .send(request(&processor.url(), Some(&other.cert_pem())))
        .await
        .unwrap_err();
    assert!(matches!(error, UpstreamError::Unavailable(_)), "{error:?}");
    // Without a ca_pem only the platform roots are trusted: not the test CA.
    let error = upstream
        .send(request(&processor.url(), None))
        .await
        .unwrap_err();
    assert!(matches!(error, UpstreamError::Unavailable(_)), "{error:?}");
    // A ca_pem that is not a certificate.
    let error = upstream
        .send(request(&processor.url(), Some("not a pem")))
        .await
        .unwrap_err();
    assert!(matches!(error, UpstreamError::InvalidCa), "{error:?}");
    // No request got through a TLS session (the handshakes failed before
    // any HTTP was exchanged).
    assert_eq!(processor.count(), 0);
    // The right CA still works on the same upstream (clients per CA).
    upstream
        .send(request(&processor.url(), Some(processor.ca_pem())))
        .await
        .unwrap();
    assert_eq!(processor.count(), 1);
}

#[tokio::test]
async fn plain_http_is_refused_before_anything_is_sent() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let error = lenient()
        .send(request(&format!("http://{addr}"), None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            UpstreamError::Destination(DestinationError::NotHttps)
        ),
        "{error:?}"
    );
    // Nothing connected to the plain listener: a connection the client had
    // made would already sit in the kernel's accept queue, so one
    // non-blocking accept (no waiting) finds it.
    let listener = listener.into_std().unwrap();
    listener.set_nonblocking(true).unwrap();
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "something connected over plain HTTP: {accepted:?}"
    );
}

#[tokio::test]
async fn a_redirect_is_returned_as_it_is_and_not_followed() {
    let ca = TestCa::new("processor CA");
    let target = TestProcessor::start(&ca, Behaviour::Charge).await;
    let redirecting =
        TestProcessor::start(&ca, Behaviour::Redirect(format!("{}/stolen", target.url()))).await;
    let answer = lenient()
        .send(request(&redirecting.url(), Some(ca.cert_pem().as_str())))
        .await
        .unwrap();
    assert_eq!(answer.status, 302);
    assert_eq!(
        answer.headers["location"].to_str().unwrap(),
        format!("{}/stolen", target.url())
    );
    assert_eq!(redirecting.count(), 1);
    assert_eq!(
        target.count(),
        0,
        "the redirect target must receive nothing"
    );
}

#[tokio::test]
async fn an_answer_over_the_cap_is_refused_announced_or_not() {
    let ca = TestCa::new("processor CA");
    let upstream = Upstream::new(RelaySettings {
        allow_private_destinations: true,
        max_body_bytes: 64 * 1024,
        ..RelaySettings::default()
    });
    for behaviour in [
        Behaviour::Huge(64 * 1024 + 1),
        Behaviour::HugeUnannounced(10 * 1024 * 1024),
    ] {
        let processor = TestProcessor::start(&ca, behaviour.clone()).await;
        let error = upstream
            .send(request(&processor.url(), Some(processor.ca_pem())))
            .await
            .unwrap_err();
        assert!(
            matches!(error, UpstreamError::TooLarge),
            "{behaviour:?}: {error:?}"
        );
    }
    // Exactly at the cap is fine, announced or not.
    for behaviour in [
        Behaviour::Huge(64 * 1024),
        Behaviour::HugeUnannounced(64 * 1024),
    ] {
        let processor = TestProcessor::start(&ca, behaviour).await;
        let answer = upstream
            .send(request(&processor.url(), Some(processor.ca_pem())))
            .await
            .unwrap();
        assert_eq!(answer.body.len(), 64 * 1024);
    }
}

#[tokio::test]
async fn a_slow_processor_times_out() {
    let ca = TestCa::new("processor CA");
    let processor = TestProcessor::start(&ca, Behaviour::Slow(Duration::from_secs(600))).await;
    let mut slow = request(&processor.url(), Some(processor.ca_pem()));
    slow.timeout = Duration::from_millis(300);
    let error = lenient().send(slow).await.unwrap_err();
    assert!(matches!(error, UpstreamError::Timeout), "{error:?}");
}

#[tokio::test]
async fn the_relay_asks_for_identity_and_refuses_a_compressed_answer() {
    let ca = TestCa::new("processor CA");
    let processor = TestProcessor::start(&ca, Behaviour::Charge).await;
    // The caller's choice of encoding is never forwarded.
    let mut req = request(&processor.url(), Some(processor.ca_pem()));
    req.headers
        .insert("accept-encoding", HeaderValue::from_static("gzip, br"));
    lenient().send(req).await.unwrap();
    assert_eq!(
        processor.received()[0].header("accept-encoding"),
        Some("identity")
    );
    // A processor that compresses anyway: masking could not see the
    // bytes, so the answer is not returned.
    let gzipping = TestProcessor::start(&ca, Behaviour::Gzipped(b"\x1f\x8b...".to_vec())).await;
    let error = lenient()
        .send(request(&gzipping.url(), Some(gzipping.ca_pem())))
        .await
        .unwrap_err();
    assert!(matches!(error, UpstreamError::Unavailable(_)), "{error:?}");
}

#[tokio::test]
async fn paths_that_leave_the_base_are_refused_before_sending() {
    let ca = TestCa::new("processor CA");
    let processor = TestProcessor::start(&ca, Behaviour::Charge).await;
    for path in ["/../admin", "/%2e%2e/admin", "charges", "/a#frag"] {
        let mut req = request(&format!("{}/v1", processor.url()), Some(processor.ca_pem()));
        req.path_and_query = path.into();
        let error = lenient().send(req).await.unwrap_err();
        assert!(
            matches!(
                error,
                UpstreamError::Destination(DestinationError::PathEscapes)
            ),
            "{path}: {error:?}"
        );
    }
    assert_eq!(processor.count(), 0);
}

#[tokio::test]
async fn connections_are_pooled_per_trust_configuration() {
    let ca = TestCa::new("processor CA");
    let processor = TestProcessor::start(&ca, Behaviour::Charge).await;
    let upstream = lenient();
    for _ in 0..5 {
        upstream
            .send(request(&processor.url(), Some(processor.ca_pem())))
            .await
            .unwrap();
    }
    assert_eq!(processor.count(), 5);
    assert_eq!(processor.connections(), 1, "one pooled connection");
    // The same CA given with different bytes (a trailing newline) is
    // another trust configuration: its own client, its own connection.
    let other_bytes = format!("{}\n", processor.ca_pem());
    upstream
        .send(request(&processor.url(), Some(&other_bytes)))
        .await
        .unwrap();
    assert_eq!(processor.connections(), 2);
}
