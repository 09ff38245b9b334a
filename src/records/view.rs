//! Which view of each field each role gets: the one table, and the masks.
//! No role gets plaintext from a read; plaintext leaves only through a
//! reveal (compliance officers, with reason, ticket and, for the most
//! sensitive fields, an approved access request).

use serde_json::{Map, Value, json};

use super::RecordData;
use crate::access::Role;

/// How a field is shown in a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The mask (last 4, initials, year…). A PAN's mask is its brand and
    /// last 4 for every role: with the first 6 as well, only about 10^5
    /// Luhn-valid PANs would remain to try by search (docs/access-control.md).
    Masked,
    /// Left out.
    Redacted,
}

/// Fields as the view table knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Pan,
    Expiry,
    HolderName,
    AccountNumber,
    BankCountry,
    LegalName,
    DateOfBirth,
    Nationality,
    Address,
    NationalId,
    Email,
    Phone,
}

/// The policy: role × field → view.
pub fn view(role: Role, field: Field) -> View {
    use Field as F;
    match role {
        Role::PaymentService => match field {
            F::Nationality => View::Redacted,
            _ => View::Masked,
        },
        Role::ComplianceOfficer | Role::ComplianceApprover => View::Masked,
        // No record data for administrators, auditors and scrapers.
        Role::Admin | Role::Auditor | Role::Metrics => View::Redacted,
        // A collector sees only what its create answer holds (brand, last 4,
        // expiry: see `api::records`); the masks are the payment service's.
        Role::Collector => match field {
            F::Pan | F::Expiry => View::Masked,
            _ => View::Redacted,
        },
    }
}

/// The most revealing view any of `roles` has of `field`.
fn best_view(roles: &[Role], field: Field) -> View {
    let rank = |v: View| match v {
        View::Redacted => 0,
        View::Masked => 1,
    };
    roles
        .iter()
        .map(|r| view(*r, field))
        .max_by_key(|v| rank(*v))
        .unwrap_or(View::Redacted)
}

/// The last four characters of `s` (all of it if shorter).
pub fn last4(s: &str) -> String {
    let tail: Vec<char> = s.chars().rev().take(4).collect();
    tail.into_iter().rev().collect()
}

