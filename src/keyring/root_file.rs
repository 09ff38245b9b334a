//! `root.json` in the keys directory, and the same record in the store
//! (`kr/root`): how the root key is sealed.
//!
//! Holds the Argon2id parameters, salt and the root key encrypted under the
//! passphrase-derived key, or, for Shamir, the threshold and a digest of each
//! share — never a share, never the root key in the clear. Written with mode
//! 0600; a file readable by group or others is refused at start.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::KeyringError;
use crate::crypto::Argon2Params;

pub(crate) const ROOT_FILE: &str = "root.json";
pub(crate) const AUDIT_PUBLIC_KEY_FILE: &str = "audit.pub";
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RootFile {
    pub format: u32,
    pub vault_id: String,
    pub created_at: String,
    pub seal: SealDescription,
    /// HMAC of the vault id under a key derived from the root key: tells a
    /// correctly recovered root key from a wrong one.
    pub root_check: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum SealDescription {
    Passphrase {
        argon2id: Argon2Params,
        salt: String,
        /// Envelope (hex) of the root key under the passphrase-derived key.
        sealed_root: String,
    },
    Shares {
        threshold: u8,
        count: u8,
        /// Share index (decimal) → SHA-256 digest of that share. String
        /// keys: serde cannot read integer keys inside a tagged enum.
        share_digests: BTreeMap<String, String>,
    },
}

impl RootFile {
    pub fn new(
        vault_id: String,
        created_at: String,
        seal: SealDescription,
        root_check: String,
    ) -> Self {
        Self {
            format: FORMAT,
            vault_id,
            created_at,
            seal,
            root_check,
        }
    }

    pub fn path(keys_dir: &Path) -> PathBuf {
        keys_dir.join(ROOT_FILE)
    }

    /// Loads and checks the file: it must exist, be of a known format and be
    /// readable by its owner only.
    pub fn load(keys_dir: &Path) -> Result<Self, KeyringError> {
        let path = Self::path(keys_dir);
        check_private(&path)?;
        let text = fs::read_to_string(&path).map_err(|e| KeyringError::io(&path, &e))?;
        let file: Self = serde_json::from_str(&text).map_err(|e| {
            // The file holds no secret, so the parser's message may be logged.
            tracing::error!(error = %e, "cannot parse root.json");
            KeyringError::Config("keys/root.json is not a valid root key file")
        })?;
        if file.format != FORMAT {
            return Err(KeyringError::Config(
                "keys/root.json has an unknown format version",
            ));
        }
        Ok(file)
    }

    /// Writes the file with mode 0600, refusing to replace an existing one.
    pub fn create(&self, keys_dir: &Path) -> Result<(), KeyringError> {
        write_new_file(&Self::path(keys_dir), self.to_json()?.as_bytes(), 0o600)
    }

    /// The file's text.
    pub fn to_json(&self) -> Result<String, KeyringError> {
        serde_json::to_string_pretty(self)
            .map_err(|_| KeyringError::Config("root key file could not be encoded"))
    }

    /// The record as the store keeps it (`kr/root`): the file's text.
    pub fn encode(&self) -> Result<Vec<u8>, KeyringError> {
        self.to_json().map(String::into_bytes)
    }

    /// The store's record read back: of a known format, or refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, KeyringError> {
        let record: Self = serde_json::from_slice(bytes).map_err(|_| {
            KeyringError::Config("the database's root record (kr/root) is not valid")
        })?;
        if record.format != FORMAT {
            return Err(KeyringError::Config(
                "the database's root record (kr/root) has an unknown format version",
            ));
        }
        Ok(record)
    }

    /// Whether `other` says exactly what this record says (whatever the
    /// whitespace of either's text).
    pub fn same_as(&self, other: &Self) -> Result<bool, KeyringError> {
        let value = |r: &Self| {
            serde_json::to_value(r)
                .map_err(|_| KeyringError::Config("root key file could not be encoded"))
        };
        Ok(value(self)? == value(other)?)
    }
}

/// Creates `path` with `mode`, failing if it exists, and syncs it.
pub(crate) fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyringError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| KeyringError::io(path, &e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| KeyringError::io(path, &e))
}

/// Refuses a key file that group or others may read or write.
pub fn check_private(path: &Path) -> Result<(), KeyringError> {
    let meta = fs::metadata(path).map_err(|e| KeyringError::io(path, &e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(KeyringError::InsecureKeyFile(path.display().to_string()));
    }
    Ok(())
}
