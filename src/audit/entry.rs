//! Entry and checkpoint formats.
//!
//! `hash = SHA-256(prev_hash ‖ canonical entry)`, where the canonical entry
//! is the compact JSON of every field but `hash`, in the order declared
//! below, and `prev_hash` is the previous entry's hash (32 zero bytes before
//! the first). A checkpoint signs `"strongroom/v1/audit-checkpoint" ‖ 0 ‖
//! seq (u64 BE) ‖ hash ‖ time` with the vault's Ed25519 audit key; the
//! signed head each round writes has the same form.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::crypto::{bytes32_from_hex, hex32, sha256};

/// How an audited attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allowed,
    Denied,
    Error,
    /// Allowed, and found nothing (a search): a burst of these is someone
    /// guessing.
    NoMatch,
    /// Allowed and answered like any other, but what it touched is a
    /// canary (`crate::canary`): an alarm. Last, so earlier variants keep
    /// their stored positions.
    Canary,
}

/// What a caller asks to record. `target` and every text field must not
/// hold a sensitive value; use [`super::AuditLog::fingerprint`] for those.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub actor: String,
    pub action: &'static str,
    pub target: Option<String>,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub ticket: Option<String>,
    pub request_id: Option<String>,
    pub client: Option<String>,
}

impl AuditEvent {
    pub fn new(actor: impl Into<String>, action: &'static str, outcome: Outcome) -> Self {
        Self {
            actor: actor.into(),
            action,
            target: None,
            outcome,
            reason: None,
            ticket: None,
            request_id: None,
            client: None,
        }
    }

    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }
}

/// One entry of the chain, as stored, exported and returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    pub seq: u64,
    pub time: String,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub ticket: Option<String>,
    pub request_id: Option<String>,
    pub client: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Serialize)]
struct Canonical<'a> {
    seq: u64,
    time: &'a str,
    actor: &'a str,
    action: &'a str,
    target: &'a Option<String>,
    outcome: Outcome,
    reason: &'a Option<String>,
    ticket: &'a Option<String>,
    request_id: &'a Option<String>,
    client: &'a Option<String>,
    prev_hash: &'a str,
}

pub(crate) const GENESIS_HASH: [u8; 32] = [0; 32];

/// The actions recorded while the vault is sealed, when no key can sign
/// them: seal and unseal. They are the only entries that may stand after
/// the last signature; the next unseal signs them. Anything else found
/// unsigned was not written by the server.
pub const WRITTEN_WHILE_SEALED: [&str; 2] = ["sys.seal", "sys.unseal"];

impl AuditEntry {
    /// The entry that records `event` as number `seq` after the entry whose
    /// hash is `prev_hash` (hex), with its hash filled in; also the hash's
    /// bytes.
    pub(crate) fn chained(
        seq: u64,
        time: &str,
        event: AuditEvent,
        prev_hash: String,
    ) -> (Self, [u8; 32]) {
        let mut entry = Self {
            seq,
            time: time.to_owned(),
            actor: event.actor,
            action: event.action.to_owned(),
            target: event.target,
            outcome: event.outcome,
            reason: event.reason,
            ticket: event.ticket,
            request_id: event.request_id,
            client: event.client,
            prev_hash,
            hash: String::new(),
        };
        let hash = entry.compute_hash();
        entry.hash = hex32(&hash);
        (entry, hash)
    }

    /// The hash this entry should carry, from its other fields. A
    /// `prev_hash` that is not 32 bytes of hex makes a hash no real entry
    /// has.
    pub fn compute_hash(&self) -> [u8; 32] {
        let canonical = Canonical {
            seq: self.seq,
            time: &self.time,
            actor: &self.actor,
            action: &self.action,
            target: &self.target,
            outcome: self.outcome,
            reason: &self.reason,
            ticket: &self.ticket,
            request_id: &self.request_id,
            client: &self.client,
            prev_hash: &self.prev_hash,
        };
        let mut input = Vec::with_capacity(512);
        match bytes32_from_hex(&self.prev_hash) {
            Some(prev) => input.extend_from_slice(&prev),
            None => input.extend_from_slice(b"invalid prev_hash"),
        }
        // Serialising plain strings and numbers into a Vec cannot fail.
        let prefix = input.len();
        if serde_json::to_writer(&mut input, &canonical).is_err() {
            input.truncate(prefix);
        }
        sha256(&input)
    }
}