/// "Ada King Lovelace" → "A. K. L."
pub fn initials(parts: &[&str]) -> String {
    parts
        .iter()
        .flat_map(|p| p.split_whitespace())
        .filter_map(|w| w.chars().next())
        .map(|c| format!("{}.", c.to_uppercase()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

fn mask_phone(phone: &str) -> String {
    let visible = last4(phone);
    let hidden = phone.chars().count().saturating_sub(5);
    format!("+{}{visible}", "*".repeat(hidden))
}

/// The view of `data` for a caller holding `roles`: masks only.
pub fn masked_view(data: &RecordData, roles: &[Role]) -> Value {
    let mut out = Map::new();
    let mut put = |field: Field, key: &str, make: &dyn Fn(View) -> Option<Value>| {
        let v = best_view(roles, field);
        if v != View::Redacted
            && let Some(value) = make(v)
        {
            out.insert(key.to_owned(), value);
        }
    };
    match data {
        RecordData::Card(card) => {
            put(Field::Pan, "brand", &|_| Some(json!(card.brand)));
            put(Field::Pan, "last4", &|_| Some(json!(last4(&card.pan))));
            put(Field::Expiry, "exp_month", &|_| Some(json!(card.exp_month)));
            put(Field::Expiry, "exp_year", &|_| Some(json!(card.exp_year)));
            put(Field::HolderName, "holder_name", &|_| {
                card.holder_name.as_deref().map(|n| json!(initials(&[n])))
            });
        }
        RecordData::BankAccount(bank) => {
            put(Field::AccountNumber, "last4", &|_| {
                Some(json!(last4(bank.number())))
            });
            put(Field::BankCountry, "country", &|_| {
                Some(json!(bank.country))
            });
            put(Field::HolderName, "holder_name", &|_| {
                bank.holder_name.as_deref().map(|n| json!(initials(&[n])))
            });
        }
        RecordData::Kyc(kyc) => {
            let name = &kyc.legal_name;
            put(Field::LegalName, "legal_name", &|_| {
                let mut parts = vec![name.given.as_str()];
                parts.extend(name.middle.as_deref());
                parts.push(name.family.as_str());
                Some(json!(initials(&parts)))
            });
            put(Field::DateOfBirth, "date_of_birth", &|_| {
                kyc.date_of_birth.get(..4).map(|y| json!(y))
            });
            put(Field::Nationality, "nationality", &|_| {
                kyc.nationality.as_ref().map(|n| json!(n))
            });
            put(Field::Address, "address", &|_| {
                kyc.address.as_ref().map(|a| json!({"country": a.country}))
            });
            put(Field::NationalId, "national_id", &|_| {
                kyc.national_id.as_ref().map(|n| {
                    // A PESEL is the birth date, four digits and a check
                    // digit: its last four and the (revealable) birth date
                    // leave one digit, which the check digit fixes. So no
                    // digit of a PESEL is shown.
                    let last4 = (n.id_type != "pesel").then(|| last4(&n.number));
                    json!({"type": n.id_type, "country": n.country, "last4": last4})
                })
            });
            put(Field::Email, "email", &|_| {
                kyc.email.as_deref().map(|e| json!(mask_email(e)))
            });
            put(Field::Phone, "phone", &|_| {
                kyc.phone.as_deref().map(|p| json!(mask_phone(p)))
            });
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(initials(&["Ada", "King Lovelace"]), "A. K. L.");
        assert_eq!(mask_email("ada@example.org"), "a***@example.org");
        assert_eq!(mask_phone("+442079460958"), "+********0958");
        assert_eq!(last4("12"), "12");
    }

    #[test]
    fn no_role_sees_more_of_a_pan_than_brand_and_last4_and_admins_see_nothing() {
        for role in Role::ALL {
            let v = view(role, Field::Pan);
            if matches!(role, Role::Admin | Role::Auditor | Role::Metrics) {
                assert_eq!(v, View::Redacted);
                assert_eq!(view(role, Field::HolderName), View::Redacted);
            } else if role == Role::Collector {
                // Brand, last 4 and expiry: nothing of any other field.
                assert_eq!(v, View::Masked);
                for field in [
                    Field::HolderName,
                    Field::AccountNumber,
                    Field::BankCountry,
                    Field::LegalName,
                    Field::DateOfBirth,
                    Field::Nationality,
                    Field::Address,
                    Field::NationalId,
                    Field::Email,
                    Field::Phone,
                ] {
                    assert_eq!(view(role, field), View::Redacted, "{field:?}");
                }
            } else {
                assert_eq!(v, View::Masked);
            }
        }
    }

    #[test]
    fn no_digit_of_a_pesel_is_shown() {
        let kyc = |id_type: &str, number: &str| {
            RecordData::parse(
                crate::records::RecordType::Kyc,
                serde_json::json!({
                    "legal_name": {"given": "Ada", "family": "Nowak"},
                    "date_of_birth": "1944-05-14",
                    "national_id": {"type": id_type, "number": number, "country": "PL"}
                }),
                time::macros::datetime!(2026-11-29 00:00 UTC),
            )
            .unwrap()
        };
        let pesel = masked_view(&kyc("pesel", "44051401359"), &[Role::ComplianceOfficer]);
        assert_eq!(pesel["national_id"]["last4"], Value::Null, "{pesel}");
        assert!(!pesel.to_string().contains("1359"));
        let passport = masked_view(&kyc("passport", "925076473"), &[Role::ComplianceOfficer]);
        assert_eq!(passport["national_id"]["last4"], "6473");
    }
}
