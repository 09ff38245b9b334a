//! The key hierarchy through the library API: envelope integrity, seal and
//! unseal, rotation, and that no key or plaintext reaches the disk.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;

use common::*;
use strongroom::clock::ManualClock;
use strongroom::crypto::{Aad, Envelope, Key256, derive_key};
use strongroom::keyring::shares;
use strongroom::keyring::{
    KeyringError, Purpose, RecordContext, SealMethod, SealedRecord, UnsealInput,
};
use zeroize::Zeroizing;

fn ctx(id: &str) -> RecordContext<'_> {
    RecordContext {
        id,
        record_type: "card",
        version: 1,
    }
}

fn seal(
    vault: &TestVault,
    purpose: Purpose,
    context: &RecordContext<'_>,
    plaintext: &[u8],
) -> SealedRecord {
    vault
        .keyring
        .seal_record(purpose, context, plaintext)
        .unwrap()
}

fn open(
    vault: &TestVault,
    purpose: Purpose,
    context: &RecordContext<'_>,
    record: &SealedRecord,
) -> Vec<u8> {
    vault
        .keyring
        .open_record(purpose, context, record)
        .unwrap()
        .to_vec()
}

fn share(text: &str) -> UnsealInput {
    UnsealInput::Share(Zeroizing::new(text.to_owned()))
}

fn passphrase(text: &str) -> UnsealInput {
    UnsealInput::Passphrase(Zeroizing::new(text.to_owned()))
}

#[test]
fn flipping_any_byte_of_a_sealed_record_is_an_integrity_error() {
    let vault = passphrase_vault();
    let sealed = seal(&vault, Purpose::Card, &ctx("card_1"), b"4242424242424242").encode();
    for i in 0..sealed.len() {
        for bit in [0x01u8, 0x10, 0x80] {
            let mut tampered = sealed.clone();
            tampered[i] ^= bit;
            let result = SealedRecord::decode(&tampered)
                .and_then(|r| vault.keyring.open_record(Purpose::Card, &ctx("card_1"), &r));
            assert!(
                matches!(result, Err(KeyringError::Integrity)),
                "byte {i} bit {bit:#x}: {result:?}"
            );
        }
    }
    for len in 0..sealed.len() {
        let result = SealedRecord::decode(&sealed[..len])
            .and_then(|r| vault.keyring.open_record(Purpose::Card, &ctx("card_1"), &r));
        assert!(
            matches!(result, Err(KeyringError::Integrity)),
            "truncated to {len}"
        );
    }
    let record = SealedRecord::decode(&sealed).unwrap();
    assert_eq!(
        &open(&vault, Purpose::Card, &ctx("card_1"), &record)[..],
        b"4242424242424242"
    );
}

#[test]
fn a_moved_record_never_decrypts() {
    let vault = passphrase_vault();
    let here = RecordContext {
        id: "kyc_a",
        record_type: "kyc",
        version: 3,
    };
    let record = vault
        .keyring
        .seal_record(Purpose::Kyc, &here, b"Ada Lovelace")
        .unwrap();
    let elsewhere = [
        RecordContext {
            id: "kyc_b",
            ..here
        },
        RecordContext {
            record_type: "card",
            ..here
        },
        RecordContext { version: 2, ..here },
        RecordContext { version: 4, ..here },
    ];
    for other in elsewhere {
        let result = vault.keyring.open_record(Purpose::Kyc, &other, &record);
        assert!(matches!(result, Err(KeyringError::Integrity)), "{other:?}");
    }
    // Another purpose's KEK family does not open it either.
    let result = vault.keyring.open_record(Purpose::Card, &here, &record);
    assert!(matches!(result, Err(KeyringError::Integrity)));
    assert_eq!(
        &vault
            .keyring
            .open_record(Purpose::Kyc, &here, &record)
            .unwrap()[..],
        b"Ada Lovelace"
    );
}

