//! The PostgreSQL backend: one key/value table shared by every node of a
//! cluster (docs/operations.md, "PostgreSQL store").
//!
//! # Threads
//!
//! `Store` calls are synchronous and come from anywhere: blocking threads,
//! tokio worker threads of the server's multi-thread runtime, or the
//! current-thread runtimes of some tests. The store owns a small tokio
//! runtime of its own (two threads) on which connections are made and
//! their `Connection` futures run; a caller only ever waits, with
//! `futures_executor::block_on`, for futures that talk to those
//! connections through channels and need no tokio context of the
//! caller's. On a multi-thread tokio worker the wait is wrapped in
//! `tokio::task::block_in_place`, so the worker's other tasks move to
//! another thread meanwhile; on a current-thread runtime (where
//! `block_in_place` would panic) or a plain thread it simply blocks.
//!
//! # Isolation
//!
//! Every writing transaction (`apply`, `apply_locked`) runs at
//! SERIALIZABLE. A compare-and-swap reads its precondition keys and writes
//! in one transaction; PostgreSQL's serializable snapshot isolation then
//! refuses (SQLSTATE 40001) any interleaving that no serial order explains:
//! two swaps of one counter, and write skew (T1 expects A absent and writes
//! B while T2 expects B absent and writes A), whose reads of an absent key
//! take predicate locks on the primary key's index. The alternative,
//! `SELECT … FOR UPDATE` on the precondition keys, locks rows that exist
//! but proves nothing about an absent key without extra placeholder rows,
//! and cannot protect against a writer at a weaker isolation level; one
//! rule for every writer is simpler to trust. A serialization failure (or a
//! unique violation or deadlock, the other faces of the same race) is
//! retried inside the store: a transaction is a pure function of what it
//! reads, so running it again is safe, and [`StoreError::Conflict`] means
//! only that a precondition really did not hold.
//!
//! # Durability
//!
//! A commit is durable when it returns as long as `synchronous_commit` is
//! not `off`: every connection sets it `on` (appended to the connection's
//! options, so it wins over the URL's), and `connect` refuses a server that
//! still reports `off`. `flush` therefore has nothing left to do.
//!
//! The `COMMIT` is both the apply and the durability point, so a
//! connection that breaks while it is in flight leaves the outcome
//! unknown: that is [`StoreError::Unknown`] (the embedded stores' failed
//! flush, in effect), never retried and never "nothing was done".

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use rustls_pki_types::pem::PemObject;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, NoTls};

use super::{KeyValue, Reads, Round, Store, StoreError, Transaction, Write};

/// Connections in the pool when the configuration names no size.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// The fewest connections a pool may have, so that nothing waits on the
/// pool for a connection that only its own wait could free. An audit round
/// holds one connection (its transaction, with the lock row) and, when
/// another node wrote since this node's last round, reads its tail through
/// a second. A backup's snapshot (SERIALIZABLE READ ONLY DEFERRABLE) holds
/// a connection while PostgreSQL makes it wait for that round to end.
/// Snapshots take turns (one per store), and nothing else holds a
/// connection while it waits on a round, so with three connections the
/// tail read always finds one; the fourth keeps ordinary requests going
/// meanwhile. (Reading the tail inside the round's transaction would need
/// no second connection; it would also add the tail's range reads to the
/// round's serializable conflicts.)
pub const MIN_POOL_SIZE: usize = 4;

/// Rows fetched per step by `snapshot`.
const SNAPSHOT_BATCH: i32 = 512;

/// Attempts of one transaction that keeps losing serialization races.
const MAX_ATTEMPTS: u32 = 100;

/// One schema change, applied once in its own transaction.
struct Migration {
    version: i32,
    description: &'static str,
    sql: &'static str,
}

/// Every schema change this build knows, in order (never edit one that has
/// shipped: add the next).
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "key/value table and lock rows",
    sql: "CREATE TABLE strongroom_kv (key bytea PRIMARY KEY, value bytea NOT NULL);
          CREATE TABLE strongroom_locks (name bytea PRIMARY KEY);",
}];

/// The newest schema version this build knows.
pub fn schema_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// How to reach the database.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    /// `postgres://user:password@host:port/db?sslmode=…`.
    pub url: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// PEM certificates the server's must chain to (default: the system's
    /// roots).
    pub ca_file: Option<PathBuf>,
}

