//! Key-encryption keys: one versioned family per purpose, wrapped by the
//! keyring key and stored in the store under `kr/kek/<purpose>/<version>`.
//!
//! Each version counts the DEKs it has wrapped. The count is persisted in
//! reserved blocks before the encryptions happen, so a crash can only make
//! the stored count higher than the truth, never lower. A block is reserved
//! with a precondition on the stored count it was computed from, so writers
//! sharing the store (several keyrings, later several nodes) never take the
//! same block. A version replaced because it is due (usage limit,
//! cryptoperiod) is committed through a [`RotationRecorder`] (the audit log)
//! with its audit entry.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::KeyringError;
use super::epoch::EpochKeys;
use crate::clock::rfc3339;
use crate::crypto::{Aad, Envelope, Key256};
use crate::store::{Store, StoreError, Transaction};

/// How many encryptions are reserved (and persisted) at a time.
const RESERVATION_BLOCK: u64 = 1024;
/// How often a reservation or rotation is tried again when another writer
/// changed the stored KEK in between.
const ATTEMPTS: usize = 64;
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
    /// The erasure epoch whose secret wraps it (`epoch.json`); absent:
    /// the keyring key alone (before epochs began).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    epoch: Option<u32>,
}

/// Why a KEK version is replaced without anyone asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationTrigger {
    /// The newest version has done `limit` encryptions.
    UsageLimit { encryptions: u64, limit: u64 },
    /// The newest version is older than the cryptoperiod.
    Cryptoperiod {
        created_at: OffsetDateTime,
        cryptoperiod: time::Duration,
    },
    /// The purpose has no version at all.
    NoVersion,
}

impl RotationTrigger {
    /// The audit entry's reason for making `version`.
    pub fn reason(&self, version: u32) -> String {
        match self {
            Self::UsageLimit { encryptions, limit } => format!(
                "automatic: usage limit reached ({encryptions} of {limit} encryptions); version {version} made"
            ),
            Self::Cryptoperiod {
                created_at,
                cryptoperiod,
            } => format!(
                "automatic: cryptoperiod of {} days elapsed (previous version made {}); version {version} made",
                cryptoperiod.whole_days(),
                rfc3339(*created_at)
            ),
            Self::NoVersion => format!("automatic: no version existed; version {version} made"),
        }
    }
}

/// Commits an automatic KEK rotation together with its audit entry, in one
/// transaction: both are written or neither is.
pub trait RotationRecorder: Send + Sync {
    /// Writes `change` (the new version `version` of `purpose`) with an
    /// entry naming `trigger`, durably.
    fn commit_rotation(
        &self,
        purpose: Purpose,
        version: u32,
        trigger: &RotationTrigger,
        change: Transaction,
    ) -> Result<(), StoreError>;

    /// False once the log behind it is gone.
    fn is_alive(&self) -> bool;
}

/// When the newest version must be replaced.
pub(crate) struct RotationDue {
    pub(crate) usage_limit: u64,
    pub(crate) cryptoperiod: time::Duration,
    pub(crate) now: OffsetDateTime,
}

/// One unwrapped KEK version. Immutable; its counters live in the cache.
pub(crate) struct Kek {
    pub(crate) key: Key256,
    pub(crate) version: u32,
    created_at: OffsetDateTime,
    wrapped: String,
    epoch: Option<u32>,
}

struct Entry {
    kek: Arc<Kek>,
    /// Position in the version's counter of the next encryption here
    /// (after a restart: assumed to be the stored count).
    used: u64,
    /// End of the block this writer reserved; `used < reserved` means
    /// encryptions are left in it.
    reserved: u64,
}

impl Entry {
    fn stored(&self, reserved: u64) -> StoredKek {
        StoredKek {
            version: self.kek.version,
            created_at: rfc3339(self.kek.created_at),
            wrapped: self.kek.wrapped.clone(),
            reserved,
            epoch: self.kek.epoch,
        }
    }
}

/// Every KEK version of every purpose, unwrapped. Lives only while unsealed.
#[derive(Default)]
pub(crate) struct KekCache {
    families: BTreeMap<Purpose, BTreeMap<u32, Entry>>,
    /// The erasure epochs' secrets (none before epochs began).
    pub(crate) epochs: EpochKeys,
}

