//! The key hierarchy: root key, seal and unseal, subkeys, KEKs and DEKs.
//!
//! This module owns every key. It hands out operations (wrap a DEK, seal a
//! record) and, to the modules that need one, a derived subkey by reference;
//! it must never write a key in the clear to the store, the keys directory or
//! a log line. Sealed means it holds no key at all.

pub mod epoch;
mod kek;
mod record;
mod root_file;
pub mod shares;
mod state;

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, Weak};

use zeroize::Zeroizing;

pub use kek::{KekMetadata, Purpose, RotationRecorder, RotationTrigger};
pub use record::{RecordContext, SealedRecord};
pub use root_file::check_private;
pub(crate) use root_file::{AUDIT_PUBLIC_KEY_FILE, ROOT_FILE};
use root_file::{RootFile, SealDescription, write_new_file};
use shares::{ParsedShare, ShareError};
pub use state::{Either, STATE_FORMAT, StateKey};

use crate::clock::{Clock, rfc3339};
use crate::crypto::{
    Aad, Argon2Params, CryptoError, Envelope, HmacKey, KdfPolicy, Key256, PasswordPepper,
    SigningKey, constant_time_eq, derive_key, derive_key_from_passphrase, random_array,
};
use crate::store::{Store, StoreError, Transaction};

pub(crate) const VAULT_KEY: &[u8] = b"kr/vault";
/// The sealed root record (what `root.json` holds: the passphrase envelope
/// or the shares' digests, never the root key in the clear), in the store so
/// that every node sharing it agrees on how the vault is sealed.
pub(crate) const ROOT_KEY: &[u8] = b"kr/root";
/// Where KEK versions are stored (`kr/kek/<purpose>/<version>`).
pub const KEK_STORE_PREFIX: &[u8] = kek::KEK_PREFIX;

/// Errors of the keyring. None carries key material, a passphrase or a share.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("the vault is sealed")]
    Sealed,
    #[error("unseal failed: {0}")]
    UnsealFailed(&'static str),
    #[error("the vault is already initialised")]
    AlreadyInitialised,
    #[error("integrity check failed")]
    Integrity,
    #[error("no such KEK version")]
    NoSuchVersion,
    #[error("the newest KEK version cannot be destroyed: new writes use it")]
    NewestVersion,
    #[error("key file {0} is readable or writable by group or others; chmod 600 it")]
    InsecureKeyFile(String),
    #[error("{0}")]
    Config(&'static str),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cryptographic failure: {0}")]
    Crypto(CryptoError),
}

impl KeyringError {
    pub(crate) fn io(path: &Path, e: &std::io::Error) -> Self {
        Self::Io(format!("{}: {e}", path.display()))
    }
}

impl From<CryptoError> for KeyringError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::Integrity | CryptoError::Malformed(_) => Self::Integrity,
            other => Self::Crypto(other),
        }
    }
}

impl From<ShareError> for KeyringError {
    fn from(e: ShareError) -> Self {
        Self::UnsealFailed(match e {
            ShareError::Format => "not a Strongroom share",
            ShareError::Checksum => "share checksum does not match: mistyped or corrupted",
            ShareError::ForeignVault => "share belongs to another vault",
            ShareError::Unknown => "share is not one this vault issued",
            ShareError::InvalidSplit(why) | ShareError::InvalidCombine(why) => why,
        })
    }
}

/// Key-management settings, validated by the configuration.
#[derive(Debug, Clone, Copy)]
pub struct KeyringSettings {
    /// DEK wraps after which a KEK version is retired for new writes.
    pub kek_usage_limit: u64,
    /// Age after which a KEK version is retired for new writes.
    pub kek_cryptoperiod: time::Duration,
    /// Accepted Argon2id parameters for the passphrase.
    pub kdf_policy: KdfPolicy,
}

impl Default for KeyringSettings {
    fn default() -> Self {
        Self {
            // 2^24 random 96-bit nonces per key: collision chance about 2^-49,
            // far inside NIST SP 800-38D's 2^-32 bound at 2^32.
            kek_usage_limit: 1 << 24,
            kek_cryptoperiod: time::Duration::days(365),
            kdf_policy: KdfPolicy::standard(),
        }
    }
}

/// How `init` seals the root key.
pub enum SealMethod {
    Passphrase(Zeroizing<String>),
    Shares { count: u8, threshold: u8 },
}

/// What one unseal call achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct UnsealProgress {
    pub sealed: bool,
    /// Valid shares gathered so far (0 for a passphrase vault).
    pub progress: u8,
    /// Shares needed (1 for a passphrase vault).
    pub threshold: u8,
}

/// One piece of unseal material.
pub enum UnsealInput {
    Passphrase(Zeroizing<String>),
    Share(Zeroizing<String>),
}

