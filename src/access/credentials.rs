//! API keys and the principal directory in the store.
//!
//! An API key is `srk_` followed by 64 hex digits (256 random bits). The
//! store keeps `HMAC-SHA256(credential key, api key)` as the lookup key, so
//! a stolen data directory yields no usable credential.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::{AccessError, Principal, PrincipalKind, Role};
use crate::clock::{Clock, rfc3339};
use crate::crypto::{HmacKey, random_array};
use crate::store::{Store, Transaction};

const API_KEY_PREFIX: &str = "srk_";
const PRINCIPAL_PREFIX: &str = "ac/principal/";
const API_KEY_INDEX_PREFIX: &str = "ac/apikey/";
const NAME_INDEX_PREFIX: &str = "ac/name/";

/// A freshly minted API key: shown once, then only its HMAC exists.
pub struct ApiKey(Zeroizing<String>);

impl ApiKey {
    fn generate() -> Result<Self, AccessError> {
        let bytes = Zeroizing::new(random_array::<32>()?);
        Ok(Self(Zeroizing::new(format!(
            "{API_KEY_PREFIX}{}",
            hex::encode(&bytes[..])
        ))))
    }

    /// The key, for showing to its owner exactly once.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Whether `text` has the shape of an API key (cheap, before any HMAC).
fn looks_like_api_key(text: &str) -> bool {
    text.strip_prefix(API_KEY_PREFIX)
        .is_some_and(|rest| rest.len() == 64 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Principals stored in the store.
pub struct PrincipalDirectory {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl PrincipalDirectory {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Creates a service principal with a new API key.
    pub fn create_service(
        &self,
        credential_key: &HmacKey,
        name: &str,
        roles: Vec<Role>,
    ) -> Result<(Principal, ApiKey), AccessError> {
        let api_key = ApiKey::generate()?;
        let principal = Principal {
            id: format!("prn_{}", hex::encode(random_array::<12>()?)),
            name: name.to_owned(),
            kind: PrincipalKind::Service,
            roles,
            created_at: rfc3339(self.clock.now()),
            disabled: false,
        };
        let lookup = api_key_index(credential_key, api_key.expose_secret());
        let name_key = format!("{NAME_INDEX_PREFIX}{name}");
        let encoded = serde_json::to_vec(&principal).map_err(|_| AccessError::Corrupt)?;
        let result = self.store.commit(
            Transaction::new()
                .expect(name_key.clone(), None)
                .put(name_key, principal.id.clone())
                .put(format!("{PRINCIPAL_PREFIX}{}", principal.id), encoded)
                .put(lookup, principal.id.clone()),
        );
        match result {
            Ok(()) => Ok((principal, api_key)),
            Err(crate::store::StoreError::Conflict) => Err(AccessError::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    /// The enabled principal that holds `api_key`.
    pub fn authenticate_api_key(
        &self,
        credential_key: &HmacKey,
        api_key: &str,
    ) -> Result<Principal, AccessError> {
        if !looks_like_api_key(api_key) {
            return Err(AccessError::Unauthenticated);
        }
        let id = self
            .store
            .get(&api_key_index(credential_key, api_key))?
            .ok_or(AccessError::Unauthenticated)?;
        let id = String::from_utf8(id).map_err(|_| AccessError::Corrupt)?;
        let principal = self.principal(&id)?.ok_or(AccessError::Unauthenticated)?;
        if principal.disabled {
            return Err(AccessError::Unauthenticated);
        }
        Ok(principal)
    }

    pub fn principal(&self, id: &str) -> Result<Option<Principal>, AccessError> {
        self.store
            .get(format!("{PRINCIPAL_PREFIX}{id}").as_bytes())?
            .map(|bytes| serde_json::from_slice(&bytes).map_err(|_| AccessError::Corrupt))
            .transpose()
    }
}

/// The store key under which an API key's HMAC points to its principal.
/// Found by exact lookup of a keyed hash, so no secret-dependent comparison
/// of stored bytes happens.
fn api_key_index(credential_key: &HmacKey, api_key: &str) -> Vec<u8> {
    let tag = credential_key.sign(api_key.as_bytes());
    format!("{API_KEY_INDEX_PREFIX}{}", hex::encode(tag.0)).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_have_the_documented_shape() {
        let key = ApiKey::generate().unwrap();
        assert!(looks_like_api_key(key.expose_secret()));
        assert!(!looks_like_api_key("srk_short"));
        assert!(!looks_like_api_key(
            &key.expose_secret().replace("srk_", "xxx_")
        ));
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
    }
}
