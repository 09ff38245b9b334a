//! `Idempotency-Key` on the POSTs that create (docs/lifecycle.md,
//! "Idempotency keys"): the same key from the same principal with the same
//! request within 24 hours answers the first response again; the same key
//! with another request is 422 `idempotency_mismatch`; while the first is
//! still running, 409 `conflict`.
//!
//! A key is a reservation taken before the work, with a precondition (the
//! slot is absent, or expired as read), so 50 parallel retries make one
//! record. The slot names a digest of the principal and the key, never the
//! key itself; it holds the request's digest and, once answered, the
//! response sealed under a fresh DEK (`Purpose::Generic`), since an answer
//! may hold a token. The slot itself is authenticated with the state key.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::Duration;

use super::{ApiError, AppState};
use crate::keyring::{Purpose, RecordContext, SealedRecord};
use crate::store::{StoreError, Transaction};

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The document paths whose POST takes the header (the routes behind the
/// middleware in `api_router`).
pub const PATHS: [&str; 9] = [
    "/v1/records/card",
    "/v1/canaries",
    "/v1/records/bank_account",
    "/v1/records/kyc",
    "/v1/tokens",
    "/v1/principals",
    "/v1/access-requests",
    "/v1/relay/routes",
    "/v1/relay/{name}/{path}",
];
/// How long a key answers for.
pub const LIFETIME: Duration = Duration::hours(24);
/// The longest key accepted (printable ASCII).
pub const MAX_KEY_LEN: usize = 255;
pub const SLOT_PREFIX: &str = "idem/";
/// The header every replayed answer carries.
pub const REPLAYED: &str = "idempotent-replayed";

#[derive(Serialize, Deserialize)]
struct Slot {
    /// HMAC (credential key) of the SHA-256 of method, path, query,
    /// content type and body, hex.
    request: String,
    created_at: i64,
    /// The sealed answer (a `SealedRecord`, hex); `None` while running.
    answer: Option<String>,
}

impl Slot {
    /// Whether the slot is past its lifetime at unix time `now`.
    fn expired(&self, now: i64) -> bool {
        now >= self.created_at.saturating_add(LIFETIME.whole_seconds())
    }
}

#[derive(Serialize, Deserialize)]
struct Answer {
    status: u16,
    /// The answer's headers a replay gives again ([`KEPT_HEADERS`]).
    headers: Vec<(String, String)>,
    /// The body, hex.
    body: String,
}

/// Headers of a first answer that a replay carries again: what it is,
/// where it points, and whose it is (a relay's upstream answer).
const KEPT_HEADERS: [&str; 3] = ["content-type", "location", "x-strongroom-relay"];
/// The largest answer kept; a larger one gives the slot back (a retry
/// runs again).
pub const MAX_KEPT_ANSWER: usize = 256 * 1024;
/// A slot still "running" after this long is taken to be abandoned (a
/// crash, a restart mid-request) and the next request may take it over.
const ABANDONED_AFTER: Duration = Duration::minutes(5);

/// Marks an answer whose change may or may not have happened (the store
/// could not confirm a commit; an upstream that did not answer in time):
/// kept under its key like a success, so a retry with the key never runs
/// the work a second time.
#[derive(Clone, Copy, Debug)]
pub struct OutcomeUnknown;

/// The header's key: 1–255 printable ASCII characters, spaces inside
/// only (the OpenAPI document's pattern, [`KEY_PATTERN`]).
fn key_of(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    let bytes = text.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_KEY_LEN
        && bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
        && bytes.first().is_some_and(u8::is_ascii_graphic)
        && bytes.last().is_some_and(u8::is_ascii_graphic);
    ok.then_some(text)
}

/// The key's shape in the OpenAPI document.
pub const KEY_PATTERN: &str = r"^[!-~]([ -~]{0,253}[!-~])?$";

/// The principal whose keys this request may use: one its credential
/// names, that may use that credential on this connection (a
/// certificate-bound service only with one of its certificates), and that
/// is a service or a person. Found without the side effects of
/// [`super::Caller`] (no session touch, no collect limits); the handler
/// authenticates the request again, as it always does. `None` (the
/// request goes to the handler untouched, which refuses and audits what
/// it must): no credential, a refused one, an unbound connection, or a
/// publishable key, whose browser requests pass the origin check and the
/// collect limits in the handler and must never be answered from a slot.
fn principal_of(state: &AppState, req: &Request) -> Option<String> {
    let bearer = super::extract::bearer(req.headers())?;
    let keys = state.keyring.keys().ok()?;
    let credential_key = keys.credential_key().ok()?;
    let principal = state
        .principals
        .authenticate(&credential_key, &state.settings.sessions, bearer)
        .ok()?
        .principal;
    if principal.kind == crate::access::PrincipalKind::Publishable {
        return None;
    }
    if !principal.client_cert_sha256.is_empty() {
        let presented = req
            .extensions()
            .get::<crate::tls::PeerCertificate>()
            .cloned()
            .unwrap_or_default();
        if !presented.matches_any(&principal.client_cert_sha256) {
            return None;
        }
    }
    Some(principal.id)
}

/// What the reservation found.
enum Reserved {
    /// This request holds the slot now; its stored bytes.
    Ours(Vec<u8>),
    /// The first request's answer, to give again.
    Replay(Answer),
    /// The key was used with another request.
    Mismatch,
    /// The first request is still running.
    Running,
}

/// Runs the creating POST behind `Idempotency-Key` (see the module).
pub async fn idempotency(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(raw) = req.headers().get(HEADER) else {
        return next.run(req).await;
    };
    let Some(key) = key_of(raw).map(str::to_owned) else {
        return ApiError::field(
            "Idempotency-Key",
            "must be 1 to 255 printable ASCII characters",
        )
        .into_response();
    };
    // An unknown credential goes on to the handler, which refuses it and
    // audits as it always does.
    let Some(principal) = principal_of(&state, &req) else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, state.settings.body_limit_bytes).await else {
        return ApiError::PayloadTooLarge.into_response();
    };
    let fingerprint = {
        let mut hash = crate::crypto::Sha256Stream::new();
        hash.update(parts.method.as_str().as_bytes());
        hash.update(b"\0");
        hash.update(parts.uri.path().as_bytes());
        hash.update(b"\0");
        hash.update(parts.uri.query().unwrap_or_default().as_bytes());
        hash.update(b"\0");
        hash.update(
            parts
                .headers
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes())
                .unwrap_or_default(),
        );
        hash.update(b"\0");
        hash.update(&bytes);
        // Keyed: an unkeyed digest of a body with a low-entropy value in
        // it (a national id, a PAN of a known BIN) could be guessed from
        // a copy of the store.
        let mut message = b"strongroom idempotency request\0".to_vec();
        message.extend_from_slice(&hash.finish());
        match state
            .keyring
            .keys()
            .map_err(ApiError::from)
            .and_then(|keys| Ok(hex::encode(keys.credential_key()?.sign(&message).0)))
        {
            Ok(fingerprint) => fingerprint,
            Err(e) => return e.into_response(),
        }
    };
    let slot_key = match slot_key(&state, &principal, &key) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let ctx = super::RequestContext::from_parts(&parts);
    let request = Request::from_parts(parts, Body::from(bytes));
    // The reservation, the work and the answer's record finish whether or
    // not the client waits.
    let work = async move {
        let reserved = {
            let state = state.clone();
            let slot_key = slot_key.clone();
            let fingerprint = fingerprint.clone();
            tokio::task::spawn_blocking(move || reserve(&state, &slot_key, &fingerprint))
                .await
                .map_err(|_| ApiError::Internal)??
        };
        let held = match reserved {
            Reserved::Ours(held) => held,
            Reserved::Replay(answer) => {
                // A replay hands the first answer out again (it may hold a
                // token): on the record, like the first.
                let event = crate::audit::AuditEvent {
                    reason: Some(format!("answered again (first answer: {})", answer.status)),
                    ..ctx.event(
                        &principal,
                        "idempotency.replay",
                        crate::audit::Outcome::Allowed,
                    )
                };
                state.record(event).await?;
                return Ok(replay(answer));
            }
            Reserved::Mismatch => return Err(ApiError::IdempotencyMismatch),
            Reserved::Running => {
                return Err(ApiError::Conflict(
                    "A request with this Idempotency-Key is still running; retry later.",
                ));
            }
        };
        let response = next.run(request).await;
        let (parts, body) = response.into_parts();
        // A body that cannot be read whole is not kept (the slot is given
        // back below), and the client gets what could be read: nothing.
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        let answer = Answer {
            status: parts.status.as_u16(),
            headers: KEPT_HEADERS
                .iter()
                .filter_map(|name| {
                    let value = parts.headers.get(*name)?.to_str().ok()?;
                    Some(((*name).to_owned(), value.to_owned()))
                })
                .collect(),
            body: hex::encode(&body),
        };
        let keep = body.len() <= MAX_KEPT_ANSWER
            && (parts.extensions.get::<OutcomeUnknown>().is_some()
                || !(parts.status.is_server_error()
                    || matches!(
                        parts.status,
                        StatusCode::TOO_MANY_REQUESTS
                            | StatusCode::CONFLICT
                            | StatusCode::UNAUTHORIZED
                            | StatusCode::FORBIDDEN
                    )));
        let done = {
            let state = state.clone();
            tokio::task::spawn_blocking(move || {
                finish(
                    &state,
                    &slot_key,
                    &fingerprint,
                    held,
                    keep.then_some(&answer),
                )
            })
            .await
        };
        if !matches!(done, Ok(Ok(()))) {
            tracing::error!(
                "idempotency slot not updated after the request; a retry may wait until it expires"
            );
        }
        Ok(Response::from_parts(parts, Body::from(body)))
    };
    match super::to_the_end(work).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// The slot of `key` for `principal`: a digest, so neither appears in the