#[test]
fn rotation_adds_a_version_and_old_data_still_opens() {
    let vault = passphrase_vault();
    let old = seal(&vault, Purpose::Card, &ctx("card_old"), b"old");
    assert_eq!(old.kek_version(), 1);
    assert_eq!(vault.keyring.rotate(Purpose::Card).unwrap(), 2);
    let new = seal(&vault, Purpose::Card, &ctx("card_new"), b"new");
    assert_eq!(new.kek_version(), 2);
    assert_eq!(
        &open(&vault, Purpose::Card, &ctx("card_old"), &old)[..],
        b"old"
    );
    assert_eq!(
        &open(&vault, Purpose::Card, &ctx("card_new"), &new)[..],
        b"new"
    );

    // Other purposes are untouched.
    let kyc = seal(&vault, Purpose::Kyc, &ctx("kyc_1"), b"x");
    assert_eq!(kyc.kek_version(), 1);

    // Rewrap moves the DEK to the newest version; the data still opens.
    let moved = vault
        .keyring
        .rewrap_record(Purpose::Card, &ctx("card_old"), &old)
        .unwrap()
        .unwrap();
    assert_eq!(moved.kek_version(), 2);
    assert_eq!(
        &open(&vault, Purpose::Card, &ctx("card_old"), &moved)[..],
        b"old"
    );
    assert!(
        vault
            .keyring
            .rewrap_record(Purpose::Card, &ctx("card_old"), &moved)
            .unwrap()
            .is_none()
    );

    let meta = vault.keyring.kek_metadata().unwrap();
    let card: Vec<_> = meta.iter().filter(|m| m.purpose == Purpose::Card).collect();
    assert_eq!(card.len(), 2);
    assert!(!card[0].active && card[1].active);
    assert_eq!(card[0].encryptions, 1);
    assert_eq!(card[1].encryptions, 2);

    // After a restart the rotated versions are still there.
    vault.keyring.seal();
    vault.keyring.unseal(passphrase(PASSPHRASE)).unwrap();
    assert_eq!(
        &open(&vault, Purpose::Card, &ctx("card_old"), &old)[..],
        b"old"
    );
}

#[test]
fn kek_rotates_automatically_at_its_usage_limit() {
    let settings = strongroom::keyring::KeyringSettings {
        kek_usage_limit: 3,
        ..fast_settings()
    };
    let vault = new_vault(
        SealMethod::Passphrase(Zeroizing::new(PASSPHRASE.into())),
        settings,
        Arc::new(strongroom::clock::SystemClock),
    );
    let versions: Vec<u32> = (0..7)
        .map(|i| {
            let id = format!("card_{i}");
            seal(&vault, Purpose::Card, &ctx(&id), b"v").kek_version()
        })
        .collect();
    assert_eq!(versions, [1, 1, 1, 2, 2, 2, 3]);
}

/// A vault on a manual clock whose KEKs have a 30-day cryptoperiod.
fn thirty_day_cryptoperiod_vault() -> (TestVault, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2026-01-01 00:00 UTC),
    ));
    let settings = strongroom::keyring::KeyringSettings {
        kek_cryptoperiod: time::Duration::days(30),
        ..fast_settings()
    };
    let vault = new_vault(
        SealMethod::Passphrase(Zeroizing::new(PASSPHRASE.into())),
        settings,
        clock.clone(),
    );
    (vault, clock)
}

#[test]
fn kek_rotates_automatically_after_its_cryptoperiod() {
    let (vault, clock) = thirty_day_cryptoperiod_vault();
    assert_eq!(
        seal(&vault, Purpose::Bank, &ctx("a"), b"v").kek_version(),
        1
    );
    clock.advance(time::Duration::days(29));
    assert_eq!(
        seal(&vault, Purpose::Bank, &ctx("b"), b"v").kek_version(),
        1
    );
    clock.advance(time::Duration::days(1));
    assert_eq!(
        seal(&vault, Purpose::Bank, &ctx("c"), b"v").kek_version(),
        2
    );
}

#[test]
fn encryption_counts_never_go_backwards_across_restarts() {
    let vault = passphrase_vault();
    for i in 0..10 {
        vault
            .keyring
            .seal_record(Purpose::Generic, &ctx(&format!("g{i}")), b"v")
            .unwrap();
    }
    vault.keyring.seal();
    vault.keyring.unseal(passphrase(PASSPHRASE)).unwrap();
    let meta = vault.keyring.kek_metadata().unwrap();
    let generic = meta.iter().find(|m| m.purpose == Purpose::Generic).unwrap();
    assert!(generic.encryptions >= 10, "{generic:?}");
}

#[test]
fn wrong_passphrase_never_unseals_and_the_right_one_does() {
    let vault = passphrase_vault();
    vault.keyring.seal();
    for wrong in [
        "",
        "correct horse battery stapler",
        "CORRECT HORSE BATTERY STAPLE",
    ] {
        let result = vault.keyring.unseal(passphrase(wrong));
        assert!(
            matches!(result, Err(KeyringError::UnsealFailed(_))),
            "{wrong:?}"
        );
        assert!(vault.keyring.is_sealed());
    }
    assert!(matches!(
        vault.keyring.unseal(share(&"0".repeat(40))),
        Err(KeyringError::UnsealFailed(_))
    ));
    let progress = vault.keyring.unseal(passphrase(PASSPHRASE)).unwrap();
    assert!(!progress.sealed);
    assert!(!vault.keyring.is_sealed());
}

