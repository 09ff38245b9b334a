//! Normalisation and validation of single values. Every message names the
//! rule, never the value.

use time::{Date, OffsetDateTime};

/// One field that broke a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: &'static str,
}

/// Collects field errors while a record is checked.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<Invalid>);

impl Errors {
    pub fn add(&mut self, field: &str, message: &'static str) {
        self.0.push(Invalid {
            field: field.to_owned(),
            message,
        });
    }

    /// Records `result`'s error under `field`, passing its value on.
    pub fn check<T>(&mut self, field: &str, result: Result<T, &'static str>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(message) => {
                self.add(field, message);
                None
            }
        }
    }

    pub fn into_result(self) -> Result<(), Vec<Invalid>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

/// The field path of a body that did not fit, safe to show: each key that
/// is not an identifier (`a-z`, digits, `_`, starting with a letter, at most
/// 40 bytes) is replaced, so a value a client put in key position (a PAN,
/// an email) is never echoed. Works on the path's segments, not its text,
/// so a key containing dots cannot smuggle a fragment through.
pub fn safe_field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let identifier = |name: &str| {
        name.len() <= 40
            && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(if identifier(key) {
                    key
                } else {
                    "(unrecognised field)"
                });
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    if out.is_empty() {
        "body".to_owned()
    } else {
        out
    }
}

/// Integers as JSON Schema's `integer` admits them, for request fields:
/// `12` and also `12.0` (a whole number written with a fraction part),
/// and, from a query string, the text `"12"`. Negative numbers, fractions
/// and values past `i64::MAX` (the document's `int64`) are refused, as is
/// anything the target type cannot hold.
pub mod whole_number {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{self, Deserializer, Visitor};

    const MAX: u64 = i64::MAX as u64;

    /// `text`: whether the number may come as text (query strings only:
    /// in a JSON body `"12"` is a string, not an integer).
    struct Whole {
        text: bool,
    }

    impl Visitor<'_> for Whole {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a whole number from 0 to 2^63 - 1")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            if v <= MAX {
                Ok(v)
            } else {
                Err(E::custom("out of range"))
            }
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom("out of range"))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
            // MAX as f64 rounds up to 2^63, which is out of range.
            if v.fract() == 0.0 && v >= 0.0 && v < MAX as f64 {
                Ok(v as u64)
            } else {
                Err(E::custom("not a whole number in range"))
            }
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            if !self.text {
                return Err(E::invalid_type(de::Unexpected::Str(""), &self));
            }
            match v.parse::<u64>() {
                Ok(n) => self.visit_u64(n),
                Err(_) => v
                    .parse::<f64>()
                    .map_err(|_| E::custom("not a number"))
                    .and_then(|f| self.visit_f64(f)),
            }
        }
    }

    fn whole<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D, text: bool) -> Result<T, D::Error> {
        let v = d.deserialize_any(Whole { text })?;
        T::try_from(v).map_err(|_| de::Error::custom("out of range"))
    }

    /// For a required integer of a JSON body:
    /// `deserialize_with = "…::deserialize"`.
    pub fn deserialize<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
        whole(d, false)
    }

    struct Optional<T> {
        text: bool,
        target: PhantomData<T>,
    }

    impl<'de, T: TryFrom<u64>> Visitor<'de> for Optional<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("null or a whole number")
        }

        fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
            whole(d, self.text).map(Some)
        }
    }

    /// For an optional integer of a JSON body:
    /// `default, deserialize_with = "…::option"`.
    pub fn option<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<Option<T>, D::Error> {
        d.deserialize_option(Optional {
            text: false,
            target: PhantomData,
        })
    }

    /// For an optional integer of a query string:
    /// `default, deserialize_with = "…::query_option"`.
    pub fn query_option<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        d.deserialize_option(Optional {
            text: true,
            target: PhantomData,
        })
    }
}

/// Card brands recognised by prefix.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Brand {
    Visa,
    Mastercard,
    Amex,
    Discover,
    Jcb,
    Diners,
    Unionpay,
    Maestro,
    BccardDinacard,
    Unknown,
}

fn prefix_in(pan: &str, digits: usize, low: u32, high: u32) -> bool {
    pan.get(..digits)
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| (low..=high).contains(&p))
}

