//! Backups: the file format, the server's side (a consistent snapshot of
//! the store, signed), the check of a file, and `restore`.
//!
//! A backup holds nothing that is not already sealed or public: the store
//! holds only ciphertext, wrapped keys, HMACs, sealed state and the audit
//! log; `root.json` is sealed by the shares or the passphrase; `audit.pub`
//! is public. This module must never write into an existing store or
//! replace a file it did not create, except `audit.head` (a restore moves
//! rollback protection to the restored head, and says so).
//!
//! Format (version 1, every integer big-endian; docs/operations.md,
//! "Backup and recovery"):
//!
//! ```text
//! magic    "STRONGROOM-BKUP\n"                    16 bytes
//! version  u32 = 1
//! header   u32 length, then that many bytes of JSON ([`Header`])
//! pairs    header.pairs × (u32 key length, key, u32 value length, value),
//!          in strictly ascending key order
//! trailer  SHA-256 of every byte before it (32 bytes), then the Ed25519
//!          signature (64 bytes) over "strongroom/v1/backup\0" ‖ that digest,
//!          by the vault's audit signing key
//! ```
//!
//! The trailer is a signature, not a MAC (SCALE-OUT.md says "a MAC under a
//! root-derived key"): the signing key is root-derived all the same, but a
//! signature can be checked offline with `audit.pub` alone, so `restore`
//! needs no unseal material to refuse a tampered file.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audit::{AUDIT_HEAD_FILE, Checkpoint, KnownHead, verify_store_since};
use crate::crypto::{SIGNATURE_LEN, Sha256Stream, verify_signature};
use crate::keyring::Keyring;
use crate::store::{Engine, Store, StoreError, Transaction};

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 16] = b"STRONGROOM-BKUP\n";
/// The format this build writes and reads.
pub const VERSION: u32 = 1;
/// What the trailer's signature covers, before the digest.
const SIGNATURE_CONTEXT: &[u8] = b"strongroom/v1/backup\0";
/// Digest and signature.
pub const TRAILER_LEN: usize = 32 + SIGNATURE_LEN;

/// Bounds checked before anything is allocated for a length read from a
/// file: far beyond anything the vault stores.
const MAX_HEADER_BYTES: u32 = 1 << 20;
const MAX_KEY_BYTES: u32 = 1 << 16;
const MAX_VALUE_BYTES: u32 = 1 << 28;

// The store keys this module reads facts from, and the keys directory's
// files a backup carries, are their owners' (`audit`, `keyring`).
use crate::audit::log::{
    CHECKPOINT_PREFIX as AUDIT_CHECKPOINT_PREFIX, HEAD_KEY as AUDIT_HEAD_KEY,
    SIGNED_KEY as AUDIT_SIGNED_KEY, head_seq,
};
use crate::keyring::{AUDIT_PUBLIC_KEY_FILE, ROOT_FILE, VAULT_KEY};

/// Pairs written per transaction while restoring, and the bytes at most.
const RESTORE_BATCH_PAIRS: usize = 1024;
const RESTORE_BATCH_BYTES: usize = 8 << 20;
/// Chunks the server streams.
pub const STREAM_CHUNK: usize = 64 * 1024;
/// Free space a backup's spool always leaves on its filesystem: 256 MiB.
pub const SPOOL_RESERVE: u64 = 256 << 20;
/// How often (bytes spooled) the walk checks the free space again.
const SPOOL_CHECK_EVERY: u64 = 16 << 20;

/// Bytes an unprivileged writer may still use on the filesystem of `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// The bytes of every file under `dir` (the store's size on disk).
pub fn tree_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // The engine removes files as it compacts and flushes: one gone
        // since it was listed counts for nothing.
        let size = match entry.file_type() {
            Ok(kind) if kind.is_dir() => tree_bytes(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map(|m| m.len()),
            Ok(_) => Ok(0),
            Err(e) => Err(e),
        };
        total = total.saturating_add(match size {
            Ok(size) => size,
            Err(e) if e.kind() == ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        });
    }
    Ok(total)
}

