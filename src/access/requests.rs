//! Four-eyes access requests: an officer asks to reveal named fields of one
//! record; a different person approves or denies; an approval is a grant
//! bound to that record, those fields, that officer and that case ticket,
//! for a while, and for one reveal.
//!
//! A request is stored sealed with the state key under `ar/<id>`: flipping
//! its status to `approved` on disk gives an integrity error, not a grant.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::AccessError;
use crate::clock::Clock;
use crate::crypto::random_array;
use crate::keyring::{Keyring, StateKey};
use crate::store::{Store, Transaction};

const REQUEST_PREFIX: &str = "ar/";
const BY_REQUESTER_PREFIX: &str = "arx/";
/// Pending requests, by creation time then id: the approvers' queue,
/// oldest first. Removed on decision.
const PENDING_PREFIX: &str = "arp/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    Pending,
    Approved,
    Denied,
    /// Approved, and spent by the reveal it was granted for.
    Used,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRequest {
    pub id: String,
    pub record_id: String,
    pub fields: Vec<String>,
    pub requester: String,
    pub reason: String,
    pub ticket: String,
    pub status: RequestStatus,
    pub created_at: i64,
    pub decided_by: Option<String>,
    pub expires_at: Option<i64>,
}

impl AccessRequest {
    pub fn expires_at_text(&self) -> Option<String> {
        self.expires_at.and_then(crate::clock::rfc3339_unix)
    }

    /// Whether this request grants `requester` the reveal of `field` of
    /// `record_id` at `now`.
    pub fn grants(
        &self,
        requester: &str,
        record_id: &str,
        field: &str,
        now: OffsetDateTime,
    ) -> bool {
        self.status == RequestStatus::Approved
            && self.requester == requester
            && self.record_id == record_id
            && self.fields.iter().any(|f| f == field)
            && self.expires_at.is_some_and(|e| now.unix_timestamp() < e)
    }
}

/// Why a decision was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionError {
    NotFound,
    OwnRequest,
    NotPending,
}

/// Access requests in the store.
pub struct AccessRequests {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    clock: Arc<dyn Clock>,
    /// How long an approval lasts.
    pub grant_lifetime: Duration,
}

fn key(id: &str) -> String {
    format!("{REQUEST_PREFIX}{id}")
}

fn pending_key(request: &AccessRequest) -> String {
    // Times before 1970 do not occur (the clock makes them); 20 digits
    // sort as numbers do.
    format!(
        "{PENDING_PREFIX}{:020}/{}",
        request.created_at.max(0),
        request.id
    )
}

fn seal(state: &StateKey, request: &AccessRequest) -> Result<Vec<u8>, AccessError> {
    Ok(state.seal_json(key(&request.id).as_bytes(), request)?)
}

