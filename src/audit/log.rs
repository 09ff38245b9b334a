//! Appending to, reading and exporting the chain in the store.
//!
//! Keys: `au/e/<seq u64 BE>` → entry (binary; JSON before issue 11), `au/c/<seq u64 BE>` → checkpoint
//! JSON, `au/head` → `{"seq":…,"hash":…}`, `au/signed` → the newest signed
//! head (checkpoint JSON).
//!
//! Every entry is authenticated when it is written: each round of the group
//! commit signs its new head in the same store transaction as its entries,
//! so no crash leaves an entry unsigned. Only while the vault is sealed (no
//! key) are seal and unseal entries written unsigned; the next unseal signs
//! them. Before this process signs anything over a head it did not write
//! itself, the tail after the last signature must check out (see
//! `check_tail`); otherwise nothing is signed and every write fails.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::entry::{GENESIS_HASH, WRITTEN_WHILE_SEALED};
use super::head_file::{HeadFile, read_head_file};
use super::verify::KnownHead;
use super::{AuditEntry, AuditEvent, Checkpoint, ExportLine, Outcome as EntryOutcome};
use crate::clock::{Clock, rfc3339};
use crate::crypto::{SigningKey, verify_signature};
use crate::keyring::{
    Keyring, KeyringError, Purpose, RotationRecorder, RotationTrigger, UnsealedKeys,
};
use crate::store::{Direct, Reads, Store, StoreError, Transaction, Write as StoreWrite};

const ENTRY_PREFIX: &[u8] = b"au/e/";
pub(crate) const CHECKPOINT_PREFIX: &[u8] = b"au/c/";
pub(crate) const HEAD_KEY: &[u8] = b"au/head";
pub(crate) const SIGNED_KEY: &[u8] = b"au/signed";
const SCAN_BATCH: usize = 1024;

/// Why an entry could not be written or read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The change's own precondition failed; nothing was written.
    #[error("the change conflicts with the stored state")]
    Conflict,
    /// The entry (and so the change) could not be written.
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
    /// The stored log cannot be read as a log.
    #[error("audit log corrupt: {0}")]
    Corrupt(&'static str),
    /// The change and its entry were applied, but the store's sync failed,
    /// or a shared store's commit got no answer ([`StoreError::Unknown`]):
    /// they were not acknowledged, yet may still be (or become) durable.
    #[error(
        "the change and its entry may have been applied but are not known to be durable (they may still become durable): {0}"
    )]
    NotDurable(String),
    /// The vault was sealed: no key signs the entry, and only seal and
    /// unseal entries are written unsigned.
    #[error("the vault is sealed")]
    Sealed,
    /// The stored log's tail is not authenticated (rewritten, rolled back
    /// or unsigned): nothing is signed over it.
    #[error("the audit log's tail is not authenticated: {0}")]
    Unauthenticated(String),
}

impl From<StoreError> for AuditError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self::Conflict,
            StoreError::Backend(why) => Self::Unavailable(why),
            // Like a failed flush: the change and its entry may have been
            // written, so the caller must check before retrying.
            StoreError::Unknown(why) => Self::NotDurable(why),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

/// The last entry's seq in a stored head record (`au/head`).
pub(crate) fn head_seq(stored: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Head>(stored)
        .ok()
        .map(|head| head.seq)
}

fn entry_key(seq: u64) -> Vec<u8> {
    [ENTRY_PREFIX, &seq.to_be_bytes()].concat()
}

fn checkpoint_key(seq: u64) -> Vec<u8> {
    [CHECKPOINT_PREFIX, &seq.to_be_bytes()].concat()
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, AuditError> {
    serde_json::to_vec(value).map_err(|_| AuditError::Corrupt("cannot encode"))
}

/// Filters of `GET /v1/audit`.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub target: Option<String>,
    pub action: Option<String>,
    pub since: Option<time::OffsetDateTime>,
    pub until: Option<time::OffsetDateTime>,
    pub after: u64,
    pub limit: usize,
}

impl AuditQuery {
    fn matches(&self, entry: &AuditEntry) -> bool {
        let time_ok = || {
            let Some(t) = crate::clock::parse_rfc3339(&entry.time) else {
                return false;
            };
            self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
        };
        self.actor.as_ref().is_none_or(|a| *a == entry.actor)
            && self.action.as_ref().is_none_or(|a| *a == entry.action)
            && self
                .target
                .as_ref()
                .is_none_or(|t| Some(t) == entry.target.as_ref())
            && (self.since.is_none() && self.until.is_none() || time_ok())
    }
}

/// The audit log of one vault. Cheap to clone: clones share one log.
#[derive(Clone)]
pub struct AuditLog(Arc<Inner>);