/// Errors of backup and restore. None carries a stored value.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file is not a backup this build can read, or it is damaged.
    #[error("not a valid backup: {0}")]
    Format(&'static str),
    /// The trailer does not verify: the file was changed, or it was made by
    /// another vault than the key given.
    #[error("{0}")]
    Signature(&'static str),
    /// Restore refuses to go on (another vault, a directory in use, no
    /// trust anchor).
    #[error("{0}")]
    Refused(String),
    #[error("the vault is sealed")]
    Sealed,
    /// Too little free disk space for the spool: the backup was not taken
    /// (rather than fill the disk the store writes to).
    #[error("{0}")]
    NoSpace(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_error(path: &Path, e: &std::io::Error) -> BackupError {
    BackupError::Io(format!("{}: {e}", path.display()))
}

/// The JSON header of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub vault_id: String,
    /// When the snapshot was taken (RFC 3339).
    pub created_at: String,
    /// The engine of the store it was taken from, when the server knows it.
    pub engine: Option<String>,
    /// Entries in the audit log at the snapshot.
    pub audit_entries: u64,
    /// The newest signed audit head in the snapshot.
    pub audit_head: Option<Checkpoint>,
    /// Key/value pairs that follow.
    pub pairs: u64,
    /// The keys directory's `root.json` (sealed).
    pub root_json: String,
    /// The audit verification key, hex (`audit.pub`).
    pub audit_pub: String,
}

impl Header {
    fn audit_public_key(&self) -> Result<[u8; 32], BackupError> {
        crate::crypto::bytes32_from_hex(&self.audit_pub).ok_or(BackupError::Format(
            "the header's audit key is not 32 hex bytes",
        ))
    }
}

/// The message the trailer's signature covers.
fn signed_message(digest: &[u8; 32]) -> Vec<u8> {
    [SIGNATURE_CONTEXT, digest.as_slice()].concat()
}

fn length(n: usize) -> Result<[u8; 4], BackupError> {
    u32::try_from(n)
        .map(u32::to_be_bytes)
        .map_err(|_| BackupError::Format("a key or value over 4 GiB"))
}

/// A snapshot ready to be sent: the magic, version and header; the pairs
/// in an unnamed temporary file (gone when dropped, even after a crash);
/// the trailer.
pub struct Prepared {
    prefix: Vec<u8>,
    pairs: File,
    pairs_len: u64,
    trailer: [u8; TRAILER_LEN],
    pub header: Header,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("pairs", &self.header.pairs)
            .field("bytes", &self.len())
            .finish_non_exhaustive()
    }
}

/// What the walk over the snapshot learns besides the pairs.
#[derive(Default)]
struct Facts {
    pairs: u64,
    vault_id: Option<Vec<u8>>,
    audit_entries: u64,
    signed: Option<Checkpoint>,
}

impl Facts {
    fn note(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let corrupt = |what: &str| StoreError::Backend(format!("cannot read the {what}"));
        if key == VAULT_KEY {
            self.vault_id = Some(value.to_vec());
        } else if key == AUDIT_HEAD_KEY {
            self.audit_entries = head_seq(value).ok_or_else(|| corrupt("audit head record"))?;
        } else if key == AUDIT_SIGNED_KEY || key.starts_with(AUDIT_CHECKPOINT_PREFIX) {
            let signed: Checkpoint =
                serde_json::from_slice(value).map_err(|_| corrupt("signed audit head"))?;
            if self.signed.as_ref().is_none_or(|s| s.seq < signed.seq) {
                self.signed = Some(signed);
            }
        }
        Ok(())
    }
}

impl Prepared {
    /// Takes a consistent snapshot of `store` into an unnamed file in
    /// `spool_dir` and signs it with the vault's audit key. Blocking: the
    /// store's writers wait while the walk runs (it writes to a local file,
    /// never to a client), not while the file is sent.
    ///
    /// `expected_bytes` is what the spool may grow to (the store's size on
    /// disk): the walk starts only if that much plus [`SPOOL_RESERVE`] is
    /// free in `spool_dir`, and stops once less than the reserve is left,
    /// so a backup never fills the disk the store itself writes to (a
    /// failed write poisons the store until restart).
    pub fn take(
        store: &dyn Store,
        keyring: &Keyring,
        spool_dir: &Path,
        expected_bytes: u64,
        engine: Option<Engine>,
        now: time::OffsetDateTime,
    ) -> Result<Self, BackupError> {
        if keyring.is_sealed() {
            return Err(BackupError::Sealed);
        }
        let free = free_bytes(spool_dir).map_err(|e| io_error(spool_dir, &e))?;
        if free < expected_bytes.saturating_add(SPOOL_RESERVE) {
            return Err(BackupError::NoSpace(format!(
                "a backup needs about {} MiB free beside the data directory and {} MiB more \
                 kept in reserve; {} MiB are free. Nothing was taken",
                expected_bytes >> 20,
                SPOOL_RESERVE >> 20,
                free >> 20
            )));
        }
        let spool = tempfile::tempfile_in(spool_dir).map_err(|e| io_error(spool_dir, &e))?;
        let mut writer = BufWriter::with_capacity(STREAM_CHUNK, spool);
        let mut facts = Facts::default();
        let mut since_check = 0u64;
        let mut out_of_room = false;
        let walked = store.snapshot(&mut |key, value| {
            since_check += (key.len() + value.len() + 8) as u64;
            if since_check >= SPOOL_CHECK_EVERY {
                since_check = 0;
                match free_bytes(spool_dir) {
                    Ok(free) if free >= SPOOL_RESERVE => {}
                    Ok(_) => {
                        out_of_room = true;
                        return Err(StoreError::Backend(
                            "the disk beside the data directory is nearly full; the backup \
                             stopped"
                                .into(),
                        ));
                    }
                    Err(e) => return Err(StoreError::Backend(format!("backup spool: {e}"))),
                }
            }
            let written = length(key.len())
                .and_then(|k| Ok((k, length(value.len())?)))
                .map_err(|e| StoreError::Backend(e.to_string()))
                .and_then(|(k, v)| {
                    writer
                        .write_all(&k)
                        .and_then(|()| writer.write_all(key))
                        .and_then(|()| writer.write_all(&v))
                        .and_then(|()| writer.write_all(value))
                        .map_err(|e| StoreError::Backend(format!("backup spool: {e}")))
                });
            written?;
            facts.pairs += 1;
            facts.note(key, value)
        });
        match walked {
            Err(_) if out_of_room => {
                return Err(BackupError::NoSpace(format!(
                    "the free space beside the data directory fell to the {} MiB reserve while \
                     the backup was spooled; it stopped. Nothing was taken",
                    SPOOL_RESERVE >> 20
                )));
            }
            other => other?,
        }
        let mut pairs = writer
            .into_inner()
            .map_err(|e| io_error(spool_dir, e.error()))?;
        // The snapshot may hold writes applied but not yet durable: signed
        // only once they are, so a backup never vouches for a write a
        // failed sync then loses.
        store.flush()?;
        let vault_id = facts
            .vault_id
            .ok_or_else(|| BackupError::Refused("the store holds no initialised vault".into()))?;
        if vault_id != keyring.vault_id().as_bytes() {
            return Err(BackupError::Refused(
                "the store belongs to another vault than the keys directory".into(),
            ));
        }
        // A node that reads its root record from the database has no
        // root.json: the backup carries the record the keyring opened.
        let root_path = keyring.keys_dir().join(ROOT_FILE);
        let root_json = if root_path.exists() {
            fs::read_to_string(&root_path).map_err(|e| io_error(&root_path, &e))?
        } else {
            keyring
                .root_record_json()
                .map_err(|_| BackupError::Format("the root record cannot be encoded"))?
        };
        let keys = keyring.keys().map_err(|_| BackupError::Sealed)?;
        let signer = keys.audit_signing_key().map_err(|_| BackupError::Sealed)?;
        let header = Header {
            vault_id: keyring.vault_id().to_owned(),
            created_at: crate::clock::rfc3339(now),
            engine: engine.map(|e| e.as_str().to_owned()),
            audit_entries: facts.audit_entries,
            audit_head: facts.signed,
            pairs: facts.pairs,
            root_json,
            audit_pub: hex::encode(signer.public_key()),
        };
        let header_json = serde_json::to_vec(&header)
            .map_err(|_| BackupError::Format("the header cannot be encoded"))?;
        let mut prefix = MAGIC.to_vec();
        prefix.extend_from_slice(&VERSION.to_be_bytes());
        prefix.extend_from_slice(&length(header_json.len())?);
        prefix.extend_from_slice(&header_json);

        let mut hash = Sha256Stream::new();
        hash.update(&prefix);
        pairs
            .seek(SeekFrom::Start(0))
            .map_err(|e| io_error(spool_dir, &e))?;
        let pairs_len =
            copy_hashed(&mut pairs, &mut hash, |_| Ok(())).map_err(|e| io_error(spool_dir, &e))?;
        pairs
            .seek(SeekFrom::Start(0))
            .map_err(|e| io_error(spool_dir, &e))?;
        let digest = hash.finish();
        let signature = signer.sign(&signed_message(&digest));
        let mut trailer = [0u8; TRAILER_LEN];
        let (digest_part, signature_part) = trailer.split_at_mut(32);
        digest_part.copy_from_slice(&digest);
        signature_part.copy_from_slice(&signature);
        Ok(Self {
            prefix,
            pairs,
            pairs_len,
            trailer,
            header,
        })
    }

    /// The size of the whole file.
    pub fn len(&self) -> u64 {
        self.prefix.len() as u64 + self.pairs_len + TRAILER_LEN as u64
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Hands the file to `send` in chunks of at most [`STREAM_CHUNK`]
    /// bytes, until it is all sent or `send` answers false (the client
    /// went away). Blocking.
    pub fn send(mut self, mut send: impl FnMut(Vec<u8>) -> bool) -> Result<(), BackupError> {
        if !send(std::mem::take(&mut self.prefix)) {
            return Ok(());
        }
        let mut left = self.pairs_len;
        while left > 0 {
            let mut chunk =
                vec![0u8; usize::try_from(left.min(STREAM_CHUNK as u64)).unwrap_or(STREAM_CHUNK)];
            self.pairs
                .read_exact(&mut chunk)
                .map_err(|e| BackupError::Io(format!("backup spool: {e}")))?;
            left -= chunk.len() as u64;
            if !send(chunk) {
                return Ok(());
            }
        }
        send(self.trailer.to_vec());
        Ok(())
    }
}

/// Copies `from` to its end through `hash`, handing each piece to `sink`;
/// the bytes copied.
fn copy_hashed(
    from: &mut impl Read,
    hash: &mut Sha256Stream,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; STREAM_CHUNK];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let piece = buffer.get(..n).unwrap_or_default();
        hash.update(piece);
        sink(piece)?;
        total += n as u64;
    }
}

