//! The audit log: append-only, hash-chained entries with Ed25519-signed
//! checkpoints, written in the same store transaction as the change each
//! records.
//!
//! This module owns the chain and its verification. It must never write a
//! sensitive value into an entry (callers pass HMACs from
//! [`AuditLog::fingerprint`]) and never acknowledge a change whose entry was
//! not written.

mod entry;
mod log;
mod verify;

pub use entry::{AuditEntry, AuditEvent, Checkpoint, ExportLine, Outcome};
pub use log::{AuditError, AuditLog, AuditQuery, export_store};
pub use verify::{Verification, verify_lines, verify_store};
