//! Identity document types a KYC record may carry, by their common names,
//! and the format each country-specific number must have.
//!
//! A number is normalised the same way whatever its type (spaces, dashes
//! and dots removed, upper-cased: [`document_number`]), because search does
//! not know the type and must find what was stored. The checks here run on
//! that compact form and only decide whether a number is plausible; their
//! messages name the rule, never the value.

use super::validate::luhn_valid;

/// The identity document types, by the names clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NationalIdType {
    // Any country: checked only as 1–32 letters and digits.
    Passport,
    NationalId,
    DrivingLicence,
    ResidencePermit,
    TaxId,
    /// United States Social Security number.
    Ssn,
    /// United States Individual Taxpayer Identification Number.
    Itin,
    /// United Kingdom National Insurance number.
    Nino,
    /// Canada Social Insurance Number.
    Sin,
    /// Brazil Cadastro de Pessoas Físicas.
    Cpf,
    /// Spain Documento Nacional de Identidad.
    Dni,
    /// Spain Número de Identidad de Extranjero.
    Nie,
    /// Netherlands Burgerservicenummer.
    Bsn,
    /// Poland PESEL.
    Pesel,
}

impl NationalIdType {
    pub const ALL: [NationalIdType; 14] = [
        Self::Passport,
        Self::NationalId,
        Self::DrivingLicence,
        Self::ResidencePermit,
        Self::TaxId,
        Self::Ssn,
        Self::Itin,
        Self::Nino,
        Self::Sin,
        Self::Cpf,
        Self::Dni,
        Self::Nie,
        Self::Bsn,
        Self::Pesel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passport => "passport",
            Self::NationalId => "national_id",
            Self::DrivingLicence => "driving_licence",
            Self::ResidencePermit => "residence_permit",
            Self::TaxId => "tax_id",
            Self::Ssn => "ssn",
            Self::Itin => "itin",
            Self::Nino => "nino",
            Self::Sin => "sin",
            Self::Cpf => "cpf",
            Self::Dni => "dni",
            Self::Nie => "nie",
            Self::Bsn => "bsn",
            Self::Pesel => "pesel",
        }
    }

    /// The type named `raw` (trimmed, any case).
    pub fn parse(raw: &str) -> Option<Self> {
        let name = raw.trim().to_ascii_lowercase();
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The ISO 3166-1 alpha-2 code of the one country that issues this
    /// type, if it is country-specific.
    pub fn issuing_country(self) -> Option<&'static str> {
        match self {
            Self::Passport
            | Self::NationalId
            | Self::DrivingLicence
            | Self::ResidencePermit
            | Self::TaxId => None,
            Self::Ssn | Self::Itin => Some("US"),
            Self::Nino => Some("GB"),
            Self::Sin => Some("CA"),
            Self::Cpf => Some("BR"),
            Self::Dni | Self::Nie => Some("ES"),
            Self::Bsn => Some("NL"),
            Self::Pesel => Some("PL"),
        }
    }

    /// Checks a compact number (see [`document_number`]) against this
    /// type's format.
    pub fn check(self, compact: &str) -> Result<(), &'static str> {
        let ok = match self {
            Self::Passport
            | Self::NationalId
            | Self::DrivingLicence
            | Self::ResidencePermit
            | Self::TaxId => true,
            Self::Ssn => ssn(compact),
            Self::Itin => itin(compact),
            Self::Nino => nino(compact),
            Self::Sin => sin(compact),
            Self::Cpf => cpf(compact),
            Self::Dni => dni(compact),
            Self::Nie => nie(compact),
            Self::Bsn => bsn(compact),
            Self::Pesel => pesel(compact),
        };
        if ok { Ok(()) } else { Err(self.rule()) }
    }

    /// What a number of this type must look like (an error message).
    fn rule(self) -> &'static str {
        match self {
            Self::Passport
            | Self::NationalId
            | Self::DrivingLicence
            | Self::ResidencePermit
            | Self::TaxId => "must be 1 to 32 letters and digits",
            Self::Ssn => {
                "is not a US SSN: 9 digits, area not 000, 666 or 9xx, group not 00, serial not 0000"
            }
            Self::Itin => {
                "is not a US ITIN: 9 digits starting with 9, digits 4-5 in 50-65, 70-88, 90-92 or 94-99"
            }
            Self::Nino => {
                "is not a UK National Insurance number: two allocated prefix letters, 6 digits, suffix A-D"
            }
            Self::Sin => "is not a Canadian SIN: 9 digits, not starting with 0 or 8, Luhn check",
            Self::Cpf => "is not a Brazilian CPF: 11 digits with two mod-11 check digits",
            Self::Dni => "is not a Spanish DNI: 8 digits and the mod-23 check letter",
            Self::Nie => "is not a Spanish NIE: X, Y or Z, 7 digits and the mod-23 check letter",
            Self::Bsn => "is not a Dutch BSN: 9 digits passing the 11-test",
            Self::Pesel => {
                "is not a Polish PESEL: 11 digits, a real birth date and the check digit"
            }
        }
    }
}