impl Brand {
    /// The brand of a digits-only PAN, by issuer prefix (ISO/IEC 7812 IIN
    /// ranges as the networks publish them).
    pub fn of(pan: &str) -> Brand {
        let p = |d, lo, hi| prefix_in(pan, d, lo, hi);
        if p(1, 4, 4) {
            Brand::Visa
        } else if p(2, 51, 55) || p(4, 2221, 2720) {
            Brand::Mastercard
        } else if p(2, 34, 34) || p(2, 37, 37) {
            Brand::Amex
        } else if p(3, 300, 305) || p(4, 3095, 3095) || p(2, 36, 36) || p(2, 38, 39) {
            Brand::Diners
        } else if p(4, 3528, 3589) {
            Brand::Jcb
        } else if p(4, 6555, 6555) {
            // BC Card / DinaCard co-branded range inside Discover's 65.
            Brand::BccardDinacard
        } else if p(4, 6011, 6011) || p(3, 644, 649) || p(2, 65, 65) {
            Brand::Discover
        } else if p(2, 62, 62) || p(2, 81, 81) {
            Brand::Unionpay
        } else if p(2, 50, 50) || p(2, 56, 69) {
            Brand::Maestro
        } else {
            Brand::Unknown
        }
    }

    /// Whether this brand issues PANs of `len` digits.
    fn length_ok(self, len: usize) -> bool {
        match self {
            Brand::Mastercard | Brand::BccardDinacard => len == 16,
            Brand::Amex => len == 15,
            Brand::Visa => [13, 16, 19].contains(&len),
            Brand::Discover | Brand::Jcb => (16..=19).contains(&len),
            Brand::Diners | Brand::Unionpay => (14..=19).contains(&len),
            Brand::Maestro | Brand::Unknown => (12..=19).contains(&len),
        }
    }
}

/// ISO/IEC 7812 Luhn check of a digits-only string.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, c) in digits.bytes().rev().enumerate() {
        let mut d = u32::from(c.wrapping_sub(b'0'));
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// A PAN without spaces and dashes, 12–19 digits, Luhn-valid, of a length
/// its brand issues.
pub fn pan(raw: &str) -> Result<(String, Brand), &'static str> {
    let digits: String = raw.chars().filter(|c| *c != ' ' && *c != '-').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("must be digits (spaces and dashes are ignored)");
    }
    if !(12..=19).contains(&digits.len()) {
        return Err("must be 12 to 19 digits");
    }
    if !luhn_valid(&digits) {
        return Err("fails the Luhn check");
    }
    let brand = Brand::of(&digits);
    if !brand.length_ok(digits.len()) {
        return Err("has a length this card brand does not issue");
    }
    Ok((digits, brand))
}

/// Expiry month 1–12 of a year not before `now`'s month.
pub fn expiry(month: u8, year: u16, now: OffsetDateTime) -> Result<(), &'static str> {
    if !(1..=12).contains(&month) {
        return Err("month must be 1 to 12");
    }
    let (y, m) = (i32::from(year), i32::from(month));
    let (ny, nm) = (now.year(), i32::from(u8::from(now.month())));
    if y < ny || (y == ny && m < nm) {
        return Err("the card has expired");
    }
    if y > ny + 50 {
        return Err("is too far in the future");
    }
    Ok(())
}

/// An IBAN: spaces removed, upper-cased, then checked against the SWIFT
/// registry's per-country length and format and the mod-97 check digits
/// (the `iban_validate` crate). Returns the electronic form and country.
pub fn iban(raw: &str) -> Result<(String, String), &'static str> {
    let compact: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_uppercase();
    if compact.len() > 34 || !compact.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("must be an IBAN");
    }
    use iban::IbanLike;
    let parsed: iban::Iban = compact
        .parse()
        .map_err(|_| "is not a valid IBAN for its country")?;
    let electronic = parsed.electronic_str().to_owned();
    Ok((electronic, parsed.country_code().to_owned()))
}

/// A US ABA routing number: 9 digits with the 3-7-1 checksum.
pub fn aba_routing(raw: &str) -> Result<String, &'static str> {
    let digits: Vec<u32> = raw.chars().filter_map(|c| c.to_digit(10)).collect();
    if raw.len() != 9 || digits.len() != 9 {
        return Err("must be 9 digits");
    }
    let weights = [3, 7, 1, 3, 7, 1, 3, 7, 1];
    let sum: u32 = digits.iter().zip(weights).map(|(d, w)| d * w).sum();
    if !sum.is_multiple_of(10) {
        return Err("fails the ABA checksum");
    }
    Ok(raw.to_owned())
}

