//! Appending to, reading and exporting the chain in the store.
//!
//! Keys: `au/e/<seq u64 BE>` → entry JSON, `au/c/<seq u64 BE>` → checkpoint
//! JSON, `au/head` → `{"seq":…,"hash":…}`.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::entry::GENESIS_HASH;
use super::{AuditEntry, AuditEvent, Checkpoint, ExportLine};
use crate::clock::{Clock, rfc3339};
use crate::keyring::Keyring;
use crate::store::{Store, StoreError, Transaction};

const ENTRY_PREFIX: &[u8] = b"au/e/";
const CHECKPOINT_PREFIX: &[u8] = b"au/c/";
const HEAD_KEY: &[u8] = b"au/head";
const SCAN_BATCH: usize = 1024;

/// Why an entry could not be written or read.
#[derive(Debug, thiserror::Error)]
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

/// The audit log of one vault.
pub struct AuditLog {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    clock: Arc<dyn Clock>,
    checkpoint_every: u64,
    /// Appends are serialised: each needs the previous hash.
    append: Mutex<()>,
}

impl AuditLog {
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        clock: Arc<dyn Clock>,
        checkpoint_every: u64,
    ) -> Self {
        Self {
            store,
            keyring,
            clock,
            checkpoint_every: checkpoint_every.max(1),
            append: Mutex::new(()),
        }
    }

    /// A stand-in for a sensitive value (an attempted username, a searched
    /// national id): HMAC-SHA256 under the audit key, so equal values can be
    /// correlated without being revealed. `None` while sealed.
    pub fn fingerprint(&self, value: &str) -> Option<String> {
        let keys = self.keyring.keys().ok()?;
        let tag = keys.audit_hmac_key().sign(value.as_bytes());
        Some(format!("hmac:{}", hex::encode(&tag.0[..16])))
    }

    fn head(&self) -> Result<(Option<Vec<u8>>, Head), AuditError> {
        match self.store.get(HEAD_KEY)? {
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

    /// Records several changes, each with its own entry, in one atomic and
    /// durable transaction: the bulk path.
    ///
    /// Entries are chained and applied under the append lock (each needs the
    /// previous hash); the wait for durability happens after the lock is
    /// released, so concurrent appenders share one flush (group commit).
    /// Nothing is acknowledged before that flush returns. A conflict is the
    /// change's own: only this process can open the store, and the lock
    /// serialises every appender, so the head cannot move underneath.
    pub fn record_many(
        &self,
        batch: Vec<(AuditEvent, Transaction)>,
    ) -> Result<Vec<AuditEntry>, AuditError> {
        let entries = {
            let _append = self.append.lock().unwrap_or_else(PoisonError::into_inner);
            let (head_bytes, head) = self.head()?;
            self.try_append(batch, head_bytes, head)?
        };
        self.store.flush()?;
        Ok(entries)
    }

    fn try_append(
        &self,
        batch: Vec<(AuditEvent, Transaction)>,
        head_bytes: Option<Vec<u8>>,
        head: Head,
    ) -> Result<Vec<AuditEntry>, AuditError> {
        let time = rfc3339(self.clock.now());
        let mut tx = Transaction::new().expect(HEAD_KEY, head_bytes);
        let mut entries = Vec::with_capacity(batch.len());
        let (mut seq, mut prev_hash) = (head.seq, head.hash);
        for (event, change) in batch {
            seq += 1;
            let mut entry = AuditEntry {
                seq,
                time: time.clone(),
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
            prev_hash = entry.hash.clone();
            tx = tx.merge(change).put(entry_key(seq), encode(&entry)?);
            if seq.is_multiple_of(self.checkpoint_every)
                && let Some(checkpoint) = self.sign(seq, &hash)
            {
                tx = tx.put(checkpoint_key(seq), encode(&checkpoint)?);
            }
            entries.push(entry);
        }
        let new_head = Head {
            seq,
            hash: prev_hash,
        };
        self.store.apply(tx.put(HEAD_KEY, encode(&new_head)?))?;
        Ok(entries)
    }

    fn sign(&self, seq: u64, hash: &[u8; 32]) -> Option<Checkpoint> {
        let signer = self.keyring.keys().ok()?.audit_signing_key().ok()?;
        let time = rfc3339(self.clock.now());
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
        let _append = self.append.lock().unwrap_or_else(PoisonError::into_inner);
        let (_, head) = self.head()?;
        if head.seq == 0 || self.store.get(&checkpoint_key(head.seq))?.is_some() {
            return Ok(None);
        }
        let hash: [u8; 32] = hex::decode(&head.hash)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or(AuditError::Corrupt("head hash"))?;
        let Some(checkpoint) = self.sign(head.seq, &hash) else {
            return Ok(None);
        };
        self.store
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
        latest_checkpoint(self.store.as_ref())
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
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
