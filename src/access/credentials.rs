//! API keys and the principal directory in the store.
//!
//! An API key is `srk_` (a service) or `spk_` (a publishable key) followed
//! by 64 hex digits (256 random bits). The store keeps `HMAC-SHA256(credential
//! key, api key)` as the lookup key, so a stolen data directory yields no
//! usable credential. A publishable key also has one `ac/origin/…` entry per
//! allowed origin, so a CORS preflight finds the keys of an origin without
//! a cache (see [`PrincipalDirectory::origin_allowed`]). Staff password
//! hashes live apart from the principal record, which is safe to list.
//!
//! Every value stored here (principal, API-key and name index entries,
//! password hash, session) is sealed with the state key bound to its store
//! key, so none can be edited, or copied under another principal's key,
//! without the vault noticing.

use std::sync::Arc;

use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::lockout::{self, Attempt};
use super::sessions::{self, SessionPolicy, SessionToken, StoredSession};
use super::{AccessError, LockoutPolicy, Principal, PrincipalKind, Role};
use crate::clock::{Clock, rfc3339};
use crate::crypto::{HmacKey, random_array};
use crate::keyring::{Keyring, StateKey, UnsealedKeys};
use crate::store::{Store, Transaction};

const API_KEY_PREFIX: &str = "srk_";
/// The prefix of a publishable key (one that ships in a web page).
pub const PUBLISHABLE_KEY_PREFIX: &str = "spk_";
/// At most this many allowed origins per publishable key.
pub const MAX_ALLOWED_ORIGINS: usize = 16;
const ORIGIN_INDEX_PREFIX: &str = "ac/origin/";
const PRINCIPAL_PREFIX: &str = "ac/principal/";
const API_KEY_INDEX_PREFIX: &str = "ac/apikey/";
const NAME_INDEX_PREFIX: &str = "ac/name/";
const PASSWORD_PREFIX: &str = "ac/password/";

/// A freshly minted API key: shown once, then only its HMAC exists.
pub struct ApiKey(Zeroizing<String>);

impl ApiKey {
    fn generate() -> Result<Self, AccessError> {
        Self::generate_with(API_KEY_PREFIX)
    }

