//! Ed25519 signatures from `ring`, for audit checkpoints.

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use super::{CryptoError, Key256};

/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// An Ed25519 signing key derived from a 32-byte seed.
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    /// The key pair whose private seed is `seed`.
    pub fn from_seed(seed: &Key256) -> Result<Self, CryptoError> {
        Ed25519KeyPair::from_seed_unchecked(seed.expose_secret())
            .map(Self)
            .map_err(|_| CryptoError::Length("Ed25519 seed"))
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.public_key().as_ref());
        out
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(self.0.sign(message).as_ref());
        out
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(public={})", hex::encode(self.public_key()))
    }
}

/// Checks an Ed25519 signature with only the public key.
pub fn verify_signature(
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), CryptoError> {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(message, signature)
        .map_err(|_| CryptoError::Integrity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let key = SigningKey::from_seed(&Key256::from_bytes([3; 32])).unwrap();
        let sig = key.sign(b"head");
        assert!(verify_signature(&key.public_key(), b"head", &sig).is_ok());
        assert!(verify_signature(&key.public_key(), b"hea", &sig).is_err());
    }
}
