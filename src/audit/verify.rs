//! Verification of the chain and its checkpoints with only the public key.

use serde::Serialize;
use utoipa::ToSchema;

use super::entry::GENESIS_HASH;
use super::log::{StoredLines, stored_head};
use super::{Checkpoint, ExportLine};
use crate::crypto::verify_signature;
use crate::store::Store;

/// The result of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Verification {
    pub ok: bool,
    /// Entries that verified.
    pub entries: u64,
    /// Hash of the last verified entry.
    pub head: Option<String>,
    /// The last verified checkpoint.
    pub checkpoint: Option<Checkpoint>,
    /// The first sequence number that failed, when `ok` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<u64>,
    /// What failed, when `ok` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl Verification {
    fn fail(mut self, seq: u64, problem: impl Into<String>) -> Self {
        self.ok = false;
        self.first_bad_seq = Some(seq);
        self.problem = Some(problem.into());
        self
    }
}

/// Checks a sequence of entries and checkpoints in chain order:
/// sequence numbers run 1, 2, 3… without gaps; each `prev_hash` is the
/// previous `hash`; each `hash` is recomputed; each checkpoint's signature
/// holds under `public_key` and names the hash of the entry at its seq.
/// With `require_signed_tail`, the last entry must be covered by a
/// checkpoint, so cutting the tail is detected (exports, and a store after a
/// clean stop).
pub fn verify_lines(
    lines: impl Iterator<Item = Result<ExportLine, String>>,
    public_key: &[u8],
    require_signed_tail: bool,
) -> Verification {
    let mut result = Verification {
        ok: true,
        entries: 0,
        head: None,
        checkpoint: None,
        first_bad_seq: None,
        problem: None,
    };
    let mut hashes: Vec<[u8; 32]> = Vec::new();
    let mut prev = GENESIS_HASH;
    for line in lines {
        let next_seq = result.entries + 1;
        match line {
            Err(why) => return result.fail(next_seq, why),
            Ok(ExportLine::Entry(entry)) => {
                if entry.seq != next_seq {
                    return result.fail(
                        next_seq,
                        format!("expected entry {next_seq}, found {}", entry.seq),
                    );
                }
                if entry.prev_hash != hex::encode(prev) {
                    return result.fail(entry.seq, "prev_hash does not match the previous entry");
                }
                let hash = entry.compute_hash();
                if entry.hash != hex::encode(hash) {
                    return result.fail(entry.seq, "hash does not match the entry's contents");
                }
                prev = hash;
                hashes.push(hash);
                result.entries = entry.seq;
                result.head = Some(entry.hash);
            }
            Ok(ExportLine::Checkpoint(checkpoint)) => {
                let covered = usize::try_from(checkpoint.seq)
                    .ok()
                    .and_then(|s| s.checked_sub(1))
                    .and_then(|i| hashes.get(i));
                let Some(covered) = covered else {
                    return result.fail(
                        checkpoint.seq,
                        "a checkpoint covers an entry that is missing",
                    );
                };
                if checkpoint.hash != hex::encode(covered) {
                    return result.fail(
                        checkpoint.seq,
                        "a checkpoint names another hash than the entry's",
                    );
                }
                let signature = hex::decode(&checkpoint.signature).unwrap_or_default();
                let message = Checkpoint::signed_message(checkpoint.seq, covered, &checkpoint.time);
                if verify_signature(public_key, &message, &signature).is_err() {
                    return result.fail(checkpoint.seq, "checkpoint signature does not verify");
                }
                result.checkpoint = Some(checkpoint);
            }
        }
    }
    let signed_to = result.checkpoint.as_ref().map_or(0, |c| c.seq);
    if require_signed_tail && signed_to < result.entries {
        let first = signed_to + 1;
        return result.fail(
            first,
            "entries after the last checkpoint are not signed (truncated, or not stopped cleanly)",
        );
    }
    result
}

/// Verifies the log in a store, including that the head record names the
/// last entry (so deleting entries from the end shows even where their
/// checkpoints were deleted too).
pub fn verify_store(
    store: &dyn Store,
    public_key: &[u8],
    require_signed_tail: bool,
) -> Verification {
    let result = verify_lines(StoredLines::new(store), public_key, require_signed_tail);
    if !result.ok {
        return result;
    }
    match stored_head(store) {
        Ok(None) if result.entries == 0 => result,
        Ok(Some((seq, hash))) if seq == result.entries && Some(&hash) == result.head.as_ref() => {
            result
        }
        Ok(Some((seq, _))) if seq > result.entries => {
            let first = result.entries + 1;
            result.fail(first, "entries the head record names are missing")
        }
        Ok(_) => {
            let last = result.entries;
            result.fail(last, "the head record does not name the last entry")
        }
        Err(e) => {
            let first = result.entries + 1;
            result.fail(first, e.to_string())
        }
    }
}
