//! `GET /v1/sys/backup`: a consistent, signed snapshot of the store,
//! streamed (format and guarantees: `crate::backup`).
//!
//! The snapshot is taken into an unnamed file in the data directory first
//! and sent from there, so the store's writers wait only for the walk to a
//! local disk, never for a slow or stalled client; a client that goes away
//! stops the sending, and the file is gone when its handle is dropped (also
//! after a crash: it has no name).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, SizeHint};

use super::extract::{Caller, RequestContext};
use super::{ApiError, AppState, Problem};
use crate::access::Operation;
use crate::audit::Outcome;
use crate::backup::{BackupError, Prepared};
use crate::store::Engine;

/// One backup at a time: each spools a copy of the whole store.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Held while a backup runs.
struct OneAtATime;

impl OneAtATime {
    fn take() -> Option<Self> {
        RUNNING
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()
            .map(|_| Self)
    }
}

impl Drop for OneAtATime {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::SeqCst);
    }
}

/// Chunks of the file on their way from the sending thread, and how many
/// bytes are still due: a channel closed before then is an error, so the
/// connection is cut rather than ended as if the file were whole.
struct Chunks {
    chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
    left: u64,
}

impl HttpBody for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        match this.chunks.poll_recv(cx) {
            Poll::Ready(Some(chunk)) => {
                this.left = this.left.saturating_sub(chunk.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
            }
            Poll::Ready(None) if this.left == 0 => Poll::Ready(None),
            Poll::Ready(None) => Poll::Ready(Some(Err(std::io::Error::other(
                "the backup stopped before its end",
            )))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0 && self.chunks.is_closed()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// The backup file, as the document describes the answer's body: bytes.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct BackupFile(Vec<u8>);

fn failure(e: BackupError) -> ApiError {
    match e {
        BackupError::Sealed => ApiError::Sealed,
        BackupError::NoSpace(why) => {
            tracing::warn!("backup refused: {why}");
            ApiError::Conflict(
                "There is not enough free disk space beside the data directory for the backup; \
                 nothing was taken (see the server log).",
            )
        }
        other => {
            tracing::error!(error = %other, "backup failed");
            ApiError::Internal
        }
    }
}

/// How long the server waits for a backup's client to take the next chunk
/// before it gives up on it.
const SEND_STALL: std::time::Duration = std::time::Duration::from_secs(60);
/// The slowest a backup is sent (bytes a second) before the server gives
/// up on its client: 256 KiB/s.
const SEND_RATE: u64 = 256 * 1024;
/// The time any backup may take to send, however small.
const SEND_MINIMUM: std::time::Duration = std::time::Duration::from_secs(600);

/// A consistent, signed snapshot of the whole store (admin).
#[utoipa::path(get, path = "/v1/sys/backup", tag = "sys", operation_id = "backup",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The backup file (docs/operations.md, \"Backup and recovery\"): a consistent snapshot of the store, signed with the vault's audit key. Its `sys.backup` audit entry is written before the snapshot is taken.", content_type = "application/octet-stream", body = BackupFile),
        (status = 403, description = "`forbidden`: not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: another backup is running, or there is not enough free disk space beside the data directory for its spool", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn backup(
    State(state): State<AppState>,
    ctx: RequestContext,
    caller: Caller,
) -> Result<Response, ApiError> {
    state.authorize(&caller, Operation::SysBackup, &ctx).await?;
    let actor = caller.principal().id.clone();
    drop(caller);
    let running = OneAtATime::take().ok_or(ApiError::Conflict(
        "Another backup is running; try again when it has finished.",
    ))?;
    // No entry, no backup: written before the snapshot, so the snapshot
    // holds it.
    state
        .record(ctx.event(&actor, "sys.backup", Outcome::Allowed))
        .await?;
    let store = Arc::clone(&state.store);
    let keyring = Arc::clone(&state.keyring);
    let data_dir = state.settings.data_dir.clone();
    let now = state.clock.now();
    // The guard goes with the work: a client that hangs up while the
    // snapshot is taken drops this handler, not the snapshot, which runs to
    // its end (then its file is dropped) before another backup may start.
    let (running, prepared) = tokio::task::spawn_blocking(move || {
        let engine = data_dir.as_deref().and_then(Engine::detect);
        // The spool grows to about the store's live data: its size on disk
        // bounds that.
        let expected = data_dir
            .as_deref()
            .map_or(Ok(0), crate::backup::tree_bytes)
            .map_err(|e| BackupError::Io(format!("the data directory's size: {e}")));
        let spool = data_dir.unwrap_or_else(std::env::temp_dir);
        let prepared = expected.and_then(|expected| {
            Prepared::take(store.as_ref(), &keyring, &spool, expected, engine, now)
        });
        (running, prepared)
    })
    .await
    .map_err(|_| ApiError::Internal)?;
    let prepared = prepared.map_err(failure)?;
    let length = prepared.len();
    let file_name = format!(
        "strongroom-{}-{}.backup",
        prepared.header.vault_id,
        now.unix_timestamp()
    );
    tracing::info!(actor = %actor, pairs = prepared.header.pairs, bytes = length, "backup taken; sending");
    let (sender, chunks) = tokio::sync::mpsc::channel(8);
    tokio::task::spawn_blocking(move || {
        let _running = running;
        // A closed channel (the client went away) ends the sending, and so
        // does a client that stops reading for SEND_STALL: it must not hold
        // the backup slot and its spool for ever.
        // The whole file must go at SEND_RATE at least (and any file may
        // take SEND_MINIMUM): a client reading a little at a time does not
        // hold them for days either.
        let handle = tokio::runtime::Handle::current();
        let deadline = std::time::Instant::now()
            + SEND_MINIMUM.max(std::time::Duration::from_secs(length / SEND_RATE));
        let sent = prepared.send(|chunk| {
            std::time::Instant::now() < deadline
                && handle
                    .block_on(sender.send_timeout(chunk, SEND_STALL))
                    .is_ok()
        });
        if let Err(e) = sent {
            tracing::error!(error = %e, "sending the backup failed");
        }
    });
    let body = Body::new(Chunks {
        chunks,
        left: length,
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file_name}\""),
            ),
            (header::CONTENT_LENGTH, length.to_string()),
        ],
        body,
    )
        .into_response())
}
