//! What a relay invocation takes from a record and from the caller's
//! request: the value of an allow-listed field, the body's encoding, which
//! of the caller's headers go on, and which paths may be appended to a
//! route's base URL.
//!
//! Nothing here sends, authorises or audits (that is `api::relay`); every
//! value it hands out is `Zeroizing`, and no error names a value.

use zeroize::Zeroizing;

use super::splice::BodyKind;
use crate::records::RecordData;

/// The only request headers of the caller that are forwarded. Everything
/// else — above all the caller's `Authorization`, which is its Strongroom
/// credential — stays here; the route's configured headers go instead.
pub const FORWARDED_REQUEST_HEADERS: [&str; 3] = ["content-type", "accept", "idempotency-key"];

/// The encoding of a relay body, from its content type: JSON (also
/// `application/*+json`) or `application/x-www-form-urlencoded`.
pub fn body_kind(content_type: &str) -> Option<BodyKind> {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Some(BodyKind::Json)
    } else if mime == "application/x-www-form-urlencoded" {
        Some(BodyKind::Form)
    } else {
        None
    }
}

/// The value of `field` (a route field name, see `routes::field_of`) in
/// `data`; `None` if the record has none (an absent optional field). `cvc`
/// is never in a record. Expiry months are two digits (`04`), years four.
pub fn field_value(data: &RecordData, field: &str) -> Option<Zeroizing<String>> {
    let text: Option<String> = match data {
        RecordData::Card(card) => match field {
            "pan" => Some(card.pan.clone()),
            "exp_month" => Some(format!("{:02}", card.exp_month)),
            "exp_year" => Some(format!("{:04}", card.exp_year)),
            "holder_name" => card.holder_name.clone(),
            _ => None,
        },
        RecordData::BankAccount(bank) => match field {
            "iban" => bank.iban.clone(),
            "account_number" => bank.account_number.clone(),
            "routing_number" => bank.routing_number.clone(),
            "country" => Some(bank.country.clone()),
            "holder_name" => bank.holder_name.clone(),
            _ => None,
        },
        RecordData::Kyc(kyc) => match field {
            "legal_name.given" => Some(kyc.legal_name.given.clone()),
            "legal_name.middle" => kyc.legal_name.middle.clone(),
            "legal_name.family" => Some(kyc.legal_name.family.clone()),
            "date_of_birth" => Some(kyc.date_of_birth.clone()),
            "nationality" => kyc.nationality.clone(),
            "address.line1" => kyc.address.as_ref().map(|a| a.line1.clone()),
            "address.line2" => kyc.address.as_ref().and_then(|a| a.line2.clone()),
            "address.city" => kyc.address.as_ref().map(|a| a.city.clone()),
            "address.region" => kyc.address.as_ref().and_then(|a| a.region.clone()),
            "address.postal_code" => kyc.address.as_ref().and_then(|a| a.postal_code.clone()),
            "address.country" => kyc.address.as_ref().map(|a| a.country.clone()),
            "national_id.type" => kyc.national_id.as_ref().map(|n| n.id_type.clone()),
            "national_id.number" => kyc.national_id.as_ref().map(|n| n.number.clone()),
            "national_id.country" => kyc.national_id.as_ref().map(|n| n.country.clone()),
            "email" => kyc.email.clone(),
            "phone" => kyc.phone.clone(),
            _ => None,
        },
    };
    text.map(Zeroizing::new)
}

