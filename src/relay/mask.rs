//! Masking of an upstream answer before the caller sees it. Processors echo
//! what they were sent (a card number in a decline message, the whole
//! request in a validation error), and the caller of the relay must never
//! get back a value only the vault may hold.
//!
//! `mask_body` works on arbitrary bytes (the body need not be UTF-8, JSON
//! or anything else) and masks:
//!
//! 1. **Every relayed value of 4 bytes or more, everywhere**: as sent, as
//!    JSON would escape it (`"` → `\"`, non-ASCII → `\u00e9`), and
//!    form-encoded (`+` or `%20` for spaces). Every byte of the match
//!    becomes `*`.
//! 2. **Every Luhn-valid run of 13 to 19 digits**, relayed or not, also
//!    with single spaces or dashes between groups as processors print them
//!    (`4242 4242 4242 4242`, `4242-4242-4242-4242`): its digits become `*`
//!    except the last 4, separators stay. A run is a group of digits
//!    bounded by non-digits, or consecutive groups joined by one separator
//!    each; every stretch of whole groups in it is checked, so
//!    `ref 1 4242 4242 4242 4242` still masks the card. A Luhn-valid 13–19
//!    digit stretch glued to further digits (a 24-digit reference) is not a
//!    card number as printed and is left alone; a relayed PAN inside one is
//!    still masked by rule 1.
//! 3. **Relayed values shorter than 4 bytes** (an expiry month `12`, a CVC
//!    `123`) only where they stand whole: a whole JSON string (`"123"`), a
//!    whole bare JSON number after `:`, `[` or `,` (`"cvc": 123`), or a
//!    whole form value (`cvc=123&`). Masking every `12` in a body would
//!    wreck dates, amounts and ids and tell the caller nothing it could
//!    not guess (a month, 3 digits); a CVC in free text (`"CVC 123 is
//!    wrong"`) is therefore not masked: processors report such fields by
//!    name, not by value, and the CVC is single-use and gone from the vault
//!    after this call.
//!
//! A masked bare JSON number is written as a string (`123` → `"***"`), so
//! a JSON answer stays JSON. Masks keep the length of what they cover:
//! they hide the value, not its length.

/// Values shorter than this are masked only where they stand whole.
pub const SHORT_VALUE: usize = 4;
const MIN_PAN: usize = 13;
const MAX_PAN: usize = 19;

/// `body` with every relayed value and every card-number-like digit run
/// masked (see the module documentation for the exact rules).
pub fn mask_body(body: &[u8], relayed: &[&str]) -> Vec<u8> {
    // For each byte: keep it, or replace it by `*`.
    let mut star = vec![false; body.len()];
    mask_luhn_runs(body, &mut star);
    for value in relayed {
        if value.is_empty() {
            continue;
        }
        if value.len() >= SHORT_VALUE {
            for form in encodings(value) {
                for start in find_all(body, form.as_bytes()) {
                    mark(&mut star, start, start + form.len());
                }
            }
        } else {
            mask_whole(body, value.as_bytes(), &mut star);
        }
    }
    render(body, &star)
}

/// The forms in which a value may come back: as sent, JSON-escaped
/// (serde_json's way, and with every non-ASCII character as `\uXXXX` in
/// either hex case) and form-encoded (`+` or `%20` for a space, either hex
/// case).
fn encodings(value: &str) -> Vec<String> {
    let mut out = vec![value.to_owned()];
    if let Ok(quoted) = serde_json::to_string(value)
        && let Some(inner) = quoted.get(1..quoted.len().saturating_sub(1))
    {
        out.push(inner.to_owned());
    }
    for upper in [false, true] {
        let mut ascii = String::new();
        for c in value.chars() {
            match c {
                '"' => ascii.push_str("\\\""),
                '\\' => ascii.push_str("\\\\"),
                c if c.is_ascii() && !c.is_ascii_control() => ascii.push(c),
                c => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        if upper {
                            ascii.push_str(&format!("\\u{unit:04X}"));
                        } else {
                            ascii.push_str(&format!("\\u{unit:04x}"));
                        }
                    }
                }
            }
        }
        out.push(ascii);
        for space in ["+", "%20"] {
            out.push(form_urlencoded_like(value, space, upper));
        }
    }
    // Some serialisers (PHP's json_encode) also escape `/` as `\/`.
    let slashed: Vec<String> = out
        .iter()
        .filter(|s| s.contains('/'))
        .map(|s| s.replace('/', "\\/"))
        .collect();
    out.extend(slashed);
    out.sort();
    out.dedup();
    out.retain(|s| s.len() >= SHORT_VALUE);
    out
}

