//! Background rewrap and KEK retirement (issue 14; docs/lifecycle.md,
//! "Rewrap and key retirement").
//!
//! A rewrap walks every store entry that holds a wrapped DEK (records,
//! generic values, relay header values, kept idempotent answers) in key
//! order, in batches, and moves each DEK onto the newest KEK version of its
//! purpose. Only DEKs are unwrapped and wrapped again: no record is
//! decrypted (but one of the first format, once: `keyring::record`).
//!
//! The job's state is one entry, `job/rewrap`, authenticated with the state
//! key. Each batch's writes carry a precondition on every entry they
//! replace and on the job state, and move the job's cursor in the same
//! transaction: a batch is done, and counted, or not at all. So the job
//! resumes where it stopped after a crash or a restart, on this node or
//! another: the node running it holds a lease in the job state, renewed
//! with every batch; another node takes the job over once the lease has
//! run out (on an embedded store, which one process owns, at once).
//!
//! Between batches the runner sleeps so that it takes at most its duty
//! share of the time (`keys.rewrap_duty_percent`, default 25 %): requests
//! keep the rest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{Caller, RequestContext};
use super::{ApiError, AppState, AuditedChange, Problem, idempotency};
use crate::access::Operation;
use crate::audit::{AuditError, AuditEvent, Outcome};

use crate::keyring::{KeyringError, Purpose};
use crate::relay::routes::{HEADERS_PREFIX, Routes};
use crate::store::{StoreError, Transaction};
use crate::vault::{GENERIC_PREFIX, RECORD_PREFIX};

/// The job's state in the store.
const JOB_KEY: &[u8] = b"job/rewrap";
/// How long a runner's lease lasts without a batch renewing it.
const LEASE_SECONDS: i64 = 30;

/// Rewrap settings (`[keys]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewrapSettings {
    /// Entries read per batch (one transaction).
    pub batch: usize,
    /// The share of time the runner may work, in percent: after a batch
    /// that took `t` it sleeps `t × (100 − duty) / duty`.
    pub duty_percent: u32,
}

impl Default for RewrapSettings {
    fn default() -> Self {
        Self {
            batch: 100,
            duty_percent: 10,
        }
    }
}

/// A kind of store entry that holds wrapped DEKs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Records,
    Generic,
    RelayHeaders,
    Idempotency,
}

impl Holder {
    /// In the order a rewrap walks them.
    const ALL: [Holder; 4] = [
        Holder::Records,
        Holder::Generic,
        Holder::RelayHeaders,
        Holder::Idempotency,
    ];

    fn prefix(self) -> &'static [u8] {
        match self {
            Holder::Records => RECORD_PREFIX.as_bytes(),
            Holder::Generic => GENERIC_PREFIX.as_bytes(),
            Holder::RelayHeaders => HEADERS_PREFIX.as_bytes(),
            Holder::Idempotency => idempotency::SLOT_PREFIX.as_bytes(),
        }
    }

    /// The KEK the entry's DEK is wrapped under; `None` if it holds none.
    fn wrapped_under(
        self,
        state: &AppState,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<(Purpose, u32)>, ApiError> {
        match self {
            Holder::Records | Holder::Generic => Ok(state.vault.wrapped_under(key, value)?),
            Holder::RelayHeaders => Ok(Some(Routes::headers_wrapped_under(value)?)),
            Holder::Idempotency => idempotency::wrapped_under(state, key, value),
        }
    }

    /// The writes that move the entry's DEK onto the newest KEK.
    fn rewrap(
        self,
        state: &AppState,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Transaction>, ApiError> {
        match self {
            Holder::Records | Holder::Generic => Ok(state.vault.rewrap_entry(key, value)?),
            Holder::RelayHeaders => Ok(state.relay_routes.rewrap_headers(key, value)?),
            Holder::Idempotency => idempotency::rewrap_slot(state, key, value),
        }
    }
}

/// The job as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Job {
    id: String,
    started_at: i64,
    started_by: String,
    finished_at: Option<i64>,
    /// The holder being walked (index into [`Holder::ALL`]) and the last
    /// key done there (hex).
    phase: usize,
    after: Option<String>,
    /// Entries read, and of those moved to a newer KEK.
    examined: u64,
    rewrapped: u64,
    /// Entries whose DEK could not be moved (unreadable: logged, and the
    /// KEK versions they use cannot be destroyed).
    failed: u64,
    /// Entries to read, counted when the job first runs.
    total: Option<u64>,
    /// When this runner took the job (for the rate) and how far it was.
    resumed_at: i64,
    examined_at_resume: u64,
    /// The runner holding the job and until when.
    runner: String,
    lease_until: i64,
}

