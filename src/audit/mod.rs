//! The audit log: append-only, hash-chained entries, written in the same
//! store transaction as the change each records, with the new head signed
//! (Ed25519) in that same transaction, and checkpoints every N entries.
//!
//! This module owns the chain and its verification. It must never write a
//! sensitive value into an entry (callers pass HMACs from
//! [`AuditLog::fingerprint`]) and never acknowledge a change whose entry was
//! not written.

mod entry;
mod head_file;
pub(crate) mod log;
mod verify;

pub use entry::{AuditEntry, AuditEvent, Checkpoint, ExportLine, Outcome, WRITTEN_WHILE_SEALED};
pub(crate) use head_file::HeadFile;
pub use head_file::{AUDIT_HEAD_FILE, read_head_file, read_public_key};
pub use log::{AuditError, AuditLog, AuditQuery, export_store};
pub use verify::{
    KnownHead, Verification, verify_lines, verify_lines_since, verify_store, verify_store_since,
};
