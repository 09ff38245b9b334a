//! Canaries (docs/lifecycle.md, "Canaries"): records no customer has,
//! planted so that whoever goes looking where no one should trips an alarm.
//!
//! This module owns what a canary's data looks like, the names of the
//! paths that can touch one, the alarm's webhook body and the canary
//! settings. It never stores anything (the vault seals the mark inside the
//! record body, `vault::Opened`) and never decides an answer: every path
//! answers a canary exactly as it answers a real record, and only then
//! tells `AppState::touched` (`api::canaries`), which raises the alarm.
//! Nothing here may put a value in a log line, a metric or the webhook.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::crypto::random_array;
use crate::records::{Brand, RecordData, RecordType, luhn_valid};

/// How long one webhook delivery may take, connection included.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Webhook deliveries in flight at once; the rest wait their turn.
pub const WEBHOOK_CONCURRENCY: usize = 16;
/// Deliveries waiting or in flight at most: beyond, an alarm's delivery
/// is dropped (logged and counted as a failure), never the alarm itself
/// (its audit entry, line and metric).
pub const WEBHOOK_QUEUE: usize = 1024;

/// Where a canary was touched: the `path` label of the metric and a field
/// of the webhook. One alarm per record per access on each of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessPath {
    /// `GET /v1/records/{id}`.
    Read,
    /// `PATCH /v1/records/{id}`: the record is opened to apply the patch.
    Update,
    /// `POST /v1/tokens/detokenize`: once per token that resolves to one.
    Detokenize,
    /// `POST /v1/search`: once per canary among the hits.
    Search,
    /// `POST /v1/records/{id}/reveal`.
    Reveal,
    /// `POST /v1/relay/{route}/…`: once per canary record sent.
    Relay,
    /// `POST /v1/records/{id}/cvc`: the card is opened to check the CVC.
    CvcAttach,
    /// `GET /v1/subjects/{subject_ref}` (issue 14, subjects): the hook for
    /// the subject lookup, one per canary record it lists.
    SubjectLookup,
}

impl AccessPath {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessPath::Read => "read",
            AccessPath::Update => "update",
            AccessPath::Detokenize => "detokenize",
            AccessPath::Search => "search",
            AccessPath::Reveal => "reveal",
            AccessPath::Relay => "relay",
            AccessPath::CvcAttach => "cvc_attach",
            AccessPath::SubjectLookup => "subject_lookup",
        }
    }
}

/// The webhook's body for one alarm: which canary, where, by whom. Ids
/// only: never a value, a token or a credential.
pub fn webhook_body(
    canary_id: &str,
    record_type: RecordType,
    path: AccessPath,
    principal: &str,
    request_id: &str,
    time: &str,
) -> Value {
    json!({
        "event": "canary.touched",
        "canary_id": canary_id,
        "record_type": record_type,
        "path": path,
        "principal": principal,
        "request_id": request_id,
        "time": time,
    })
}

/// Where alarms are posted, from `[canaries]` (docs/operations.md).
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `https://…`, checked like a relay route's base URL.
    pub url: String,
    /// PEM bundle: when set, the only roots trusted for the webhook.
    pub ca_pem: Option<String>,
}

/// The host of webhook URL `url`, all a `Debug` print may show of it: a
/// webhook URL often carries its credential in the path (chat services'
/// incoming webhooks).
pub fn webhook_host(url: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("host", &webhook_host(&self.url))
            .field("ca_pem", &self.ca_pem.is_some())
            .finish()
    }
}

/// The `[canaries]` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CanarySettings {
    /// Where alarms are posted, if anywhere.
    pub webhook: Option<Webhook>,
    /// The issuer identification number (6 to 8 digits) canary cards are
    /// made under when a request names none: a range no card is issued
    /// from (the BIN sponsor says which).
    pub card_iin: Option<String>,
}

/// Why canary data could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CanaryError {
    /// The IIN is not 6 to 8 digits of a known brand's range.
    #[error("must be 6 to 8 digits in a card brand's range")]
    Iin,
    #[error("the system RNG failed")]
    Rng,
    /// What was made does not validate as its record type: a fault here.
    #[error("generated canary data does not validate")]
    Invalid,
}

/// A uniform choice below `n` (n > 0), by rejection so there is no bias.
fn below(n: u64) -> Result<u64, CanaryError> {
    let n = n.max(1);
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let v = u64::from_le_bytes(random_array::<8>().map_err(|_| CanaryError::Rng)?);
        if v < zone {
            return Ok(v % n);
        }
    }
}

