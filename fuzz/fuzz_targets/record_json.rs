//! The record JSON parsers: any bytes a client can send as a record body.
//! Must answer (a record or a list of invalid fields), never panic; an
//! accepted record must serialise and parse back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strongroom::records::{RecordData, RecordType};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let now = time::macros::datetime!(2026-11-27 00:00 UTC);
    for record_type in RecordType::ALL {
        if let Ok(record) = RecordData::parse(record_type, value.clone(), now) {
            assert_eq!(record.record_type(), record_type);
            let stored = serde_json::to_vec(&record).expect("a record serialises");
            let back: RecordData = serde_json::from_slice(&stored).expect("and parses back");
            assert_eq!(back, record);
        }
    }
});