#[test]
fn any_three_of_five_shares_unseal_in_any_order() {
    let vault = shares_vault(5, 3);
    assert_eq!(vault.shares.len(), 5);
    let mut tried = 0;
    for a in 0..5 {
        for b in 0..5 {
            for c in 0..5 {
                if a == b || b == c || a == c {
                    continue;
                }
                vault.keyring.seal();
                let p1 = vault.keyring.unseal(share(&vault.shares[a])).unwrap();
                assert_eq!((p1.sealed, p1.progress, p1.threshold), (true, 1, 3));
                let p2 = vault.keyring.unseal(share(&vault.shares[b])).unwrap();
                assert_eq!((p2.sealed, p2.progress), (true, 2));
                let p3 = vault.keyring.unseal(share(&vault.shares[c])).unwrap();
                assert!(!p3.sealed, "shares {a},{b},{c}");
                tried += 1;
            }
        }
    }
    assert_eq!(tried, 60);
}

#[test]
fn bad_shares_never_count_and_m_minus_one_never_unseal() {
    let vault = shares_vault(5, 3);
    let other = shares_vault(5, 3);
    vault.keyring.seal();

    // M - 1 good shares: still sealed.
    vault.keyring.unseal(share(&vault.shares[0])).unwrap();
    let p = vault.keyring.unseal(share(&vault.shares[1])).unwrap();
    assert_eq!((p.sealed, p.progress), (true, 2));
    // The same share twice adds nothing.
    let p = vault.keyring.unseal(share(&vault.shares[1])).unwrap();
    assert_eq!((p.sealed, p.progress), (true, 2));

    // A typo (caught by the checksum).
    let mut typo = vault.shares[2].clone().into_bytes();
    let i = typo.len() - 20;
    typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    // A forged share: other bytes with a recomputed, valid checksum.
    let parsed = shares::parse(vault.keyring.vault_id(), &vault.shares[2]).unwrap();
    let mut y = *parsed.y;
    y[0] ^= 1;
    let forged = shares::encode(
        vault.keyring.vault_id(),
        &shares::ParsedShare {
            x: parsed.x,
            y: Zeroizing::new(y),
        },
    );
    // A share of another vault.
    let foreign = other.shares[2].clone();
    // A share of another vault relabelled with this vault's id.
    let foreign_parsed = shares::parse(other.keyring.vault_id(), &foreign).unwrap();
    let relabelled = shares::encode(vault.keyring.vault_id(), &foreign_parsed);

    for bad in [
        typo.as_str(),
        forged.as_str(),
        foreign.as_str(),
        relabelled.as_str(),
        "",
        "srs1-00-00-00-00",
    ] {
        let result = vault.keyring.unseal(share(bad));
        assert!(
            matches!(result, Err(KeyringError::UnsealFailed(_))),
            "accepted {bad:?}"
        );
        assert!(vault.keyring.is_sealed());
        assert_eq!(
            vault.keyring.unseal_status().progress,
            2,
            "progress moved after {bad:?}"
        );
    }
    assert!(
        !vault
            .keyring
            .unseal(share(&vault.shares[4]))
            .unwrap()
            .sealed
    );
}

/// Seal wipes the key set in place: whoever still holds it from before can
/// do nothing with it afterwards, and no key material is left in memory
/// even while that holder lives.
#[test]
fn sealing_drops_every_key() {
    let vault = shares_vault(3, 2);
    assert!(vault.keyring.holds_key_material());
    let keys = vault.keyring.keys().unwrap();
    assert!(keys.index_key().is_ok() && keys.audit_signing_key().is_ok());
    vault.keyring.seal();
    assert!(!vault.keyring.holds_key_material());
    assert!(matches!(keys.index_key(), Err(KeyringError::Sealed)));
    assert!(matches!(keys.token_key(), Err(KeyringError::Sealed)));
    assert!(matches!(keys.audit_hmac_key(), Err(KeyringError::Sealed)));
    assert!(matches!(keys.credential_key(), Err(KeyringError::Sealed)));
    assert!(matches!(
        keys.audit_signing_key(),
        Err(KeyringError::Sealed)
    ));
    drop(keys);
    assert!(!vault.keyring.holds_key_material());
    assert!(vault.keyring.is_sealed());
    assert!(matches!(vault.keyring.keys(), Err(KeyringError::Sealed)));
    assert!(matches!(
        vault.keyring.seal_record(Purpose::Card, &ctx("c"), b"x"),
        Err(KeyringError::Sealed)
    ));
    assert!(matches!(
        vault.keyring.kek_metadata(),
        Err(KeyringError::Sealed)
    ));
    // Gathered shares are dropped by seal too.
    vault.keyring.unseal(share(&vault.shares[0])).unwrap();
    vault.keyring.seal();
    assert_eq!(vault.keyring.unseal_status().progress, 0);
}