fn pick<'a>(items: &[&'a str]) -> Result<&'a str, CanaryError> {
    let i = usize::try_from(below(items.len() as u64)?).map_err(|_| CanaryError::Rng)?;
    items.get(i).copied().ok_or(CanaryError::Rng)
}

fn digits(count: usize) -> Result<String, CanaryError> {
    (0..count)
        .map(|_| below(10).map(|d| char::from(b'0' + u8::try_from(d).unwrap_or_default())))
        .collect()
}

const GIVEN: [&str; 16] = [
    "Oliver", "Amelia", "George", "Isla", "Harry", "Ava", "Jack", "Emily", "Thomas", "Sophie",
    "James", "Grace", "William", "Chloe", "Daniel", "Lucy",
];
const FAMILY: [&str; 16] = [
    "Whitfield",
    "Marsden",
    "Carver",
    "Ashworth",
    "Pennington",
    "Holloway",
    "Fairbairn",
    "Langley",
    "Thornton",
    "Redmond",
    "Calloway",
    "Brierley",
    "Hartley",
    "Kendrick",
    "Sutcliffe",
    "Blackwood",
];
const STREETS: [&str; 10] = [
    "Albert Road",
    "Church Lane",
    "Victoria Street",
    "Mill Lane",
    "Station Road",
    "Park Avenue",
    "Queens Road",
    "Highfield Road",
    "Manor Close",
    "Orchard Way",
];
/// City and the outward part of a postcode there.
const CITIES: [(&str, &str); 8] = [
    ("Leeds", "LS6"),
    ("Bristol", "BS7"),
    ("Manchester", "M20"),
    ("Nottingham", "NG7"),
    ("Sheffield", "S11"),
    ("York", "YO31"),
    ("Norwich", "NR2"),
    ("Cardiff", "CF14"),
];
const MAIL_DOMAINS: [&str; 4] = ["gmail.com", "outlook.com", "yahoo.co.uk", "icloud.com"];
/// UK bank codes as they appear in IBANs.
const BANK_CODES: [&str; 5] = ["NWBK", "BARC", "LOYD", "HBUK", "MIDL"];

/// One invented person: canaries made together share them, as one
/// customer's records do.
pub struct Persona {
    given: &'static str,
    family: &'static str,
}

impl Persona {
    pub fn new() -> Result<Self, CanaryError> {
        Ok(Self {
            given: pick(&GIVEN)?,
            family: pick(&FAMILY)?,
        })
    }

    fn full_name(&self) -> String {
        format!("{} {}", self.given, self.family)
    }
}

/// Whether `iin` can stand for canary cards: 6 to 8 digits in a card
/// brand's range. The one check of an IIN, wherever one is given (a
/// request, the configuration).
pub fn check_iin(iin: &str) -> Result<Brand, CanaryError> {
    if !(6..=8).contains(&iin.len()) || !iin.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CanaryError::Iin);
    }
    match Brand::of(iin) {
        Brand::Unknown => Err(CanaryError::Iin),
        brand => Ok(brand),
    }
}

/// A card under `iin`: a Luhn-valid number of the brand's length, a
/// plausible expiry and the persona's name.
pub fn card(persona: &Persona, iin: &str, now: OffsetDateTime) -> Result<RecordData, CanaryError> {
    let length = match check_iin(iin)? {
        Brand::Amex => 15,
        _ => 16,
    };
    let stem = format!("{iin}{}", digits(length - iin.len() - 1)?);
    let pan = (0..10u8)
        .map(|d| format!("{stem}{d}"))
        .find(|candidate| luhn_valid(candidate))
        .ok_or(CanaryError::Invalid)?;
    let years_ahead = 1 + below(4)?;
    let month = 1 + below(12)?;
    let input = json!({
        "pan": pan,
        "exp_month": month,
        "exp_year": i64::from(now.year()) + i64::try_from(years_ahead).unwrap_or(1),
        "holder_name": persona.full_name().to_uppercase(),
    });
    RecordData::parse(RecordType::Card, input, now).map_err(|_| CanaryError::Invalid)
}