struct Inner {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    clock: Arc<dyn Clock>,
    checkpoint_every: u64,
    /// Appends are serialised: each needs the previous hash.
    append: Mutex<()>,
    /// Appends waiting for the committer (see [`AuditLog::record_many`]).
    queue: Mutex<Queue>,
    /// Applied rounds on their way to the flusher thread, which flushes
    /// while the committer applies the next round.
    flushes: Option<std::sync::mpsc::Sender<Round>>,
    flusher: Option<std::thread::JoinHandle<()>>,
    /// The stored head this process knows to be authentic: it checked the
    /// tail up to it, or wrote it over such a head. Signing over any other
    /// head waits for [`check_tail`].
    trusted: Mutex<Option<Head>>,
    /// The newest head this process signed.
    newest_signed: Mutex<Option<Checkpoint>>,
    /// `audit.head` in the keys directory.
    head_file: Arc<HeadFile>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The flusher ends when its channel closes; wait for it, so the
        // store is released when the log is.
        drop(self.flushes.take());
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

/// The state of the keys a round has touched so far: the values its batches
/// wrote (borrowed from them) or read from the store. `None`: absent.
type Seen<'j> = HashMap<&'j [u8], Option<Cow<'j, [u8]>>>;

/// What one worked-out round holds besides its transaction.
struct Built {
    outcomes: Vec<Outcome>,
    signed: Option<Checkpoint>,
    /// The head it was built on and the head it writes; `None` when it
    /// writes nothing.
    heads: Option<(Head, Head)>,
}

/// The stored head record and the head it names (genesis when absent).
fn head_in(reads: &dyn Reads) -> Result<(Option<Vec<u8>>, Head), AuditError> {
    match reads.get(HEAD_KEY)? {
        None => Ok((
            None,
            Head {
                seq: 0,
                hash: hex::encode(GENESIS_HASH),
            },
        )),
        Some(bytes) => {
            let head: Head =
                serde_json::from_slice(&bytes).map_err(|_| AuditError::Corrupt("head record"))?;
            Ok((Some(bytes), head))
        }
    }
}

/// Whether every precondition of `job` holds in the state `seen` (the
/// round's writes so far) over what `reads` sees. Values read are added to
/// `seen` and, as preconditions, to `read`.
fn preconditions_hold<'j>(
    reads: &dyn Reads,
    job: &'j Job,
    seen: &mut Seen<'j>,
    read: &mut Transaction,
) -> Result<bool, AuditError> {
    // All of a job's preconditions are checked against the state before
    // it, as one transaction would check them.
    for (_, change) in &job.batch {
        for (key, expected) in &change.preconditions {
            let current = match seen.entry(key.as_slice()) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(unknown) => {
                    let value = reads.get(key)?;
                    read.preconditions.push((key.clone(), value.clone()));
                    unknown.insert(value.map(Cow::Owned))
                }
            };
            if current.as_deref() != expected.as_deref() {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Rounds applied but not yet durable: their callers with their outcomes,
/// and the newest head they signed.
#[derive(Default)]
struct Round {
    replies: Vec<(Reply, Outcome)>,
    signed: Option<Checkpoint>,
}

impl Round {
    fn extend(&mut self, later: Round) {
        self.replies.extend(later.replies);
        if later.signed.is_some() {
            self.signed = later.signed;
        }
    }
}

/// The flusher thread: makes applied rounds durable, then answers their
/// callers. Rounds that arrive during a flush share the next one. The
/// newest durable signed head goes to `audit.head` at most once a second,
/// and within a second of the last round even when no more come.
fn flush_rounds(
    store: Arc<dyn Store>,
    head_file: Arc<HeadFile>,
    rounds: std::sync::mpsc::Receiver<Round>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut unrecorded: Option<Checkpoint> = None;
    loop {
        match rounds.recv_timeout(super::head_file::EVERY) {
            Ok(first) => {
                let mut waiting = first;
                for more in rounds.try_iter() {
                    waiting.extend(more);
                }
                if let Some(durable) = answer_after_flush(store.as_ref(), waiting) {
                    unrecorded = Some(durable);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if let Some(head) = unrecorded {
                    head_file.record(&head, false);
                }
                return;
            }
        }
        if let Some(head) = &unrecorded
            && head_file.record(head, true)
        {
            unrecorded = None;
        }
    }
}

/// Flushes (when anything was written) and answers every caller; the
/// newest signed head, once durable. A failed flush fails every write it
/// should have made durable — honestly: they were applied, so they may
/// still become durable ([`AuditError::NotDurable`]).
fn answer_after_flush(store: &dyn Store, round: Round) -> Option<Checkpoint> {
    let flushed = if round.replies.iter().any(|(_, outcome)| outcome.is_ok()) {
        crate::metrics::timed_flush(|| store.flush()).map_err(|e| e.to_string())
    } else {
        Ok(())
    };
    for (reply, outcome) in round.replies {
        reply.send(match (&flushed, outcome) {
            (Err(why), Ok(_)) => Err(AuditError::NotDurable(why.clone())),
            (_, outcome) => outcome,
        });
    }
    flushed.ok().and(round.signed)
}

/// Commits automatic KEK rotations for the keyring with a `key.rotate`
/// entry by `system`. Holds the log weakly: the log holds the keyring.
struct RotationAuditor(std::sync::Weak<Inner>);

impl RotationRecorder for RotationAuditor {
    fn commit_rotation(
        &self,
        purpose: Purpose,
        version: u32,
        trigger: &RotationTrigger,
        change: Transaction,
    ) -> Result<(), StoreError> {
        let inner = self
            .0
            .upgrade()
            .ok_or_else(|| StoreError::Backend("the audit log is gone".into()))?;
        let event = AuditEvent {
            reason: Some(trigger.reason(version)),
            ..AuditEvent::new("system", "key.rotate", EntryOutcome::Allowed)
                .target(format!("kek/{}", purpose.as_str()))
        };
        AuditLog(inner)
            .record_with(event, change)
            .map(|_| ())
            .map_err(|e| match e {
                AuditError::Conflict => StoreError::Conflict,
                AuditError::NotDurable(why) => StoreError::Unknown(why),
                other => StoreError::Backend(other.to_string()),
            })
    }

    fn is_alive(&self) -> bool {
        self.0.strong_count() > 0
    }
}

type Outcome = Result<Vec<AuditEntry>, AuditError>;

/// A batch waiting to be committed, and where its outcome goes.
struct Job {
    batch: Vec<(AuditEvent, Transaction)>,
    reply: Reply,
}

enum Reply {
    Blocking(std::sync::mpsc::Sender<Outcome>),
    Async(tokio::sync::oneshot::Sender<Outcome>),
}

impl Reply {
    fn send(self, outcome: Outcome) {
        // A caller that stopped waiting (a dropped request) needs no answer;
        // its change is committed all the same.
        match self {
            Self::Blocking(tx) => drop(tx.send(outcome)),
            Self::Async(tx) => drop(tx.send(outcome)),
        }
    }
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// Whether a committer is draining the queue.
    draining: bool,
}

impl AuditLog {
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        clock: Arc<dyn Clock>,
        checkpoint_every: u64,
    ) -> Self {
        let (flushes, rounds) = std::sync::mpsc::channel();
        let head_file = Arc::new(HeadFile::new(keyring.keys_dir()));
        let flusher = {
            let store = Arc::clone(&store);
            let head_file = Arc::clone(&head_file);
            std::thread::Builder::new()
                .name("audit-flush".into())
                .spawn(move || flush_rounds(store, head_file, rounds))
                .map_err(|e| tracing::error!(error = %e, "no flusher thread; flushing inline"))
                .ok()
        };
        let inner = Arc::new(Inner {
            store,
            keyring: Arc::clone(&keyring),
            clock,
            checkpoint_every: checkpoint_every.max(1),
            append: Mutex::new(()),
            queue: Mutex::new(Queue::default()),
            flushes: flusher.is_some().then_some(flushes),
            flusher,
            trusted: Mutex::new(None),
            newest_signed: Mutex::new(None),
            head_file,
        });
        keyring.record_rotations_with(Arc::new(RotationAuditor(Arc::downgrade(&inner))));
        Self(inner)
    }

    /// A stand-in for a sensitive value (an attempted username, a searched
    /// national id): HMAC-SHA256 under the audit key, so equal values can be
    /// correlated without being revealed. `None` while sealed.
    pub fn fingerprint(&self, value: &str) -> Option<String> {
        let keys = self.0.keyring.keys().ok()?;
        let tag = keys.audit_hmac_key().ok()?.sign(value.as_bytes());
        Some(format!("hmac:{}", hex::encode(&tag.0[..16])))
    }

    /// Records `event` on its own.
    pub fn record(&self, event: AuditEvent) -> Result<AuditEntry, AuditError> {
        self.record_with(event, Transaction::new())
    }

    /// Records `event` in the same atomic, durable transaction as `change`:
    /// both are written or neither is.
    pub fn record_with(
        &self,
        event: AuditEvent,
        change: Transaction,
    ) -> Result<AuditEntry, AuditError> {
        let mut entries = self.record_many(vec![(event, change)])?;
        entries
            .pop()
            .ok_or(AuditError::Corrupt("no entry appended"))
    }

    /// Records several changes, each with its own entry, atomically and
    /// durably: all of them or none. Blocks until the batch is durable.
    ///
    /// Group commit: batches from concurrent callers queue up, and one
    /// committer at a time takes everything queued, checks each batch's
    /// preconditions, chains their entries and writes them all in one store
    /// transaction (a round). The flusher thread then makes the round
    /// durable, sharing one flush with any rounds applied meanwhile, while
    /// the committer goes on with the next. Every caller hears about its own
    /// batch only after a flush that began after its round was applied; a
    /// batch whose precondition fails is refused alone
    /// ([`AuditError::Conflict`]) and the others go on.
    pub fn record_many(&self, batch: Vec<(AuditEvent, Transaction)>) -> Outcome {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.enqueue(batch, Reply::Blocking(tx)) {
            self.drain();
        }
        rx.recv()
            .unwrap_or_else(|_| Err(AuditError::Unavailable("committer stopped".into())))
    }

    /// [`AuditLog::record_many`] for async callers: the commit runs on a
    /// blocking thread, and only the first of a queue of callers starts one.
    pub async fn record_many_async(&self, batch: Vec<(AuditEvent, Transaction)>) -> Outcome {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.enqueue(batch, Reply::Async(tx)) {
            let log = self.clone();
            tokio::task::spawn_blocking(move || log.drain());
        }
        rx.await
            .unwrap_or_else(|_| Err(AuditError::Unavailable("committer stopped".into())))
    }

    /// Verifies the whole chain and every signature under this vault's
    /// audit key, and that the log still reaches the newest signed head
    /// this process made or `audit.head` names (no rollback). Needs the
    /// vault unsealed; reads the whole log (blocking).
    pub fn verify(&self) -> Result<super::Verification, KeyringError> {
        let public_key = self.0.keyring.keys()?.audit_signing_key()?.public_key();
        // Taken before the log is read: it only grows meanwhile.
        let known = match self.newest_seen(&public_key) {
            Ok(known) => known,
            Err(problem) => return Ok(super::Verification::refused(0, problem)),
        };
        Ok(super::verify_store_since(
            self.0.store.as_ref(),
            &public_key,
            false,
            known.as_ref(),
        ))
    }

    /// The newest signed head known to have been durable: the one this
    /// process signed last, or the one in `audit.head`, whichever is newer.
    fn newest_seen(&self, public_key: &[u8]) -> Result<Option<KnownHead>, String> {
        let from_file = match self.0.head_file.keys_dir() {
            Some(dir) => read_head_file(dir, public_key)?,
            None => None,
        };
        let signed = self
            .0
            .newest_signed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(KnownHead::from);
        Ok(match (from_file, signed) {
            (Some(a), Some(b)) => Some(if a.seq >= b.seq { a } else { b }),
            (a, b) => a.or(b),
        })
    }

    /// Checks, once per head this process did not write itself, that the
    /// stored tail is authentic before anything is signed over it.
    fn authenticate_tail(&self, head: &Head, signer: &SigningKey) -> Result<(), AuditError> {
        let mut trusted = self
            .0
            .trusted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if trusted.as_ref() == Some(head) {
            return Ok(());
        }
        let public_key = signer.public_key();
        let checked = self
            .newest_seen(&public_key)
            .and_then(|known| check_tail(self.0.store.as_ref(), head, &public_key, known.as_ref()));
        match checked {
            Ok(()) => {
                *trusted = Some(head.clone());
                Ok(())
            }
            Err(problem) => {
                tracing::error!(
                    %problem,
                    "AUDIT LOG TAIL NOT AUTHENTICATED: nothing is signed over it and every audited write fails; run `strongroom audit verify` and see docs/audit.md"
                );
                Err(AuditError::Unauthenticated(problem))
            }
        }
    }

    /// After a round or checkpoint was applied over `old`: what this
    /// process now knows to be authentic.
    fn note_applied(&self, old: &Head, new: &Head, signed: Option<&Checkpoint>) {
        let mut trusted = self
            .0
            .trusted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if signed.is_some() || trusted.as_ref() == Some(old) {
            *trusted = Some(new.clone());
        }
        if let Some(signed) = signed {
            let mut newest = self
                .0
                .newest_signed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if newest.as_ref().is_none_or(|n| n.seq <= signed.seq) {
                *newest = Some(signed.clone());
            }
        }
    }

    /// How many batches wait for the committer's next round.
    pub fn pending(&self) -> usize {
        self.0
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .jobs
            .len()
    }

    /// Queues a batch; true when the caller must start draining the queue.
    fn enqueue(&self, batch: Vec<(AuditEvent, Transaction)>, reply: Reply) -> bool {
        let mut queue = self.0.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.jobs.push(Job { batch, reply });
        !std::mem::replace(&mut queue.draining, true)
    }

    /// Commits queued batches, round after round, until the queue is empty.
    fn drain(&self) {
        // Should a round panic, the next caller must become the committer:
        // the queue would otherwise wait for a drainer that is gone.
        struct Resign<'a>(&'a Mutex<Queue>);
        impl Drop for Resign<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .draining = false;
                }
            }
        }
        let _resign = Resign(&self.0.queue);
        loop {
            let jobs = {
                let mut queue = self.0.queue.lock().unwrap_or_else(PoisonError::into_inner);
                if queue.jobs.is_empty() {
                    queue.draining = false;
                    return;
                }
                std::mem::take(&mut queue.jobs)
            };
            crate::metrics::audit_round(jobs.len(), jobs.iter().map(|j| j.batch.len()).sum());
            let (outcomes, signed) = {
                let _append = self.0.append.lock().unwrap_or_else(PoisonError::into_inner);
                self.apply_round(&jobs)
                    .unwrap_or_else(|e| (jobs.iter().map(|_| Err(e.clone())).collect(), None))
            };
            let round = Round {
                replies: jobs
                    .into_iter()
                    .map(|job| job.reply)
                    .zip(outcomes)
                    .collect(),
                signed,
            };
            // Pipelined: the flusher makes this round durable while the
            // next one is applied. Should it be gone, flush here.
            let unsent = match &self.0.flushes {
                Some(flushes) => flushes.send(round).err().map(|e| e.0),
                None => Some(round),
            };
            if let Some(round) = unsent
                && let Some(durable) = answer_after_flush(self.0.store.as_ref(), round)
            {
                self.0.head_file.record(&durable, true);
            }
        }
    }

    /// Checks, chains, signs and applies (not yet durably) the jobs of one
    /// round; also the signed head it wrote.
    ///
    /// Each job's preconditions are checked against the store as the jobs
    /// before it in the round leave it; the combined transaction repeats
    /// the checks it made against the store, so a write from outside the
    /// log in between makes it fail as a whole, and the round is worked out
    /// again from the new state. The round's new head is signed in the same
    /// transaction. While sealed nothing can be signed, and only seal and
    /// unseal entries are written (unsigned); other jobs are refused.
    fn apply_round(&self, jobs: &[Job]) -> Result<(Vec<Outcome>, Option<Checkpoint>), AuditError> {
        const ATTEMPTS: usize = 32;
        let keys = self.0.keyring.keys().ok();
        let signer = match keys.as_deref().map(UnsealedKeys::audit_signing_key) {
            None | Some(Err(KeyringError::Sealed)) => None,
            Some(Ok(signer)) => Some(signer),
            Some(Err(e)) => return Err(AuditError::Unavailable(e.to_string())),
        };
        for _ in 0..ATTEMPTS {
            // What the round worked out, and why it stopped if it did: the
            // store's callback speaks only `StoreError`.
            let mut built = None;
            let mut failed = None;
            let applied = self.0.store.apply_locked(HEAD_KEY, &mut |reads| {
                // A shared store runs this again when its transaction
                // lost a race: only the last run's outcome counts.
                (built, failed) = (None, None);
                match self.build_round(reads, jobs, signer.as_deref()) {
                    Ok((tx, round)) => {
                        built = Some(round);
                        Ok(tx)
                    }
                    Err(e) => {
                        failed = Some(e);
                        Err(StoreError::Backend("the audit round was not built".into()))
                    }
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            match applied {
                Ok(()) => {}
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
            let built = built.ok_or(AuditError::Corrupt("no round built"))?;
            if let Some((old, new)) = &built.heads {
                self.note_applied(old, new, built.signed.as_ref());
            }
            return Ok((built.outcomes, built.signed));
        }
        Err(AuditError::Unavailable(
            "the store kept changing under the audit log".into(),
        ))
    }

    /// Works out one round over the state `reads` sees: each job's
    /// outcome, and the transaction that writes the accepted jobs' changes,
    /// their chained entries and the new signed head (`None`: every job was
    /// refused). The transaction repeats, as preconditions, every value the
    /// round read, the head included.
    fn build_round(
        &self,
        reads: &dyn Reads,
        jobs: &[Job],
        signer: Option<&SigningKey>,
    ) -> Result<(Option<Transaction>, Built), AuditError> {
        let (head_bytes, head) = head_in(reads)?;
        if let Some(signer) = signer {
            self.authenticate_tail(&head, signer)?;
        }
        let mut seen = Seen::new();
        let mut read = Transaction::new().expect(HEAD_KEY, head_bytes);
        let mut writes = Transaction::new();
        let mut outcomes = Vec::with_capacity(jobs.len());
        let (mut seq, mut prev_hash) = (head.seq, head.hash.clone());
        let mut last_hash = None;
        let time = rfc3339(self.0.clock.now());
        for job in jobs {
            if signer.is_none()
                && !job
                    .batch
                    .iter()
                    .all(|(event, _)| WRITTEN_WHILE_SEALED.contains(&event.action))
            {
                outcomes.push(Err(AuditError::Sealed));
                continue;
            }
            if !preconditions_hold(reads, job, &mut seen, &mut read)? {
                outcomes.push(Err(AuditError::Conflict));
                continue;
            }
            let mut entries = Vec::with_capacity(job.batch.len());
            for (event, change) in &job.batch {
                seq += 1;
                let (entry, hash) = AuditEntry::chained(seq, &time, event.clone(), prev_hash);
                prev_hash = entry.hash.clone();
                last_hash = Some(hash);
                let stored = entry.to_stored().ok_or(AuditError::Corrupt("entry"))?;
                writes = writes.put(entry_key(seq), stored);
                if seq.is_multiple_of(self.0.checkpoint_every)
                    && let Some(signer) = signer
                {
                    let checkpoint = sign_head(signer, seq, &hash, &time);
                    writes = writes.put(checkpoint_key(seq), encode(&checkpoint)?);
                }
                for write in &change.writes {
                    let (key, value) = match write {
                        StoreWrite::Put(k, v) => (k, Some(Cow::Borrowed(v.as_slice()))),
                        StoreWrite::Delete(k) => (k, None),
                    };
                    seen.insert(key.as_slice(), value);
                    writes.writes.push(write.clone());
                }
                entries.push(entry);
            }
            outcomes.push(Ok(entries));
        }
        let Some(last_hash) = last_hash else {
            return Ok((
                None,
                Built {
                    outcomes,
                    signed: None,
                    heads: None,
                },
            ));
        };
        let new_head = Head {
            seq,
            hash: prev_hash,
        };
        let signed = signer.map(|signer| sign_head(signer, seq, &last_hash, &time));
        let mut round = read.merge(writes).put(HEAD_KEY, encode(&new_head)?);
        if let Some(signed) = &signed {
            round = round.put(SIGNED_KEY, encode(signed)?);
        }
        Ok((
            Some(round),
            Built {
                outcomes,
                signed,
                heads: Some((head, new_head)),
            },
        ))
    }

    fn head(&self) -> Result<(Option<Vec<u8>>, Head), AuditError> {
        head_in(&Direct(self.0.store.as_ref()))
    }

    /// Signs the current head as a checkpoint unless one already covers
    /// it, after checking the tail it would cover, makes it durable and
    /// records it in `audit.head`. Called on unseal (covering seal and
    /// unseal entries written while sealed), on seal and on shutdown.
    /// `None` when sealed or when the log is empty.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        let _append = self.0.append.lock().unwrap_or_else(PoisonError::into_inner);
        let (head_bytes, head) = self.head()?;
        if head.seq == 0 {
            return Ok(None);
        }
        let Ok(keys) = self.0.keyring.keys() else {
            return Ok(None);
        };
        let signer = match keys.audit_signing_key() {
            Ok(signer) => signer,
            Err(KeyringError::Sealed) => return Ok(None),
            Err(e) => return Err(AuditError::Unavailable(e.to_string())),
        };
        self.authenticate_tail(&head, &signer)?;
        let checkpoint = match self.0.store.get(&checkpoint_key(head.seq))? {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|_| AuditError::Corrupt("checkpoint"))?
            }
            None => {
                let hash = crate::crypto::bytes32_from_hex(&head.hash)
                    .ok_or(AuditError::Corrupt("head hash"))?;
                let checkpoint = sign_head(&signer, head.seq, &hash, &rfc3339(self.0.clock.now()));
                self.0.store.apply(
                    Transaction::new()
                        .expect(HEAD_KEY, head_bytes)
                        .put(checkpoint_key(head.seq), encode(&checkpoint)?)
                        .put(SIGNED_KEY, encode(&checkpoint)?),
                )?;
                checkpoint
            }
        };
        drop(signer);
        self.0
            .store
            .flush()
            .map_err(|e| AuditError::NotDurable(e.to_string()))?;
        self.note_applied(&head, &head, Some(&checkpoint));
        if !self.0.head_file.record(&checkpoint, false) {
            tracing::warn!("the signed audit head is not recorded in the keys directory");
        }
        Ok(Some(checkpoint))
    }

    /// Entries matching `query`, oldest first, and the `after` to pass for
    /// the next page (when more may follow).
    pub fn query(&self, query: &AuditQuery) -> Result<(Vec<AuditEntry>, Option<u64>), AuditError> {
        let mut out = Vec::new();
        let mut after = query.after;
        loop {
            let batch = self
                .0
                .store
                .scan(ENTRY_PREFIX, Some(&entry_key(after)), SCAN_BATCH)?;
            let exhausted = batch.len() < SCAN_BATCH;
            for (_, bytes) in batch {
                let entry = AuditEntry::from_stored(&bytes).ok_or(AuditError::Corrupt("entry"))?;
                after = entry.seq;
                if query.matches(&entry) {
                    out.push(entry);
                    if out.len() >= query.limit {
                        return Ok((out, Some(after)));
                    }
                }
            }
            if exhausted {
                return Ok((out, None));
            }
        }
    }

    /// The newest checkpoint.
    pub fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        latest_checkpoint(self.0.store.as_ref())
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.0.store
    }
}

