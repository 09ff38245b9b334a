//! Subjects, retention and legal holds (docs/lifecycle.md, "Subjects,
//! retention, legal hold"): what is kept about a data subject's
//! relationship, when a record is due for erasure, and what stops an
//! erasure.
//!
//! Holds, closes and last-use times are security state: each is stored
//! authenticated with the keyring's state key, bound to its store key, so
//! one edited or moved on disk is an integrity error. No key names a
//! subject in clear: a subject is its blind-index digest
//! ([`crate::vault::Vault::subject_digest`]). This module decides nothing
//! about who may do what (that is `access`) and writes nothing itself:
//! every change is returned as a transaction for the caller to commit with
//! its audit entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::clock::Clock;
use crate::keyring::{Keyring, KeyringError};
use crate::records::RecordType;
use crate::store::{Store, StoreError, Transaction};
use crate::vault::RecordMeta;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

const HOLD_RECORD_PREFIX: &str = "hold/rec/";
const HOLD_SUBJECT_PREFIX: &str = "hold/sub/";
const CLOSE_PREFIX: &str = "close/";
const LAST_USE_PREFIX: &str = "lu/";

/// What a legal hold is placed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldTarget {
    /// One record, or one generic value (`gen_…`).
    Record(String),
    /// Every record of a subject, by its digest.
    Subject(String),
}

impl HoldTarget {
    /// The hold's store key.
    pub fn key(&self) -> String {
        match self {
            HoldTarget::Record(id) => format!("{HOLD_RECORD_PREFIX}{id}"),
            HoldTarget::Subject(digest) => format!("{HOLD_SUBJECT_PREFIX}{digest}"),
        }
    }
}

/// A legal hold as stored (authenticated, not secret: no subject in it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    /// The principal that placed it: never the one that releases it.
    pub placed_by: String,
    pub placed_at: i64,
    pub reason: String,
    pub ticket: String,
}

/// A hold and the bytes it was read from (a release's precondition).
pub struct StoredHold {
    pub hold: Hold,
    stored: Vec<u8>,
}

/// Why a release was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseError {
    /// No hold is placed there.
    NotHeld,
    /// The releasing principal placed it: four eyes are needed.
    OwnHold,
}

/// The end of a relationship, as the owner service signalled it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Closed {
    pub closed_at: i64,
    pub closed_by: String,
}

/// The last time one of a record's tokens was used, coarse (see
/// [`Lifecycle::note_use`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LastUse {
    at: i64,
}

/// What a retention period is counted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// The record's creation.
    Created,
    /// The last use of one of its tokens (detokenize, relay); its creation
    /// or last update when never used.
    LastUse,
    /// The end of the relationship (`POST /v1/subjects/{ref}/close` by the
    /// record's owner); never due while the relationship lasts.
    Close,
}

impl Anchor {
    fn as_str(self) -> &'static str {
        match self {
            Anchor::Created => "created",
            Anchor::LastUse => "last_use",
            Anchor::Close => "close",
        }
    }
}

/// One record type's retention: erase `period` after `anchor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionRule {
    pub period: Duration,
    pub anchor: Anchor,
    /// The period as written, in its unit (`400d`, `5y`), for the audit.
    amount: u32,
    unit: char,
}

impl RetentionRule {
    /// Parses `"<N><unit> after <anchor>"`: N from 1 to 100000; unit `h`
    /// (hours), `d` (days) or `y` (years of 365 days); anchor `created`,
    /// `last_use` or `close`. The message never repeats the text.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let mut words = text.split_whitespace();
        let (Some(period), Some("after"), Some(anchor), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err("must read \"<N><h|d|y> after <created|last_use|close>\"");
        };
        let anchor = match anchor {
            "created" => Anchor::Created,
            "last_use" => Anchor::LastUse,
            "close" => Anchor::Close,
            _ => return Err("the anchor must be created, last_use or close"),
        };
        let unit = period.chars().last().ok_or("the period is empty")?;
        let amount: u32 = period
            .get(..period.len().saturating_sub(unit.len_utf8()))
            .and_then(|n| n.parse().ok())
            .filter(|n| (1..=100_000).contains(n))
            .ok_or("the period must be a whole number from 1 to 100000 and a unit")?;
        let hours = match unit {
            'h' => 1,
            'd' => 24,
            'y' => 365 * 24,
            _ => return Err("the period's unit must be h, d or y"),
        };
        Ok(Self {
            period: Duration::hours(i64::from(amount) * hours),
            anchor,
            amount,
            unit,
        })
    }

    /// The rule as the audit names it: `card: 400d after last_use`.
    pub fn describe(&self, record_type: RecordType) -> String {
        format!(
            "{}: {}{} after {}",
            record_type.as_str(),
            self.amount,
            self.unit,
            self.anchor.as_str()
        )
    }
}