/// Keys derived from the root key, alive only while unsealed.
///
/// Seal wipes them in place ([`UnsealedKeys::wipe`]): whoever still holds
/// this set afterwards gets [`KeyringError::Sealed`] from every method. ring's
/// HMAC keys and Ed25519 key pairs cannot be zeroized, so none is kept here:
/// each use builds one from its zeroizing seed, inside a [`KeyInUse`] that
/// borrows this set, cannot leave its thread and is counted; seal waits
/// until every one has been dropped.
pub struct UnsealedKeys {
    /// The derived subkeys; `None` once sealed.
    subkeys: RwLock<Option<Subkeys>>,
    /// Every KEK version, unwrapped; `None` once sealed.
    keks: Mutex<Option<kek::KekCache>>,
    /// Operations now using a key of this set.
    uses: UseCount,
}

/// The subkeys of the root key, as zeroizing seeds.
struct Subkeys {
    keyring: Key256,
    index: Key256,
    token: Key256,
    audit_hmac: Key256,
    audit_signing: Key256,
    credential: Key256,
    /// Authenticates security state at rest ([`StateKey`]).
    state: Key256,
    /// The Argon2id secret of staff password hashes.
    password_pepper: Key256,
    /// Binds the console's CSRF tokens to their sessions.
    console: Key256,
}

/// How many operations are using keys of one set; seal waits for zero.
#[derive(Default)]
struct UseCount {
    count: Mutex<usize>,
    idle: Condvar,
}

/// How long seal waits for operations that still use keys. They are
/// synchronous and short (a [`KeyInUse`] cannot be held across an `.await`),
/// so this is a safety net, not a timeout anyone should meet.
const SEAL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl UseCount {
    fn enter(&self) -> UseGuard<'_> {
        *self.count.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        UseGuard(self)
    }

    fn in_use(&self) -> usize {
        *self.count.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until no operation uses a key; false if some still did after
    /// `limit`.
    fn wait_idle(&self, limit: std::time::Duration) -> bool {
        let count = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        let (count, _) = self
            .idle
            .wait_timeout_while(count, limit, |n| *n > 0)
            .unwrap_or_else(PoisonError::into_inner);
        *count == 0
    }
}

/// One operation's claim on a key set.
struct UseGuard<'a>(&'a UseCount);

impl Drop for UseGuard<'_> {
    fn drop(&mut self) {
        let mut count = self.0.count.lock().unwrap_or_else(PoisonError::into_inner);
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.0.idle.notify_all();
        }
    }
}

/// A key built for one use from a subkey of an unsealed key set.
///
/// It borrows the set, so it cannot outlive it; it is neither `Clone` nor
/// `Send`, so it cannot be kept across an `.await` or handed to another
/// thread; and seal waits until it is dropped. Derefs to the key.
pub struct KeyInUse<'a, K> {
    key: K,
    _use: UseGuard<'a>,
    _this_thread_only: PhantomData<*const ()>,
}

impl<K> std::ops::Deref for KeyInUse<'_, K> {
    type Target = K;

    fn deref(&self) -> &K {
        &self.key
    }
}

impl<K> std::fmt::Debug for KeyInUse<'_, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyInUse(<redacted>)")
    }
}

impl UnsealedKeys {
    fn derive(
        root: &Key256,
        store: &dyn Store,
        keys_dir: &Path,
        vault_id: &str,
    ) -> Result<Self, KeyringError> {
        let keyring = derive_key(root, "strongroom/v1/keyring");
        let epochs = epoch::EpochKeys::load(keys_dir, vault_id, &keyring)?;
        let keks = kek::KekCache::load(store, &keyring, epochs)?;
        Ok(Self {
            subkeys: RwLock::new(Some(Subkeys {
                keyring,
                index: derive_key(root, "strongroom/v1/index"),
                token: derive_key(root, "strongroom/v1/token"),
                audit_hmac: derive_key(root, "strongroom/v1/audit-hmac"),
                audit_signing: derive_key(root, "strongroom/v1/audit-signing"),
                credential: derive_key(root, "strongroom/v1/credential"),
                state: derive_key(root, "strongroom/v1/state-mac"),
                password_pepper: derive_key(root, "strongroom/v1/password-pepper"),
                console: derive_key(root, "strongroom/v1/console-csrf"),
            })),
            keks: Mutex::new(Some(keks)),
            uses: UseCount::default(),
        })
    }