/// Checks the path a caller appends to a route's base URL (as sent, still
/// percent-encoded, with its leading `/`): no dot segments (raw or
/// encoded), no empty segment, no backslash, no encoded slash, so it can
/// never climb above the base URL's path nor be read two ways.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    if path.len() > 2048 {
        return Err("must be at most 2048 bytes");
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains('\\') || lower.contains("%5c") || lower.contains("%2f") {
        return Err("may not hold backslashes or encoded slashes");
    }
    // `;` (path parameters: `..;` is `..` to Tomcat-style servers) and `%25`
    // (an encoded `%`: `%252e%252e` is `..` to servers that decode twice).
    if lower.contains(';') || lower.contains("%3b") || lower.contains("%25") {
        return Err("may not hold ; or encoded % (path parameters, double encoding)");
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err("must start with /");
    };
    if rest.is_empty() {
        return Ok(());
    }
    for segment in rest.split('/') {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        if decoded == "." || decoded == ".." {
            return Err("may not hold . or .. segments");
        }
        if segment.is_empty() {
            return Err("may not hold empty segments");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::RecordType;

    #[test]
    fn body_kinds() {
        assert_eq!(body_kind("application/json"), Some(BodyKind::Json));
        assert_eq!(
            body_kind("Application/JSON; charset=utf-8"),
            Some(BodyKind::Json)
        );
        assert_eq!(body_kind("application/vnd.acme+json"), Some(BodyKind::Json));
        assert_eq!(
            body_kind("application/x-www-form-urlencoded; charset=utf-8"),
            Some(BodyKind::Form)
        );
        for other in [
            "text/plain",
            "multipart/form-data; boundary=x",
            "",
            "application/xml",
        ] {
            assert_eq!(body_kind(other), None, "{other}");
        }
    }

    #[test]
    fn paths() {
        for ok in ["/", "/charges", "/v1/charges/ch_1", "/a%20b"] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/../admin",
            "/a/..",
            "/a/%2e%2E/b",
            "/./a",
            "/a//b",
            "/a%2fb",
            "/a\\b",
            "/..;/admin",
            "/a;jsessionid=1",
            "/a%3b/b",
            "/%252e%252e/admin",
            "",
            "x",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn card_values() {
        let now = time::OffsetDateTime::now_utc();
        let data = RecordData::parse(
            RecordType::Card,
            serde_json::json!({"pan": "4242424242424242", "exp_month": 4, "exp_year": 2031}),
            now,
        )
        .unwrap();
        assert_eq!(
            field_value(&data, "pan").unwrap().as_str(),
            "4242424242424242"
        );
        assert_eq!(field_value(&data, "exp_month").unwrap().as_str(), "04");
        assert_eq!(field_value(&data, "exp_year").unwrap().as_str(), "2031");
        assert!(field_value(&data, "holder_name").is_none());
        assert!(field_value(&data, "cvc").is_none());
        assert!(field_value(&data, "iban").is_none());
    }

    #[test]
    fn kyc_values_by_dotted_name() {
        let now = time::OffsetDateTime::now_utc();
        let sparse = RecordData::parse(
            RecordType::Kyc,
            serde_json::json!({
                "legal_name": {"given": "Ada", "family": "Lovelace"},
                "date_of_birth": "1815-12-10",
                "national_id": {"type": "passport", "number": "X1234567", "country": "GB"},
            }),
            now,
        )
        .unwrap();
        assert_eq!(
            field_value(&sparse, "legal_name.family").unwrap().as_str(),
            "Lovelace"
        );
        assert_eq!(
            field_value(&sparse, "national_id.number").unwrap().as_str(),
            "X1234567"
        );
        assert!(field_value(&sparse, "address.city").is_none());
        // A record with every field has a value for every allow-listable name.
        let full = RecordData::parse(
            RecordType::Kyc,
            serde_json::json!({
                "legal_name": {"given": "Ada", "middle": "King", "family": "Lovelace"},
                "date_of_birth": "1815-12-10",
                "nationality": "GB",
                "address": {"line1": "1 St James's Square", "line2": "Flat 2", "city": "London",
                    "region": "Greater London", "postal_code": "SW1Y 4JH", "country": "GB"},
                "national_id": {"type": "passport", "number": "X1234567", "country": "GB"},
                "email": "ada@example.org",
                "phone": "+44 20 7946 0958",
            }),
            now,
        )
        .unwrap();
        for name in super::super::routes::KYC_FIELDS {
            assert!(field_value(&full, name).is_some(), "{name}");
        }
    }
}