impl PostgresSettings {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: DEFAULT_POOL_SIZE,
            ca_file: None,
        }
    }

    /// The URL without its password, for messages and logs.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl std::fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("url", &self.redacted_url())
            .field("pool_size", &self.pool_size)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// `url` with the password (in the user part or as a `password=`
/// parameter) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        // A password may hold `/`, `?` and `@` unencoded (tokio-postgres
        // then cuts it at the first `@`, URL parsers at the last): the
        // password is taken to run from the first `:` to the last `@`
        // anywhere after the scheme. Cutting too much only hides more.
        if let Some(at) = out.get(rest_start..).and_then(|rest| rest.rfind('@'))
            && let Some(colon) = out
                .get(rest_start..rest_start + at)
                .and_then(|user| user.find(':'))
        {
            out.replace_range(rest_start + colon + 1..rest_start + at, "***");
        }
    }
    if let Some(query_start) = out.find('?') {
        let (head, query) = out.split_at(query_start + 1);
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                // The key as the client reads it: percent-decoded.
                Some((name, _)) if is_password_key(name) => format!("{name}=***"),
                _ => param.to_owned(),
            })
            .collect();
        out = format!("{head}{}", params.join("&"));
    }
    out
}

/// Whether a URL parameter's key, once percent-decoded, is `password`.
fn is_password_key(name: &str) -> bool {
    let bytes = name.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            _ => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    decoded.eq_ignore_ascii_case(b"password")
}

/// What [`PostgresStore::migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationReport {
    /// The schema version found (0: none).
    pub from: i32,
    /// The schema version now.
    pub to: i32,
    /// The migrations this call applied (another node may have applied
    /// some of the rest meanwhile).
    pub applied: Vec<AppliedMigration>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppliedMigration {
    pub version: i32,
    pub description: String,
}

/// A store in a PostgreSQL database (the current schema of the connection's
/// `search_path`).
pub struct PostgresStore {
    pool: Pool,
    /// Taken (and shut down without waiting) on drop, which may happen
    /// inside an async context where dropping a runtime would panic.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    target: String,
    /// Lock rows known to exist.
    locks: Mutex<HashSet<Vec<u8>>>,
    /// Held by a snapshot for its whole walk: snapshots take turns, so at
    /// most one connection waits for a round to end (see [`MIN_POOL_SIZE`]).
    snapshots: Mutex<()>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A database error without anything read or written: its SQLSTATE and
/// message, never the DETAIL (which can quote a key).
fn pg_error(e: &tokio_postgres::Error) -> StoreError {
    StoreError::Backend(describe(e))
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("postgres: {} ({})", db.message(), db.code().code()),
        None => format!("postgres: {e}"),
    }
}

fn pool_error(e: &deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        other => StoreError::Backend(format!("postgres connection pool: {other}")),
    }
}

/// Errors that mean "lost a race with another transaction; run again".
fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::UNIQUE_VIOLATION
    )
}

/// A short, growing, jittered pause before attempt `attempt` runs again.
fn backoff(attempt: u32) {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(attempt);
    let ceiling = 200u64 << attempt.min(6);
    let micros = hasher.finish() % ceiling;
    std::thread::sleep(Duration::from_micros(micros));
}

/// Whether every host of `config` is this machine (a Unix socket or a
/// loopback address).
fn loopback_only(config: &tokio_postgres::Config) -> bool {
    let hosts_local = config.get_hosts().iter().all(|host| match host {
        Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Host::Unix(_) => true,
    });
    hosts_local && config.get_hostaddrs().iter().all(|ip| ip.is_loopback())
}

/// The roots a server certificate must chain to: `ca_file`, or the
/// system's bundle (`SSL_CERT_FILE`, else the usual locations).
fn root_store(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, StoreError> {
    let candidates: Vec<PathBuf> = match ca_file {
        Some(path) => vec![path.to_path_buf()],
        None => std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .into_iter()
            .chain(
                [
                    "/etc/ssl/certs/ca-certificates.crt",
                    "/etc/pki/tls/certs/ca-bundle.crt",
                    "/etc/ssl/cert.pem",
                ]
                .map(PathBuf::from),
            )
            .collect(),
    };
    let path = candidates
        .iter()
        .find(|p| p.is_file())
        .ok_or_else(|| match ca_file {
            Some(path) => {
                StoreError::Backend(format!("store.ca_file {} cannot be read", path.display()))
            }
            None => StoreError::Backend(
                "no system CA bundle found for TLS to PostgreSQL: set store.ca_file".into(),
            ),
        })?;
    let pem =
        std::fs::read(path).map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| {
            StoreError::Backend(format!("{}: not a PEM certificate: {e}", path.display()))
        })?;
        roots.add(cert).map_err(|e| {
            StoreError::Backend(format!("{}: unusable certificate: {e}", path.display()))
        })?;
    }
    if roots.is_empty() {
        return Err(StoreError::Backend(format!(
            "{} holds no certificate",
            path.display()
        )));
    }
    Ok(roots)
}