/// The first byte of an entry in the binary stored form; entries written
/// by earlier versions are JSON (and start with `{`).
const STORED_BINARY: u8 = 2;

/// An entry as stored: the same fields, the hashes as bytes, in the
/// compact binary encoding of `postcard`. The chain's hash is over the
/// canonical JSON whatever the stored form, so exports and verifiers do
/// not change.
#[derive(Serialize, Deserialize)]
struct StoredEntry<'a> {
    seq: u64,
    time: Cow<'a, str>,
    actor: Cow<'a, str>,
    action: Cow<'a, str>,
    target: Option<Cow<'a, str>>,
    outcome: Outcome,
    reason: Option<Cow<'a, str>>,
    ticket: Option<Cow<'a, str>>,
    request_id: Option<Cow<'a, str>>,
    client: Option<Cow<'a, str>>,
    prev_hash: [u8; 32],
    hash: [u8; 32],
}

/// A borrowed optional text for [`StoredEntry`] (no copy when writing).
fn borrowed(text: &Option<String>) -> Option<Cow<'_, str>> {
    text.as_deref().map(Cow::Borrowed)
}

/// An owned optional text from [`StoredEntry`] (no copy when reading).
fn owned(text: Option<Cow<'_, str>>) -> Option<String> {
    text.map(Cow::into_owned)
}

impl AuditEntry {
    /// The stored form of this entry; `None` if its hashes are not 32
    /// bytes of hex (no entry this log makes).
    pub fn to_stored(&self) -> Option<Vec<u8>> {
        let stored = StoredEntry {
            seq: self.seq,
            time: Cow::Borrowed(&self.time),
            actor: Cow::Borrowed(&self.actor),
            action: Cow::Borrowed(&self.action),
            target: borrowed(&self.target),
            outcome: self.outcome,
            reason: borrowed(&self.reason),
            ticket: borrowed(&self.ticket),
            request_id: borrowed(&self.request_id),
            client: borrowed(&self.client),
            prev_hash: bytes32_from_hex(&self.prev_hash)?,
            hash: bytes32_from_hex(&self.hash)?,
        };
        let mut out = vec![STORED_BINARY];
        postcard::to_io(&stored, &mut out).ok()?;
        Some(out)
    }

    /// An entry from its stored form: binary, or JSON as earlier versions
    /// stored it. `None` if it is neither.
    pub fn from_stored(bytes: &[u8]) -> Option<Self> {
        match bytes.split_first() {
            Some((&STORED_BINARY, rest)) => {
                // Every byte is the entry's: nothing may follow it.
                let (s, left): (StoredEntry, _) = postcard::take_from_bytes(rest).ok()?;
                if !left.is_empty() {
                    return None;
                }
                Some(Self {
                    seq: s.seq,
                    time: s.time.into_owned(),
                    actor: s.actor.into_owned(),
                    action: s.action.into_owned(),
                    target: owned(s.target),
                    outcome: s.outcome,
                    reason: owned(s.reason),
                    ticket: owned(s.ticket),
                    request_id: owned(s.request_id),
                    client: owned(s.client),
                    prev_hash: hex32(&s.prev_hash),
                    hash: hex32(&s.hash),
                })
            }
            _ => serde_json::from_slice(bytes).ok(),
        }
    }
}

/// A signature over the chain's head at `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    pub time: String,
    /// Ed25519 signature, hex.
    pub signature: String,
}

impl Checkpoint {
    /// The bytes the signature covers.
    pub fn signed_message(seq: u64, hash: &[u8], time: &str) -> Vec<u8> {
        let mut message = b"strongroom/v1/audit-checkpoint\0".to_vec();
        message.extend_from_slice(&seq.to_be_bytes());
        message.extend_from_slice(hash);
        message.extend_from_slice(time.as_bytes());
        message
    }
}

