//! The `Store` trait every other module writes through, and its backends.
//!
//! This module owns bytes at rest and their durability: a write returns only
//! after it is on stable storage. It must never see plaintext: callers hand it
//! ciphertext, digests and public metadata only. Nothing above this module
//! knows which backend it runs on.

mod fjall_store;
mod group_commit;
mod postgres_store;
mod redb_store;
mod sled_store;

use std::path::Path;
use std::sync::Arc;

pub use fjall_store::FjallStore;
pub use postgres_store::{
    AppliedMigration, DEFAULT_POOL_SIZE, MIN_POOL_SIZE, MigrationReport, PostgresSettings,
    PostgresStore, redact_url, schema_version,
};
pub use redb_store::RedbStore;
pub use sled_store::SledStore;

/// The embedded engines a data directory can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Sled,
    Fjall,
    Redb,
}

impl Engine {
    /// Every engine, in the order [`Engine::detect`] tries them.
    pub const ALL: [Engine; 3] = [Engine::Sled, Engine::Fjall, Engine::Redb];

    /// What a new data directory gets when the configuration names none
    /// (chosen by measurement: docs/performance.md, "Storage engines").
    pub const DEFAULT: Engine = Engine::Fjall;

    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Sled => "sled",
            Engine::Fjall => "fjall",
            Engine::Redb => "redb",
        }
    }

    /// The engine whose files `dir` holds, if any. Never creates anything.
    pub fn detect(dir: &Path) -> Option<Engine> {
        Self::ALL.into_iter().find(|engine| match engine {
            Engine::Sled => SledStore::exists_in(dir),
            Engine::Fjall => FjallStore::exists_in(dir),
            Engine::Redb => RedbStore::exists_in(dir),
        })
    }
}

impl std::str::FromStr for Engine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|engine| engine.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|e| e.as_str()).collect();
                format!("unknown store engine {s:?} (one of: {})", names.join(", "))
            })
    }
}

/// How to open an embedded store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSettings {
    /// The engine of a new store; an existing one is opened with the engine
    /// found on disk.
    pub engine: Engine,
    /// The engine's own cache, in bytes.
    pub cache_bytes: u64,
}

/// Default engine cache: 256 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 256 * 1024 * 1024;

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            engine: Engine::DEFAULT,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// Opens the store in `dir` with `engine`, creating it if `dir` holds
/// none. Callers that must not create a store check [`Engine::detect`]
/// first.
pub fn open_engine(
    engine: Engine,
    dir: &Path,
    cache_bytes: u64,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match engine {
        Engine::Sled => Arc::new(SledStore::open_with_cache(dir, cache_bytes)?),
        Engine::Fjall => Arc::new(FjallStore::open_with_cache(dir, cache_bytes)?),
        Engine::Redb => Arc::new(RedbStore::open_with_cache(dir, cache_bytes)?),
    })
}

/// The exact bytes a value was read from or written as, kept beside the
/// decoded value so a precondition compares what is stored instead of a
/// re-encoding (which an older stored format would never match). Not part
/// of the value: never serialised, and ignored by `==`.
#[derive(Clone, Default)]
pub struct StoredAs(pub(crate) Option<Arc<[u8]>>);

impl StoredAs {
    pub(crate) fn new(bytes: &[u8]) -> Self {
        Self(Some(Arc::from(bytes)))
    }

    pub(crate) fn bytes(&self) -> Option<&[u8]> {
        self.0.as_deref()
    }
}

impl PartialEq for StoredAs {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for StoredAs {}

impl std::fmt::Debug for StoredAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(bytes) => write!(f, "StoredAs({} bytes)", bytes.len()),
            None => f.write_str("StoredAs(none)"),
        }
    }
}

/// Errors of the storage layer. Messages never contain stored values.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A transaction's precondition did not hold; nothing was written.
    #[error("transaction precondition failed")]
    Conflict,
    /// The backend failed; the write may not have happened.
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The write was sent to be committed, but no answer came back (the
    /// connection broke while a PostgreSQL `COMMIT` was in flight): it may
    /// or may not have happened. Never retried, and never reported as
    /// "nothing was done": a caller that trusted that would repeat it.
    #[error("the outcome of the write is unknown (it may have been committed): {0}")]
    Unknown(String),
}

