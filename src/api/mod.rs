//! The HTTP API (axum): routing, request ids, the sealed gate, and the
//! mapping of every error to problem+json.
//!
//! This module owns HTTP and nothing else: it parses, authorises through
//! `access`, calls the domain modules and shapes responses. It must never
//! hold key material beyond a request, nor put a request body in a log.

mod audit;
mod auth;
mod backup;
mod canaries;
mod collect;
mod compliance;
pub mod epoch;
mod error;
mod extract;
mod idempotency;
mod keys;
mod limits;
mod metrics;
mod openapi;
mod principals;
mod records;
mod relay;
pub mod rewrap;
mod subjects;
pub mod sweeper;
mod sys;
mod tokens;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, header::HeaderName};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};

pub use error::{ApiError, FieldError, Problem};
pub use extract::{ApiJson, Caller, JsonBody, RequestContext, parse_json};
pub use limits::SlidingWindow;
pub use metrics::{PROMETHEUS_TEXT, listener_router as metrics_listener_router};
pub use openapi::openapi_document;

use crate::access::{AccessRequests, LockoutPolicy, Operation, PrincipalDirectory, SessionPolicy};
use crate::audit::{AuditEntry, AuditError, AuditEvent, AuditLog, Outcome};
use crate::clock::Clock;
use crate::crypto::{PasswordPepper, PasswordPolicy};
use crate::keyring::Keyring;
use crate::store::{Store, Transaction};
use crate::vault::Vault;

/// Paths that work while sealed. Every other path answers 503 `sealed`.
pub const AVAILABLE_WHILE_SEALED: [&str; 3] =
    ["/v1/sys/health", "/v1/sys/unseal", "/v1/openapi.json"];

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How far back search misses are counted for the burst warning.
const SEARCH_MISS_WINDOW: time::Duration = time::Duration::minutes(10);

/// Server settings beyond the keyring's; validated by `config`.
#[derive(Debug, Clone)]
pub struct AppSettings {
    pub body_limit_bytes: usize,
    pub unseal_failures_per_minute: u32,
    pub password_policy: PasswordPolicy,
    pub sessions: SessionPolicy,
    pub lockout: LockoutPolicy,
    pub audit_checkpoint_every: u64,
    /// Password hashes computed at once; the rest wait (bounded).
    pub password_workers: usize,
    /// Reveals one officer may make in a sliding hour.
    pub reveals_per_hour: usize,
    /// Searches by PAN or national id one officer may make in a sliding
    /// hour, misses included.
    pub sensitive_searches_per_hour: usize,
    /// Search misses by one officer within 10 minutes that log a WARN line.
    pub search_miss_alert: usize,
    /// How long an approved access request lasts.
    pub grant_lifetime: time::Duration,
    /// Publishable keys' rate limits and the ephemeral CVCs.
    pub collect: crate::config::CollectSettings,
    /// The relay's outbound client (config `[relay]`).
    pub relay: crate::relay::upstream::RelaySettings,
    /// Canary alarms' webhook and canary cards' IIN (config `[canaries]`).
    pub canaries: crate::canary::CanarySettings,
    /// The data directory: where `GET /v1/sys/backup` spools its snapshot
    /// (an unnamed file) and whose engine it names. `None` (tests): the
    /// system's temporary directory, engine unnamed.
    pub data_dir: Option<std::path::PathBuf>,
    /// Whether the console's cookies say `Secure`: always, except on the
    /// plain-HTTP `dev` server (a TLS-terminating proxy in front of
    /// `serve` still gives the browser HTTPS).
    pub console_secure_cookie: bool,
    /// How the background rewrap paces itself (`[keys]`).
    pub rewrap: rewrap::RewrapSettings,
    /// How long an erasure epoch lasts (`keys.erasure_epoch_hours`);
    /// `None`: epochs are off.
    pub erasure_epoch: Option<std::time::Duration>,
    /// How old the version replacing a KEK version must be before that
    /// one may be destroyed (`keys.destroy_grace_seconds`): writes that
    /// took it just before the rotation have reached the store by then.
    pub kek_destroy_grace: time::Duration,
    /// Retention per record type and the sweeper's pace (config
    /// `[retention]`; default: no automatic erasure).
    pub retention: crate::lifecycle::RetentionSettings,
}

