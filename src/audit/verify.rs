//! Verification of the chain and its signatures with only the public key.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use utoipa::ToSchema;

use super::entry::{GENESIS_HASH, WRITTEN_WHILE_SEALED};
use super::log::StoredLines;
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
    /// The last verified signature (a checkpoint or the signed head).
    pub checkpoint: Option<Checkpoint>,
    /// Entries after the last signature: seal and unseal entries written
    /// while the vault was sealed, signed at the next unseal.
    #[serde(skip_serializing_if = "is_zero")]
    pub unsigned_tail: u64,
    /// The first sequence number that failed, when `ok` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<u64>,
    /// What failed, when `ok` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Verification {
    fn new() -> Self {
        Self {
            ok: true,
            entries: 0,
            head: None,
            checkpoint: None,
            unsigned_tail: 0,
            first_bad_seq: None,
            problem: None,
        }
    }

    /// A verification that could not start: `problem` at `seq`.
    pub fn refused(seq: u64, problem: impl Into<String>) -> Self {
        Self::new().fail(seq, problem)
    }

    fn fail(mut self, seq: u64, problem: impl Into<String>) -> Self {
        self.ok = false;
        self.first_bad_seq = Some(seq);
        self.problem = Some(problem.into());
        self
    }
}

/// A signed head the log must still contain: the newest one the server is
/// known to have made durable (`keys/audit.head`), or one an operator holds
/// (`--min-head SEQ:HASH`). A log that ends before it, or holds another
/// entry at its seq, was rolled back or rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownHead {
    pub seq: u64,
    /// The hash of entry `seq`, hex.
    pub hash: String,
}

impl From<&Checkpoint> for KnownHead {
    fn from(signed: &Checkpoint) -> Self {
        Self {
            seq: signed.seq,
            hash: signed.hash.clone(),
        }
    }
}

impl std::str::FromStr for KnownHead {
    type Err = &'static str;

    /// `SEQ:HASH`, as in the `seq` and `hash` of a checkpoint.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const FORMAT: &str = "expected SEQ:HASH (a sequence number, a colon and 64 hex digits)";
        let (seq, hash) = text.trim().split_once(':').ok_or(FORMAT)?;
        let seq: u64 = seq.parse().map_err(|_| FORMAT)?;
        let hash = hash.to_ascii_lowercase();
        match hex::decode(&hash) {
            Ok(bytes) if bytes.len() == 32 && seq > 0 => Ok(Self { seq, hash }),
            _ => Err(FORMAT),
        }
    }
}

/// Lines verified per chunk: their hashes are computed in parallel.
const CHUNK: usize = 16 * 1024;

/// Whether `text` is exactly `hash` in lowercase hex (as entries carry
/// it), without allocating.
fn is_hex_of(text: &str, hash: &[u8; 32]) -> bool {
    let mut buf = [0u8; 64];
    hex::encode_to_slice(hash, &mut buf).is_ok() && text.as_bytes() == buf
}

/// Each entry's recomputed hash (`None` for other lines), computed on
/// every core: hashing is what verification spends its time on, and each
/// entry's hash depends only on the entry (its `prev_hash` included), so
/// the chain itself is still checked in order afterwards.
fn hashes_of(chunk: &[Result<ExportLine, String>]) -> Vec<Option<[u8; 32]>> {
    let hash = |line: &Result<ExportLine, String>| match line {
        Ok(ExportLine::Entry(entry)) => Some(entry.compute_hash()),
        _ => None,
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    // One verification at a time takes every core (the server's
    // `GET /v1/audit/verify` may be called by several auditors at once);
    // the others hash on their own thread.
    let parallel = threads >= 2
        && chunk.len() >= 256
        && PARALLEL
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok();
    if !parallel {
        return chunk.iter().map(hash).collect();
    }
    // Released however this ends (a thread the OS refuses panics).
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            PARALLEL.store(false, Ordering::Release);
        }
    }
    let _release = Release;
    let part = chunk.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = chunk
            .chunks(part)
            .map(|lines| {
                (
                    lines.len(),
                    scope.spawn(move || lines.iter().map(hash).collect::<Vec<_>>()),
                )
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|(len, worker)| {
                // A worker that panicked (none can) leaves its entries to
                // be hashed again in order: never a shorter list.
                worker.join().unwrap_or_else(|_| vec![None; len])
            })
            .collect()
    })
}

/// Whether a verification is hashing on every core now.
static PARALLEL: AtomicBool = AtomicBool::new(false);

/// Checks a sequence of entries and checkpoints in chain order:
/// sequence numbers run 1, 2, 3… without gaps; each `prev_hash` is the
/// previous `hash`; each `hash` is recomputed; each checkpoint's signature
/// holds under `public_key` and names the hash of the entry at its seq. An
/// empty sequence is refused: it proves nothing.
///
/// With `require_signed_tail`, the last entry must be covered by a
/// signature, so cutting the tail is detected (exports). Without it, the
/// entries after the last signature may only be ones written while the
/// vault was sealed (seal and unseal); anything else there is unsigned and
/// refused (a data directory, the live log).
pub fn verify_lines(
    lines: impl Iterator<Item = Result<ExportLine, String>>,
    public_key: &[u8],
    require_signed_tail: bool,
) -> Verification {
    verify_lines_since(lines, public_key, require_signed_tail, None)
}