/// A verifying rustls client (ring provider): the server's certificate
/// must chain to `roots` and name the host connected to.
fn tls_connector(
    ca_file: Option<&Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let roots = root_store(ca_file)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Backend(format!("TLS to PostgreSQL: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The writes of a transaction folded per key, in order (the last write
/// of a key wins): one statement may not touch a row twice.
struct Folded<'a> {
    put_keys: Vec<&'a [u8]>,
    put_values: Vec<&'a [u8]>,
    deletes: Vec<&'a [u8]>,
}

fn fold_writes(tx: &Transaction) -> Folded<'_> {
    let mut last: BTreeMap<&[u8], Option<&[u8]>> = BTreeMap::new();
    for write in &tx.writes {
        match write {
            Write::Put(k, v) => last.insert(k, Some(v)),
            Write::Delete(k) => last.insert(k, None),
        };
    }
    let mut folded = Folded {
        put_keys: Vec::new(),
        put_values: Vec::new(),
        deletes: Vec::new(),
    };
    for (k, v) in last {
        match v {
            Some(v) => {
                folded.put_keys.push(k);
                folded.put_values.push(v);
            }
            None => folded.deletes.push(k),
        }
    }
    folded
}

const GET_SQL: &str = "SELECT value FROM strongroom_kv WHERE key = $1";
const READ_MANY_SQL: &str = "SELECT key, value FROM strongroom_kv WHERE key = ANY($1)";
const UPSERT_SQL: &str = "INSERT INTO strongroom_kv (key, value) \
     SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value";
const DELETE_SQL: &str = "DELETE FROM strongroom_kv WHERE key = ANY($1)";

/// Inside an open transaction: `Ok(false)` if a precondition of `tx` does
/// not hold (nothing written), else writes `tx`.
async fn check_and_write(
    txn: &deadpool_postgres::Transaction<'_>,
    tx: &Transaction,
) -> Result<bool, tokio_postgres::Error> {
    if !tx.preconditions.is_empty() {
        let keys: Vec<&[u8]> = tx.preconditions.iter().map(|(k, _)| k.as_slice()).collect();
        let statement = txn.prepare_cached(READ_MANY_SQL).await?;
        let rows = txn.query(&statement, &[&keys]).await?;
        let mut current: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for row in rows {
            current.insert(row.try_get(0)?, row.try_get(1)?);
        }
        let holds = tx
            .preconditions
            .iter()
            .all(|(k, expected)| current.get(k) == expected.as_ref());
        if !holds {
            return Ok(false);
        }
    }
    let folded = fold_writes(tx);
    if !folded.put_keys.is_empty() {
        let statement = txn.prepare_cached(UPSERT_SQL).await?;
        txn.execute(&statement, &[&folded.put_keys, &folded.put_values])
            .await?;
    }
    if !folded.deletes.is_empty() {
        let statement = txn.prepare_cached(DELETE_SQL).await?;
        txn.execute(&statement, &[&folded.deletes]).await?;
    }
    Ok(true)
}

/// How one attempt of a writing transaction ended.
enum Attempt {
    Committed,
    PreconditionFailed,
    /// Lost a serialization race: run again.
    Retry,
}

/// Reads inside the transaction of one `apply_locked` round.
struct TxReads<'a, 'b> {
    txn: &'a deadpool_postgres::Transaction<'b>,
    /// Set when a read lost a serialization race (the round is run again).
    lost_race: std::cell::Cell<bool>,
}

impl Reads for TxReads<'_, '_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let read = futures_executor::block_on(async {
            let statement = self.txn.prepare_cached(GET_SQL).await?;
            let row = self.txn.query_opt(&statement, &[&key]).await?;
            row.map(|r| r.try_get::<_, Vec<u8>>(0)).transpose()
        });
        read.map_err(|e| {
            if retryable(&e) {
                self.lost_race.set(true);
            }
            pg_error(&e)
        })
    }
}