impl Default for AppSettings {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            body_limit_bytes: crate::config::DEFAULT_BODY_LIMIT,
            unseal_failures_per_minute: crate::config::DEFAULT_UNSEAL_FAILURES_PER_MINUTE,
            password_policy: PasswordPolicy::owasp(),
            sessions: SessionPolicy::default(),
            lockout: LockoutPolicy::default(),
            audit_checkpoint_every: 1000,
            // Leave at least half the cores to everything else.
            password_workers: (cores / 2).max(1),
            reveals_per_hour: 30,
            sensitive_searches_per_hour: usize::try_from(
                crate::config::DEFAULT_SENSITIVE_SEARCHES_PER_HOUR,
            )
            .unwrap_or(usize::MAX),
            search_miss_alert: crate::config::DEFAULT_SEARCH_MISS_ALERT,
            grant_lifetime: time::Duration::minutes(30),
            collect: crate::config::CollectSettings::default(),
            relay: crate::relay::upstream::RelaySettings::default(),
            canaries: crate::canary::CanarySettings::default(),
            data_dir: None,
            console_secure_cookie: true,
            rewrap: rewrap::RewrapSettings::default(),
            erasure_epoch: Some(std::time::Duration::from_secs(
                3600 * u64::from(crate::config::DEFAULT_ERASURE_EPOCH_HOURS),
            )),
            kek_destroy_grace: time::Duration::seconds(i64::from(
                crate::config::DEFAULT_DESTROY_GRACE_SECONDS,
            )),
            retention: crate::lifecycle::RetentionSettings::default(),
        }
    }
}

/// Runs Argon2id password checks on the blocking pool, a few at a time, so
/// a flood of logins can neither exhaust memory (each check takes the
/// policy's memory cost) nor take every core.
pub struct PasswordPool {
    permits: Arc<tokio::sync::Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl PasswordPool {
    fn new(workers: usize) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(workers.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting: 64 * workers.max(1),
        }
    }

    /// Runs `work` when a worker is free; 429 when too many already wait.
    /// A caller that is dropped while it waits (a client that hung up)
    /// leaves the queue: its place is given back by a guard, not by code
    /// after the wait that would never run. Once started, `work` holds its
    /// worker until it ends, whether or not the caller still waits.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = {
            let _place =
                QueuePlace::take(&self.waiting, self.max_waiting).ok_or(ApiError::RateLimited {
                    retry_after_secs: 1,
                })?;
            Arc::clone(&self.permits).acquire_owned().await
        };
        let permit = permit.map_err(|_| ApiError::Internal)?;
        tokio::task::spawn_blocking(move || {
            let _worker = permit;
            work()
        })
        .await
        .map_err(|_| ApiError::Internal)
    }
}

/// A place among a pool's waiting callers, given back when dropped.
struct QueuePlace<'a>(&'a AtomicUsize);