    /// Builds a key from a subkey for one use; [`KeyringError::Sealed`] once
    /// sealed.
    fn key_in_use<K>(
        &self,
        build: impl FnOnce(&Subkeys) -> Result<K, KeyringError>,
    ) -> Result<KeyInUse<'_, K>, KeyringError> {
        // Counted before the subkeys are read: seal wipes them first and
        // then waits for the count, so it sees every key built before.
        let claim = self.uses.enter();
        let subkeys = self.subkeys.read().unwrap_or_else(PoisonError::into_inner);
        let key = build(subkeys.as_ref().ok_or(KeyringError::Sealed)?)?;
        Ok(KeyInUse {
            key,
            _use: claim,
            _this_thread_only: PhantomData,
        })
    }

    /// Blind-index key (HMAC-SHA256).
    pub fn index_key(&self) -> Result<KeyInUse<'_, HmacKey>, KeyringError> {
        self.key_in_use(|s| Ok(HmacKey::new(&s.index)))
    }

    /// Deterministic-token key (HMAC-SHA256).
    pub fn token_key(&self) -> Result<KeyInUse<'_, HmacKey>, KeyringError> {
        self.key_in_use(|s| Ok(HmacKey::new(&s.token)))
    }

    /// Key for HMACs of sensitive values in audit entries.
    pub fn audit_hmac_key(&self) -> Result<KeyInUse<'_, HmacKey>, KeyringError> {
        self.key_in_use(|s| Ok(HmacKey::new(&s.audit_hmac)))
    }

    /// Key for HMACs of API keys and session tokens at rest.
    pub fn credential_key(&self) -> Result<KeyInUse<'_, HmacKey>, KeyringError> {
        self.key_in_use(|s| Ok(HmacKey::new(&s.credential)))
    }

    /// Key of the console's CSRF tokens (HMAC-SHA256 of the session).
    pub fn console_key(&self) -> Result<KeyInUse<'_, HmacKey>, KeyringError> {
        self.key_in_use(|s| Ok(HmacKey::new(&s.console)))
    }

    /// Key that authenticates stored security state (see [`StateKey`]).
    pub fn state_key(&self) -> Result<KeyInUse<'_, StateKey>, KeyringError> {
        self.key_in_use(|s| Ok(StateKey::new(&s.state)))
    }

    /// The pepper (Argon2id secret) of staff password hashes, for one use
    /// on this thread: a hash computed elsewhere fetches it there, so no
    /// copy outlives a seal.
    pub fn password_pepper(&self) -> Result<KeyInUse<'_, PasswordPepper>, KeyringError> {
        self.key_in_use(|s| Ok(PasswordPepper::new(s.password_pepper.duplicate())))
    }

    /// Ed25519 key that signs the audit log's heads and checkpoints.
    pub fn audit_signing_key(&self) -> Result<KeyInUse<'_, SigningKey>, KeyringError> {
        self.key_in_use(|s| Ok(SigningKey::from_seed(&s.audit_signing)?))
    }

    /// Runs `f` on the KEK cache with the keyring key, counted as a use.
    fn with_keks<R>(
        &self,
        f: impl FnOnce(&mut kek::KekCache, &Key256) -> Result<R, KeyringError>,
    ) -> Result<R, KeyringError> {
        // A copy of the keyring key for this operation (zeroized as it
        // drops): the subkeys' lock is not held while `f` runs, because an
        // automatic rotation inside `f` waits for the audit log, which
        // needs the signing key.
        let keyring_key = self.key_in_use(|s| Ok(s.keyring.duplicate()))?;
        let mut keks = self.keks.lock().unwrap_or_else(PoisonError::into_inner);
        f(keks.as_mut().ok_or(KeyringError::Sealed)?, &keyring_key)
    }

    /// Seal: every subkey and KEK is dropped (zeroized) now, whoever holds
    /// this set; then waits until no operation still uses a key built
    /// from it.
    fn wipe(&self) {
        drop(
            self.subkeys
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        drop(
            self.keks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        if !self.uses.wait_idle(SEAL_WAIT) {
            tracing::error!(
                in_use = self.uses.in_use(),
                "sealed, but operations still hold keys after 30 s; they drop them when they end"
            );
        }
    }

    /// Whether any key of this set is still in memory.
    fn holds_key_material(&self) -> bool {
        self.subkeys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
            || self
                .keks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
            || self.uses.in_use() > 0
    }
}

impl std::fmt::Debug for UnsealedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnsealedKeys(<redacted>)")
    }
}

fn root_check(root: &Key256, vault_id: &str) -> String {
    let key = HmacKey::new(&derive_key(root, "strongroom/v1/root-check"));
    hex::encode(key.sign(vault_id.as_bytes()).0)
}

fn verify_root_check(root: &Key256, file: &RootFile) -> Result<(), KeyringError> {
    let expected =
        hex::decode(&file.root_check).map_err(|_| KeyringError::Config("root check is not hex"))?;
    HmacKey::new(&derive_key(root, "strongroom/v1/root-check"))
        .verify(file.vault_id.as_bytes(), &expected)
        .map_err(|_| KeyringError::UnsealFailed("the unseal material does not open this vault"))
}

fn root_aad(vault_id: &str) -> Aad {
    Aad::new("strongroom/v1/root").part(vault_id.as_bytes())
}