impl PostgresStore {
    /// Connects, applies the migrations this build knows that the database
    /// lacks (`init`, `serve`), and refuses a schema newer than this build.
    pub fn connect(settings: &PostgresSettings) -> Result<Self, StoreError> {
        Self::migrate(settings).map(|(store, _)| store)
    }

    /// [`PostgresStore::connect`], also saying which migrations it applied.
    pub fn migrate(settings: &PostgresSettings) -> Result<(Self, MigrationReport), StoreError> {
        let store = Self::connect_only(settings)?;
        let report = store.run_migrations()?;
        Ok((store, report))
    }

    /// Connects to a database whose schema is already at this build's
    /// version, creating nothing (the offline commands): a missing or older
    /// schema asks for `strongroom migrate`, a newer one is refused.
    pub fn open_existing(settings: &PostgresSettings) -> Result<Self, StoreError> {
        let store = Self::connect_only(settings)?;
        let found = store.blocking(|| {
            let client = store.client()?;
            futures_executor::block_on(current_version(&client)).map_err(|e| pg_error(&e))
        })?;
        match found {
            None | Some(0) => Err(StoreError::Backend(format!(
                "{} holds no Strongroom schema: run `strongroom migrate` (nothing was created)",
                store.target
            ))),
            Some(v) if v > schema_version() => Err(newer_schema(v)),
            Some(v) if v < schema_version() => Err(StoreError::Backend(format!(
                "{} holds schema version {v}, older than this build's {}: run `strongroom migrate`",
                store.target,
                schema_version()
            ))),
            Some(_) => Ok(store),
        }
    }