impl<'a> QueuePlace<'a> {
    /// A place, unless `max` callers already wait.
    fn take(waiting: &'a AtomicUsize, max: usize) -> Option<Self> {
        waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(waiting))
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    pub keyring: Arc<Keyring>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub principals: PrincipalDirectory,
    pub audit: AuditLog,
    pub vault: Vault,
    pub access_requests: AccessRequests,
    /// Legal holds, closed relationships and last uses.
    pub lifecycle: crate::lifecycle::Lifecycle,
    /// Relay routes (where card data may go).
    pub relay_routes: crate::relay::routes::Routes,
    /// The relay's outbound HTTPS client.
    pub relay_upstream: crate::relay::upstream::Upstream,
    /// Canary webhook deliveries in flight (see `canaries`).
    canary_webhooks: tokio::sync::Semaphore,
    /// Places for canary webhook deliveries waiting or in flight
    /// ([`crate::canary::WEBHOOK_QUEUE`]): each delivery's task holds one.
    canary_webhook_places: Arc<tokio::sync::Semaphore>,
    /// Reveals per officer in a sliding hour, in the store: one quota
    /// across every node.
    /// Which windows are in the store (cluster-wide) and which are per
    /// node: `limits` and docs/operations.md, "Several nodes".
    pub reveals: SlidingWindow,
    pub settings: AppSettings,
    /// Failed unseal attempts in a sliding minute, in the store: guesses
    /// spread over the nodes share one budget.
    pub unseal_failures: SlidingWindow,
    /// One unseal at a time: a passphrase costs 64 MiB of Argon2id memory.
    pub unseal_work: tokio::sync::Semaphore,
    pub passwords: PasswordPool,
    /// A hash checked for unknown usernames, so they cost what known ones do.
    dummy_password_hash: String,
    /// Audited refusals of each locked username: one a minute (see `auth`).
    /// Per node: it bounds what this node writes to the log for refusals
    /// that cost nothing (N nodes: N a minute, still bounded); the lock
    /// itself is in the store.
    lock_notices: SlidingWindow,
    /// Audited refusals of a certificate-bound key without its certificate:
    /// at most [`CERT_REFUSALS_AUDITED_PER_MINUTE`] a minute per principal,
    /// so a stolen bound key cannot make every request a durable write.
    /// Per node, like `lock_notices`: the refusal itself never depends on it.
    cert_refusals: SlidingWindow,
    /// Usernames whose password is being checked: one check at a time each.
    logins_in_flight: limits::OneAtATime,
    /// Searches by PAN or national id per officer in a sliding hour, in the
    /// store: one quota across every node.
    sensitive_searches: SlidingWindow,
    /// Search misses per officer in a sliding 10 minutes, watched for bursts.
    /// Per node: it only raises a WARN line; every miss is in the audit log
    /// (cluster-wide) and the PAN / national-id quota is in the store.
    search_misses: SlidingWindow,
    /// CVCs attached to cards: process memory only (docs/payment-path.md,
    /// "Ephemeral CVC").
    pub cvcs: crate::cvc::CvcStore,
    /// Requests per publishable key (by principal id) in a sliding minute,
    /// in the store.
    collect_per_key: SlidingWindow,
    /// Requests with publishable keys per client address in a sliding
    /// minute, in the store (under a digest of the address).
    collect_per_address: SlidingWindow,
    /// Places for scrape reads of the store (see `sys::probe_store`).
    store_probes: Arc<tokio::sync::Semaphore>,
    /// The readiness probe's own place: scrapes of the unauthenticated
    /// metrics listener can take every other one, never this.
    ready_probe: Arc<tokio::sync::Semaphore>,
    /// When the last readiness probe of the store answered, and whether it
    /// was ready (see `sys::ready`).
    last_probe: std::sync::Mutex<Option<(std::time::Instant, bool)>>,
    /// When a scrape last read the audit head, and its seq (see
    /// `metrics::exposition`).
    last_head: std::sync::Mutex<Option<(std::time::Instant, u64)>>,
}

