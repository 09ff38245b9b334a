//! One sliding-window counter for every limit the API keeps: unseal
//! failures, reveals and PAN / national-id searches per officer, collect
//! requests per publishable key and per client address (all in the store,
//! so every node sharing it counts against one window), and the per-node
//! counters that only bound what one node writes to its log or warns about:
//! audited lock refusals, audited certificate refusals, search misses.
//!
//! A limit is a reservation: [`SlidingWindow::take`] checks and counts in
//! one step, before the work it limits. For a window in the store that step
//! is a transaction whose precondition is the value it read (retried when
//! another request, on this node or another, counted first), so however
//! the requests spread over the nodes, no more than the limit are granted.
//!
//! Stored windows live under `lim/<name>/<SHA-256 hex of name and key>`:
//! never a username or a client address in a store key. The value is the
//! events in the window, oldest first, 8 bytes each (Unix nanoseconds,
//! big-endian). It is not authenticated: a writer of the database who
//! lowers a count could as well delete it, which no MAC can detect, and a
//! window lives at most an hour. Limit writes are applied without waiting
//! for the flush on an embedded store: the in-memory windows they replace
//! were lost on every restart, and a later durable write (the request's
//! audit entry) makes them durable too; a shared store's `apply` is
//! durable anyway. Idle windows are swept away now and then, each delete
//! with the precondition that the window is still what the sweep read.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use time::{Duration, OffsetDateTime};

use crate::store::{Store, StoreError, Transaction};

/// At most `limit` events per key in any `window`.
pub struct SlidingWindow {
    limit: usize,
    window: Duration,
    place: Place,
}

impl std::fmt::Debug for SlidingWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlidingWindow")
            .field("limit", &self.limit)
            .field("window", &self.window)
            .field(
                "place",
                &match &self.place {
                    Place::Node(_) => "node".to_owned(),
                    Place::Store(s) => String::from_utf8_lossy(&s.prefix).into_owned(),
                },
            )
            .finish()
    }
}

/// Where a window's events are kept.
enum Place {
    /// This process's memory: the window counts this node's events only.
    Node(Mutex<HashMap<String, VecDeque<OffsetDateTime>>>),
    /// The store: every node sharing it counts in one window.
    Store(Stored),
}

struct Stored {
    store: Arc<dyn Store>,
    /// `lim/<name>/`.
    prefix: Vec<u8>,
    /// Writes since the last sweep of idle windows.
    writes: AtomicU64,
    /// Where the next sweep starts (the sweeps walk the windows in turn).
    sweep_after: Mutex<Option<Vec<u8>>>,
}

/// Keys kept in memory before idle ones are dropped.
const MAX_KEYS: usize = 10_000;
/// Where stored windows live.
pub const LIMIT_PREFIX: &str = "lim/";
/// Tries of a stored reservation when other requests keep counting first;
/// past them the request is refused (never granted without a reservation).
const TRIES: usize = 32;
/// Events kept in a stored window that only counts ([`SlidingWindow::record`]
/// beyond the limit): the oldest go first.
const MAX_STORED_EVENTS: usize = 4096;
/// A sweep of idle stored windows every this many writes...
const SWEEP_EVERY: u64 = 256;
/// ...looking at this many windows.
const SWEEP_PAGE: usize = 512;

/// The stored form of a window's events.
fn encode(times: &VecDeque<OffsetDateTime>) -> Vec<u8> {
    let mut out = Vec::with_capacity(times.len() * 8);
    for t in times {
        let nanos = i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX);
        out.extend_from_slice(&nanos.to_be_bytes());
    }
    out
}

/// A stored window read back; a value that is not one is an error, not an
/// empty window.
fn decode(bytes: &[u8]) -> Result<VecDeque<OffsetDateTime>, StoreError> {
    let corrupt = || StoreError::Backend("a stored limit window is malformed".to_owned());
    let chunks = bytes.chunks_exact(8);
    if !chunks.remainder().is_empty() {
        return Err(corrupt());
    }
    chunks
        .map(|c| {
            let nanos = i64::from_be_bytes(<[u8; 8]>::try_from(c).map_err(|_| corrupt())?);
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).map_err(|_| corrupt())
        })
        .collect()
}