/// Reads the stored KEKs back with only public primitives and the documented
/// formats, so the test knows every key that must not be on disk.
fn reconstruct_keys(vault: &TestVault) -> (Key256, Vec<Key256>) {
    let parsed: Vec<_> = vault.shares[..2]
        .iter()
        .map(|s| shares::parse(vault.keyring.vault_id(), s).unwrap())
        .collect();
    let root = shares::combine(2, &parsed).unwrap();
    let keyring_key = derive_key(&root, "strongroom/v1/keyring");
    // The erasure epochs' secrets (keys/epoch.json, each sealed under the
    // keyring key), which wrap the KEKs.
    let epoch_file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vault.keys_dir().join("epoch.json")).unwrap())
            .unwrap();
    let mut epochs = std::collections::BTreeMap::new();
    for epoch in epoch_file["epochs"].as_array().unwrap() {
        let n = epoch["epoch"].as_u64().unwrap();
        let envelope =
            Envelope::decode(&hex::decode(epoch["sealed"].as_str().unwrap()).unwrap()).unwrap();
        let aad = Aad::new("strongroom/v1/epoch")
            .part(vault.keyring.vault_id().as_bytes())
            .number(n);
        epochs.insert(
            n,
            Key256::try_from_slice(&envelope.open(&keyring_key, &aad).unwrap()).unwrap(),
        );
    }
    let mut keks = Vec::new();
    for (key, value) in vault.store.scan_prefix(b"kr/kek/").unwrap() {
        let purpose = std::str::from_utf8(&key[7..key.len() - 5])
            .unwrap()
            .to_owned();
        let version = u32::from_be_bytes(key[key.len() - 4..].try_into().unwrap());
        let stored: serde_json::Value = serde_json::from_slice(&value).unwrap();
        let envelope =
            Envelope::decode(&hex::decode(stored["wrapped"].as_str().unwrap()).unwrap()).unwrap();
        let aad = Aad::new("strongroom/v1/kek")
            .part(purpose.as_bytes())
            .number(u64::from(version));
        let wrapping = match stored["epoch"].as_u64() {
            Some(n) => &epochs[&n],
            None => &keyring_key,
        };
        keks.push(Key256::try_from_slice(&envelope.open(wrapping, &aad).unwrap()).unwrap());
    }
    // The epoch secrets must not reach the disk in clear either.
    keks.extend(epochs.into_values());
    (root, keks)
}

