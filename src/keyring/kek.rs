//! Key-encryption keys: one versioned family per purpose, wrapped by the
//! keyring key and stored in the store under `kr/kek/<purpose>/<version>`.
//!
//! Each version counts the DEKs it has wrapped. The count is persisted in
//! reserved blocks before the encryptions happen, so a crash can only make
//! the stored count higher than the truth, never lower.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::KeyringError;
use crate::clock::rfc3339;
use crate::crypto::{Aad, Envelope, Key256};
use crate::store::{Store, StoreError, Transaction};

/// How many encryptions are reserved (and persisted) at a time.
const RESERVATION_BLOCK: u64 = 1024;
pub(crate) const KEK_PREFIX: &[u8] = b"kr/kek/";

/// What a KEK family protects. Each purpose has its own keys, so rotating or
/// losing one never touches the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Kyc,
    Card,
    Bank,
    Generic,
}

impl Purpose {
    pub const ALL: [Purpose; 4] = [Purpose::Kyc, Purpose::Card, Purpose::Bank, Purpose::Generic];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Kyc => "kyc",
            Purpose::Card => "card",
            Purpose::Bank => "bank",
            Purpose::Generic => "generic",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == text)
    }

    /// The key id written into envelopes wrapped by this family.
    pub(crate) fn key_id(self) -> String {
        format!("kek/{}", self.as_str())
    }
}

/// Public facts about one KEK version; never key bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct KekMetadata {
    #[schema(value_type = String)]
    pub purpose: Purpose,
    pub version: u32,
    pub created_at: String,
    /// DEK wraps counted against this version (an upper bound after a crash).
    pub encryptions: u64,
    /// Whether new writes use this version.
    pub active: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKek {
    version: u32,
    created_at: String,
    /// Envelope (hex) of the KEK under the keyring key.
    wrapped: String,
    /// Encryptions reserved so far: an upper bound of those performed.
    reserved: u64,
}

/// One unwrapped KEK version. Immutable; its counters live in the cache.
pub(crate) struct Kek {
    pub(crate) key: Key256,
    pub(crate) version: u32,
    created_at: OffsetDateTime,
    wrapped: String,
}

struct Entry {
    kek: Arc<Kek>,
    /// Encryptions performed (after a restart: assumed to be `reserved`).
    used: u64,
    /// Encryptions reserved in the store.
    reserved: u64,
}

impl Entry {
    fn stored(&self, reserved: u64) -> StoredKek {
        StoredKek {
            version: self.kek.version,
            created_at: rfc3339(self.kek.created_at),
            wrapped: self.kek.wrapped.clone(),
            reserved,
        }
    }
}

/// Every KEK version of every purpose, unwrapped. Lives only while unsealed.
#[derive(Default)]
pub(crate) struct KekCache {
    families: BTreeMap<Purpose, BTreeMap<u32, Entry>>,
}

fn kek_key(purpose: Purpose, version: u32) -> Vec<u8> {
    let mut key = KEK_PREFIX.to_vec();
    key.extend_from_slice(purpose.as_str().as_bytes());
    key.push(b'/');
    key.extend_from_slice(&version.to_be_bytes());
    key
}

fn kek_aad(purpose: Purpose, version: u32) -> Aad {
    Aad::new("strongroom/v1/kek")
        .part(purpose.as_str().as_bytes())
        .number(u64::from(version))
}

fn encode(stored: &StoredKek) -> Result<Vec<u8>, KeyringError> {
    serde_json::to_vec(stored).map_err(|_| KeyringError::Integrity)
}

impl KekCache {
    /// Unwraps every stored KEK version.
    pub(crate) fn load(store: &dyn Store, keyring_key: &Key256) -> Result<Self, KeyringError> {
        let mut cache = Self::default();
        for purpose in Purpose::ALL {
            let mut prefix = KEK_PREFIX.to_vec();
            prefix.extend_from_slice(purpose.as_str().as_bytes());
            prefix.push(b'/');
            for (_, value) in store.scan_prefix(&prefix)? {
                let stored: StoredKek =
                    serde_json::from_slice(&value).map_err(|_| KeyringError::Integrity)?;
                let bytes = hex::decode(&stored.wrapped).map_err(|_| KeyringError::Integrity)?;
                let envelope = Envelope::decode(&bytes)?;
                if envelope.key_id() != "keyring" {
                    return Err(KeyringError::Integrity);
                }
                let key_bytes = envelope.open(keyring_key, &kek_aad(purpose, stored.version))?;
                let created_at = OffsetDateTime::parse(
                    &stored.created_at,
                    &time::format_description::well_known::Rfc3339,
                )
                .map_err(|_| KeyringError::Integrity)?;
                let kek = Kek {
                    key: Key256::try_from_slice(&key_bytes)?,
                    version: stored.version,
                    created_at,
                    wrapped: stored.wrapped,
                };
                let entry = Entry {
                    kek: Arc::new(kek),
                    // Assume every reserved encryption happened.
                    used: stored.reserved,
                    reserved: stored.reserved,
                };
                cache
                    .families
                    .entry(purpose)
                    .or_default()
                    .insert(stored.version, entry);
            }
        }
        Ok(cache)
    }