/// Which key the trailer must verify under.
#[derive(Debug, Clone, Copy)]
pub enum Trust {
    /// The vault's `audit.pub`, from outside the file (restore).
    Key([u8; 32]),
    /// The key the header names: proves only that the file arrived whole
    /// (what `backup` checks before it keeps a file it just received).
    HeaderKey,
}

/// What a whole, verified file holds.
#[derive(Debug, Clone)]
pub struct Verified {
    pub header: Header,
    /// The digest the trailer signs.
    pub digest: [u8; 32],
}

/// Reads counting and hashing every byte.
struct HashingReader<R> {
    inner: R,
    hash: Sha256Stream,
}

impl<R: Read> HashingReader<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                BackupError::Format("the file is truncated")
            } else {
                BackupError::Io(format!("reading the backup: {e}"))
            }
        })?;
        self.hash.update(buf);
        Ok(())
    }

    fn u32(&mut self) -> Result<u32, BackupError> {
        let mut bytes = [0u8; 4];
        self.exact(&mut bytes)?;
        Ok(u32::from_be_bytes(bytes))
    }

    fn bytes(&mut self, max: u32, what: &'static str) -> Result<Vec<u8>, BackupError> {
        let n = self.u32()?;
        if n > max {
            return Err(BackupError::Format(what));
        }
        let mut bytes = vec![0u8; n as usize];
        self.exact(&mut bytes)?;
        Ok(bytes)
    }
}