impl std::ops::Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        keyring: Arc<Keyring>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        settings: AppSettings,
    ) -> Self {
        crate::metrics::install();
        let principals =
            PrincipalDirectory::new(Arc::clone(&store), Arc::clone(&keyring), Arc::clone(&clock));
        let audit = AuditLog::new(
            Arc::clone(&store),
            Arc::clone(&keyring),
            Arc::clone(&clock),
            settings.audit_checkpoint_every,
        );
        // Made under a throw-away pepper (this may run while sealed): it
        // costs what a real hash costs and never matches.
        let dummy_password_hash = PasswordPepper::random()
            .and_then(|pepper| {
                settings
                    .password_policy
                    .hash(&pepper, "strongroom: no such user")
            })
            .unwrap_or_default();
        let vault = Vault::new(Arc::clone(&store), Arc::clone(&keyring), Arc::clone(&clock));
        let access_requests = AccessRequests::new(
            Arc::clone(&store),
            Arc::clone(&keyring),
            Arc::clone(&clock),
            settings.grant_lifetime,
        );
        let cvcs = crate::cvc::CvcStore::new(
            Arc::clone(&clock),
            time::Duration::seconds(i64::from(settings.collect.cvc_ttl_seconds)),
            usize::try_from(settings.collect.max_cvcs).unwrap_or(usize::MAX),
        );
        let relay_routes = crate::relay::routes::Routes::new(
            Arc::clone(&store),
            Arc::clone(&keyring),
            Arc::clone(&clock),
        );
        let lifecycle = crate::lifecycle::Lifecycle::new(
            Arc::clone(&store),
            Arc::clone(&keyring),
            Arc::clone(&clock),
        );
        Self(Arc::new(AppInner {
            vault,
            access_requests,
            lifecycle,
            relay_routes,
            relay_upstream: crate::relay::upstream::Upstream::new(settings.relay.clone()),
            canary_webhooks: tokio::sync::Semaphore::new(crate::canary::WEBHOOK_CONCURRENCY),
            canary_webhook_places: Arc::new(tokio::sync::Semaphore::new(
                crate::canary::WEBHOOK_QUEUE,
            )),
            reveals: SlidingWindow::shared(
                "reveals",
                settings.reveals_per_hour,
                time::Duration::hours(1),
                Arc::clone(&store),
            ),
            keyring,
            clock,
            principals,
            audit,
            unseal_failures: SlidingWindow::shared(
                "unseal_failures",
                usize::try_from(settings.unseal_failures_per_minute).unwrap_or(usize::MAX),
                time::Duration::minutes(1),
                Arc::clone(&store),
            ),
            unseal_work: tokio::sync::Semaphore::new(1),
            passwords: PasswordPool::new(settings.password_workers),
            dummy_password_hash,
            lock_notices: SlidingWindow::new(1, time::Duration::minutes(1)),
            cert_refusals: SlidingWindow::new(
                CERT_REFUSALS_AUDITED_PER_MINUTE,
                time::Duration::minutes(1),
            ),
            logins_in_flight: limits::OneAtATime::default(),
            sensitive_searches: SlidingWindow::shared(
                "sensitive_searches",
                settings.sensitive_searches_per_hour,
                time::Duration::hours(1),
                Arc::clone(&store),
            ),
            search_misses: SlidingWindow::new(usize::MAX, SEARCH_MISS_WINDOW),
            cvcs,
            collect_per_key: SlidingWindow::shared(
                "collect_key",
                usize::try_from(settings.collect.per_key_per_minute).unwrap_or(usize::MAX),
                time::Duration::minutes(1),
                Arc::clone(&store),
            ),
            collect_per_address: SlidingWindow::shared(
                "collect_address",
                usize::try_from(settings.collect.per_address_per_minute).unwrap_or(usize::MAX),
                time::Duration::minutes(1),
                Arc::clone(&store),
            ),
            store_probes: Arc::new(tokio::sync::Semaphore::new(sys::STORE_PROBES)),
            ready_probe: Arc::new(tokio::sync::Semaphore::new(1)),
            last_probe: std::sync::Mutex::new(None),
            last_head: std::sync::Mutex::new(None),
            // Last: the windows above share it.
            store,
            settings,
        }))
    }

    /// Writes `change` and its audit entry in one durable transaction (group
    /// committed with concurrent requests, off the async runtime). A change
    /// that conflicts is 409 (and its attempt is audited on its own); an
    /// entry that cannot be written is 503 `audit_unavailable`, and nothing
    /// changed.
    pub async fn commit(
        &self,
        event: AuditEvent,
        change: Transaction,
    ) -> Result<AuditEntry, ApiError> {
        let attempt = AuditEvent {
            outcome: Outcome::Error,
            reason: Some("conflict".into()),
            ..event.clone()
        };
        match self.try_commit(event, change).await? {
            Some(entry) => Ok(entry),
            None => {
                self.try_commit(attempt, Transaction::new()).await?;
                Err(ApiError::Conflict(
                    "The change conflicts with the stored state.",
                ))
            }
        }
    }

    /// Creates a service principal outside any request (init, dev), audited
    /// with `actor`. Blocking.
    pub fn create_service_now(
        &self,
        actor: &str,
        name: &str,
        roles: Vec<crate::access::Role>,
    ) -> Result<crate::access::ApiKey, ApiError> {
        let keys = self.keyring.keys()?;
        let (principal, key, tx) =
            self.principals
                .prepare_service(&*keys.credential_key()?, name, roles)?;
        let event = AuditEvent {
            reason: Some(principals::creation_note(actor, &principal)),
            ..AuditEvent::new(actor, "principal.create", Outcome::Allowed).target(principal.id)
        };
        self.audit.record_with(event, tx).map_err(audit_failure)?;
        Ok(key)
    }

    /// Creates a staff principal outside any request (dev), audited with
    /// `actor`. Blocking (hashes the password).
    pub fn create_staff_now(
        &self,
        actor: &str,
        name: &str,
        roles: Vec<crate::access::Role>,
        password: &str,
    ) -> Result<(), ApiError> {
        let keys = self.keyring.keys()?;
        let hash = self
            .settings
            .password_policy
            .hash(&*keys.password_pepper()?, password)
            .map_err(|_| ApiError::Internal)?;
        drop(keys);
        let (principal, tx) = self.principals.prepare_staff(name, roles, hash)?;
        let event = AuditEvent {
            reason: Some(principals::creation_note(actor, &principal)),
            ..AuditEvent::new(actor, "principal.create", Outcome::Allowed).target(principal.id)
        };
        self.audit.record_with(event, tx).map_err(audit_failure)?;
        Ok(())
    }

    /// Signs the audit head, then drops every key: on seal and on shutdown.
    /// The signature is best effort, for at most [`SEAL_CHECKPOINT_WAIT`]:
    /// a store that hangs (a dying disk) must not keep the keys in memory.
    pub fn seal(&self) {
        let audit = self.audit.clone();
        let (done, signed) = std::sync::mpsc::channel();
        let checkpoint = std::thread::Builder::new()
            .name("seal-checkpoint".into())
            .spawn(move || drop(done.send(audit.checkpoint())));
        match checkpoint.map(|_| signed.recv_timeout(SEAL_CHECKPOINT_WAIT)) {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(e))) => {
                tracing::error!(error = %e, "audit checkpoint before sealing failed");
            }
            Ok(Err(_)) => tracing::error!(
                "audit checkpoint before sealing did not finish in time; sealing without it"
            ),
            Err(e) => tracing::error!(error = %e, "no thread for the audit checkpoint; sealing"),
        }
        self.keyring.seal();
        // Every held CVC goes with the keys, and the CVC key is replaced.
        // After the seal, so a CVC attached meanwhile fails its audit entry
        // (no key to write it) and is taken back, or is cleared here.
        self.cvcs.clear();
    }

    /// Like [`AppState::commit`], but a conflict comes back as `Ok(None)`
    /// and is not audited, for callers that retry with fresh values.
    pub async fn try_commit(
        &self,
        event: AuditEvent,
        change: Transaction,
    ) -> Result<Option<AuditEntry>, ApiError> {
        match self.audit.record_many_async(vec![(event, change)]).await {
            Err(AuditError::Conflict) => Ok(None),
            Ok(mut entries) => entries.pop().map(Some).ok_or(ApiError::Internal),
            Err(e) => Err(audit_failure(e)),
        }
    }

    /// Like [`AppState::commit_many`], but a conflict comes back as
    /// `Ok(None)` and is not audited, for callers that read again and
    /// retry (or skip).
    pub async fn try_commit_many(
        &self,
        batch: Vec<(AuditEvent, Transaction)>,
    ) -> Result<Option<Vec<AuditEntry>>, ApiError> {
        match self.audit.record_many_async(batch).await {
            Err(AuditError::Conflict) => Ok(None),
            Ok(entries) => Ok(Some(entries)),
            Err(e) => Err(audit_failure(e)),
        }
    }

    /// Writes several changes, each with its own audit entry, atomically and
    /// durably (group committed, off the async runtime).
    pub async fn commit_many(
        &self,
        batch: Vec<(AuditEvent, Transaction)>,
    ) -> Result<Vec<AuditEntry>, ApiError> {
        match self.audit.record_many_async(batch).await {
            Err(AuditError::Conflict) => Err(ApiError::Conflict(
                "The change conflicts with the stored state.",
            )),
            other => other.map_err(audit_failure),
        }
    }

    /// Records an event that changes nothing else (a read, a denial).
    pub async fn record(&self, event: AuditEvent) -> Result<AuditEntry, ApiError> {
        self.commit(event, Transaction::new()).await
    }

    /// Allows `op` for `caller`, or audits the denial and answers 403. For
    /// an operation whose request names nothing (a create, a list).
    pub async fn authorize(
        &self,
        caller: &Caller,
        op: Operation,
        ctx: &RequestContext,
    ) -> Result<(), ApiError> {
        self.authorize_on(caller, op, ctx, || Ok(Vec::new())).await
    }

    /// Allows `op` on the things the request names, or audits one denial
    /// per target (one without a target when there is none) and answers
    /// 403. `targets` (record, token, access-request or principal ids, as
    /// [`AppState::target_of`] gives them) is worked out only for a denial:
    /// an allowed request pays nothing for it. An investigator asking "who
    /// tried to reach record X?" finds every attempt.
    pub async fn authorize_on(
        &self,
        caller: &Caller,
        op: Operation,
        ctx: &RequestContext,
        targets: impl FnOnce() -> Result<Vec<Option<String>>, ApiError>,
    ) -> Result<(), ApiError> {
        if caller.principal().may(op) {
            return Ok(());
        }
        let targets = targets()?;
        let denial = ctx.event(&caller.principal().id, op.action(), Outcome::Denied);
        let batch = if targets.is_empty() {
            vec![(denial, Transaction::new())]
        } else {
            targets
                .iter()
                .map(|target| {
                    let event = AuditEvent {
                        target: target.clone(),
                        ..denial.clone()
                    };
                    (event, Transaction::new())
                })
                .collect()
        };
        self.commit_many(batch).await?;
        Err(ApiError::Forbidden)
    }

    /// How the audit log names something a request names: an id of the
    /// shape this vault issues as it is; anything else (a mistyped id, a
    /// value pasted where an id belongs, a token) only as its fingerprint,
    /// so no personal data or credential reaches an entry.
    pub fn target_of(&self, named: &str) -> Option<String> {
        if is_issued_id(named) {
            Some(named.to_owned())
        } else {
            self.audit.fingerprint(named)
        }
    }

    /// The audit target of a token a request names: the id of what it
    /// stands for when it exists (whoever owns it), else its fingerprint.
    pub fn token_target(&self, token: &str) -> Result<Option<String>, ApiError> {
        Ok(match self.vault.token(token)? {
            Some((_, record)) => Some(record.target.id().to_owned()),
            None => self.audit.fingerprint(token),
        })
    }
}