/// `fsync` of a directory: makes the names in it durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// [`sync_dir`] of `dir` and of its parent, so a store directory just
/// created (its own name) is durable too.
pub(crate) fn sync_dir_and_parent(dir: &Path) -> std::io::Result<()> {
    sync_dir(dir)?;
    match dir.parent() {
        Some(parent) if parent.as_os_str().is_empty() => sync_dir(Path::new(".")),
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// A backend's I/O error on `path`, without any stored value.
pub(crate) fn io(path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Backend(format!("{}: {e}", path.display()))
}

/// Every write after a failed sync (see `GroupCommit`).
pub(crate) fn poisoned() -> StoreError {
    StoreError::Backend(
        "an earlier sync of the store failed; no write is accepted until the server restarts"
            .to_owned(),
    )
}

/// Where a [`Store::scan`] of `prefix` after `after` starts.
pub(crate) fn scan_start(prefix: &[u8], after: Option<&[u8]>) -> Vec<u8> {
    match after {
        Some(after) if after >= prefix => {
            let mut start = after.to_vec();
            start.push(0);
            start
        }
        _ => prefix.to_vec(),
    }
}

/// The first `limit` pairs of an ordered walk from [`scan_start`] that
/// still start with `prefix`.
pub(crate) fn collect_scan<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    walk: impl Iterator<Item = Result<(K, V), StoreError>>,
    prefix: &[u8],
    limit: usize,
) -> Result<Vec<KeyValue>, StoreError> {
    let mut out = Vec::new();
    for item in walk {
        if out.len() >= limit {
            break;
        }
        let (k, v) = item?;
        if !k.as_ref().starts_with(prefix) {
            break;
        }
        out.push((k.as_ref().to_vec(), v.as_ref().to_vec()));
    }
    Ok(out)
}

/// Whether every precondition of `tx` holds, reading through `get`
/// (called under the backend's writer lock).
pub(crate) fn preconditions_hold<V: AsRef<[u8]>>(
    tx: &Transaction,
    mut get: impl FnMut(&[u8]) -> Result<Option<V>, StoreError>,
) -> Result<bool, StoreError> {
    for (key, expected) in &tx.preconditions {
        let current = get(key)?;
        if current.as_ref().map(AsRef::as_ref) != expected.as_deref() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A stored key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// One write inside a [`Transaction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// An atomic multi-key write: every precondition holds and every write
/// applies, or nothing changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    pub(crate) preconditions: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub(crate) writes: Vec<Write>,
}

impl Transaction {
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires `key` to hold exactly `value` (`None`: to be absent) when
    /// the transaction commits; otherwise it fails with
    /// [`StoreError::Conflict`].
    pub fn expect(mut self, key: impl Into<Vec<u8>>, value: Option<Vec<u8>>) -> Self {
        self.preconditions.push((key.into(), value));
        self
    }

    pub fn put(mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.writes.push(Write::Put(key.into(), value.into()));
        self
    }

    pub fn delete(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.writes.push(Write::Delete(key.into()));
        self
    }

    /// Appends `other`'s preconditions and writes to this transaction.
    pub fn merge(mut self, other: Transaction) -> Self {
        self.preconditions.extend(other.preconditions);
        self.writes.extend(other.writes);
        self
    }

    /// The keys this transaction writes or deletes.
    pub fn written_keys(&self) -> impl Iterator<Item = &[u8]> {
        self.writes.iter().map(|w| match w {
            Write::Put(k, _) | Write::Delete(k) => k.as_slice(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.preconditions.is_empty() && self.writes.is_empty()
    }
}

/// Reads inside one [`Store::apply_locked`] round.
pub trait Reads {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
}

/// A store read directly (the embedded engines' rounds).
pub(crate) struct Direct<'a, S: ?Sized>(pub(crate) &'a S);

impl<S: Store + ?Sized> Reads for Direct<'_, S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(key)
    }
}

/// What a round built by [`Store::apply_locked`] returns: the transaction
/// to apply, or `None` when it has nothing to write.
pub type Round<'a> = dyn FnMut(&dyn Reads) -> Result<Option<Transaction>, StoreError> + 'a;

/// A key-value store with atomic, durable transactions.
///
/// `commit`, `put` and `delete` return only once the write is durable (it
/// survives `kill -9` and power loss as far as the device honours fsync).
/// `apply` + `flush` split the two, so a caller can order writes under a lock
/// and wait for durability outside it; concurrent flushes are shared (group
/// commit).
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` pairs whose key starts with `prefix`, in key order,
    /// starting after `after` when given.
    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError>;

    /// Applies `tx` atomically: every precondition holds and every write is
    /// visible, or nothing changed. Not yet durable: call [`Store::flush`]
    /// before acknowledging it.
    fn apply(&self, tx: Transaction) -> Result<(), StoreError>;

    /// Returns once every write applied before this call is durable.
    /// Concurrent callers share flushes (group commit).
    fn flush(&self) -> Result<(), StoreError>;

    /// Applies `tx` atomically and durably.
    fn commit(&self, tx: Transaction) -> Result<(), StoreError> {
        self.apply(tx)?;
        self.flush()
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.commit(Transaction::new().put(key, value))
    }

    fn delete(&self, key: &[u8]) -> Result<(), StoreError> {
        self.commit(Transaction::new().delete(key))
    }

    /// Calls `visit` with every pair in the store, in key order, as of one
    /// point in time: writes that commit while it runs are either wholly
    /// in it or wholly absent (a backup's consistent snapshot). A `visit`
    /// error stops the walk and is returned.
    #[allow(clippy::type_complexity)]
    fn snapshot(
        &self,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;

    /// Builds a transaction with `round` and applies it (not yet durably:
    /// [`Store::flush`] follows) while holding the lock named `lock`
    /// against every other process that takes it: the audit chain's head,
    /// taken once per group-commit round, never per request.
    ///
    /// `round` reads through the [`Reads`] it is given; the transaction it
    /// returns still carries its own preconditions, checked when applied
    /// ([`StoreError::Conflict`] if one fails, nothing written). An
    /// embedded store has one writing process, whose caller already
    /// serialises its rounds, so the default reads the store directly and
    /// applies. A store shared by several processes (PostgreSQL) takes the
    /// lock's row with a row lock (an `UPDATE` of it), reads inside that database
    /// transaction and commits it.
    fn apply_locked(&self, lock: &[u8], round: &mut Round<'_>) -> Result<(), StoreError> {
        let _ = lock;
        // One round at a time in this process: several audit logs over one
        // embedded store (nodes simulated in one process, in tests) then
        // take turns as nodes do on PostgreSQL, instead of building rounds
        // over one head at once and all but one failing. A process serving
        // one store has one committer, which never waits here.
        static ROUNDS: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = ROUNDS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match round(&Direct(self))? {
            Some(tx) => self.apply(tx),
            None => Ok(()),
        }
    }

    /// Whether several processes may write this store at once (PostgreSQL
    /// with several nodes): nothing may then be cached across requests
    /// without invalidation, and `apply` is already durable.
    fn is_shared(&self) -> bool {
        false
    }

    /// Every pair under `prefix`.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        self.scan(prefix, None, usize::MAX)
    }
}