/// Reads a backup from `file` (from its start) to its end, handing every
/// pair to `visit` in order, and checks the whole of it: the magic and
/// version, the header, the pairs (count, order, the vault id among them),
/// the trailer's digest and signature under `trust`, nothing after it.
/// `visit` sees pairs before the signature is checked: a caller that
/// writes them must undo its work when this fails.
pub fn read(
    file: &mut File,
    trust: Trust,
    mut visit: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), BackupError>,
) -> Result<Verified, BackupError> {
    file.seek(SeekFrom::Start(0))
        .map_err(|e| BackupError::Io(format!("reading the backup: {e}")))?;
    let mut reader = HashingReader {
        inner: BufReader::with_capacity(STREAM_CHUNK, &mut *file),
        hash: Sha256Stream::new(),
    };
    let mut magic = [0u8; 16];
    reader.exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(BackupError::Format(
            "it does not start as a Strongroom backup",
        ));
    }
    if reader.u32()? != VERSION {
        return Err(BackupError::Format(
            "unknown format version (made by a newer Strongroom?)",
        ));
    }
    let header_bytes = reader.bytes(MAX_HEADER_BYTES, "the header is too long")?;
    let header: Header = serde_json::from_slice(&header_bytes)
        .map_err(|_| BackupError::Format("the header is not a backup header"))?;
    let key = header.audit_public_key()?;
    if let Trust::Key(trusted) = trust
        && trusted != key
    {
        return Err(BackupError::Signature(
            "the backup was made by another vault: its audit key is not the one given (keys/audit.pub or --public-key)",
        ));
    }
    let root: serde_json::Value = serde_json::from_str(&header.root_json)
        .map_err(|_| BackupError::Format("the header's root.json is not JSON"))?;
    if root.get("vault_id").and_then(|v| v.as_str()) != Some(header.vault_id.as_str()) {
        return Err(BackupError::Format(
            "the header's root.json belongs to another vault than the header",
        ));
    }
    if let Some(head) = &header.audit_head {
        let hash = hex::decode(&head.hash).unwrap_or_default();
        let signature = hex::decode(&head.signature).unwrap_or_default();
        verify_signature(
            &key,
            &Checkpoint::signed_message(head.seq, &hash, &head.time),
            &signature,
        )
        .map_err(|_| BackupError::Signature("the header's signed audit head does not verify"))?;
    }
    let mut previous: Option<Vec<u8>> = None;
    let mut vault_seen = false;
    for _ in 0..header.pairs {
        let key = reader.bytes(MAX_KEY_BYTES, "a key is too long")?;
        let value = reader.bytes(MAX_VALUE_BYTES, "a value is too long")?;
        if previous.as_ref().is_some_and(|p| *p >= key) {
            return Err(BackupError::Format("the pairs are not in key order"));
        }
        if key == VAULT_KEY {
            if value != header.vault_id.as_bytes() {
                return Err(BackupError::Format(
                    "the store in the file belongs to another vault than its header",
                ));
            }
            vault_seen = true;
        }
        previous = Some(key.clone());
        visit(key, value)?;
    }
    if !vault_seen {
        return Err(BackupError::Format("the file holds no initialised vault"));
    }
    let digest = reader.hash.finish();
    let mut trailer = [0u8; TRAILER_LEN];
    reader
        .inner
        .read_exact(&mut trailer)
        .map_err(|_| BackupError::Format("the file is truncated (no trailer)"))?;
    let mut rest = [0u8; 1];
    match reader.inner.read(&mut rest) {
        Ok(0) => {}
        Ok(_) => return Err(BackupError::Format("bytes follow the trailer")),
        Err(e) => return Err(BackupError::Io(format!("reading the backup: {e}"))),
    }
    let (stated, signature) = trailer.split_at(32);
    if stated != digest.as_slice() {
        return Err(BackupError::Signature(
            "the backup was changed: its digest does not match its contents",
        ));
    }
    verify_signature(&key, &signed_message(&digest), signature).map_err(|_| {
        BackupError::Signature("the backup's signature does not verify under its vault's audit key")
    })?;
    Ok(Verified { header, digest })
}

/// What `restore` is told to do.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub file: PathBuf,
    pub data_dir: PathBuf,
    pub keys_dir: PathBuf,
    /// `--public-key`; otherwise `keys_dir/audit.pub` must exist.
    pub public_key: Option<PathBuf>,
    pub engine: Engine,
    pub cache_bytes: u64,
    /// `--accept-rollback`: restore even though the keys directory's
    /// `audit.head` names a later entry than the backup reaches (the
    /// entries after the backup are then lost to the log; the old head is
    /// kept beside it).
    pub accept_rollback: bool,
    /// `--epoch-file`: the live vault's `epoch.json`, copied into the keys
    /// directory (a backup never carries the erasure epochs' secrets).
    pub epoch_file: Option<PathBuf>,
}

