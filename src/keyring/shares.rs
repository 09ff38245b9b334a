//! Shamir shares of the root key, as printable strings.
//!
//! Splitting and combining over GF(2^8) with the AES polynomial 0x11B (as
//! HashiCorp Vault and draft-mcgrew-tss) is done by the `vsss-rs` crate,
//! whose field arithmetic is constant-time (docs/dependencies.md). This
//! module owns the checks around it and the printable form:
//!
//! ```text
//! srs1-<vault id, 16 hex>-<x, 2 hex>-<y, 64 hex>-<checksum, 8 hex>
//! ```
//!
//! The checksum (first 4 bytes of SHA-256 over everything before it) catches
//! a mistyped share; the vault id catches a share of another vault; the
//! per-share digest kept in the keys directory catches a share whose checksum
//! was forged along with its bytes.

use vsss_rs::Gf256;
use zeroize::Zeroizing;

use crate::crypto::{Key256, SystemRng, sha256};

const PREFIX: &str = "srs1";
const SECRET_LEN: usize = 32;

/// Why a share, or a split or combine, was refused. Never carries share
/// bytes.
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
    #[error("cannot split: {0}")]
    InvalidSplit(&'static str),
    #[error("cannot combine: {0}")]
    InvalidCombine(&'static str),
}

/// A share of a secret of any length: index `x` (1..=255) and `y`, one
/// byte per secret byte.
pub struct RawShare {
    pub x: u8,
    pub y: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for RawShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawShare(x={}, y=<redacted>)", self.x)
    }
}

/// Splits `secret` into `count` shares, any `threshold` of which recover
/// it. Refuses a threshold below 2, more shares than 255 or fewer than the
/// threshold, and an empty secret.
pub fn split_secret(
    secret: &[u8],
    threshold: usize,
    count: usize,
) -> Result<Vec<RawShare>, ShareError> {
    if threshold < 2 {
        return Err(ShareError::InvalidSplit("threshold below 2"));
    }
    if count < threshold {
        return Err(ShareError::InvalidSplit("fewer shares than the threshold"));
    }
    if count > 255 {
        return Err(ShareError::InvalidSplit("more than 255 shares"));
    }
    if secret.is_empty() {
        return Err(ShareError::InvalidSplit("empty secret"));
    }
    let mut rng = SystemRng::new();
    let shares = Gf256::split_array(threshold, count, secret, &mut rng)
        .map_err(|_| ShareError::InvalidSplit("refused by the dealer"))?;
    if !rng.healthy() {
        return Err(ShareError::InvalidSplit(
            "the system random number generator failed",
        ));
    }
    let shares: Vec<RawShare> = shares
        .into_iter()
        .filter_map(|bytes| {
            let bytes = Zeroizing::new(bytes);
            let (&x, y) = bytes.split_first()?;
            Some(RawShare {
                x,
                y: Zeroizing::new(y.to_vec()),
            })
        })
        .collect();
    if shares.len() != count || shares.iter().any(|s| s.x == 0 || s.y.len() != secret.len()) {
        return Err(ShareError::InvalidSplit(
            "the dealer produced malformed shares",
        ));
    }
    Ok(shares)
}

/// Recovers a secret from at least `threshold` shares. Refuses no shares,
/// too few, an index of 0, a repeated index, empty or unequal lengths. A
/// wrong but well-formed set interpolates to a wrong secret, not an error:
/// the caller checks the result.
pub fn combine_secret(
    threshold: usize,
    shares: &[RawShare],
) -> Result<Zeroizing<Vec<u8>>, ShareError> {
    let first = shares
        .first()
        .ok_or(ShareError::InvalidCombine("no shares"))?;
    if shares.len() < threshold.max(2) {
        return Err(ShareError::InvalidCombine(
            "fewer shares than the threshold",
        ));
    }
    let mut seen = [false; 256];
    for share in shares {
        if share.y.is_empty() || share.y.len() != first.y.len() {
            return Err(ShareError::InvalidCombine(
                "shares of empty or unequal length",
            ));
        }
        if share.x == 0 {
            return Err(ShareError::InvalidCombine("share index 0"));
        }
        let slot = seen
            .get_mut(usize::from(share.x))
            .ok_or(ShareError::InvalidCombine("share index out of range"))?;
        if *slot {
            return Err(ShareError::InvalidCombine("repeated share index"));
        }
        *slot = true;
    }
    // The combiner takes plain vectors: wipe them by hand afterwards.
    let mut parts: Vec<Vec<u8>> = shares
        .iter()
        .map(|s| {
            let mut bytes = Vec::with_capacity(1 + s.y.len());
            bytes.push(s.x);
            bytes.extend_from_slice(&s.y);
            bytes
        })
        .collect();
    let result = Gf256::combine_array(&parts);
    parts.iter_mut().for_each(zeroize::Zeroize::zeroize);
    result
        .map(Zeroizing::new)
        .map_err(|_| ShareError::InvalidCombine("refused by the combiner"))
}

/// A parsed vault share: its index `x` (1..=255) and the 32 bytes of `y`.
pub struct ParsedShare {
    pub x: u8,
    pub y: Zeroizing<[u8; SECRET_LEN]>,
}

impl std::fmt::Debug for ParsedShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParsedShare(x={}, y=<redacted>)", self.x)
    }
}

/// Splits the root key into `count` shares, any `threshold` of which
/// recover it.
pub fn split(root: &Key256, threshold: u8, count: u8) -> Result<Vec<ParsedShare>, ShareError> {
    split_secret(
        root.expose_secret(),
        usize::from(threshold),
        usize::from(count),
    )?
    .into_iter()
    .map(|raw| {
        let y: [u8; SECRET_LEN] = raw.y[..]
            .try_into()
            .map_err(|_| ShareError::InvalidSplit("share of the wrong length"))?;
        Ok(ParsedShare {
            x: raw.x,
            y: Zeroizing::new(y),
        })
    })
    .collect()
}

/// Recovers the root key from shares with distinct indexes.
pub fn combine(threshold: u8, shares: &[ParsedShare]) -> Result<Key256, ShareError> {
    let raw: Vec<RawShare> = shares
        .iter()
        .map(|s| RawShare {
            x: s.x,
            y: Zeroizing::new(s.y.to_vec()),
        })
        .collect();
    let secret = combine_secret(usize::from(threshold), &raw)?;
    Key256::try_from_slice(&secret).map_err(|_| ShareError::InvalidCombine("not a 256-bit key"))
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
        let shares = split(&root, 3, 5).unwrap();
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
        let share = split(&root, 2, 2).unwrap().remove(0);
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