/// One line of an export (JSONL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExportLine {
    Entry(AuditEntry),
    Checkpoint(Checkpoint),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `no_match` is part of the canonical encoding: an entry carrying it
    /// hashes, exports and reads back like any other.
    #[test]
    fn no_match_and_canary_round_trip_through_the_chain_encoding() {
        for (outcome, word) in [(Outcome::NoMatch, "no_match"), (Outcome::Canary, "canary")] {
            let event = AuditEvent::new("prn_1", "record.search", outcome);
            let (entry, hash) =
                AuditEntry::chained(7, "2026-01-01T00:00:00Z", event, hex::encode(GENESIS_HASH));
            let line = serde_json::to_string(&ExportLine::Entry(entry.clone())).unwrap();
            assert!(line.contains(&format!("\"outcome\":\"{word}\"")));
            let ExportLine::Entry(read) = serde_json::from_str(&line).unwrap() else {
                panic!("not an entry: {line}");
            };
            assert_eq!(read, entry);
            assert_eq!(read.compute_hash(), hash);
            assert_eq!(
                AuditEntry::from_stored(&entry.to_stored().unwrap()),
                Some(entry)
            );
            let other = AuditEntry {
                outcome: Outcome::Allowed,
                ..read
            };
            assert_ne!(other.compute_hash(), hash);
        }
    }

    /// The hash is SHA-256 of the previous hash's bytes and the canonical
    /// JSON, computed here the plain way (as before issue 11), so a faster
    /// computation cannot change any chain.
    #[test]
    fn the_chain_hash_is_the_documented_one() {
        let mut event = AuditEvent::new("prn_1", "record.read", Outcome::Denied).target("card_1");
        event.reason = Some("r \"quoted\" é".into());
        let (entry, hash) =
            AuditEntry::chained(9, "2026-01-01T00:00:00Z", event, hex::encode([3; 32]));
        let canonical = Canonical {
            seq: entry.seq,
            time: &entry.time,
            actor: &entry.actor,
            action: &entry.action,
            target: &entry.target,
            outcome: entry.outcome,
            reason: &entry.reason,
            ticket: &entry.ticket,
            request_id: &entry.request_id,
            client: &entry.client,
            prev_hash: &entry.prev_hash,
        };
        let mut input = hex::decode(&entry.prev_hash).unwrap();
        input.extend_from_slice(&serde_json::to_vec(&canonical).unwrap());
        assert_eq!(hash, sha256(&input));
        assert_eq!(entry.hash, hex::encode(sha256(&input)));
        assert_eq!(entry.compute_hash(), hash);
    }

    /// The stored form is pinned byte for byte (postcard writes an enum
    /// variant by position): reordering `Outcome` or a field fails here.
    #[test]
    fn the_stored_form_is_pinned() {
        let entry = AuditEntry {
            seq: 1,
            time: "t".into(),
            actor: "a".into(),
            action: "x".into(),
            target: None,
            outcome: Outcome::NoMatch,
            reason: None,
            ticket: None,
            request_id: None,
            client: None,
            prev_hash: "00".repeat(32),
            hash: "ff".repeat(32),
        };
        assert_eq!(
            hex::encode(entry.to_stored().unwrap()),
            "02".to_owned()
                + "01"
                + "0174"
                + "0161"
                + "0178"
                + "00"
                + "03"
                + "00000000"
                + &"00".repeat(32)
                + &"ff".repeat(32)
        );
        for (outcome, index) in [
            (Outcome::Allowed, 0u8),
            (Outcome::Denied, 1),
            (Outcome::Error, 2),
            (Outcome::NoMatch, 3),
            (Outcome::Canary, 4),
        ] {
            assert_eq!(postcard::to_allocvec(&outcome).unwrap(), [index]);
        }
    }

    /// Entries are stored binary and read back whole; JSON as earlier
    /// versions stored it still reads; anything else does not.
    #[test]
    fn stored_forms_round_trip() {
        let mut event = AuditEvent::new("prn_1", "record.reveal", Outcome::Allowed).target("kyc_1");
        event.reason = Some("case".into());
        event.ticket = Some("T-1".into());
        let (entry, _) =
            AuditEntry::chained(3, "2026-01-01T00:00:00Z", event, hex::encode([7; 32]));
        let stored = entry.to_stored().unwrap();
        assert_eq!(stored[0], STORED_BINARY);
        assert!(stored.len() < serde_json::to_vec(&entry).unwrap().len() / 2);
        assert_eq!(AuditEntry::from_stored(&stored), Some(entry.clone()));
        let json = serde_json::to_vec(&entry).unwrap();
        assert_eq!(AuditEntry::from_stored(&json), Some(entry.clone()));
        assert_eq!(AuditEntry::from_stored(&stored[..stored.len() - 1]), None);
        let mut longer = stored.clone();
        longer.push(0);
        assert_eq!(
            AuditEntry::from_stored(&longer),
            None,
            "a byte after the entry"
        );
        assert_eq!(AuditEntry::from_stored(b""), None);
        let odd = AuditEntry {
            prev_hash: "zz".into(),
            ..entry
        };
        assert_eq!(odd.to_stored(), None);
    }
}