/// Signs `(seq, hash, time)` as a checkpoint.
fn sign_head(signer: &SigningKey, seq: u64, hash: &[u8; 32], time: &str) -> Checkpoint {
    let signature = signer.sign(&Checkpoint::signed_message(seq, hash, time));
    Checkpoint {
        seq,
        hash: hex::encode(hash),
        time: time.to_owned(),
        signature: hex::encode(signature),
    }
}

/// The newest signature in the store: the signed head, or the newest
/// checkpoint (a log written before heads were signed), whichever covers
/// more.
fn newest_signature(store: &dyn Store) -> Result<Option<Checkpoint>, AuditError> {
    let signed: Option<Checkpoint> = store
        .get(SIGNED_KEY)?
        .map(|bytes| serde_json::from_slice(&bytes).map_err(|_| AuditError::Corrupt("signed head")))
        .transpose()?;
    let checkpoint = latest_checkpoint(store)?;
    Ok(match (signed, checkpoint) {
        (Some(s), Some(c)) => Some(if s.seq >= c.seq { s } else { c }),
        (s, c) => s.or(c),
    })
}

/// Whether the stored log up to `head` may be signed over: the newest
/// signature verifies and names its entry; every entry after it chains on
/// and is a seal or unseal entry (the only ones written unsigned); the log
/// reaches `known`, the newest signed head seen, and holds it. Reads only
/// the tail, not the whole log: a change before the newest signature breaks
/// the chain there, which every verification reports.
fn check_tail(
    store: &dyn Store,
    head: &Head,
    public_key: &[u8],
    known: Option<&KnownHead>,
) -> Result<(), String> {
    if let Some(known) = known {
        if known.seq > head.seq {
            return Err(format!(
                "the log ends at entry {}, but a signed head at entry {} was seen: the data directory was rolled back or truncated",
                head.seq, known.seq
            ));
        }
        let entry = stored_entry(store, known.seq)?;
        if entry.hash != known.hash {
            return Err(format!(
                "entry {} is not the one the newest signed head seen names: the log was rewritten",
                known.seq
            ));
        }
    }
    let (mut seq, mut prev) = (0u64, hex::encode(GENESIS_HASH));
    if let Some(signed) = newest_signature(store).map_err(|e| e.to_string())? {
        let entry = stored_entry(store, signed.seq)?;
        let hash = entry.compute_hash();
        let signature = hex::decode(&signed.signature).unwrap_or_default();
        if entry.hash != hex::encode(hash)
            || signed.hash != entry.hash
            || verify_signature(
                public_key,
                &Checkpoint::signed_message(signed.seq, &hash, &signed.time),
                &signature,
            )
            .is_err()
        {
            return Err(format!(
                "the newest signature (entry {}) does not verify over the stored entry",
                signed.seq
            ));
        }
        (seq, prev) = (signed.seq, entry.hash);
    }
    while seq < head.seq {
        let batch = store
            .scan(ENTRY_PREFIX, Some(&entry_key(seq)), SCAN_BATCH)
            .map_err(|e| e.to_string())?;
        if batch.is_empty() {
            break;
        }
        for (_, bytes) in batch {
            let entry = AuditEntry::from_stored(&bytes)
                .ok_or_else(|| format!("entry {} does not parse", seq + 1))?;
            if entry.seq != seq + 1
                || entry.prev_hash != prev
                || entry.hash != hex::encode(entry.compute_hash())
            {
                return Err(format!(
                    "entry {} does not chain on from the newest signature",
                    seq + 1
                ));
            }
            if !WRITTEN_WHILE_SEALED.contains(&entry.action.as_str()) {
                return Err(format!(
                    "entry {} ({}) is not covered by a signature, and only seal and unseal entries are ever written unsigned",
                    entry.seq, entry.action
                ));
            }
            (seq, prev) = (entry.seq, entry.hash);
        }
    }
    if seq != head.seq || prev != head.hash {
        return Err(format!(
            "the head record (entry {}) does not name the last entry",
            head.seq
        ));
    }
    Ok(())
}

