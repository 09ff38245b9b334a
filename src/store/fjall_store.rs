//! The fjall 3 backend: an LSM tree (one keyspace) whose writes go to a
//! journal (`<dir>/<n>.jnl`) before its memtables; background threads
//! (fjall's worker pool) flush memtables to table files and compact them.
//!
//! `apply` writes one journal batch and publishes it to readers in one
//! step; `flush` makes the journal durable with `fdatasync` (fjall's
//! `persist(SyncData)`). Readers go through snapshots: a fjall batch enters
//! the memtable item by item and becomes visible to snapshot reads only once
//! wholly in (`Keyspace::get`/`range` read at the newest sequence number and
//! could see half a batch).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use fjall::{KeyspaceCreateOptions, PersistMode, Readable};

use super::group_commit::GroupCommit;
use super::{
    KeyValue, Store, StoreError, Transaction, Write, collect_scan, io, poisoned,
    preconditions_hold, scan_start, sync_dir_and_parent,
};

/// The one keyspace every key lives in.
const KEYSPACE: &str = "strongroom";
/// fjall's format marker, written (and synced) last when a database is
/// created.
const VERSION_FILE: &str = "version";
/// fjall's directory of keyspaces (table files and their manifests).
const KEYSPACES_DIR: &str = "keyspaces";

/// A fjall database. One process at a time may open a data directory
/// (fjall holds a lock file in it).
pub struct FjallStore {
    db: fjall::Database,
    data: fjall::Keyspace,
    dir: PathBuf,
    group: GroupCommit,
    /// Serialises `apply`: its precondition checks and batch are one step.
    writer: Mutex<()>,
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl FjallStore {
    /// Opens (or creates) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, super::DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the database under `dir` with a block cache of
    /// `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = fjall::Database::builder(dir)
            .cache_size(cache_bytes)
            // Batches stay in fjall's journal buffer until `flush` writes
            // and syncs them (a batch larger than the buffer is written
            // through at once, still synced only by `flush`).
            .manual_journal_persist(true)
            .open()
            .map_err(backend)?;
        let data = db
            .keyspace(KEYSPACE, KeyspaceCreateOptions::default)
            .map_err(backend)?;
        // The keyspace's creation, should it have just happened.
        db.persist(PersistMode::SyncAll).map_err(backend)?;
        // fjall syncs the directories it creates; the data directory's own
        // name in its parent is ours to make durable.
        sync_dir_and_parent(dir).map_err(|e| io(dir, &e))?;
        Ok(Self {
            db,
            data,
            dir: dir.to_path_buf(),
            group: GroupCommit::default(),
            writer: Mutex::new(()),
        })
    }

    /// Whether `dir` holds a fjall database (its `version` file and
    /// `keyspaces` directory): what a command that must not create a store
    /// checks before [`FjallStore::open`]. Never creates anything.
    pub fn exists_in(dir: &Path) -> bool {
        dir.join(VERSION_FILE).is_file() && dir.join(KEYSPACES_DIR).is_dir()
    }
}

/// fjall's errors name files and I/O failures, never stored values.
fn backend(e: fjall::Error) -> StoreError {
    StoreError::Backend(format!("fjall: {e}"))
}

impl Store for FjallStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let snapshot = self.db.snapshot();
        Ok(snapshot
            .get(&self.data, key)
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let snapshot = self.db.snapshot();
        let walk = snapshot
            .range(&self.data, scan_start(prefix, after)..)
            .map(|item| item.into_inner().map_err(backend));
        collect_scan(walk, prefix, limit)
    }

    fn apply(&self, tx: Transaction) -> Result<(), StoreError> {
        if tx.is_empty() {
            return Ok(());
        }
        // Every write of this process comes through here, and no other
        // process can open the database, so checking the preconditions and
        // committing the batch under one lock is atomic. A fjall batch is
        // one journal entry (all or nothing across a crash) and readers see
        // it whole: its sequence number is published to snapshots only
        // after every item is in the memtable.
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if self.group.is_poisoned() {
            return Err(poisoned());
        }
        // No batch is half-applied while this lock is held.
        if !preconditions_hold(&tx, |key| self.data.get(key).map_err(backend))? {
            return Err(StoreError::Conflict);
        }
        let mut batch = self.db.batch();
        for write in tx.writes {
            match write {
                Write::Put(k, v) => batch.insert(&self.data, k, v),
                Write::Delete(k) => batch.remove(&self.data, k),
            }
        }
        batch.commit().map_err(backend)
    }

    fn snapshot(
        &self,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        // A fjall snapshot reads as of one sequence number; writers go on.
        let snapshot = self.db.snapshot();
        for item in snapshot.iter(&self.data) {
            let (k, v) = item.into_inner().map_err(backend)?;
            visit(&k, &v)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        // `SyncData` (`fdatasync`), not `SyncAll`: fjall creates each
        // journal at a preallocated length and syncs it with `fsync` (and
        // its directory) before writing to it, and when it rotates to a new
        // journal it `fsync`s the old one first; `fdatasync` of the active
        // journal flushes its data and any size change needed to read it
        // back, which is all an append needs. fjall holds its journal lock
        // during the sync, so batches wait for it (they are not lost).
        self.group.wait_durable(
            || self.db.persist(PersistMode::SyncData).map_err(backend),
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
        assert!(!FjallStore::exists_in(dir.path()));
        std::fs::write(dir.path().join(VERSION_FILE), b"").unwrap();
        assert!(!FjallStore::exists_in(dir.path()), "a version file alone");
        let store_dir = dir.path().join("store");
        FjallStore::open(&store_dir).unwrap();
        assert!(FjallStore::exists_in(&store_dir));
        assert!(!crate::store::SledStore::exists_in(&store_dir));
    }

    /// Many batches, enough to rotate memtables and journals under fjall's
    /// background flushes, all read back after a reopen.
    #[test]
    fn a_large_history_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let value = vec![5u8; 4096];
        {
            let store = FjallStore::open_with_cache(dir.path(), 1 << 20).unwrap();
            for i in 0..20_000u32 {
                store
                    .apply(Transaction::new().put(format!("k/{i:06}").into_bytes(), value.clone()))
                    .unwrap();
            }
            store.flush().unwrap();
        }
        let store = FjallStore::open(dir.path()).unwrap();
        let all = store.scan_prefix(b"k/").unwrap();
        assert_eq!(all.len(), 20_000);
        assert!(all.iter().all(|(_, v)| v == &value));
    }
}