impl AccessRequests {
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        clock: Arc<dyn Clock>,
        grant_lifetime: Duration,
    ) -> Self {
        Self {
            store,
            keyring,
            clock,
            grant_lifetime,
        }
    }

    /// A new pending request and the writes that store it.
    pub fn prepare(
        &self,
        requester: &str,
        record_id: &str,
        fields: Vec<String>,
        reason: String,
        ticket: String,
    ) -> Result<(AccessRequest, Transaction), AccessError> {
        let request = AccessRequest {
            id: format!("ar_{}", hex::encode(random_array::<12>()?)),
            record_id: record_id.to_owned(),
            fields,
            requester: requester.to_owned(),
            reason,
            ticket,
            status: RequestStatus::Pending,
            created_at: self.clock.now().unix_timestamp(),
            decided_by: None,
            expires_at: None,
        };
        let index = format!(
            "{BY_REQUESTER_PREFIX}{requester}/{record_id}/{}",
            request.id
        );
        let sealed = seal(&*self.keyring.keys()?.state_key()?, &request)?;
        let tx = Transaction::new()
            .put(key(&request.id), sealed)
            .put(index, Vec::new())
            .put(pending_key(&request), Vec::new());
        Ok((request, tx))
    }

    /// The `limit` oldest pending requests, oldest first: the approvers'
    /// queue. Each is read and checked like any other request.
    pub fn pending(&self, limit: usize) -> Result<Vec<AccessRequest>, AccessError> {
        let page = self.store.scan(PENDING_PREFIX.as_bytes(), None, limit)?;
        let mut out = Vec::with_capacity(page.len());
        for (index_key, _) in page {
            let rest = index_key
                .get(PENDING_PREFIX.len()..)
                .and_then(|rest| std::str::from_utf8(rest).ok())
                .ok_or(AccessError::Corrupt)?;
            // `<time>/<id>`, or a bare `<id>` written before the index
            // was ordered by time (still listed, and removed on decision).
            let id = rest.split_once('/').map_or(rest, |(_, id)| id);
            match self.get(id)? {
                Some(request) if request.status == RequestStatus::Pending => out.push(request),
                Some(_) => {}
                None => tracing::warn!(id, "pending index names no access request; skipped"),
            }
        }
        Ok(out)
    }

    pub fn get(&self, id: &str) -> Result<Option<AccessRequest>, AccessError> {
        Ok(self.get_with_bytes(id)?.map(|(request, _)| request))
    }

    /// A request and its stored bytes (for a transaction's precondition).
    fn get_with_bytes(&self, id: &str) -> Result<Option<(AccessRequest, Vec<u8>)>, AccessError> {
        let key = key(id);
        let Some(bytes) = self.store.get(key.as_bytes())? else {
            return Ok(None);
        };
        let request: AccessRequest = self
            .keyring
            .keys()?
            .state_key()?
            .open_json(key.as_bytes(), &bytes)?;
        Ok(Some((request, bytes)))
    }

    /// The writes that approve (`approve = true`) or deny a pending request
    /// by `decider`, who must not be its requester.
    pub fn prepare_decision(
        &self,
        id: &str,
        decider: &str,
        approve: bool,
    ) -> Result<Result<(AccessRequest, Transaction), DecisionError>, AccessError> {
        let Some((request, stored)) = self.get_with_bytes(id)? else {
            return Ok(Err(DecisionError::NotFound));
        };
        if request.requester == decider {
            return Ok(Err(DecisionError::OwnRequest));
        }
        if request.status != RequestStatus::Pending {
            return Ok(Err(DecisionError::NotPending));
        }
        let now = self.clock.now();
        let decided = AccessRequest {
            status: if approve {
                RequestStatus::Approved
            } else {
                RequestStatus::Denied
            },
            decided_by: Some(decider.to_owned()),
            expires_at: approve.then(|| (now + self.grant_lifetime).unix_timestamp()),
            ..request
        };
        let sealed = seal(&*self.keyring.keys()?.state_key()?, &decided)?;
        let tx = Transaction::new()
            .expect(key(id), Some(stored))
            .put(key(id), sealed)
            .delete(pending_key(&decided))
            .delete(format!("{PENDING_PREFIX}{id}"));
        Ok(Ok((decided, tx)))
    }

    /// The grants `requester` would spend to reveal `fields` of
    /// `record_id` under `ticket`, and the writes that spend them: each
    /// approved, live request used is marked used, on condition that it is
    /// still as read, so two reveals racing for one approval cannot both
    /// have it. `None` when the grants do not cover every field.
    pub fn take_grants(
        &self,
        requester: &str,
        record_id: &str,
        fields: &[&str],
        ticket: &str,
    ) -> Result<Option<(Vec<String>, Transaction)>, AccessError> {
        let prefix = format!("{BY_REQUESTER_PREFIX}{requester}/{record_id}/");
        let now = self.clock.now();
        let mut requests = Vec::new();
        for (index_key, _) in self.store.scan_prefix(prefix.as_bytes())? {
            let id = index_key
                .get(prefix.len()..)
                .and_then(|id| std::str::from_utf8(id).ok())
                .ok_or(AccessError::Corrupt)?;
            if let Some((request, stored)) = self.get_with_bytes(id)?
                && request.ticket == ticket
            {
                requests.push((request, stored));
            }
        }
        let mut spent: Vec<&(AccessRequest, Vec<u8>)> = Vec::new();
        for field in fields {
            let Some(grant) = requests
                .iter()
                .find(|(r, _)| r.grants(requester, record_id, field, now))
            else {
                return Ok(None);
            };
            if !spent.iter().any(|(s, _)| s.id == grant.0.id) {
                spent.push(grant);
            }
        }
        let keys = self.keyring.keys()?;
        let mut tx = Transaction::new();
        for (request, stored) in &spent {
            let used = AccessRequest {
                status: RequestStatus::Used,
                ..request.clone()
            };
            tx = tx
                .expect(key(&request.id), Some(stored.clone()))
                .put(key(&request.id), seal(&*keys.state_key()?, &used)?);
        }
        Ok(Some((
            spent.iter().map(|(r, _)| r.id.clone()).collect(),
            tx,
        )))
    }
}
