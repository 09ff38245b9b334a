//! Record types, their schemas and validation, the views each role gets,
//! and the plaintext form that is sealed.
//!
//! This module owns what a record *is*. It never writes anything: storage
//! and sealing happen in `vault`, through the keyring. Plaintext types here
//! zeroize on drop and never print their values.

mod national_id;
mod schema;
mod validate;
mod view;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use national_id::{NationalIdType, document_number};
pub use schema::{
    Address, BankAccount, BankAccountInput, Card, CardInput, Kyc, KycInput, LegalName, NationalId,
    merge_patch, refuse_security_codes,
};
pub use validate::{Brand, Invalid, luhn_valid, safe_field_path, whole_number};
pub use view::{Field, View, initials, last4, masked_view, view};

use crate::keyring::Purpose;

/// The kinds of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordType {
    Card,
    BankAccount,
    Kyc,
}

impl RecordType {
    pub const ALL: [RecordType; 3] = [RecordType::Card, RecordType::BankAccount, RecordType::Kyc];

    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::Card => "card",
            RecordType::BankAccount => "bank_account",
            RecordType::Kyc => "kyc",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }

    /// The prefix of this type's record ids.
    pub fn id_prefix(self) -> &'static str {
        match self {
            RecordType::Card => "card_",
            RecordType::BankAccount => "bank_",
            RecordType::Kyc => "kyc_",
        }
    }

    /// The type of a record id, by its prefix.
    pub fn of_id(id: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| id.starts_with(t.id_prefix()))
    }

    /// The KEK family that protects this type.
    pub fn purpose(self) -> Purpose {
        match self {
            RecordType::Card => Purpose::Card,
            RecordType::BankAccount => Purpose::Bank,
            RecordType::Kyc => Purpose::Kyc,
        }
    }

    /// Fields a reveal may name, and whether each needs an approved access
    /// request first.
    pub fn revealable_fields(self) -> &'static [(&'static str, bool)] {
        match self {
            RecordType::Card => &[
                ("pan", true),
                ("exp_month", false),
                ("exp_year", false),
                ("holder_name", false),
            ],
            RecordType::BankAccount => &[
                ("iban", false),
                ("account_number", false),
                ("routing_number", false),
                ("country", false),
                ("holder_name", false),
            ],
            RecordType::Kyc => &[
                ("legal_name", false),
                ("date_of_birth", false),
                ("nationality", false),
                ("address", false),
                ("national_id", true),
                ("email", false),
                ("phone", false),
            ],
        }
    }
}

/// A validated record of any type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RecordData {
    Card(Card),
    BankAccount(BankAccount),
    Kyc(Box<Kyc>),
}

fn from_value<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, Vec<Invalid>> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        vec![Invalid {
            field: safe_field_path(e.path()),
            message: "missing, unknown, or of the wrong type",
        }]
    })
}

impl RecordData {
    pub fn record_type(&self) -> RecordType {
        match self {
            RecordData::Card(_) => RecordType::Card,
            RecordData::BankAccount(_) => RecordType::BankAccount,
            RecordData::Kyc(_) => RecordType::Kyc,
        }
    }

    /// Parses and validates a client's JSON for `record_type` (without
    /// `subject_ref`, which the caller takes out first).
    pub fn parse(
        record_type: RecordType,
        value: serde_json::Value,
        now: OffsetDateTime,
    ) -> Result<Self, Vec<Invalid>> {
        refuse_security_codes(&value)?;
        match record_type {
            RecordType::Card => from_value::<CardInput>(value)?
                .validate(now)
                .map(RecordData::Card),
            RecordType::BankAccount => from_value::<BankAccountInput>(value)?
                .validate()
                .map(RecordData::BankAccount),
            RecordType::Kyc => from_value::<KycInput>(value)?
                .validate(now)
                .map(|k| RecordData::Kyc(Box::new(k))),
        }
    }

    /// The client-shaped JSON of this record, for applying a merge patch.
    pub fn as_input_json(&self) -> serde_json::Value {
        let value = match self {
            RecordData::Card(c) => serde_json::to_value(c.as_input()),
            RecordData::BankAccount(b) => serde_json::to_value(b.as_input()),
            RecordData::Kyc(k) => serde_json::to_value(k.as_input()),
        };
        value.unwrap_or_default()
    }

    /// The plaintext of one revealable field.
    pub fn field(&self, name: &str) -> Option<serde_json::Value> {
        let whole = match self {
            RecordData::Card(c) => serde_json::to_value(c),
            RecordData::BankAccount(b) => serde_json::to_value(b),
            RecordData::Kyc(k) => serde_json::to_value(k),
        }
        .ok()?;
        whole.get(name).filter(|v| !v.is_null()).cloned()
    }

    /// Values for blind indexes: (search field, normalised value).
    pub fn index_values(&self) -> Vec<(&'static str, String)> {
        match self {
            RecordData::Card(c) => vec![("pan", c.pan.clone())],
            RecordData::BankAccount(_) => Vec::new(),
            RecordData::Kyc(k) => {
                let mut out = Vec::new();
                if let Some(n) = &k.national_id {
                    out.push((
                        "national_id",
                        national_id_index_value(&n.number, &n.country),
                    ));
                }
                if let Some(e) = &k.email {
                    out.push(("email", e.clone()));
                }
                if let Some(p) = &k.phone {
                    out.push(("phone", p.clone()));
                }
                out
            }
        }
    }
}

/// The normalised value a national id is indexed and searched under:
/// `COUNTRY:NUMBER`, both as validation normalises them (the number by
/// [`document_number`], whatever its type, so search needs no type).
pub fn national_id_index_value(number: &str, country: &str) -> String {
    let number = document_number(number).unwrap_or_else(|_| number.trim().to_uppercase());
    format!("{}:{}", country.trim().to_uppercase(), number)
}

/// Normalises a search value for `field` as records are indexed; `None` if
/// the value could never match (invalid for the field).
pub fn search_value(field: &str, value: &str, country: Option<&str>) -> Option<String> {
    match field {
        "pan" => validate::pan(value).ok().map(|(p, _)| p),
        "email" => validate::email(value).ok(),
        "phone" => validate::phone(value).ok(),
        "national_id" => {
            let country = validate::country(country?).ok()?;
            let number = document_number(value).ok()?;
            Some(national_id_index_value(&number, &country))
        }
        _ => None,
    }
}

/// Checks a `subject_ref`: the customer id in the payment system.
pub fn subject_ref(raw: &str) -> Result<String, Invalid> {
    let ok = (1..=128).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(Invalid {
            field: "subject_ref".into(),
            message: "must be 1 to 128 printable ASCII characters",
        })
    }
}