/// The erasure epochs the KEK versions in a backup are wrapped under.
fn epochs_named(key: &[u8], value: &[u8], into: &mut std::collections::BTreeSet<u64>) {
    if key.starts_with(crate::keyring::KEK_STORE_PREFIX)
        && let Ok(stored) = serde_json::from_slice::<serde_json::Value>(value)
        && let Some(epoch) = stored.get("epoch").and_then(serde_json::Value::as_u64)
    {
        into.insert(epoch);
    }
}

/// The `epoch.json` a restore puts beside `root.json`: the keys
/// directory's own, or `--epoch-file`; it must hold every epoch `needed`
/// names, or the backup's KEK versions cannot be unwrapped.
fn epoch_file_for(
    plan: &RestorePlan,
    vault_id: &str,
    needed: &std::collections::BTreeSet<u64>,
) -> Result<Option<Vec<u8>>, BackupError> {
    if needed.is_empty() {
        return Ok(None);
    }
    let beside = plan.keys_dir.join(crate::keyring::epoch::EPOCH_FILE);
    let (path, copy) = match (&plan.epoch_file, beside.is_file()) {
        // The file checked must be the file the restored vault uses.
        (Some(path), true) => {
            let given = fs::read(path).map_err(|e| io_error(path, &e))?;
            let there = fs::read(&beside).map_err(|e| io_error(&beside, &e))?;
            if given != there {
                return Err(BackupError::Refused(format!(
                    "{} differs from --epoch-file {}: the keys directory already holds \
                     another epoch file; nothing was created",
                    beside.display(),
                    path.display()
                )));
            }
            (beside, false)
        }
        (Some(path), false) => (path.clone(), true),
        (None, true) => (beside, false),
        (None, false) => {
            return Err(BackupError::Refused(format!(
                "the backup's KEK versions are wrapped under erasure epoch {needed:?}, whose \
                 secret is in the live vault's keys/epoch.json and never in a backup: give that \
                 file with --epoch-file (a backup restores only within the epoch it was taken \
                 in). Nothing was created"
            )));
        }
    };
    let bytes = fs::read(&path).map_err(|e| io_error(&path, &e))?;
    let file: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| BackupError::Refused(format!("{} is not an epoch file", path.display())))?;
    if file.get("vault_id").and_then(serde_json::Value::as_str) != Some(vault_id) {
        return Err(BackupError::Refused(format!(
            "{} belongs to another vault; nothing was created",
            path.display()
        )));
    }
    let held: std::collections::BTreeSet<u64> = file
        .get("epochs")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("epoch").and_then(serde_json::Value::as_u64))
        .collect();
    if !needed.is_subset(&held) {
        return Err(BackupError::Refused(format!(
            "the backup needs erasure epoch {needed:?}, but {} holds only {held:?}: the epoch \
                 the backup was taken in has passed and its secret is destroyed, so its data is \
                 erased for good (by design: docs/lifecycle.md). Nothing was created",
            path.display()
        )));
    }
    Ok(copy.then_some(bytes))
}

/// What `restore` did.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub vault_id: String,
    pub pairs: u64,
    pub engine: &'static str,
    pub audit_entries: u64,
    /// The signed audit head restored (`audit.head`): seq and hash.
    pub audit_head: Option<(u64, String)>,
    pub created_at: String,
    /// The keys directory's files written (the rest were there already).
    pub keys_written: Vec<&'static str>,
    /// The seq `audit.head` named before, when it was newer and moved back.
    pub audit_head_moved_back_from: Option<u64>,
    /// Where the `audit.head` found in the keys directory was kept.
    pub previous_audit_head: Option<PathBuf>,
}

fn read_public_key(path: &Path) -> Result<[u8; 32], BackupError> {
    crate::audit::read_public_key(path).map_err(BackupError::Refused)
}

/// The vault id of an existing `root.json`, if there is one.
fn existing_vault_id(keys_dir: &Path) -> Result<Option<String>, BackupError> {
    let path = keys_dir.join(ROOT_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&path, &e)),
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("vault_id")?.as_str().map(str::to_owned))
        .map(Some)
        .ok_or_else(|| BackupError::Refused(format!("{} is not a root key file", path.display())))
}

/// Whether `dir` may receive a restored store: absent, or an empty
/// directory. True when it exists.
fn check_target(dir: &Path) -> Result<bool, BackupError> {
    if Engine::detect(dir).is_some() {
        return Err(BackupError::Refused(format!(
            "{} already holds a store; restore only into a new or empty directory (nothing was changed)",
            dir.display()
        )));
    }
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                Err(BackupError::Refused(format!(
                    "{} is not empty; restore only into a new or empty directory (nothing was changed)",
                    dir.display()
                )))
            } else {
                Ok(true)
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error(dir, &e)),
    }
}

