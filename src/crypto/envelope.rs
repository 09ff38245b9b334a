//! The versioned binary envelope every stored ciphertext travels in.
//!
//! Layout (version 1), all integers big-endian:
//!
//! ```text
//! [0]        format version (1)
//! [1]        key id length L, 1..=32
//! [2..2+L]   key id (ASCII, names the key family, e.g. "kek/card")
//! [+4]       key version (u32)
//! [+12]      nonce
//! [rest]     ciphertext ‖ 16-byte tag
//! ```
//!
//! The header is part of the AAD, together with the caller's context
//! ([`Aad`]), so neither the header nor the place the ciphertext belongs to
//! can be changed without failing authentication.

use zeroize::Zeroizing;

use super::{CryptoError, Key256, NONCE_LEN, TAG_LEN, aead_open, aead_seal, random_array};

/// The envelope format this code writes.
pub const ENVELOPE_VERSION: u8 = 1;
const MAX_KEY_ID_LEN: usize = 32;

/// Associated data naming what a ciphertext belongs to. Each part is length
/// prefixed, so `("ab","c")` and `("a","bc")` never collide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aad(Vec<u8>);

impl Aad {
    /// Starts an AAD with a domain label such as `"strongroom/v1/dek"`.
    pub fn new(domain: &'static str) -> Self {
        Self::default().part(domain.as_bytes())
    }

    /// Appends one length-prefixed part.
    pub fn part(mut self, bytes: &[u8]) -> Self {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(bytes);
        self
    }

    /// Appends a number.
    pub fn number(self, n: u64) -> Self {
        self.part(&n.to_be_bytes())
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A parsed envelope. Holds only ciphertext and public header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    key_id: String,
    key_version: u32,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

impl Envelope {
    /// Encrypts `plaintext` under `key` (named `key_id`@`key_version`) with a
    /// fresh random nonce, bound to `aad`.
    pub fn seal(
        key: &Key256,
        key_id: &str,
        key_version: u32,
        aad: &Aad,
        plaintext: &[u8],
    ) -> Result<Self, CryptoError> {
        check_key_id(key_id)?;
        let nonce = random_array::<NONCE_LEN>()?;
        let mut envelope = Self {
            key_id: key_id.to_owned(),
            key_version,
            nonce,
            ciphertext: Vec::new(),
        };
        let full_aad = envelope.full_aad(aad);
        envelope.ciphertext = aead_seal(key, &nonce, &full_aad, plaintext)?;
        Ok(envelope)
    }

    /// Decrypts, checking the tag over the header, `aad` and ciphertext.
    pub fn open(&self, key: &Key256, aad: &Aad) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        aead_open(key, &self.nonce, &self.full_aad(aad), &self.ciphertext)
    }

    /// The name of the key family this envelope was sealed under.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The version of that key.
    pub fn key_version(&self) -> u32 {
        self.key_version
    }

    fn header(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.key_id.len() + 4 + NONCE_LEN);
        out.push(ENVELOPE_VERSION);
        // check_key_id / decode keep the id within MAX_KEY_ID_LEN (< 256).
        out.push(u8::try_from(self.key_id.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.key_id.as_bytes());
        out.extend_from_slice(&self.key_version.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        out
    }

    fn full_aad(&self, aad: &Aad) -> Vec<u8> {
        let mut out = self.header();
        out.extend_from_slice(aad.as_bytes());
        out
    }

    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.header();
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Parses stored bytes, checking every length before it slices.
    pub fn decode(bytes: &[u8]) -> Result<Self, CryptoError> {
        let (&version, rest) = bytes.split_first().ok_or(CryptoError::Malformed("empty"))?;
        if version != ENVELOPE_VERSION {
            return Err(CryptoError::Malformed("unknown envelope version"));
        }
        let (&id_len, rest) = rest
            .split_first()
            .ok_or(CryptoError::Malformed("truncated header"))?;
        let id_len = usize::from(id_len);
        if id_len == 0 || id_len > MAX_KEY_ID_LEN {
            return Err(CryptoError::Malformed("key id length out of range"));
        }
        let (id, rest) = rest
            .split_at_checked(id_len)
            .ok_or(CryptoError::Malformed("truncated key id"))?;
        let key_id = std::str::from_utf8(id)
            .map_err(|_| CryptoError::Malformed("key id is not text"))?
            .to_owned();
        check_key_id(&key_id)?;
        let (version_bytes, rest) = rest
            .split_first_chunk::<4>()
            .ok_or(CryptoError::Malformed("truncated key version"))?;
        let (nonce, ciphertext) = rest
            .split_first_chunk::<NONCE_LEN>()
            .ok_or(CryptoError::Malformed("truncated nonce"))?;
        if ciphertext.len() < TAG_LEN {
            return Err(CryptoError::Malformed("ciphertext shorter than its tag"));
        }
        Ok(Self {
            key_id,
            key_version: u32::from_be_bytes(*version_bytes),
            nonce: *nonce,
            ciphertext: ciphertext.to_vec(),
        })
    }
}

fn check_key_id(key_id: &str) -> Result<(), CryptoError> {
    let ok = !key_id.is_empty()
        && key_id.len() <= MAX_KEY_ID_LEN
        && key_id.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(CryptoError::Malformed(
            "key id must be 1..=32 printable ASCII bytes",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key256 {
        Key256::from_bytes([0x42; 32])
    }

    fn aad() -> Aad {
        Aad::new("test").part(b"record-1").number(1)
    }

    #[test]
    fn round_trip() {
        let env = Envelope::seal(&key(), "kek/card", 3, &aad(), b"hello").unwrap();
        let decoded = Envelope::decode(&env.encode()).unwrap();
        assert_eq!(decoded, env);
        assert_eq!(decoded.key_id(), "kek/card");
        assert_eq!(decoded.key_version(), 3);
        assert_eq!(&decoded.open(&key(), &aad()).unwrap()[..], b"hello");
    }

    #[test]
    fn every_flipped_byte_fails_closed() {
        let bytes = Envelope::seal(&key(), "kek/card", 3, &aad(), b"hello world")
            .unwrap()
            .encode();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut tampered = bytes.clone();
                tampered[i] ^= bit;
                let result = Envelope::decode(&tampered).and_then(|e| e.open(&key(), &aad()));
                assert!(result.is_err(), "byte {i} bit {bit:#x} still opened");
            }
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = Envelope::seal(&key(), "k", 1, &aad(), b"x")
            .unwrap()
            .encode();
        for len in 0..bytes.len() {
            let result = Envelope::decode(&bytes[..len]).and_then(|e| e.open(&key(), &aad()));
            assert!(result.is_err(), "length {len}");
        }
    }

    #[test]
    fn aad_parts_do_not_collide() {
        assert_ne!(
            Aad::new("d").part(b"ab").part(b"c"),
            Aad::new("d").part(b"a").part(b"bc")
        );
    }
}