impl SlidingWindow {
    /// A window in this process's memory: each node counts its own events.
    pub fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit: limit.max(1),
            window,
            place: Place::Node(Mutex::new(HashMap::new())),
        }
    }

    /// A window in `store` under `lim/<name>/`: every node sharing the
    /// store counts in it.
    pub fn shared(name: &str, limit: usize, window: Duration, store: Arc<dyn Store>) -> Self {
        Self {
            limit: limit.max(1),
            window,
            place: Place::Store(Stored {
                store,
                prefix: format!("{LIMIT_PREFIX}{name}/").into_bytes(),
                writes: AtomicU64::new(0),
                sweep_after: Mutex::new(None),
            }),
        }
    }

    /// Drops the `times` that left the window.
    fn prune(&self, times: &mut VecDeque<OffsetDateTime>, now: OffsetDateTime) {
        while times.front().is_some_and(|t| now - *t >= self.window) {
            times.pop_front();
        }
    }

    /// Seconds to wait if `times` fill the window.
    fn full_for(&self, times: &mut VecDeque<OffsetDateTime>, now: OffsetDateTime) -> Option<u64> {
        self.prune(times, now);
        if times.len() < self.limit {
            return None;
        }
        let oldest = times.front().copied().unwrap_or(now);
        let wait = (oldest + self.window - now).whole_seconds();
        Some(u64::try_from(wait).unwrap_or(0).max(1))
    }

    /// The events of `key`, making room for a new key by dropping idle
    /// ones when the map is full.
    fn events<'a>(
        &self,
        seen: &'a mut HashMap<String, VecDeque<OffsetDateTime>>,
        key: &str,
        now: OffsetDateTime,
    ) -> &'a mut VecDeque<OffsetDateTime> {
        if seen.len() >= MAX_KEYS && !seen.contains_key(key) {
            let window = self.window;
            seen.retain(|_, times| times.back().is_some_and(|t| now - *t < window));
        }
        seen.entry(key.to_owned()).or_default()
    }

    /// Counts one event for `key`, whatever the limit (for counters that
    /// only watch, like search misses); how many `key` has in the window now.
    pub fn record(&self, key: &str, now: OffsetDateTime) -> Result<usize, StoreError> {
        match &self.place {
            Place::Node(seen) => {
                let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                let times = self.events(&mut seen, key, now);
                self.prune(times, now);
                times.push_back(now);
                Ok(times.len())
            }
            Place::Store(stored) => self
                .change_stored(stored, key, now, |times| {
                    self.prune(times, now);
                    times.push_back(now);
                    while times.len() > MAX_STORED_EVENTS.max(self.limit) {
                        times.pop_front();
                    }
                    Some(times.len())
                })?
                .ok_or(StoreError::Conflict),
        }
    }

    /// Reserves one event for `key` if its window has room; otherwise
    /// `Ok(Err(seconds to wait))`. The check and the count are one step (a
    /// critical section in memory, a transaction with a precondition in the
    /// store), so concurrent callers can never take more than the limit
    /// between them. A store that fails is an error; one too contended to
    /// count is a refusal: nothing is granted without a reservation.
    pub fn take(&self, key: &str, now: OffsetDateTime) -> Result<Result<(), u64>, StoreError> {
        match &self.place {
            Place::Node(seen) => {
                let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                let times = self.events(&mut seen, key, now);
                if let Some(wait) = self.full_for(times, now) {
                    return Ok(Err(wait));
                }
                times.push_back(now);
                Ok(Ok(()))
            }
            Place::Store(stored) => {
                let mut refused = None;
                let changed = self.change_stored(stored, key, now, |times| {
                    if let Some(wait) = self.full_for(times, now) {
                        refused = Some(wait);
                        return None;
                    }
                    times.push_back(now);
                    Some(())
                });
                match changed {
                    Ok(Some(())) => Ok(Ok(())),
                    Ok(None) => Ok(Err(refused.unwrap_or(1))),
                    Err(StoreError::Conflict) => Ok(Err(1)),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Gives back an event [`SlidingWindow::take`] reserved for `key` at
    /// `at`, for an attempt that turned out not to count (a successful
    /// unseal is not a failure).
    pub fn give_back(&self, key: &str, at: OffsetDateTime) -> Result<(), StoreError> {
        match &self.place {
            Place::Node(seen) => {
                let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(times) = seen.get_mut(key)
                    && let Some(i) = times.iter().rposition(|t| *t == at)
                {
                    times.remove(i);
                }
                Ok(())
            }
            Place::Store(stored) => {
                // Stored to the nanosecond: compare what a round trip keeps.
                let at = decode(&encode(&VecDeque::from([at])))?
                    .front()
                    .copied()
                    .unwrap_or(at);
                self.change_stored(stored, key, at, |times| {
                    let i = times.iter().rposition(|t| *t == at)?;
                    times.remove(i);
                    Some(())
                })
                .map(|_| ())
            }
        }
    }

    /// The store key of `key`'s window: a digest, never the key itself.
    fn stored_key(stored: &Stored, key: &str) -> Vec<u8> {
        let mut named = stored.prefix.clone();
        named.push(0);
        named.extend_from_slice(key.as_bytes());
        let mut out = stored.prefix.clone();
        out.extend_from_slice(hex::encode(crate::crypto::sha256(&named)).as_bytes());
        out
    }

    /// Reads `key`'s window, lets `change` edit it (`None`: nothing to
    /// write, returned as `Ok(None)`), and writes it back on the condition
    /// that it still holds what was read, retrying when another request
    /// changed it first. An empty window is deleted. `now` (the caller's
    /// clock) also tells the occasional sweep which windows are idle.
    fn change_stored<R>(
        &self,
        stored: &Stored,
        key: &str,
        now: OffsetDateTime,
        mut change: impl FnMut(&mut VecDeque<OffsetDateTime>) -> Option<R>,
    ) -> Result<Option<R>, StoreError> {
        let store_key = Self::stored_key(stored, key);
        for _ in 0..TRIES {
            let old = stored.store.get(&store_key)?;
            let mut times = old.as_deref().map(decode).transpose()?.unwrap_or_default();
            let Some(out) = change(&mut times) else {
                return Ok(None);
            };
            let tx = Transaction::new().expect(store_key.clone(), old);
            let tx = if times.is_empty() {
                tx.delete(store_key.clone())
            } else {
                tx.put(store_key.clone(), encode(&times))
            };
            match stored.store.apply(tx) {
                Ok(()) => {
                    self.maybe_sweep(stored, now);
                    return Ok(Some(out));
                }
                Err(StoreError::Conflict) => std::thread::yield_now(),
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict)
    }

    /// Every [`SWEEP_EVERY`] writes, deletes the idle windows among the next
    /// [`SWEEP_PAGE`] (those whose newest event left the window), each on
    /// the condition that it is still what the sweep read. A failed sweep
    /// changes nothing and is tried again later.
    fn maybe_sweep(&self, stored: &Stored, now: OffsetDateTime) {
        if !stored
            .writes
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            .is_multiple_of(SWEEP_EVERY)
        {
            return;
        }
        if let Err(e) = self.sweep(stored, now) {
            tracing::debug!(error = %e, "sweep of idle limit windows failed");
        }
    }

    /// Deletes idle windows among the next [`SWEEP_PAGE`]; how many.
    fn sweep(&self, stored: &Stored, now: OffsetDateTime) -> Result<usize, StoreError> {
        let after = stored
            .sweep_after
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let page = stored
            .store
            .scan(&stored.prefix, after.as_deref(), SWEEP_PAGE)?;
        let next = if page.len() < SWEEP_PAGE {
            None
        } else {
            page.last().map(|(k, _)| k.clone())
        };
        let mut tx = Transaction::new();
        let mut idle = 0;
        for (key, value) in page {
            let idle_now = decode(&value)
                .map(|times| times.back().is_none_or(|t| now - *t >= self.window))
                .unwrap_or(true);
            if idle_now {
                tx = tx.expect(key.clone(), Some(value)).delete(key);
                idle += 1;
            }
        }
        *stored
            .sweep_after
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = next;
        if idle > 0 {
            stored.store.apply(tx)?;
        }
        Ok(idle)
    }
}

/// Keys with work in progress, at most one piece of work per key: one
/// password check per username at a time.
///
/// Per node, by design: it only spares this node's hashing pool a queue of
/// checks for one name. The login lockout does not rest on it: each
/// attempt is counted in the store with a precondition on the count it
/// read *before* its password is checked (`access::lockout`), so however
/// attempts spread over the nodes, no more than the threshold are checked.
#[derive(Debug, Default)]
pub struct OneAtATime {
    busy: Mutex<HashSet<String>>,
}

impl OneAtATime {
    /// Marks `key` busy until the returned guard is dropped; `None` if it
    /// already is.
    pub fn begin(&self, key: &str) -> Option<Busy<'_>> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        busy.insert(key.to_owned()).then(|| Busy {
            owner: self,
            key: key.to_owned(),
        })
    }
}

/// `key` is busy while this lives.
#[derive(Debug)]
pub struct Busy<'a> {
    owner: &'a OneAtATime,
    key: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.owner
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::SledStore::open(dir.path()).unwrap());
        (dir, store)
    }

    /// The same window in memory and in a store.
    fn both(limit: usize, window: Duration) -> (tempfile::TempDir, [SlidingWindow; 2]) {
        let (dir, store) = store();
        (
            dir,
            [
                SlidingWindow::new(limit, window),
                SlidingWindow::shared("test", limit, window, store),
            ],
        )
    }

    #[test]
    fn opens_again_when_the_oldest_event_leaves_the_window() {
        let (_dir, limiters) = both(2, Duration::minutes(1));
        for limiter in limiters {
            let t0 = datetime!(2026-01-01 00:00 UTC);
            assert_eq!(limiter.take("k", t0).unwrap(), Ok(()));
            assert_eq!(
                limiter.take("k", t0 + Duration::seconds(10)).unwrap(),
                Ok(())
            );
            assert_eq!(
                limiter.take("k", t0 + Duration::seconds(20)).unwrap(),
                Err(40)
            );
            assert_eq!(
                limiter.take("other", t0 + Duration::seconds(20)).unwrap(),
                Ok(())
            );
            assert_eq!(
                limiter.take("k", t0 + Duration::seconds(61)).unwrap(),
                Ok(())
            );
            // `record` counts whatever the limit, and says how many are in
            // the window.
            assert_eq!(limiter.record("k", t0 + Duration::seconds(62)).unwrap(), 3);
            assert_eq!(limiter.record("k", t0 + Duration::seconds(75)).unwrap(), 3);
        }
    }

    #[test]
    fn take_counts_only_what_it_allows() {
        let (_dir, limiters) = both(1, Duration::hours(1));
        for limiter in limiters {
            let t0 = datetime!(2026-01-01 00:00 UTC);
            assert_eq!(limiter.take("a", t0).unwrap(), Ok(()));
            assert_eq!(
                limiter.take("a", t0 + Duration::minutes(30)).unwrap(),
                Err(1800)
            );
            assert_eq!(
                limiter.take("a", t0 + Duration::minutes(61)).unwrap(),
                Ok(())
            );
            // Given back: room again at once.
            limiter.give_back("a", t0 + Duration::minutes(61)).unwrap();
            assert_eq!(
                limiter.take("a", t0 + Duration::minutes(62)).unwrap(),
                Ok(())
            );
            assert_eq!(
                limiter.take("a", t0 + Duration::minutes(63)).unwrap(),
                Err(3540)
            );
        }
    }

    /// A stored window's store key is a digest: neither the key nor the
    /// limit's other keys can be read from it, and nothing else is kept.
    #[test]
    fn stored_windows_name_no_key_and_idle_ones_are_swept() {
        let (_dir, store) = store();
        let limiter = SlidingWindow::shared(
            "collect_address",
            5,
            Duration::minutes(1),
            Arc::clone(&store),
        );
        let t0 = datetime!(2026-01-01 00:00 UTC);
        for i in 0..10 {
            limiter
                .take(&format!("203.0.113.{i}"), t0)
                .unwrap()
                .unwrap();
        }
        let stored = store.scan_prefix(b"lim/").unwrap();
        assert_eq!(stored.len(), 10);
        for (key, value) in &stored {
            let key = String::from_utf8(key.clone()).unwrap();
            assert!(!key.contains("203.0.113"), "{key}");
            assert!(key.starts_with("lim/collect_address/"));
            assert_eq!(key.len(), "lim/collect_address/".len() + 64);
            assert_eq!(value.len(), 8);
        }
        // A minute later every one is idle; one more recent window stays.
        let later = t0 + Duration::seconds(90);
        limiter.take("198.51.100.1", later).unwrap().unwrap();
        let Place::Store(inner) = &limiter.place else {
            unreachable!()
        };
        assert_eq!(limiter.sweep(inner, later).unwrap(), 10);
        assert_eq!(store.scan_prefix(b"lim/").unwrap().len(), 1);
        // A window given back to empty is deleted at once.
        limiter.give_back("198.51.100.1", later).unwrap();
        assert!(store.scan_prefix(b"lim/").unwrap().is_empty());
    }

    #[test]
    fn one_at_a_time_per_key_until_the_guard_goes() {
        let keys = OneAtATime::default();
        let first = keys.begin("alice").unwrap();
        assert!(keys.begin("alice").is_none());
        assert!(keys.begin("bob").is_some());
        drop(first);
        assert!(keys.begin("alice").is_some());
    }

    /// Two threads taking from one key at the same moment, again and again
    /// (each time a key with room for one): never both granted. Keys are
    /// reused once their window has passed, so the map stays small.
    #[test]
    fn take_never_grants_more_than_the_limit_under_contention() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        const ROUNDS: usize = 20_000;
        let limiter = SlidingWindow::new(1, Duration::hours(1));
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let arrived = AtomicUsize::new(0);
        let granted = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for round in 0..ROUNDS {
                        // Meet the other thread before each take.
                        arrived.fetch_add(1, SeqCst);
                        while arrived.load(SeqCst) < 2 * (round + 1) {
                            std::hint::spin_loop();
                        }
                        let key = (round % 1000).to_string();
                        let hours = i64::try_from(round / 1000).unwrap() * 2;
                        if limiter
                            .take(&key, t0 + Duration::hours(hours))
                            .unwrap()
                            .is_ok()
                        {
                            granted.fetch_add(1, SeqCst);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.into_inner(), ROUNDS, "a key was granted twice");
    }

    /// Three "nodes" (each its own window over one store) and 48 threads
    /// taking from one key at once: exactly the limit is granted in all,
    /// and the stored window holds exactly that many events.
    #[test]
    fn nodes_sharing_a_store_never_grant_more_than_the_limit_together() {
        let (_dir, store) = store();
        let nodes: Vec<SlidingWindow> = (0..3)
            .map(|_| SlidingWindow::shared("reveals", 10, Duration::hours(1), Arc::clone(&store)))
            .collect();
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let start = std::sync::Barrier::new(48);
        let granted: usize = std::thread::scope(|s| {
            let threads: Vec<_> = (0..48)
                .map(|i| {
                    let node = &nodes[i % 3];
                    let start = &start;
                    s.spawn(move || {
                        start.wait();
                        usize::from(node.take("officer", t0).unwrap().is_ok())
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        });
        assert_eq!(granted, 10);
        for node in &nodes {
            assert_eq!(node.take("officer", t0).unwrap(), Err(3600));
        }
        let stored = store.scan_prefix(b"lim/reveals/").unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].1.len(), 10 * 8);
    }
}
