//! Token formats and token records.
//!
//! - `random` (default): `tok_` + 128 random bits, hex.
//! - `deterministic`: `tok_` + the first 128 bits of HMAC-SHA256 under the
//!   token key of (owner, kind, value): the same value and scope give the
//!   same token; different owners never share one.
//! - format-preserving PAN tokens: the PAN's length, its first 6 and last 4
//!   digits, a random middle, and always failing Luhn, so nobody mistakes
//!   one for a card number. Random, not encrypted: nothing can be derived
//!   from one without the vault.
//! - card fingerprints: HMAC-SHA256 of the PAN, scoped by owner.
//!
//! A token record is stored under the HMAC of its token, so the store holds
//! no usable token either.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::crypto::{CryptoError, HmacKey, fill_random, random_array};
use crate::records::luhn_valid;

/// How a token was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenFormat {
    Random,
    Deterministic,
    FormatPreserving,
}

/// What a token stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenTarget {
    /// A whole record (card, bank account, KYC).
    Record { id: String },
    /// A single generic value, sealed on its own under this id.
    Generic { id: String },
}

impl TokenTarget {
    /// The id of the record or generic value the token stands for.
    pub fn id(&self) -> &str {
        match self {
            TokenTarget::Record { id } | TokenTarget::Generic { id } => id,
        }
    }
}

/// A token's stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub target: TokenTarget,
    pub format: TokenFormat,
    pub owner: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub max_uses: Option<u64>,
    pub uses: u64,
    pub revoked: bool,
    /// The bytes this record was read from (the vault's preconditions).
    #[serde(skip)]
    pub(crate) stored: crate::store::StoredAs,
}

/// Why a token cannot be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Usable,
    Expired,
    Revoked,
}

impl TokenRecord {
    /// Whether the token may be used at `now` (before counting this use).
    pub fn state(&self, now: OffsetDateTime) -> TokenState {
        if self.revoked {
            TokenState::Revoked
        } else if self.expires_at.is_some_and(|e| now.unix_timestamp() >= e)
            || self.max_uses.is_some_and(|m| self.uses >= m)
        {
            TokenState::Expired
        } else {
            TokenState::Usable
        }
    }
}

const PREFIX: &str = "tok_";

/// A random token.
pub fn random_token() -> Result<String, CryptoError> {
    Ok(format!("{PREFIX}{}", hex::encode(random_array::<16>()?)))
}

/// The deterministic token of `value` for `owner` and `kind`.
pub fn deterministic_token(token_key: &HmacKey, owner: &str, kind: &str, value: &[u8]) -> String {
    let mut input = b"strongroom/v1/deterministic-token\0".to_vec();
    for part in [owner.as_bytes(), kind.as_bytes(), value] {
        input.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        input.extend_from_slice(part);
    }
    let tag = token_key.sign(&input);
    format!(
        "{PREFIX}{}",
        hex::encode(tag.0.get(..16).unwrap_or_default())
    )
}

/// The fingerprint of a card or account number for `owner`.
pub fn fingerprint(token_key: &HmacKey, owner: &str, number: &str) -> String {
    let input = format!("strongroom/v1/fingerprint\0{owner}\0{number}");
    hex::encode(
        token_key
            .sign(input.as_bytes())
            .0
            .get(..16)
            .unwrap_or_default(),
    )
}

/// Random middle digits needed before a format-preserving token is minted:
/// fewer would make collisions and guessing too easy.
pub const MIN_RANDOM_DIGITS: usize = 4;

/// One candidate format-preserving token for `pan` (digits only): same
/// length, first 6 and last 4 kept, random middle, failing Luhn. `None`
/// when the PAN leaves fewer than [`MIN_RANDOM_DIGITS`] random digits. The
/// caller retries on a collision.
pub fn format_preserving_candidate(pan: &str) -> Result<Option<String>, CryptoError> {
    let (Some(head), Some(tail)) = (pan.get(..6), pan.get(pan.len().saturating_sub(4)..)) else {
        return Ok(None);
    };
    let middle_len = pan.len().saturating_sub(10);
    if middle_len < MIN_RANDOM_DIGITS {
        return Ok(None);
    }
    loop {
        let mut bytes = vec![0u8; middle_len];
        fill_random(&mut bytes)?;
        // Rejection sampling keeps every digit uniform.
        if bytes.iter().any(|b| *b >= 250) {
            continue;
        }
        let middle: String = bytes.iter().map(|b| char::from(b'0' + b % 10)).collect();
        let candidate = format!("{head}{middle}{tail}");
        if !luhn_valid(&candidate) {
            return Ok(Some(candidate));
        }
    }
}

/// Whether `text` could be a token of any format (cheap shape check).
pub fn looks_like_token(text: &str) -> bool {
    let random = text
        .strip_prefix(PREFIX)
        .is_some_and(|rest| rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()));
    let pan_shaped = (12..=19).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
    random || pan_shaped
}

/// The store key of a token: `tk/` + HMAC under the token key.
pub fn token_key_for(token_key: &HmacKey, token: &str) -> String {
    let tag = token_key.sign(format!("strongroom/v1/token-id\0{token}").as_bytes());
    format!("tk/{}", hex::encode(tag.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_preserving_tokens_keep_six_and_four_and_fail_luhn() {
        let pan = "4242424242424242";
        for _ in 0..1000 {
            let token = format_preserving_candidate(pan).unwrap().unwrap();
            assert_eq!(token.len(), pan.len());
            assert_eq!(&token[..6], "424242");
            assert_eq!(&token[12..], "4242");
            assert!(!luhn_valid(&token));
        }
        // 13 digits leave 3 random ones: refused.
        assert!(
            format_preserving_candidate("4222222222222")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn deterministic_tokens_are_scoped() {
        let key = HmacKey::from_bytes(b"k");
        let a = deterministic_token(&key, "owner-a", "generic", b"v");
        assert_eq!(a, deterministic_token(&key, "owner-a", "generic", b"v"));
        assert_ne!(a, deterministic_token(&key, "owner-b", "generic", b"v"));
        assert_ne!(a, deterministic_token(&key, "owner-a", "generic", b"w"));
        assert!(looks_like_token(&a) && looks_like_token(&random_token().unwrap()));
        assert!(!looks_like_token("tok_xyz"));
    }
}
