//! Secret key material.

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::{CryptoError, random_array};

/// A 256-bit secret key. No `Clone`, no `Copy`, no printable form; the bytes
/// are wiped when it is dropped.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Key256([u8; 32]);

impl Key256 {
    /// A fresh key from the system random number generator.
    pub fn random() -> Result<Self, CryptoError> {
        Ok(Self(random_array()?))
    }

    /// Takes ownership of key bytes. The caller's copy should be a temporary
    /// that is itself zeroized.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Reads a key from a slice that must be exactly 32 bytes long.
    pub fn try_from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: [u8; 32] = bytes
            .try_into()
            .map_err(|_| CryptoError::Length("a 256-bit key is 32 bytes"))?;
        Ok(Self(array))
    }

    /// A second copy of this key, wiped on drop like the first, for an
    /// operation that must not hold the lock guarding the original. Not
    /// `Clone`, so that every copy is written out and stands out in review.
    pub(crate) fn duplicate(&self) -> Self {
        Self(self.0)
    }

    /// The raw key bytes, for wrapping this key under another or handing it to
    /// a primitive. Named so that every use stands out in review.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Key256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key256(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_nothing_of_the_key() {
        let key = Key256::from_bytes([0xAB; 32]);
        let printed = format!("{key:?}");
        assert!(!printed.to_lowercase().contains("ab"), "{printed}");
        assert!(!printed.contains("171"), "{printed}");
    }

    #[test]
    fn random_keys_differ() {
        let a = Key256::random().unwrap();
        let b = Key256::random().unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
    }

    #[test]
    fn wrong_length_is_refused() {
        assert!(Key256::try_from_slice(&[0u8; 31]).is_err());
        assert!(Key256::try_from_slice(&[0u8; 33]).is_err());
        assert!(Key256::try_from_slice(&[0u8; 32]).is_ok());
    }
}