fn stored_entry(store: &dyn Store, seq: u64) -> Result<AuditEntry, String> {
    let bytes = store
        .get(&entry_key(seq))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("entry {seq} is missing"))?;
    AuditEntry::from_stored(&bytes).ok_or_else(|| format!("entry {seq} does not parse"))
}

/// The head record: the last entry's seq and hash, as the writer left them.
pub(crate) fn stored_head(store: &dyn Store) -> Result<Option<(u64, String)>, AuditError> {
    store
        .get(HEAD_KEY)?
        .map(|bytes| {
            serde_json::from_slice::<Head>(&bytes)
                .map(|h| (h.seq, h.hash))
                .map_err(|_| AuditError::Corrupt("head record"))
        })
        .transpose()
}

fn latest_checkpoint(store: &dyn Store) -> Result<Option<Checkpoint>, AuditError> {
    let all = store.scan_prefix(CHECKPOINT_PREFIX)?;
    all.last()
        .map(|(_, bytes)| {
            serde_json::from_slice(bytes).map_err(|_| AuditError::Corrupt("checkpoint"))
        })
        .transpose()
}

/// Every entry and checkpoint of a store in chain order (a checkpoint right
/// after the entry it covers), read in batches. A record that does not parse
/// comes out as an error and ends the iteration.
///
/// Other nodes (or this one) keep committing rounds while the walk runs,
/// each statement seeing a newer log. So the head record is read first,
/// then the signed head, then the checkpoints, and the walk stops at the
/// head, or at the signed head when that is newer (its entries were
/// committed before it was read): one prefix of the log that every
/// signature read covers, never a mix of old signatures and newer
/// entries, which would look like unsigned entries or a head naming
/// missing ones.
pub(crate) struct StoredLines<'a> {
    store: &'a dyn Store,
    after: Option<Vec<u8>>,
    queue: VecDeque<Result<ExportLine, String>>,
    checkpoints: std::iter::Peekable<std::vec::IntoIter<Checkpoint>>,
    entries_done: bool,
    /// The head record as read before anything else (`None`: there is none).
    head: Option<(u64, String)>,
    /// The last entry the walk reads (every entry when there is no head
    /// record, so that entries without one are still found).
    bound: u64,
    /// The hash of the entry at the head's seq, as the walk found it.
    head_entry_hash: Option<String>,
    /// Whether the walk saw an entry past `bound`.
    past_bound: bool,
}