/// Restores `plan.file` into a new store in `plan.data_dir`. Every check
/// that needs nothing but the file runs first (a whole pass over it);
/// nothing is created unless they all pass. A failure after that removes
/// what this call created.
pub fn restore(plan: &RestorePlan) -> Result<Restored, BackupError> {
    let beside = plan.keys_dir.join(AUDIT_PUBLIC_KEY_FILE);
    let anchor_path = match &plan.public_key {
        Some(path) => path.clone(),
        None if beside.is_file() => beside.clone(),
        None => {
            return Err(BackupError::Refused(format!(
                "no trusted audit key: {} does not exist and --public-key was not given. The \
                 backup's signature must be checked against the vault's audit.pub kept apart \
                 from the backup (as for `audit verify`); nothing was created",
                beside.display()
            )));
        }
    };
    let anchor = read_public_key(&anchor_path)?;
    if beside.is_file() && read_public_key(&beside)? != anchor {
        return Err(BackupError::Refused(format!(
            "{} is not the key given with --public-key: the keys directory belongs to another vault",
            beside.display()
        )));
    }
    let known_vault = existing_vault_id(&plan.keys_dir)?;
    let existed = check_target(&plan.data_dir)?;
    if existed {
        crate::config::check_data_dir(&plan.data_dir)
            .map_err(|e| BackupError::Refused(format!("{e} (nothing was changed)")))?;
    }
    let mut file = File::open(&plan.file).map_err(|e| io_error(&plan.file, &e))?;
    let mut needed = std::collections::BTreeSet::new();
    let checked = read(&mut file, Trust::Key(anchor), |key, value| {
        epochs_named(&key, &value, &mut needed);
        Ok(())
    })?;
    let header = checked.header;
    let epoch_file = epoch_file_for(plan, &header.vault_id, &needed)?;
    if let Some(id) = &known_vault
        && *id != header.vault_id
    {
        return Err(BackupError::Refused(format!(
            "the backup is of vault {}, but {} belongs to vault {id}; nothing was created",
            header.vault_id,
            plan.keys_dir.join(ROOT_FILE).display()
        )));
    }

    // The keys directory's audit.head is the newest signed head this vault
    // is known to have made durable. Beyond the backup's last entry: the
    // restore would drop entries from the log, a rollback, refused unless
    // the operator says so. At or before it: the backup's log must hold
    // that very entry (checked when the restored log is verified), or it is
    // another history signed with the same key (a copy that ran on its
    // own), refused too. `--accept-rollback` takes the backup as it is.
    let backup_last = header.audit_entries;
    let found = crate::audit::read_head_file(&plan.keys_dir, &anchor);
    let found_seq = found
        .as_ref()
        .ok()
        .and_then(|known| known.as_ref().map(|k| k.seq));
    let keys_head = match found {
        Ok(_) if plan.accept_rollback => None,
        Ok(Some(known)) if known.seq > backup_last => {
            return Err(BackupError::Refused(format!(
                "{} names audit entry {}, but this backup ends at entry {backup_last}: restoring \
                 it drops the {} entries after it from the log. If that is what you mean (the \
                 newer data is lost), run again with --accept-rollback; the current audit.head \
                 is kept beside it. Nothing was created",
                plan.keys_dir.join(AUDIT_HEAD_FILE).display(),
                known.seq,
                known.seq - backup_last
            )));
        }
        Ok(known) => known,
        Err(_) if plan.accept_rollback => None,
        Err(why) => {
            return Err(BackupError::Refused(format!(
                "{why}: find out why before restoring (--accept-rollback restores anyway and \
                 keeps that file beside the new head). Nothing was created"
            )));
        }
    };

    // Every check passed: create the store.
    crate::config::create_data_dir(&plan.data_dir).map_err(|e| BackupError::Io(e.to_string()))?;
    let undo = |why: BackupError| {
        let removed = if existed {
            fs::read_dir(&plan.data_dir).and_then(|entries| {
                entries.into_iter().try_for_each(|entry| {
                    let path = entry?.path();
                    if path.is_dir() {
                        fs::remove_dir_all(path)
                    } else {
                        fs::remove_file(path)
                    }
                })
            })
        } else {
            fs::remove_dir_all(&plan.data_dir)
        };
        if let Err(e) = removed {
            tracing::error!(error = %e, dir = %plan.data_dir.display(), "cannot remove the partly restored store");
        }
        why
    };
    let written = write_store(
        plan,
        &mut file,
        anchor,
        &checked.digest,
        &header,
        keys_head.as_ref(),
    );
    let verification = match written {
        Ok(verification) => verification,
        Err(e) => return Err(undo(e)),
    };
    let keys_written = match write_keys(plan, &header, &anchor, epoch_file.as_deref()) {
        Ok(written) => written,
        Err(e) => return Err(undo(e)),
    };
    // The newer of the two heads stays: the keys directory's when the
    // backup's log holds it and reaches past the backup's last signature.
    let keep_keys_head = matches!(
        (&keys_head, &header.audit_head),
        (Some(known), Some(head)) if known.seq >= head.seq
    );
    let (moved_back, previous_audit_head) = match &header.audit_head {
        Some(head) if !keep_keys_head => match write_audit_head(&plan.keys_dir, head, found_seq) {
            Ok(written) => written,
            Err(e) => return Err(undo(e)),
        },
        _ => (None, None),
    };
    Ok(Restored {
        vault_id: header.vault_id,
        pairs: header.pairs,
        engine: plan.engine.as_str(),
        audit_entries: verification,
        audit_head: header.audit_head.as_ref().map(|h| (h.seq, h.hash.clone())),
        created_at: header.created_at,
        keys_written,
        audit_head_moved_back_from: moved_back,
        previous_audit_head,
    })
}