/// A US account number: 4 to 17 digits.
pub fn us_account(raw: &str) -> Result<String, &'static str> {
    let ok = (4..=17).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(raw.to_owned())
    } else {
        Err("must be 4 to 17 digits")
    }
}

/// An ISO 3166-1 alpha-2 code, upper-cased.
pub fn country(raw: &str) -> Result<String, &'static str> {
    let code = raw.trim();
    // ASCII only: Unicode upper-casing would turn `ß` into `SS`.
    if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err("must be an ISO 3166-1 alpha-2 country code");
    }
    let upper = code.to_ascii_uppercase();
    isocountry::CountryCode::for_alpha2(&upper)
        .map(|c| c.alpha2().to_owned())
        .map_err(|_| "must be an ISO 3166-1 alpha-2 country code")
}

/// A real calendar date `YYYY-MM-DD`.
pub fn date(raw: &str) -> Result<Date, &'static str> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(raw, &format).map_err(|_| "must be a real date, YYYY-MM-DD")
}

/// A date of birth: a real date, not in the future, not before 1800 (the
/// contract's own example is 1815).
pub fn date_of_birth(raw: &str, now: OffsetDateTime) -> Result<Date, &'static str> {
    let d = date(raw)?;
    if d > now.date() {
        return Err("must not be in the future");
    }
    if d.year() < 1800 {
        return Err("must not be before 1800");
    }
    Ok(d)
}

/// E.164: `+`, then 8 to 15 digits, the first not 0. Spaces, dashes, dots
/// and parentheses are removed first.
pub fn phone(raw: &str) -> Result<String, &'static str> {
    let compact: String = raw.chars().filter(|c| !" -.()".contains(*c)).collect();
    let digits = compact
        .strip_prefix('+')
        .ok_or("must be in E.164 form, +<country code><number>")?;
    let ok = (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(compact)
    } else {
        Err("must be in E.164 form, +<country code><number>")
    }
}

/// An email address: one `@`, a local part of 1–64 permitted characters, a
/// domain of dot-separated labels (letters, digits, hyphens) with a
/// top-level label of letters. Lower-cased (for search as well).
pub fn email(raw: &str) -> Result<String, &'static str> {
    const MESSAGE: &str = "must be an email address";
    let lower = raw.trim().to_lowercase();
    if lower.len() > 254 {
        return Err(MESSAGE);
    }
    let (local, domain) = lower.split_once('@').ok_or(MESSAGE)?;
    let local_ok = (1..=64).contains(&local.len())
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&b));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic()));
    if local_ok && domain_ok {
        Ok(lower)
    } else {
        Err(MESSAGE)
    }
}