impl<'a> StoredLines<'a> {
    pub(crate) fn new(store: &'a dyn Store) -> Self {
        let mut queue = VecDeque::new();
        let head = stored_head(store).unwrap_or_else(|e| {
            queue.push_back(Err(e.to_string()));
            None
        });
        // The signed head, read after the head record: it is at least as
        // new (both are written in one transaction), unless the log ends
        // with entries written while sealed.
        let signed: Option<Checkpoint> = match store
            .get(SIGNED_KEY)
            .map(|v| v.map(|b| serde_json::from_slice(&b)))
        {
            Ok(None) => None,
            Ok(Some(Ok(signed))) => Some(signed),
            Ok(Some(Err(_))) => {
                queue.push_back(Err("the signed head record does not parse".to_owned()));
                None
            }
            Err(e) => {
                queue.push_back(Err(e.to_string()));
                None
            }
        };
        let bound = match &head {
            Some((seq, _)) => (*seq).max(signed.as_ref().map_or(0, |s| s.seq)),
            None => u64::MAX,
        };
        // Read last, so every checkpoint up to `bound` is there.
        let mut checkpoints = match store.scan_prefix(CHECKPOINT_PREFIX) {
            Ok(all) => all
                .iter()
                .map(|(_, b)| serde_json::from_slice(b))
                .collect::<Result<Vec<Checkpoint>, _>>()
                .unwrap_or_else(|_| {
                    queue.push_back(Err("a checkpoint record does not parse".to_owned()));
                    Vec::new()
                }),
            Err(e) => {
                queue.push_back(Err(e.to_string()));
                Vec::new()
            }
        };
        checkpoints.retain(|c| c.seq <= bound);
        // The signed head, unless a checkpoint at its seq says as much.
        if let Some(signed) = signed
            && let Err(at) = checkpoints.binary_search_by_key(&signed.seq, |c| c.seq)
        {
            checkpoints.insert(at, signed);
        }
        let entries_done = !queue.is_empty();
        Self {
            store,
            after: None,
            queue,
            checkpoints: checkpoints.into_iter().peekable(),
            entries_done,
            head,
            bound,
            head_entry_hash: None,
            past_bound: false,
        }
    }