/// The second pass: every pair into a new store, then the audit chain
/// verified in it. The entries that verified.
fn write_store(
    plan: &RestorePlan,
    file: &mut File,
    anchor: [u8; 32],
    digest: &[u8; 32],
    header: &Header,
    keys_head: Option<&KnownHead>,
) -> Result<u64, BackupError> {
    let store = crate::store::open_engine(plan.engine, &plan.data_dir, plan.cache_bytes)?;
    let mut batch = Transaction::new();
    let (mut pairs, mut bytes) = (0usize, 0usize);
    let again = read(file, Trust::Key(anchor), |key, value| {
        pairs += 1;
        bytes += key.len() + value.len();
        batch = std::mem::take(&mut batch).put(key, value);
        if pairs >= RESTORE_BATCH_PAIRS || bytes >= RESTORE_BATCH_BYTES {
            store.apply(std::mem::take(&mut batch))?;
            (pairs, bytes) = (0, 0);
        }
        Ok(())
    })?;
    if again.digest != *digest {
        return Err(BackupError::Signature(
            "the backup changed while it was being restored",
        ));
    }
    if !batch.is_empty() {
        store.apply(batch)?;
    }
    store.flush()?;
    // The keys directory's head when it has one (the backup's log must
    // hold that entry), else the backup's own signed head.
    let known = keys_head
        .cloned()
        .or_else(|| header.audit_head.as_ref().map(KnownHead::from));
    let verification = verify_store_since(store.as_ref(), &anchor, false, known.as_ref());
    if !verification.ok {
        let history = if keys_head.is_some() {
            " (the keys directory's audit.head names an entry this backup's log does not \
             hold: a backup of another history signed with this vault's key; \
             --accept-rollback restores it anyway)"
        } else {
            ""
        };
        return Err(BackupError::Refused(format!(
            "the restored audit log does not verify at entry {}: {}{history}; nothing was kept",
            verification.first_bad_seq.unwrap_or(0),
            verification.problem.as_deref().unwrap_or("unknown")
        )));
    }
    if verification.entries != header.audit_entries {
        return Err(BackupError::Refused(format!(
            "the restored audit log holds {} entries, the header says {}",
            verification.entries, header.audit_entries
        )));
    }
    Ok(verification.entries)
}

/// `root.json` and `audit.pub` into the keys directory (created 0700 if
/// absent) unless there already; the names written.
fn write_keys(
    plan: &RestorePlan,
    header: &Header,
    anchor: &[u8; 32],
    epoch_file: Option<&[u8]>,
) -> Result<Vec<&'static str>, BackupError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&plan.keys_dir)
        .map_err(|e| io_error(&plan.keys_dir, &e))?;
    let mut written = Vec::new();
    let mut files = vec![
        (ROOT_FILE, header.root_json.clone().into_bytes(), 0o600),
        (
            AUDIT_PUBLIC_KEY_FILE,
            format!("{}\n", hex::encode(anchor)).into_bytes(),
            0o644,
        ),
    ];
    if let Some(bytes) = epoch_file {
        files.push((crate::keyring::epoch::EPOCH_FILE, bytes.to_vec(), 0o600));
    }
    for (name, bytes, mode) in files {
        let path = plan.keys_dir.join(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
        {
            Ok(mut file) => {
                file.write_all(&bytes)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io_error(&path, &e))?;
                written.push(name);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error(&path, &e)),
        }
    }
    sync_dir(&plan.keys_dir)?;
    Ok(written)
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    crate::store::sync_dir(dir).map_err(|e| io_error(dir, &e))
}