/// A KYC record of a UK resident: name, birth date, address, passport,
/// an email address with a random number in it, and a mobile number from
/// Ofcom's range kept for drama (+44 7700 900xxx: no subscriber has one, so
/// a search for a real customer's number never meets a canary).
pub fn kyc(persona: &Persona, now: OffsetDateTime) -> Result<RecordData, CanaryError> {
    let (city, outward) = CITIES
        .get(usize::try_from(below(CITIES.len() as u64)?).map_err(|_| CanaryError::Rng)?)
        .copied()
        .ok_or(CanaryError::Rng)?;
    let year = 1955 + below(48)?;
    let month = 1 + below(12)?;
    let day = 1 + below(28)?;
    let letters = b"ABDEFGHJLNPQRSTUWXYZ";
    let inward_letter = |i: u64| {
        letters
            .get(usize::try_from(i).unwrap_or_default())
            .copied()
            .map(char::from)
            .unwrap_or('A')
    };
    let postcode = format!(
        "{outward} {}{}{}",
        below(10)?,
        inward_letter(below(letters.len() as u64)?),
        inward_letter(below(letters.len() as u64)?)
    );
    let input = json!({
        "legal_name": {"given": persona.given, "family": persona.family},
        "date_of_birth": format!("{year:04}-{month:02}-{day:02}"),
        "nationality": "GB",
        "address": {
            "line1": format!("{} {}", 1 + below(180)?, pick(&STREETS)?),
            "city": city,
            "postal_code": postcode,
            "country": "GB",
        },
        "national_id": {"type": "passport", "number": format!("{}{}", 1 + below(9)?, digits(8)?), "country": "GB"},
        "email": format!(
            "{}.{}{}@{}",
            persona.given.to_lowercase(),
            persona.family.to_lowercase(),
            10 + below(90)?,
            pick(&MAIL_DOMAINS)?
        ),
        "phone": format!("+44 7700 900{}", digits(3)?),
    });
    RecordData::parse(RecordType::Kyc, input, now).map_err(|_| CanaryError::Invalid)
}

/// A UK bank account as an IBAN (GBkk, bank code, sort code, account
/// number), its check digits computed (ISO 13616 mod 97).
pub fn bank_account(persona: &Persona) -> Result<RecordData, CanaryError> {
    let bban = format!("{}{}{}", pick(&BANK_CODES)?, digits(6)?, digits(8)?);
    let iban = format!("GB{:02}{bban}", iban_check_digits("GB", &bban));
    let input = json!({
        "iban": iban,
        "holder_name": persona.full_name(),
    });
    RecordData::parse(RecordType::BankAccount, input, OffsetDateTime::UNIX_EPOCH)
        .map_err(|_| CanaryError::Invalid)
}

/// ISO 13616 check digits of `country` and `bban`: 98 minus the remainder
/// of BBAN ‖ country ‖ "00" (letters as 10–35) divided by 97.
fn iban_check_digits(country: &str, bban: &str) -> u32 {
    let mut remainder = 0u32;
    for c in bban.chars().chain(country.chars()).chain("00".chars()) {
        let value = c.to_digit(36).unwrap_or(0);
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    98 - remainder
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn made_canaries_validate_as_their_types() {
        let now = OffsetDateTime::now_utc();
        for _ in 0..50 {
            let persona = Persona::new().unwrap();
            let RecordData::Card(card) = card(&persona, "431940", now).unwrap() else {
                panic!("not a card");
            };
            assert!(card.pan.starts_with("431940") && card.pan.len() == 16);
            assert!(luhn_valid(&card.pan));
            assert_eq!(card.brand, Brand::Visa);
            let amex = card_of(&persona, "371234", now);
            assert_eq!(amex.len(), 15);
            assert!(matches!(kyc(&persona, now).unwrap(), RecordData::Kyc(_)));
            assert!(matches!(
                bank_account(&persona).unwrap(),
                RecordData::BankAccount(_)
            ));
        }
    }

    fn card_of(persona: &Persona, iin: &str, now: OffsetDateTime) -> String {
        match card(persona, iin, now).unwrap() {
            RecordData::Card(card) => card.pan.clone(),
            _ => panic!("not a card"),
        }
    }

    #[test]
    fn an_iin_must_be_6_to_8_digits_of_a_brand() {
        let persona = Persona::new().unwrap();
        let now = OffsetDateTime::now_utc();
        for bad in ["4319", "431940123", "43194x", "999999", ""] {
            assert!(
                matches!(card(&persona, bad, now), Err(CanaryError::Iin)),
                "{bad}"
            );
        }
    }

    /// The IBAN check digits of the ECBS example (GB82 WEST 1234 5698 7654 32).
    #[test]
    fn iban_check_digits_match_the_published_example() {
        assert_eq!(iban_check_digits("GB", "WEST12345698765432"), 82);
    }
}
