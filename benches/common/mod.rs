//! What several benchmarks share: an initialised, unsealed vault in a
//! temporary directory.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use strongroom::api::{AppSettings, AppState};
use strongroom::clock::SystemClock;
use strongroom::crypto::{KdfPolicy, PasswordPolicy};
use strongroom::keyring::{Keyring, KeyringSettings, SealMethod};
use strongroom::store::{Engine, Store};

pub struct Bench {
    dir: tempfile::TempDir,
    pub state: AppState,
    pub store: Arc<dyn Store>,
}

impl Bench {
    /// The store's directory (for disk use).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The vault's audit verification key (`keys/audit.pub`).
    pub fn audit_public_key(&self) -> Vec<u8> {
        let text = std::fs::read_to_string(self.dir.path().join("keys/audit.pub")).unwrap();
        hex::decode(text.trim()).unwrap()
    }
}

/// A vault initialised with 2-of-3 shares and the fast test KDF, unsealed,
/// checking staff passwords under `password_policy`, on the default engine.
pub fn vault(password_policy: PasswordPolicy) -> Bench {
    vault_on(
        Engine::DEFAULT,
        strongroom::store::DEFAULT_CACHE_BYTES,
        password_policy,
    )
}

/// [`vault`] on `engine` with a cache of `cache_bytes`, in a temporary
/// directory under `STRONGROOM_BENCH_DIR` when set (a large load needs a
/// disk with room).
pub fn vault_on(engine: Engine, cache_bytes: u64, password_policy: PasswordPolicy) -> Bench {
    let dir = match std::env::var_os("STRONGROOM_BENCH_DIR") {
        Some(parent) => tempfile::tempdir_in(parent).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let store =
        strongroom::store::open_engine(engine, &dir.path().join("data"), cache_bytes).unwrap();
    let keyring = Keyring::init(
        &dir.path().join("keys"),
        Arc::clone(&store),
        Arc::new(SystemClock),
        KeyringSettings {
            kdf_policy: KdfPolicy::danger_insecure_for_tests(),
            ..KeyringSettings::default()
        },
        SealMethod::Shares {
            count: 3,
            threshold: 2,
        },
    )
    .unwrap()
    .keyring;
    let state = AppState::new(
        Arc::new(keyring),
        Arc::clone(&store),
        Arc::new(SystemClock),
        AppSettings {
            password_policy,
            ..AppSettings::default()
        },
    );
    Bench { dir, state, store }
}