/// Retention per record type and the sweeper's pace (config
/// `[retention]`). No rule for a type: its records are never erased
/// automatically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    pub rules: Vec<(RecordType, RetentionRule)>,
    /// How often the sweeper runs, by the server's clock.
    pub sweep_interval: Duration,
}

/// The sweeper's default pace.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::hours(1);

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
        }
    }
}

impl RetentionSettings {
    pub fn rule(&self, record_type: RecordType) -> Option<&RetentionRule> {
        self.rules
            .iter()
            .find(|(t, _)| *t == record_type)
            .map(|(_, rule)| rule)
    }
}

use crate::clock::parse_rfc3339 as parse_time;

/// When `meta` is due under `rule`, given its last use and its owner's
/// close of its subject; `None`: not due while things stay as they are.
pub fn due_at(
    rule: &RetentionRule,
    meta: &RecordMeta,
    last_use: Option<OffsetDateTime>,
    closed: Option<&Closed>,
) -> Option<OffsetDateTime> {
    let from = match rule.anchor {
        Anchor::Created => parse_time(&meta.created_at)?,
        Anchor::LastUse => {
            let changed = parse_time(&meta.updated_at).or_else(|| parse_time(&meta.created_at))?;
            last_use.map_or(changed, |used| used.max(changed))
        }
        Anchor::Close => {
            let closed = closed?;
            let closed_at = OffsetDateTime::from_unix_timestamp(closed.closed_at).ok()?;
            // A record made after the close belongs to a relationship
            // begun again (a returning customer): that close is not its.
            // In whole seconds, as a close is kept (and as
            // `prepare_close` compares): a record made in the second of
            // the close is the close's.
            if parse_time(&meta.created_at)?.unix_timestamp() > closed.closed_at {
                return None;
            }
            closed_at
        }
    };
    from.checked_add(rule.period)
}

/// Records whose last use this node has written today, at most this many
/// (then forgotten at once: the next uses read the store again).
const LAST_USE_MEMO: usize = 100_000;
const DAY: i64 = 24 * 3600;

/// Holds, closes and last uses in the store.
pub struct Lifecycle {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    clock: Arc<dyn Clock>,
    /// Record id → the day (unix days) this node read its last use as
    /// written for, from the store: a use on the same day writes nothing.
    /// Never set by a write not yet committed (a commit that fails must
    /// leave the next use to write again).
    last_use_memo: Mutex<HashMap<String, i64>>,
}