/// Refusals of one certificate-bound key without its certificate that are
/// audited in a minute; the rest are answered 401 and logged only.
pub const CERT_REFUSALS_AUDITED_PER_MINUTE: usize = 10;

/// How long a seal waits for its audit checkpoint before sealing without it.
const SEAL_CHECKPOINT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Prefixes of the ids this vault issues, each followed by 24 hex digits.
const ISSUED_ID_PREFIXES: [&str; 6] = ["card_", "bank_", "kyc_", "gen_", "ar_", "prn_"];

fn is_issued_id(text: &str) -> bool {
    crate::vault::has_issued_shape(text, &ISSUED_ID_PREFIXES)
}

/// Runs `attempt` in a task of its own and waits for it. When a client
/// hangs up, hyper drops the handler; work that must finish whole (a limit's
/// count, a check, its audit entry) goes in here, so it still does.
async fn to_the_end<T: Send + 'static>(
    attempt: impl std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(attempt)
        .await
        .map_err(|_| ApiError::Internal)?
}

/// The commit a keyring change (`rotate_with`, `destroy_version_with`,
/// `roll_epoch_with`) is written with: `event` in the same transaction,
/// durably. Blocking.
pub(crate) struct AuditedChange<'a> {
    audit: &'a AuditLog,
    event: AuditEvent,
    failure: std::sync::Mutex<Option<AuditError>>,
}

