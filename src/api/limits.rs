//! One sliding-window counter for every limit the API keeps in memory:
//! failed unseals, reveals per officer, audited lock refusals per username.

use std::collections::{HashMap, VecDeque};
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

    /// Seconds until `key` may have another event, if its window is full.
    pub fn retry_after(&self, key: &str, now: OffsetDateTime) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let times = seen.get_mut(key)?;
        while times.front().is_some_and(|t| now - *t >= self.window) {
            times.pop_front();
        }
        if times.len() < self.limit {
            return None;
        }
        let oldest = times.front().copied().unwrap_or(now);
        let wait = (oldest + self.window - now).whole_seconds();
        Some(u64::try_from(wait).unwrap_or(0).max(1))
    }

    /// Counts one event for `key`.
    pub fn record(&self, key: &str, now: OffsetDateTime) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() >= MAX_KEYS && !seen.contains_key(key) {
            let window = self.window;
            seen.retain(|_, times| times.back().is_some_and(|t| now - *t < window));
        }
        seen.entry(key.to_owned()).or_default().push_back(now);
    }

    /// Counts one event for `key` if its window has room; otherwise the
    /// seconds to wait.
    pub fn take(&self, key: &str, now: OffsetDateTime) -> Result<(), u64> {
        match self.retry_after(key, now) {
            Some(wait) => Err(wait),
            None => {
                self.record(key, now);
                Ok(())
            }
        }
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
        assert_eq!(limiter.retry_after("k", t0), None);
        limiter.record("k", t0);
        limiter.record("k", t0 + Duration::seconds(10));
        assert_eq!(
            limiter.retry_after("k", t0 + Duration::seconds(20)),
            Some(40)
        );
        assert_eq!(
            limiter.retry_after("other", t0 + Duration::seconds(20)),
            None
        );
        assert_eq!(limiter.retry_after("k", t0 + Duration::seconds(61)), None);
    }

    #[test]
    fn take_counts_only_what_it_allows() {
        let limiter = SlidingWindow::new(1, Duration::hours(1));
        let t0 = datetime!(2026-01-01 00:00 UTC);
        assert_eq!(limiter.take("a", t0), Ok(()));
        assert_eq!(limiter.take("a", t0 + Duration::minutes(30)), Err(1800));
        assert_eq!(limiter.take("a", t0 + Duration::minutes(61)), Ok(()));
    }
}