    /// Creates the next version of `purpose` and stores it; the store refuses
    /// a version that already exists, so two writers cannot both create it.
    pub(crate) fn rotate(
        &mut self,
        store: &dyn Store,
        keyring_key: &Key256,
        purpose: Purpose,
        now: OffsetDateTime,
    ) -> Result<u32, KeyringError> {
        self.rotate_committing(keyring_key, purpose, now, &|tx| store.commit(tx))
    }

    /// Like `rotate`, with the store write done by `commit`, so a caller can
    /// add its own writes (an audit entry) to the same transaction.
    pub(crate) fn rotate_committing(
        &mut self,
        keyring_key: &Key256,
        purpose: Purpose,
        now: OffsetDateTime,
        commit: &dyn Fn(Transaction) -> Result<(), StoreError>,
    ) -> Result<u32, KeyringError> {
        let version = self
            .families
            .get(&purpose)
            .and_then(|f| f.keys().next_back())
            .map_or(1, |v| v.saturating_add(1));
        let kek_key_bytes = Key256::random()?;
        let wrapped = Envelope::seal(
            keyring_key,
            "keyring",
            1,
            &kek_aad(purpose, version),
            kek_key_bytes.expose_secret(),
        )?;
        let entry = Entry {
            kek: Arc::new(Kek {
                key: kek_key_bytes,
                version,
                created_at: now,
                wrapped: hex::encode(wrapped.encode()),
            }),
            used: 0,
            reserved: 0,
        };
        let key = kek_key(purpose, version);
        commit(
            Transaction::new()
                .expect(key.clone(), None)
                .put(key, encode(&entry.stored(0))?),
        )?;
        self.families
            .entry(purpose)
            .or_default()
            .insert(version, entry);
        Ok(version)
    }

    /// The newest version of `purpose`, which new writes use.
    pub(crate) fn newest(&self, purpose: Purpose) -> Option<u32> {
        self.families.get(&purpose)?.keys().next_back().copied()
    }

    pub(crate) fn version(&self, purpose: Purpose, version: u32) -> Option<Arc<Kek>> {
        self.families
            .get(&purpose)?
            .get(&version)
            .map(|e| Arc::clone(&e.kek))
    }

    /// Takes one encryption from the newest version of `purpose`, rotating
    /// first when it has reached `usage_limit` or its cryptoperiod.
    pub(crate) fn take_for_encryption(
        &mut self,
        store: &dyn Store,
        keyring_key: &Key256,
        purpose: Purpose,
        usage_limit: u64,
        cryptoperiod: time::Duration,
        now: OffsetDateTime,
    ) -> Result<Arc<Kek>, KeyringError> {
        let must_rotate = match self
            .families
            .get(&purpose)
            .and_then(|f| f.values().next_back())
        {
            None => true,
            Some(e) => e.used >= usage_limit || now - e.kek.created_at >= cryptoperiod,
        };
        if must_rotate {
            self.rotate(store, keyring_key, purpose, now)?;
        }
        let entry = self
            .families
            .get_mut(&purpose)
            .and_then(|f| f.values_mut().next_back())
            .ok_or(KeyringError::Integrity)?;
        if entry.used >= entry.reserved {
            let reserved = entry.used + RESERVATION_BLOCK;
            store.put(
                &kek_key(purpose, entry.kek.version),
                &encode(&entry.stored(reserved))?,
            )?;
            entry.reserved = reserved;
        }
        entry.used += 1;
        Ok(Arc::clone(&entry.kek))
    }

    pub(crate) fn metadata(&self) -> Vec<KekMetadata> {
        let mut out = Vec::new();
        for (purpose, family) in &self.families {
            let newest = family.keys().next_back().copied();
            for entry in family.values() {
                out.push(KekMetadata {
                    purpose: *purpose,
                    version: entry.kek.version,
                    created_at: rfc3339(entry.kek.created_at),
                    encryptions: entry.used,
                    active: Some(entry.kek.version) == newest,
                });
            }
        }
        out
    }
}