#[test]
fn no_key_or_plaintext_reaches_the_data_or_keys_directory() {
    let vault = shares_vault(3, 2);
    let plaintexts: Vec<String> = (0..20)
        .map(|i| format!("PLAINTEXT-CANARY-{i:04}-Ada-Lovelace"))
        .collect();
    let (root, keks) = reconstruct_keys(&vault);
    // One KEK per purpose and the secret of erasure epoch 1.
    assert_eq!(keks.len(), 5);
    let mut deks = Vec::new();
    for (i, text) in plaintexts.iter().enumerate() {
        let id = format!("card_{i}");
        let record = vault
            .keyring
            .seal_record(Purpose::Card, &ctx(&id), text.as_bytes())
            .unwrap();
        let bytes = record.encode();
        vault
            .store
            .put(format!("rec/{id}").as_bytes(), &bytes)
            .unwrap();
        // Unwrap the DEK by the documented layout: [1][u32 len][wrapped][body].
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        let wrapped = Envelope::decode(&bytes[5..5 + len]).unwrap();
        let card_kek = keks
            .iter()
            .find(|k| {
                wrapped
                    .open(
                        k,
                        &Aad::new("strongroom/v1/dek")
                            .part(id.as_bytes())
                            .part(b"card")
                            .number(1),
                    )
                    .is_ok()
            })
            .unwrap();
        let dek = wrapped
            .open(
                card_kek,
                &Aad::new("strongroom/v1/dek")
                    .part(id.as_bytes())
                    .part(b"card")
                    .number(1),
            )
            .unwrap();
        deks.push(Key256::try_from_slice(&dek).unwrap());
    }
    vault.store.flush().unwrap();
    let keyring_key = derive_key(&root, "strongroom/v1/keyring");
    let derived: Vec<Key256> = [
        "strongroom/v1/index",
        "strongroom/v1/token",
        "strongroom/v1/audit-hmac",
        "strongroom/v1/audit-signing",
        "strongroom/v1/credential",
    ]
    .into_iter()
    .map(|label| derive_key(&root, label))
    .collect();

    let dirs = [vault.data_dir(), vault.keys_dir()];
    let dirs: Vec<&std::path::Path> = dirs.iter().map(|d| d.as_path()).collect();
    assert!(
        common::files_under(dirs[0]).len() > 1,
        "the store wrote no files"
    );
    let mut secrets: Vec<(&str, Vec<u8>)> = vec![("root", root.expose_secret().to_vec())];
    secrets.push(("keyring", keyring_key.expose_secret().to_vec()));
    secrets.extend(
        derived
            .iter()
            .map(|k| ("derived", k.expose_secret().to_vec())),
    );
    secrets.extend(keks.iter().map(|k| ("kek", k.expose_secret().to_vec())));
    secrets.extend(deks.iter().map(|k| ("dek", k.expose_secret().to_vec())));
    secrets.extend(
        plaintexts
            .iter()
            .map(|p| ("plaintext", p.as_bytes().to_vec())),
    );
    // The search itself works: ciphertext that is on disk is found.
    let on_disk = vault.store.get(b"rec/card_0").unwrap().unwrap();
    assert!(!common::files_containing(&dirs, &on_disk[5..30]).is_empty());
    for (what, secret) in &secrets {
        let hits = common::files_containing(&dirs, secret);
        assert!(hits.is_empty(), "a {what} was found in {hits:?}");
    }
    // The shares are not on disk either.
    for s in &vault.shares {
        assert!(common::files_containing(&dirs, s.as_bytes()).is_empty());
    }
}

#[test]
fn a_data_directory_of_another_vault_is_refused() {
    let a = passphrase_vault();
    let b = passphrase_vault();
    let result = strongroom::keyring::Keyring::open(
        &b.keys_dir(),
        Arc::clone(&a.store),
        Arc::new(strongroom::clock::SystemClock),
        fast_settings(),
    );
    assert!(matches!(result, Err(KeyringError::Config(_))));
}

#[test]
fn a_key_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let vault = passphrase_vault();
    let root = vault.keys_dir().join("root.json");
    assert_eq!(
        std::fs::metadata(&root).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let open = || {
        strongroom::keyring::Keyring::open(
            &vault.keys_dir(),
            Arc::clone(&vault.store),
            Arc::new(strongroom::clock::SystemClock),
            fast_settings(),
        )
    };
    assert!(open().is_ok());
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(matches!(open(), Err(KeyringError::InsecureKeyFile(_))));
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o604)).unwrap();
    assert!(matches!(open(), Err(KeyringError::InsecureKeyFile(_))));
}

#[test]
fn init_refuses_to_overwrite_a_vault() {
    let vault = passphrase_vault();
    let result = strongroom::keyring::Keyring::init(
        &vault.keys_dir(),
        Arc::clone(&vault.store),
        Arc::new(strongroom::clock::SystemClock),
        fast_settings(),
        SealMethod::Shares {
            count: 3,
            threshold: 2,
        },
    );
    assert!(matches!(result, Err(KeyringError::AlreadyInitialised)));
}

#[test]
fn stored_argon2_parameters_outside_the_policy_are_refused() {
    let vault = passphrase_vault();
    vault.keyring.seal();
    let strict = strongroom::keyring::Keyring::open(
        &vault.keys_dir(),
        Arc::clone(&vault.store),
        Arc::new(strongroom::clock::SystemClock),
        strongroom::keyring::KeyringSettings::default(),
    )
    .unwrap();
    // The test vault's tiny parameters are below the production floor.
    let result = strict.unseal(passphrase(PASSPHRASE));
    assert!(
        matches!(result, Err(KeyringError::Config(_))),
        "{:?}",
        result.map(|_| ())
    );
    assert!(strict.is_sealed());
}