/// The keyring of one vault: sealed or unsealed.
pub struct Keyring {
    keys_dir: PathBuf,
    root_file: RootFile,
    /// The keys directory's `audit.pub`, when it holds one: a recovered
    /// root key must derive exactly this audit key, or the unseal is
    /// refused (a root record read from the database could otherwise be
    /// one sealed under someone else's passphrase).
    audit_public_key: Option<[u8; 32]>,
    /// Whether the store lacks `kr/root` (a vault made before it was
    /// stored): the first successful unseal writes it.
    root_record_missing: bool,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    settings: KeyringSettings,
    state: RwLock<Option<Arc<UnsealedKeys>>>,
    /// The keys last installed, to prove that sealing really dropped them.
    last_keys: Mutex<Weak<UnsealedKeys>>,
    pending_shares: Mutex<Vec<ParsedShare>>,
    /// Where automatic KEK rotations are committed (the audit log).
    rotation_recorders: Mutex<Vec<Arc<dyn RotationRecorder>>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("vault_id", &self.root_file.vault_id)
            .field("sealed", &self.is_sealed())
            .finish_non_exhaustive()
    }
}

/// What `init` hands back once: the shares (for a Shamir vault), and the
/// keyring, unsealed, so the caller can create the first principal.
pub struct Initialised {
    pub keyring: Keyring,
    pub shares: Vec<Zeroizing<String>>,
}

impl Keyring {
    /// Creates a vault: a random root key sealed as `method`, `root.json` and
    /// `audit.pub` in `keys_dir`, and version 1 of every KEK in the store.
    pub fn init(
        keys_dir: &Path,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        settings: KeyringSettings,
        method: SealMethod,
    ) -> Result<Initialised, KeyringError> {
        if RootFile::path(keys_dir).exists() {
            return Err(KeyringError::AlreadyInitialised);
        }
        if store.get(VAULT_KEY)?.is_some() {
            return Err(KeyringError::AlreadyInitialised);
        }
        std::fs::create_dir_all(keys_dir).map_err(|e| KeyringError::io(keys_dir, &e))?;
        let root = Key256::random()?;
        let vault_id = hex::encode(random_array::<8>()?);
        let now = clock.now();
        let mut share_texts = Vec::new();
        let seal = match method {
            SealMethod::Passphrase(passphrase) => {
                if passphrase.chars().count() < 12 {
                    return Err(KeyringError::Config(
                        "the passphrase must be at least 12 characters",
                    ));
                }
                let params: Argon2Params = settings.kdf_policy.floor();
                let salt = random_array::<16>()?;
                let wrapping = derive_key_from_passphrase(
                    &settings.kdf_policy,
                    &params,
                    passphrase.as_bytes(),
                    &salt,
                )?;
                let sealed = Envelope::seal(
                    &wrapping,
                    "unseal",
                    1,
                    &root_aad(&vault_id),
                    root.expose_secret(),
                )?;
                SealDescription::Passphrase {
                    argon2id: params,
                    salt: hex::encode(salt),
                    sealed_root: hex::encode(sealed.encode()),
                }
            }
            SealMethod::Shares { count, threshold } => {
                if threshold < 2 || threshold > count {
                    return Err(KeyringError::Config(
                        "shares need 2 <= threshold <= count <= 255",
                    ));
                }
                let parts = shares::split(&root, threshold, count).map_err(|_| {
                    KeyringError::Config("shares need 2 <= threshold <= count <= 255")
                })?;
                let mut share_digests = BTreeMap::new();
                for part in &parts {
                    share_digests.insert(
                        part.x.to_string(),
                        hex::encode(shares::share_digest(&vault_id, part)),
                    );
                    share_texts.push(shares::encode(&vault_id, part));
                }
                SealDescription::Shares {
                    threshold,
                    count,
                    share_digests,
                }
            }
        };
        let root_file = RootFile::new(
            vault_id.clone(),
            rfc3339(now),
            seal,
            root_check(&root, &vault_id),
        );

        let keys = UnsealedKeys::derive(&root, store.as_ref(), keys_dir, &vault_id)?;
        store.commit(
            Transaction::new()
                .expect(VAULT_KEY, None)
                .put(VAULT_KEY, vault_id.as_bytes())
                .expect(ROOT_KEY, None)
                .put(ROOT_KEY, root_file.encode()?),
        )?;
        keys.with_keks(|keks, keyring_key| {
            // Erasure epochs from the start, so that no copy of this
            // store ever holds a KEK wrapped under the root alone; not for
            // a store shared by several nodes, which have no common place
            // for epoch secrets outside it (docs/lifecycle.md).
            if !store.is_shared() {
                keks.epochs.begin_next(keys_dir, &vault_id, keyring_key)?;
            }
            for purpose in Purpose::ALL {
                keks.rotate(store.as_ref(), keyring_key, purpose, now)?;
            }
            Ok(())
        })?;
        root_file.create(keys_dir)?;
        let public = hex::encode(keys.audit_signing_key()?.public_key());
        write_new_file(
            &keys_dir.join(AUDIT_PUBLIC_KEY_FILE),
            format!("{public}\n").as_bytes(),
            0o644,
        )?;

        let public_key = keys.audit_signing_key()?.public_key();
        let mut keyring = Self::new(keys_dir, root_file, store, clock, settings);
        keyring.audit_public_key = Some(public_key);
        keyring.install(keys);
        Ok(Initialised {
            keyring,
            shares: share_texts,
        })
    }

