//! `audit.head` in the keys directory: the newest signed head the server
//! has made durable, so that a data directory put back to an older copy
//! (fewer entries, every one of them signed) is told from the real one.
//!
//! The file is a [`Checkpoint`] (JSON), signed like every other, written
//! after the store flush that made its head durable — never ahead of the
//! store — at most once a second while serving, and always at seal,
//! shutdown and unseal. It holds no secret (mode 0644, like `audit.pub`).

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Checkpoint;
use super::verify::KnownHead;
use crate::crypto::verify_signature;

/// The file's name, beside `audit.pub`.
pub const AUDIT_HEAD_FILE: &str = "audit.head";

/// How often, at most, the file is rewritten while serving.
pub(crate) const EVERY: Duration = Duration::from_secs(1);

/// The audit verification key in `path` (`audit.pub`: 64 hex digits).
pub fn read_public_key(path: &Path) -> Result<[u8; 32], String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    crate::crypto::bytes32_from_hex(text.trim()).ok_or_else(|| {
        format!(
            "{}: not an audit public key (64 hex digits)",
            path.display()
        )
    })
}

/// Reads `keys_dir/audit.head` and checks its signature: `None` when there
/// is no such file. A file that does not parse or verify is an error: it
/// is never silently ignored.
pub fn read_head_file(keys_dir: &Path, public_key: &[u8]) -> Result<Option<KnownHead>, String> {
    let path = keys_dir.join(AUDIT_HEAD_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let head: Checkpoint = serde_json::from_str(&text)
        .map_err(|_| format!("{} is not a signed audit head", path.display()))?;
    let hash = hex::decode(&head.hash)
        .map_err(|_| format!("{} is not a signed audit head", path.display()))?;
    let signature = hex::decode(&head.signature).unwrap_or_default();
    let message = Checkpoint::signed_message(head.seq, &hash, &head.time);
    verify_signature(public_key, &message, &signature).map_err(|_| {
        format!(
            "{}'s signature does not verify under this vault's audit key",
            path.display()
        )
    })?;
    Ok(Some(KnownHead::from(&head)))
}

/// The writer of one keys directory's `audit.head`.
pub(crate) struct HeadFile {
    path: PathBuf,
    /// The seq last written, and when.
    written: Mutex<Option<(u64, Instant)>>,
}

impl HeadFile {
    pub(crate) fn new(keys_dir: &Path) -> Self {
        Self {
            path: keys_dir.join(AUDIT_HEAD_FILE),
            written: Mutex::new(None),
        }
    }

    pub(crate) fn keys_dir(&self) -> Option<&Path> {
        self.path.parent()
    }

    /// Records `head`, which must already be durable in the store, unless
    /// the file already names it or a newer head; with `throttle`, not more
    /// than once every [`EVERY`]. True when the file now names `head` or a
    /// newer one; false when it was put off (try again later) or failed.
    pub(crate) fn record(&self, head: &Checkpoint, throttle: bool) -> bool {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((seq, at)) = *written {
            if seq >= head.seq {
                return true;
            }
            if throttle && at.elapsed() < EVERY {
                return false;
            }
        }
        match self.write(head) {
            Ok(seq) => {
                *written = Some((seq, Instant::now()));
                true
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot record the newest signed audit head; rollback detection falls back to the last one written"
                );
                false
            }
        }
    }

    /// Replaces the file atomically with `head` unless it names a newer
    /// head already; the seq the file now names.
    pub(crate) fn write(&self, head: &Checkpoint) -> std::io::Result<u64> {
        if let Ok(text) = fs::read_to_string(&self.path)
            && let Ok(current) = serde_json::from_str::<Checkpoint>(&text)
            && current.seq >= head.seq
        {
            return Ok(current.seq);
        }
        let text = serde_json::to_string(head).map_err(std::io::Error::other)?;
        let temporary = self.path.with_extension("head.new");
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&temporary)?;
        file.write_all(format!("{text}\n").as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, &self.path)?;
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(head.seq)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::crypto::{Key256, SigningKey};

    fn signed(key: &SigningKey, seq: u64) -> Checkpoint {
        let hash = [seq as u8; 32];
        let time = "2026-01-01T00:00:00Z".to_owned();
        Checkpoint {
            seq,
            hash: hex::encode(hash),
            signature: hex::encode(key.sign(&Checkpoint::signed_message(seq, &hash, &time))),
            time,
        }
    }

    #[test]
    fn the_file_only_moves_forward_and_must_verify() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_seed(&Key256::from_bytes([5; 32])).unwrap();
        let public = key.public_key();
        assert_eq!(read_head_file(dir.path(), &public).unwrap(), None);
        let file = HeadFile::new(dir.path());
        file.record(&signed(&key, 7), false);
        file.record(&signed(&key, 5), false);
        assert_eq!(read_head_file(dir.path(), &public).unwrap().unwrap().seq, 7);
        // Another writer of the same directory cannot move it back either.
        HeadFile::new(dir.path()).record(&signed(&key, 6), false);
        assert_eq!(read_head_file(dir.path(), &public).unwrap().unwrap().seq, 7);

        let other = SigningKey::from_seed(&Key256::from_bytes([6; 32])).unwrap();
        assert!(read_head_file(dir.path(), &other.public_key()).is_err());
        fs::write(dir.path().join(AUDIT_HEAD_FILE), "not json").unwrap();
        assert!(read_head_file(dir.path(), &public).is_err());
    }
}