impl<'a> AuditedChange<'a> {
    pub(crate) fn new(audit: &'a AuditLog, event: AuditEvent) -> Self {
        Self {
            audit,
            event,
            failure: std::sync::Mutex::new(None),
        }
    }

    pub(crate) fn commit(&self, tx: Transaction) -> Result<(), crate::store::StoreError> {
        use crate::store::StoreError;
        match self.audit.record_with(self.event.clone(), tx) {
            Ok(_) => Ok(()),
            Err(AuditError::Conflict) => Err(StoreError::Conflict),
            Err(e) => {
                let message = e.to_string();
                *self
                    .failure
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
                Err(StoreError::Backend(message))
            }
        }
    }

    /// What the client is told of a keyring change refused with `e`.
    pub(crate) fn refusal(&self, e: crate::keyring::KeyringError) -> ApiError {
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match (e, failure) {
            (crate::keyring::KeyringError::Store(_), Some(failure)) => audit_failure(failure),
            (crate::keyring::KeyringError::Store(crate::store::StoreError::Conflict), None) => {
                ApiError::Conflict("The keys changed meanwhile; try again.")
            }
            (e, _) => e.into(),
        }
    }
}

fn audit_failure(e: AuditError) -> ApiError {
    match e {
        AuditError::Sealed => ApiError::Sealed,
        AuditError::NotDurable(_) => {
            tracing::error!(error = %e, "change applied but not made durable; request not acknowledged");
            ApiError::AuditNotDurable
        }
        e => {
            tracing::error!(error = %e, "audit entry not written; request refused");
            ApiError::AuditUnavailable
        }
    }
}