    fn connect_only(settings: &PostgresSettings) -> Result<Self, StoreError> {
        let target = settings.redacted_url();
        if !(settings.url.starts_with("postgres://") || settings.url.starts_with("postgresql://")) {
            return Err(StoreError::Backend(format!(
                "{target} is not a postgres:// or postgresql:// URL"
            )));
        }
        let mut config = tokio_postgres::Config::from_str(&settings.url)
            .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL {target}: {e}")))?;
        // Later `-c` options win: a commit is durable when it returns.
        let options = match config.get_options() {
            Some(existing) if !existing.is_empty() => {
                format!("{existing} -c synchronous_commit=on")
            }
            _ => "-c synchronous_commit=on".to_owned(),
        };
        config.options(options);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name("strongroom");
        // Never a standby: a replica lagging behind would answer reads
        // with state the primary has already changed (a revoked token).
        config.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("strongroom-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("postgres runtime: {e}")))?;
        let handle = runtime.handle().clone();

        // TLS: always verified. Plaintext only to this machine.
        let use_tls = match (config.get_ssl_mode(), loopback_only(&config)) {
            (SslMode::Require, _) => true,
            (_, _) if settings.ca_file.is_some() => true,
            (SslMode::Disable, false) => {
                return Err(StoreError::Backend(format!(
                    "{target}: refusing a plaintext connection to a host that is not loopback; \
                     use sslmode=require (the server's certificate is verified)"
                )));
            }
            (_, false) => true,
            (_, true) => false,
        };
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = if use_tls {
            config.ssl_mode(SslMode::Require);
            let tls = tls_connector(settings.ca_file.as_deref())?;
            Manager::from_config(config, tls, manager_config)
        } else {
            config.ssl_mode(SslMode::Disable);
            Manager::from_config(config, NoTls, manager_config)
        };
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size.max(MIN_POOL_SIZE))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(60)))
            .create_timeout(Some(Duration::from_secs(15)))
            .build()
            .map_err(|e| StoreError::Backend(format!("postgres connection pool: {e}")))?;
        let store = Self {
            pool,
            runtime: Some(runtime),
            handle,
            target,
            locks: Mutex::new(HashSet::new()),
            snapshots: Mutex::new(()),
        };
        store.check_durability()?;
        Ok(store)
    }

    /// Refuses a server where commits would not be durable on return.
    fn check_durability(&self) -> Result<(), StoreError> {
        let setting = self.blocking(|| {
            let client = self.client()?;
            futures_executor::block_on(async {
                let row = client.query_one("SHOW synchronous_commit", &[]).await?;
                row.try_get::<_, String>(0)
            })
            .map_err(|e| pg_error(&e))
        })?;
        if setting == "off" {
            return Err(StoreError::Backend(format!(
                "{}: synchronous_commit is off; a commit would not be durable when acknowledged",
                self.target
            )));
        }
        Ok(())
    }

    /// Applies the known migrations the database lacks, each in its own
    /// transaction under an exclusive lock of the migrations table (a row
    /// or table lock, not an advisory lock, which some PostgreSQL-compatible
    /// databases lack), so that nodes starting together apply each once.
    fn run_migrations(&self) -> Result<MigrationReport, StoreError> {
        self.blocking(|| {
            let mut client = self.client()?;
            futures_executor::block_on(async {
                create_migrations_table(&client).await?;
                let mut report = MigrationReport {
                    from: 0,
                    to: 0,
                    applied: Vec::new(),
                };
                let mut first = true;
                loop {
                    let txn = client.transaction().await.map_err(|e| pg_error(&e))?;
                    txn.batch_execute(
                        "LOCK TABLE strongroom_migrations IN SHARE ROW EXCLUSIVE MODE",
                    )
                    .await
                    .map_err(|e| pg_error(&e))?;
                    let current = current_version_in(&txn)
                        .await
                        .map_err(|e| pg_error(&e))?
                        .unwrap_or(0);
                    if first {
                        report.from = current;
                        first = false;
                    }
                    if current > schema_version() {
                        return Err(newer_schema(current));
                    }
                    let Some(next) = MIGRATIONS.iter().find(|m| m.version > current) else {
                        txn.commit().await.map_err(|e| pg_error(&e))?;
                        report.to = current;
                        return Ok(report);
                    };
                    txn.batch_execute(next.sql)
                        .await
                        .map_err(|e| pg_error(&e))?;
                    txn.execute(
                        "INSERT INTO strongroom_migrations (version, description) VALUES ($1, $2)",
                        &[&next.version, &next.description],
                    )
                    .await
                    .map_err(|e| pg_error(&e))?;
                    txn.commit().await.map_err(|e| pg_error(&e))?;
                    tracing::info!(
                        version = next.version,
                        description = next.description,
                        "applied PostgreSQL schema migration"
                    );
                    report.applied.push(AppliedMigration {
                        version: next.version,
                        description: next.description.to_owned(),
                    });
                }
            })
        })
    }

    /// Runs `f` where blocking is allowed: inside `block_in_place` on a
    /// multi-thread tokio worker, directly anywhere else.
    fn blocking<R>(&self, f: impl FnOnce() -> R) -> R {
        let on_multi_thread_runtime = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if on_multi_thread_runtime {
            tokio::task::block_in_place(f)
        } else {
            f()
        }
    }

    /// A pooled connection. Made (when the pool has none idle) on the
    /// store's runtime, which runs its `Connection`.
    fn client(&self) -> Result<Object, StoreError> {
        let pool = self.pool.clone();
        let got = futures_executor::block_on(self.handle.spawn(async move { pool.get().await }))
            .map_err(|e| StoreError::Backend(format!("postgres connection task: {e}")))?;
        got.map_err(|e| pool_error(&e))
    }

    /// Makes sure the row of lock `name` exists (outside any round).
    fn ensure_lock_row(&self, client: &Object, name: &[u8]) -> Result<(), StoreError> {
        let known = self
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(name);
        if known {
            return Ok(());
        }
        futures_executor::block_on(client.execute(
            "INSERT INTO strongroom_locks (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
            &[&name],
        ))
        .map_err(|e| pg_error(&e))?;
        self.locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_vec());
        Ok(())
    }

    fn apply_once(&self, client: &mut Object, tx: &Transaction) -> Result<Attempt, StoreError> {
        futures_executor::block_on(async {
            let started = client
                .build_transaction()
                .isolation_level(IsolationLevel::Serializable)
                .start()
                .await;
            match started {
                Ok(txn) => finish(txn, tx).await,
                Err(e) => failed_before_commit(&e),
            }
        })
    }

    fn locked_once(
        &self,
        client: &mut Object,
        lock: &[u8],
        round: &mut Round<'_>,
    ) -> Result<Attempt, StoreError> {
        let txn = match futures_executor::block_on(
            client
                .build_transaction()
                .isolation_level(IsolationLevel::Serializable)
                .start(),
        ) {
            Ok(txn) => txn,
            Err(e) if retryable(&e) => return Ok(Attempt::Retry),
            Err(e) => return Err(pg_error(&e)),
        };
        // The lock's row is updated, not only locked: a round that had to
        // wait for another node's would otherwise go on reading the
        // snapshot taken before that round committed. Updated, the row
        // makes the waiter fail at once (40001, "concurrent update") and
        // start again with a snapshot that holds the other round, before
        // it has built anything.
        let locked = futures_executor::block_on(txn.query_opt(
            "UPDATE strongroom_locks SET name = name WHERE name = $1 RETURNING name",
            &[&lock],
        ));
        match locked {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(StoreError::Backend(
                    "the lock row vanished from strongroom_locks".into(),
                ));
            }
            Err(e) if retryable(&e) => return Ok(Attempt::Retry),
            Err(e) => return Err(pg_error(&e)),
        }
        let reads = TxReads {
            txn: &txn,
            lost_race: std::cell::Cell::new(false),
        };
        let built = round(&reads);
        if reads.lost_race.get() {
            return Ok(Attempt::Retry);
        }
        // Dropping `txn` without commit rolls it back.
        let Some(tx) = built? else {
            return Ok(Attempt::Committed);
        };
        futures_executor::block_on(finish(txn, &tx))
    }

    /// Runs `attempt` until it commits or fails for a reason other than a
    /// lost serialization race.
    fn retrying(
        &self,
        mut attempt: impl FnMut(&mut Object) -> Result<Attempt, StoreError>,
    ) -> Result<(), StoreError> {
        self.blocking(|| {
            for n in 0..MAX_ATTEMPTS {
                let mut client = self.client()?;
                match attempt(&mut client)? {
                    Attempt::Committed => return Ok(()),
                    Attempt::PreconditionFailed => return Err(StoreError::Conflict),
                    Attempt::Retry => {
                        drop(client);
                        backoff(n);
                    }
                }
            }
            Err(StoreError::Backend(format!(
                "postgres: the transaction lost {MAX_ATTEMPTS} serialization races in a row"
            )))
        })
    }
}