/// Progress of the rewrap, as `GET /v1/keys/rewrap` answers it.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct RewrapProgress {
    /// `idle` (none ever started), `running` or `finished`.
    pub state: String,
    pub id: Option<String>,
    /// Entries holding a DEK read so far (rewrapped or already current).
    pub done: u64,
    /// Of those, moved onto a newer KEK version.
    pub rewrapped: u64,
    /// Entries that could not be read (see the server log).
    pub failed: u64,
    /// Entries still to read (`null` until they are counted).
    pub remaining: Option<u64>,
    /// Entries read per second since this runner took the job.
    pub rate: Option<f64>,
    pub started_at: Option<String>,
    /// When the job should end at this rate.
    pub eta: Option<String>,
    pub finished_at: Option<String>,
}

impl RewrapProgress {
    fn of(job: Option<&Job>, now: i64) -> Self {
        let Some(job) = job else {
            return Self {
                state: "idle".into(),
                id: None,
                done: 0,
                rewrapped: 0,
                failed: 0,
                remaining: None,
                rate: None,
                started_at: None,
                eta: None,
                finished_at: None,
            };
        };
        let remaining = job.total.map(|t| t.saturating_sub(job.examined));
        let elapsed = now.saturating_sub(job.resumed_at);
        #[allow(clippy::cast_precision_loss)]
        let rate = (job.finished_at.is_none() && elapsed > 0)
            .then(|| job.examined.saturating_sub(job.examined_at_resume) as f64 / elapsed as f64)
            .filter(|r| *r > 0.0);
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let eta = match (remaining, rate) {
            (Some(remaining), Some(rate)) => {
                Some(now.saturating_add((remaining as f64 / rate).ceil() as i64))
            }
            _ => None,
        };
        let time = crate::clock::rfc3339_unix;
        Self {
            state: if job.finished_at.is_some() {
                "finished"
            } else {
                "running"
            }
            .into(),
            id: Some(job.id.clone()),
            done: job.examined,
            rewrapped: job.rewrapped,
            failed: job.failed,
            remaining,
            rate,
            started_at: time(job.started_at),
            eta: eta.and_then(time),
            finished_at: job.finished_at.and_then(time),
        }
    }
}

/// The stored job and its bytes (for a precondition).
fn read_job(state: &AppState) -> Result<Option<(Job, Vec<u8>)>, ApiError> {
    let Some(bytes) = state.store.get(JOB_KEY)? else {
        return Ok(None);
    };
    let job: Job = state
        .keyring
        .keys()?
        .state_key()?
        .open_json(JOB_KEY, &bytes)?;
    Ok(Some((job, bytes)))
}

fn seal_job(state: &AppState, job: &Job) -> Result<Vec<u8>, ApiError> {
    Ok(state.keyring.keys()?.state_key()?.seal_json(JOB_KEY, job)?)
}

/// Who this process is, as a lease holder: the process id (an embedded
/// store is owned by one process, so a lease of another is a dead one's)
/// and a random part.
fn runner_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let random = crate::crypto::random_array::<6>().map_or_else(|_| "0".into(), hex::encode);
        format!("{}-{random}", std::process::id())
    })
}

/// Whether this process may take `job` now.
fn may_take(state: &AppState, job: &Job, now: i64) -> bool {
    if job.finished_at.is_some() {
        return false;
    }
    if job.runner.is_empty() || job.lease_until < now || job.runner == runner_id() {
        return true;
    }
    // One process owns an embedded store: another's lease is a dead one's.
    !state.store.is_shared()
        && job
            .runner
            .split_once('-')
            .is_some_and(|(pid, _)| pid != std::process::id().to_string())
}