/// store.
fn slot_key(state: &AppState, principal: &str, key: &str) -> Result<String, ApiError> {
    let keys = state.keyring.keys()?;
    let mut message = b"strongroom idempotency\0".to_vec();
    message.extend_from_slice(principal.as_bytes());
    message.push(0);
    message.extend_from_slice(key.as_bytes());
    Ok(format!(
        "{SLOT_PREFIX}{}",
        hex::encode(keys.credential_key()?.sign(&message).0)
    ))
}

/// Takes the slot for this request, or says what holds it.
fn reserve(state: &AppState, slot_key: &str, fingerprint: &str) -> Result<Reserved, ApiError> {
    for _ in 0..8 {
        let keys = state.keyring.keys()?;
        let stored = state.store.get(slot_key.as_bytes())?;
        let now = state.clock.now().unix_timestamp();
        let live = match &stored {
            Some(bytes) => {
                let slot: Slot = keys.state_key()?.open_json(slot_key.as_bytes(), bytes)?;
                (!slot.expired(now)).then_some(slot)
            }
            None => None,
        };
        if let Some(slot) = live {
            if slot.request != fingerprint {
                return Ok(Reserved::Mismatch);
            }
            match slot.answer {
                Some(sealed) => {
                    return Ok(Reserved::Replay(open_answer(state, slot_key, &sealed)?));
                }
                None if now
                    < slot
                        .created_at
                        .saturating_add(ABANDONED_AFTER.whole_seconds()) =>
                {
                    return Ok(Reserved::Running);
                }
                // Abandoned: taken over below, on condition that it is
                // still as read.
                None => {}
            }
        }
        let mine = Slot {
            request: fingerprint.to_owned(),
            created_at: now,
            answer: None,
        };
        let bytes = keys.state_key()?.seal_json(slot_key.as_bytes(), &mine)?;
        match state.store.commit(
            Transaction::new()
                .expect(slot_key.as_bytes().to_vec(), stored)
                .put(slot_key.as_bytes().to_vec(), bytes.clone()),
        ) {
            Ok(()) => return Ok(Reserved::Ours(bytes)),
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Reserved::Running)
}

fn context(slot_key: &str) -> RecordContext<'_> {
    RecordContext {
        id: slot_key,
        record_type: "idempotent_answer",
        version: 1,
    }
}