    /// Opens an initialised vault, sealed. Refuses a key file readable by
    /// others and a data directory that belongs to another vault.
    ///
    /// The root record comes from the keys directory's `root.json` when
    /// there is one (and must then equal the store's `kr/root`, if the store
    /// holds one); otherwise from the store's `kr/root` (a node of several
    /// sharing a database), and then the keys directory must hold
    /// `audit.pub`, which the unseal checks the recovered root against.
    pub fn open(
        keys_dir: &Path,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        settings: KeyringSettings,
    ) -> Result<Self, KeyringError> {
        let stored = store
            .get(ROOT_KEY)?
            .map(|bytes| RootFile::decode(&bytes))
            .transpose()?;
        let audit_path = keys_dir.join(AUDIT_PUBLIC_KEY_FILE);
        let audit_public_key = if audit_path.exists() {
            Some(crate::audit::read_public_key(&audit_path).map_err(|e| {
                tracing::error!(error = %e, "cannot read audit.pub");
                KeyringError::Config("keys/audit.pub is not an audit public key")
            })?)
        } else {
            None
        };
        let root_file = if RootFile::path(keys_dir).exists() {
            let file = RootFile::load(keys_dir)?;
            if let Some(stored) = &stored
                && !stored.same_as(&file)?
            {
                return Err(KeyringError::Config(
                    "keys/root.json and the database's root record (kr/root) differ; \
                     one of them was replaced",
                ));
            }
            file
        } else {
            let Some(stored) = stored.clone() else {
                return Err(KeyringError::Config(
                    "the keys directory has no root.json and the database no root record",
                ));
            };
            if audit_public_key.is_none() {
                return Err(KeyringError::Config(
                    "a keys directory without root.json must hold audit.pub: \
                     the root record read from the database is checked against it",
                ));
            }
            stored
        };
        let root_record_missing = stored.is_none();
        match store.get(VAULT_KEY)? {
            Some(id) if id == root_file.vault_id.as_bytes() => {}
            Some(_) => {
                return Err(KeyringError::Config(
                    "the data directory belongs to another vault than the keys directory",
                ));
            }
            None => {
                return Err(KeyringError::Config(
                    "the data directory is not initialised",
                ));
            }
        }
        let mut keyring = Self::new(keys_dir, root_file, store, clock, settings);
        keyring.audit_public_key = audit_public_key;
        keyring.root_record_missing = root_record_missing;
        Ok(keyring)
    }

    /// The root record (`root.json`'s text), as backups carry it.
    pub fn root_record_json(&self) -> Result<String, KeyringError> {
        self.root_file.to_json()
    }

    fn new(
        keys_dir: &Path,
        root_file: RootFile,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        settings: KeyringSettings,
    ) -> Self {
        Self {
            keys_dir: keys_dir.to_path_buf(),
            root_file,
            audit_public_key: None,
            root_record_missing: false,
            store,
            clock,
            settings,
            state: RwLock::new(None),
            last_keys: Mutex::new(Weak::new()),
            pending_shares: Mutex::new(Vec::new()),
            rotation_recorders: Mutex::new(Vec::new()),
        }
    }

    pub fn vault_id(&self) -> &str {
        &self.root_file.vault_id
    }

    /// Whether `store` holds an initialised vault (`init` or `dev` ran on
    /// it), without its keys: how the offline commands tell a Strongroom
    /// store from any other sled database.
    pub fn is_initialised(store: &dyn Store) -> Result<bool, StoreError> {
        Ok(store.get(VAULT_KEY)?.is_some())
    }

    pub fn keys_dir(&self) -> &Path {
        &self.keys_dir
    }

    pub fn is_sealed(&self) -> bool {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }

    /// Whether any key of this keyring is still in memory: false once
    /// [`Keyring::seal`] has returned, even for a holder of the key set
    /// from before.
    pub fn holds_key_material(&self) -> bool {
        !self.is_sealed()
            || self
                .last_keys
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .upgrade()
                .is_some_and(|keys| keys.holds_key_material())
    }

    fn threshold(&self) -> u8 {
        match &self.root_file.seal {
            SealDescription::Passphrase { .. } => 1,
            SealDescription::Shares { threshold, .. } => *threshold,
        }
    }

