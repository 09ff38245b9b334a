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

use super::{ApiError, AppState, AuditedChange};
use crate::audit::{AuditEvent, Outcome};
use crate::store::Transaction;

/// How long a failed roll waits before it is tried again (from the step
/// it stopped at).
const FAILED_ROLL_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// When the current period began, in the store.
const EPOCH_STATE_KEY: &[u8] = b"job/epoch";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EpochState {
    /// The epoch rolled to last (none before the first roll).
    epoch: Option<u32>,
    /// Unix time the current period began.
    began_at: i64,
    /// When the roll that ends the period rotated every family (its first
    /// step); the rest waits until the new versions are older than
    /// `keys.destroy_grace_seconds`, so writes that took an old version
    /// just before have reached the store.
    #[serde(default)]
    rotated_at: Option<i64>,
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

/// Takes the roll one step further when it is due: the first call only
/// begins the first period; once the period has passed, every family is
/// rotated; once the new versions are older than the destroy grace, every
/// live DEK is rewrapped, the older versions are destroyed and the epoch
/// secret is replaced (the new epoch is returned). Also finishes a roll
/// whose last step was cut short (an old secret still in `epoch.json`).
/// Blocking; the last step takes as long as a whole rewrap.
pub fn roll_if_due(state: &AppState, period: Duration) -> Result<Option<u32>, ApiError> {
    if state.store.is_shared() {
        return Err(ApiError::Conflict(
            "Erasure epochs need a store of one node (the epoch secrets live in its keys directory).",
        ));
    }
    if state.keyring.epochs()?.len() > 1 {
        let change = AuditedChange::new(
            &state.audit,
            event(
                "key.epoch",
                "epoch".into(),
                "a roll cut short finished: the older epoch secrets are destroyed".into(),
            ),
        );
        state
            .keyring
            .settle_epochs_with(&|tx| change.commit(tx))
            .map_err(|e| change.refusal(e))?;
    }
    let now = state.clock.now().unix_timestamp();
    let Some((current, read)) = read_state(state)? else {
        let begun = EpochState {
            epoch: state.keyring.epochs()?.last().copied(),
            began_at: now,
            rotated_at: None,
        };
        match state.store.commit(state_write(state, &begun, None)?) {
            Ok(()) | Err(crate::store::StoreError::Conflict) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    };
    let period = i64::try_from(period.as_secs()).unwrap_or(i64::MAX);
    let (rotated_at, read) = match current.rotated_at {
        Some(at) => (at, read),
        None if now.saturating_sub(current.began_at) < period => return Ok(None),
        None => {
            rotate_all(state)?;
            let rotated = EpochState {
                rotated_at: Some(now),
                ..current
            };
            let write = state_write(state, &rotated, Some(read))?;
            state.store.commit(write)?;
            let (_, read) = read_state(state)?.ok_or(ApiError::Integrity)?;
            (now, read)
        }
    };
    if now.saturating_sub(rotated_at) < state.settings.kek_destroy_grace.whole_seconds() {
        return Ok(None);
    }
    finish_roll(state, read).map(Some)
}

/// The roll's first step: a new version of every family in use.
fn rotate_all(state: &AppState) -> Result<(), ApiError> {
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
    Ok(())
}

/// The roll's last steps (blocking): every live DEK onto the newest
/// versions, every older version destroyed, the surviving versions under a
/// new epoch secret and the old one forgotten. `read` is the period's
/// state as read (a precondition of the last step).
fn finish_roll(state: &AppState, read: Vec<u8>) -> Result<u32, ApiError> {
    state.rewrap_to_end("erasure epoch")?;
    let newest = state.keyring.newest_versions()?;
    let mut kept = Vec::new();
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
            // under it are not final): said loudly, and in the epoch's
            // audit entry; the roll goes on.
            tracing::error!(
                purpose = meta.purpose.as_str(),
                version = meta.version,
                error = ?e,
                "erasure epoch: a KEK version could not be destroyed; erasures under it are not final"
            );
            kept.push(format!("{}/{}", meta.purpose.as_str(), meta.version));
        }
    }
    let now = state.clock.now().unix_timestamp();
    let epochs_before = state.keyring.epochs()?;
    let next = epochs_before.last().map_or(1, |e| e.saturating_add(1));
    let period = state_write(
        state,
        &EpochState {
            epoch: Some(next),
            began_at: now,
            rotated_at: None,
        },
        Some(read),
    )?;
    let mut reason = format!(
        "erasure epoch {next} begun; the secrets of epochs {epochs_before:?} are destroyed"
    );
    let mut epoch_event = event("key.epoch", format!("epoch/{next}"), String::new());
    if !kept.is_empty() {
        reason.push_str(&format!(
            "; KEK versions NOT destroyed (erasures under them are not final): {}",
            kept.join(", ")
        ));
        epoch_event.outcome = Outcome::Error;
    }
    epoch_event.reason = Some(reason);
    let change = AuditedChange::new(&state.audit, epoch_event);
    let rolled = state
        .keyring
        .roll_epoch_with(&|tx| change.commit(tx.merge(period.clone())))
        .map_err(|e| change.refusal(e))?;
    tracing::info!(epoch = rolled, "erasure epoch rolled");
    Ok(rolled)
}

/// Keeps the epochs rolling: checks every `every` whether the period has
/// passed. Spawned by `serve` and `dev` when epochs are on and the store
/// is one node's.
pub fn spawn_scheduler(
    state: AppState,
    period: Duration,
    every: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    if state.store.is_shared() {
        tracing::info!(
            "erasure epochs are off: the store is shared by several nodes (docs/lifecycle.md)"
        );
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut backoff: Option<tokio::time::Instant> = None;
        loop {
            tick.tick().await;
            if state.keyring.is_sealed()
                || backoff.is_some_and(|until| tokio::time::Instant::now() < until)
            {
                continue;
            }
            let state = state.clone();
            let rolled = tokio::task::spawn_blocking(move || roll_if_due(&state, period)).await;
            backoff = match rolled {
                Ok(Ok(_)) | Ok(Err(ApiError::Sealed)) => None,
                Ok(Err(e)) => {
                    tracing::error!(error = ?e, "erasure epoch roll failed; tried again in 15 minutes, from the step it stopped at");
                    Some(tokio::time::Instant::now() + FAILED_ROLL_BACKOFF)
                }
                Err(e) => {
                    tracing::error!(error = ?e, "erasure epoch roll panicked; tried again in 15 minutes");
                    Some(tokio::time::Instant::now() + FAILED_ROLL_BACKOFF)
                }
            };
        }
    }))
}
