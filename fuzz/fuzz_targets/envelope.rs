//! The envelope and sealed-record decoders: any bytes read back from the
//! store. Must answer or refuse, never panic, and nothing that decodes may
//! open under a key it was not sealed with.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strongroom::crypto::{Aad, Envelope, Key256};
use strongroom::keyring::SealedRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(data) {
        let key = Key256::from_bytes([7; 32]);
        assert!(envelope.open(&key, &Aad::new("fuzz")).is_err());
        // Decoding is the inverse of encoding.
        assert_eq!(
            Envelope::decode(&envelope.encode())
                .map(|e| e.encode())
                .ok(),
            Some(envelope.encode())
        );
    }
    let _ = SealedRecord::decode(data);
});