/// Sets `audit.head` to the backup's signed head, so rollback protection
/// starts from it. An `audit.head` already there (naming `found_seq`, when
/// it verified) is kept, renamed to `audit.head.before-restore-<unix
/// time>` (it records how far the lost log went). Returns the seq it named
/// when that was newer than the backup's (the restore moved it back, as
/// `--accept-rollback` allowed), and where it was kept.
fn write_audit_head(
    keys_dir: &Path,
    head: &Checkpoint,
    found_seq: Option<u64>,
) -> Result<(Option<u64>, Option<PathBuf>), BackupError> {
    let path = keys_dir.join(AUDIT_HEAD_FILE);
    let kept = if path.exists() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let kept = keys_dir.join(format!("{AUDIT_HEAD_FILE}.before-restore-{now}"));
        if kept.exists() {
            return Err(BackupError::Refused(format!(
                "{} exists already; try again in a second",
                kept.display()
            )));
        }
        fs::rename(&path, &kept).map_err(|e| io_error(&path, &e))?;
        Some(kept)
    } else {
        None
    };
    crate::audit::HeadFile::new(keys_dir)
        .write(head)
        .map_err(|e| io_error(&path, &e))?;
    Ok((found_seq.filter(|seq| *seq > head.seq), kept))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use std::io::Write as _;

    use super::*;

    use crate::crypto::{Key256, SigningKey};

    /// A backup of `pairs` as the server writes one, signed by `key`.
    fn encode(
        key: &SigningKey,
        vault_id: &str,
        root_vault_id: &str,
        pairs: &[(&[u8], &[u8])],
    ) -> Vec<u8> {
        let header = Header {
            vault_id: vault_id.into(),
            created_at: "2026-06-01T00:00:00Z".into(),
            engine: Some("sled".into()),
            audit_entries: 0,
            audit_head: None,
            pairs: pairs.len() as u64,
            root_json: format!("{{\"vault_id\":\"{root_vault_id}\"}}"),
            audit_pub: hex::encode(key.public_key()),
        };
        let json = serde_json::to_vec(&header).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION.to_be_bytes());
        bytes.extend_from_slice(&length(json.len()).unwrap());
        bytes.extend_from_slice(&json);
        for (k, v) in pairs {
            bytes.extend_from_slice(&length(k.len()).unwrap());
            bytes.extend_from_slice(k);
            bytes.extend_from_slice(&length(v.len()).unwrap());
            bytes.extend_from_slice(v);
        }
        let digest = crate::crypto::sha256(&bytes);
        bytes.extend_from_slice(&digest);
        bytes.extend_from_slice(&key.sign(&signed_message(&digest)));
        bytes
    }

    fn check(bytes: &[u8], trust: Trust) -> Result<Verified, BackupError> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        let mut seen = Vec::new();
        let verified = read(&mut file, trust, |k, v| {
            seen.push((k, v));
            Ok(())
        })?;
        assert_eq!(seen.len() as u64, verified.header.pairs);
        Ok(verified)
    }

    #[test]
    fn a_well_formed_file_verifies_and_every_rule_is_enforced() {
        let key = SigningKey::from_seed(&Key256::from_bytes([7; 32])).unwrap();
        let other = SigningKey::from_seed(&Key256::from_bytes([8; 32])).unwrap();
        let good: &[(&[u8], &[u8])] = &[(b"a", b"1"), (VAULT_KEY, b"v1"), (b"z", b"")];
        let bytes = encode(&key, "v1", "v1", good);
        assert!(check(&bytes, Trust::Key(key.public_key())).is_ok());
        assert!(check(&bytes, Trust::HeaderKey).is_ok());
        // Another vault's key.
        let e = check(&bytes, Trust::Key(other.public_key())).unwrap_err();
        assert!(e.to_string().contains("another vault"), "{e}");
        // Signed by a key other than the one the header names.
        let mut forged = encode(&other, "v1", "v1", good);
        let at = forged.len() - 1;
        forged[at] ^= 1;
        assert!(check(&forged, Trust::HeaderKey).is_err());
        // Pairs out of order, or repeated.
        let unordered: &[(&[u8], &[u8])] = &[(b"b", b"1"), (b"a", b"1"), (VAULT_KEY, b"v1")];
        let e = check(&encode(&key, "v1", "v1", unordered), Trust::HeaderKey).unwrap_err();
        assert!(e.to_string().contains("key order"), "{e}");
        let repeated: &[(&[u8], &[u8])] = &[(b"a", b"1"), (b"a", b"2"), (VAULT_KEY, b"v1")];
        assert!(check(&encode(&key, "v1", "v1", repeated), Trust::HeaderKey).is_err());
        // No vault in the store, another vault's store, another vault's root.json.
        let empty: &[(&[u8], &[u8])] = &[(b"a", b"1")];
        let e = check(&encode(&key, "v1", "v1", empty), Trust::HeaderKey).unwrap_err();
        assert!(e.to_string().contains("no initialised vault"), "{e}");
        let e = check(&encode(&key, "v2", "v2", good), Trust::HeaderKey).unwrap_err();
        assert!(e.to_string().contains("another vault"), "{e}");
        let e = check(&encode(&key, "v1", "v2", good), Trust::HeaderKey).unwrap_err();
        assert!(e.to_string().contains("root.json"), "{e}");
        // Any changed byte, a missing or an extra one.
        for at in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[at] ^= 0x20;
            assert!(
                check(&changed, Trust::Key(key.public_key())).is_err(),
                "byte {at}"
            );
        }
        assert!(check(&bytes[..bytes.len() - 1], Trust::HeaderKey).is_err());
        assert!(check(&[bytes.as_slice(), b"\0"].concat(), Trust::HeaderKey).is_err());
    }

    #[test]
    fn a_file_that_is_not_a_backup_is_refused_by_its_magic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        fs::write(&path, b"hello, this is not a backup at all").unwrap();
        let mut file = File::open(&path).unwrap();
        let e = read(&mut file, Trust::HeaderKey, |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("does not start as"), "{e}");
        fs::write(&path, &MAGIC[..10]).unwrap();
        let mut file = File::open(&path).unwrap();
        let e = read(&mut file, Trust::HeaderKey, |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let mut newer = MAGIC.to_vec();
        newer.extend_from_slice(&2u32.to_be_bytes());
        fs::write(&path, newer).unwrap();
        let mut file = File::open(&path).unwrap();
        let e = read(&mut file, Trust::HeaderKey, |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("version"), "{e}");
    }
}
