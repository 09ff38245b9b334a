//! Property-based stand-ins for the fuzz targets, run in the normal suite:
//! arbitrary input to every parser of untrusted bytes must give an answer
//! or an error, never a panic, and never accept a mutated ciphertext.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use proptest::prelude::*;
use strongroom::crypto::{Aad, Envelope, HmacKey, Key256};
use strongroom::keyring::SealedRecord;
use strongroom::keyring::shares;
use strongroom::records::{RecordData, RecordType, search_value};
use strongroom::tokens::{TokenRecord, looks_like_token, token_key_for};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn envelope_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let key = Key256::from_bytes([7; 32]);
        if let Ok(envelope) = Envelope::decode(&bytes) {
            // Random bytes never authenticate.
            prop_assert!(envelope.open(&key, &Aad::new("fuzz")).is_err());
        }
    }

    #[test]
    fn mutated_envelopes_never_open(index in any::<prop::sample::Index>(), bit in 0u8..8, plaintext in proptest::collection::vec(any::<u8>(), 0..64)) {
        let key = Key256::from_bytes([9; 32]);
        let aad = Aad::new("fuzz").part(b"record");
        let mut bytes = Envelope::seal(&key, "kek/card", 1, &aad, &plaintext).unwrap().encode();
        let i = index.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let opened = Envelope::decode(&bytes).and_then(|e| e.open(&key, &aad));
        prop_assert!(opened.is_err());
    }

    #[test]
    fn sealed_record_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = SealedRecord::decode(&bytes);
    }

    #[test]
    fn share_parser_never_panics(text in ".{0,120}", vault in "[0-9a-f]{16}") {
        let _ = shares::parse(&vault, &text);
    }

    #[test]
    fn share_shaped_garbage_is_refused(x in "[0-9a-f]{2}", y in "[0-9a-f]{64}", check in "[0-9a-f]{8}") {
        let vault = "0011223344556677";
        // A random checksum matches with chance 2^-32.
        let text = format!("srs1-{vault}-{x}-{y}-{check}");
        prop_assert!(shares::parse(vault, &text).is_err());
    }

    #[test]
    fn printed_shares_parse_back_and_one_changed_character_is_refused(
        x in 1u8..=255, y in any::<[u8; 32]>(), at in any::<prop::sample::Index>(), replacement in any::<u8>(),
    ) {
        let vault = "0011223344556677";
        let printed = shares::encode(vault, &shares::ParsedShare { x, y: zeroize::Zeroizing::new(y) });
        let back = shares::parse(vault, &printed).unwrap();
        prop_assert_eq!((back.x, *back.y), (x, y));
        let mut changed = printed.as_bytes().to_vec();
        let i = at.index(changed.len());
        prop_assume!(!changed[i].eq_ignore_ascii_case(&replacement));
        changed[i] = replacement;
        if let Ok(text) = std::str::from_utf8(&changed) {
            prop_assert!(shares::parse(vault, text).is_err(), "{:?} parsed", text);
        }
    }

    #[test]
    fn token_shape_check_never_panics(text in ".{0,80}") {
        if looks_like_token(&text) {
            let key = token_key_for(&HmacKey::from_bytes(b"fuzz token key"), &text);
            prop_assert!(key.len() == 67 && key.starts_with("tk/"));
        }
    }

    #[test]
    fn stored_token_records_decode_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = serde_json::from_slice::<TokenRecord>(&bytes);
    }

    #[test]
    fn search_normalisation_never_panics(field in "(pan|email|phone|national_id|other)", value in ".{0,60}", country in proptest::option::of("[A-Za-z]{0,3}")) {
        let _ = search_value(&field, &value, country.as_deref());
    }

    #[test]
    fn record_parsers_never_panic(text in ".{0,200}", kind in 0usize..3) {
        let now = time::macros::datetime!(2026-11-27 00:00 UTC);
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
            && let Ok(record) = RecordData::parse(RecordType::ALL[kind], value, now)
        {
            // What is accepted is stored as JSON and must read back the same.
            let stored = serde_json::to_vec(&record).unwrap();
            prop_assert_eq!(serde_json::from_slice::<RecordData>(&stored).unwrap(), record);
        }
    }

    #[test]
    fn record_parsers_take_any_field_values(
        pan in ".{0,25}", month in any::<i64>(), year in any::<i64>(), iban in ".{0,40}",
        dob in ".{0,12}", email in ".{0,40}", phone in ".{0,20}", country in ".{0,4}",
    ) {
        let now = time::macros::datetime!(2026-11-27 00:00 UTC);
        let card = serde_json::json!({"pan": pan, "exp_month": month, "exp_year": year});
        let _ = RecordData::parse(RecordType::Card, card, now);
        let bank = serde_json::json!({"iban": iban, "country": country});
        let _ = RecordData::parse(RecordType::BankAccount, bank, now);
        let kyc = serde_json::json!({
            "legal_name": {"given": "A", "family": "B"}, "date_of_birth": dob, "email": email, "phone": phone,
            "nationality": country, "national_id": {"type": "passport", "number": pan, "country": country}
        });
        let _ = RecordData::parse(RecordType::Kyc, kyc, now);
    }
}
