//! HKDF-SHA256, HMAC-SHA256 and SHA-256 from `ring`.

use ring::{digest, hkdf, hmac};
use zeroize::Zeroize;

use super::{CryptoError, Key256};

/// The 32 bytes that 64 hex digits (either case) name: a digest, an
/// Ed25519 public key. `None` for anything else.
pub fn bytes32_from_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok().map(|()| out)
}

/// 32 bytes as 64 lowercase hex digits, through a buffer (`hex::encode`
/// goes char by char, which showed in audit verification's profile).
pub fn hex32(bytes: &[u8; 32]) -> String {
    let mut buf = [0u8; 64];
    // 32 bytes always fill 64 ASCII digits: neither step can fail.
    let _ = hex::encode_to_slice(bytes, &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// SHA-256 over data given in pieces (a file too large to hold at once).
pub struct Sha256Stream(digest::Context);

impl Sha256Stream {
    pub fn new() -> Self {
        Self(digest::Context::new(&digest::SHA256))
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

impl Default for Sha256Stream {
    fn default() -> Self {
        Self::new()
    }
}

struct OutputLen(usize);

impl hkdf::KeyType for OutputLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// RFC 5869 HKDF-SHA256: fills `out` (at most 255 × 32 bytes) from `ikm`,
/// `salt` (empty means none) and `info`.
pub fn hkdf_sha256(
    ikm: &[u8],
    salt: &[u8],
    info: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let info = [info];
    prk.expand(&info, OutputLen(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| CryptoError::Length("HKDF output longer than 255 hash lengths"))
}

/// Derives a labelled 256-bit subkey of `parent`. Every derived key in
/// Strongroom has its own label (`"strongroom/v1/…"`), so no two uses share a
/// key.
pub fn derive_key(parent: &Key256, label: &'static str) -> Key256 {
    let mut bytes = [0u8; 32];
    // A 32-byte output is always within HKDF's limit of 255 × 32 bytes.
    let derived = hkdf_sha256(
        parent.expose_secret(),
        b"strongroom",
        label.as_bytes(),
        &mut bytes,
    );
    debug_assert!(derived.is_ok());
    let key = Key256::from_bytes(bytes);
    bytes.zeroize();
    key
}

/// An HMAC-SHA256 key.
pub struct HmacKey(hmac::Key);

/// A full 32-byte HMAC-SHA256 tag.
#[derive(Clone, PartialEq, Eq)]
pub struct Tag(pub [u8; 32]);

impl std::fmt::Debug for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tag({})", hex::encode(self.0))
    }
}

impl HmacKey {
    /// An HMAC key of any length (RFC 2104 hashes keys longer than a block).
    pub fn from_bytes(key: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, key))
    }

    /// An HMAC key from a 256-bit secret.
    pub fn new(key: &Key256) -> Self {
        Self::from_bytes(key.expose_secret())
    }

    /// The tag of `message`.
    pub fn sign(&self, message: &[u8]) -> Tag {
        let mut out = [0u8; 32];
        out.copy_from_slice(hmac::sign(&self.0, message).as_ref());
        Tag(out)
    }

    /// Checks `tag` (full, or truncated to at least 16 bytes) in constant
    /// time.
    pub fn verify(&self, message: &[u8], tag: &[u8]) -> Result<(), CryptoError> {
        if tag.len() < 16 || tag.len() > 32 {
            return Err(CryptoError::Integrity);
        }
        let full = self.sign(message);
        let expected = full.0.get(..tag.len()).ok_or(CryptoError::Integrity)?;
        if constant_time_eq(expected, tag) {
            Ok(())
        } else {
            Err(CryptoError::Integrity)
        }
    }
}

/// Compares two byte strings without an early exit on the first difference
/// (the lengths are not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_give_independent_keys() {
        let root = Key256::from_bytes([9; 32]);
        let a = derive_key(&root, "strongroom/v1/a");
        let b = derive_key(&root, "strongroom/v1/b");
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(
            a.expose_secret(),
            derive_key(&root, "strongroom/v1/a").expose_secret()
        );
    }

    #[test]
    fn short_or_wrong_tags_fail() {
        let key = HmacKey::from_bytes(b"k");
        let tag = key.sign(b"m");
        assert!(key.verify(b"m", &tag.0).is_ok());
        assert!(key.verify(b"m", &tag.0[..16]).is_ok());
        assert!(key.verify(b"m", &tag.0[..15]).is_err());
        assert!(key.verify(b"n", &tag.0).is_err());
    }
}
