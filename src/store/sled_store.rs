//! The embedded default backend: sled 0.34 in the data directory.

use std::path::Path;

use std::sync::{Mutex, PoisonError};

use super::group_commit::GroupCommit;
use super::{KeyValue, Store, StoreError, Transaction, Write};

/// A sled database. One process at a time may open a data directory.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    group: GroupCommit,
    /// Serialises `apply`: its precondition checks and batch are one step.
    writer: Mutex<()>,
}

impl SledStore {
    /// Opens (or creates) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open().map_err(backend)?;
        Ok(Self {
            db,
            group: GroupCommit::default(),
            writer: Mutex::new(()),
        })
    }
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl Store for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(backend)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let mut out = Vec::new();
        let iter = match after {
            Some(after) if after >= prefix => {
                let mut start = after.to_vec();
                start.push(0);
                self.db.range(start..)
            }
            _ => self.db.range(prefix.to_vec()..),
        };
        for item in iter {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(backend)?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn apply(&self, tx: Transaction) -> Result<(), StoreError> {
        if tx.is_empty() {
            return Ok(());
        }
        // Every write of this process comes through here, and no other
        // process can open the database, so checking the preconditions and
        // applying the batch under one lock is atomic. sled applies a batch
        // atomically, for readers and across a crash. (sled's own
        // transactions would do the same with per-key conflict tracking,
        // at several times the cost.)
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, expected) in &tx.preconditions {
            let current = self.db.get(key).map_err(backend)?;
            if current.as_deref() != expected.as_deref() {
                return Err(StoreError::Conflict);
            }
        }
        let mut batch = sled::Batch::default();
        for write in tx.writes {
            match write {
                Write::Put(k, v) => batch.insert(k, v),
                Write::Delete(k) => batch.remove(k),
            }
        }
        self.db.apply_batch(batch).map_err(backend)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.group
            .wait_durable(|| self.db.flush().map(|_| ()).map_err(backend))
    }
}
