//! Strongroom: a vault server for KYC records and payment credentials.
//!
//! Layers, each depending only on those below it:
//! `api` → `access`/`records`/`tokens`/`audit` → `keyring` → `crypto`, `store`;
//! `tls` (connections, beside `api`) is what `cli` serves the router with.
#![forbid(unsafe_code)]

pub mod access;
pub mod api;
pub mod audit;
pub mod backup;
pub mod canary;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod crypto;
pub mod cvc;
pub mod keyring;
pub mod lifecycle;
pub mod metrics;
pub mod records;
pub mod relay;
pub mod store;
pub mod tls;
pub mod tokens;
pub mod vault;