/// Starts a rewrap job; 409 while one runs.
#[utoipa::path(post, path = "/v1/keys/rewrap", tag = "keys", operation_id = "start_rewrap",
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Started; its progress", body = RewrapProgress),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: a rewrap is running", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn start(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
) -> Result<(StatusCode, Json<RewrapProgress>), ApiError> {
    state
        .authorize(&caller, Operation::KeysRewrap, &ctx)
        .await?;
    let now = state.clock.now().unix_timestamp();
    let started_by = caller.principal().id.clone();
    let new = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || state.new_job(&started_by))
            .await
            .map_err(|_| ApiError::Internal)??
    };
    let Some((job, change)) = new else {
        return Err(ApiError::Conflict(
            "A rewrap is running; GET /v1/keys/rewrap reports its progress.",
        ));
    };
    let event = AuditEvent {
        reason: Some("started".into()),
        ..ctx
            .event(&caller.principal().id, "key.rewrap", Outcome::Allowed)
            .target(job.id.clone())
    };
    state.commit(event, change).await?;
    state.wake_rewrap();
    Ok((
        StatusCode::ACCEPTED,
        Json(RewrapProgress::of(Some(&job), now)),
    ))
}

/// The rewrap's progress: done, remaining, rate, started_at, eta.
#[utoipa::path(get, path = "/v1/keys/rewrap", tag = "keys", operation_id = "rewrap_progress",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Progress of the last rewrap", body = RewrapProgress),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn progress(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
) -> Result<Json<RewrapProgress>, ApiError> {
    state.authorize(&caller, Operation::KeysRead, &ctx).await?;
    let job = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || read_job(&state))
            .await
            .map_err(|_| ApiError::Internal)??
    };
    state
        .record(
            ctx.event(&caller.principal().id, "key.read", Outcome::Allowed)
                .target("rewrap"),
        )
        .await?;
    Ok(Json(RewrapProgress::of(
        job.as_ref().map(|(job, _)| job),
        state.clock.now().unix_timestamp(),
    )))
}

