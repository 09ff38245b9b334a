//! Entry and checkpoint formats.
//!
//! `hash = SHA-256(prev_hash ‖ canonical entry)`, where the canonical entry
//! is the compact JSON of every field but `hash`, in the order declared
//! below, and `prev_hash` is the previous entry's hash (32 zero bytes before
//! the first). A checkpoint signs `"strongroom/v1/audit-checkpoint" ‖ 0 ‖
//! seq (u64 BE) ‖ hash ‖ time` with the vault's Ed25519 audit key; the
//! signed head each round writes has the same form.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::crypto::sha256;

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
        entry.hash = hex::encode(hash);
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
        // Serialising plain strings and numbers cannot fail.
        let json = serde_json::to_vec(&canonical).unwrap_or_default();
        let mut input = match hex::decode(&self.prev_hash) {
            Ok(prev) if prev.len() == 32 => prev,
            _ => b"invalid prev_hash".to_vec(),
        };
        input.extend_from_slice(&json);
        sha256(&input)
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
    fn no_match_round_trips_through_the_chain_encoding() {
        let event = AuditEvent::new("prn_1", "record.search", Outcome::NoMatch);
        let (entry, hash) =
            AuditEntry::chained(7, "2026-01-01T00:00:00Z", event, hex::encode(GENESIS_HASH));
        let line = serde_json::to_string(&ExportLine::Entry(entry.clone())).unwrap();
        assert!(line.contains("\"outcome\":\"no_match\""));
        let ExportLine::Entry(read) = serde_json::from_str(&line).unwrap() else {
            panic!("not an entry: {line}");
        };
        assert_eq!(read, entry);
        assert_eq!(read.compute_hash(), hash);
        let other = AuditEntry {
            outcome: Outcome::Allowed,
            ..read
        };
        assert_ne!(other.compute_hash(), hash);
    }
}
