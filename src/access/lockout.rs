//! Login lockout: after `threshold` consecutive failures a username is
//! locked for a period that doubles with each further failure, up to a cap.
//! Keyed by an HMAC of the attempted username, so a password typed into the
//! username field never reaches the store.
//!
//! An attempt is counted *before* its password is checked: a transaction
//! whose precondition is the count it read ([`LockoutPolicy::reserve`]),
//! retried when another attempt won the race. So however many attempts
//! arrive at once, on one node or several sharing a store, no more than
//! `threshold` passwords are checked before the lock; a success clears the
//! count.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::AccessError;
use crate::crypto::HmacKey;
use crate::keyring::StateKey;
use crate::store::{Store, StoreError, Transaction};

const LOCKOUT_PREFIX: &str = "ac/lockout/";

#[derive(Debug, Clone, Copy)]
pub struct LockoutPolicy {
    /// Failures allowed before the first lock (PCI DSS 8.3.4: at most 10).
    pub threshold: u32,
    /// The first lock's length; each further failure doubles it.
    pub base: Duration,
    pub max: Duration,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        Self {
            threshold: 5,
            base: Duration::minutes(1),
            max: Duration::hours(1),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Failures {
    count: u32,
    last: i64,
}

/// The store key for attempts on `username`.
pub(crate) fn lockout_key(credential_key: &HmacKey, username: &str) -> String {
    let tag = credential_key.sign(format!("login\0{}", username.to_lowercase()).as_bytes());
    format!("{LOCKOUT_PREFIX}{}", hex::encode(tag.0))
}

impl LockoutPolicy {
    /// The stored count under `key`, as bytes (for the precondition) and
    /// decoded.
    /// Sealed with the state key, like every record that decides who may
    /// do what: a count lowered on disk is an integrity error, not more
    /// guesses.
    fn read(
        store: &dyn Store,
        state: &StateKey,
        key: &str,
    ) -> Result<(Option<Vec<u8>>, Failures), AccessError> {
        let bytes = store.get(key.as_bytes())?;
        let failures = bytes
            .as_deref()
            .map(|b| state.open_json(key.as_bytes(), b))
            .transpose()?
            .unwrap_or_default();
        Ok((bytes, failures))
    }

    fn lock_length(&self, count: u32) -> Option<Duration> {
        let over = count.checked_sub(self.threshold)?;
        let factor = 1i32.checked_shl(over.min(30)).unwrap_or(i32::MAX);
        Some((self.base * factor).min(self.max))
    }

    /// Seconds until `failures` allow another attempt, if locked at `now`.
    fn locked_for(
        &self,
        failures: &Failures,
        now: OffsetDateTime,
    ) -> Result<Option<u64>, AccessError> {
        let Some(length) = self.lock_length(failures.count) else {
            return Ok(None);
        };
        let last =
            OffsetDateTime::from_unix_timestamp(failures.last).map_err(|_| AccessError::Corrupt)?;
        let left = (last + length - now).whole_seconds();
        Ok((left > 0).then(|| u64::try_from(left).unwrap_or(1)))
    }

    /// Counts one attempt on `key` durably, before its password is checked,
    /// unless `key` is locked. The write carries the count it read as a
    /// precondition and is retried when a concurrent attempt changed it, so
    /// every attempt is counted exactly once. An attempt that turns out
    /// right is cleared by [`LockoutPolicy::success`]; a wrong one stays
    /// counted as the failure it was.
    pub(crate) fn reserve(
        &self,
        store: &dyn Store,
        state: &StateKey,
        key: &str,
        now: OffsetDateTime,
    ) -> Result<Attempt, AccessError> {
        for _ in 0..RESERVE_TRIES {
            let (stored, failures) = Self::read(store, state, key)?;
            if let Some(retry_after_secs) = self.locked_for(&failures, now)? {
                return Ok(Attempt::Locked { retry_after_secs });
            }
            let next = Failures {
                count: failures.count.saturating_add(1),
                last: now.unix_timestamp(),
            };
            let tx = Transaction::new()
                .expect(key, stored)
                .put(key, state.seal_json(key.as_bytes(), &next)?);
            match store.commit(tx) {
                Ok(()) => return Ok(Attempt::Reserved),
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        // Never check a password without a reservation.
        Ok(Attempt::Locked {
            retry_after_secs: 1,
        })
    }

    /// The write that clears the count after a success.
    pub(crate) fn success(key: &str) -> Transaction {
        Transaction::new().delete(key)
    }
}

/// Whether a login attempt may check its password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Counted; check the password.
    Reserved,
    /// Locked (or too contended to count): refuse without checking.
    Locked { retry_after_secs: u64 },
}

/// Precondition failures tolerated before an attempt gives up (each one
/// means another attempt on the same username was counted meanwhile).
const RESERVE_TRIES: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_grows_and_is_capped() {
        let policy = LockoutPolicy::default();
        assert_eq!(policy.lock_length(4), None);
        assert_eq!(policy.lock_length(5), Some(Duration::minutes(1)));
        assert_eq!(policy.lock_length(6), Some(Duration::minutes(2)));
        assert_eq!(policy.lock_length(8), Some(Duration::minutes(8)));
        assert_eq!(policy.lock_length(20), Some(Duration::hours(1)));
        assert_eq!(policy.lock_length(u32::MAX), Some(Duration::hours(1)));
    }

    /// 64 threads reserving attempts on one username in one store at once:
    /// exactly `threshold` are counted, the rest find it locked.
    #[test]
    fn concurrent_reservations_count_exactly_up_to_the_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let state = StateKey::new(&crate::crypto::Key256::from_bytes([7; 32]));
        let policy = LockoutPolicy::default();
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let start = std::sync::Barrier::new(64);
        let attempts: Vec<Attempt> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..64)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        policy.reserve(&store, &state, "ac/lockout/k", now).unwrap()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let reserved = attempts.iter().filter(|a| **a == Attempt::Reserved).count();
        assert_eq!(reserved, 5);
        assert!(attempts.iter().all(|a| *a == Attempt::Reserved
            || *a
                == Attempt::Locked {
                    retry_after_secs: 60
                }));
        let (_, failures) = LockoutPolicy::read(&store, &state, "ac/lockout/k").unwrap();
        assert_eq!(failures.count, 5);
        // A minute later one more attempt is counted, and the lock doubles.
        let later = now + Duration::seconds(61);
        assert_eq!(
            policy
                .reserve(&store, &state, "ac/lockout/k", later)
                .unwrap(),
            Attempt::Reserved
        );
        assert_eq!(
            policy
                .reserve(&store, &state, "ac/lockout/k", later)
                .unwrap(),
            Attempt::Locked {
                retry_after_secs: 120
            }
        );
    }
}
