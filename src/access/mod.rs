//! Principals, credentials, roles and the policy table.
//!
//! This module decides who a caller is and what they may do. It stores only
//! HMACs of credentials (under a key derived from the root key), never a
//! credential itself, and knows nothing about HTTP.

mod credentials;
mod policy;

pub use credentials::{ApiKey, PrincipalDirectory};
pub use policy::{Operation, Role, allows};

use serde::{Deserialize, Serialize};

/// Who a credential belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    pub id: String,
    pub name: String,
    pub kind: PrincipalKind,
    pub roles: Vec<Role>,
    pub created_at: String,
    pub disabled: bool,
}

impl Principal {
    /// Whether any of this principal's roles allows `op`.
    pub fn may(&self, op: Operation) -> bool {
        !self.disabled && self.roles.iter().any(|r| allows(*r, op))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A machine, authenticated by an API key.
    Service,
    /// A person, authenticated by username and password.
    Staff,
}

/// Errors of the access layer.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("unauthenticated")]
    Unauthenticated,
    #[error("name already taken")]
    Conflict,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cryptographic failure: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
    #[error("stored principal is corrupt")]
    Corrupt,
}