/// An identity document number as it is stored and searched: spaces,
/// dashes and dots removed, upper-cased, 1 to 32 letters and digits.
pub fn document_number(raw: &str) -> Result<String, &'static str> {
    let compact: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.'))
        .collect();
    // ASCII checked before upper-casing: Unicode upper-casing would turn
    // `ß` into `SS`, a number the client never sent.
    let ok =
        (1..=32).contains(&compact.len()) && compact.bytes().all(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(compact.to_ascii_uppercase())
    } else {
        Err("must be 1 to 32 letters and digits (spaces, dashes and dots are ignored)")
    }
}

/// The digits of `text` if it is exactly `len` ASCII digits.
fn digits(text: &str, len: usize) -> Option<Vec<u32>> {
    if text.len() != len {
        return None;
    }
    text.chars().map(|c| c.to_digit(10)).collect()
}

/// The number formed by `digits`.
fn number(digits: &[u32]) -> u32 {
    digits.iter().fold(0, |n, d| n * 10 + d)
}

/// US SSN (SSA): area 001–899 except 666, group 01–99, serial 0001–9999.
fn ssn(text: &str) -> bool {
    let Some(d) = digits(text, 9) else {
        return false;
    };
    let (area, group, serial) = match (d.get(..3), d.get(3..5), d.get(5..)) {
        (Some(a), Some(g), Some(s)) => (number(a), number(g), number(s)),
        _ => return false,
    };
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// US ITIN (IRS): starts with 9; the 4th and 5th digits are 50–65, 70–88,
/// 90–92 or 94–99.
fn itin(text: &str) -> bool {
    let Some(d) = digits(text, 9) else {
        return false;
    };
    let group = d.get(3..5).map(number);
    d.first() == Some(&9)
        && group.is_some_and(|g| {
            (50..=65).contains(&g)
                || (70..=88).contains(&g)
                || (90..=92).contains(&g)
                || (94..=99).contains(&g)
        })
}

const UNALLOCATED_NINO_PREFIXES: [&[u8; 2]; 7] = [b"BG", b"GB", b"KN", b"NK", b"NT", b"TN", b"ZZ"];

/// UK National Insurance number (HMRC NIM39110): two prefix letters, the
/// first not D, F, I, Q, U or V, the second not D, F, I, O, Q, U or V, and
/// not BG, GB, KN, NK, NT, TN or ZZ; six digits; a suffix A–D.
fn nino(text: &str) -> bool {
    let bytes = text.as_bytes();
    let (Some(prefix), Some(middle), Some(suffix)) =
        (bytes.get(..2), bytes.get(2..8), bytes.get(8..))
    else {
        return false;
    };
    let (Some(&first), Some(&second)) = (prefix.first(), prefix.get(1)) else {
        return false;
    };
    first.is_ascii_uppercase()
        && second.is_ascii_uppercase()
        && !b"DFIQUV".contains(&first)
        && !b"DFIOQUV".contains(&second)
        && !UNALLOCATED_NINO_PREFIXES
            .iter()
            .any(|p| **p == [first, second])
        && middle.iter().all(u8::is_ascii_digit)
        && matches!(suffix, [b'A'..=b'D'])
}

/// Canadian SIN: 9 digits, Luhn-valid; 0 (unassigned) and 8 (unused) are
/// never first.
fn sin(text: &str) -> bool {
    digits(text, 9).is_some()
        && !text.starts_with('0')
        && !text.starts_with('8')
        && luhn_valid(text)
}

/// Brazilian CPF: 9 digits and two mod-11 check digits; numbers of one
/// repeated digit pass the arithmetic but are never issued.
fn cpf(text: &str) -> bool {
    let Some(d) = digits(text, 11) else {
        return false;
    };
    let check = |len: usize| {
        let sum: u32 = d
            .iter()
            .take(len)
            .zip((2..=u32::try_from(len + 1).unwrap_or(0)).rev())
            .map(|(digit, weight)| digit * weight)
            .sum();
        (11 - sum % 11) % 11 % 10
    };
    let repeated = d.iter().all(|x| Some(x) == d.first());
    !repeated && d.get(9) == Some(&check(9)) && d.get(10) == Some(&check(10))
}

const DNI_LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";

/// The Spanish check letter of `number`.
fn dni_letter(number: u32) -> Option<u8> {
    DNI_LETTERS.get(usize::try_from(number % 23).ok()?).copied()
}

/// Spanish DNI: 8 digits and the letter of their value mod 23.
fn dni(text: &str) -> bool {
    let (Some(body), Some(letter)) = (text.get(..8), text.as_bytes().get(8)) else {
        return false;
    };
    text.len() == 9 && digits(body, 8).is_some_and(|d| dni_letter(number(&d)) == Some(*letter))
}

/// Spanish NIE: X, Y or Z (read as 0, 1, 2), 7 digits, and the DNI letter
/// of the resulting 8-digit number.
fn nie(text: &str) -> bool {
    let lead = match text.as_bytes().first() {
        Some(b'X') => 0,
        Some(b'Y') => 1,
        Some(b'Z') => 2,
        _ => return false,
    };
    let (Some(body), Some(letter)) = (text.get(1..8), text.as_bytes().get(8)) else {
        return false;
    };
    text.len() == 9
        && digits(body, 7)
            .is_some_and(|d| dni_letter(lead * 10_000_000 + number(&d)) == Some(*letter))
}

/// Dutch BSN: 9 digits, not all zero, with 9·d1 + 8·d2 + … + 2·d8 − d9
/// divisible by 11 (the "11-test").
fn bsn(text: &str) -> bool {
    let Some(d) = digits(text, 9) else {
        return false;
    };
    let weighted: i64 = d
        .iter()
        .zip([9, 8, 7, 6, 5, 4, 3, 2, -1])
        .map(|(digit, weight)| i64::from(*digit) * weight)
        .sum();
    d.iter().any(|x| *x != 0) && weighted.rem_euclid(11) == 0
}

/// Polish PESEL: YYMMDD (the month carries the century: +80 for the
/// 1800s, +0, +20, +40, +60 for the 1900s to 2100s), a serial, and a check
/// digit with weights 1-3-7-9.
fn pesel(text: &str) -> bool {
    let Some(d) = digits(text, 11) else {
        return false;
    };
    let (Some(yy), Some(mm), Some(dd)) = (d.get(..2), d.get(2..4), d.get(4..6)) else {
        return false;
    };
    let (yy, mm, dd) = (number(yy), number(mm), number(dd));
    let century = match mm / 20 {
        0 => 1900,
        1 => 2000,
        2 => 2100,
        3 => 2200,
        4 => 1800,
        _ => return false,
    };
    let date_ok = time::Month::try_from(u8::try_from(mm % 20).unwrap_or(0))
        .ok()
        .and_then(|month| {
            let year = i32::try_from(century + yy).ok()?;
            time::Date::from_calendar_date(year, month, u8::try_from(dd).ok()?).ok()
        })
        .is_some();
    let sum: u32 = d
        .iter()
        .zip([1, 3, 7, 9, 1, 3, 7, 9, 1, 3])
        .map(|(digit, weight)| digit * weight)
        .sum();
    date_ok && d.get(10) == Some(&((10 - sum % 10) % 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(t: NationalIdType, raw: &str) -> bool {
        document_number(raw).is_ok_and(|n| t.check(&n).is_ok())
    }

    /// Valid and invalid numbers per type. The valid ones are the issuers'
    /// published specimen numbers or numbers that python-stdnum accepts;
    /// each invalid one breaks one rule.
    #[test]
    fn country_specific_numbers() {
        use NationalIdType as T;
        let cases: &[(T, &[&str], &[&str])] = &[
            (
                T::Ssn,
                &["123-45-6789", "536 22 1234", "001-01-0001", "899-99-9999"],
                &[
                    "000-12-3456",
                    "666-12-3456",
                    "900-12-3456",
                    "123-00-4567",
                    "123-45-0000",
                    "12345678",
                    "1234567890",
                    "12345678A",
                ],
            ),
            (
                T::Itin,
                &[
                    "912-70-1234",
                    "999-94-1234",
                    "900-50-1234",
                    "912-65-0000",
                    "912-88-1234",
                    "912-92-1234",
                ],
                &[
                    "912-66-1234",
                    "912-89-1234",
                    "912-93-1234",
                    "912-49-1234",
                    "812-70-1234",
                    "91270123",
                ],
            ),
            (
                T::Nino,
                &["AB 12 34 56 C", "ab123456a", "JG103759A", "ZX123456D"],
                &[
                    "QQ123456C",
                    "DA123456A",
                    "AO123456A",
                    "BG123456A",
                    "GB123456A",
                    "ZZ123456A",
                    "AB123456E",
                    "AB123456",
                    "AB12345C",
                    "A1123456C",
                ],
            ),
            (
                T::Sin,
                &["130 692 544", "130-692-544"],
                &["130 692 545", "046 454 286", "830692544", "13069254"],
            ),
            (
                T::Cpf,
                &["390.533.447-05", "529.982.247-25", "39053344705"],
                &[
                    "390.533.447-06",
                    "111.111.111-11",
                    "000.000.000-00",
                    "3905334470",
                ],
            ),
            (
                T::Dni,
                &["12345678Z", "12345678-z"],
                &["12345678A", "1234567Z", "X1234567L"],
            ),
            (
                T::Nie,
                &["X1234567L", "Y1234567X", "Z1234567R", "x-1234567-l"],
                &["X1234567A", "A1234567L", "X123456L", "12345678Z"],
            ),
            (
                T::Bsn,
                &["111222333", "123456782", "1112.22.333"],
                &["111222334", "000000000", "11122233"],
            ),
            (
                T::Pesel,
                &["44051401359", "02271409867"],
                &["44051401358", "87133100001", "87023000000", "4405140135"],
            ),
        ];
        for (t, good, bad) in cases {
            for n in *good {
                assert!(valid(*t, n), "{t:?} {n} should pass");
            }
            for n in *bad {
                assert!(!valid(*t, n), "{t:?} {n} should fail");
            }
        }
    }

    #[test]
    fn names_and_countries() {
        assert_eq!(NationalIdType::parse(" SSN "), Some(NationalIdType::Ssn));
        assert_eq!(NationalIdType::parse("social_security"), None);
        for t in NationalIdType::ALL {
            assert_eq!(NationalIdType::parse(t.as_str()), Some(t));
            let serialized = serde_json::to_value(t).unwrap_or_default();
            assert_eq!(serialized, t.as_str());
        }
        assert_eq!(NationalIdType::Itin.issuing_country(), Some("US"));
        assert_eq!(NationalIdType::Passport.issuing_country(), None);
        // Generic types take any compact number.
        assert!(NationalIdType::Passport.check("925076473").is_ok());
    }

    #[test]
    fn messages_never_echo_the_number() {
        for t in NationalIdType::ALL {
            let message = t.check("999999999").err().unwrap_or_default();
            assert!(!message.contains("999999999"));
        }
        assert_eq!(document_number("ab-12 34.5").as_deref(), Ok("AB12345"));
        assert!(document_number("ab/12").is_err() && document_number("").is_err());
    }
}
