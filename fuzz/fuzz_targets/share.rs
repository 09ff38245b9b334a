//! Unseal share parsing: any text an operator (or an attacker) types.
//! Must refuse or parse, never panic. A printed share parses back to
//! itself, and any one character changed (other than its letter case) is
//! refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strongroom::keyring::shares::{self, ParsedShare};
use zeroize::Zeroizing;

const VAULT: &str = "0011223344556677";

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && shares::parse(VAULT, text).is_ok()
    {
        assert!(text.to_ascii_lowercase().contains(VAULT));
    }

    let (Some(&x), Some(y), Some(&at), Some(&replacement)) =
        (data.first(), data.get(1..33), data.get(33), data.get(34))
    else {
        return;
    };
    let x = x.max(1);
    let y: [u8; 32] = y.try_into().expect("32 bytes");
    let printed = shares::encode(
        VAULT,
        &ParsedShare {
            x,
            y: Zeroizing::new(y),
        },
    );
    let back = shares::parse(VAULT, &printed).expect("a printed share parses");
    assert_eq!((back.x, *back.y), (x, y));

    let mut changed = printed.as_bytes().to_vec();
    let at = usize::from(at) % changed.len();
    if changed[at].eq_ignore_ascii_case(&replacement) {
        return;
    }
    changed[at] = replacement;
    if let Ok(text) = std::str::from_utf8(&changed) {
        assert!(shares::parse(VAULT, text).is_err(), "{text:?} parsed");
    }
});