/// Checks `tx`'s preconditions inside `txn`, then writes and commits, or
/// rolls back.
async fn finish(
    txn: deadpool_postgres::Transaction<'_>,
    tx: &Transaction,
) -> Result<Attempt, StoreError> {
    match check_and_write(&txn, tx).await {
        Ok(true) => {}
        Ok(false) => {
            return match txn.rollback().await {
                Ok(()) => Ok(Attempt::PreconditionFailed),
                Err(e) => failed_before_commit(&e),
            };
        }
        Err(e) => return failed_before_commit(&e),
    }
    match txn.commit().await {
        Ok(()) => Ok(Attempt::Committed),
        Err(e) => match commit_failure(e.code()) {
            CommitFailure::LostRace => Ok(Attempt::Retry),
            CommitFailure::Unknown => Err(StoreError::Unknown(describe(&e))),
        },
    }
}

/// A transaction that failed before its `COMMIT` was sent: nothing of it
/// was committed, so a lost race is run again and anything else is
/// reported as "not done".
fn failed_before_commit(e: &tokio_postgres::Error) -> Result<Attempt, StoreError> {
    if retryable(e) {
        Ok(Attempt::Retry)
    } else {
        Err(pg_error(e))
    }
}

/// What a `COMMIT` that failed may have left behind.
#[derive(Debug, PartialEq, Eq)]
enum CommitFailure {
    /// The server refused it as a lost serialization race or deadlock:
    /// nothing was committed, so it is run again.
    LostRace,
    /// Anything else: above all no answer at all (a reset connection, a
    /// killed server, a failover, a pooler's timeout), when the server may
    /// have committed just before the connection broke. A session ended by
    /// the server (57P01 and the like) is no better: the commit record may
    /// already be written. Never retried (the round's entries would be
    /// chained twice) and never reported as "nothing was done".
    Unknown,
}

/// [`CommitFailure`] of a `COMMIT` that failed with SQLSTATE `code` (`None`:
/// the server's answer never came).
fn commit_failure(code: Option<&SqlState>) -> CommitFailure {
    match code {
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            CommitFailure::LostRace
        }
        _ => CommitFailure::Unknown,
    }
}

