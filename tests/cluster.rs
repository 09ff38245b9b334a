//! Three real `strongroom serve` processes on loopback over one PostgreSQL
//! database (issue 12): one audit chain for the cluster, and every limit and
//! authorization state held in the database, whichever node a request
//! reaches.
//!
//! Each node has its own keys directory holding only `audit.pub` (the first
//! node's also `root.json`): the sealed root key record is read from the
//! database, and each node is unsealed on its own with the same shares.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::http;
use common::process::{free_addr, strongroom, wait_until_listening};
use serde_json::{Value, json};

const PAN: &str = "4000056655665556";
const PASSWORD: &str = "correct horse battery staple";

/// One node: a `serve` process with its own data and keys directories.
struct Node {
    child: Option<Child>,
    addr: SocketAddr,
    keys: PathBuf,
}

impl Node {
    fn start(dir: &Path, config: &Path) -> Self {
        let (data, keys) = (dir.join("data"), dir.join("keys"));
        std::fs::create_dir_all(&data).unwrap();
        let addr = free_addr();
        let mut child = strongroom(&[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--keys-dir",
            keys.to_str().unwrap(),
            "--listen",
            &addr.to_string(),
        ])
        .env(
            "STRONGROOM_LOG",
            std::env::var("STRONGROOM_TEST_NODE_LOG").unwrap_or("warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // A file, not a pipe nobody reads while the test runs.
        .stderr(std::fs::File::create(dir.join("node.log")).unwrap())
        .spawn()
        .unwrap();
        wait_until_listening(addr, &mut child);
        Self {
            child: Some(child),
            addr,
            keys,
        }
    }

    fn unseal(&self, init: &Value) {
        for index in [0, 2, 4] {
            let body = json!({ "share": init["shares"][index] }).to_string();
            let reply = http(self.addr, "POST", "/v1/sys/unseal", None, Some(&body));
            assert_eq!(
                reply.status,
                200,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
        }
        assert_eq!(
            http(self.addr, "GET", "/v1/sys/ready", None, None).status,
            200
        );
    }

    /// `kill -9`: no shutdown work at all.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of `n` nodes over a fresh PostgreSQL schema, initialised with
/// shares through the first node's keys directory and unsealed on each
/// node. `None` (skipped, said once) without a test database.
struct Cluster {
    _database: common::pg::TestSchema,
    dir: tempfile::TempDir,
    config: PathBuf,
    init: Value,
    nodes: Vec<Node>,
    admin: String,
}

impl Cluster {
    fn start(n: usize, extra_config: &str) -> Option<Self> {
        let database = common::pg::schema()?;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("cluster.toml");
        std::fs::write(
            &config,
            format!(
                "store = {url:?}\n{extra_config}\n[tls]\ndisabled = true\n",
                url = database.url()
            ),
        )
        .unwrap();
        let first = dir.path().join("node0");
        std::fs::create_dir_all(first.join("data")).unwrap();
        let out = strongroom(&[
            "init",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            first.join("data").to_str().unwrap(),
            "--keys-dir",
            first.join("keys").to_str().unwrap(),
            "--shares",
            "5",
            "--threshold",
            "3",
            "--json",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let init: Value = serde_json::from_slice(&out.stdout).unwrap();
        // The other nodes get the vault's public audit key only: their root
        // key record comes from the database.
        for i in 1..n {
            let keys = dir.path().join(format!("node{i}/keys"));
            std::fs::create_dir_all(&keys).unwrap();
            std::fs::copy(first.join("keys/audit.pub"), keys.join("audit.pub")).unwrap();
        }
        let nodes: Vec<Node> = (0..n)
            .map(|i| Node::start(&dir.path().join(format!("node{i}")), &config))
            .collect();
        for node in &nodes {
            node.unseal(&init);
        }
        let admin = init["admin_api_key"].as_str().unwrap().to_owned();
        Some(Self {
            _database: database,
            dir,
            config,
            init,
            nodes,
            admin,
        })
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i % self.nodes.len()].addr
    }

    /// `POST /v1/principals` with `body` as the admin, through node 0.
    fn create_principal(&self, body: Value) -> Value {
        let reply = http(
            self.addr(0),
            "POST",
            "/v1/principals",
            Some(&self.admin),
            Some(&body.to_string()),
        );
        assert_eq!(
            reply.status,
            201,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.json()
    }

    fn service(&self, name: &str, role: &str) -> String {
        let created =
            self.create_principal(json!({"name": name, "kind": "service", "roles": [role]}));
        created["api_key"].as_str().unwrap().to_owned()
    }

    fn staff(&self, name: &str, role: &str) {
        self.create_principal(
            json!({"name": name, "kind": "staff", "roles": [role], "password": PASSWORD}),
        );
    }

    fn login(&self, node: usize, name: &str, password: &str) -> common::HttpResponse {
        let body = json!({"username": name, "password": password}).to_string();
        http(self.addr(node), "POST", "/v1/auth/login", None, Some(&body))
    }

    /// `audit verify` offline, over the whole cluster's chain in the
    /// database, against the first node's keys directory.
    fn verify_offline(&self) -> std::process::Output {
        strongroom(&[
            "audit",
            "verify",
            "--config",
            self.config.to_str().unwrap(),
            "--keys-dir",
            self.nodes[0].keys.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap()
    }
}

impl Drop for Cluster {
    /// On a failure, the nodes' logs (warnings and errors) say why.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.nodes.len() {
                let log = self.dir.path().join(format!("node{i}/node.log"));
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                eprintln!(
                    "--- node {i} log (last lines, newest first) ---\n{}",
                    tail.join("\n")
                );
            }
        }
    }
}

fn store_card(addr: SocketAddr, key: &str) -> Option<String> {
    let body = json!({"pan": PAN, "exp_month": 12, "exp_year": 2031, "holder_name": "Ada Lovelace", "subject_ref": "user-42"}).to_string();
    let reply = common::try_http(addr, "POST", "/v1/records/card", Some(key), Some(&body)).ok()?;
    (reply.status == 201).then(|| reply.json()["id"].as_str().unwrap().to_owned())
}

fn verify_online(addr: SocketAddr, key: &str) -> Value {
    let reply = http(addr, "GET", "/v1/audit/verify", Some(key), None);
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

#[test]
fn writers_on_three_nodes_lose_no_acknowledged_write_when_one_is_killed_and_the_chain_verifies() {
    let Some(mut cluster) = Cluster::start(3, "") else {
        return;
    };
    let payments = cluster.service("payments", "payment_service");
    let auditor = cluster.service("auditor", "auditor");
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..6)
        .map(|i| {
            let (addr, key) = (cluster.addr(i), payments.clone());
            let (acknowledged, stop) = (Arc::clone(&acknowledged), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Some(id) = store_card(addr, &key) {
                        acknowledged.lock().unwrap().push(id);
                    }
                }
            })
        })
        .collect();
    let acked = || acknowledged.lock().unwrap().len();
    common::wait_until("300 cards acknowledged", || acked() >= 300);
    // Mid-stream: node 2 dies with rounds in flight.
    cluster.nodes[2].kill();
    let at_kill = acked();
    common::wait_until("300 more cards through the living nodes", || {
        acked() >= at_kill + 300
    });
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.join().unwrap();
    }
    let ids: BTreeSet<String> = acknowledged.lock().unwrap().iter().cloned().collect();
    assert_eq!(ids.len(), acked(), "two writes were given one id");
    for (i, id) in ids.iter().enumerate() {
        let reply = http(
            cluster.addr(i % 2),
            "GET",
            &format!("/v1/records/{id}"),
            Some(&payments),
            None,
        );
        assert_eq!(reply.status, 200, "acknowledged card {id} lost");
    }
    // One chain for the cluster: every acknowledged creation is in it once.
    for node in 0..2 {
        let verified = verify_online(cluster.addr(node), &auditor);
        assert_eq!(verified["ok"], true, "{verified}");
        assert!(verified["entries"].as_u64().unwrap() >= ids.len() as u64);
    }
    let out = cluster.verify_offline();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut created = BTreeSet::new();
    let mut after = 0;
    loop {
        let reply = http(
            cluster.addr(0),
            "GET",
            &format!("/v1/audit?action=record.create&limit=1000&after={after}"),
            Some(&auditor),
            None,
        );
        assert_eq!(reply.status, 200);
        let page = reply.json();
        let entries = page["entries"].as_array().unwrap();
        for entry in entries {
            if entry["outcome"] == "allowed" {
                assert!(
                    created.insert(entry["target"].as_str().unwrap().to_owned()),
                    "a creation chained twice"
                );
            }
            after = entry["seq"].as_u64().unwrap();
        }
        if entries.is_empty() || page["next_after"].is_null() {
            break;
        }
    }
    assert!(
        ids.is_subset(&created),
        "an acknowledged write has no entry"
    );
    // The killed node comes back, unseals on its own and joins the chain.
    let dir2 = cluster.dir.path().join("node2");
    cluster.nodes[2] = Node::start(&dir2, &cluster.config);
    cluster.nodes[2].unseal(&cluster.init);
    assert!(store_card(cluster.addr(2), &payments).is_some());
    assert_eq!(verify_online(cluster.addr(2), &auditor)["ok"], true);
}

#[test]
fn a_token_revoked_on_one_node_is_refused_on_the_others_at_once() {
    let Some(cluster) = Cluster::start(3, "") else {
        return;
    };
    let payments = cluster.service("payments", "payment_service");
    let body = json!({"value": "secret-value", "kind": "generic", "format": "random"}).to_string();
    let reply = http(
        cluster.addr(0),
        "POST",
        "/v1/tokens",
        Some(&payments),
        Some(&body),
    );
    assert_eq!(reply.status, 201);
    let token = reply.json()["token"].as_str().unwrap().to_owned();
    let detokenize = |node: usize| {
        let body = json!({"tokens": [token]}).to_string();
        let reply = http(
            cluster.addr(node),
            "POST",
            "/v1/tokens/detokenize",
            Some(&payments),
            Some(&body),
        );
        assert_eq!(reply.status, 200);
        reply.json()["results"][&token].clone()
    };
    for node in 0..3 {
        assert_eq!(detokenize(node)["value"], "secret-value");
    }
    let path = format!("/v1/tokens/{token}");
    assert_eq!(
        http(cluster.addr(0), "DELETE", &path, Some(&payments), None).status,
        204
    );
    for node in [1, 2, 0] {
        assert_eq!(
            detokenize(node)["error"],
            "token_revoked",
            "node {node} still detokenizes"
        );
        assert!(detokenize(node).get("value").is_none());
    }
}

#[test]
fn login_lockout_and_the_reveal_quota_hold_when_attempts_are_spread_over_the_nodes() {
    let Some(cluster) = Cluster::start(3, "lockout_threshold = 3\nreveals_per_hour = 4\n") else {
        return;
    };
    cluster.staff("mallory-target", "compliance_officer");
    let cluster = &cluster;
    // Twelve wrong passwords at once, four per node: at most the threshold
    // are checked, the rest are refused, and then even the right password
    // is refused on every node.
    let wrong: Vec<u16> = std::thread::scope(|scope| {
        let attempts: Vec<_> = (0..12)
            .map(|i| {
                scope.spawn(move || cluster.login(i, "mallory-target", "wrong password!").status)
            })
            .collect();
        attempts.into_iter().map(|a| a.join().unwrap()).collect()
    });
    let checked = wrong.iter().filter(|s| **s == 401).count();
    assert!(
        checked <= 3,
        "{checked} wrong passwords checked past a threshold of 3: {wrong:?}"
    );
    assert!(wrong.iter().all(|s| *s == 401 || *s == 429), "{wrong:?}");
    for node in 0..3 {
        assert_eq!(
            cluster.login(node, "mallory-target", PASSWORD).status,
            429,
            "node {node}"
        );
    }

    // The reveal quota: 4 an hour per officer, 12 reveals spread over the
    // nodes at once, through one session opened on node 0.
    let payments = cluster.service("payments", "payment_service");
    cluster.staff("olivia", "compliance_officer");
    let session = cluster.login(0, "olivia", PASSWORD);
    assert_eq!(session.status, 200);
    let session = session.json()["token"].as_str().unwrap().to_owned();
    let kyc = json!({
        "subject_ref": "user-42",
        "legal_name": {"given": "Ada", "family": "Lovelace"},
        "date_of_birth": "1815-12-10",
        "nationality": "GB",
        "address": {"line1": "12 St James's Square", "city": "London", "postal_code": "SW1Y 4JH", "country": "GB"},
    })
    .to_string();
    let reply = http(
        cluster.addr(1),
        "POST",
        "/v1/records/kyc",
        Some(&payments),
        Some(&kyc),
    );
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let path = format!(
        "/v1/records/{}/reveal",
        reply.json()["id"].as_str().unwrap()
    );
    let reveal = json!({"fields": ["date_of_birth"], "reason": "AML review", "ticket": "CASE-1"})
        .to_string();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let reveals: Vec<_> = (0..12)
            .map(|i| {
                let (path, reveal, session) = (&path, &reveal, &session);
                scope.spawn(move || {
                    http(cluster.addr(i), "POST", path, Some(session), Some(reveal)).status
                })
            })
            .collect();
        reveals.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        8,
        "{statuses:?}"
    );
}

#[test]
fn kek_counters_are_never_reused_across_nodes() {
    let Some(cluster) = Cluster::start(3, "") else {
        return;
    };
    let payments = cluster.service("payments", "payment_service");
    // Where each node's count of the active card KEK stands (`encryptions`
    // in `GET /v1/keys` is the node's own position in the version's
    // counter, which it takes in blocks reserved in the database).
    let position = |node: usize| {
        let reply = http(
            cluster.addr(node),
            "GET",
            "/v1/keys",
            Some(&cluster.admin),
            None,
        );
        assert_eq!(reply.status, 200);
        let keys = reply.json()["keys"].clone();
        let active: Vec<u64> = keys
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["purpose"] == "card" && k["active"] == true)
            .map(|k| k["encryptions"].as_u64().unwrap())
            .collect();
        assert_eq!(active.len(), 1, "{keys}");
        active[0]
    };
    // The three nodes encrypt at once, five cards each.
    std::thread::scope(|scope| {
        for node in 0..3 {
            let (addr, key) = (cluster.addr(node), &payments);
            scope.spawn(move || {
                for _ in 0..5 {
                    assert!(store_card(addr, key).is_some());
                }
            });
        }
    });
    // Each node counts inside a block of 1024 of its own: had two counted
    // from the same stored value, they would stand in one block and use
    // the same counter values (the same positions: 5 and 5).
    let blocks: BTreeSet<u64> = (0..3).map(|node| (position(node) - 1) / 1024).collect();
    assert_eq!(
        blocks.len(),
        3,
        "two nodes share a counter block: {blocks:?}"
    );
}
