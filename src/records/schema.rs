//! What a client may send for each record type (strict: unknown fields are
//! refused), and the validated, normalised form that is sealed.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::national_id::{NationalIdType, document_number};
use super::validate::{self as v, Brand, Errors, Invalid};

/// Field names that would carry a card security code. They are refused on
/// every record type, so a CVV can never be stored by mistake.
const SECURITY_CODE_FIELDS: [&str; 7] = [
    "cvv",
    "cvc",
    "cvv2",
    "cvc2",
    "cid",
    "security_code",
    "card_verification",
];

/// Refuses any security-code field anywhere in `value`.
pub fn refuse_security_codes(value: &serde_json::Value) -> Result<(), Vec<Invalid>> {
    if let serde_json::Value::Object(map) = value {
        for (key, inner) in map {
            if SECURITY_CODE_FIELDS.contains(&key.to_ascii_lowercase().as_str()) {
                return Err(vec![Invalid {
                    field: key.clone(),
                    message: "card security codes are never accepted or stored",
                }]);
            }
            refuse_security_codes(inner)?;
        }
    }
    Ok(())
}

macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($t), "(<redacted>)"))
            }
        }
    )*};
}

// ---- card ----

#[derive(Deserialize, Serialize, Zeroize, ZeroizeOnDrop, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CardInput {
    /// 12–19 digits (spaces and dashes are ignored), Luhn-valid, of a
    /// length its brand issues.
    #[schema(
        pattern = r"^[ -]*(?:[0-9][ -]*){12,19}$",
        example = "4242 4242 4242 4242"
    )]
    pub pan: String,
    #[schema(minimum = 1, maximum = 12)]
    #[serde(deserialize_with = "v::whole_number::deserialize")]
    pub exp_month: u8,
    /// Not before the current month, at most 50 years ahead.
    #[serde(deserialize_with = "v::whole_number::deserialize")]
    pub exp_year: u16,
    #[schema(min_length = 1, max_length = 128)]
    pub holder_name: Option<String>,
}

/// A validated card. `brand` is derived from the PAN.
#[derive(Deserialize, Serialize, Zeroize, ZeroizeOnDrop, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Card {
    pub pan: String,
    #[zeroize(skip)]
    pub brand: Brand,
    pub exp_month: u8,
    pub exp_year: u16,
    pub holder_name: Option<String>,
}

impl CardInput {
    pub fn validate(&self, now: OffsetDateTime) -> Result<Card, Vec<Invalid>> {
        let mut errors = Errors::default();
        let pan = errors.check("pan", v::pan(&self.pan));
        errors.check("exp_month", v::expiry(self.exp_month, self.exp_year, now));
        let holder_name = self
            .holder_name
            .as_deref()
            .and_then(|n| errors.check("holder_name", v::text(n, 128)));
        errors.into_result()?;
        let (pan, brand) = pan.ok_or_else(Vec::new)?;
        Ok(Card {
            pan,
            brand,
            exp_month: self.exp_month,
            exp_year: self.exp_year,
            holder_name,
        })
    }
}

impl Card {
    /// The input that would produce this card (for merge patches).
    pub fn as_input(&self) -> CardInput {
        CardInput {
            pan: self.pan.clone(),
            exp_month: self.exp_month,
            exp_year: self.exp_year,
            holder_name: self.holder_name.clone(),
        }
    }
}

// ---- bank account ----

#[derive(Deserialize, Serialize, Zeroize, ZeroizeOnDrop, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BankAccountInput {
    /// An IBAN (white space ignored; mod-97 and the country's length); or,
    /// for US accounts, `account_number` + `routing_number` instead.
    #[schema(pattern = r"^[A-Za-z0-9\s]+$", example = "DE89 3704 0044 0532 0130 00")]
    pub iban: Option<String>,
    #[schema(pattern = r"^[0-9]{4,17}$")]
    pub account_number: Option<String>,
    /// ABA routing number (3-7-1 checksum).
    #[schema(pattern = r"^[0-9]{9}$")]
    pub routing_number: Option<String>,
    /// ISO 3166-1 alpha-2. Required with `account_number` (only `US` is
    /// supported there); with an IBAN it must be the IBAN's country.
    #[schema(pattern = r"^\s*[A-Za-z]{2}\s*$")]
    pub country: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    pub holder_name: Option<String>,
}

#[derive(Deserialize, Serialize, Zeroize, ZeroizeOnDrop, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BankAccount {
    pub iban: Option<String>,
    pub account_number: Option<String>,
    pub routing_number: Option<String>,
    pub country: String,
    pub holder_name: Option<String>,
}

