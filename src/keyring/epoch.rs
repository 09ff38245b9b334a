//! Erasure epochs (docs/lifecycle.md, "Erasure that really erases").
//!
//! Once epochs have begun, every KEK version is wrapped under the secret
//! of the current epoch instead of the keyring key alone. The epoch
//! secrets live in `epoch.json` in the keys directory, each sealed under
//! the keyring key (so the file alone opens nothing) and never in the
//! store, so neither a copy of the data directory nor a backup holds
//! them. Rolling to a new epoch wraps the surviving KEK versions under a
//! new secret and then deletes the old one from the file: from then on
//! no copy of the store made before the roll opens, because every KEK
//! version in it is wrapped under a secret that no longer exists.
//!
//! The file is replaced atomically (a new file, synced, renamed over it,
//! the directory synced). While a roll is under way it holds both the old
//! and the new secret; a crash then leaves both, and each KEK version in
//! the store names the epoch it is wrapped under.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::KeyringError;
use crate::crypto::{Aad, Envelope, Key256};

/// The file's name in the keys directory.
pub const EPOCH_FILE: &str = "epoch.json";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EpochFile {
    vault_id: String,
    epochs: Vec<StoredEpoch>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredEpoch {
    epoch: u32,
    /// Envelope (hex) of the secret under the keyring key.
    sealed: String,
}

fn aad(vault_id: &str, epoch: u32) -> Aad {
    Aad::new("strongroom/v1/epoch")
        .part(vault_id.as_bytes())
        .number(u64::from(epoch))
}

/// The epoch secrets this vault still has, unwrapped.
#[derive(Default)]
pub(crate) struct EpochKeys {
    keys: BTreeMap<u32, Key256>,
}

impl EpochKeys {
    pub(crate) fn path(keys_dir: &Path) -> PathBuf {
        keys_dir.join(EPOCH_FILE)
    }

    /// Reads and unwraps `epoch.json`; none (epochs not begun) when absent.
    pub(crate) fn load(
        keys_dir: &Path,
        vault_id: &str,
        keyring_key: &Key256,
    ) -> Result<Self, KeyringError> {
        let path = Self::path(keys_dir);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(KeyringError::io(&path, &e)),
        };
        super::check_private(&path)?;
        let file: EpochFile =
            serde_json::from_slice(&bytes).map_err(|_| KeyringError::Integrity)?;
        if file.vault_id != vault_id {
            return Err(KeyringError::Config(
                "epoch.json in the keys directory belongs to another vault",
            ));
        }
        let mut keys = BTreeMap::new();
        for stored in file.epochs {
            let envelope = Envelope::decode(
                &hex::decode(&stored.sealed).map_err(|_| KeyringError::Integrity)?,
            )?;
            if envelope.key_id() != "keyring" {
                return Err(KeyringError::Integrity);
            }
            let secret = envelope.open(keyring_key, &aad(vault_id, stored.epoch))?;
            keys.insert(stored.epoch, Key256::try_from_slice(&secret)?);
        }
        Ok(Self { keys })
    }

    /// The newest epoch, under which new KEK versions are wrapped.
    pub(crate) fn current(&self) -> Option<u32> {
        self.keys.keys().next_back().copied()
    }

    pub(crate) fn get(&self, epoch: u32) -> Option<&Key256> {
        self.keys.get(&epoch)
    }

    /// The epochs held, oldest first.
    pub(crate) fn epochs(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// Adds a fresh secret for the epoch after the current one: the file
    /// is written with it first, and only once that is durable does the
    /// secret wrap anything (the older ones stay until
    /// [`EpochKeys::keep_only`]). A failed write changes nothing.
    pub(crate) fn begin_next(
        &mut self,
        keys_dir: &Path,
        vault_id: &str,
        keyring_key: &Key256,
    ) -> Result<u32, KeyringError> {
        let next = self.current().map_or(1, |c| c.saturating_add(1));
        let secret = Key256::random()?;
        let held = self.keys.iter().map(|(e, key)| (*e, key));
        write(
            held.chain([(next, &secret)]),
            keys_dir,
            vault_id,
            keyring_key,
        )?;
        self.keys.insert(next, secret);
        Ok(next)
    }

    /// Forgets every secret but `epoch`'s, in the file and then in memory
    /// (dropping them zeroizes them).
    pub(crate) fn keep_only(
        &mut self,
        epoch: u32,
        keys_dir: &Path,
        vault_id: &str,
        keyring_key: &Key256,
    ) -> Result<(), KeyringError> {
        let kept = self.keys.iter().filter(|(e, _)| **e == epoch);
        write(
            kept.map(|(e, key)| (*e, key)),
            keys_dir,
            vault_id,
            keyring_key,
        )?;
        self.keys.retain(|e, _| *e == epoch);
        Ok(())
    }
}

/// Replaces the file atomically: a new 0600 file, synced, renamed over
/// the old one, the directory synced.
fn write<'a>(
    secrets: impl Iterator<Item = (u32, &'a Key256)>,
    keys_dir: &Path,
    vault_id: &str,
    keyring_key: &Key256,
) -> Result<(), KeyringError> {
    let mut epochs = Vec::new();
    for (epoch, key) in secrets {
        let envelope = Envelope::seal(
            keyring_key,
            "keyring",
            1,
            &aad(vault_id, epoch),
            key.expose_secret(),
        )?;
        epochs.push(StoredEpoch {
            epoch,
            sealed: hex::encode(envelope.encode()),
        });
    }
    let bytes = serde_json::to_vec_pretty(&EpochFile {
        vault_id: vault_id.to_owned(),
        epochs,
    })
    .map_err(|_| KeyringError::Integrity)?;
    let path = EpochKeys::path(keys_dir);
    let partial = keys_dir.join(format!(".{EPOCH_FILE}.partial"));
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| KeyringError::io(&partial, &e))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| KeyringError::io(&partial, &e))?;
    std::fs::rename(&partial, &path).map_err(|e| KeyringError::io(&path, &e))?;
    std::fs::File::open(keys_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| KeyringError::io(keys_dir, &e))
}