impl Lifecycle {
    pub fn new(store: Arc<dyn Store>, keyring: Arc<Keyring>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            keyring,
            clock,
            last_use_memo: Mutex::new(HashMap::new()),
        }
    }

    fn open<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        bytes: &[u8],
    ) -> Result<T, LifecycleError> {
        Ok(self
            .keyring
            .keys()?
            .state_key()?
            .open_json(key.as_bytes(), bytes)?)
    }

    fn seal<T: Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>, LifecycleError> {
        Ok(self
            .keyring
            .keys()?
            .state_key()?
            .seal_json(key.as_bytes(), value)?)
    }

    /// The hold on `target`, if one is placed.
    pub fn hold(&self, target: &HoldTarget) -> Result<Option<StoredHold>, LifecycleError> {
        let key = target.key();
        match self.store.get(key.as_bytes())? {
            None => Ok(None),
            Some(stored) => Ok(Some(StoredHold {
                hold: self.open(&key, &stored)?,
                stored,
            })),
        }
    }

    /// The write that places a hold on `target`, on condition that none is
    /// placed there yet. `None`: one is.
    pub fn prepare_place(
        &self,
        target: &HoldTarget,
        placed_by: &str,
        reason: String,
        ticket: String,
    ) -> Result<Option<Transaction>, LifecycleError> {
        if self.hold(target)?.is_some() {
            return Ok(None);
        }
        let key = target.key();
        let hold = Hold {
            placed_by: placed_by.to_owned(),
            placed_at: self.clock.now().unix_timestamp(),
            reason,
            ticket,
        };
        Ok(Some(
            Transaction::new()
                .expect(key.clone(), None)
                .put(key.clone(), self.seal(&key, &hold)?),
        ))
    }

    /// The write that releases the hold on `target` by `releaser`, who must
    /// not be the one who placed it; on condition that it is still the
    /// hold as read.
    pub fn prepare_release(
        &self,
        target: &HoldTarget,
        releaser: &str,
    ) -> Result<Result<(Hold, Transaction), ReleaseError>, LifecycleError> {
        let Some(StoredHold { hold, stored }) = self.hold(target)? else {
            return Ok(Err(ReleaseError::NotHeld));
        };
        if hold.placed_by == releaser {
            return Ok(Err(ReleaseError::OwnHold));
        }
        let key = target.key();
        let tx = Transaction::new()
            .expect(key.clone(), Some(stored))
            .delete(key);
        Ok(Ok((hold, tx)))
    }

    /// The preconditions that no hold is placed on `id` (a record, or a
    /// generic value) nor on its subject (`subject_digest`), to commit
    /// with an erasure; `None` when one is. A hold placed after this read
    /// makes that commit fail, so an erasure racing a hold either sees it
    /// or is not written.
    pub fn erasure_guard(
        &self,
        id: &str,
        subject_digest: Option<&str>,
    ) -> Result<Option<Transaction>, LifecycleError> {
        let mut targets = vec![HoldTarget::Record(id.to_owned())];
        if let Some(digest) = subject_digest {
            targets.push(HoldTarget::Subject(digest.to_owned()));
        }
        let mut guard = Transaction::new();
        for target in targets {
            if self.hold(&target)?.is_some() {
                return Ok(None);
            }
            guard = guard.expect(target.key(), None);
        }
        Ok(Some(guard))
    }

    fn close_key(owner: &str, subject_digest: &str) -> String {
        format!("{CLOSE_PREFIX}{owner}/{subject_digest}")
    }

    /// When `owner` closed its relationship with the subject of
    /// `subject_digest`, if it did.
    pub fn closed(
        &self,
        owner: &str,
        subject_digest: &str,
    ) -> Result<Option<Closed>, LifecycleError> {
        let key = Self::close_key(owner, subject_digest);
        match self.store.get(key.as_bytes())? {
            None => Ok(None),
            Some(bytes) => Ok(Some(self.open(&key, &bytes)?)),
        }
    }

    /// The close of `owner`'s relationship with a subject, now. A close
    /// stands while the relationship stays closed (a second one answers it
    /// and writes nothing); once `owner` made a record of the subject after
    /// it (`newest_created`, unix time: the customer came back), the
    /// relationship was begun again and this close replaces it.
    pub fn prepare_close(
        &self,
        owner: &str,
        subject_digest: &str,
        newest_created: Option<i64>,
    ) -> Result<(Closed, Transaction), LifecycleError> {
        let key = Self::close_key(owner, subject_digest);
        let stored = self.store.get(key.as_bytes())?;
        if let Some(bytes) = &stored {
            let closed: Closed = self.open(&key, bytes)?;
            if newest_created.is_none_or(|created| created <= closed.closed_at) {
                return Ok((closed, Transaction::new()));
            }
        }
        let closed = Closed {
            closed_at: self.clock.now().unix_timestamp(),
            closed_by: owner.to_owned(),
        };
        let tx = Transaction::new()
            .expect(key.clone(), stored)
            .put(key.clone(), self.seal(&key, &closed)?);
        Ok((closed, tx))
    }

    /// The write that forgets `owner`'s close of a subject (its records of
    /// that subject are erased: nothing should say it had one).
    pub fn forget_close(owner: &str, subject_digest: &str) -> Transaction {
        Transaction::new().delete(Self::close_key(owner, subject_digest))
    }

    /// The last recorded use of one of record `id`'s tokens.
    pub fn last_use(&self, id: &str) -> Result<Option<OffsetDateTime>, LifecycleError> {
        let key = format!("{LAST_USE_PREFIX}{id}");
        match self.store.get(key.as_bytes())? {
            None => Ok(None),
            Some(bytes) => {
                let used: LastUse = self.open(&key, &bytes)?;
                Ok(OffsetDateTime::from_unix_timestamp(used.at).ok())
            }
        }
    }

    /// The write that records a use of record `id`'s token now, to commit
    /// with the use: at most one a day per record (and node, when two
    /// nodes' first uses of a day race). A use on a day this node saw
    /// written costs nothing (memory); any other costs a read, and a write
    /// only when the stored day is older. The memory is set from what the
    /// store holds, never from the write returned here: that write may
    /// fail to commit, and the next use must then write again. Coarse on
    /// purpose: retention counts in days, and a hot detokenize path must
    /// not write on every read.
    pub fn note_use(&self, id: &str) -> Result<Transaction, LifecycleError> {
        let now = self.clock.now().unix_timestamp();
        let today = now.div_euclid(DAY);
        {
            let memo = self
                .last_use_memo
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if memo.get(id) == Some(&today) {
                return Ok(Transaction::new());
            }
        }
        let stored_day = self
            .last_use(id)?
            .map(|t| t.unix_timestamp().div_euclid(DAY));
        if stored_day.is_none_or(|day| day < today) {
            let key = format!("{LAST_USE_PREFIX}{id}");
            let value = self.seal(&key, &LastUse { at: now })?;
            return Ok(Transaction::new().put(key, value));
        }
        let mut memo = self
            .last_use_memo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if memo.len() >= LAST_USE_MEMO {
            memo.clear();
        }
        memo.insert(id.to_owned(), today);
        Ok(Transaction::new())
    }

    /// The delete of record `id`'s last-use time, with its erasure (it
    /// says when the subject last paid).
    pub fn forget_use(id: &str) -> Transaction {
        Transaction::new().delete(format!("{LAST_USE_PREFIX}{id}"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn rules_parse_and_refuse_without_echoing() {
        let rule = RetentionRule::parse("400d after last_use").unwrap();
        assert_eq!(rule.period, Duration::days(400));
        assert_eq!(rule.anchor, Anchor::LastUse);
        assert_eq!(rule.describe(RecordType::Card), "card: 400d after last_use");
        let rule = RetentionRule::parse(" 5y  after close ").unwrap();
        assert_eq!(rule.period, Duration::days(5 * 365));
        assert_eq!(rule.anchor, Anchor::Close);
        assert_eq!(
            RetentionRule::parse("36h after created").unwrap().period,
            Duration::hours(36)
        );
        for bad in [
            "",
            "400d",
            "400d before last_use",
            "400 after created",
            "0d after created",
            "-3d after created",
            "400w after created",
            "400d after birth",
            "400d after created and more",
            "100001d after created",
            "é after created",
        ] {
            let e = RetentionRule::parse(bad).unwrap_err();
            assert!(bad.is_empty() || !e.contains(bad.trim()), "{bad}: {e}");
        }
    }

    fn meta(created: &str, updated: &str) -> RecordMeta {
        RecordMeta {
            id: "card_1".into(),
            record_type: RecordType::Card,
            version: 1,
            created_at: created.into(),
            updated_at: updated.into(),
            owner: "prn_1".into(),
            subject_ref: None,
            erased_at: None,
            index_keys: Vec::new(),
            token_keys: Vec::new(),
            stored: Default::default(),
            body: Default::default(),
        }
    }

    #[test]
    fn due_times_follow_their_anchor() {
        use time::macros::datetime;
        let m = meta("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z");
        let created = RetentionRule::parse("10d after created").unwrap();
        assert_eq!(
            due_at(&created, &m, None, None),
            Some(datetime!(2026-01-11 00:00 UTC))
        );
        let used = RetentionRule::parse("10d after last_use").unwrap();
        // Never used: from the last change.
        assert_eq!(
            due_at(&used, &m, None, None),
            Some(datetime!(2026-02-11 00:00 UTC))
        );
        assert_eq!(
            due_at(&used, &m, Some(datetime!(2026-03-01 00:00 UTC)), None),
            Some(datetime!(2026-03-11 00:00 UTC))
        );
        // A use older than the last change does not bring it forward.
        assert_eq!(
            due_at(&used, &m, Some(datetime!(2026-01-02 00:00 UTC)), None),
            Some(datetime!(2026-02-11 00:00 UTC))
        );
        let close = RetentionRule::parse("1y after close").unwrap();
        assert_eq!(due_at(&close, &m, None, None), None);
        let closed = Closed {
            closed_at: datetime!(2026-06-01 00:00 UTC).unix_timestamp(),
            closed_by: "prn_1".into(),
        };
        assert_eq!(
            due_at(&close, &m, None, Some(&closed)),
            Some(datetime!(2027-06-01 00:00 UTC))
        );
        // A record made after the close (the customer came back) is not
        // due by it (second review, M2).
        let returned = meta("2026-07-01T00:00:00Z", "2026-07-01T00:00:00Z");
        assert_eq!(due_at(&close, &returned, None, Some(&closed)), None);
        // A record made in the second of the close, stored with its
        // fraction, is the close's (third review, M1).
        let same_second = meta("2026-06-01T00:00:00.5Z", "2026-06-01T00:00:00.5Z");
        assert_eq!(
            due_at(&close, &same_second, None, Some(&closed)),
            Some(datetime!(2027-06-01 00:00 UTC))
        );
    }
}
