//! Shamir shares of the root key, as printable strings.
//!
//! Splitting and combining over GF(256) is done by the `blahaj` crate (a
//! maintained fork of `sharks`; see docs/dependencies.md). This module owns
//! only the printable form:
//!
//! ```text
//! srs1-<vault id, 16 hex>-<x, 2 hex>-<y, 64 hex>-<checksum, 8 hex>
//! ```
//!
//! The checksum (first 4 bytes of SHA-256 over everything before it) catches
//! a mistyped share; the vault id catches a share of another vault; the
//! per-share digest kept in the keys directory catches a share whose checksum
//! was forged along with its bytes.

use blahaj::{Share, Sharks};
use zeroize::Zeroizing;

use crate::crypto::{Key256, sha256};

const PREFIX: &str = "srs1";
const SECRET_LEN: usize = 32;

/// Why a share string was refused. Never carries the share itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    #[error("not a Strongroom share")]
    Format,
    #[error("share checksum does not match: mistyped or corrupted")]
    Checksum,
    #[error("share belongs to another vault")]
    ForeignVault,
    #[error("share is not one this vault issued")]
    Unknown,
}

/// A parsed share: its index `x` (1..=255) and 32 bytes of `y`.
pub struct ParsedShare {
    pub x: u8,
    pub y: Zeroizing<[u8; SECRET_LEN]>,
}

impl std::fmt::Debug for ParsedShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParsedShare(x={}, y=<redacted>)", self.x)
    }
}

/// Splits `root` into `count` shares, any `threshold` of which recover it.
pub fn split(root: &Key256, threshold: u8, count: u8) -> Vec<ParsedShare> {
    Sharks(threshold)
        .dealer(root.expose_secret())
        .take(usize::from(count))
        .filter_map(|share| {
            let bytes = Zeroizing::new(Vec::from(&share));
            let (&x, y) = bytes.split_first()?;
            let y: [u8; SECRET_LEN] = y.try_into().ok()?;
            Some(ParsedShare {
                x,
                y: Zeroizing::new(y),
            })
        })
        .collect()
}

/// Recovers the secret from shares with distinct indexes. The caller checks
/// the result against the vault's root check value: a wrong set of shares
/// interpolates to a wrong key, not to an error.
pub fn combine(threshold: u8, shares: &[ParsedShare]) -> Option<Key256> {
    let parts: Vec<Share> = shares
        .iter()
        .filter_map(|s| {
            let mut bytes = Zeroizing::new(Vec::with_capacity(1 + SECRET_LEN));
            bytes.push(s.x);
            bytes.extend_from_slice(&s.y[..]);
            Share::try_from(bytes.as_slice()).ok()
        })
        .collect();
    let secret = Zeroizing::new(Sharks(threshold).recover(&parts).ok()?);
    Key256::try_from_slice(&secret).ok()
}

/// The digest of a share stored in the keys directory (never the share).
pub fn share_digest(vault_id: &str, share: &ParsedShare) -> [u8; 32] {
    let mut input = Zeroizing::new(Vec::with_capacity(64));
    input.extend_from_slice(b"strongroom/v1/share-digest\0");
    input.extend_from_slice(vault_id.as_bytes());
    input.push(share.x);
    input.extend_from_slice(&share.y[..]);
    sha256(&input)
}

fn checksum(body: &str) -> String {
    sha256(body.as_bytes())
        .get(..4)
        .map(hex::encode)
        .unwrap_or_default()
}

/// The printable form of a share.
pub fn encode(vault_id: &str, share: &ParsedShare) -> Zeroizing<String> {
    let body = Zeroizing::new(format!(
        "{PREFIX}-{vault_id}-{:02x}-{}",
        share.x,
        hex::encode(&share.y[..])
    ));
    Zeroizing::new(format!("{}-{}", body.as_str(), checksum(&body)))
}

/// Parses a printable share for vault `vault_id`. Surrounding white space and
/// letter case are forgiven; nothing else is.
pub fn parse(vault_id: &str, text: &str) -> Result<ParsedShare, ShareError> {
    let text = Zeroizing::new(text.trim().to_ascii_lowercase());
    let (body, check) = text.rsplit_once('-').ok_or(ShareError::Format)?;
    let mut fields = body.split('-');
    let (Some(prefix), Some(vault), Some(x), Some(y), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ShareError::Format);
    };
    if prefix != PREFIX || x.len() != 2 || y.len() != 2 * SECRET_LEN || check.len() != 8 {
        return Err(ShareError::Format);
    }
    if checksum(body) != check {
        return Err(ShareError::Checksum);
    }
    if vault != vault_id {
        return Err(ShareError::ForeignVault);
    }
    let x = u8::from_str_radix(x, 16).map_err(|_| ShareError::Format)?;
    if x == 0 {
        // f(0) is the secret itself; no dealer ever issues index 0.
        return Err(ShareError::Format);
    }
    let mut y_bytes = Zeroizing::new([0u8; SECRET_LEN]);
    hex::decode_to_slice(y, &mut y_bytes[..]).map_err(|_| ShareError::Format)?;
    Ok(ParsedShare { x, y: y_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VAULT: &str = "00112233aabbccdd";

    #[test]
    fn any_threshold_subset_recovers_the_secret() {
        let root = Key256::from_bytes([0x5a; 32]);
        let shares = split(&root, 3, 5);
        assert_eq!(shares.len(), 5);
        for a in 0..5 {
            for b in 0..5 {
                for c in 0..5 {
                    if a == b || b == c || a == c {
                        continue;
                    }
                    let subset: Vec<ParsedShare> = [a, b, c]
                        .iter()
                        .map(|&i| ParsedShare {
                            x: shares[i].x,
                            y: shares[i].y.clone(),
                        })
                        .collect();
                    let got = combine(3, &subset).unwrap();
                    assert_eq!(got.expose_secret(), root.expose_secret());
                }
            }
        }
    }

    #[test]
    fn printable_form_round_trips_and_refuses_damage() {
        let root = Key256::from_bytes([1; 32]);
        let share = split(&root, 2, 2).remove(0);
        let text = encode(VAULT, &share);
        let parsed = parse(VAULT, &format!("  {}\n", text.to_uppercase())).unwrap();
        assert_eq!(parsed.x, share.x);
        assert_eq!(parsed.y[..], share.y[..]);

        // Every single-character typo in the y part is caught by the checksum.
        let y_start = text.len() - 8 - 1 - 64;
        for i in y_start..y_start + 64 {
            let mut damaged = text.as_bytes().to_vec();
            damaged[i] = if damaged[i] == b'0' { b'1' } else { b'0' };
            let damaged = String::from_utf8(damaged).unwrap();
            assert_eq!(parse(VAULT, &damaged).unwrap_err(), ShareError::Checksum);
        }
        assert_eq!(
            parse("ffffffffffffffff", &text).unwrap_err(),
            ShareError::ForeignVault
        );
        assert_eq!(
            parse(VAULT, "srs1-garbage").unwrap_err(),
            ShareError::Format
        );
        assert_eq!(parse(VAULT, "").unwrap_err(), ShareError::Format);
    }

    #[test]
    fn share_index_zero_is_refused() {
        let share = ParsedShare {
            x: 0,
            y: Zeroizing::new([9; 32]),
        };
        assert_eq!(
            parse(VAULT, &encode(VAULT, &share)).unwrap_err(),
            ShareError::Format
        );
    }
}