fn form_urlencoded_like(value: &str, space: &str, upper: bool) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b))
            }
            b' ' => out.push_str(space),
            _ if upper => out.push_str(&format!("%{b:02X}")),
            _ => out.push_str(&format!("%{b:02x}")),
        }
    }
    out
}

/// Start of every (possibly overlapping) occurrence of `needle`.
fn find_all<'a>(haystack: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    let n = needle.len();
    let first = needle.first().copied();
    haystack
        .iter()
        .enumerate()
        .filter(move |(_, b)| Some(**b) == first)
        .map(|(i, _)| i)
        .filter(move |&i| haystack.get(i..i + n) == Some(needle))
}

fn mark(star: &mut [bool], start: usize, end: usize) {
    if let Some(span) = star.get_mut(start..end) {
        span.fill(true);
    }
}

/// Rule 3: a short value where it stands whole.
fn mask_whole(body: &[u8], value: &[u8], star: &mut [bool]) {
    let n = value.len();
    for start in find_all(body, value) {
        let end = start + n;
        let before = start.checked_sub(1).and_then(|i| body.get(i)).copied();
        let after = body.get(end).copied();
        // A whole JSON string: "value", the opening quote not escaped.
        let json_string = before == Some(b'"')
            && after == Some(b'"')
            && start
                .checked_sub(2)
                .and_then(|i| body.get(i))
                .is_none_or(|b| *b != b'\\');
        // A whole form value: after `=`, up to `&`, a line end or the end.
        let form_value = before == Some(b'=') && matches!(after, None | Some(b'&' | b'\r' | b'\n'));
        let bare_number =
            value.iter().all(u8::is_ascii_digit) && bare_json_number(body, start, end);
        if json_string || form_value || bare_number {
            mark(star, start, end);
        }
    }
}

/// Whether `body[start..end]` (digits) is a whole bare JSON number: after
/// `:`, `[` or `,` (and whitespace), before `,`, `}`, `]` (after
/// whitespace) or the end.
fn bare_json_number(body: &[u8], start: usize, end: usize) -> bool {
    let left = body
        .get(..start)
        .and_then(|b| b.iter().rev().find(|c| !c.is_ascii_whitespace()))
        .copied();
    let right = body
        .get(end..)
        .and_then(|b| b.iter().find(|c| !c.is_ascii_whitespace()))
        .copied();
    let touching_left = start.checked_sub(1).and_then(|i| body.get(i)).copied();
    let touching_right = body.get(end).copied();
    let glued = |b: Option<u8>| {
        b.is_some_and(|b| {
            b.is_ascii_digit()
                || b == b'.'
                || b == b'"'
                || b == b'-'
                || b == b'e'
                || b == b'E'
                || b == b'+'
        })
    };
    matches!(left, Some(b':' | b'[' | b','))
        && matches!(right, None | Some(b',' | b'}' | b']'))
        && !glued(touching_left)
        && !glued(touching_right)
}

/// Rule 2: Luhn-valid 13–19 digit stretches of whole groups.
fn mask_luhn_runs(body: &[u8], star: &mut [bool]) {
    let mut i = 0;
    while i < body.len() {
        if !body.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
            continue;
        }
        // Groups: (start, end) of digit groups joined by one separator.
        let mut groups = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while body.get(j).is_some_and(u8::is_ascii_digit) {
                j += 1;
            }
            groups.push((start, j));
            let sep = body.get(j).is_some_and(|b| *b == b' ' || *b == b'-');
            if sep && body.get(j + 1).is_some_and(u8::is_ascii_digit) {
                j += 1;
            } else {
                break;
            }
        }
        for first in 0..groups.len() {
            let mut digits = Vec::with_capacity(MAX_PAN);
            for last in first..groups.len() {
                let Some(&(s, e)) = groups.get(last) else {
                    break;
                };
                if let Some(group) = body.get(s..e) {
                    digits.extend_from_slice(group);
                }
                if digits.len() > MAX_PAN {
                    break;
                }
                if digits.len() >= MIN_PAN && luhn(&digits) {
                    let (from, _) = groups.get(first).copied().unwrap_or((s, e));
                    mask_keeping_last4(body, star, from, e);
                }
            }
        }
        i = j.max(i + 1);
    }
}

