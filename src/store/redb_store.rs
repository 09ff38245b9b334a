//! The redb 4 backend: a copy-on-write B-tree in one file,
//! `<dir>/strongroom.redb`, one table.
//!
//! `apply` commits a write transaction with [`redb::Durability::None`]:
//! visible to every later read transaction at once, not yet durable.
//! `flush` commits an empty write transaction with
//! [`redb::Durability::Immediate`], which makes it and every earlier
//! non-durable commit durable. redb 4.6's own words (`src/transactions.rs`,
//! `enum Durability`): `None` — "Commits with this durability level will not
//! be persisted to disk unless followed by a commit with
//! [`Durability::Immediate`]"; `Immediate` — "guaranteed to be persistent as
//! soon as [`WriteTransaction::commit`] returns". A durable commit writes the
//! newest root (the one the non-durable commits built) to the header's
//! commit slot and ends in `fdatasync` of the file.
//!
//! Pages freed by non-durable commits are not reused until a durable commit
//! (they may be needed if the process dies); every acknowledged write is
//! followed by one, so the file does not grow without bound.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::group_commit::GroupCommit;
use super::{
    KeyValue, Store, StoreError, Transaction, Write, collect_scan, io, poisoned, scan_start,
    sync_dir_and_parent,
};

/// The database file inside the store directory.
const FILE: &str = "strongroom.redb";
/// The one table every key lives in.
const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("strongroom");

/// A redb database. One process at a time may open a data directory (redb
/// locks the file).
pub struct RedbStore {
    db: redb::Database,
    dir: PathBuf,
    group: GroupCommit,
    /// Serialises `apply`: its precondition checks and commit are one step.
    writer: Mutex<()>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, super::DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the database under `dir` with a page cache of
    /// `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, &e))?;
        let path = dir.join(FILE);
        let db = redb::Builder::new()
            .set_cache_size(usize::try_from(cache_bytes).unwrap_or(usize::MAX))
            .create(&path)
            .map_err(backend)?;
        // The table, durably (a no-op commit when it exists).
        let tx = db.begin_write().map_err(backend)?;
        tx.open_table(TABLE).map_err(backend)?;
        tx.commit().map_err(backend)?;
        // redb syncs its file; the file's name in the directory, and the
        // directory's in its parent, are ours to make durable.
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| io(&path, &e))?;
        sync_dir_and_parent(dir).map_err(|e| io(dir, &e))?;
        Ok(Self {
            db,
            dir: dir.to_path_buf(),
            group: GroupCommit::default(),
            writer: Mutex::new(()),
        })
    }

    /// Whether `dir` holds a redb store (its `strongroom.redb` file): what a
    /// command that must not create a store checks before
    /// [`RedbStore::open`]. Never creates anything.
    pub fn exists_in(dir: &Path) -> bool {
        dir.join(FILE).is_file()
    }

    /// Checks the preconditions and writes inside `tx`; `Ok(false)` on a
    /// failed precondition (nothing written yet).
    fn write_in(tx: &redb::WriteTransaction, t: &Transaction) -> Result<bool, redb::Error> {
        let mut table = tx.open_table(TABLE)?;
        for (key, expected) in &t.preconditions {
            let current = table.get(key.as_slice())?;
            if current.as_ref().map(|v| v.value()) != expected.as_deref() {
                return Ok(false);
            }
        }
        for write in &t.writes {
            match write {
                Write::Put(k, v) => {
                    table.insert(k.as_slice(), v.as_slice())?;
                }
                Write::Delete(k) => {
                    table.remove(k.as_slice())?;
                }
            }
        }
        Ok(true)
    }
}

/// redb's errors name files, tables and I/O failures, never stored values.
fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(format!("redb: {}", e.into()))
}

impl Store for RedbStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(TABLE).map_err(backend)?;
        Ok(table.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(TABLE).map_err(backend)?;
        let start = scan_start(prefix, after);
        let walk = table
            .range(start.as_slice()..)
            .map_err(backend)?
            .map(|item| {
                item.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
                    .map_err(backend)
            });
        collect_scan(walk, prefix, limit)
    }

    fn apply(&self, t: Transaction) -> Result<(), StoreError> {
        if t.is_empty() {
            return Ok(());
        }
        // redb allows one write transaction at a time; the lock keeps the
        // poisoned check and the commit together, as the other engines do.
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if self.group.is_poisoned() {
            return Err(poisoned());
        }
        let mut tx = self.db.begin_write().map_err(backend)?;
        tx.set_durability(Durability::None).map_err(backend)?;
        if Self::write_in(&tx, &t).map_err(backend)? {
            tx.commit().map_err(backend)
        } else {
            tx.abort().map_err(backend)?;
            Err(StoreError::Conflict)
        }
    }

    fn snapshot(
        &self,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        // A read transaction sees one committed state (MVCC); writers go on.
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(TABLE).map_err(backend)?;
        for item in table.iter().map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            visit(k.value(), v.value())?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.group.wait_durable(
            || {
                // Durable commit: makes every earlier `Durability::None`
                // commit durable too (see the module comment).
                let mut tx = self.db.begin_write().map_err(backend)?;
                tx.set_durability(Durability::Immediate).map_err(backend)?;
                // Two-phase: the commit slot is synced before the byte that
                // activates it. With one phase redb trusts an xxhash
                // checksum, and its docs (`set_two_phase_commit`) describe
                // a client who controls written data and can cause crashes
                // leaving a partly committed file; our clients choose
                // fields that are stored. One more fsync per round.
                tx.set_two_phase_commit(true);
                tx.commit().map_err(backend)
            },
            poisoned,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exists_in_recognises_a_database_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!RedbStore::exists_in(dir.path()));
        std::fs::create_dir(dir.path().join(FILE)).unwrap();
        assert!(
            !RedbStore::exists_in(dir.path()),
            "a directory of that name"
        );
        let store_dir = dir.path().join("store");
        RedbStore::open(&store_dir).unwrap();
        assert!(RedbStore::exists_in(&store_dir));
        assert!(!crate::store::SledStore::exists_in(&store_dir));
    }

    /// Rewriting the same keys over and over, each round flushed, reuses
    /// the pages earlier rounds freed: the file stays bounded.
    #[test]
    fn flushed_rewrites_do_not_grow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let value = vec![9u8; 1024];
        let round = |n: u8| {
            for i in 0..200u32 {
                let mut v = value.clone();
                v.push(n);
                store
                    .commit(Transaction::new().put(format!("k/{i:04}").into_bytes(), v))
                    .unwrap();
            }
        };
        round(0);
        let after_first = std::fs::metadata(dir.path().join(FILE)).unwrap().len();
        for n in 1..10 {
            round(n);
        }
        let after_ten = std::fs::metadata(dir.path().join(FILE)).unwrap().len();
        assert!(
            after_ten <= after_first * 2,
            "the file grew from {after_first} to {after_ten} bytes rewriting the same keys"
        );
        assert_eq!(store.scan_prefix(b"k/").unwrap().len(), 200);
    }
}
