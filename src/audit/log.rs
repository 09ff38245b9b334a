//! Appending to, reading and exporting the chain in the store.
//!
//! Keys: `au/e/<seq u64 BE>` → entry JSON, `au/c/<seq u64 BE>` → checkpoint
//! JSON, `au/head` → `{"seq":…,"hash":…}`.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::entry::GENESIS_HASH;
use super::{AuditEntry, AuditEvent, Checkpoint, ExportLine};
use crate::clock::{Clock, rfc3339};
use crate::keyring::Keyring;
use crate::store::{Store, StoreError, Transaction, Write as StoreWrite};

const ENTRY_PREFIX: &[u8] = b"au/e/";
const CHECKPOINT_PREFIX: &[u8] = b"au/c/";
const HEAD_KEY: &[u8] = b"au/head";
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
}

impl From<StoreError> for AuditError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self::Conflict,
            StoreError::Backend(why) => Self::Unavailable(why),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
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
            let Ok(t) = time::OffsetDateTime::parse(
                &entry.time,
                &time::format_description::well_known::Rfc3339,
            ) else {
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
    flushes: Option<std::sync::mpsc::Sender<Applied>>,
    flusher: Option<std::thread::JoinHandle<()>>,
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

/// A round's callers with their outcomes, applied but not yet durable.
type Applied = Vec<(Reply, Outcome)>;

/// The flusher thread: makes applied rounds durable, then answers their
/// callers. Rounds that arrive during a flush share the next one.
fn flush_rounds(store: Arc<dyn Store>, rounds: std::sync::mpsc::Receiver<Applied>) {
    while let Ok(first) = rounds.recv() {
        let mut waiting = first;
        for more in rounds.try_iter() {
            waiting.extend(more);
        }
        answer_after_flush(store.as_ref(), waiting);
    }
}

/// Flushes (when anything was written) and answers every caller; a failed
/// flush fails every write it should have made durable.
fn answer_after_flush(store: &dyn Store, applied: Applied) {
    let flushed = if applied.iter().any(|(_, outcome)| outcome.is_ok()) {
        store.flush().map_err(AuditError::from)
    } else {
        Ok(())
    };
    for (reply, outcome) in applied {
        reply.send(match (&flushed, outcome) {
            (Err(e), Ok(_)) => Err(e.clone()),
            (_, outcome) => outcome,
        });
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
        let flusher = {
            let store = Arc::clone(&store);
            std::thread::Builder::new()
                .name("audit-flush".into())
                .spawn(move || flush_rounds(store, rounds))
                .map_err(|e| tracing::error!(error = %e, "no flusher thread; flushing inline"))
                .ok()
        };
        Self(Arc::new(Inner {
            store,
            keyring,
            clock,
            checkpoint_every: checkpoint_every.max(1),
            append: Mutex::new(()),
            queue: Mutex::new(Queue::default()),
            flushes: flusher.is_some().then_some(flushes),
            flusher,
        }))
    }

    /// A stand-in for a sensitive value (an attempted username, a searched
    /// national id): HMAC-SHA256 under the audit key, so equal values can be
    /// correlated without being revealed. `None` while sealed.
    pub fn fingerprint(&self, value: &str) -> Option<String> {
        let keys = self.0.keyring.keys().ok()?;
        let tag = keys.audit_hmac_key().sign(value.as_bytes());
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

    /// Verifies the whole chain and every checkpoint under this vault's
    /// audit key. A live log's tail after its last checkpoint is not a
    /// fault. Needs the vault unsealed; reads the whole log (blocking).
    pub fn verify(&self) -> Result<super::Verification, crate::keyring::KeyringError> {
        let public_key = self.0.keyring.keys()?.audit_signing_key()?.public_key();
        Ok(super::verify_store(
            self.0.store.as_ref(),
            &public_key,
            false,
        ))
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
            let outcomes = {
                let _append = self.0.append.lock().unwrap_or_else(PoisonError::into_inner);
                self.apply_round(&jobs)
                    .unwrap_or_else(|e| jobs.iter().map(|_| Err(e.clone())).collect())
            };
            let applied: Applied = jobs
                .into_iter()
                .map(|job| job.reply)
                .zip(outcomes)
                .collect();
            // Pipelined: the flusher makes this round durable while the
            // next one is applied. Should it be gone, flush here.
            let unsent = match &self.0.flushes {
                Some(flushes) => flushes.send(applied).err().map(|e| e.0),
                None => Some(applied),
            };
            if let Some(applied) = unsent {
                answer_after_flush(self.0.store.as_ref(), applied);
            }
        }
    }

    /// Checks, chains and applies (not yet durably) the jobs of one round.
    ///
    /// Each job's preconditions are checked against the store as the jobs
    /// before it in the round leave it; the combined transaction repeats
    /// the checks it made against the store, so a write from outside the
    /// log in between makes it fail as a whole, and the round is worked out
    /// again from the new state.
    fn apply_round(&self, jobs: &[Job]) -> Result<Vec<Outcome>, AuditError> {
        const ATTEMPTS: usize = 8;
        for _ in 0..ATTEMPTS {
            let (head_bytes, head) = self.head()?;
            let mut seen = Seen::new();
            let mut read = Transaction::new().expect(HEAD_KEY, head_bytes);
            let mut writes = Transaction::new();
            let mut outcomes = Vec::with_capacity(jobs.len());
            let (mut seq, mut prev_hash) = (head.seq, head.hash);
            let time = rfc3339(self.0.clock.now());
            for job in jobs {
                if !self.preconditions_hold(job, &mut seen, &mut read)? {
                    outcomes.push(Err(AuditError::Conflict));
                    continue;
                }
                let mut entries = Vec::with_capacity(job.batch.len());
                for (event, change) in &job.batch {
                    seq += 1;
                    let (entry, hash) = AuditEntry::chained(seq, &time, event.clone(), prev_hash);
                    prev_hash = entry.hash.clone();
                    writes = writes.put(entry_key(seq), encode(&entry)?);
                    if seq.is_multiple_of(self.0.checkpoint_every)
                        && let Some(checkpoint) = self.sign(seq, &hash)
                    {
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
            if outcomes.iter().all(Result::is_err) {
                return Ok(outcomes);
            }
            let new_head = Head {
                seq,
                hash: prev_hash,
            };
            match self
                .0
                .store
                .apply(read.merge(writes).put(HEAD_KEY, encode(&new_head)?))
            {
                Ok(()) => return Ok(outcomes),
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AuditError::Unavailable(
            "the store kept changing under the audit log".into(),
        ))
    }

    /// Whether every precondition of `job` holds in the state `seen` (the
    /// round's writes so far) over the store. Values read from the store are
    /// added to `seen` and, as preconditions, to `read`.
    fn preconditions_hold<'j>(
        &self,
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
                        let value = self.0.store.get(key)?;
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

    fn head(&self) -> Result<(Option<Vec<u8>>, Head), AuditError> {
        match self.0.store.get(HEAD_KEY)? {
            None => Ok((
                None,
                Head {
                    seq: 0,
                    hash: hex::encode(GENESIS_HASH),
                },
            )),
            Some(bytes) => {
                let head: Head = serde_json::from_slice(&bytes)
                    .map_err(|_| AuditError::Corrupt("head record"))?;
                Ok((Some(bytes), head))
            }
        }
    }

    fn sign(&self, seq: u64, hash: &[u8; 32]) -> Option<Checkpoint> {
        let signer = self.0.keyring.keys().ok()?.audit_signing_key().ok()?;
        let time = rfc3339(self.0.clock.now());
        let signature = signer.sign(&Checkpoint::signed_message(seq, hash, &time));
        Some(Checkpoint {
            seq,
            hash: hex::encode(hash),
            time,
            signature: hex::encode(signature),
        })
    }

    /// Signs the current head unless a checkpoint already covers it. Called
    /// on unseal (covering whatever a crash left unsigned), on seal and on
    /// shutdown. `None` when sealed or when the log is empty.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        let _append = self.0.append.lock().unwrap_or_else(PoisonError::into_inner);
        let (_, head) = self.head()?;
        if head.seq == 0 || self.0.store.get(&checkpoint_key(head.seq))?.is_some() {
            return Ok(None);
        }
        let hash: [u8; 32] = hex::decode(&head.hash)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or(AuditError::Corrupt("head hash"))?;
        let Some(checkpoint) = self.sign(head.seq, &hash) else {
            return Ok(None);
        };
        self.0
            .store
            .put(&checkpoint_key(head.seq), &encode(&checkpoint)?)?;
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
                let entry: AuditEntry =
                    serde_json::from_slice(&bytes).map_err(|_| AuditError::Corrupt("entry"))?;
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
pub(crate) struct StoredLines<'a> {
    store: &'a dyn Store,
    after: Option<Vec<u8>>,
    queue: VecDeque<Result<ExportLine, String>>,
    checkpoints: std::iter::Peekable<std::vec::IntoIter<Checkpoint>>,
    entries_done: bool,
}

impl<'a> StoredLines<'a> {
    pub(crate) fn new(store: &'a dyn Store) -> Self {
        let mut queue = VecDeque::new();
        let checkpoints = match store.scan_prefix(CHECKPOINT_PREFIX) {
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
        let entries_done = !queue.is_empty();
        Self {
            store,
            after: None,
            queue,
            checkpoints: checkpoints.into_iter().peekable(),
            entries_done,
        }
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
            let Ok(entry) = serde_json::from_slice::<AuditEntry>(&bytes) else {
                self.queue
                    .push_back(Err("an entry record does not parse".to_owned()));
                self.entries_done = true;
                return;
            };
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

/// Writes the whole log as JSONL. The export must end with a checkpoint
/// over its last entry; when the stored log's tail is not yet signed
/// (the server was not stopped cleanly), this refuses rather than write an
/// export that could not be told from a truncated one.
pub fn export_store(store: &dyn Store, out: &mut dyn Write) -> Result<u64, String> {
    let mut last: Option<ExportLine> = None;
    let mut lines = 0u64;
    for line in StoredLines::new(store) {
        let line = line?;
        let text = serde_json::to_string(&line).map_err(|e| e.to_string())?;
        writeln!(out, "{text}").map_err(|e| e.to_string())?;
        lines += 1;
        last = Some(line);
    }
    match last {
        None => Ok(0),
        Some(ExportLine::Checkpoint(_)) => Ok(lines),
        Some(ExportLine::Entry(entry)) => Err(format!(
            "entries after seq {} are not covered by a checkpoint yet; unseal and stop the server (or seal it) first",
            entry.seq.saturating_sub(1)
        )),
    }
}