/// Free text: at most `max` characters as sent, then trimmed, not empty,
/// no control characters.
pub fn text(raw: &str, max: usize) -> Result<String, &'static str> {
    // The length counts what was sent, as the OpenAPI `maxLength` does.
    if raw.chars().count() > max {
        return Err("is too long");
    }
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err("must not be empty");
    }
    if trimmed.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn field_paths_never_echo_values() {
        let path_of = |json: &str| {
            #[derive(serde::Deserialize, Debug)]
            #[serde(deny_unknown_fields)]
            #[allow(dead_code)]
            struct Inner {
                given: String,
            }
            #[derive(serde::Deserialize, Debug)]
            #[serde(deny_unknown_fields)]
            #[allow(dead_code)]
            struct Outer {
                legal_name: Inner,
                roles: Vec<u8>,
            }
            let mut de = serde_json::Deserializer::from_str(json);
            let err = serde_path_to_error::deserialize::<_, Outer>(&mut de).unwrap_err();
            safe_field_path(err.path())
        };
        assert_eq!(
            path_of(r#"{"legal_name": {"given": 1}, "roles": []}"#),
            "legal_name.given"
        );
        assert_eq!(
            path_of(r#"{"legal_name": {"given": "a"}, "roles": [1, "x"]}"#),
            "roles[1]"
        );
        assert_eq!(
            path_of(r#"{"4242424242424242": 1}"#),
            "(unrecognised field)"
        );
        assert_eq!(
            path_of(r#"{"legal_name": {"given": "a", "ada@example.org": 1}, "roles": []}"#),
            "legal_name.(unrecognised field)"
        );
        assert_eq!(path_of(r#"{"Ada Lovelace": 1}"#), "(unrecognised field)");
    }

    #[test]
    fn whole_numbers() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Body {
            #[serde(deserialize_with = "whole_number::deserialize")]
            month: u8,
            #[serde(default, deserialize_with = "whole_number::option")]
            uses: Option<u64>,
        }
        let parse = |s: &str| serde_json::from_str::<Body>(s).ok();
        let body = |month, uses| Some(Body { month, uses });
        assert_eq!(parse(r#"{"month": 12}"#), body(12, None));
        assert_eq!(parse(r#"{"month": 12.0, "uses": 3.0}"#), body(12, Some(3)));
        assert_eq!(parse(r#"{"month": 1, "uses": null}"#), body(1, None));
        assert_eq!(
            parse(r#"{"month": 1, "uses": 9223372036854775807}"#),
            body(1, Some(i64::MAX as u64))
        );
        for bad in [
            r#"{"month": 12.5}"#,
            r#"{"month": -1}"#,
            r#"{"month": 256}"#,
            r#"{"month": "12"}"#,
            r#"{"month": 1, "uses": 9223372036854775808}"#,
            r#"{"month": 1, "uses": 1e300}"#,
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        // A query string carries text.
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Query {
            #[serde(default, deserialize_with = "whole_number::query_option")]
            limit: Option<usize>,
        }
        let query = |s: &str| serde_urlencoded::from_str::<Query>(s).ok();
        assert_eq!(query("limit=10"), Some(Query { limit: Some(10) }));
        assert_eq!(query("limit=10.0"), Some(Query { limit: Some(10) }));
        assert_eq!(query(""), Some(Query { limit: None }));
        assert_eq!(query("limit=x"), None);
    }

    #[test]
    fn pans() {
        assert_eq!(
            pan("4242 4242 4242 4242").unwrap(),
            ("4242424242424242".into(), Brand::Visa)
        );
        assert_eq!(pan("2223-0031-2200-3222").unwrap().1, Brand::Mastercard);
        assert!(pan("4242424242424241").is_err());
        assert!(pan("424242424242424x").is_err());
        assert!(pan("").is_err());
    }

    #[test]
    fn expiry_is_not_in_the_past() {
        let now = datetime!(2026-11-27 00:00 UTC);
        assert!(expiry(11, 2026, now).is_ok());
        assert!(expiry(10, 2026, now).is_err());
        assert!(expiry(13, 2030, now).is_err());
        assert!(expiry(0, 2030, now).is_err());
    }

    #[test]
    fn routing_numbers() {
        assert!(aba_routing("011000015").is_ok());
        assert!(aba_routing("011000016").is_err());
        assert!(aba_routing("01100001").is_err());
    }

    #[test]
    fn other_values() {
        assert_eq!(country("gb").unwrap(), "GB");
        assert!(country("XX").is_err() && country("GBR").is_err());
        assert!(date("2023-02-29").is_err() && date("2024-02-29").is_ok());
        let now = datetime!(2026-11-27 00:00 UTC);
        assert!(date_of_birth("2027-01-01", now).is_err());
        assert!(date_of_birth("1815-12-10", now).is_ok());
        assert!(date_of_birth("1799-12-31", now).is_err());
        assert_eq!(phone("+44 20 7946 0958").unwrap(), "+442079460958");
        assert!(phone("020 7946 0958").is_err() && phone("+0123456789").is_err());
        assert_eq!(email(" Ada@Example.ORG ").unwrap(), "ada@example.org");
        for bad in [
            "ada",
            "ada@",
            "@example.org",
            "ada@example",
            "a..b@example.org",
            "ada@exa_mple.org",
        ] {
            assert!(email(bad).is_err(), "{bad}");
        }
        assert!(
            text("   ", 10).is_err()
                && text("a\u{0}b", 10).is_err()
                && text(&"x".repeat(11), 10).is_err()
        );
    }
}
