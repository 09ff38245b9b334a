//! What several benchmarks share: an initialised, unsealed vault in a
//! temporary directory.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use strongroom::api::{AppSettings, AppState};
use strongroom::clock::SystemClock;
use strongroom::crypto::{KdfPolicy, PasswordPolicy};
use strongroom::keyring::{Keyring, KeyringSettings, SealMethod};
use strongroom::store::{SledStore, Store};

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
}

/// A vault initialised with 2-of-3 shares and the fast test KDF, unsealed,
/// checking staff passwords under `password_policy`.
pub fn vault(password_policy: PasswordPolicy) -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("data")).unwrap());
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
