//! Typed wrappers over the cryptographic crates: `aes-gcm` for AES-256-GCM,
//! `ring` for HKDF, HMAC, SHA-256, Ed25519 and the system RNG, `argon2` for
//! passphrases.
//!
//! This module owns every call into those crates. It must never implement a
//! primitive itself, never hand out key bytes except through a method whose
//! name says so (`expose_secret`), and never echo secret input in an error.

mod aead;
mod envelope;
mod kdf;
mod password;
mod random;
mod secret;
mod signing;

pub use aead::{NONCE_LEN, TAG_LEN, aead_open, aead_seal};
pub use envelope::{Aad, ENVELOPE_VERSION, Envelope};
pub use kdf::{
    HmacKey, Sha256Stream, Tag, bytes32_from_hex, constant_time_eq, derive_key, hex32, hkdf_sha256,
    sha256,
};
pub use password::{
    Argon2Params, KdfPolicy, PasswordPepper, PasswordPolicy, derive_key_from_passphrase,
};
pub use random::{SystemRng, fill_random, random_array};
pub use secret::Key256;
pub use signing::{SIGNATURE_LEN, SigningKey, verify_signature};

/// Errors of the cryptographic layer. None of them carries secret material or
/// caller input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Authentication of a ciphertext or a tag failed: tampered, moved, or the
    /// wrong key.
    #[error("integrity check failed")]
    Integrity,
    /// A stored format could not be parsed.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// A length outside what the primitive accepts.
    #[error("invalid length: {0}")]
    Length(&'static str),
    /// Key-derivation parameters outside the policy.
    #[error("key derivation parameters refused: {0}")]
    KdfParams(&'static str),
    /// The operating system's random number generator failed.
    #[error("system random number generator failed")]
    Rng,
}
