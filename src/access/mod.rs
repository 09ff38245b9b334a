//! Principals, credentials, sessions, lockout, roles and the policy table.
//!
//! This module decides who a caller is and what they may do. It stores only
//! HMACs of credentials (under a key derived from the root key) and peppered
//! Argon2id hashes of passwords, never a credential itself, and knows nothing
//! about HTTP. Every stored value that grants or denies is authenticated
//! with the keyring's state key (`keyring::StateKey`), bound to its store
//! key; one that fails is an integrity error, never a grant. Writes are returned as transactions, so the caller can commit each
//! together with its audit entry.

mod credentials;
mod lockout;
mod policy;
mod requests;
mod sessions;

pub use credentials::{
    ApiKey, Authenticated, Credential, MAX_ALLOWED_ORIGINS, PUBLISHABLE_KEY_PREFIX,
    PrincipalDirectory, check_origin, looks_like_publishable_key,
};
pub use lockout::{Attempt, LockoutPolicy};
pub use policy::{Operation, Role, allows, sees_all};
pub use requests::{AccessRequest, AccessRequests, DecisionError, RequestStatus};
pub use sessions::{SessionPolicy, SessionToken};

use serde::{Deserialize, Serialize};

/// Who a credential belongs to. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    pub id: String,
    pub name: String,
    pub kind: PrincipalKind,
    pub roles: Vec<Role>,
    pub created_at: String,
    pub disabled: bool,
    /// Publishable keys only: the service principal whose cards the key
    /// collects (docs/payment-path.md, "Collect").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Publishable keys only: the exact web origins (`https://host[:port]`)
    /// whose pages may use the key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// Services only: SHA-256 fingerprints (lowercase hex) of the client
    /// certificates, or of their public keys (SPKI), that this principal's
    /// API key must arrive with (mTLS; docs/payment-path.md "TLS and mutual
    /// TLS"). Empty: not bound.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_cert_sha256: Vec<String>,
}

impl Principal {
    /// Whether this principal sees a record or token owned by `owner`:
    /// its own, or any if a compliance role or admin.
    pub fn sees(&self, owner: &str) -> bool {
        self.id == owner || sees_all(&self.roles)
    }

    /// The principal whose records this one works on: a publishable key's
    /// owner service, anyone else itself.
    pub fn acts_for(&self) -> &str {
        match (self.kind, &self.owner) {
            (PrincipalKind::Publishable, Some(owner)) => owner,
            _ => &self.id,
        }
    }

    /// Whether any of this principal's roles allows `op`.
    pub fn may(&self, op: Operation) -> bool {
        !self.disabled && self.roles.iter().any(|r| allows(*r, op))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A machine, authenticated by an API key.
    Service,
    /// A person, authenticated by username and password.
    Staff,
    /// A key that ships in a web page (`spk_…`): collects cards for its
    /// owner service from its allowed origins, and nothing else.
    Publishable,
}

/// Errors of the access layer.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("unauthenticated")]
    Unauthenticated,
    /// Input that breaks a rule; names the field, never its value.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: &'static str,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cryptographic failure: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
    /// Sealed, or stored security state that fails authentication
    /// (`KeyringError::Integrity`).
    #[error(transparent)]
    Keyring(#[from] crate::keyring::KeyringError),
    #[error("stored access record is corrupt")]
    Corrupt,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A principal stored before certificate bindings existed still loads,
    /// unbound, and an unbound one is stored as it was.
    #[test]
    fn principals_without_a_binding_load_and_store_as_before() {
        let stored = r#"{"id":"prn_000000000000000000000001","name":"svc","kind":"service","roles":["payment_service"],"created_at":"2026-11-01T00:00:00Z","disabled":false}"#;
        let principal: Principal = serde_json::from_str(stored).unwrap();
        assert!(principal.client_cert_sha256.is_empty());
        assert_eq!(serde_json::to_string(&principal).unwrap(), stored);
        let bound = Principal {
            client_cert_sha256: vec!["ab".repeat(32)],
            ..principal
        };
        let text = serde_json::to_string(&bound).unwrap();
        assert!(text.contains(&format!("\"client_cert_sha256\":[\"{}\"]", "ab".repeat(32))));
        assert_eq!(serde_json::from_str::<Principal>(&text).unwrap(), bound);
    }
}