/// The request id of the request being handled (echoed or generated).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn acceptable_request_id(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let ok = !text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| text.to_owned())
}

fn new_request_id() -> String {
    crate::crypto::random_array::<16>()
        .map(hex::encode)
        .unwrap_or_else(|_| "unavailable".to_owned())
}

/// Echoes a well-formed `x-request-id` or makes one, and logs the request
/// by method, status and time only (paths may carry tokens; bodies never
/// reach the log).
pub(crate) async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(acceptable_request_id)
        .unwrap_or_else(new_request_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let started = Instant::now();
    let mut response = next.run(req).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    tracing::info!(
        request_id = %id,
        %method,
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    response
}

/// While sealed, only the paths in [`AVAILABLE_WHILE_SEALED`] are served.
async fn sealed_gate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.keyring.is_sealed() && !AVAILABLE_WHILE_SEALED.contains(&req.uri().path()) {
        return ApiError::Sealed.into_response();
    }
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The whole server: the API, and the console at `/console`, which calls
/// the API in process.
/// Starts the server's background work (the rewrap runner, the retention
/// sweeper, the erasure epoch schedule), which goes
/// on whatever the clients do. `serve` and `dev` call it once.
pub fn spawn_background(state: &AppState) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![
        rewrap::spawn_runner(state.clone(), std::time::Duration::from_secs(2)),
        // Retention and expired idempotency slots, while unsealed.
        sweeper::spawn(state.clone()),
    ];
    if let Some(period) = state.settings.erasure_epoch {
        tasks.extend(epoch::spawn_scheduler(
            state.clone(),
            period,
            std::time::Duration::from_secs(60),
        ));
    }
    tasks
}

pub fn router(state: AppState) -> Router {
    let api = api_router(state.clone());
    api.clone().merge(crate::console::router(state, api))
}