impl BankAccountInput {
    pub fn validate(&self) -> Result<BankAccount, Vec<Invalid>> {
        let mut errors = Errors::default();
        let holder_name = self
            .holder_name
            .as_deref()
            .and_then(|n| errors.check("holder_name", v::text(n, 128)));
        let account = match (&self.iban, &self.account_number, &self.routing_number) {
            (Some(iban), None, None) => {
                let parsed = errors.check("iban", v::iban(iban));
                if let (Some(c), Some((_, iban_country))) = (&self.country, &parsed)
                    && v::country(c).ok().as_ref() != Some(iban_country)
                {
                    errors.add("country", "does not match the IBAN's country");
                }
                parsed.map(|(iban, country)| (Some(iban), None, None, country))
            }
            (None, Some(account), Some(routing)) => {
                let account = errors.check("account_number", v::us_account(account));
                let routing = errors.check("routing_number", v::aba_routing(routing));
                match self.country.as_deref().map(v::country) {
                    Some(Ok(c)) if c == "US" => {}
                    Some(Ok(_)) => errors.add(
                        "country",
                        "account and routing numbers are supported for US only",
                    ),
                    Some(Err(m)) => errors.add("country", m),
                    None => errors.add("country", "is required with an account number"),
                }
                Some((None, account, routing, "US".to_owned()))
            }
            _ => {
                errors.add(
                    "iban",
                    "give an iban, or an account_number with a routing_number",
                );
                None
            }
        };
        errors.into_result()?;
        let (iban, account_number, routing_number, country) = account.ok_or_else(Vec::new)?;
        Ok(BankAccount {
            iban,
            account_number,
            routing_number,
            country,
            holder_name,
        })
    }
}

impl BankAccount {
    pub fn as_input(&self) -> BankAccountInput {
        BankAccountInput {
            iban: self.iban.clone(),
            account_number: self.account_number.clone(),
            routing_number: self.routing_number.clone(),
            country: Some(self.country.clone()),
            holder_name: self.holder_name.clone(),
        }
    }

    /// The identifying number (IBAN or account number).
    pub fn number(&self) -> &str {
        self.iban
            .as_deref()
            .or(self.account_number.as_deref())
            .unwrap_or_default()
    }
}

// ---- KYC ----

#[derive(
    Deserialize, Serialize, Zeroize, ZeroizeOnDrop, Clone, PartialEq, Eq, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct LegalName {
    #[schema(min_length = 1, max_length = 100)]
    pub given: String,
    #[schema(min_length = 1, max_length = 100)]
    pub middle: Option<String>,
    #[schema(min_length = 1, max_length = 100)]
    pub family: String,
}

#[derive(
    Deserialize, Serialize, Zeroize, ZeroizeOnDrop, Clone, PartialEq, Eq, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Address {
    #[schema(min_length = 1, max_length = 200)]
    pub line1: String,
    #[schema(min_length = 1, max_length = 200)]
    pub line2: Option<String>,
    #[schema(min_length = 1, max_length = 100)]
    pub city: String,
    #[schema(min_length = 1, max_length = 100)]
    pub region: Option<String>,
    #[schema(min_length = 1, max_length = 20)]
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2.
    #[schema(pattern = r"^\s*[A-Za-z]{2}\s*$")]
    pub country: String,
}

#[derive(
    Deserialize, Serialize, Zeroize, ZeroizeOnDrop, Clone, PartialEq, Eq, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct NationalId {
    /// The document type (docs/data-model.md): a country-specific type
    /// must come with its issuing country, and its number is checked.
    #[serde(rename = "type")]
    #[schema(value_type = NationalIdType)]
    pub id_type: String,
    /// 1–32 letters and digits once spaces, dashes and dots are removed;
    /// country-specific types are checked further (docs/data-model.md).
    #[schema(pattern = r"^[ .-]*(?:[A-Za-z0-9][ .-]*){1,32}$")]
    pub number: String,
    /// ISO 3166-1 alpha-2 of the issuer.
    #[schema(pattern = r"^\s*[A-Za-z]{2}\s*$")]
    pub country: String,
}

#[derive(Deserialize, Serialize, Zeroize, ZeroizeOnDrop, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KycInput {
    pub legal_name: LegalName,
    /// A real date, YYYY-MM-DD, not in the future, not before 1800.
    #[schema(format = Date, example = "1815-12-10")]
    pub date_of_birth: String,
    /// ISO 3166-1 alpha-2.
    #[schema(pattern = r"^\s*[A-Za-z]{2}\s*$")]
    pub nationality: Option<String>,
    pub address: Option<Address>,
    pub national_id: Option<NationalId>,
    /// Lower-cased; at most 254 characters.
    #[schema(format = Email, max_length = 254)]
    pub email: Option<String>,
    /// E.164 (`+`, 8–15 digits, not starting with 0); spaces, dashes, dots
    /// and parentheses are ignored.
    #[schema(
        pattern = r"^[ .()-]*\+[ .()-]*[1-9](?:[ .()-]*[0-9]){7,14}[ .()-]*$",
        example = "+44 20 7946 0958"
    )]
    pub phone: Option<String>,
}