    fn progress(&self) -> UnsealProgress {
        let gathered = self
            .pending_shares
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        UnsealProgress {
            sealed: self.is_sealed(),
            progress: u8::try_from(gathered).unwrap_or(u8::MAX),
            threshold: self.threshold(),
        }
    }

    /// Current unseal progress without submitting anything.
    pub fn unseal_status(&self) -> UnsealProgress {
        self.progress()
    }

    /// The unsealed keys, or [`KeyringError::Sealed`].
    pub fn keys(&self) -> Result<Arc<UnsealedKeys>, KeyringError> {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(KeyringError::Sealed)
    }

    fn install(&self, keys: UnsealedKeys) {
        let keys = Arc::new(keys);
        *self
            .last_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Arc::downgrade(&keys);
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = Some(keys);
    }

    /// Submits one piece of unseal material. A bad piece is refused on its
    /// own and adds nothing to the progress. Slow for a passphrase (Argon2id):
    /// call it off the async runtime.
    pub fn unseal(&self, input: UnsealInput) -> Result<UnsealProgress, KeyringError> {
        if !self.is_sealed() {
            return Ok(self.progress());
        }
        match (&self.root_file.seal, input) {
            (
                SealDescription::Passphrase {
                    argon2id,
                    salt,
                    sealed_root,
                },
                UnsealInput::Passphrase(passphrase),
            ) => {
                let salt =
                    hex::decode(salt).map_err(|_| KeyringError::Config("salt is not hex"))?;
                let wrapping = derive_key_from_passphrase(
                    &self.settings.kdf_policy,
                    argon2id,
                    passphrase.as_bytes(),
                    &salt,
                )
                .map_err(|e| match e {
                    CryptoError::KdfParams(why) => KeyringError::Config(why),
                    other => KeyringError::from(other),
                })?;
                let sealed = hex::decode(sealed_root)
                    .map_err(|_| KeyringError::Config("sealed root is not hex"))?;
                let root_bytes = Envelope::decode(&sealed)?
                    .open(&wrapping, &root_aad(&self.root_file.vault_id))
                    .map_err(|_| KeyringError::UnsealFailed("wrong passphrase"))?;
                let root = Key256::try_from_slice(&root_bytes)?;
                self.finish_unseal(&root)?;
                Ok(self.progress())
            }
            (
                SealDescription::Shares {
                    threshold,
                    share_digests,
                    ..
                },
                UnsealInput::Share(text),
            ) => {
                let share = shares::parse(&self.root_file.vault_id, &text)?;
                let digest = hex::encode(shares::share_digest(&self.root_file.vault_id, &share));
                match share_digests.get(&share.x.to_string()) {
                    Some(expected) if constant_time_eq(expected.as_bytes(), digest.as_bytes()) => {}
                    _ => return Err(ShareError::Unknown.into()),
                }
                let mut pending = self
                    .pending_shares
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if !pending.iter().any(|p| p.x == share.x) {
                    pending.push(share);
                }
                if pending.len() < usize::from(*threshold) {
                    drop(pending);
                    return Ok(self.progress());
                }
                let gathered = std::mem::take(&mut *pending);
                drop(pending);
                let root = shares::combine(*threshold, &gathered)?;
                self.finish_unseal(&root)?;
                Ok(self.progress())
            }
            (SealDescription::Passphrase { .. }, UnsealInput::Share(_)) => Err(
                KeyringError::UnsealFailed("this vault is sealed by a passphrase, not by shares"),
            ),
            (SealDescription::Shares { .. }, UnsealInput::Passphrase(_)) => Err(
                KeyringError::UnsealFailed("this vault is sealed by shares, not by a passphrase"),
            ),
        }
    }

    fn finish_unseal(&self, root: &Key256) -> Result<(), KeyringError> {
        verify_root_check(root, &self.root_file)?;
        // Before any key is derived for use: the root must be this
        // vault's, as the keys directory's public audit key knows it.
        if let Some(expected) = &self.audit_public_key {
            let derived = SigningKey::from_seed(&derive_key(root, "strongroom/v1/audit-signing"))?
                .public_key();
            if !constant_time_eq(&derived, expected) {
                tracing::error!(
                    "the recovered root key does not derive keys/audit.pub: the root record \
                     was replaced; unseal refused"
                );
                return Err(KeyringError::UnsealFailed(
                    "the root record does not belong to the vault whose audit.pub this node holds",
                ));
            }
        }
        let keys =
            UnsealedKeys::derive(root, self.store.as_ref(), &self.keys_dir, self.vault_id())?;
        self.install(keys);
        if self.root_record_missing {
            self.store_root_record();
        }
        Ok(())
    }

