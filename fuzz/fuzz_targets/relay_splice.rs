//! Relay bodies: any bytes a payment service sends as a JSON or form body
//! with placeholders, and any bytes a processor answers with. Parsing must
//! never panic; whatever parses renders into a body of the same kind; and
//! masking never panics and never leaves a relayed value in the answer.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use strongroom::relay::mask::mask_body;
use strongroom::relay::splice::{BodyKind, Template};
use zeroize::Zeroizing;

fuzz_target!(|data: &[u8]| {
    for kind in [BodyKind::Json, BodyKind::Form] {
        if let Ok(template) = Template::parse(kind, data) {
            let values: HashMap<_, _> = template
                .placeholders()
                .iter()
                .map(|p| (p.clone(), Zeroizing::new("\"}&=\n{{x}}".to_owned())))
                .collect();
            let out = template
                .render(&values)
                .expect("every placeholder has a value");
            if kind == BodyKind::Json {
                serde_json::from_slice::<serde_json::Value>(&out).expect("renders JSON");
            }
        }
    }
    let masked = mask_body(data, &["secret-value", "12"]);
    assert!(!masked.windows(12).any(|w| w == b"secret-value"));
});
