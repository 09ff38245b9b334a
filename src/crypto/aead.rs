//! AES-256-GCM with 96-bit random nonces, from the `aes-gcm` crate.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use super::{CryptoError, Key256};

/// Nonce length in bytes (96 bits, the only length GCM handles natively).
pub const NONCE_LEN: usize = 12;
/// Authentication tag length in bytes.
pub const TAG_LEN: usize = 16;

/// Encrypts `plaintext` under `key` with `nonce`, binding `aad`. Returns the
/// ciphertext followed by the 16-byte tag. Callers must never reuse a nonce
/// under one key: use a fresh random one per call.
pub fn aead_seal(
    key: &Key256,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let cipher = Aes256Gcm::new(key.expose_secret().into());
    cipher
        .encrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Length("plaintext too long for AES-GCM"))
}

/// Decrypts and authenticates `ciphertext_and_tag`. Any tampering with the
/// key, nonce, AAD or bytes gives [`CryptoError::Integrity`], never plaintext.
pub fn aead_open(
    key: &Key256,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext_and_tag: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if ciphertext_and_tag.len() < TAG_LEN {
        return Err(CryptoError::Malformed("ciphertext shorter than its tag"));
    }
    let cipher = Aes256Gcm::new(key.expose_secret().into());
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext_and_tag,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Integrity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_aad_binding() {
        let key = Key256::from_bytes([7; 32]);
        let nonce = [1; NONCE_LEN];
        let sealed = aead_seal(&key, &nonce, b"aad", b"secret").unwrap();
        assert_eq!(sealed.len(), 6 + TAG_LEN);
        assert_eq!(
            &aead_open(&key, &nonce, b"aad", &sealed).unwrap()[..],
            b"secret"
        );
        assert_eq!(
            aead_open(&key, &nonce, b"other", &sealed),
            Err(CryptoError::Integrity)
        );
        assert!(aead_open(&key, &nonce, b"aad", &sealed[..5]).is_err());
    }
}
