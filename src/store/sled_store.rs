//! The embedded default backend: sled 0.34 in the data directory.
//!
//! sled 0.34 ends its log writes with `sync_file_range` on Linux, which
//! flushes neither the drive's write cache nor file metadata (sled issues
//! 1351 and 1452); only `fsync`/`fdatasync` do. So every flush here ends in
//! a real `fdatasync` of sled's files ([`DeviceSync`]) before it returns.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::group_commit::GroupCommit;
use super::{
    KeyValue, Store, StoreError, Transaction, Write, collect_scan, io, poisoned,
    preconditions_hold, scan_start, sync_dir, sync_dir_and_parent,
};

/// sled's log file inside the store directory: every page write lands here.
const LOG_FILE: &str = "db";
/// sled's storage parameters, written once when the store is created.
const CONF_FILE: &str = "conf";
/// sled's directory of values too large for the log, one file each.
const BLOB_DIR: &str = "blobs";

/// A sled database. One process at a time may open a data directory.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    files: DeviceSync,
    group: GroupCommit,
    /// Serialises `apply`: its precondition checks and batch are one step.
    writer: Mutex<()>,
}

impl SledStore {
    /// Opens (or creates) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, super::DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the database under `dir` with a page cache of
    /// `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(backend)?;
        let files = DeviceSync::open(dir).map_err(|e| io(dir, &e))?;
        Ok(Self {
            db,
            files,
            group: GroupCommit::default(),
            writer: Mutex::new(()),
        })
    }

    /// Whether `dir` holds a sled database (its `conf` and `db` files):
    /// what a command that must not create a store checks before
    /// [`SledStore::open`]. Says nothing about what the database holds.
    pub fn exists_in(dir: &Path) -> bool {
        dir.join(CONF_FILE).is_file() && dir.join(LOG_FILE).is_file()
    }
}

/// The `fdatasync`s sled 0.34 leaves out.
///
/// [`SledStore::flush`] calls [`DeviceSync::sync_blobs`] (`fdatasync` of
/// every blob file not yet synced at its current length, then `fsync` of
/// the blob directory: a new file's name is durable only once its directory
/// is), then `sled::Db::flush` (which writes the log and ends in
/// `sync_file_range`), then [`DeviceSync::sync_log`] (`fdatasync` of the
/// log). Blobs go first, so a log entry never becomes durable before the
/// blob it points to (for the writes this flush covers, which finished
/// writing their blobs before the flush began).
/// Opening syncs everything once, the store directory and its parent
/// included, so a store just created (or left by a crash) is durable from
/// the start.
#[derive(Debug)]
struct DeviceSync {
    dir: PathBuf,
    /// The log, held open for the process: `fdatasync` on any descriptor of
    /// a file flushes that file, and sled never replaces the log while it
    /// holds the database (it keeps it locked).
    log: File,
    /// Blob files synced so far, by name, with the length they had then: a
    /// blob still being written when it was synced is synced again once it
    /// has grown. Names sled has since deleted are forgotten.
    blobs: Mutex<HashMap<OsString, u64>>,
}

impl DeviceSync {
    fn open(dir: &Path) -> std::io::Result<Self> {
        // Read-only is enough: Linux flushes a file through any descriptor.
        let log = File::open(dir.join(LOG_FILE))?;
        log.sync_all()?;
        File::open(dir.join(CONF_FILE))?.sync_all()?;
        let files = Self {
            dir: dir.to_path_buf(),
            log,
            blobs: Mutex::new(HashMap::new()),
        };
        files.sync_blobs(true)?;
        // The store directory's own name too, should it have just been
        // created.
        sync_dir_and_parent(dir)?;
        Ok(files)
    }

    /// `fdatasync` of the log: makes durable every log write sled has made
    /// so far (call after `sled::Db::flush`).
    fn sync_log(&self) -> std::io::Result<()> {
        self.log.sync_data()
    }

    /// `fdatasync` of each blob file new or grown since the last call, then
    /// `fsync` of the blob directory if there was one (`always`: even if
    /// not).
    fn sync_blobs(&self, always: bool) -> std::io::Result<()> {
        let blob_dir = self.dir.join(BLOB_DIR);
        let mut synced = self.blobs.lock().unwrap_or_else(PoisonError::into_inner);
        let entries = match std::fs::read_dir(&blob_dir) {
            Ok(entries) => entries,
            // sled creates it on open; without it there is no blob to sync.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut now = HashMap::with_capacity(synced.len());
        let mut changed = always;
        for entry in entries {
            let entry = entry?;
            let len = match entry.metadata() {
                Ok(metadata) => metadata.len(),
                // Deleted by sled's blob collection since it was listed.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let name = entry.file_name();
            if synced.get(&name) != Some(&len) {
                match File::open(entry.path()) {
                    Ok(file) => file.sync_data()?,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                changed = true;
            }
            now.insert(name, len);
        }
        if changed {
            sync_dir(&blob_dir)?;
        }
        *synced = now;
        Ok(())
    }

    #[cfg(test)]
    fn synced_blobs(&self) -> usize {
        self.blobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
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
        let walk = self
            .db
            .range(scan_start(prefix, after)..)
            .map(|item| item.map_err(backend));
        collect_scan(walk, prefix, limit)
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
        if self.group.is_poisoned() {
            return Err(poisoned());
        }
        if !preconditions_hold(&tx, |key| self.db.get(key).map_err(backend))? {
            return Err(StoreError::Conflict);
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

    fn snapshot(
        &self,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        // sled has no snapshots: writes wait while the walk runs, so it
        // sees one state (every write goes through `apply`, under this lock).
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        for item in self.db.iter() {
            let (k, v) = item.map_err(backend)?;
            visit(&k, &v)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.group.wait_durable(
            || {
                let synced = |e: std::io::Error| io(&self.files.dir, &e);
                self.files.sync_blobs(false).map_err(synced)?;
                // sled's own flush ends in `sync_file_range` only …
                self.db.flush().map_err(backend)?;
                // … so the round is durable only after this `fdatasync`.
                self.files.sync_log().map_err(synced)
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
        assert!(!SledStore::exists_in(dir.path()));
        std::fs::write(dir.path().join(LOG_FILE), b"").unwrap();
        assert!(!SledStore::exists_in(dir.path()), "a db file alone");
        let store_dir = dir.path().join("store");
        SledStore::open(&store_dir).unwrap();
        assert!(SledStore::exists_in(&store_dir));
    }

    /// A value too large for sled's log goes to a file of its own in
    /// `blobs/`; the flush that acknowledges it syncs that file too.
    #[test]
    fn a_flush_syncs_each_new_blob_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.files.synced_blobs(), 0);
        store.put(b"large", &vec![7u8; 300 * 1024]).unwrap();
        let blobs = std::fs::read_dir(dir.path().join(BLOB_DIR))
            .unwrap()
            .count();
        assert!(blobs >= 1, "sled wrote no blob file");
        assert_eq!(store.files.synced_blobs(), blobs);
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.get(b"large").unwrap().map(|v| v.len()),
            Some(300 * 1024)
        );
    }
}
