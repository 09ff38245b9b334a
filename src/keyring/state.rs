//! Authenticated security state: the one codec for every stored value that
//! decides who may do what (principals, API-key and name indexes, password
//! hashes, sessions, access requests, token records, record metadata).
//!
//! A stored value is `version ‖ payload ‖ tag`, where `version` is one byte
//! ([`STATE_FORMAT`]), `payload` is the caller's bytes (JSON, or a PHC
//! string) and `tag` is the full 32-byte
//! `HMAC-SHA256(state key, u64be(len(store key)) ‖ store key ‖ version ‖ payload)`.
//! The state key is derived from the root key (label
//! `strongroom/v1/state-mac`), so only an unsealed vault can write or read
//! such a value, and binding the store key means a value copied under
//! another key (another principal's API-key entry, another record's
//! metadata) fails as surely as an edited one. Encoding is deterministic
//! (the vault's record and token preconditions compare the bytes as read,
//! so a value of the older format matches too; other callers compare a
//! re-encoded value with the
//! stored bytes).
//!
//! Any mismatch — edited bytes, a moved value, a cut tag, an unknown
//! version, or a value of the earlier unauthenticated format — is
//! [`KeyringError::Integrity`]: never a silent grant, never a panic. It is
//! logged without the value.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::KeyringError;
use crate::crypto::{HmacKey, Key256};

/// The version byte of authenticated state values whose payload is JSON
/// (or a PHC string).
pub const STATE_FORMAT: u8 = 1;
/// The version byte of authenticated state values whose payload is the
/// compact binary encoding of `postcard` (record metadata with its sealed
/// body, token records: the values every request reads and the audit
/// committer writes). The version is under the tag, so a value cannot be
/// read as the other format.
pub const STATE_BINARY: u8 = 2;
const TAG_LEN: usize = 32;

/// The key that authenticates security state at rest. No `Clone`; lives in
/// the unsealed keys and goes with them at seal.
pub struct StateKey(HmacKey);

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey(<redacted>)")
    }
}

fn mac_input(store_key: &[u8], version: u8, payload: &[u8]) -> Vec<u8> {
    let len = u64::try_from(store_key.len()).unwrap_or(u64::MAX);
    let mut input = Vec::with_capacity(8 + store_key.len() + 1 + payload.len());
    input.extend_from_slice(&len.to_be_bytes());
    input.extend_from_slice(store_key);
    input.push(version);
    input.extend_from_slice(payload);
    input
}

/// The part of a store key that names its kind (`ac/principal`, `tk`, …),
/// for logs: ids and digests after it stay out of them.
fn kind(store_key: &[u8]) -> String {
    let end = store_key.iter().rposition(|b| *b == b'/').unwrap_or(0);
    String::from_utf8_lossy(store_key.get(..end).unwrap_or_default()).into_owned()
}

impl StateKey {
    pub(crate) fn new(key: &Key256) -> Self {
        Self(HmacKey::new(key))
    }

    /// The stored form of `payload` under `store_key`.
    pub fn seal(&self, store_key: &[u8], payload: &[u8]) -> Vec<u8> {
        self.seal_as(STATE_FORMAT, store_key, payload)
    }

    fn seal_as(&self, version: u8, store_key: &[u8], payload: &[u8]) -> Vec<u8> {
        let tag = self.0.sign(&mac_input(store_key, version, payload));
        let mut out = Vec::with_capacity(1 + payload.len() + TAG_LEN);
        out.push(version);
        out.extend_from_slice(payload);
        out.extend_from_slice(&tag.0);
        out
    }

    /// The payload of a value stored under `store_key`, once its tag checks.
    pub fn open<'a>(&self, store_key: &[u8], stored: &'a [u8]) -> Result<&'a [u8], KeyringError> {
        match self.open_versioned(store_key, stored)? {
            (STATE_FORMAT, payload) => Ok(payload),
            _ => Err(refused(store_key)),
        }
    }

    /// The version byte and payload of a value stored under `store_key`
    /// in either format, once its tag checks.
    fn open_versioned<'a>(
        &self,
        store_key: &[u8],
        stored: &'a [u8],
    ) -> Result<(u8, &'a [u8]), KeyringError> {
        let checked = stored
            .split_first()
            .filter(|(version, _)| matches!(**version, STATE_FORMAT | STATE_BINARY))
            .and_then(|(version, rest)| {
                let (payload, tag) = rest.split_at_checked(rest.len().checked_sub(TAG_LEN)?)?;
                self.0
                    .verify(&mac_input(store_key, *version, payload), tag)
                    .ok()
                    .map(|()| (*version, payload))
            });
        checked.ok_or_else(|| refused(store_key))
    }

    /// [`StateKey::seal`] of `value` in the binary encoding
    /// ([`STATE_BINARY`]).
    pub fn seal_binary<T: Serialize>(
        &self,
        store_key: &[u8],
        value: &T,
    ) -> Result<Vec<u8>, KeyringError> {
        let payload = postcard::to_allocvec(value)
            .map_err(|_| KeyringError::Config("security state could not be encoded"))?;
        Ok(self.seal_as(STATE_BINARY, store_key, &payload))
    }

    /// A value written by [`StateKey::seal_binary`] (as `B`) or, by an
    /// earlier version, by [`StateKey::seal_json`] (as `J`), once its tag
    /// checks.
    pub fn open_either<B: DeserializeOwned, J: DeserializeOwned>(
        &self,
        store_key: &[u8],
        stored: &[u8],
    ) -> Result<Either<B, J>, KeyringError> {
        let (version, payload) = self.open_versioned(store_key, stored)?;
        let parsed = if version == STATE_BINARY {
            // The whole payload is the value: nothing may follow it.
            postcard::take_from_bytes(payload)
                .ok()
                .filter(|(_, left): &(B, &[u8])| left.is_empty())
                .map(|(value, _)| Either::Binary(value))
        } else {
            serde_json::from_slice(payload).ok().map(Either::Json)
        };
        parsed.ok_or_else(|| {
            tracing::error!(kind = %kind(store_key), "authenticated security state does not parse");
            KeyringError::Integrity
        })
    }
}

