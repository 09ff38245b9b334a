//! Staff sessions: opaque random tokens (`sst_` + 64 hex), stored as
//! `ac/session/<HMAC of the token>` with an idle and an absolute expiry,
//! sealed with the state key (so its principal cannot be changed on disk).

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use super::AccessError;
use crate::crypto::{HmacKey, random_array};
use crate::keyring::StateKey;
use crate::store::Transaction;

pub(crate) const SESSION_PREFIX: &str = "ac/session/";
pub(crate) const PRINCIPAL_SESSIONS_PREFIX: &str = "ac/psession/";
pub(crate) const TOKEN_PREFIX: &str = "sst_";
/// `last_seen` is rewritten at most this often, so an active session does
/// not cost a durable write per request.
const TOUCH_EVERY: Duration = Duration::seconds(60);

/// Session lifetimes. PCI DSS 8.2.8 asks for re-authentication after 15
/// idle minutes.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    pub idle: Duration,
    pub absolute: Duration,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self {
            idle: Duration::minutes(15),
            absolute: Duration::hours(8),
        }
    }
}

/// A session token, shown once to the person who logged in.
pub struct SessionToken(Zeroizing<String>);

impl SessionToken {
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoredSession {
    pub principal_id: String,
    pub created_at: i64,
    pub last_seen: i64,
}

pub(crate) fn looks_like_session_token(text: &str) -> bool {
    text.strip_prefix(TOKEN_PREFIX)
        .is_some_and(|rest| rest.len() == 64 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The store key of a token: its HMAC under the credential key.
pub(crate) fn session_key(credential_key: &HmacKey, token: &str) -> String {
    format!(
        "{SESSION_PREFIX}{}",
        hex::encode(credential_key.sign(token.as_bytes()).0)
    )
}

fn principal_session_key(principal_id: &str, session_key: &str) -> String {
    let digest = session_key.trim_start_matches(SESSION_PREFIX);
    format!("{PRINCIPAL_SESSIONS_PREFIX}{principal_id}/{digest}")
}

impl SessionPolicy {
    /// When a session seen at `last_seen`, created at `created_at`, ends.
    pub fn expires_at(
        &self,
        created_at: OffsetDateTime,
        last_seen: OffsetDateTime,
    ) -> OffsetDateTime {
        (last_seen + self.idle).min(created_at + self.absolute)
    }

    /// A new session for `principal_id`: the token, its expiry, and the
    /// writes that create it.
    pub(crate) fn open(
        &self,
        credential_key: &HmacKey,
        state: &StateKey,
        principal_id: &str,
        now: OffsetDateTime,
    ) -> Result<(SessionToken, OffsetDateTime, Transaction), AccessError> {
        let bytes = Zeroizing::new(random_array::<32>()?);
        let token = SessionToken(Zeroizing::new(format!(
            "{TOKEN_PREFIX}{}",
            hex::encode(&bytes[..])
        )));
        let key = session_key(credential_key, token.expose_secret());
        let stored = StoredSession {
            principal_id: principal_id.to_owned(),
            created_at: now.unix_timestamp(),
            last_seen: now.unix_timestamp(),
        };
        let sealed = state.seal_json(key.as_bytes(), &stored)?;
        let tx = Transaction::new()
            .put(principal_session_key(principal_id, &key), Vec::new())
            .put(key, sealed);
        Ok((token, self.expires_at(now, now), tx))
    }

    /// Checks a stored session at `now`: the principal id and, when
    /// `last_seen` should move, the write that moves it. An expired session
    /// is unauthenticated.
    pub(crate) fn check(
        &self,
        state: &StateKey,
        key: &str,
        stored: &StoredSession,
        now: OffsetDateTime,
    ) -> Result<Option<Transaction>, AccessError> {
        let created = OffsetDateTime::from_unix_timestamp(stored.created_at)
            .map_err(|_| AccessError::Corrupt)?;
        let seen = OffsetDateTime::from_unix_timestamp(stored.last_seen)
            .map_err(|_| AccessError::Corrupt)?;
        if now >= self.expires_at(created, seen) {
            return Err(AccessError::Unauthenticated);
        }
        if now - seen < TOUCH_EVERY {
            return Ok(None);
        }
        let touched = StoredSession {
            last_seen: now.unix_timestamp(),
            ..stored.clone()
        };
        Ok(Some(
            Transaction::new().put(key, state.seal_json(key.as_bytes(), &touched)?),
        ))
    }
}

/// The writes that end the session stored under `key`.
pub(crate) fn close(key: &str, principal_id: &str) -> Transaction {
    Transaction::new()
        .delete(principal_session_key(principal_id, key))
        .delete(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Key256;
    use time::macros::datetime;

    fn state() -> StateKey {
        StateKey::new(&Key256::from_bytes([5; 32]))
    }

    #[test]
    fn idle_and_absolute_expiry() {
        let policy = SessionPolicy::default();
        let t0 = datetime!(2026-01-01 09:00 UTC);
        let stored = StoredSession {
            principal_id: "p".into(),
            created_at: t0.unix_timestamp(),
            last_seen: t0.unix_timestamp(),
        };
        assert!(
            policy
                .check(&state(), "k", &stored, t0 + Duration::minutes(14))
                .is_ok()
        );
        assert!(
            policy
                .check(&state(), "k", &stored, t0 + Duration::minutes(15))
                .is_err()
        );
        // Kept alive every ten minutes, it still ends after eight hours.
        let busy = StoredSession {
            last_seen: (t0 + Duration::minutes(475)).unix_timestamp(),
            ..stored
        };
        assert!(
            policy
                .check(&state(), "k", &busy, t0 + Duration::minutes(479))
                .is_ok()
        );
        assert!(
            policy
                .check(&state(), "k", &busy, t0 + Duration::minutes(480))
                .is_err()
        );
    }

    #[test]
    fn last_seen_moves_at_most_once_a_minute() {
        let policy = SessionPolicy::default();
        let t0 = datetime!(2026-01-01 09:00 UTC);
        let stored = StoredSession {
            principal_id: "p".into(),
            created_at: t0.unix_timestamp(),
            last_seen: t0.unix_timestamp(),
        };
        assert!(
            policy
                .check(&state(), "k", &stored, t0 + Duration::seconds(30))
                .unwrap()
                .is_none()
        );
        assert!(
            policy
                .check(&state(), "k", &stored, t0 + Duration::seconds(61))
                .unwrap()
                .is_some()
        );
    }
}
