//! A payment processor for tests: a real HTTPS server (hyper over
//! tokio-rustls) on 127.0.0.1 and a free port, with a certificate from a
//! [`TestCa`](super::tls::TestCa), that records every request it gets
//! (method, path and query, headers, body) and answers as its
//! [`Behaviour`] says. Tests assert both what it received and what it did
//! NOT receive (`count() == 0` after a refused relay).
//!
//! Also compiled into `examples/processor.rs` (a stub a reader runs by hand)
//! through `#[path]`, so there is one implementation.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use super::tls::TestCa;

/// How the processor answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 `{"id":"ch_<n>","status":"succeeded"}`.
    Charge,
    /// 402 with the request body echoed in the error, as careless
    /// processors do: `{"error":{"message":"card declined","request":"<body>"}}`.
    EchoError,
    /// 302 to `location` (relative to this processor when it starts with /).
    Redirect(String),
    /// Waits this long, then answers as `Charge`.
    Slow(Duration),
    /// 200 with a body of this many bytes (`x`), with its content-length.
    Huge(usize),
    /// 200 with a body of this many bytes (`x`) sent in 16 KiB chunks with
    /// no length announced: a reader must count as it reads.
    HugeUnannounced(usize),
    /// 200 with this content type and body, as given.
    Fixed(&'static str, Vec<u8>),
    /// 200 claiming `content-encoding: gzip` (whatever was asked for).
    Gzipped(Vec<u8>),
}

/// One request as the processor received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct Shared {
    behaviour: Behaviour,
    received: Mutex<Vec<Received>>,
    charges: AtomicUsize,
    /// Requests started (counted before the body is read).
    started: AtomicUsize,
    /// TLS connections accepted (handshake completed).
    connections: AtomicUsize,
}

/// The running processor; stops when dropped.
pub struct TestProcessor {
    addr: SocketAddr,
    shared: Arc<Shared>,
    ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestProcessor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestProcessor {
    /// Starts on 127.0.0.1 and a free port, with a server certificate for
    /// `localhost` and 127.0.0.1 issued by `ca`. Needs a tokio runtime.
    pub async fn start(ca: &TestCa, behaviour: Behaviour) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), ca, behaviour).await
    }

    pub async fn start_on(bind: SocketAddr, ca: &TestCa, behaviour: Behaviour) -> Self {
        let issued = ca.server(&[]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(issued.chain(), issued.private_key())
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            behaviour,
            received: Mutex::new(Vec::new()),
            charges: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        });
        let accepting = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let shared = accepting.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(answer(&shared, request).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            shared,
            ca_pem: ca.cert_pem(),
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `https://localhost:<port>`.
    pub fn localhost_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// The PEM of the CA that issued its certificate (a route's `ca_pem`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Every request received completely, in order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// How many TLS connections were accepted (handshakes completed).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// How many requests reached it (counted as soon as one arrives, before
    /// its body is read).
    pub fn count(&self) -> usize {
        self.shared.started.load(Ordering::SeqCst)
    }
}

type Answer = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Answer {
    Full::new(bytes.into()).boxed()
}

/// A body of `left` bytes in chunks, with no size hint.
struct Unannounced {
    left: usize,
}

impl Body for Unannounced {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let n = self.left.min(16 * 1024);
        if n == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n])))))
    }
}

async fn answer(shared: &Shared, request: Request<Incoming>) -> Response<Answer> {
    shared.started.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default();
    let received = Received {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    let echoed = received.body_text();
    shared.received.lock().unwrap().push(received);
    let json = |status: StatusCode, value: serde_json::Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("x-processor", "test")
            .body(full(value.to_string()))
            .unwrap()
    };
    let charge = || {
        let n = shared.charges.fetch_add(1, Ordering::SeqCst) + 1;
        json(
            StatusCode::OK,
            serde_json::json!({"id": format!("ch_{n}"), "status": "succeeded"}),
        )
    };
    match &shared.behaviour {
        Behaviour::Charge => charge(),
        Behaviour::EchoError => json(
            StatusCode::PAYMENT_REQUIRED,
            serde_json::json!({"error": {"message": "card declined", "request": echoed}}),
        ),
        Behaviour::Redirect(location) => Response::builder()
            .status(StatusCode::FOUND)
            .header("location", location.as_str())
            .body(full(Bytes::new()))
            .unwrap(),
        Behaviour::Slow(wait) => {
            tokio::time::sleep(*wait).await;
            charge()
        }
        Behaviour::Huge(size) => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/plain")
            .body(full(vec![b'x'; *size]))
            .unwrap(),
        Behaviour::HugeUnannounced(size) => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/plain")
            .body(Unannounced { left: *size }.boxed())
            .unwrap(),
        Behaviour::Gzipped(body) => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(full(body.clone()))
            .unwrap(),
        Behaviour::Fixed(content_type, body) => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", *content_type)
            .body(full(body.clone()))
            .unwrap(),
    }
}
