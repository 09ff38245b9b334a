//! The erasure epoch roll (docs/lifecycle.md, "Erasure that really
//! erases"): on a schedule (`keys.erasure_epoch_hours`, default 24), every
//! KEK family gets a new version, every live DEK is rewrapped onto it,
//! every older version is destroyed, and the KEKs move to a new epoch
//! secret while the old one is forgotten (`keyring::epoch`). An erasure is
//! then final in every copy of the store, backups included, at the end of
//! the period it happened in.
//!
//! Epochs need the epoch secrets to be outside the store: in the keys
//! directory of the one node an embedded store has. A store shared by
//! several nodes (PostgreSQL) has no such place, so the roll is not run
//! there (docs/lifecycle.md says what that means).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::rewrap::Step;
use super::{ApiError, AppState, AuditedChange};
use crate::audit::{AuditEvent, Outcome};
use crate::store::Transaction;

/// When the current period began, in the store.
const EPOCH_STATE_KEY: &[u8] = b"job/epoch";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EpochState {
    /// The epoch rolled to last (none before the first roll).
    epoch: Option<u32>,
    /// Unix time the current period began.
    began_at: i64,
}

fn read_state(state: &AppState) -> Result<Option<(EpochState, Vec<u8>)>, ApiError> {
    let Some(bytes) = state.store.get(EPOCH_STATE_KEY)? else {
        return Ok(None);
    };
    let read = state
        .keyring
        .keys()?
        .state_key()?
        .open_json(EPOCH_STATE_KEY, &bytes)?;
    Ok(Some((read, bytes)))
}

fn state_write(
    state: &AppState,
    epoch: &EpochState,
    read: Option<Vec<u8>>,
) -> Result<Transaction, ApiError> {
    Ok(Transaction::new().expect(EPOCH_STATE_KEY, read).put(
        EPOCH_STATE_KEY,
        state
            .keyring
            .keys()?
            .state_key()?
            .seal_json(EPOCH_STATE_KEY, epoch)?,
    ))
}

/// An event of the roll, by `system`.
fn event(action: &'static str, target: String, reason: String) -> AuditEvent {
    AuditEvent {
        reason: Some(reason),
        ..AuditEvent::new("system", action, Outcome::Allowed).target(target)
    }
}

/// Rolls when the period has passed (the first call only starts the first
/// period). Blocking; the roll takes as long as a whole rewrap.
pub fn roll_if_due(state: &AppState, period: Duration) -> Result<Option<u32>, ApiError> {
    let now = state.clock.now().unix_timestamp();
    let Some((current, read)) = read_state(state)? else {
        let begun = EpochState {
            epoch: None,
            began_at: now,
        };
        match state.store.commit(state_write(state, &begun, None)?) {
            Ok(()) | Err(crate::store::StoreError::Conflict) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    };
    let period = i64::try_from(period.as_secs()).unwrap_or(i64::MAX);
    if now.saturating_sub(current.began_at) < period {
        return Ok(None);
    }
    roll(state, Some(read)).map(Some)
}

/// Rolls to a new epoch now (blocking). `read` is the period's state as
/// read (a precondition of the last step).
pub fn roll(state: &AppState, read: Option<Vec<u8>>) -> Result<u32, ApiError> {
    if state.store.is_shared() {
        return Err(ApiError::Conflict(
            "Erasure epochs need a store of one node (the epoch secrets live in its keys directory).",
        ));
    }
    // 1. A new version of every family in use.
    for (purpose, version) in state.keyring.newest_versions()? {
        let change = AuditedChange::new(
            &state.audit,
            event(
                "key.rotate",
                format!("kek/{}", purpose.as_str()),
                format!("erasure epoch: version {version} replaced"),
            ),
        );
        state
            .keyring
            .rotate_with(purpose, &|tx| change.commit(tx))
            .map_err(|e| change.refusal(e))?;
    }
    // 2. Every live DEK onto it.
    state.rewrap_to_end("erasure epoch")?;
    // 3. Every older version destroyed.
    let newest = state.keyring.newest_versions()?;
    for meta in state.keyring.kek_metadata()? {
        if newest.get(&meta.purpose) == Some(&meta.version) {
            continue;
        }
        let destroyed = super::rewrap::destroy_version(
            state,
            meta.purpose,
            meta.version,
            event(
                "key.destroy",
                format!("kek/{}/{}", meta.purpose.as_str(), meta.version),
                "erasure epoch".into(),
            ),
        );
        if let Err(e) = destroyed {
            // An unreadable entry keeps its version (and the erasures
            // under it are not final): said loudly, the roll goes on.
            tracing::error!(
                purpose = meta.purpose.as_str(),
                version = meta.version,
                error = ?e,
                "erasure epoch: a KEK version could not be destroyed"
            );
        }
    }
    // 4. The surviving versions under a new epoch secret; the old one
    //    forgotten. The period's new start goes in with the audit entry.
    let now = state.clock.now().unix_timestamp();
    let epochs_before = state.keyring.epochs()?;
    let next = epochs_before.last().map_or(1, |e| e.saturating_add(1));
    let period = state_write(
        state,
        &EpochState {
            epoch: Some(next),
            began_at: now,
        },
        read,
    )?;
    let change = AuditedChange::new(
        &state.audit,
        event(
            "key.epoch",
            format!("epoch/{next}"),
            format!(
                "erasure epoch {next} begun; the secrets of epochs {epochs_before:?} are destroyed"
            ),
        ),
    );
    let rolled = state
        .keyring
        .roll_epoch_with(&|tx| change.commit(tx.merge(period.clone())))
        .map_err(|e| change.refusal(e))?;
    tracing::info!(epoch = rolled, "erasure epoch rolled");
    Ok(rolled)
}

impl AppState {
    /// Starts a rewrap as `system` (unless one runs) and runs it to its
    /// end on this thread, taking the runner's place. Blocking.
    pub(crate) fn rewrap_to_end(&self, why: &str) -> Result<(), ApiError> {
        self.start_rewrap_now(why)?;
        let _runner = super::rewrap::RunnerPlace::take();
        loop {
            match self.rewrap_step()? {
                Step::Batch => {}
                Step::Finished => return Ok(()),
                Step::Idle => {
                    if self.rewrap_progress()?.state != "running" {
                        return Ok(());
                    }
                    // Another node's lease: wait for it.
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Keeps the epochs rolling: checks every `every` whether the period has
/// passed. Spawned by `serve` and `dev` when epochs are on and the store
/// is one node's.
pub fn spawn_scheduler(state: AppState, period: Duration, every: Duration) {
    if state.store.is_shared() {
        tracing::info!(
            "erasure epochs are off: the store is shared by several nodes (docs/lifecycle.md)"
        );
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if state.keyring.is_sealed() {
                continue;
            }
            let state = state.clone();
            let rolled = tokio::task::spawn_blocking(move || roll_if_due(&state, period)).await;
            match rolled {
                Ok(Ok(_)) | Ok(Err(ApiError::Sealed)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = ?e, "erasure epoch roll failed; retried at the next check")
                }
                Err(e) => tracing::error!(error = ?e, "erasure epoch roll panicked"),
            }
        }
    });
}