/// [`verify_lines`], also refusing a log that does not reach `known`, or
/// holds another entry at its seq.
pub fn verify_lines_since(
    lines: impl Iterator<Item = Result<ExportLine, String>>,
    public_key: &[u8],
    require_signed_tail: bool,
    known: Option<&KnownHead>,
) -> Verification {
    let mut result = Verification::new();
    let mut hashes: Vec<[u8; 32]> = Vec::new();
    let mut prev = GENESIS_HASH;
    // The highest seq a signature covers, and entries after it that could
    // only have been written unsigned by tampering: the first and the last.
    let mut signed_to = 0u64;
    let mut unsigned_forbidden: Option<(u64, u64)> = None;
    let mut lines = lines.peekable();
    while lines.peek().is_some() {
        let chunk: Vec<_> = lines.by_ref().take(CHUNK).collect();
        let computed = hashes_of(&chunk);
        for (line, computed) in chunk.into_iter().zip(computed) {
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
                    if !is_hex_of(&entry.prev_hash, &prev) {
                        return result
                            .fail(entry.seq, "prev_hash does not match the previous entry");
                    }
                    let hash = computed.unwrap_or_else(|| entry.compute_hash());
                    if !is_hex_of(&entry.hash, &hash) {
                        return result.fail(entry.seq, "hash does not match the entry's contents");
                    }
                    if let Some(known) = known
                        && known.seq == entry.seq
                        && known.hash != entry.hash
                    {
                        return result.fail(
                        entry.seq,
                        "this entry is not the one the newest signed head seen names: the log was rewritten",
                    );
                    }
                    if !WRITTEN_WHILE_SEALED.contains(&entry.action.as_str()) {
                        let first = unsigned_forbidden.map_or(entry.seq, |(first, _)| first);
                        unsigned_forbidden = Some((first, entry.seq));
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
                    let message =
                        Checkpoint::signed_message(checkpoint.seq, covered, &checkpoint.time);
                    if verify_signature(public_key, &message, &signature).is_err() {
                        return result.fail(checkpoint.seq, "checkpoint signature does not verify");
                    }
                    signed_to = signed_to.max(checkpoint.seq);
                    unsigned_forbidden = match unsigned_forbidden {
                        Some((_, last)) if last <= signed_to => None,
                        // Not the first after the signature, but one there.
                        Some((first, last)) if first <= signed_to => Some((last, last)),
                        other => other,
                    };
                    result.checkpoint = Some(checkpoint);
                }
            }
        }
    }
    if result.entries == 0 {
        return result.fail(
            1,
            "the log is empty: an empty log or export proves nothing (every vault's log starts with its init entries)",
        );
    }
    if let Some(known) = known
        && known.seq > result.entries
    {
        let (entries, first) = (result.entries, result.entries + 1);
        return result.fail(
            first,
            format!(
                "the log ends at entry {entries}, but a signed head at entry {} was seen: the log was rolled back or truncated",
                known.seq
            ),
        );
    }
    result.unsigned_tail = result.entries - signed_to.min(result.entries);
    if require_signed_tail && signed_to < result.entries {
        let first = signed_to + 1;
        return result.fail(
            first,
            "entries after the last signature are not signed (truncated, or written while sealed and not yet signed by an unseal)",
        );
    }
    if let Some((first, _)) = unsigned_forbidden {
        return result.fail(
            first,
            "this entry is not covered by a signature, and only seal and unseal entries are ever written unsigned",
        );
    }
    result
}

/// Verifies the log in a store, including that the head record names the
/// last entry (so deleting entries from the end shows even where their
/// checkpoints were deleted too). Safe while nodes keep writing: the walk
/// stops at the head read first (see `StoredLines`).
pub fn verify_store(
    store: &dyn Store,
    public_key: &[u8],
    require_signed_tail: bool,
) -> Verification {
    verify_store_since(store, public_key, require_signed_tail, None)
}

/// [`verify_store`], also refusing a log rolled back behind `known`.
pub fn verify_store_since(
    store: &dyn Store,
    public_key: &[u8],
    require_signed_tail: bool,
    known: Option<&KnownHead>,
) -> Verification {
    let mut lines = StoredLines::new(store);
    let result = verify_lines_since(&mut lines, public_key, require_signed_tail, known);
    if !result.ok {
        return result;
    }
    match lines.head_agrees(result.entries) {
        Ok(()) => result,
        Err((seq, problem)) => result.fail(seq, problem),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn known_heads_parse_strictly() {
        let hash = "ab".repeat(32);
        let head: KnownHead = format!("12:{hash}").parse().unwrap();
        assert_eq!((head.seq, head.hash.as_str()), (12, hash.as_str()));
        for bad in [
            "",
            "12",
            ":ab",
            "x:ab",
            "0:ab",
            "12:abc",
            &format!("12:{hash}00"),
        ] {
            assert!(bad.parse::<KnownHead>().is_err(), "{bad}");
        }
    }
}
