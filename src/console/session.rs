//! Who is at the console: the session cookie, checked by the API's own
//! [`Caller`] extractor, and the CSRF token bound to that session.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::{HeaderValue, header, request::Parts};
use axum::response::Response;

use super::{ConsoleState, Refusal, views};
use crate::access::{Credential, Principal, PrincipalKind, Role};
use crate::api::{ApiError, Caller, RequestId};
use crate::crypto::constant_time_eq;
use crate::tls::PeerCertificate;

/// The session cookie: the opaque token of `POST /v1/auth/login`.
pub const SESSION_COOKIE: &str = "strongroom_console";
/// The sign-in form's own CSRF cookie (there is no session yet to bind a
/// token to): its value must come back in the form.
pub const LOGIN_COOKIE: &str = "strongroom_console_signin";
/// The name of every form's CSRF field.
pub const CSRF_FIELD: &str = "csrf";

/// What the console knows of a request before its handler runs: its id,
/// its client, and whoever its session cookie names.
pub struct Cx {
    pub request_id: String,
    pub client: Option<ConnectInfo<SocketAddr>>,
    pub certificate: Option<PeerCertificate>,
    /// The session cookie's token, as sent.
    pub token: Option<String>,
    /// The sign-in form's CSRF cookie, as sent.
    pub login_csrf: Option<String>,
    pub session: Session,
}

/// The outcome of checking the session cookie.
pub enum Session {
    /// No cookie.
    Absent,
    /// A live staff session.
    Staff(Staff),
    /// A cookie the API refused (expired, ended, locked, sealed …).
    Refused(ApiError),
}

/// A signed-in person.
#[derive(Clone)]
pub struct Staff {
    pub principal: Principal,
    /// This session's CSRF token, for every form of the page.
    pub csrf: String,
}

impl Staff {
    pub fn has(&self, role: Role) -> bool {
        self.principal.roles.contains(&role)
    }
}

/// Every value of cookie `name` in the request's `Cookie` headers.
fn cookies(parts: &Parts, name: &str) -> Vec<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The one value of cookie `name`: none when it is absent, or when it
/// comes more than once (one of them planted by a sibling domain, say:
/// the console does not guess which one is the person's own).
fn cookie(parts: &Parts, name: &str) -> Option<String> {
    let mut values = cookies(parts, name);
    (values.len() == 1).then(|| values.pop()).flatten()
}

impl FromRequestParts<ConsoleState> for Cx {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        let token = cookie(parts, SESSION_COOKIE);
        let session = match &token {
            None if cookies(parts, SESSION_COOKIE).len() > 1 => {
                tracing::warn!("console request with more than one session cookie refused");
                Session::Refused(ApiError::Unauthenticated)
            }
            None => Session::Absent,
            Some(token) => check(parts, state, token).await,
        };
        Ok(Self {
            request_id: parts
                .extensions
                .get::<RequestId>()
                .map(|r| r.0.clone())
                .unwrap_or_default(),
            client: parts.extensions.get::<ConnectInfo<SocketAddr>>().cloned(),
            certificate: parts.extensions.get::<PeerCertificate>().cloned(),
            login_csrf: cookie(parts, LOGIN_COOKIE),
            token,
            session,
        })
    }
}

/// Checks `token` exactly as the API checks a bearer credential (its
/// `Caller` extractor: expiry, idle touch, disabled principals, bound
/// certificates, sealed), then asks for a staff session: an API key in
/// the cookie is refused.
async fn check(parts: &mut Parts, state: &ConsoleState, token: &str) -> Session {
    let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return Session::Refused(ApiError::Unauthenticated);
    };
    let sent = parts.headers.insert(header::AUTHORIZATION, bearer);
    let caller = Caller::from_request_parts(parts, &state.app).await;
    match sent {
        Some(value) => parts.headers.insert(header::AUTHORIZATION, value),
        None => parts.headers.remove(header::AUTHORIZATION),
    };
    let caller = match caller {
        Ok(caller) => caller,
        Err(e) => return Session::Refused(e),
    };
    let authenticated = caller.0;
    if !matches!(authenticated.credential, Credential::Session { .. })
        || authenticated.principal.kind != PrincipalKind::Staff
    {
        return Session::Refused(ApiError::Unauthenticated);
    }
    match csrf_token(state, token) {
        Ok(csrf) => Session::Staff(Staff {
            principal: authenticated.principal,
            csrf,
        }),
        Err(e) => Session::Refused(e),
    }
}

/// The CSRF token of a session: an HMAC of its token under the console
/// key, so it cannot be made without the session, and it dies with it.
fn csrf_token(state: &ConsoleState, token: &str) -> Result<String, ApiError> {
    let keys = state.app.keyring.keys()?;
    let key = keys.console_key()?;
    let mut message = b"strongroom console csrf\0".to_vec();
    message.extend_from_slice(token.as_bytes());
    Ok(hex::encode(key.sign(&message).0))
}

impl Cx {
    /// The signed-in person, or the page that says why not: the sign-in
    /// page (no session, or one the API refused), or the sealed page.
    pub fn staff(&self) -> Result<&Staff, Refusal> {
        match &self.session {
            Session::Staff(staff) => Ok(staff),
            Session::Absent => Err(super::see_other("/console/sign-in").into()),
            Session::Refused(ApiError::Sealed) => Err(views::sealed().into()),
            Session::Refused(ApiError::Unauthenticated) => Err(views::signed_out().into()),
            Session::Refused(e) => Err(views::api_error(e).into()),
        }
    }

    /// The signed-in person, after checking that the posted form carries
    /// this session's CSRF token.
    pub fn poster(&self, form: &Form) -> Result<&Staff, Refusal> {
        let staff = self.staff()?;
        let sent = form.get(CSRF_FIELD).unwrap_or_default();
        if constant_time_eq(sent.as_bytes(), staff.csrf.as_bytes()) {
            Ok(staff)
        } else {
            tracing::warn!(
                request_id = %self.request_id,
                principal = %staff.principal.id,
                "console form without its session's CSRF token refused"
            );
            Err(views::refusal(
                axum::http::StatusCode::FORBIDDEN,
                "This form's security token is missing or out of date, so it was refused. Reload the page and try again.",
            )
            .into())
        }
    }
}

/// A posted `application/x-www-form-urlencoded` form, its fields in order
/// (a field may repeat: check boxes).
pub struct Form(Vec<(String, String)>);

impl Form {
    /// Parses a form body; anything else is a 400 page.
    pub fn parse(body: &[u8]) -> Result<Self, Refusal> {
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
            .map(Self)
            .map_err(|_| {
                views::refusal(
                    axum::http::StatusCode::BAD_REQUEST,
                    "The form could not be read.",
                )
                .into()
            })
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name`, trimmed, or "" when absent.
    pub fn text(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().trim().to_owned()
    }

    /// Every value of `name`, in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// A `Set-Cookie` value for the console's cookies: `HttpOnly`,
/// `SameSite=Strict`, `Path=/console`, and `Secure` unless the server is
/// the plain-HTTP `dev` one. `None` clears the cookie.
pub fn set_cookie(state: &ConsoleState, name: &str, value: Option<&str>) -> HeaderValue {
    let secure = if state.app.settings.console_secure_cookie {
        "; Secure"
    } else {
        ""
    };
    let text = match value {
        Some(value) => format!("{name}={value}; HttpOnly; SameSite=Strict; Path=/console{secure}"),
        None => format!("{name}=; HttpOnly; SameSite=Strict; Path=/console{secure}; Max-Age=0"),
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}