/// The KEK (purpose and version) the answer kept in the slot at `key`
/// (read as `value`) is wrapped under; `None` while it runs.
pub fn wrapped_under(
    state: &AppState,
    key: &[u8],
    value: &[u8],
) -> Result<Option<(Purpose, u32)>, ApiError> {
    let slot: Slot = state.keyring.keys()?.state_key()?.open_json(key, value)?;
    let Some(answer) = slot.answer else {
        return Ok(None);
    };
    let bytes = hex::decode(answer).map_err(|_| ApiError::Integrity)?;
    Ok(Some((
        Purpose::Generic,
        SealedRecord::decode(&bytes)?.kek_version(),
    )))
}

/// The write that moves the kept answer's DEK in the slot at `key` (read
/// as `value`) onto the newest generic KEK, or deletes the slot once it has
/// expired, on the condition that the slot is still as read; `None` when
/// it already is there or runs.
pub fn rewrap_slot(
    state: &AppState,
    key: &[u8],
    value: &[u8],
) -> Result<Option<Transaction>, ApiError> {
    let slot_key = std::str::from_utf8(key).map_err(|_| ApiError::Integrity)?;
    let keys = state.keyring.keys()?;
    let slot: Slot = keys.state_key()?.open_json(key, value)?;
    let now = state.clock.now().unix_timestamp();
    if slot.expired(now) {
        // Expired: nothing will replay it, so it goes rather than moves
        // (a running slot this old was abandoned long ago).
        return Ok(Some(
            Transaction::new()
                .expect(key, Some(value.to_vec()))
                .delete(key),
        ));
    }
    let Some(answer) = &slot.answer else {
        return Ok(None);
    };
    let bytes = hex::decode(answer).map_err(|_| ApiError::Integrity)?;
    let sealed = SealedRecord::decode(&bytes)?;
    let Some(rewrapped) =
        state
            .keyring
            .rewrap_record(Purpose::Generic, &context(slot_key), &sealed)?
    else {
        return Ok(None);
    };
    let moved = Slot {
        answer: Some(hex::encode(rewrapped.encode())),
        ..slot
    };
    Ok(Some(
        Transaction::new()
            .expect(key, Some(value.to_vec()))
            .put(key, keys.state_key()?.seal_json(key, &moved)?),
    ))
}