    /// Writes `kr/root` for a vault made before the store held it, once
    /// an unseal has shown that `root.json` opens this vault. A failure
    /// leaves the vault working from `root.json`, and is tried again at the
    /// next unseal.
    fn store_root_record(&self) {
        let written = self.root_file.encode().and_then(|bytes| {
            match self.store.commit(
                Transaction::new()
                    .expect(ROOT_KEY, None)
                    .put(ROOT_KEY, bytes),
            ) {
                // Another node wrote it first; `open` compares them.
                Ok(()) | Err(StoreError::Conflict) => Ok(()),
                Err(e) => Err(e.into()),
            }
        });
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not store the root record (kr/root)");
        }
    }

    /// Drops every key (they zeroize as they drop) and any gathered shares.
    /// A key set obtained before is wiped too, and this returns once no
    /// operation still uses a key built from it.
    pub fn seal(&self) {
        let keys = self
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(keys) = keys {
            keys.wipe();
        }
        self.pending_shares
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Adds a KEK version for `purpose`; new writes use it, older versions
    /// still decrypt.
    pub fn rotate(&self, purpose: Purpose) -> Result<u32, KeyringError> {
        let now = self.clock.now();
        self.keys()?.with_keks(|keks, keyring_key| {
            keks.rotate(self.store.as_ref(), keyring_key, purpose, now)
        })
    }

    /// Like [`Keyring::rotate`], committing the new version with `commit`
    /// so the caller's own writes (its audit entry) share the transaction.
    pub fn rotate_with(
        &self,
        purpose: Purpose,
        commit: &dyn Fn(Transaction) -> Result<(), StoreError>,
    ) -> Result<u32, KeyringError> {
        let now = self.clock.now();
        self.keys()?.with_keks(|keks, keyring_key| {
            keks.rotate_committing(self.store.as_ref(), keyring_key, purpose, now, &|_, tx| {
                commit(tx)
            })
        })
    }

    /// Destroys KEK version `version` of `purpose`, committing the delete
    /// with `commit` (the caller's audit entry shares the transaction).
    /// The caller has made sure no DEK is wrapped under it any more; the
    /// newest version is refused ([`KeyringError::NewestVersion`]).
    pub fn destroy_version_with(
        &self,
        purpose: Purpose,
        version: u32,
        commit: &dyn Fn(Transaction) -> Result<(), StoreError>,
    ) -> Result<(), KeyringError> {
        self.keys()?.with_keks(|keks, keyring_key| {
            keks.destroy_committing(self.store.as_ref(), keyring_key, purpose, version, commit)
        })
    }

    /// Rolls to a new erasure epoch (`epoch.json` in the keys directory):
    /// a new epoch secret is written beside the old ones, every KEK version
    /// is wrapped under it (committed by `commit`, so the caller's audit
    /// entry shares the transaction), and then every older secret is
    /// forgotten, in memory and in the file. From then on no KEK version
    /// in a copy of the store made before the roll can be unwrapped. The
    /// caller destroys the KEK versions that wrapped erased DEKs first.
    pub fn roll_epoch_with(
        &self,
        commit: &dyn Fn(Transaction) -> Result<(), StoreError>,
    ) -> Result<u32, KeyringError> {
        let vault_id = self.vault_id().to_owned();
        self.keys()?.with_keks(|keks, keyring_key| {
            for purpose in Purpose::ALL {
                keks.load_family(self.store.as_ref(), keyring_key, purpose)?;
            }
            let next = keks
                .epochs
                .begin_next(&self.keys_dir, &vault_id, keyring_key)?;
            keks.rewrap_under_current_epoch(self.store.as_ref(), keyring_key, commit)?;
            keks.epochs
                .keep_only(next, &self.keys_dir, &vault_id, keyring_key)?;
            Ok(next)
        })
    }

    /// Finishes a roll cut short between writing the new epoch secret and
    /// forgetting the old ones: every KEK version under the newest epoch
    /// (committed by `commit`), then only its secret kept.
    pub fn settle_epochs_with(
        &self,
        commit: &dyn Fn(Transaction) -> Result<(), StoreError>,
    ) -> Result<(), KeyringError> {
        let vault_id = self.vault_id().to_owned();
        self.keys()?.with_keks(|keks, keyring_key| {
            let Some(current) = keks.epochs.current() else {
                return Ok(());
            };
            for purpose in Purpose::ALL {
                keks.load_family(self.store.as_ref(), keyring_key, purpose)?;
            }
            keks.rewrap_under_current_epoch(self.store.as_ref(), keyring_key, commit)?;
            keks.epochs
                .keep_only(current, &self.keys_dir, &vault_id, keyring_key)
        })
    }

    /// The erasure epochs whose secrets this keyring holds (none before
    /// the first roll; two only while a roll is under way or after one
    /// was cut short).
    pub fn epochs(&self) -> Result<Vec<u32>, KeyringError> {
        self.keys()?.with_keks(|keks, _| Ok(keks.epochs.epochs()))
    }

    /// The newest KEK version of each purpose, read from the store (so a
    /// version another node made, or destroyed, counts).
    pub fn newest_versions(&self) -> Result<BTreeMap<Purpose, u32>, KeyringError> {
        self.keys()?.with_keks(|keks, keyring_key| {
            let mut newest = BTreeMap::new();
            for purpose in Purpose::ALL {
                keks.load_family(self.store.as_ref(), keyring_key, purpose)?;
                if let Some(version) = keks.newest(purpose) {
                    newest.insert(purpose, version);
                }
            }
            Ok(newest)
        })
    }

    /// Where automatic KEK rotations are committed with their audit entry
    /// (the audit log registers itself). Without one, a KEK that must be
    /// replaced is not, and encryption under it is refused.
    pub fn record_rotations_with(&self, recorder: Arc<dyn RotationRecorder>) {
        let mut recorders = self
            .rotation_recorders
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        recorders.retain(|r| r.is_alive());
        recorders.push(recorder);
    }

    fn rotation_recorder(&self) -> Option<Arc<dyn RotationRecorder>> {
        self.rotation_recorders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .find(|r| r.is_alive())
            .cloned()
    }

    /// Metadata of every KEK version; never key bytes.
    /// Versions made by another node sharing the store are read first.
    pub fn kek_metadata(&self) -> Result<Vec<KekMetadata>, KeyringError> {
        self.keys()?.with_keks(|keks, keyring_key| {
            for purpose in Purpose::ALL {
                keks.load_family(self.store.as_ref(), keyring_key, purpose)?;
            }
            Ok(keks.metadata())
        })
    }

    /// The newest KEK of `purpose` for one more encryption, replacing it
    /// first (audited) when it is due.
    fn kek_for_encryption(
        &self,
        keys: &UnsealedKeys,
        purpose: Purpose,
    ) -> Result<Arc<kek::Kek>, KeyringError> {
        let recorder = self.rotation_recorder();
        let due = kek::RotationDue {
            usage_limit: self.settings.kek_usage_limit,
            cryptoperiod: self.settings.kek_cryptoperiod,
            now: self.clock.now(),
        };
        keys.with_keks(|keks, keyring_key| {
            keks.take_for_encryption(
                self.store.as_ref(),
                keyring_key,
                purpose,
                &due,
                recorder.as_deref(),
            )
        })
    }

    /// Encrypts a record version under a fresh DEK, wrapped by the newest
    /// KEK of `purpose`.
    pub fn seal_record(
        &self,
        purpose: Purpose,
        context: &RecordContext<'_>,
        plaintext: &[u8],
    ) -> Result<SealedRecord, KeyringError> {
        let keys = self.keys()?;
        let _use = keys.uses.enter();
        let kek = self.kek_for_encryption(&keys, purpose)?;
        SealedRecord::seal(&kek.key, purpose, kek.version, context, plaintext)
    }

    /// Decrypts a record version; anything moved, flipped or sealed under a
    /// KEK this vault does not have is an integrity error.
    pub fn open_record(
        &self,
        purpose: Purpose,
        context: &RecordContext<'_>,
        sealed: &SealedRecord,
    ) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
        let keys = self.keys()?;
        let _use = keys.uses.enter();
        let kek = keys
            .with_keks(|keks, keyring_key| {
                keks.version_or_load(
                    self.store.as_ref(),
                    keyring_key,
                    purpose,
                    sealed.kek_version(),
                )
            })?
            .ok_or(KeyringError::Integrity)?;
        sealed.open(&kek.key, purpose, context)
    }

    /// Re-wraps a record's DEK under the newest KEK of `purpose` as this
    /// keyring knows it (call [`Keyring::newest_versions`] first to see
    /// other nodes' rotations); `None` when it is already there. The
    /// record body is not decrypted (but for the first format's, once).
    pub fn rewrap_record(
        &self,
        purpose: Purpose,
        context: &RecordContext<'_>,
        sealed: &SealedRecord,
    ) -> Result<Option<SealedRecord>, KeyringError> {
        let keys = self.keys()?;
        let _use = keys.uses.enter();
        let (old, newest) = keys.with_keks(|keks, keyring_key| {
            let old = keks
                .version_or_load(
                    self.store.as_ref(),
                    keyring_key,
                    purpose,
                    sealed.kek_version(),
                )?
                .ok_or(KeyringError::Integrity)?;
            Ok((old, keks.newest(purpose)))
        })?;
        if newest.is_none_or(|newest| old.version >= newest) {
            return Ok(None);
        }
        let new = self.kek_for_encryption(&keys, purpose)?;
        sealed
            .rewrap(&old.key, &new.key, new.version, purpose, context)
            .map(Some)
    }
}