    fn generate_with(prefix: &str) -> Result<Self, AccessError> {
        let bytes = Zeroizing::new(random_array::<32>()?);
        Ok(Self(Zeroizing::new(format!(
            "{prefix}{}",
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

/// Whether `text` is `prefix` and 64 hex digits.
fn has_key_shape(text: &str, prefix: &str) -> bool {
    text.strip_prefix(prefix)
        .is_some_and(|rest| rest.len() == 64 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether `text` has the shape of an API key (cheap, before any HMAC).
fn looks_like_api_key(text: &str) -> bool {
    has_key_shape(text, API_KEY_PREFIX) || looks_like_publishable_key(text)
}

/// Whether `text` has the shape of a publishable key (cheap, before any
/// HMAC): the API rate-limits these by client address before looking
/// them up.
pub fn looks_like_publishable_key(text: &str) -> bool {
    has_key_shape(text, PUBLISHABLE_KEY_PREFIX)
}

/// Whether `origin` is a web origin a publishable key may allow, exactly as
/// a browser sends it in `Origin`: `https://host[:port]`, lower case, no
/// path, no default port; `http://` only for `localhost` and `127.0.0.1`
/// (a developer's machine; browsers treat both as secure contexts). No
/// wildcard, no IPv6 literal, no user info.
pub fn check_origin(origin: &str) -> Result<(), &'static str> {
    const SHAPE: &str = "must be https://host[:port] in lower case, without path or default port (http:// only for localhost and 127.0.0.1)";
    if origin.len() > 270 {
        return Err(SHAPE);
    }
    let (authority, default_port, https) = if let Some(rest) = origin.strip_prefix("https://") {
        (rest, "443", true)
    } else if let Some(rest) = origin.strip_prefix("http://") {
        (rest, "80", false)
    } else {
        return Err(SHAPE);
    };
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if let Some(port) = port {
        let digits_ok = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && !port.starts_with('0');
        if !digits_ok || port.parse::<u32>().map_or(true, |p| p > 65535) || port == default_port {
            return Err(SHAPE);
        }
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(SHAPE);
    }
    if !https && !matches!(host, "localhost" | "127.0.0.1") {
        return Err(SHAPE);
    }
    Ok(())
}

/// The allowed origins of a new publishable key: 1 to
/// [`MAX_ALLOWED_ORIGINS`] valid origins, duplicates dropped.
fn check_origins(origins: Vec<String>) -> Result<Vec<String>, AccessError> {
    let invalid = |message| AccessError::Invalid {
        field: "allowed_origins",
        message,
    };
    if origins.is_empty() || origins.len() > MAX_ALLOWED_ORIGINS {
        return Err(invalid("1 to 16 origins are required"));
    }
    let mut out: Vec<String> = Vec::with_capacity(origins.len());
    for origin in origins {
        check_origin(&origin).map_err(invalid)?;
        if !out.contains(&origin) {
            out.push(origin);
        }
    }
    Ok(out)
}

/// Whether `owner` may own publishable keys: an enabled service that holds
/// `payment_service`.
fn usable_owner(owner: &Principal) -> bool {
    !owner.disabled
        && owner.kind == PrincipalKind::Service
        && owner.roles.contains(&Role::PaymentService)
}

/// How a request authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    ApiKey,
    /// A session, by its store key (an HMAC; not the token).
    Session {
        key: String,
    },
}

/// An authenticated caller, and the write (if any) that keeps its session
/// alive.
#[derive(Debug)]
pub struct Authenticated {
    pub principal: Principal,
    pub credential: Credential,
    pub touch: Option<Transaction>,
}

/// Principals stored in the store.
pub struct PrincipalDirectory {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    clock: Arc<dyn Clock>,
}

/// 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit.
fn check_name(name: &str) -> Result<(), AccessError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AccessError::Invalid {
            field: "name",
            message: "must be 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit",
        })
    }
}

fn check_roles(kind: PrincipalKind, roles: &[Role]) -> Result<(), AccessError> {
    if roles.is_empty() {
        return Err(AccessError::Invalid {
            field: "roles",
            message: "at least one role is required",
        });
    }
    if roles.iter().any(|r| !r.fits(kind)) {
        return Err(AccessError::Invalid {
            field: "roles",
            message: "payment_service and metrics are for services; compliance roles are for staff; a publishable key holds collector and nothing else",
        });
    }
    if let Some(message) = super::policy::separation_of_duties(roles) {
        return Err(AccessError::Invalid {
            field: "roles",
            message,
        });
    }
    Ok(())
}

/// The most certificates one principal may be bound to: enough for a
/// rotation (old and new) across a few instances, few enough to review.
pub const MAX_CLIENT_CERTS: usize = 8;

/// Certificate fingerprints for a binding: each 64 lowercase hex digits
/// (a SHA-256), at most [`MAX_CLIENT_CERTS`]; duplicates are dropped.
fn check_client_certs(fingerprints: Vec<String>) -> Result<Vec<String>, AccessError> {
    let invalid = |message| AccessError::Invalid {
        field: "client_cert_sha256",
        message,
    };
    if fingerprints.len() > MAX_CLIENT_CERTS {
        return Err(invalid("at most 8 certificate fingerprints"));
    }
    let well_formed = |f: &String| {
        f.len() == 64
            && f.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !fingerprints.iter().all(well_formed) {
        return Err(invalid(
            "each must be 64 lowercase hex digits: the SHA-256 of a DER certificate or of its SubjectPublicKeyInfo",
        ));
    }
    let mut unique: Vec<String> = Vec::with_capacity(fingerprints.len());
    for fingerprint in fingerprints {
        if !unique.contains(&fingerprint) {
            unique.push(fingerprint);
        }
    }
    Ok(unique)
}

fn principal_key(id: &str) -> String {
    format!("{PRINCIPAL_PREFIX}{id}")
}

fn name_key(name: &str) -> String {
    format!("{NAME_INDEX_PREFIX}{name}")
}

/// The origin index entry of publishable key `id` for `origin` (a checked
/// origin: it holds no `/` after its scheme, so one origin's prefix never
/// covers another's).
fn origin_key(origin: &str, id: &str) -> String {
    format!("{ORIGIN_INDEX_PREFIX}{origin}/{id}")
}

fn password_key(id: &str) -> String {
    format!("{PASSWORD_PREFIX}{id}")
}

fn seal_principal(state: &StateKey, principal: &Principal) -> Result<Vec<u8>, AccessError> {
    Ok(state.seal_json(principal_key(&principal.id).as_bytes(), principal)?)
}

/// A stored text (an index entry's id, a password hash), once
/// authenticated.
fn open_text(state: &StateKey, key: &[u8], stored: &[u8]) -> Result<String, AccessError> {
    String::from_utf8(state.open(key, stored)?.to_vec()).map_err(|_| AccessError::Corrupt)
}

impl PrincipalDirectory {
    pub fn new(store: Arc<dyn Store>, keyring: Arc<Keyring>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            keyring,
            clock,
        }
    }

    fn keys(&self) -> Result<Arc<UnsealedKeys>, AccessError> {
        Ok(self.keyring.keys()?)
    }

    fn new_principal(
        &self,
        name: &str,
        kind: PrincipalKind,
        roles: Vec<Role>,
        client_cert_sha256: Vec<String>,
    ) -> Result<(Principal, Transaction), AccessError> {
        self.new_principal_with(name, kind, roles, None, Vec::new(), client_cert_sha256)
    }

    fn new_principal_with(
        &self,
        name: &str,
        kind: PrincipalKind,
        roles: Vec<Role>,
        owner: Option<String>,
        allowed_origins: Vec<String>,
        client_cert_sha256: Vec<String>,
    ) -> Result<(Principal, Transaction), AccessError> {
        check_name(name)?;
        check_roles(kind, &roles)?;
        let client_cert_sha256 = check_client_certs(client_cert_sha256)?;
        if kind != PrincipalKind::Service && !client_cert_sha256.is_empty() {
            return Err(AccessError::Invalid {
                field: "client_cert_sha256",
                message: "only services can be bound to client certificates",
            });
        }
        let mut roles = roles;
        roles.dedup();
        let principal = Principal {
            id: format!("prn_{}", hex::encode(random_array::<12>()?)),
            name: name.to_owned(),
            kind,
            roles,
            created_at: rfc3339(self.clock.now()),
            disabled: false,
            owner,
            allowed_origins,
            client_cert_sha256,
        };
        let keys = self.keys()?;
        let state = keys.state_key()?;
        let name_key = name_key(name);
        let tx = Transaction::new()
            .expect(name_key.clone(), None)
            .put(
                name_key.clone(),
                state.seal(name_key.as_bytes(), principal.id.as_bytes()),
            )
            .put(
                principal_key(&principal.id),
                seal_principal(&state, &principal)?,
            );
        Ok((principal, tx))
    }

    /// A service principal and its new API key; the transaction fails with
    /// a conflict if the name is taken.
    pub fn prepare_service(
        &self,
        credential_key: &HmacKey,
        name: &str,
        roles: Vec<Role>,
    ) -> Result<(Principal, ApiKey, Transaction), AccessError> {
        self.prepare_bound_service(credential_key, name, roles, Vec::new())
    }

    /// [`PrincipalDirectory::prepare_service`] for a service whose API key
    /// is accepted only on a connection that presented one of the client
    /// certificates (or public keys) in `client_cert_sha256` (SHA-256,
    /// lowercase hex; at most [`MAX_CLIENT_CERTS`]). Empty: not bound.
    pub fn prepare_bound_service(
        &self,
        credential_key: &HmacKey,
        name: &str,
        roles: Vec<Role>,
        client_cert_sha256: Vec<String>,
    ) -> Result<(Principal, ApiKey, Transaction), AccessError> {
        let (principal, tx) =
            self.new_principal(name, PrincipalKind::Service, roles, client_cert_sha256)?;
        let api_key = ApiKey::generate()?;
        let index = api_key_index(credential_key, api_key.expose_secret());
        let sealed = self
            .keys()?
            .state_key()?
            .seal(&index, principal.id.as_bytes());
        Ok((principal, api_key, tx.put(index, sealed)))
    }

    /// A publishable key for the service `owner`, usable from
    /// `allowed_origins`, and its new `spk_` key. The owner must be an
    /// enabled service holding `payment_service` (else 422 naming `owner`);
    /// the transaction fails with a conflict if the owner changed (was
    /// disabled) since it was read, or the name is taken.
    pub fn prepare_publishable(
        &self,
        credential_key: &HmacKey,
        name: &str,
        roles: Vec<Role>,
        owner: &str,
        allowed_origins: Vec<String>,
    ) -> Result<(Principal, ApiKey, Transaction), AccessError> {
        let allowed_origins = check_origins(allowed_origins)?;
        let bad_owner = AccessError::Invalid {
            field: "owner",
            message: "must be the id of an enabled service principal holding payment_service",
        };
        let (owner_principal, owner_bytes) = match self.principal_and_bytes(owner) {
            Ok(Some(found)) => found,
            Ok(None) => return Err(bad_owner),
            Err(e) => return Err(e),
        };
        if !usable_owner(&owner_principal) {
            return Err(bad_owner);
        }
        let (principal, tx) = self.new_principal_with(
            name,
            PrincipalKind::Publishable,
            roles,
            Some(owner_principal.id.clone()),
            allowed_origins,
            Vec::new(),
        )?;
        let keys = self.keys()?;
        let state = keys.state_key()?;
        let mut tx = tx.expect(principal_key(owner), Some(owner_bytes));
        for origin in &principal.allowed_origins {
            let key = origin_key(origin, &principal.id);
            let sealed = state.seal(key.as_bytes(), principal.id.as_bytes());
            tx = tx.put(key, sealed);
        }
        let api_key = ApiKey::generate_with(PUBLISHABLE_KEY_PREFIX)?;
        let index = api_key_index(credential_key, api_key.expose_secret());
        let sealed = state.seal(&index, principal.id.as_bytes());
        Ok((principal, api_key, tx.put(index, sealed)))
    }

    /// Whether some usable publishable key allows `origin`: enabled, with
    /// an enabled owner service holding `payment_service`. Read from the
    /// store each time (the origin index entries, each authenticated, then
    /// the principals they name), so a disabled key or owner stops counting
    /// at once, on every node.
    pub fn origin_allowed(&self, origin: &str) -> Result<bool, AccessError> {
        if check_origin(origin).is_err() {
            return Ok(false);
        }
        let keys = self.keys()?;
        let state = keys.state_key()?;
        let prefix = format!("{ORIGIN_INDEX_PREFIX}{origin}/");
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.store.scan(prefix.as_bytes(), after.as_deref(), 32)?;
            for (key, stored) in &page {
                let id = open_text(&state, key, stored)?;
                if let Some(principal) = self.principal(&id)?
                    && principal.kind == PrincipalKind::Publishable
                    && !principal.disabled
                    && principal.allowed_origins.iter().any(|o| o == origin)
                    && self.publishable_owner_usable(&principal)?
                {
                    return Ok(true);
                }
            }
            match page.last() {
                Some((key, _)) if page.len() == 32 => after = Some(key.clone()),
                _ => return Ok(false),
            }
        }
    }

    /// Whether a publishable principal's owner is (still) usable.
    fn publishable_owner_usable(&self, principal: &Principal) -> Result<bool, AccessError> {
        let Some(owner) = &principal.owner else {
            return Ok(false);
        };
        Ok(self.principal(owner)?.is_some_and(|o| usable_owner(&o)))
    }

    /// A staff principal whose password hash (a PHC string, peppered) is
    /// `password_hash`.
    pub fn prepare_staff(
        &self,
        name: &str,
        roles: Vec<Role>,
        password_hash: String,
    ) -> Result<(Principal, Transaction), AccessError> {
        let (principal, tx) = self.new_principal(name, PrincipalKind::Staff, roles, Vec::new())?;
        let key = password_key(&principal.id);
        let sealed = self
            .keys()?
            .state_key()?
            .seal(key.as_bytes(), password_hash.as_bytes());
        Ok((principal, tx.put(key, sealed)))
    }

    pub fn principal(&self, id: &str) -> Result<Option<Principal>, AccessError> {
        Ok(self.principal_and_bytes(id)?.map(|(p, _)| p))
    }

    /// A principal and its stored bytes (for a transaction's precondition).
    fn principal_and_bytes(&self, id: &str) -> Result<Option<(Principal, Vec<u8>)>, AccessError> {
        let key = principal_key(id);
        let Some(bytes) = self.store.get(key.as_bytes())? else {
            return Ok(None);
        };
        let principal = self
            .keys()?
            .state_key()?
            .open_json(key.as_bytes(), &bytes)?;
        Ok(Some((principal, bytes)))
    }

    /// Every principal, by id.
    pub fn list(&self) -> Result<Vec<Principal>, AccessError> {
        let keys = self.keys()?;
        self.store
            .scan_prefix(PRINCIPAL_PREFIX.as_bytes())?
            .iter()
            .map(|(key, bytes)| Ok(keys.state_key()?.open_json(key, bytes)?))
            .collect()
    }

    /// The writes that disable `id` and end all its sessions; `None` for an
    /// unknown id. The API key stops working because authentication checks
    /// `disabled` on every request.
    pub fn prepare_disable(
        &self,
        id: &str,
    ) -> Result<Option<(Principal, Transaction)>, AccessError> {
        let Some((old, old_bytes)) = self.principal_and_bytes(id)? else {
            return Ok(None);
        };
        let principal = Principal {
            disabled: true,
            ..old
        };
        let sealed = seal_principal(&*self.keys()?.state_key()?, &principal)?;
        let mut tx = Transaction::new()
            .expect(principal_key(id), Some(old_bytes))
            .put(principal_key(id), sealed);
        let prefix = format!("{}{id}/", sessions::PRINCIPAL_SESSIONS_PREFIX);
        for (key, _) in self.store.scan_prefix(prefix.as_bytes())? {
            let digest = key.get(prefix.len()..).ok_or(AccessError::Corrupt)?;
            let digest = std::str::from_utf8(digest).map_err(|_| AccessError::Corrupt)?;
            tx = tx
                .delete(key.clone())
                .delete(format!("{}{digest}", sessions::SESSION_PREFIX));
        }
        Ok(Some((principal, tx)))
    }

    /// The staff principal called `name` and its password hash.
    pub fn staff_login_record(
        &self,
        name: &str,
    ) -> Result<Option<(Principal, String)>, AccessError> {
        let key = name_key(name);
        let Some(stored) = self.store.get(key.as_bytes())? else {
            return Ok(None);
        };
        let keys = self.keys()?;
        let id = open_text(&*keys.state_key()?, key.as_bytes(), &stored)?;
        let Some(principal) = self.principal(&id)? else {
            return Ok(None);
        };
        if principal.kind != PrincipalKind::Staff {
            return Ok(None);
        }
        let key = password_key(&id);
        let stored = self
            .store
            .get(key.as_bytes())?
            .ok_or(AccessError::Corrupt)?;
        let hash = open_text(&*keys.state_key()?, key.as_bytes(), &stored)?;
        Ok(Some((principal, hash)))
    }

    /// The enabled principal behind a bearer credential: an API key or a
    /// live session token.
    pub fn authenticate(
        &self,
        credential_key: &HmacKey,
        sessions: &SessionPolicy,
        bearer: &str,
    ) -> Result<Authenticated, AccessError> {
        let keys = self.keys()?;
        let state = keys.state_key()?;
        let (id, credential, touch) = if looks_like_api_key(bearer) {
            let index = api_key_index(credential_key, bearer);
            let stored = self
                .store
                .get(&index)?
                .ok_or(AccessError::Unauthenticated)?;
            (
                open_text(&state, &index, &stored)?,
                Credential::ApiKey,
                None,
            )
        } else if sessions::looks_like_session_token(bearer) {
            let key = sessions::session_key(credential_key, bearer);
            let stored = self
                .store
                .get(key.as_bytes())?
                .ok_or(AccessError::Unauthenticated)?;
            let session: StoredSession = state.open_json(key.as_bytes(), &stored)?;
            // The touch holds only if the session is still as read: a
            // logout (or another touch) in between makes it a conflict, so
            // a racing request can never bring an ended session back.
            let touch = sessions
                .check(&state, &key, &session, self.clock.now())?
                .map(|tx| tx.expect(key.clone(), Some(stored)));
            (session.principal_id, Credential::Session { key }, touch)
        } else {
            return Err(AccessError::Unauthenticated);
        };
        let principal = self.principal(&id)?.ok_or(AccessError::Unauthenticated)?;
        if principal.disabled {
            return Err(AccessError::Unauthenticated);
        }
        // A publishable key is usable only while its owner is: disabling the
        // owner service disables its keys at once. The key's prefix must
        // match its kind, so neither kind of key can pass for the other.
        let publishable = principal.kind == PrincipalKind::Publishable;
        if credential == Credential::ApiKey && publishable != looks_like_publishable_key(bearer) {
            return Err(AccessError::Unauthenticated);
        }
        if publishable && !self.publishable_owner_usable(&principal)? {
            return Err(AccessError::Unauthenticated);
        }
        Ok(Authenticated {
            principal,
            credential,
            touch,
        })
    }

    /// Opens a session for `principal` and clears its failed-login count.
    pub fn prepare_login(
        &self,
        credential_key: &HmacKey,
        sessions: &SessionPolicy,
        principal: &Principal,
        username: &str,
    ) -> Result<(SessionToken, OffsetDateTime, Transaction), AccessError> {
        let (token, expires, tx) = sessions.open(
            credential_key,
            &*self.keys()?.state_key()?,
            &principal.id,
            self.clock.now(),
        )?;
        let clear = LockoutPolicy::success(&lockout::lockout_key(credential_key, username));
        Ok((token, expires, tx.merge(clear)))
    }

    /// Counts a login attempt for `username` durably before its password
    /// is checked, unless the username is locked (see
    /// [`LockoutPolicy::reserve`]). Blocking.
    pub fn reserve_login_attempt(
        &self,
        credential_key: &HmacKey,
        lockout: &LockoutPolicy,
        username: &str,
    ) -> Result<Attempt, AccessError> {
        lockout.reserve(
            self.store.as_ref(),
            &*self.keys()?.state_key()?,
            &lockout::lockout_key(credential_key, username),
            self.clock.now(),
        )
    }

    /// The writes that end the session stored under `key`.
    pub fn prepare_logout(&self, key: &str, principal_id: &str) -> Transaction {
        sessions::close(key, principal_id)
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
        let publishable = ApiKey::generate_with(PUBLISHABLE_KEY_PREFIX).unwrap();
        assert!(looks_like_publishable_key(publishable.expose_secret()));
        assert!(looks_like_api_key(publishable.expose_secret()));
        assert!(!looks_like_publishable_key(key.expose_secret()));
    }

    #[test]
    fn origins() {
        for good in [
            "https://shop.example",
            "https://shop.example:8443",
            "https://a-b.c.example",
            "https://10.0.0.1",
            "http://localhost",
            "http://localhost:3000",
            "http://127.0.0.1:8080",
            "https://localhost",
        ] {
            assert_eq!(check_origin(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "shop.example",
            "https://",
            "https://Shop.example",
            "HTTPS://shop.example",
            "https://shop.example/",
            "https://shop.example/path",
            "https://shop.example?x",
            "https://shop.example#x",
            "https://user@shop.example",
            "https://*.shop.example",
            "https://shop.example:443",
            "http://localhost:80",
            "https://shop.example:0",
            "https://shop.example:080",
            "https://shop.example:65536",
            "https://shop.example:",
            "https://-shop.example",
            "https://shop..example",
            "https://[::1]",
            "http://shop.example",
            "http://192.168.1.1",
            "null",
            " https://shop.example",
        ] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
        assert!(check_origins(vec![]).is_err());
        assert!(check_origins(vec!["https://a.example".into(); 17]).is_err());
        assert_eq!(
            check_origins(vec!["https://a.example".into(); 16]).unwrap(),
            vec!["https://a.example".to_owned()]
        );
    }

    #[test]
    fn client_certificate_bindings() {
        let a = "a".repeat(64);
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(
            check_client_certs(Vec::new()).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            check_client_certs(vec![a.clone(), hex.clone(), a.clone()]).unwrap(),
            vec![a.clone(), hex.clone()]
        );
        for bad in [
            "A".repeat(64),
            "a".repeat(63),
            "a".repeat(65),
            "g".repeat(64),
            String::new(),
            format!("{}:", "a".repeat(63)),
            "é".repeat(32),
        ] {
            let e = check_client_certs(vec![bad.clone()]).unwrap_err();
            assert!(
                matches!(
                    e,
                    AccessError::Invalid {
                        field: "client_cert_sha256",
                        ..
                    }
                ),
                "{bad:?}"
            );
        }
        let many: Vec<String> = (0..=MAX_CLIENT_CERTS)
            .map(|i| format!("{i:064x}"))
            .collect();
        assert!(check_client_certs(many[..MAX_CLIENT_CERTS].to_vec()).is_ok());
        assert!(check_client_certs(many).is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("alice").is_ok());
        assert!(check_name("payments-api.v2").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name("Alice").is_err());
        assert!(check_name(&"a".repeat(65)).is_err());
    }
}