/// The API alone.
fn api_router(state: AppState) -> Router {
    let body_limit = state.settings.body_limit_bytes;
    // The POSTs that create, behind `Idempotency-Key` (their GETs pass
    // through untouched).
    let creating = Router::new()
        .route(
            "/v1/principals",
            post(principals::create).get(principals::list),
        )
        .route("/v1/records/card", post(records::create_card))
        .route(
            "/v1/records/bank_account",
            post(records::create_bank_account),
        )
        .route("/v1/records/kyc", post(records::create_kyc))
        .route(
            "/v1/access-requests",
            post(compliance::request_access).get(compliance::list_access_requests),
        )
        .route("/v1/tokens", post(tokens::create))
        .route("/v1/canaries", post(canaries::create))
        .route(
            "/v1/relay/routes",
            post(relay::create_route).get(relay::list_routes),
        )
        .route(
            "/v1/relay/{name}/{*path}",
            post(relay::invoke_post)
                .put(relay::invoke_put)
                .patch(relay::invoke_patch),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::idempotency,
        ));
    Router::new()
        .route("/v1/sys/health", get(sys::health))
        .route("/v1/sys/ready", get(sys::ready))
        .route("/v1/sys/metrics", get(metrics::metrics))
        .route("/v1/sys/unseal", post(sys::unseal))
        .route("/v1/sys/seal", post(sys::seal))
        .route("/v1/sys/backup", get(backup::backup))
        .route("/v1/openapi.json", get(openapi::serve_document))
        .route("/v1/principals/{id}", delete(principals::disable))
        .route("/v1/auth/login", post(auth::login))
        .route("/v1/auth/logout", post(auth::logout))
        .route("/v1/audit", get(audit::entries))
        .route("/v1/audit/verify", get(audit::verify))
        .route("/v1/keys", get(keys::list))
        .route("/v1/keys/{purpose}/rotate", post(keys::rotate))
        .route("/v1/keys/rewrap", post(rewrap::start).get(rewrap::progress))
        .route(
            "/v1/keys/{purpose}/versions/{version}",
            delete(rewrap::destroy),
        )
        // One static path per record type (the document then has one
        // typed body each); POST on any other `/v1/records/{id}` is 405.
        .route(
            "/v1/records/{id}",
            get(records::read)
                .patch(records::update)
                .delete(records::erase),
        )
        .route("/v1/records/{id}/reveal", post(compliance::reveal))
        .route("/v1/records/{id}/hold", post(subjects::hold_record))
        .route(
            "/v1/records/{id}/hold/release",
            post(subjects::release_record_hold),
        )
        .route(
            "/v1/subjects/{subject_ref}",
            get(subjects::read).delete(subjects::erase),
        )
        .route("/v1/subjects/{subject_ref}/close", post(subjects::close))
        .route(
            "/v1/subjects/{subject_ref}/hold",
            post(subjects::hold_subject),
        )
        .route(
            "/v1/subjects/{subject_ref}/hold/release",
            post(subjects::release_subject_hold),
        )
        .route("/v1/records/{id}/cvc", post(collect::attach_cvc))
        .route("/v1/search", post(compliance::search))
        .route(
            "/v1/access-requests/{id}/approve",
            post(compliance::approve),
        )
        .route("/v1/access-requests/{id}/deny", post(compliance::deny))
        .route("/v1/tokens/detokenize", post(tokens::detokenize))
        .route("/v1/tokens/{token}", delete(tokens::revoke))
        .route(
            "/v1/relay/routes/{name}",
            put(relay::change_route).delete(relay::delete_route),
        )
        .route(
            "/v1/relay/routes/{name}/approve",
            post(relay::approve_route),
        )
        .merge(creating)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // CORS on the collect routes only, inside the sealed gate (a sealed
        // vault cannot read which origins are allowed).
        .layer(middleware::from_fn_with_state(state.clone(), collect::cors))
        .layer(middleware::from_fn_with_state(state.clone(), sealed_gate))
        // Outside the sealed gate, so its 503 is marked too.
        .layer(middleware::from_fn(relay::mark_refusals))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(request_id))
        // Outermost: every answer is counted, by its route template.
        .layer(middleware::from_fn(metrics::track))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logins whose futures are dropped while they wait for a worker (a
    /// client that hung up) leave the waiting count as it was, so later
    /// logins are not refused as if the queue were full.
    #[tokio::test]
    async fn cancelled_waits_give_back_their_place_in_the_queue() {
        let pool = Arc::new(PasswordPool::new(1));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let busy = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.run(move || hold.recv().is_ok()).await })
        };
        while pool.permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let waiters: Vec<_> = (0..pool.max_waiting)
            .map(|_| {
                let pool = Arc::clone(&pool);
                tokio::spawn(async move { pool.run(|| true).await })
            })
            .collect();
        while pool.waiting.load(Ordering::SeqCst) < pool.max_waiting {
            tokio::task::yield_now().await;
        }
        for waiter in &waiters {
            waiter.abort();
        }
        for waiter in waiters {
            assert!(waiter.await.is_err_and(|e| e.is_cancelled()));
        }
        assert_eq!(pool.waiting.load(Ordering::SeqCst), 0);
        release.send(()).unwrap();
        assert!(busy.await.unwrap().unwrap());
        assert!(pool.run(|| true).await.unwrap());
        assert_eq!(pool.waiting.load(Ordering::SeqCst), 0);
    }
}