fn newer_schema(found: i32) -> StoreError {
    StoreError::Backend(format!(
        "the database holds Strongroom schema version {found}, newer than this build's {}: \
         run a newer strongroom (nothing was changed)",
        schema_version()
    ))
}

/// Creates the migrations table if missing; two nodes racing to create it
/// may see a unique violation (or "already exists") from the loser, which
/// then finds it there.
async fn create_migrations_table(client: &Object) -> Result<(), StoreError> {
    const SQL: &str = "CREATE TABLE IF NOT EXISTS strongroom_migrations (\
        version integer PRIMARY KEY, \
        description text NOT NULL, \
        applied_at timestamptz NOT NULL DEFAULT now())";
    let mut last = None;
    for _ in 0..5 {
        match client.batch_execute(SQL).await {
            Ok(()) => return Ok(()),
            Err(e)
                if e.code() == Some(&SqlState::UNIQUE_VIOLATION)
                    || e.code() == Some(&SqlState::DUPLICATE_TABLE) =>
            {
                last = Some(e);
            }
            Err(e) => return Err(pg_error(&e)),
        }
    }
    Err(last.map_or_else(
        || StoreError::Backend("postgres: cannot create strongroom_migrations".into()),
        |e| pg_error(&e),
    ))
}

/// The newest applied migration, `None` when there is no migrations table.
async fn current_version(client: &Object) -> Result<Option<i32>, tokio_postgres::Error> {
    let exists = client
        .query_one(
            "SELECT to_regclass('strongroom_migrations') IS NOT NULL",
            &[],
        )
        .await?
        .try_get::<_, bool>(0)?;
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_one("SELECT max(version) FROM strongroom_migrations", &[])
        .await?;
    row.try_get(0)
}

async fn current_version_in(
    txn: &deadpool_postgres::Transaction<'_>,
) -> Result<Option<i32>, tokio_postgres::Error> {
    let row = txn
        .query_one("SELECT max(version) FROM strongroom_migrations", &[])
        .await?;
    row.try_get(0)
}