/// A validated KYC record (same shape as its input, normalised).
#[derive(Deserialize, Serialize, Zeroize, ZeroizeOnDrop, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Kyc {
    pub legal_name: LegalName,
    pub date_of_birth: String,
    pub nationality: Option<String>,
    pub address: Option<Address>,
    pub national_id: Option<NationalId>,
    pub email: Option<String>,
    pub phone: Option<String>,
}

impl KycInput {
    pub fn validate(&self, now: OffsetDateTime) -> Result<Kyc, Vec<Invalid>> {
        let mut e = Errors::default();
        let name = LegalName {
            given: e
                .check("legal_name.given", v::text(&self.legal_name.given, 100))
                .unwrap_or_default(),
            middle: self
                .legal_name
                .middle
                .as_deref()
                .and_then(|m| e.check("legal_name.middle", v::text(m, 100))),
            family: e
                .check("legal_name.family", v::text(&self.legal_name.family, 100))
                .unwrap_or_default(),
        };
        let dob = e.check("date_of_birth", v::date_of_birth(&self.date_of_birth, now));
        let nationality = self
            .nationality
            .as_deref()
            .and_then(|c| e.check("nationality", v::country(c)));
        let address = self.address.as_ref().map(|a| Address {
            line1: e
                .check("address.line1", v::text(&a.line1, 200))
                .unwrap_or_default(),
            line2: a
                .line2
                .as_deref()
                .and_then(|l| e.check("address.line2", v::text(l, 200))),
            city: e
                .check("address.city", v::text(&a.city, 100))
                .unwrap_or_default(),
            region: a
                .region
                .as_deref()
                .and_then(|r| e.check("address.region", v::text(r, 100))),
            postal_code: a
                .postal_code
                .as_deref()
                .and_then(|p| e.check("address.postal_code", v::text(p, 20))),
            country: e
                .check("address.country", v::country(&a.country))
                .unwrap_or_default(),
        });
        let national_id = self.national_id.as_ref().map(|n| {
            let id_type = NationalIdType::parse(&n.id_type);
            if id_type.is_none() {
                e.add(
                    "national_id.type",
                    "is not a supported identity document type (docs/data-model.md lists them)",
                );
            }
            let number = e.check("national_id.number", document_number(&n.number));
            let country = e.check("national_id.country", v::country(&n.country));
            if let (Some(t), Some(number)) = (id_type, &number) {
                e.check("national_id.number", t.check(number));
            }
            if let (Some(issuer), Some(country)) =
                (id_type.and_then(NationalIdType::issuing_country), &country)
                && issuer != country
            {
                e.add(
                    "national_id.country",
                    "is not the country that issues this type of number",
                );
            }
            NationalId {
                id_type: id_type.map(|t| t.as_str().to_owned()).unwrap_or_default(),
                number: number.unwrap_or_default(),
                country: country.unwrap_or_default(),
            }
        });
        let email = self
            .email
            .as_deref()
            .and_then(|m| e.check("email", v::email(m)));
        let phone = self
            .phone
            .as_deref()
            .and_then(|p| e.check("phone", v::phone(p)));
        e.into_result()?;
        Ok(Kyc {
            legal_name: name,
            date_of_birth: dob.map(|d| d.to_string()).unwrap_or_default(),
            nationality,
            address,
            national_id,
            email,
            phone,
        })
    }
}

impl Kyc {
    pub fn as_input(&self) -> KycInput {
        KycInput {
            legal_name: self.legal_name.clone(),
            date_of_birth: self.date_of_birth.clone(),
            nationality: self.nationality.clone(),
            address: self.address.clone(),
            national_id: self.national_id.clone(),
            email: self.email.clone(),
            phone: self.phone.clone(),
        }
    }
}

redacted_debug!(
    CardInput,
    Card,
    BankAccountInput,
    BankAccount,
    LegalName,
    Address,
    NationalId,
    KycInput,
    Kyc
);

/// RFC 7396 JSON merge patch.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(map) = target {
        for (key, value) in patch_map {
            if value.is_null() {
                map.remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
        let mut doc = json!({"a": [1]});
        merge_patch(&mut doc, &json!({"a": {"b": 1}}));
        assert_eq!(doc, json!({"a": {"b": 1}}));
    }

    #[test]
    fn security_codes_are_refused_anywhere() {
        assert!(refuse_security_codes(&json!({"pan": "1", "CVV": "123"})).is_err());
        assert!(refuse_security_codes(&json!({"card": {"cvc2": "1"}})).is_err());
        assert!(refuse_security_codes(&json!({"pan": "1"})).is_ok());
    }

    #[test]
    fn debug_never_prints_values() {
        let card = Card {
            pan: "4242424242424242".into(),
            brand: Brand::Visa,
            exp_month: 1,
            exp_year: 2030,
            holder_name: Some("Ada".into()),
        };
        assert_eq!(format!("{card:?}"), "Card(<redacted>)");
    }
}
