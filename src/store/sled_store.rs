//! The embedded default backend: sled 0.34 in the data directory.

use std::path::Path;

use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::group_commit::GroupCommit;
use super::{KeyValue, Store, StoreError, Transaction, Write};

/// A sled database. One process at a time may open a data directory.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    group: GroupCommit,
}

impl SledStore {
    /// Opens (or creates) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open().map_err(backend)?;
        Ok(Self {
            db,
            group: GroupCommit::default(),
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
        let result = self.db.transaction(|t| {
            for (key, expected) in &tx.preconditions {
                let current = t.get(key.as_slice())?;
                if current.as_deref() != expected.as_deref() {
                    return Err(ConflictableTransactionError::Abort(()));
                }
            }
            for write in &tx.writes {
                match write {
                    Write::Put(k, v) => {
                        t.insert(k.as_slice(), v.as_slice())?;
                    }
                    Write::Delete(k) => {
                        t.remove(k.as_slice())?;
                    }
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(())) => Err(StoreError::Conflict),
            Err(TransactionError::Storage(e)) => Err(backend(e)),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.group
            .wait_durable(|| self.db.flush().map(|_| ()).map_err(backend))
    }
}