fn open_answer(state: &AppState, slot_key: &str, sealed: &str) -> Result<Answer, ApiError> {
    let bytes = hex::decode(sealed).map_err(|_| ApiError::Integrity)?;
    let sealed = SealedRecord::decode(&bytes)?;
    let plain = state
        .keyring
        .open_record(Purpose::Generic, &context(slot_key), &sealed)?;
    serde_json::from_slice(&plain).map_err(|_| ApiError::Integrity)
}

/// Records the answer in the slot this request holds (`held`, as it was
/// written), or gives the slot back when the answer is not to be kept (a
/// 5xx, 409 or 429: a retry may do better).
fn finish(
    state: &AppState,
    slot_key: &str,
    fingerprint: &str,
    held: Vec<u8>,
    answer: Option<&Answer>,
) -> Result<(), ApiError> {
    let tx = Transaction::new().expect(slot_key.as_bytes().to_vec(), Some(held));
    let tx = match answer {
        None => tx.delete(slot_key.as_bytes().to_vec()),
        Some(answer) => {
            let plain = zeroize::Zeroizing::new(
                serde_json::to_vec(answer).map_err(|_| ApiError::Internal)?,
            );
            let sealed = state
                .keyring
                .seal_record(Purpose::Generic, &context(slot_key), &plain)?;
            let keys = state.keyring.keys()?;
            let done = Slot {
                request: fingerprint.to_owned(),
                created_at: state.clock.now().unix_timestamp(),
                answer: Some(hex::encode(sealed.encode())),
            };
            tx.put(
                slot_key.as_bytes().to_vec(),
                keys.state_key()?.seal_json(slot_key.as_bytes(), &done)?,
            )
        }
    };
    state.store.commit(tx).map_err(ApiError::from)
}

/// The first answer again, marked as a replay.
fn replay(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let body = hex::decode(&answer.body).unwrap_or_default();
    let mut response = (status, Bytes::from(body)).into_response();
    let h = response.headers_mut();
    for (name, value) in &answer.headers {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.insert(name, value);
        }
    }
    h.insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

/// Slots read per page by [`remove_expired`].
const EXPIRY_PAGE: usize = 256;

/// Deletes every slot older than [`LIFETIME`] (abandoned ones with them):
/// the retention sweeper's work. Each delete is on condition that the slot
/// is still as read, so a request that takes the key over meanwhile keeps
/// its fresh slot. A slot that fails authentication is left alone and
/// logged (without its key). Returns how many were deleted. Blocking.
pub(super) fn remove_expired(state: &AppState) -> Result<usize, ApiError> {
    let now = state.clock.now().unix_timestamp();
    let mut removed = 0;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = state
            .store
            .scan(SLOT_PREFIX.as_bytes(), after.as_deref(), EXPIRY_PAGE)?;
        for (key, bytes) in &page {
            let opened = state
                .keyring
                .keys()?
                .state_key()?
                .open_json::<Slot>(key, bytes);
            let slot = match opened {
                Ok(slot) => slot,
                Err(crate::keyring::KeyringError::Sealed) => return Err(ApiError::Sealed),
                Err(_) => {
                    tracing::error!("an idempotency slot fails authentication; left in place");
                    continue;
                }
            };
            if !slot.expired(now) {
                continue;
            }
            let tx = Transaction::new()
                .expect(key.clone(), Some(bytes.clone()))
                .delete(key.clone());
            match state.store.commit(tx) {
                Ok(()) => removed += 1,
                Err(StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if page.len() < EXPIRY_PAGE {
            return Ok(removed);
        }
        after = page.last().map(|(key, _)| key.clone());
    }
}