/// Wraps a KEK under the current epoch's secret, or the keyring key
/// before epochs began; its envelope and the epoch to store.
fn wrap_kek(
    keyring_key: &Key256,
    epochs: &EpochKeys,
    purpose: Purpose,
    version: u32,
    kek: &Key256,
) -> Result<(String, Option<u32>), KeyringError> {
    let current = epochs
        .current()
        .and_then(|epoch| epochs.get(epoch).map(|secret| (epoch, secret)));
    let (key, key_id, key_version) = match current {
        Some((epoch, secret)) => (secret, "epoch", epoch),
        None => (keyring_key, "keyring", 1),
    };
    let envelope = Envelope::seal(
        key,
        key_id,
        key_version,
        &kek_aad(purpose, version),
        kek.expose_secret(),
    )?;
    Ok((
        hex::encode(envelope.encode()),
        current.map(|(epoch, _)| epoch),
    ))
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

/// Reserves the next block of encryptions of a stored KEK version: the
/// stored count moves from what was read to one block more, on the
/// condition that it still holds what was read. The block is this
/// writer's alone.
fn reserve_block(
    store: &dyn Store,
    purpose: Purpose,
    version: u32,
) -> Result<std::ops::Range<u64>, KeyringError> {
    let key = kek_key(purpose, version);
    for _ in 0..ATTEMPTS {
        let current = store.get(&key)?.ok_or(KeyringError::Integrity)?;
        let mut stored: StoredKek =
            serde_json::from_slice(&current).map_err(|_| KeyringError::Integrity)?;
        if stored.version != version {
            return Err(KeyringError::Integrity);
        }
        let start = stored.reserved;
        let end = start
            .checked_add(RESERVATION_BLOCK)
            .ok_or(KeyringError::Integrity)?;
        stored.reserved = end;
        match store.commit(
            Transaction::new()
                .expect(key.clone(), Some(current))
                .put(key.clone(), encode(&stored)?),
        ) {
            Ok(()) => return Ok(start..end),
            Err(StoreError::Conflict) => std::thread::yield_now(),
            Err(e) => return Err(e.into()),
        }
    }
    Err(KeyringError::Store(StoreError::Conflict))
}

impl KekCache {
    /// Unwraps every stored KEK version.
    pub(crate) fn load(
        store: &dyn Store,
        keyring_key: &Key256,
        epochs: EpochKeys,
    ) -> Result<Self, KeyringError> {
        let mut cache = Self {
            epochs,
            ..Self::default()
        };
        for purpose in Purpose::ALL {
            let mut prefix = KEK_PREFIX.to_vec();
            prefix.extend_from_slice(purpose.as_str().as_bytes());
            prefix.push(b'/');
            cache.load_family(store, keyring_key, purpose)?;
        }
        Ok(cache)
    }

    /// Reads the versions of `purpose` this cache does not have yet (made
    /// by another writer: another node sharing the store).
    pub(crate) fn load_family(
        &mut self,
        store: &dyn Store,
        keyring_key: &Key256,
        purpose: Purpose,
    ) -> Result<(), KeyringError> {
        let mut prefix = KEK_PREFIX.to_vec();
        prefix.extend_from_slice(purpose.as_str().as_bytes());
        prefix.push(b'/');
        let listed = store
            .scan_prefix(&prefix)?
            .into_iter()
            .map(|(_, value)| {
                serde_json::from_slice::<StoredKek>(&value).map_err(|_| KeyringError::Integrity)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A version destroyed (by another node) leaves this cache too.
        if let Some(family) = self.families.get_mut(&purpose) {
            family.retain(|version, _| listed.iter().any(|s| s.version == *version));
        }
        for stored in listed {
            let family = self.families.entry(purpose).or_default();
            if family.contains_key(&stored.version) {
                continue;
            }
            let bytes = hex::decode(&stored.wrapped).map_err(|_| KeyringError::Integrity)?;
            let envelope = Envelope::decode(&bytes)?;
            let wrapping_key = match stored.epoch {
                None if envelope.key_id() == "keyring" => keyring_key,
                Some(epoch) if envelope.key_id() == "epoch" && envelope.key_version() == epoch => {
                    self.epochs.get(epoch).ok_or(KeyringError::Config(
                        "a KEK version is wrapped under an erasure epoch whose secret the keys \
                         directory's epoch.json does not hold: a wrong or lost epoch.json, or a \
                         store from before an epoch roll, whose data is erased for good \
                         (docs/lifecycle.md); unseal refused",
                    ))?
                }
                _ => return Err(KeyringError::Integrity),
            };
            let key_bytes = envelope.open(wrapping_key, &kek_aad(purpose, stored.version))?;
            let created_at =
                crate::clock::parse_rfc3339(&stored.created_at).ok_or(KeyringError::Integrity)?;
            let kek = Kek {
                key: Key256::try_from_slice(&key_bytes)?,
                version: stored.version,
                created_at,
                wrapped: stored.wrapped,
                epoch: stored.epoch,
            };
            let entry = Entry {
                kek: Arc::new(kek),
                // Assume every reserved encryption happened.
                used: stored.reserved,
                reserved: stored.reserved,
            };
            family.insert(stored.version, entry);
        }
        Ok(())
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
        self.rotate_committing(store, keyring_key, purpose, now, &|_, tx| store.commit(tx))
    }

    /// Like `rotate`, with the store write of version `v` done by
    /// `commit(v, tx)`, so a caller can add its own writes (an audit entry)
    /// to the same transaction. When another writer made that version
    /// first, the cache reads it from the store and the conflict is
    /// returned: nothing was written.
    pub(crate) fn rotate_committing(
        &mut self,
        store: &dyn Store,
        keyring_key: &Key256,
        purpose: Purpose,
        now: OffsetDateTime,
        commit: &dyn Fn(u32, Transaction) -> Result<(), StoreError>,
    ) -> Result<u32, KeyringError> {
        let version = self
            .families
            .get(&purpose)
            .and_then(|f| f.keys().next_back())
            .map_or(1, |v| v.saturating_add(1));
        let kek_key_bytes = Key256::random()?;
        let (wrapped, epoch) =
            wrap_kek(keyring_key, &self.epochs, purpose, version, &kek_key_bytes)?;
        let entry = Entry {
            kek: Arc::new(Kek {
                key: kek_key_bytes,
                version,
                created_at: now,
                wrapped,
                epoch,
            }),
            used: 0,
            reserved: 0,
        };
        let key = kek_key(purpose, version);
        let committed = commit(
            version,
            Transaction::new()
                .expect(key.clone(), None)
                .put(key, encode(&entry.stored(0))?),
        );
        if let Err(StoreError::Conflict) = committed {
            self.load_family(store, keyring_key, purpose)?;
        }
        committed?;
        self.families
            .entry(purpose)
            .or_default()
            .insert(version, entry);
        Ok(version)
    }

    /// Destroys version `version` of `purpose`: its wrapped key is deleted
    /// from the store by `commit` (with a precondition that it is still as
    /// read, so the caller's audit entry shares the transaction) and the
    /// unwrapped key leaves this cache. The newest version, which new
    /// writes use, is never destroyed. Whether any DEK still uses the
    /// version is the caller's question: this only destroys.
    pub(crate) fn destroy_committing(
        &mut self,
        store: &dyn Store,
        keyring_key: &Key256,
        purpose: Purpose,
        version: u32,
        commit: &dyn Fn(Transaction) -> Result<(), StoreError>,
    ) -> Result<(), KeyringError> {
        self.load_family(store, keyring_key, purpose)?;
        if self.version(purpose, version).is_none() {
            return Err(KeyringError::NoSuchVersion);
        }
        if self.newest(purpose) == Some(version) {
            return Err(KeyringError::NewestVersion);
        }
        let key = kek_key(purpose, version);
        let stored = store.get(&key)?.ok_or(KeyringError::NoSuchVersion)?;
        commit(
            Transaction::new()
                .expect(key.clone(), Some(stored))
                .delete(key),
        )?;
        if let Some(family) = self.families.get_mut(&purpose) {
            // Dropping the entry drops the last `Arc` this cache holds of
            // the key; `Key256` zeroizes on drop.
            family.remove(&version);
        }
        Ok(())
    }

    /// Wraps every KEK version again under the current epoch's secret,
    /// committing the change with `commit` (each stored version with a
    /// precondition that it is still as read, so a concurrent block
    /// reservation is not lost: the caller tries again). Versions already
    /// under it are left as they are.
    pub(crate) fn rewrap_under_current_epoch(
        &mut self,
        store: &dyn Store,
        keyring_key: &Key256,
        commit: &dyn Fn(Transaction) -> Result<(), StoreError>,
    ) -> Result<usize, KeyringError> {
        let current = self.epochs.current().ok_or(KeyringError::Integrity)?;
        let mut tx = Transaction::new();
        let mut moved = Vec::new();
        for (purpose, family) in &self.families {
            for (version, entry) in family {
                if entry.kek.epoch == Some(current) {
                    continue;
                }
                let key = kek_key(*purpose, *version);
                let stored_bytes = store.get(&key)?.ok_or(KeyringError::Integrity)?;
                let mut stored: StoredKek =
                    serde_json::from_slice(&stored_bytes).map_err(|_| KeyringError::Integrity)?;
                let (wrapped, epoch) = wrap_kek(
                    keyring_key,
                    &self.epochs,
                    *purpose,
                    *version,
                    &entry.kek.key,
                )?;
                stored.wrapped.clone_from(&wrapped);
                stored.epoch = epoch;
                tx = tx
                    .expect(key.clone(), Some(stored_bytes))
                    .put(key, encode(&stored)?);
                moved.push((*purpose, *version, wrapped, epoch));
            }
        }
        commit(tx)?;
        for (purpose, version, wrapped, epoch) in &moved {
            if let Some(entry) = self
                .families
                .get_mut(purpose)
                .and_then(|f| f.get_mut(version))
            {
                entry.kek = Arc::new(Kek {
                    key: entry.kek.key.duplicate(),
                    version: *version,
                    created_at: entry.kek.created_at,
                    wrapped: wrapped.clone(),
                    epoch: *epoch,
                });
            }
        }
        Ok(moved.len())
    }

    /// The newest version of `purpose`, which new writes use.
    pub(crate) fn newest(&self, purpose: Purpose) -> Option<u32> {
        self.families.get(&purpose)?.keys().next_back().copied()
    }

    /// Version `version` of `purpose`, reading the store's versions this
    /// cache lacks when it is not there (made by another node).
    pub(crate) fn version_or_load(
        &mut self,
        store: &dyn Store,
        keyring_key: &Key256,
        purpose: Purpose,
        version: u32,
    ) -> Result<Option<Arc<Kek>>, KeyringError> {
        if let Some(kek) = self.version(purpose, version) {
            return Ok(Some(kek));
        }
        self.load_family(store, keyring_key, purpose)?;
        Ok(self.version(purpose, version))
    }

    pub(crate) fn version(&self, purpose: Purpose, version: u32) -> Option<Arc<Kek>> {
        self.families
            .get(&purpose)?
            .get(&version)
            .map(|e| Arc::clone(&e.kek))
    }

    /// Takes one encryption from the newest version of `purpose`, replacing
    /// the version first (through `recorder`, audited) when it is due.
    pub(crate) fn take_for_encryption(
        &mut self,
        store: &dyn Store,
        keyring_key: &Key256,
        purpose: Purpose,
        due: &RotationDue,
        recorder: Option<&dyn RotationRecorder>,
    ) -> Result<Arc<Kek>, KeyringError> {
        for _ in 0..ATTEMPTS {
            // Another writer (another node) may have made a newer version:
            // new writes use it from the next encryption on. One read of a
            // key that is absent until then is what keeps the cache honest.
            if let Some(newest) = self.newest(purpose)
                && store
                    .get(&kek_key(purpose, newest.saturating_add(1)))?
                    .is_some()
            {
                self.load_family(store, keyring_key, purpose)?;
            }
            let Some(trigger) = self.rotation_due(purpose, due) else {
                return self.take_one(store, purpose);
            };
            let recorder = recorder.ok_or(KeyringError::Config(
                "a KEK is due for rotation, and automatic rotation needs the audit log",
            ))?;
            match self.rotate_committing(store, keyring_key, purpose, due.now, &|version, tx| {
                recorder.commit_rotation(purpose, version, &trigger, tx)
            }) {
                // Another writer rotated first: its version is loaded now.
                Err(KeyringError::Store(StoreError::Conflict)) => continue,
                other => {
                    other?;
                }
            }
        }
        Err(KeyringError::Store(StoreError::Conflict))
    }

    /// Why the newest version of `purpose` must be replaced, if it must.
    fn rotation_due(&self, purpose: Purpose, due: &RotationDue) -> Option<RotationTrigger> {
        let Some(entry) = self
            .families
            .get(&purpose)
            .and_then(|f| f.values().next_back())
        else {
            return Some(RotationTrigger::NoVersion);
        };
        if entry.used >= due.usage_limit {
            Some(RotationTrigger::UsageLimit {
                encryptions: entry.used,
                limit: due.usage_limit,
            })
        } else if due.now - entry.kek.created_at >= due.cryptoperiod {
            Some(RotationTrigger::Cryptoperiod {
                created_at: entry.kek.created_at,
                cryptoperiod: due.cryptoperiod,
            })
        } else {
            None
        }
    }

    /// One encryption from the newest version, reserving a block first when
    /// this writer's block is used up.
    fn take_one(&mut self, store: &dyn Store, purpose: Purpose) -> Result<Arc<Kek>, KeyringError> {
        let entry = self
            .families
            .get_mut(&purpose)
            .and_then(|f| f.values_mut().next_back())
            .ok_or(KeyringError::Integrity)?;
        if entry.used >= entry.reserved {
            let block = reserve_block(store, purpose, entry.kek.version)?;
            entry.used = block.start;
            entry.reserved = block.end;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::store::SledStore;

    fn stored_count(store: &dyn Store) -> u64 {
        let stored: StoredKek =
            serde_json::from_slice(&store.get(&kek_key(Purpose::Card, 1)).unwrap().unwrap())
                .unwrap();
        stored.reserved
    }

    fn store_with_a_card_kek() -> (tempfile::TempDir, SledStore, Key256) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let key = Key256::from_bytes([7; 32]);
        KekCache::default()
            .rotate(&store, &key, Purpose::Card, OffsetDateTime::UNIX_EPOCH)
            .unwrap();
        (dir, store, key)
    }

    /// Many threads reserve counter blocks of one KEK version at once, as
    /// several writers sharing a store would: no two get overlapping
    /// ranges, and the stored counter is the sum of every block taken.
    #[test]
    fn writers_reserving_at_once_never_share_a_counter_range() {
        const THREADS: usize = 16;
        const EACH: usize = 8;
        let (_dir, store, _) = store_with_a_card_kek();
        let barrier = std::sync::Barrier::new(THREADS);
        let mut ranges: Vec<std::ops::Range<u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        (0..EACH)
                            .map(|_| reserve_block(&store, Purpose::Card, 1).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        ranges.sort_by_key(|r| r.start);
        assert_eq!(ranges.len(), THREADS * EACH);
        for pair in ranges.windows(2) {
            assert!(pair[0].end <= pair[1].start, "{pair:?} overlap");
        }
        let total = (THREADS * EACH) as u64 * RESERVATION_BLOCK;
        assert_eq!(ranges.last().unwrap().end, total);
        assert_eq!(stored_count(&store), total);
    }

    /// The same through the caches of several writers encrypting at once:
    /// each writer's first encryption reserves its own block.
    #[test]
    fn writers_with_their_own_caches_take_disjoint_blocks() {
        const WRITERS: usize = 8;
        let (_dir, store, key) = store_with_a_card_kek();
        let due = RotationDue {
            usage_limit: u64::MAX,
            cryptoperiod: time::Duration::MAX,
            now: OffsetDateTime::UNIX_EPOCH,
        };
        let barrier = std::sync::Barrier::new(WRITERS);
        let mut positions: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..WRITERS)
                .map(|_| {
                    s.spawn(|| {
                        let mut cache = KekCache::load(&store, &key, EpochKeys::default()).unwrap();
                        barrier.wait();
                        cache
                            .take_for_encryption(&store, &key, Purpose::Card, &due, None)
                            .unwrap();
                        cache.families[&Purpose::Card][&1].used
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        positions.sort_unstable();
        positions.dedup();
        assert_eq!(positions.len(), WRITERS, "two writers share a block");
        assert_eq!(stored_count(&store), WRITERS as u64 * RESERVATION_BLOCK);
    }

    /// A due version is not replaced without somewhere to audit it.
    #[test]
    fn a_due_rotation_without_the_audit_log_is_refused() {
        let (_dir, store, key) = store_with_a_card_kek();
        let mut cache = KekCache::load(&store, &key, EpochKeys::default()).unwrap();
        let due = RotationDue {
            usage_limit: 0,
            cryptoperiod: time::Duration::MAX,
            now: OffsetDateTime::UNIX_EPOCH,
        };
        assert!(matches!(
            cache.take_for_encryption(&store, &key, Purpose::Card, &due, None),
            Err(KeyringError::Config(_))
        ));
        assert_eq!(cache.newest(Purpose::Card), Some(1));
    }
}
