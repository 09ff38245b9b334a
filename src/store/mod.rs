//! The `Store` trait every other module writes through, and its backends.
//!
//! This module owns bytes at rest and their durability: a write returns only
//! after it is on stable storage. It must never see plaintext: callers hand it
//! ciphertext, digests and public metadata only. Nothing above this module
//! knows which backend it runs on.

mod group_commit;
mod sled_store;

pub use sled_store::SledStore;

/// Errors of the storage layer. Messages never contain stored values.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A transaction's precondition did not hold; nothing was written.
    #[error("transaction precondition failed")]
    Conflict,
    /// The backend failed; the write may not have happened.
    #[error("storage backend failed: {0}")]
    Backend(String),
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

    /// Every pair under `prefix`.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        self.scan(prefix, None, usize::MAX)
    }
}
