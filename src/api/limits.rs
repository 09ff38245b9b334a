//! One sliding-window counter for every limit the API keeps in memory:
//! unseal failures, reveals and PAN / national-id searches per officer,
//! search misses per officer, audited lock refusals per username.
//!
//! A limit is a reservation: [`SlidingWindow::take`] checks and counts in
//! one critical section, before the work it limits.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};

use time::{Duration, OffsetDateTime};

/// At most `limit` events per key in any `window`.
#[derive(Debug)]
pub struct SlidingWindow {
    limit: usize,
    window: Duration,
    /// Each key's events in the window, oldest first.
    seen: Mutex<HashMap<String, VecDeque<OffsetDateTime>>>,
}

/// Keys kept before idle ones are dropped.
const MAX_KEYS: usize = 10_000;

impl SlidingWindow {
    pub fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit: limit.max(1),
            window,
            seen: Mutex::new(HashMap::new()),
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
    pub fn record(&self, key: &str, now: OffsetDateTime) -> usize {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let times = self.events(&mut seen, key, now);
        self.prune(times, now);
        times.push_back(now);
        times.len()
    }

    /// Reserves one event for `key` if its window has room; otherwise the
    /// seconds to wait. The check and the count are one critical section,
    /// so concurrent callers can never take more than the limit between
    /// them.
    pub fn take(&self, key: &str, now: OffsetDateTime) -> Result<(), u64> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let times = self.events(&mut seen, key, now);
        if let Some(wait) = self.full_for(times, now) {
            return Err(wait);
        }
        times.push_back(now);
        Ok(())
    }

    /// Gives back an event [`SlidingWindow::take`] reserved for `key` at
    /// `at`, for an attempt that turned out not to count (a successful
    /// unseal is not a failure).
    pub fn give_back(&self, key: &str, at: OffsetDateTime) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(times) = seen.get_mut(key)
            && let Some(i) = times.iter().rposition(|t| *t == at)
        {
            times.remove(i);
        }
    }
}

/// Keys with work in progress, at most one piece of work per key: one
/// password check per username at a time.
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

    #[test]
    fn opens_again_when_the_oldest_event_leaves_the_window() {
        let limiter = SlidingWindow::new(2, Duration::minutes(1));
        let t0 = datetime!(2026-01-01 00:00 UTC);
        assert_eq!(limiter.take("k", t0), Ok(()));
        assert_eq!(limiter.take("k", t0 + Duration::seconds(10)), Ok(()));
        assert_eq!(limiter.take("k", t0 + Duration::seconds(20)), Err(40));
        assert_eq!(limiter.take("other", t0 + Duration::seconds(20)), Ok(()));
        assert_eq!(limiter.take("k", t0 + Duration::seconds(61)), Ok(()));
        // `record` counts whatever the limit, and says how many are in the
        // window.
        assert_eq!(limiter.record("k", t0 + Duration::seconds(62)), 3);
        assert_eq!(limiter.record("k", t0 + Duration::seconds(75)), 3);
    }

    #[test]
    fn take_counts_only_what_it_allows() {
        let limiter = SlidingWindow::new(1, Duration::hours(1));
        let t0 = datetime!(2026-01-01 00:00 UTC);
        assert_eq!(limiter.take("a", t0), Ok(()));
        assert_eq!(limiter.take("a", t0 + Duration::minutes(30)), Err(1800));
        assert_eq!(limiter.take("a", t0 + Duration::minutes(61)), Ok(()));
        // Given back: room again at once.
        limiter.give_back("a", t0 + Duration::minutes(61));
        assert_eq!(limiter.take("a", t0 + Duration::minutes(62)), Ok(()));
        assert_eq!(limiter.take("a", t0 + Duration::minutes(63)), Err(3540));
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
                        if limiter.take(&key, t0 + Duration::hours(hours)).is_ok() {
                            granted.fetch_add(1, SeqCst);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.into_inner(), ROUNDS, "a key was granted twice");
    }
}