#[test]
fn a_shares_vault_reopened_from_disk_unseals() {
    for vault in [shares_vault(3, 2), passphrase_vault()] {
        let reopened = strongroom::keyring::Keyring::open(
            &vault.keys_dir(),
            Arc::clone(&vault.store),
            Arc::new(strongroom::clock::SystemClock),
            fast_settings(),
        )
        .unwrap();
        assert!(reopened.is_sealed());
        let record = seal(&vault, Purpose::Card, &ctx("card_r"), b"reopened");
        unseal_with(&vault, &reopened, [2, 0]);
        assert!(!reopened.is_sealed());
        assert_eq!(
            &reopened
                .open_record(Purpose::Card, &ctx("card_r"), &record)
                .unwrap()[..],
            b"reopened"
        );
    }
}

/// Unseals `keyring` with the vault's passphrase, or with the two shares
/// named by `shares` when the vault was made with shares.
fn unseal_with(vault: &TestVault, keyring: &strongroom::keyring::Keyring, shares: [usize; 2]) {
    if vault.shares.is_empty() {
        keyring.unseal(passphrase(PASSPHRASE)).unwrap();
    } else {
        for i in shares {
            keyring.unseal(share(&vault.shares[i])).unwrap();
        }
    }
}

/// The `key.rotate` entries of a vault's audit log.
fn rotation_entries(vault: &TestVault) -> Vec<strongroom::audit::AuditEntry> {
    let (entries, _) = vault
        .state
        .audit
        .query(&strongroom::audit::AuditQuery {
            action: Some("key.rotate".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    entries
}

/// A KEK version that reaches its usage limit is replaced automatically,
/// and the new version is written together with a `key.rotate` entry by
/// `system` that names the trigger; when that entry cannot be written, no
/// new version exists either.
#[test]
fn automatic_kek_rotation_is_audited_with_the_new_version() {
    let settings = strongroom::keyring::KeyringSettings {
        kek_usage_limit: 2,
        ..fast_settings()
    };
    let (vault, faulty) = faulty_vault_with(settings, Arc::new(strongroom::clock::SystemClock));
    for i in 0..3 {
        seal(&vault, Purpose::Card, &ctx(&format!("card_{i}")), b"v");
    }
    let rotations = rotation_entries(&vault);
    assert_eq!(rotations.len(), 1, "{rotations:?}");
    let entry = &rotations[0];
    assert_eq!(entry.actor, "system");
    assert_eq!(entry.target.as_deref(), Some("kek/card"));
    assert_eq!(entry.outcome, strongroom::audit::Outcome::Allowed);
    let reason = entry.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("usage limit"), "{reason}");
    assert!(reason.contains("version 2"), "{reason}");

    // No entry, no version: the next rotation fails whole.
    faulty.set_failing(true);
    let mut refused = 0;
    for i in 3..6 {
        if vault
            .keyring
            .seal_record(Purpose::Card, &ctx(&format!("card_{i}")), b"v")
            .is_err()
        {
            refused += 1;
        }
    }
    faulty.set_failing(false);
    assert!(refused > 0, "the rotation needed no audit entry");
    let card_versions = |vault: &TestVault| vault.store.scan_prefix(b"kr/kek/card/").unwrap().len();
    assert_eq!(card_versions(&vault), 2);
    assert_eq!(rotation_entries(&vault).len(), 1);
}

#[test]
fn a_cryptoperiod_rotation_is_audited_naming_the_cryptoperiod() {
    let (vault, clock) = thirty_day_cryptoperiod_vault();
    clock.advance(time::Duration::days(31));
    assert_eq!(
        seal(&vault, Purpose::Bank, &ctx("a"), b"v").kek_version(),
        2
    );
    let rotations = rotation_entries(&vault);
    assert_eq!(rotations.len(), 1, "{rotations:?}");
    assert_eq!(rotations[0].actor, "system");
    assert_eq!(rotations[0].target.as_deref(), Some("kek/bank"));
    let reason = rotations[0].reason.as_deref().unwrap_or_default();
    assert!(reason.contains("cryptoperiod"), "{reason}");
}

/// A ring key built for a use in progress when seal is called (on another
/// thread: the handle cannot cross threads or `.await`s) is not outlived by
/// seal: seal returns only once it has been dropped, and from then on
/// nothing is left.
#[test]
fn seal_returns_only_after_every_key_in_use_is_dropped() {
    use std::sync::mpsc::channel;
    let vault = std::sync::Arc::new(passphrase_vault());
    let (built, key_built) = channel();
    let (release, released) = channel::<()>();
    let user = {
        let vault = std::sync::Arc::clone(&vault);
        std::thread::spawn(move || {
            let keys = vault.keyring.keys().unwrap();
            let key = keys.credential_key().unwrap();
            built.send(()).unwrap();
            released.recv().unwrap();
            // Still usable: the use began before seal.
            key.sign(b"in flight")
        })
    };
    key_built.recv().unwrap();
    let sealer = {
        let vault = std::sync::Arc::clone(&vault);
        std::thread::spawn(move || vault.keyring.seal())
    };
    wait_until("seal to take the keys", || vault.keyring.is_sealed());
    // New uses are refused at once, while seal waits for the one in flight.
    assert!(vault.keyring.keys().is_err());
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        !sealer.is_finished(),
        "seal returned while a key was in use"
    );
    assert!(vault.keyring.holds_key_material());
    release.send(()).unwrap();
    user.join().unwrap();
    sealer.join().unwrap();
    assert!(!vault.keyring.holds_key_material());
}

/// Another node over `vault`'s store, keyed by `keys_dir`, sealed.
fn node(
    vault: &TestVault,
    keys_dir: &std::path::Path,
) -> Result<strongroom::keyring::Keyring, KeyringError> {
    strongroom::keyring::Keyring::open(
        keys_dir,
        Arc::clone(&vault.store),
        Arc::new(strongroom::clock::SystemClock),
        fast_settings(),
    )
}

/// A keys directory holding only `vault`'s public `audit.pub`.
/// A keys directory with `audit.pub` and, since the vault is on an
/// embedded store, its erasure epochs' `epoch.json` (sealed: a store of
/// one node keeps its epoch secrets in its keys directory; a PostgreSQL
/// vault has none, docs/lifecycle.md), but no `root.json`.
fn audit_pub_only(vault: &TestVault) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["audit.pub", "epoch.json"] {
        std::fs::copy(vault.keys_dir().join(name), dir.path().join(name)).unwrap();
    }
    dir
}