fn mask_keeping_last4(body: &[u8], star: &mut [bool], start: usize, end: usize) {
    let mut kept = 0;
    for k in (start..end).rev() {
        if body.get(k).is_some_and(u8::is_ascii_digit) {
            if kept < 4 {
                kept += 1;
            } else if let Some(s) = star.get_mut(k) {
                *s = true;
            }
        }
    }
}

/// Luhn over ASCII digits: the records module's check.
fn luhn(digits: &[u8]) -> bool {
    std::str::from_utf8(digits).is_ok_and(crate::records::luhn_valid)
}

/// Applies the marks; a masked bare JSON number becomes a string.
fn render(body: &[u8], star: &[bool]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut i = 0;
    while i < body.len() {
        let Some(&b) = body.get(i) else { break };
        if b.is_ascii_digit() && !body.get(i.wrapping_sub(1)).is_some_and(u8::is_ascii_digit) {
            // A whole digit run: quote it if it is a bare number and masked.
            let mut end = i;
            while body.get(end).is_some_and(u8::is_ascii_digit) {
                end += 1;
            }
            let masked = star.get(i..end).is_some_and(|s| s.iter().any(|m| *m));
            let quote = masked && bare_json_number(body, i, end);
            if quote {
                out.push(b'"');
            }
            for k in i..end {
                let m = star.get(k).copied().unwrap_or(false);
                out.push(if m {
                    b'*'
                } else {
                    body.get(k).copied().unwrap_or(b'*')
                });
            }
            if quote {
                out.push(b'"');
            }
            i = end;
            continue;
        }
        out.push(if star.get(i).copied().unwrap_or(false) {
            b'*'
        } else {
            b
        });
        i += 1;
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn m(body: &str, relayed: &[&str]) -> String {
        String::from_utf8(mask_body(body.as_bytes(), relayed)).unwrap()
    }

    #[derive(serde::Deserialize)]
    struct Cards {
        valid_cards: Vec<Card>,
        invalid_cards: Vec<Card>,
    }
    #[derive(serde::Deserialize)]
    struct Card {
        number: String,
        luhn_valid: bool,
    }

    fn cards() -> Cards {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/vectors/cards/cards.json"
        );
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn every_published_test_card_is_masked_unrelayed_keeping_last4() {
        let cards = cards();
        assert!(cards.valid_cards.len() >= 40);
        for card in &cards.valid_cards {
            let n = &card.number;
            let body = format!(r#"{{"error":"card {n} declined","n":"{n}"}}"#);
            let out = m(&body, &[]);
            assert!(!out.contains(n.as_str()), "{n}: {out}");
            let masked = format!("{}{}", "*".repeat(n.len() - 4), &n[n.len() - 4..]);
            assert_eq!(
                out,
                format!(r#"{{"error":"card {masked} declined","n":"{masked}"}}"#)
            );
            // As processors print them: groups of 4.
            let spaced: Vec<String> = n
                .as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8(c.to_vec()).unwrap())
                .collect();
            for sep in [" ", "-"] {
                let printed = spaced.join(sep);
                let out = m(&format!("number: {printed}."), &[]);
                let digits: String = out.chars().filter(char::is_ascii_digit).collect();
                assert_eq!(digits, &n[n.len() - 4..], "{printed}: {out}");
            }
        }
    }

    #[test]
    fn luhn_invalid_runs_are_left_alone() {
        for card in cards().invalid_cards {
            if card.luhn_valid || card.number.contains(' ') {
                continue;
            }
            let body = format!("ref {} end", card.number);
            assert_eq!(m(&body, &[]), body, "{}", card.number);
        }
        // Too short, too long, glued to further digits.
        for body in [
            "424242424242",
            "42424242424242424242",
            "x4242424242424242000012",
        ] {
            assert_eq!(m(body, &[]), body);
        }
    }

    #[test]
    fn a_card_after_other_numbers_is_still_found() {
        assert_eq!(
            m("ref 1 4242 4242 4242 4242 ok", &[]),
            "ref 1 **** **** **** 4242 ok"
        );
        assert_eq!(m("2026-4242424242424242", &[]), "2026-************4242");
    }

    #[test]
    fn relayed_values_are_masked_everywhere_and_in_their_escaped_forms() {
        let name = "Zoë \"Q\" O'Neil";
        let body = format!(
            "{} | {} | {} | {} | plain {name}",
            serde_json::to_string(name).unwrap(),
            r#""Zo\u00eb \"Q\" O'Neil""#,
            "Zo%C3%AB+%22Q%22+O%27Neil",
            "Zo%C3%AB%20%22Q%22%20O%27Neil",
        );
        let out = m(&body, &[name]);
        assert!(!out.contains("Neil"), "{out}");
        assert!(!out.contains("Zo"), "{out}");
        // Unrelated text stays.
        assert!(out.contains(" | "));
        assert!(out.contains("plain "));
    }

    #[test]
    fn a_value_with_escaped_slashes_is_masked() {
        let out = m(
            r#"{"addr":"12\/34 Rue d'Ulm","again":"12/34 Rue d'Ulm"}"#,
            &["12/34 Rue d'Ulm"],
        );
        assert!(!out.contains("Ulm"), "{out}");
    }

    #[test]
    fn short_values_only_where_they_stand_whole() {
        let body = r#"{"cvc":"123","exp_month":12,"year":"2030","date":"2026-12-01","amount":1234,"note":"CVC 123 is wrong","list":[12, 5]}"#;
        let out = m(body, &["123", "12", "2030"]);
        assert_eq!(
            out,
            r#"{"cvc":"***","exp_month":"**","year":"****","date":"2026-12-01","amount":1234,"note":"CVC 123 is wrong","list":["**", 5]}"#
        );
        serde_json::from_str::<serde_json::Value>(&out).unwrap();
        assert_eq!(
            m("cvc=123&exp=12&amount=1234&n=x123", &["123", "12"]),
            "cvc=***&exp=**&amount=1234&n=x123"
        );
        // An escaped quote before the value is not the start of a string.
        assert_eq!(m(r#""a\"123""#, &["123"]), r#""a\"123""#);
    }

    #[test]
    fn a_masked_bare_number_becomes_a_string() {
        let out = m(r#"{"pan":4242424242424242,"n":[378282246310005]}"#, &[]);
        assert_eq!(out, r#"{"pan":"************4242","n":["***********0005"]}"#);
        serde_json::from_str::<serde_json::Value>(&out).unwrap();
    }

    #[test]
    fn overlapping_and_edge_occurrences() {
        assert_eq!(m("abababab", &["abab"]), "********");
        assert_eq!(m("abcd", &["abcd"]), "****");
        assert_eq!(m("abc", &["abcd"]), "abc");
        assert_eq!(m("xabcdabcdx", &["abcd"]), "x********x");
    }

    #[test]
    fn arbitrary_bytes_are_fine() {
        let mut body = vec![0xff, 0xfe, b'4'];
        body.extend_from_slice(b"242424242424242\x80\x00secret-value\xc3");
        let out = mask_body(&body, &["secret-value", ""]);
        assert_eq!(
            out,
            [
                &[0xff, 0xfe][..],
                b"************4242\x80\x00************\xc3"
            ]
            .concat()
        );
        assert!(mask_body(b"", &["abcd"]).is_empty());
    }

    #[test]
    fn luhn_matches_the_records_module() {
        for card in cards()
            .valid_cards
            .iter()
            .chain(cards().invalid_cards.iter())
        {
            if card.number.bytes().all(|b| b.is_ascii_digit()) && !card.number.is_empty() {
                assert_eq!(
                    luhn(card.number.as_bytes()),
                    card.luhn_valid,
                    "{}",
                    card.number
                );
                assert_eq!(
                    luhn(card.number.as_bytes()),
                    crate::records::luhn_valid(&card.number)
                );
            }
        }
    }
}