    /// After the walk verified every entry up to `last`: whether the head
    /// record agrees, as `(first bad seq, problem)` when it does not. The
    /// head must name an entry the walk found, by its hash; an entry past
    /// the head read first must be one the head has moved on to since
    /// (committed during the walk), not one written beside it.
    pub(crate) fn head_agrees(&self, last: u64) -> Result<(), (u64, String)> {
        const NOT_LAST: &str = "the head record does not name the last entry";
        let head_seq = self.head.as_ref().map_or(0, |(seq, _)| *seq);
        if last < head_seq {
            return Err((
                last + 1,
                "entries the head record names are missing".to_owned(),
            ));
        }
        if let Some((seq, hash)) = &self.head
            && self.head_entry_hash.as_ref() != Some(hash)
        {
            return Err((*seq, NOT_LAST.to_owned()));
        }
        let newest_present = if self.past_bound { last + 1 } else { last };
        if newest_present > head_seq {
            match stored_head(self.store) {
                Ok(Some((now, _))) if now >= newest_present => {}
                Ok(_) => return Err((last, NOT_LAST.to_owned())),
                Err(e) => return Err((last + 1, e.to_string())),
            }
        }
        Ok(())
    }

    fn fetch(&mut self) {
        let batch = match self
            .store
            .scan(ENTRY_PREFIX, self.after.as_deref(), SCAN_BATCH)
        {
            Ok(batch) => batch,
            Err(e) => {
                self.queue.push_back(Err(e.to_string()));
                self.entries_done = true;
                return;
            }
        };
        self.entries_done = batch.len() < SCAN_BATCH;
        for (key, bytes) in batch {
            self.after = Some(key);
            let Some(entry) = AuditEntry::from_stored(&bytes) else {
                self.queue
                    .push_back(Err("an entry record does not parse".to_owned()));
                self.entries_done = true;
                return;
            };
            if entry.seq > self.bound {
                self.past_bound = true;
                self.entries_done = true;
                return;
            }
            if let Some((seq, _)) = &self.head
                && *seq == entry.seq
            {
                self.head_entry_hash = Some(entry.hash.clone());
            }
            while let Some(c) = self.checkpoints.next_if(|c| c.seq < entry.seq) {
                self.queue.push_back(Ok(ExportLine::Checkpoint(c)));
            }
            let seq = entry.seq;
            self.queue.push_back(Ok(ExportLine::Entry(entry)));
            if let Some(c) = self.checkpoints.next_if(|c| c.seq == seq) {
                self.queue.push_back(Ok(ExportLine::Checkpoint(c)));
            }
        }
    }
}