/// What [`StateKey::open_either`] found.
pub enum Either<B, J> {
    Binary(B),
    Json(J),
}

/// The error (and log line) for a value that failed authentication.
fn refused(store_key: &[u8]) -> KeyringError {
    tracing::error!(
        kind = %kind(store_key),
        "stored security state failed authentication: edited, moved or of an old format"
    );
    KeyringError::Integrity
}

impl StateKey {
    /// [`StateKey::seal`] of `value` as JSON.
    pub fn seal_json<T: Serialize>(
        &self,
        store_key: &[u8],
        value: &T,
    ) -> Result<Vec<u8>, KeyringError> {
        let payload = serde_json::to_vec(value)
            .map_err(|_| KeyringError::Config("security state could not be encoded"))?;
        Ok(self.seal(store_key, &payload))
    }

    /// [`StateKey::open`], then the payload as JSON of `T`.
    pub fn open_json<T: DeserializeOwned>(
        &self,
        store_key: &[u8],
        stored: &[u8],
    ) -> Result<T, KeyringError> {
        serde_json::from_slice(self.open(store_key, stored)?).map_err(|_| {
            tracing::error!(kind = %kind(store_key), "authenticated security state does not parse");
            KeyringError::Integrity
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> StateKey {
        StateKey::new(&Key256::from_bytes([byte; 32]))
    }

    #[test]
    fn round_trip_and_deterministic() {
        let k = key(1);
        let sealed = k.seal(b"ac/principal/p1", b"{\"a\":1}");
        assert_eq!(sealed, k.seal(b"ac/principal/p1", b"{\"a\":1}"));
        assert_eq!(sealed.first(), Some(&STATE_FORMAT));
        assert_eq!(k.open(b"ac/principal/p1", &sealed).unwrap(), b"{\"a\":1}");
        let empty = k.seal(b"x", b"");
        assert_eq!(k.open(b"x", &empty).unwrap(), b"");
    }

    #[test]
    fn every_kind_of_tampering_is_an_integrity_error() {
        let k = key(1);
        let sealed = k.seal(b"tk/abc", b"{\"revoked\":true}");
        let refused = |store_key: &[u8], bytes: &[u8]| {
            matches!(k.open(store_key, bytes), Err(KeyringError::Integrity))
        };
        // Each byte flipped.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(refused(b"tk/abc", &bad), "byte {i}");
        }
        // Moved to another key, or a key that differs only in length.
        assert!(refused(b"tk/abd", &sealed));
        assert!(refused(b"tk/ab", &sealed));
        // Tag cut short, or everything cut.
        for cut in 1..=sealed.len() {
            assert!(
                refused(b"tk/abc", &sealed[..sealed.len() - cut]),
                "cut {cut}"
            );
        }
        // Another key.
        assert!(matches!(
            key(2).open(b"tk/abc", &sealed),
            Err(KeyringError::Integrity)
        ));
        // Another version byte, even with a matching tag for it.
        let mut v2 = vec![2u8];
        v2.extend_from_slice(b"{}");
        v2.extend_from_slice(&k.0.sign(&mac_input(b"tk/abc", 2, b"{}")).0);
        assert!(refused(b"tk/abc", &v2));
        // The earlier unauthenticated format: plain JSON.
        assert!(refused(
            b"tk/abc",
            b"{\"owner\":\"prn_000000000000000000000000\",\"revoked\":false,\"padding\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}"
        ));
        assert!(refused(b"ac/apikey/x", b"prn_0123456789abcdef01234567"));
    }

    #[test]
    fn json_helpers_use_the_same_codec() {
        let k = key(3);
        let sealed = k.seal_json(b"ar/1", &vec!["a", "b"]).unwrap();
        assert_eq!(sealed, k.seal(b"ar/1", b"[\"a\",\"b\"]"));
        let back: Vec<String> = k.open_json(b"ar/1", &sealed).unwrap();
        assert_eq!(back, ["a", "b"]);
        // Authentic bytes of the wrong shape are refused, not guessed at.
        assert!(matches!(
            k.open_json::<u32>(b"ar/1", &sealed),
            Err(KeyringError::Integrity)
        ));
    }

    #[test]
    fn logs_name_the_kind_of_key_only() {
        assert_eq!(kind(b"ac/principal/prn_1"), "ac/principal");
        assert_eq!(kind(b"tk/0011"), "tk");
        assert_eq!(kind(b"plain"), "");
    }
}
