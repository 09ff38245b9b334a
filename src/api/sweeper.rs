//! The retention sweeper (docs/lifecycle.md, "Retention"): a task started
//! with the server that, while the vault is unsealed and once every
//! `[retention] sweep_interval_minutes` by the server's clock, erases the
//! records whose retention rule says they are due, as the principal
//! `system`, each erasure audited (`record.erase`, the rule as reason);
//! deletes idempotency slots older than 24 hours; and gives records stored
//! before the subject index their entry.
//!
//! Several nodes may sweep one shared store at once: every erasure carries
//! the preconditions a manual one does (the record as read, no hold), so
//! the second node's erasure of a record conflicts and is skipped, never
//! written twice or audited twice. A held record is skipped, every pass.

use time::OffsetDateTime;

use super::subjects::guarded_erasure;
use super::{ApiError, AppState};
use crate::audit::{AuditEvent, Outcome};
use crate::lifecycle::{Anchor, RetentionRule, due_at};
use crate::records::RecordType;
use crate::vault::{RecordMeta, VaultError};

/// The principal the sweeper's audit entries name.
pub const SYSTEM: &str = "system";
/// How often the task looks at the clock and the seal (real time); a pass
/// runs when the server's clock has moved a whole interval since the last.
const TICK: std::time::Duration = std::time::Duration::from_secs(1);
/// Records read per page.
const PAGE: usize = 256;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Records erased by this pass.
    pub erased: usize,
    /// Due records a legal hold kept.
    pub held: usize,
    /// Due records changed or erased by someone else meanwhile (another
    /// node's sweeper): skipped.
    pub conflicts: usize,
    /// Records given their subject-index entry.
    pub indexed: usize,
    /// Idempotency slots older than 24 hours deleted.
    pub expired_slots: usize,
    /// Records that could not be read or erased (logged by id): skipped,
    /// so that one bad entry never stops the pass.
    pub failed: usize,
}

/// Starts the sweeper for `state`: a pass at once when unsealed, then one
/// per interval of the server's clock. Runs until aborted.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<OffsetDateTime> = None;
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticker.tick().await;
            if state.keyring.is_sealed() {
                // A pass at once after the next unseal.
                last = None;
                continue;
            }
            let now = state.clock.now();
            if last.is_some_and(|l| now < l + state.settings.retention.sweep_interval) {
                continue;
            }
            last = Some(now);
            match sweep(&state).await {
                Ok(report) if report == SweepReport::default() => {
                    tracing::debug!("retention sweep: nothing to do");
                }
                Ok(report) => tracing::info!(
                    erased = report.erased,
                    held = report.held,
                    conflicts = report.conflicts,
                    indexed = report.indexed,
                    expired_slots = report.expired_slots,
                    failed = report.failed,
                    "retention sweep"
                ),
                Err(e) => tracing::warn!(
                    code = e.problem().code,
                    "retention sweep stopped early; the next pass starts over"
                ),
            }
        }
    })
}

/// When `meta` is due under `rule`, reading what the rule's anchor needs.
fn due(
    state: &AppState,
    rule: &RetentionRule,
    meta: &RecordMeta,
) -> Result<Option<OffsetDateTime>, ApiError> {
    let last_use = match rule.anchor {
        Anchor::LastUse => state.lifecycle.last_use(&meta.id)?,
        _ => None,
    };
    let closed = match (rule.anchor, &meta.subject_ref) {
        (Anchor::Close, Some(subject)) => {
            let digest = state.vault.subject_digest(subject)?;
            state.lifecycle.closed(&meta.owner, &digest)?
        }
        _ => None,
    };
    Ok(due_at(rule, meta, last_use, closed.as_ref()))
}

/// Gives a record stored before the subject index its entry (audited as
/// `record.index`); the record as it is now (`None`: erased meanwhile).
async fn indexed(
    state: &AppState,
    meta: RecordMeta,
    report: &mut SweepReport,
) -> Result<Option<RecordMeta>, ApiError> {
    let Some(tx) = state.vault.prepare_subject_index(&meta)? else {
        return Ok(Some(meta));
    };
    let event = AuditEvent {
        reason: Some("subject index entry added (record stored before the index)".into()),
        ..AuditEvent::new(SYSTEM, "record.index", Outcome::Allowed).target(meta.id.clone())
    };
    if state.try_commit(event, tx).await?.is_some() {
        report.indexed += 1;
    }
    match state.vault.live_meta(&meta.id) {
        Ok(meta) => Ok(Some(meta)),
        Err(VaultError::Erased) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// One pass over every record and idempotency slot (see the module).
pub async fn sweep(state: &AppState) -> Result<SweepReport, ApiError> {
    let mut report = SweepReport::default();
    let expired = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || super::idempotency::remove_expired(&state))
            .await
            .map_err(|_| ApiError::Internal)??
    };
    report.expired_slots = expired;
    if expired > 0 {
        state
            .record(AuditEvent {
                reason: Some(format!(
                    "{expired} idempotency slots older than 24 hours removed"
                )),
                ..AuditEvent::new(SYSTEM, "idempotency.expire", Outcome::Allowed)
            })
            .await?;
    }
    let mut after: Option<String> = None;
    loop {
        let (page, next) = {
            let state = state.clone();
            let after = after.clone();
            tokio::task::spawn_blocking(move || state.vault.records_page(after.as_deref(), PAGE))
                .await
                .map_err(|_| ApiError::Internal)??
        };
        for meta in page {
            if meta.erased_at.is_some() {
                continue;
            }
            let id = meta.id.clone();
            match sweep_one(state, meta, &mut report).await {
                Ok(()) => {}
                // Sealed, the store or the audit log failing: the pass
                // stops (every record would fail alike).
                Err(
                    e @ (ApiError::Sealed
                    | ApiError::Internal
                    | ApiError::AuditUnavailable
                    | ApiError::AuditNotDurable),
                ) => return Err(e),
                Err(e) => {
                    report.failed += 1;
                    tracing::error!(record = %id, error = ?e, "the sweeper skipped a record it cannot read or erase");
                }
            }
        }
        match next {
            Some(next) => after = Some(next),
            None => return Ok(report),
        }
    }
}

/// One record of a pass: indexed if it must be, erased if it is due and
/// no hold keeps it.
async fn sweep_one(
    state: &AppState,
    meta: RecordMeta,
    report: &mut SweepReport,
) -> Result<(), ApiError> {
    let Some(meta) = indexed(state, meta, report).await? else {
        return Ok(());
    };
    let Some(rule) = state.settings.retention.rule(meta.record_type).copied() else {
        return Ok(());
    };
    let now = state.clock.now();
    if due(state, &rule, &meta)?.is_none_or(|due| now < due) {
        return Ok(());
    }
    let Some(tx) = guarded_erasure(state, &meta)? else {
        report.held += 1;
        return Ok(());
    };
    if meta.record_type == RecordType::Card {
        state.cvcs.discard(&meta.id);
    }
    let event = AuditEvent {
        reason: Some(format!("retention: {}", rule.describe(meta.record_type))),
        ..AuditEvent::new(SYSTEM, "record.erase", Outcome::Allowed).target(meta.id.clone())
    };
    match state.try_commit(event, tx).await? {
        Some(_) => report.erased += 1,
        None => report.conflicts += 1,
    }
    Ok(())
}
