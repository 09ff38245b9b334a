//! Third-party test vectors (tests/vectors/README.md) run against
//! Strongroom's crypto wrappers and the crates under them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

use serde_json::Value;
use strongroom::crypto::{
    Argon2Params, HmacKey, KdfPolicy, Key256, aead_open, aead_seal, derive_key_from_passphrase,
    hkdf_sha256,
};
use strongroom::keyring::shares::{RawShare, ShareError, combine_secret, split_secret};
use zeroize::Zeroizing;

fn load(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn hex_field(test: &Value, field: &str) -> Vec<u8> {
    hex::decode(test[field].as_str().unwrap()).unwrap()
}

fn tests_of(file: &Value) -> impl Iterator<Item = (&Value, &Value)> {
    file["testGroups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["tests"].as_array().unwrap().iter().map(move |t| (g, t)))
}

fn gcm_other_key_size(
    key: &[u8],
    iv: &[u8],
    aad: &[u8],
    msg: &[u8],
    ct_tag: &[u8],
) -> (Vec<u8>, bool) {
    use aes_gcm::aead::{Aead, KeyInit, Payload, consts::U12};
    use aes_gcm::{Aes128Gcm, AesGcm, Nonce, aes::Aes192};
    let nonce = Nonce::<U12>::from_slice(iv);
    match key.len() {
        16 => {
            let c = Aes128Gcm::new_from_slice(key).unwrap();
            let sealed = c.encrypt(nonce, Payload { msg, aad }).unwrap();
            let opened = c.decrypt(nonce, Payload { msg: ct_tag, aad });
            (sealed, opened.is_ok_and(|p| p == msg))
        }
        24 => {
            let c = AesGcm::<Aes192, U12>::new_from_slice(key).unwrap();
            let sealed = c.encrypt(nonce, Payload { msg, aad }).unwrap();
            let opened = c.decrypt(nonce, Payload { msg: ct_tag, aad });
            (sealed, opened.is_ok_and(|p| p == msg))
        }
        n => panic!("unexpected key length {n}"),
    }
}

#[test]
fn wycheproof_aes_gcm_every_96_bit_iv_case() {
    let file = load("wycheproof/aes_gcm_test.json");
    let (mut ran, mut ran_256) = (0, 0);
    for (group, test) in tests_of(&file) {
        if group["ivSize"] != 96 {
            continue;
        }
        ran += 1;
        let id = &test["tcId"];
        let (key, iv, aad, msg) = (
            hex_field(test, "key"),
            hex_field(test, "iv"),
            hex_field(test, "aad"),
            hex_field(test, "msg"),
        );
        let mut ct_tag = hex_field(test, "ct");
        ct_tag.extend(hex_field(test, "tag"));
        let valid = test["result"] == "valid";
        let nonce: [u8; 12] = iv.as_slice().try_into().unwrap();
        let (sealed, opens) = if key.len() == 32 {
            ran_256 += 1;
            let key = Key256::try_from_slice(&key).unwrap();
            let sealed = aead_seal(&key, &nonce, &aad, &msg).unwrap();
            let opened = aead_open(&key, &nonce, &aad, &ct_tag);
            (sealed, opened.is_ok_and(|p| p[..] == msg[..]))
        } else {
            gcm_other_key_size(&key, &iv, &aad, &msg, &ct_tag)
        };
        if valid {
            assert_eq!(sealed, ct_tag, "tcId {id}: wrong ciphertext");
            assert!(opens, "tcId {id}: valid case did not open");
        } else {
            assert!(!opens, "tcId {id}: invalid case opened");
        }
    }
    assert!(
        ran >= 150 && ran_256 == 66,
        "ran {ran} cases, {ran_256} with AES-256"
    );
}

#[test]
fn wycheproof_hmac_sha256_every_case() {
    let file = load("wycheproof/hmac_sha256_test.json");
    let mut ran = 0;
    for (group, test) in tests_of(&file) {
        ran += 1;
        let key = HmacKey::from_bytes(&hex_field(test, "key"));
        let (msg, tag) = (hex_field(test, "msg"), hex_field(test, "tag"));
        let id = &test["tcId"];
        if test["result"] == "valid" {
            assert!(key.verify(&msg, &tag).is_ok(), "tcId {id}");
            if group["tagSize"] == 256 {
                assert_eq!(key.sign(&msg).0.to_vec(), tag, "tcId {id}");
            }
        } else {
            assert!(
                key.verify(&msg, &tag).is_err(),
                "tcId {id}: bad tag accepted"
            );
        }
    }
    assert_eq!(ran, 174);
}

#[test]
fn wycheproof_hkdf_sha256_every_case() {
    let file = load("wycheproof/hkdf_sha256_test.json");
    let mut ran = 0;
    for (_, test) in tests_of(&file) {
        ran += 1;
        let size = usize::try_from(test["size"].as_u64().unwrap()).unwrap();
        let mut out = vec![0u8; size];
        let result = hkdf_sha256(
            &hex_field(test, "ikm"),
            &hex_field(test, "salt"),
            &hex_field(test, "info"),
            &mut out,
        );
        let id = &test["tcId"];
        if test["result"] == "valid" {
            result.unwrap();
            assert_eq!(out, hex_field(test, "okm"), "tcId {id}");
        } else {
            assert!(result.is_err(), "tcId {id}: oversized output accepted");
        }
    }
    assert_eq!(ran, 86);
}

#[test]
fn rfc9106_argon2id_vector() {
    use argon2::{Algorithm, Argon2, AssociatedData, ParamsBuilder, Version};
    let file = load("argon2/argon2.json");
    let kat = file["reference_kats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["type"] == "argon2id" && k["version"] == 19 && k["in_rfc9106"] == true)
        .unwrap();
    let ad = hex_field(kat, "ad_hex");
    let params = ParamsBuilder::new()
        .m_cost(kat["m_cost_kib"].as_u64().unwrap() as u32)
        .t_cost(kat["t_cost"].as_u64().unwrap() as u32)
        .p_cost(kat["parallelism"].as_u64().unwrap() as u32)
        .output_len(32)
        .data(AssociatedData::new(&ad).unwrap())
        .build()
        .unwrap();
    let secret = hex_field(kat, "secret_hex");
    let argon =
        Argon2::new_with_secret(&secret, Algorithm::Argon2id, Version::V0x13, params).unwrap();
    let mut tag = [0u8; 32];
    argon
        .hash_password_into(
            &hex_field(kat, "password_hex"),
            &hex_field(kat, "salt_hex"),
            &mut tag,
        )
        .unwrap();
    assert_eq!(
        hex::encode(tag),
        "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659"
    );
    assert_eq!(tag.to_vec(), hex_field(kat, "tag_hex"));
}

#[test]
fn passphrase_wrapper_is_plain_argon2id() {
    use argon2::{Algorithm, Argon2, Params, Version};
    let params = Argon2Params {
        m_kib: 32,
        t: 3,
        p: 4,
    };
    let ours = derive_key_from_passphrase(
        &KdfPolicy::danger_insecure_for_tests(),
        &params,
        b"password",
        &[2; 16],
    )
    .unwrap();
    let mut theirs = [0u8; 32];
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(32, 3, 4, Some(32)).unwrap(),
    )
    .hash_password_into(b"password", &[2; 16], &mut theirs)
    .unwrap();
    assert_eq!(ours.expose_secret(), &theirs);
}

#[test]
fn argon2id_phc_strings_verify() {
    use argon2::{Argon2, PasswordHash, PasswordVerifier};
    let file = load("argon2/argon2.json");
    let mut ran = 0;
    for case in file["phc_encoded"].as_array().unwrap() {
        if case["type"] != "argon2id" || case["requires_large_ram"] == true {
            continue;
        }
        ran += 1;
        let hash = PasswordHash::new(case["encoded"].as_str().unwrap()).unwrap();
        let password = case["password"].as_str().unwrap();
        assert!(
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"passwore", &hash)
                .is_err()
        );
    }
    assert!(ran >= 4, "only {ran} argon2id PHC cases");
}

fn tss_share(hex_text: &str) -> RawShare {
    let bytes = hex::decode(hex_text).unwrap();
    RawShare {
        x: bytes[0],
        y: Zeroizing::new(bytes[1..].to_vec()),
    }
}

/// Vault's layout puts x last.
fn vault_share(hex_text: &str) -> RawShare {
    let bytes = hex::decode(hex_text).unwrap();
    let (y, x) = bytes.split_at(bytes.len() - 1);
    RawShare {
        x: x[0],
        y: Zeroizing::new(y.to_vec()),
    }
}

#[test]
fn shamir_combine_kat() {
    let file = load("shamir/shamir_gf256.json");
    for kat in file["combine_kats"].as_array().unwrap() {
        let shares: Vec<RawShare> = kat["tss_share_encoding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| tss_share(s.as_str().unwrap()))
            .collect();
        let threshold = kat["threshold"].as_u64().unwrap() as usize;
        let secret = combine_secret(threshold, &shares).unwrap();
        assert_eq!(
            hex::encode(&secret[..]),
            kat["secret_hex"].as_str().unwrap()
        );
        // Order does not matter.
        let reversed: Vec<RawShare> = shares.into_iter().rev().collect();
        assert_eq!(
            hex::encode(&combine_secret(threshold, &reversed).unwrap()[..]),
            kat["secret_hex"].as_str().unwrap()
        );
    }
}

#[test]
fn shamir_invalid_combines_are_refused() {
    let file = load("shamir/shamir_gf256.json");
    let cases = file["invalid_combine"].as_array().unwrap();
    for case in cases {
        let shares: Vec<RawShare> = if let Some(tss) = case.get("shares_tss_encoding") {
            tss.as_array()
                .unwrap()
                .iter()
                .map(|s| tss_share(s.as_str().unwrap()))
                .collect()
        } else {
            case["parts_vault_encoding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| vault_share(s.as_str().unwrap()))
                .collect()
        };
        let result = combine_secret(2, &shares);
        assert!(
            matches!(result, Err(ShareError::InvalidCombine(_))),
            "accepted: {}",
            case["reason"]
        );
    }
    assert_eq!(cases.len(), 5);
}

#[test]
fn shamir_invalid_splits_are_refused_and_subsets_recombine() {
    let file = load("shamir/shamir_gf256.json");
    for case in file["invalid_split"].as_array().unwrap() {
        let secret = case["secret_text"].as_str().unwrap_or("").as_bytes();
        let parts = case["parts"].as_u64().unwrap() as usize;
        let threshold = case["threshold"].as_u64().unwrap() as usize;
        assert!(
            matches!(
                split_secret(secret, threshold, parts),
                Err(ShareError::InvalidSplit(_))
            ),
            "accepted: {}",
            case["reason"]
        );
    }
    for case in file["split_properties"].as_array().unwrap() {
        let secret = case["secret_text"].as_str().unwrap().as_bytes();
        let parts = case["parts"].as_u64().unwrap() as usize;
        let threshold = case["threshold"].as_u64().unwrap() as usize;
        let shares = split_secret(secret, threshold, parts).unwrap();
        assert_eq!(shares.len(), parts);
        let mut combos = 0;
        for a in 0..parts {
            for b in 0..parts {
                for c in 0..parts {
                    if a == b || b == c || a == c {
                        continue;
                    }
                    let subset: Vec<RawShare> = [a, b, c]
                        .iter()
                        .map(|&i| RawShare {
                            x: shares[i].x,
                            y: shares[i].y.clone(),
                        })
                        .collect();
                    assert_eq!(&combine_secret(threshold, &subset).unwrap()[..], secret);
                    combos += 1;
                }
            }
        }
        assert_eq!(combos, 60);
        // Two shares are not enough for a threshold of three.
        let two: Vec<RawShare> = shares[..2]
            .iter()
            .map(|s| RawShare {
                x: s.x,
                y: s.y.clone(),
            })
            .collect();
        assert!(combine_secret(threshold, &two).is_err());
    }
}

fn expect_record(
    record_type: strongroom::records::RecordType,
    body: Value,
) -> Result<strongroom::records::RecordData, Vec<strongroom::records::Invalid>> {
    let now = time::macros::datetime!(2026-11-27 00:00 UTC);
    strongroom::records::RecordData::parse(record_type, body, now)
}

#[test]
fn public_test_cards() {
    use strongroom::records::{RecordData, RecordType};
    let file = load("cards/cards.json");
    let mut accepted = 0;
    for case in file["valid_cards"].as_array().unwrap() {
        let number = case["number"].as_str().unwrap();
        let body = serde_json::json!({"pan": number, "exp_month": 12, "exp_year": 2030});
        let Ok(RecordData::Card(card)) = expect_record(RecordType::Card, body) else {
            panic!("{number} refused");
        };
        assert_eq!(
            serde_json::to_value(card.brand).unwrap(),
            case["brand"],
            "{number}"
        );
        accepted += 1;
    }
    assert_eq!(accepted, 47);
    for case in file["invalid_cards"].as_array().unwrap() {
        let number = case["number"].as_str().unwrap();
        let body = serde_json::json!({"pan": number, "exp_month": 12, "exp_year": 2030});
        let result = expect_record(RecordType::Card, body);
        if number == "4242 4242 4242 4242" {
            let Ok(RecordData::Card(card)) = result else {
                panic!("normalisation failed")
            };
            assert_eq!(card.pan, "4242424242424242");
            continue;
        }
        let errors = result
            .err()
            .unwrap_or_else(|| panic!("{number:?} accepted ({})", case["reason"]));
        assert_eq!(errors[0].field, "pan");
        assert!(number.is_empty() || !errors[0].message.contains(number));
    }
}

#[test]
fn iban_registry_examples() {
    use strongroom::records::{RecordData, RecordType};
    let file = load("iban/ibans.json");
    for case in file["valid_ibans"].as_array().unwrap() {
        let forms = [case["iban"].as_str(), case["iban_print"].as_str()];
        for iban in forms.into_iter().flatten() {
            let Ok(RecordData::BankAccount(bank)) =
                expect_record(RecordType::BankAccount, serde_json::json!({"iban": iban}))
            else {
                panic!("{iban} refused");
            };
            assert_eq!(bank.iban.as_deref(), case["iban"].as_str());
            assert_eq!(
                serde_json::json!(bank.country),
                case["country_code"],
                "{iban}"
            );
        }
    }
    let normalised_into_valid = ["DE4 450 010 517 540 732 493 1"];
    let mut refused = 0;
    for case in file["invalid_ibans"].as_array().unwrap() {
        let iban = case["iban"].as_str().unwrap();
        let result = expect_record(RecordType::BankAccount, serde_json::json!({"iban": iban}));
        if normalised_into_valid.contains(&iban) {
            assert!(result.is_ok(), "{iban}");
            continue;
        }
        let errors = result
            .err()
            .unwrap_or_else(|| panic!("{iban:?} accepted ({})", case["reason"]));
        assert_eq!(errors[0].field, "iban");
        refused += 1;
    }
    assert_eq!(refused, 44);
}