/// Destroys a KEK version that no DEK uses any more.
#[utoipa::path(delete, path = "/v1/keys/{purpose}/versions/{version}", tag = "keys",
    operation_id = "destroy_key_version",
    security(("bearer" = [])),
    params(
        ("purpose" = super::keys::KeyPurpose, Path, description = "The KEK family"),
        ("version" = u32, Path, description = "The version to destroy"),
    ),
    responses(
        (status = 204, description = "Destroyed: its wrapped key is deleted from the store"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no such purpose or version", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: the newest version, or DEKs still use it", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn destroy(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
    Path((purpose, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .authorize(&caller, Operation::KeysDestroy, &ctx)
        .await?;
    let purpose = Purpose::parse(&purpose).ok_or(ApiError::NotFound)?;
    let version: u32 = version.parse().map_err(|_| ApiError::NotFound)?;
    let event = ctx
        .event(&caller.principal().id, "key.destroy", Outcome::Allowed)
        .target(format!("kek/{}/{version}", purpose.as_str()));
    let state2 = state.clone();
    let refusal = event.clone();
    let destroyed =
        tokio::task::spawn_blocking(move || destroy_version(&state2, purpose, version, event))
            .await
            .map_err(|_| ApiError::Internal)?;
    match destroyed {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        // A refusal is on the record too (what was tried, and why not).
        Err(e @ (ApiError::Conflict(_) | ApiError::NotFound)) => {
            let why = match &e {
                ApiError::Conflict(why) => *why,
                _ => "no such version",
            };
            state
                .record(AuditEvent {
                    outcome: Outcome::Error,
                    reason: Some(why.into()),
                    ..refusal
                })
                .await?;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// Destroys `version` of `purpose` when no entry uses it, with `event`
/// in the same transaction. Blocking: it reads every entry holding a DEK.
pub fn destroy_version(
    state: &AppState,
    purpose: Purpose,
    version: u32,
    event: AuditEvent,
) -> Result<(), ApiError> {
    // Read from the store: another node's rotations and destructions count.
    let metadata = state.keyring.kek_metadata()?;
    match metadata
        .iter()
        .find(|m| m.purpose == purpose && m.version == version)
    {
        None => return Err(ApiError::NotFound),
        Some(m) if m.active => return Err(ApiError::Conflict(NEWEST)),
        Some(_) => {}
    }
    // A rewrap batch may be moving DEKs onto a version this one was
    // judged unused against: never while a job runs, and the job's state
    // is a precondition of the destruction.
    let job = read_job(state)?;
    if job
        .as_ref()
        .is_some_and(|(job, _)| job.finished_at.is_none())
    {
        return Err(ApiError::Conflict(
            "A rewrap is running; destroy the version once it has finished.",
        ));
    }
    let job_as_read = job.map(|(_, bytes)| bytes);
    // A write that took this version just before it was replaced may still
    // be on its way to the store: its successor must be older than the
    // grace (`keys.destroy_grace_seconds`).
    let successor = metadata
        .iter()
        .filter(|m| m.purpose == purpose && m.version > version)
        .min_by_key(|m| m.version)
        .ok_or(ApiError::Conflict(NEWEST))?;
    let replaced_at =
        crate::clock::parse_rfc3339(&successor.created_at).ok_or(ApiError::Integrity)?;
    if state.clock.now() - replaced_at < state.settings.kek_destroy_grace {
        return Err(ApiError::Conflict(
            "The version that replaced this one is younger than keys.destroy_grace_seconds: writes that took this version before the rotation may still be in flight; try again later.",
        ));
    }
    if version_in_use(state, purpose, version)? {
        return Err(ApiError::Conflict(
            "DEKs are still wrapped under this KEK version; POST /v1/keys/rewrap moves them.",
        ));
    }
    let change = AuditedChange::new(&state.audit, event);
    match state.keyring.destroy_version_with(purpose, version, &|tx| {
        change.commit(tx.merge(Transaction::new().expect(JOB_KEY, job_as_read.clone())))
    }) {
        Ok(()) => {
            tracing::info!(purpose = purpose.as_str(), version, "KEK version destroyed");
            Ok(())
        }
        Err(KeyringError::NoSuchVersion) => Err(ApiError::NotFound),
        Err(KeyringError::NewestVersion) => Err(ApiError::Conflict(NEWEST)),
        Err(e) => Err(change.refusal(e)),
    }
}

/// Why the newest version is never destroyed.
const NEWEST: &str =
    "The newest KEK version wraps new DEKs; rotate first, rewrap, then destroy it.";

/// Whether any entry's DEK is wrapped under `version` of `purpose`; an
/// entry that cannot be read counts as using it (it might).
fn version_in_use(state: &AppState, purpose: Purpose, version: u32) -> Result<bool, ApiError> {
    let mut used = false;
    each_entry(state, |holder, key, value| {
        match holder.wrapped_under(state, key, value) {
            Ok(Some(under)) => used = under == (purpose, version),
            Ok(None) => {}
            Err(ApiError::Sealed) => return Err(ApiError::Sealed),
            Err(_) => {
                tracing::warn!(
                    key = %String::from_utf8_lossy(key),
                    "an entry holding a DEK cannot be read; the KEK versions it may use are kept"
                );
                used = true;
            }
        }
        Ok(if used { Walk::Stop } else { Walk::Go })
    })?;
    Ok(used)
}

/// Entries read per page when counting or checking.
const SCAN_PAGE: usize = 1000;
/// Bytes of entries read per batch at most (beyond the first entry).
const BATCH_BYTES: usize = 8 << 20;

/// Counts the entries a rewrap reads.
fn count_entries(state: &AppState) -> Result<u64, ApiError> {
    let mut total = 0u64;
    each_entry(state, |_, _, _| {
        total += 1;
        Ok(Walk::Go)
    })?;
    Ok(total)
}

/// Whether a walk goes on.
enum Walk {
    Go,
    Stop,
}

/// Calls `visit` with every entry that may hold a wrapped DEK, holder by
/// holder, a page at a time, until it says stop.
fn each_entry(
    state: &AppState,
    mut visit: impl FnMut(Holder, &[u8], &[u8]) -> Result<Walk, ApiError>,
) -> Result<(), ApiError> {
    for holder in Holder::ALL {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = state
                .store
                .scan(holder.prefix(), after.as_deref(), SCAN_PAGE)?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = Some(last.clone());
            for (key, value) in &page {
                if let Walk::Stop = visit(holder, key, value)? {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

impl AppState {
    /// A new job started by `by` and the write that stores it (on the
    /// condition that the stored job is still the one read); `None` while
    /// one runs.
    fn new_job(&self, by: &str) -> Result<Option<(Job, Transaction)>, ApiError> {
        let stored = read_job(self)?;
        if stored
            .as_ref()
            .is_some_and(|(job, _)| job.finished_at.is_none())
        {
            return Ok(None);
        }
        let now = self.clock.now().unix_timestamp();
        let job = Job {
            id: format!(
                "rewrap_{}",
                hex::encode(crate::crypto::random_array::<12>().map_err(KeyringError::from)?)
            ),
            started_at: now,
            started_by: by.to_owned(),
            finished_at: None,
            phase: 0,
            after: None,
            examined: 0,
            rewrapped: 0,
            failed: 0,
            total: None,
            resumed_at: now,
            examined_at_resume: 0,
            runner: String::new(),
            lease_until: 0,
        };
        let change = Transaction::new()
            .expect(JOB_KEY, stored.map(|(_, bytes)| bytes))
            .put(JOB_KEY, seal_job(self, &job)?);
        Ok(Some((job, change)))
    }

    /// Starts a rewrap as `system` (audited with `why`) unless one runs.
    /// Blocking.
    pub(crate) fn start_rewrap_now(&self, why: &str) -> Result<(), ApiError> {
        let Some((job, change)) = self.new_job("system")? else {
            return Ok(());
        };
        let audited = AuditedChange::new(
            &self.audit,
            AuditEvent {
                reason: Some(format!("started: {why}")),
                ..AuditEvent::new("system", "key.rewrap", Outcome::Allowed).target(job.id)
            },
        );
        audited
            .commit(change)
            .map_err(|e| audited.refusal(KeyringError::Store(e)))
    }
}

/// The one place of a rewrap runner in this process: held while a runner
/// works, released when it is dropped.
pub(crate) struct RunnerPlace;

impl RunnerPlace {
    /// The place if it is free now.
    fn try_take() -> Option<Self> {
        (!RUNNING.swap(true, Ordering::SeqCst)).then_some(Self)
    }

    /// The place, waiting for the runner that holds it to stop.
    pub(crate) fn take() -> Self {
        loop {
            if let Some(place) = Self::try_take() {
                return place;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RunnerPlace {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::SeqCst);
    }
}

/// What one step of the runner did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A batch was done; there is more.
    Batch,
    /// The job finished (audited).
    Finished,
    /// Nothing to do here: no job, finished, or another runner holds it.
    Idle,
}

/// Whether a runner is working in this process.
static RUNNING: AtomicBool = AtomicBool::new(false);
/// Whether this process runs jobs in the background ([`spawn_runner`]:
/// `serve` and `dev`); tests drive [`AppState::rewrap_step`] themselves.
static BACKGROUND: AtomicBool = AtomicBool::new(false);

impl AppState {
    /// Runs the rewrap job (if one waits and this process may take it) on
    /// a blocking thread, until it finishes, the vault is sealed or another
    /// runner takes it. Returns at once when a runner already works here.
    pub(crate) fn wake_rewrap(&self) {
        if !BACKGROUND.load(Ordering::SeqCst) || self.keyring.is_sealed() {
            return;
        }
        let Some(place) = RunnerPlace::try_take() else {
            return;
        };
        let state = self.clone();
        let spawned = std::thread::Builder::new()
            .name("strongroom-rewrap".into())
            .spawn(move || {
                let _place = place;
                state.run_rewrap();
            });
        if let Err(e) = spawned {
            tracing::error!(error = ?e, "cannot start the rewrap runner");
        }
    }

    fn run_rewrap(&self) {
        if let Err(e) = self.drive_rewrap(false) {
            tracing::error!(error = ?e, "the rewrap runner stopped");
        }
    }

    /// Runs the job batch by batch, throttled to its duty, until it is
    /// finished (or, unless `wait_for_others`, until another runner holds
    /// it). The caller holds the [`RunnerPlace`]. Blocking.
    fn drive_rewrap(&self, wait_for_others: bool) -> Result<(), ApiError> {
        let duty = self.settings.rewrap.duty_percent.clamp(1, 100);
        loop {
            let began = Instant::now();
            match self.rewrap_step() {
                Ok(Step::Batch) => {}
                Ok(Step::Finished) => return Ok(()),
                Ok(Step::Idle) => {
                    if !wait_for_others || self.rewrap_progress()?.state != "running" {
                        return Ok(());
                    }
                    // Another node's lease: wait for it.
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
                Err(ApiError::Sealed) => return Err(ApiError::Sealed),
                Err(e) => {
                    tracing::error!(error = ?e, "rewrap batch failed; retrying in 5 s");
                    std::thread::sleep(Duration::from_secs(5));
                    continue;
                }
            }
            std::thread::sleep(began.elapsed() * (100 - duty) / duty);
        }
    }

    /// Finishes any job that runs, then starts one as `system` (audited
    /// with `why`) and runs it to its end on this thread, throttled like
    /// the runner: afterwards every DEK is under the newest versions as of
    /// the call. Blocking.
    pub(crate) fn rewrap_to_end(&self, why: &str) -> Result<(), ApiError> {
        let _place = RunnerPlace::take();
        // A job started before the caller's rotation moves nothing past
        // its cursor onto the new versions: it ends first.
        self.drive_rewrap(true)?;
        self.start_rewrap_now(why)?;
        self.drive_rewrap(true)
    }

    /// One batch of the rewrap job (public for tests and the CLI's
    /// offline use): reads up to `keys.rewrap_batch` entries after the
    /// cursor and moves their DEKs, with the cursor, in one transaction.
    pub fn rewrap_step(&self) -> Result<Step, ApiError> {
        let now = self.clock.now().unix_timestamp();
        let Some((mut job, stored)) = read_job(self)? else {
            return Ok(Step::Idle);
        };
        if !may_take(self, &job, now) {
            return Ok(Step::Idle);
        }
        if job.runner != runner_id() {
            job.runner = runner_id().to_owned();
            job.resumed_at = now;
            job.examined_at_resume = job.examined;
        }
        job.lease_until = now.saturating_add(LEASE_SECONDS);
        if job.total.is_none() {
            job.total = Some(count_entries(self)?);
        }
        // Rotations made by another node count from this batch on.
        self.keyring.newest_versions()?;
        let Some(holder) = Holder::ALL.get(job.phase).copied() else {
            return self.finish_rewrap(job, stored).map(|()| Step::Finished);
        };
        let after = match &job.after {
            Some(hex_key) => Some(hex::decode(hex_key).map_err(|_| ApiError::Integrity)?),
            None => None,
        };
        let page = self.store.scan(
            holder.prefix(),
            after.as_deref(),
            self.settings.rewrap.batch.max(1),
        )?;
        if page.is_empty() {
            job.phase += 1;
            job.after = None;
            return self.save_job(&job, stored).map(|()| Step::Batch);
        }
        let mut writes = Vec::new();
        let mut bytes = 0usize;
        for (key, value) in &page {
            // A batch's transaction stays small whatever its entries hold
            // (a kept answer may be 512 KiB): it ends after BATCH_BYTES.
            if bytes >= BATCH_BYTES {
                break;
            }
            bytes += key.len() + value.len();
            job.after = Some(hex::encode(key));
            job.examined += 1;
            match holder.rewrap(self, key, value) {
                Ok(Some(tx)) => writes.push((key.clone(), tx)),
                Ok(None) => {}
                Err(ApiError::Sealed) => return Err(ApiError::Sealed),
                Err(e) => {
                    job.failed += 1;
                    tracing::warn!(
                        key = %String::from_utf8_lossy(key),
                        error = ?e,
                        "rewrap: an entry holding a DEK cannot be read; it is left as it is"
                    );
                }
            }
        }
        let moved = writes.len() as u64;
        job.rewrapped += moved;
        let mut batch = Transaction::new()
            .expect(JOB_KEY, Some(stored.clone()))
            .put(JOB_KEY, seal_job(self, &job)?);
        let mut keys = Vec::with_capacity(writes.len());
        for (key, tx) in writes {
            batch = batch.merge(tx);
            keys.push(key);
        }
        match self.store.commit(batch) {
            Ok(()) => Ok(Step::Batch),
            Err(StoreError::Conflict) => {
                // An entry changed under the batch (a write, an erasure) or
                // another runner took the job: one at a time, each entry
                // read again.
                job.rewrapped -= moved;
                self.rewrap_one_by_one(job, stored, holder, &keys)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The batch's entries one at a time, each read again (a conflict
    /// there means it was rewritten or erased since: a write uses the
    /// newest KEK, so nothing is left behind), then the cursor, on the
    /// condition that no other runner moved it meanwhile.
    fn rewrap_one_by_one(
        &self,
        mut job: Job,
        stored: Vec<u8>,
        holder: Holder,
        keys: &[Vec<u8>],
    ) -> Result<Step, ApiError> {
        for key in keys {
            let Some(value) = self.store.get(key)? else {
                continue;
            };
            if let Some(tx) = holder.rewrap(self, key, &value)? {
                match self.store.commit(tx) {
                    Ok(()) => job.rewrapped += 1,
                    Err(StoreError::Conflict) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.save_job(&job, stored).map(|()| Step::Batch)
    }

    fn save_job(&self, job: &Job, stored: Vec<u8>) -> Result<(), ApiError> {
        match self.store.commit(
            Transaction::new()
                .expect(JOB_KEY, Some(stored))
                .put(JOB_KEY, seal_job(self, job)?),
        ) {
            Ok(()) => Ok(()),
            // Another runner took the job.
            Err(StoreError::Conflict) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn finish_rewrap(&self, mut job: Job, stored: Vec<u8>) -> Result<(), ApiError> {
        job.finished_at = Some(self.clock.now().unix_timestamp());
        job.runner = String::new();
        let event = AuditEvent {
            reason: Some(format!(
                "finished: {} entries read, {} rewrapped, {} unreadable",
                job.examined, job.rewrapped, job.failed
            )),
            ..AuditEvent::new("system", "key.rewrap", Outcome::Allowed).target(job.id.clone())
        };
        let change = Transaction::new()
            .expect(JOB_KEY, Some(stored))
            .put(JOB_KEY, seal_job(self, &job)?);
        match self.audit.record_with(event, change) {
            Ok(_) => {
                tracing::info!(
                    job = %job.id,
                    read = job.examined,
                    rewrapped = job.rewrapped,
                    unreadable = job.failed,
                    "rewrap finished"
                );
                Ok(())
            }
            Err(AuditError::Conflict) => Ok(()),
            Err(e) => Err(super::audit_failure(e)),
        }
    }

    /// The rewrap's progress, read from the store (for the CLI and tests).
    pub fn rewrap_progress(&self) -> Result<RewrapProgress, ApiError> {
        let job = read_job(self)?;
        Ok(RewrapProgress::of(
            job.as_ref().map(|(job, _)| job),
            self.clock.now().unix_timestamp(),
        ))
    }
}

/// Keeps the rewrap going: wakes the runner every `every` (after a
/// restart, after an unseal, when another node's lease ran out). Spawned by
/// `serve` and `dev`.
pub fn spawn_runner(state: AppState, every: Duration) -> tokio::task::JoinHandle<()> {
    BACKGROUND.store(true, Ordering::SeqCst);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            state.wake_rewrap();
        }
    })
}