/// The root record is in the store from `init` on (what `root.json` holds,
/// sealed): a node whose keys directory holds only the public `audit.pub`
/// opens and unseals from it, and opens what the first node sealed.
#[test]
fn a_node_with_only_audit_pub_unseals_from_the_stored_root_record() {
    for vault in [passphrase_vault(), shares_vault(3, 2)] {
        let stored = vault.store.get(b"kr/root").unwrap().unwrap();
        let file = std::fs::read(vault.keys_dir().join("root.json")).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&stored).unwrap(),
            serde_json::from_slice::<serde_json::Value>(&file).unwrap()
        );
        let keys = audit_pub_only(&vault);
        let other = node(&vault, keys.path()).unwrap();
        assert!(other.is_sealed());
        let record = seal(&vault, Purpose::Kyc, &ctx("kyc_n"), b"from node A");
        unseal_with(&vault, &other, [1, 2]);
        assert!(!other.is_sealed());
        assert_eq!(
            &other
                .open_record(Purpose::Kyc, &ctx("kyc_n"), &record)
                .unwrap()[..],
            b"from node A"
        );
        // Nothing was written into that keys directory.
        assert_eq!(std::fs::read_dir(keys.path()).unwrap().count(), 2);
    }
    // Without root.json, audit.pub is required; without either, nothing opens.
    let vault = passphrase_vault();
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        node(&vault, empty.path()),
        Err(KeyringError::Config(_))
    ));
    vault.store.delete(b"kr/root").unwrap();
    let keys = audit_pub_only(&vault);
    assert!(matches!(
        node(&vault, keys.path()),
        Err(KeyringError::Config(_))
    ));
}

/// Someone who can write the database replaces the root record with one
/// sealed under their own passphrase (and the vault id with theirs, so
/// that everything else agrees): the record is well formed, its
/// root_check matches its own root, and the passphrase opens it. A node
/// holding the vault's audit.pub refuses the unseal all the same, and
/// stays sealed. With root.json beside, the mismatch is refused at open.
#[test]
fn a_substituted_root_record_is_refused() {
    let vault = passphrase_vault();
    let attacker = new_vault(
        SealMethod::Passphrase(Zeroizing::new("the attacker's passphrase".to_owned())),
        fast_settings(),
        Arc::new(strongroom::clock::SystemClock),
    );
    let forged = attacker.store.get(b"kr/root").unwrap().unwrap();
    let forged_id = attacker.store.get(b"kr/vault").unwrap().unwrap();
    vault.store.put(b"kr/root", &forged).unwrap();
    vault.store.put(b"kr/vault", &forged_id).unwrap();

    let keys = audit_pub_only(&vault);
    let other = node(&vault, keys.path()).unwrap();
    let refused = other.unseal(passphrase("the attacker's passphrase"));
    assert!(
        matches!(refused, Err(KeyringError::UnsealFailed(why)) if why.contains("audit.pub")),
        "{:?}",
        refused.map(|_| ())
    );
    assert!(other.is_sealed());
    assert!(!other.holds_key_material());
    // The real passphrase does not open the forged record either.
    assert!(other.unseal(passphrase(PASSPHRASE)).is_err());
    assert!(other.is_sealed());

    // A node with the vault's root.json: the two records differ.
    vault
        .store
        .put(b"kr/vault", vault.keyring.vault_id().as_bytes())
        .unwrap();
    let mismatch = node(&vault, &vault.keys_dir());
    assert!(
        matches!(&mismatch, Err(KeyringError::Config(why)) if why.contains("differ")),
        "{:?}",
        mismatch.map(|_| ())
    );
}