/// The first key after every key that starts with `prefix` (`None`: no
/// such bound, the prefix is empty or all 0xff).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Store for PostgresStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.blocking(|| {
            let client = self.client()?;
            futures_executor::block_on(async {
                let statement = client.prepare_cached(GET_SQL).await?;
                let row = client.query_opt(&statement, &[&key]).await?;
                row.map(|r| r.try_get::<_, Vec<u8>>(0)).transpose()
            })
            .map_err(|e| pg_error(&e))
        })
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let start = super::scan_start(prefix, after);
        let end = prefix_end(prefix);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.blocking(|| {
            let client = self.client()?;
            futures_executor::block_on(async {
                let rows = match &end {
                    Some(end) => {
                        let statement = client
                            .prepare_cached(
                                "SELECT key, value FROM strongroom_kv \
                                 WHERE key >= $1 AND key < $2 ORDER BY key LIMIT $3",
                            )
                            .await?;
                        client
                            .query(&statement, &[&start, &end.as_slice(), &limit])
                            .await?
                    }
                    None => {
                        let statement = client
                            .prepare_cached(
                                "SELECT key, value FROM strongroom_kv \
                                 WHERE key >= $1 ORDER BY key LIMIT $2",
                            )
                            .await?;
                        client.query(&statement, &[&start, &limit]).await?
                    }
                };
                rows.into_iter()
                    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                    .collect::<Result<Vec<KeyValue>, tokio_postgres::Error>>()
            })
            .map_err(|e| pg_error(&e))
        })
    }

    fn apply(&self, tx: Transaction) -> Result<(), StoreError> {
        if tx.is_empty() {
            return Ok(());
        }
        self.retrying(|client| self.apply_once(client, &tx))
    }

    /// A commit is durable when it returns (`synchronous_commit` is on for
    /// every connection; `connect` checks it): nothing is left to flush.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// A REPEATABLE READ, READ ONLY transaction (one snapshot of the whole
    /// table), walked in key order through a portal, `SNAPSHOT_BATCH` rows
    /// at a time.
    fn snapshot(
        &self,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.blocking(|| {
            // Taken before the connection, never while holding one.
            let _turn = self
                .snapshots
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut client = self.client()?;
            let txn = futures_executor::block_on(
                client
                    .build_transaction()
                    // SERIALIZABLE READ ONLY DEFERRABLE: waits for a
                    // snapshot no serialisation anomaly can touch, so the
                    // backup is a state some serial order really had.
                    .isolation_level(IsolationLevel::Serializable)
                    .read_only(true)
                    .deferrable(true)
                    .start(),
            )
            .map_err(|e| pg_error(&e))?;
            let portal = futures_executor::block_on(
                txn.bind("SELECT key, value FROM strongroom_kv ORDER BY key", &[]),
            )
            .map_err(|e| pg_error(&e))?;
            loop {
                let rows = futures_executor::block_on(txn.query_portal(&portal, SNAPSHOT_BATCH))
                    .map_err(|e| pg_error(&e))?;
                if rows.is_empty() {
                    break;
                }
                for row in rows {
                    let key: &[u8] = row.try_get(0).map_err(|e| pg_error(&e))?;
                    let value: &[u8] = row.try_get(1).map_err(|e| pg_error(&e))?;
                    visit(key, value)?;
                }
            }
            futures_executor::block_on(txn.commit()).map_err(|e| pg_error(&e))
        })
    }

    /// `BEGIN ISOLATION LEVEL SERIALIZABLE`, the lock's row taken `FOR
    /// UPDATE`, `round` reading inside that transaction, its transaction's
    /// preconditions checked and its writes made there, `COMMIT`. A round
    /// that waited for the lock reads the snapshot taken before it got
    /// it; its writes then lose a serialization race with the round that
    /// held the lock, and it runs again on fresh reads.
    fn apply_locked(&self, lock: &[u8], round: &mut Round<'_>) -> Result<(), StoreError> {
        self.blocking(|| {
            let client = self.client()?;
            self.ensure_lock_row(&client, lock)
        })?;
        self.retrying(|client| self.locked_once(client, lock, round))
    }

    fn is_shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_leave_a_url() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db.example:5432/vault?sslmode=require"),
            "postgres://app:***@db.example:5432/vault?sslmode=require"
        );
        assert_eq!(
            redact_url("postgresql://db/vault?user=app&password=s3cret&sslmode=require"),
            "postgresql://db/vault?user=app&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://app@127.0.0.1/test"),
            "postgres://app@127.0.0.1/test"
        );
        // A password holding `/`, `?` or `:`, as generated ones do, and a
        // percent-encoded parameter key.
        assert_eq!(
            redact_url("postgres://app:ab/c?d:e@db/vault"),
            "postgres://app:***@db/vault"
        );
        // A raw `@` in the password: nothing of it is left.
        assert_eq!(
            redact_url("postgres://app:p@ss@db/vault"),
            "postgres://app:***@db/vault"
        );
        assert_eq!(
            redact_url("postgres://app:a@b:c@d@db:5432/vault?sslmode=require"),
            "postgres://app:***@db:5432/vault?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://db/vault?pass%77ord=s3cret&user=app"),
            "postgres://db/vault?pass%77ord=***&user=app"
        );
        let settings = PostgresSettings::new("postgres://a:pw@h/d");
        assert!(!format!("{settings:?}").contains("pw"));
    }

    #[test]
    fn only_a_lost_race_at_commit_is_known_not_to_have_committed() {
        for race in [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
        ] {
            assert_eq!(commit_failure(Some(&race)), CommitFailure::LostRace);
        }
        // No answer (a broken connection), or the session ended by the
        // server: it may have committed.
        assert_eq!(commit_failure(None), CommitFailure::Unknown);
        for ended in [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CONNECTION_FAILURE,
            SqlState::UNIQUE_VIOLATION,
        ] {
            assert_eq!(commit_failure(Some(&ended)), CommitFailure::Unknown);
        }
    }

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"p/"), Some(b"p0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn plaintext_to_a_remote_host_is_refused() {
        let err = PostgresStore::connect(&PostgresSettings::new(
            "postgres://app:pw@db.example.invalid/vault?sslmode=disable",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("plaintext"), "{err}");
        assert!(!err.contains("pw@"), "{err}");
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        assert!(
            MIGRATIONS
                .windows(2)
                .all(|w| w[0].version + 1 == w[1].version)
        );
        assert_eq!(MIGRATIONS.first().map(|m| m.version), Some(1));
    }
}
