//! Login lockout: after `threshold` consecutive failures a username is
//! locked for a period that doubles with each further failure, up to a cap.
//! Keyed by an HMAC of the attempted username, so a password typed into the
//! username field never reaches the store.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::AccessError;
use crate::crypto::HmacKey;
use crate::store::{Store, Transaction};

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
    fn read(store: &dyn Store, key: &str) -> Result<Failures, AccessError> {
        store
            .get(key.as_bytes())?
            .map(|b| serde_json::from_slice(&b).map_err(|_| AccessError::Corrupt))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    fn lock_length(&self, count: u32) -> Option<Duration> {
        let over = count.checked_sub(self.threshold)?;
        let factor = 1i32.checked_shl(over.min(30)).unwrap_or(i32::MAX);
        Some((self.base * factor).min(self.max))
    }

    /// Seconds until `key` may try again, if it is locked now.
    pub(crate) fn retry_after(
        &self,
        store: &dyn Store,
        key: &str,
        now: OffsetDateTime,
    ) -> Result<Option<u64>, AccessError> {
        let failures = Self::read(store, key)?;
        let Some(length) = self.lock_length(failures.count) else {
            return Ok(None);
        };
        let last =
            OffsetDateTime::from_unix_timestamp(failures.last).map_err(|_| AccessError::Corrupt)?;
        let left = (last + length - now).whole_seconds();
        Ok((left > 0).then(|| u64::try_from(left).unwrap_or(1)))
    }

    /// The write that counts one more failure.
    pub(crate) fn failure(
        &self,
        store: &dyn Store,
        key: &str,
        now: OffsetDateTime,
    ) -> Result<Transaction, AccessError> {
        let failures = Self::read(store, key)?;
        let next = Failures {
            count: failures.count.saturating_add(1),
            last: now.unix_timestamp(),
        };
        Ok(Transaction::new().put(
            key,
            serde_json::to_vec(&next).map_err(|_| AccessError::Corrupt)?,
        ))
    }

    /// The write that clears the count after a success.
    pub(crate) fn success(key: &str) -> Transaction {
        Transaction::new().delete(key)
    }
}

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
}