/// A vault made before the store held the root record works from
/// root.json, and its first unseal stores the record (so that further
/// nodes can join).
#[test]
fn a_vault_without_a_stored_root_record_still_opens_and_stores_it() {
    let vault = shares_vault(3, 2);
    vault.store.delete(b"kr/root").unwrap();
    let reopened = node(&vault, &vault.keys_dir()).unwrap();
    reopened.unseal(share(&vault.shares[0])).unwrap();
    assert!(
        vault.store.get(b"kr/root").unwrap().is_none(),
        "stored before the unseal"
    );
    reopened.unseal(share(&vault.shares[1])).unwrap();
    assert!(!reopened.is_sealed());
    let stored = vault.store.get(b"kr/root").unwrap().unwrap();
    let file = std::fs::read(vault.keys_dir().join("root.json")).unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&stored).unwrap(),
        serde_json::from_slice::<serde_json::Value>(&file).unwrap()
    );
    // And now a node with audit.pub alone joins.
    let keys = audit_pub_only(&vault);
    let other = node(&vault, keys.path()).unwrap();
    other.unseal(share(&vault.shares[2])).unwrap();
    other.unseal(share(&vault.shares[0])).unwrap();
    assert!(!other.is_sealed());
}

/// Two keyrings over one store (two nodes), encrypting at once: their
/// positions in the KEK version's counter lie in blocks of their own, and
/// the stored counter covers both. When one rotates a purpose, the other's
/// next encryption uses the new version, it opens what the first sealed
/// under it, and lists it.
#[test]
fn two_nodes_share_kek_counters_and_rotations_through_the_store() {
    let vault = passphrase_vault();
    let other = node(&vault, &vault.keys_dir()).unwrap();
    other.unseal(passphrase(PASSPHRASE)).unwrap();
    let nodes = [&*vault.keyring, &other];
    std::thread::scope(|s| {
        for (n, keyring) in nodes.iter().enumerate() {
            for t in 0..2 {
                s.spawn(move || {
                    for i in 0..300 {
                        let id = format!("card_{n}_{t}_{i}");
                        keyring.seal_record(Purpose::Card, &ctx(&id), b"x").unwrap();
                    }
                });
            }
        }
    });
    let position = |keyring: &strongroom::keyring::Keyring| {
        keyring
            .kek_metadata()
            .unwrap()
            .into_iter()
            .find(|m| m.purpose == Purpose::Card && m.version == 1)
            .unwrap()
            .encryptions
    };
    let (a, b) = (position(nodes[0]), position(nodes[1]));
    // Each wrote 600 in one block of 1024 of its own.
    assert_ne!((a - 1) / 1024, (b - 1) / 1024, "{a} and {b} share a block");
    let mut card_v1 = b"kr/kek/card/".to_vec();
    card_v1.extend_from_slice(&1u32.to_be_bytes());
    let stored: serde_json::Value =
        serde_json::from_slice(&vault.store.get(&card_v1).unwrap().unwrap()).unwrap();
    assert!(stored["reserved"].as_u64().unwrap() >= a.max(b));

    // Node A rotates; node B follows from its next encryption on.
    assert_eq!(vault.keyring.rotate(Purpose::Card).unwrap(), 2);
    let sealed_b = other
        .seal_record(Purpose::Card, &ctx("card_b"), b"b")
        .unwrap();
    assert_eq!(sealed_b.kek_version(), 2);
    let sealed_a = seal(&vault, Purpose::Card, &ctx("card_a"), b"a");
    assert_eq!(
        &other
            .open_record(Purpose::Card, &ctx("card_a"), &sealed_a)
            .unwrap()[..],
        b"a"
    );
    assert!(
        other
            .kek_metadata()
            .unwrap()
            .iter()
            .any(|m| m.purpose == Purpose::Card && m.version == 2 && m.active)
    );
}
