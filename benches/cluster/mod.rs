//! Nodes over PostgreSQL for the load tool (`--postgres URL --nodes N`): a
//! fresh schema, `init` with shares, N `serve` processes on loopback, each
//! unsealed, and the principals the scenarios use.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_strongroom");
const PASSWORD: &str = "load test officer password";

/// The running nodes; killed, and their schema dropped, on drop.
pub struct Cluster {
    nodes: Vec<Child>,
    admin_url: String,
    schema: String,
    /// What `strongroom dev --json` would print, with `urls` for every node.
    pub credentials: Value,
}

/// `url` with its connections' search path set to `schema`.
fn in_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-csearch_path%3D{schema}")
}

fn sql(url: &str, statement: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let driver = tokio::spawn(connection);
        client.batch_execute(statement).await.unwrap();
        drop(client);
        let _ = driver.await;
    });
}

/// One HTTP/1.1 request with `Connection: close`: status and JSON body.
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let body = body.to_string();
    let auth = bearer.map_or(String::new(), |b| format!("authorization: Bearer {b}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let status = reply[9..12].parse().unwrap();
    let json = reply
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl Cluster {
    pub fn start(url: &str, n: usize, dir: &Path) -> Self {
        let schema = format!("strongroom_load_{}", std::process::id());
        sql(
            url,
            &format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"),
        );
        let store = in_schema(url, &schema);
        let config = dir.join("cluster.toml");
        std::fs::write(
            &config,
            format!("store = {store:?}\nreveals_per_hour = 1000000\n[tls]\ndisabled = true\n"),
        )
        .unwrap();
        let node_dir = |i: usize| dir.join(format!("node{i}"));
        for i in 0..n {
            std::fs::create_dir_all(node_dir(i).join("data")).unwrap();
        }
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        let out = Command::new(BIN)
            .args(["init", "--config", &path(&config), "--data-dir"])
            .arg(node_dir(0).join("data"))
            .arg("--keys-dir")
            .arg(node_dir(0).join("keys"))
            .args(["--shares", "5", "--threshold", "3", "--json"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let init: Value = serde_json::from_slice(&out.stdout).unwrap();
        for i in 1..n {
            std::fs::create_dir_all(node_dir(i).join("keys")).unwrap();
            std::fs::copy(
                node_dir(0).join("keys/audit.pub"),
                node_dir(i).join("keys/audit.pub"),
            )
            .unwrap();
        }
        let mut nodes = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..n {
            let addr = free_addr();
            let mut child = Command::new(BIN)
                .args([
                    "serve",
                    "--config",
                    &path(&config),
                    "--listen",
                    &addr.to_string(),
                ])
                .arg("--data-dir")
                .arg(node_dir(i).join("data"))
                .arg("--keys-dir")
                .arg(node_dir(i).join("keys"))
                .env("STRONGROOM_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while TcpStream::connect(addr).is_err() {
                assert!(child.try_wait().unwrap().is_none(), "node {i} exited");
                assert!(Instant::now() < deadline, "node {i} does not listen");
                std::thread::sleep(Duration::from_millis(20));
            }
            for share in [0, 2, 4] {
                let body = json!({ "share": init["shares"][share] });
                assert_eq!(call(addr, "POST", "/v1/sys/unseal", None, &body).0, 200);
            }
            nodes.push(child);
            addrs.push(addr);
        }
        let admin = init["admin_api_key"].as_str().unwrap();
        let principal = |body: Value| {
            let (status, reply) = call(addrs[0], "POST", "/v1/principals", Some(admin), &body);
            assert_eq!(status, 201, "{reply}");
            reply
        };
        let payments =
            principal(json!({"name": "payments", "kind": "service", "roles": ["payment_service"]}));
        principal(
            json!({"name": "officer", "kind": "staff", "roles": ["compliance_officer"], "password": PASSWORD}),
        );
        let urls: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
        let credentials = json!({
            "urls": urls,
            "payment_service_api_key": payments["api_key"],
            "staff": {"officer": {"username": "officer", "password": PASSWORD}},
        });
        Self {
            nodes,
            admin_url: url.to_owned(),
            schema,
            credentials,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        sql(
            &self.admin_url,
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema),
        );
    }
}
