//! Token parsing: any string a caller sends to detokenize, and any bytes
//! stored under a token key. The shape check and the store-key derivation
//! must never panic, and every token maps to one fixed-shape store key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strongroom::crypto::HmacKey;
use strongroom::tokens::{TokenRecord, looks_like_token, token_key_for};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && looks_like_token(text)
    {
        let key = token_key_for(&HmacKey::from_bytes(b"fuzz token key"), text);
        assert_eq!(key.len(), 3 + 64);
        assert!(key.starts_with("tk/"));
    }
    let _ = serde_json::from_slice::<TokenRecord>(data);
});