impl Iterator for StoredLines<'_> {
    type Item = Result<ExportLine, String>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.queue.is_empty() && !self.entries_done {
            self.fetch();
        }
        match self.queue.pop_front() {
            Some(Err(e)) => {
                self.queue.clear();
                self.entries_done = true;
                self.checkpoints = Vec::new().into_iter().peekable();
                Some(Err(e))
            }
            Some(line) => Some(line),
            // Checkpoints past the last entry still have to be checked.
            None => self
                .checkpoints
                .next()
                .map(|c| Ok(ExportLine::Checkpoint(c))),
        }
    }
}

/// Writes the whole log as JSONL. The export must end with a signature
/// over its last entry (the signed head is one); when the stored log ends
/// with seal or unseal entries written while sealed, this refuses rather
/// than write an export that could not be told from a truncated one. An
/// empty log is refused: there is nothing to export.
pub fn export_store(store: &dyn Store, out: &mut dyn Write) -> Result<u64, String> {
    let mut last: Option<ExportLine> = None;
    let mut signed_to = 0u64;
    let mut lines = 0u64;
    for line in StoredLines::new(store) {
        let line = line?;
        let text = serde_json::to_string(&line).map_err(|e| e.to_string())?;
        writeln!(out, "{text}").map_err(|e| e.to_string())?;
        lines += 1;
        if let ExportLine::Checkpoint(c) = &line {
            signed_to = signed_to.max(c.seq);
        }
        last = Some(line);
    }
    match last {
        None => Err("the audit log is empty: there is nothing to export".into()),
        Some(ExportLine::Checkpoint(_)) => Ok(lines),
        Some(ExportLine::Entry(_)) => Err(format!(
            "entries after seq {signed_to} were written while the vault was sealed and are not signed yet; unseal the vault once (and stop it), then export"
        )),
    }
}
