//! [`CurrentSession`]: the extractor handlers take, and its rejection.

use std::net::IpAddr;
use std::sync::Arc;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::cache::SessionEntry;
use crate::device::DeviceType;
use crate::session::Session;
use crate::token::TokenHash;

/// How the token of the current request arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The session cookie.
    Cookie,
    /// `Authorization: Bearer`.
    Bearer,
}

/// The authenticated session of the current request, put there by
/// [`SessionLayer`](crate::SessionLayer).
///
/// Take it in a handler to require a session (401 otherwise), or take
/// `Option<CurrentSession>` for routes that work either way. Cloning is an `Arc` increment.
///
/// ```
/// use axum::{Json, routing::get, Router};
/// use session_layer::CurrentSession;
///
/// async fn me(session: CurrentSession) -> String {
///     format!("user {} on {}", session.user_id(), session.device())
/// }
///
/// async fn home(session: Option<CurrentSession>) -> &'static str {
///     if session.is_some() { "welcome back" } else { "please sign in" }
/// }
///
/// let app: Router = Router::new().route("/me", get(me)).route("/", get(home));
/// ```
///
/// With another user id type than [`Uuid`], take `CurrentSession<YourId>` (the layer puts the
/// session of its manager's id type into the request).
pub struct CurrentSession<U = Uuid> {
    entry: Arc<SessionEntry<U>>,
    transport: Transport,
}

impl<U> Clone for CurrentSession<U> {
    fn clone(&self) -> Self {
        Self {
            entry: Arc::clone(&self.entry),
            transport: self.transport,
        }
    }
}

impl<U: Clone> CurrentSession<U> {
    pub(crate) fn new(entry: Arc<SessionEntry<U>>, transport: Transport) -> Self {
        Self { entry, transport }
    }

    /// The session id.
    #[must_use]
    pub fn session_id(&self) -> Uuid {
        self.entry.session.id
    }

    /// The signed-in user (a clone: free for `Uuid` and `i64`).
    #[must_use]
    pub fn user_id(&self) -> U {
        self.entry.session.user_id.clone()
    }

    /// Sign-in time.
    #[must_use]
    pub fn created_at(&self) -> OffsetDateTime {
        self.entry.session.created_at
    }

    /// End of the absolute lifetime.
    #[must_use]
    pub fn expires_at(&self) -> OffsetDateTime {
        self.entry.session.expires_at
    }

    /// Most recent use known to this process.
    #[must_use]
    pub fn last_active_at(&self) -> OffsetDateTime {
        self.entry.last_used()
    }

    /// "Chrome on Windows".
    #[must_use]
    pub fn device(&self) -> &str {
        &self.entry.session.device
    }

    /// Desktop, mobile, tablet, bot or unknown.
    #[must_use]
    pub fn device_type(&self) -> DeviceType {
        self.entry.session.device_type
    }

    /// The name the user gave the device, if any.
    #[must_use]
    pub fn device_name(&self) -> Option<&str> {
        self.entry.session.device_name.as_deref()
    }

    /// Client address at sign-in.
    #[must_use]
    pub fn ip_address(&self) -> Option<IpAddr> {
        self.entry.session.ip_address
    }

    /// The session as loaded from the store (its `last_active_at` is the stored, coarse value).
    #[must_use]
    pub fn session(&self) -> &Session<U> {
        &self.entry.session
    }

    /// Whether the token came in the cookie or as a bearer token; answer a rotation the same way.
    #[must_use]
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The 401 to answer when this session turns out to be unusable after all (a lost
    /// rotation race, a deleted account), phrased for the transport the client used.
    #[must_use]
    pub fn rejection(&self) -> SessionRejection {
        SessionRejection::Unauthenticated {
            bearer_sent: self.transport == Transport::Bearer,
        }
    }

    pub(crate) fn token_hash(&self) -> TokenHash {
        self.entry.token_hash
    }
}

impl<U: std::fmt::Debug + Clone> std::fmt::Debug for CurrentSession<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentSession")
            .field("session_id", &self.session_id())
            .field("user_id", &self.entry.session.user_id)
            .field("device", &self.device())
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// Marker the layer leaves with every session it authenticated, whatever the user id type: the
/// [`CrossSiteGuard`](crate::CrossSiteGuard) reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Authenticated(pub(crate) Transport);

/// Puts the session the layer found into the request, and records its ids on the request's
/// span where that declares the fields `session.id` and `user.id` (see
/// [`SessionLayer`](crate::SessionLayer)).
pub(crate) fn authenticated<B, U: Clone + std::fmt::Debug + Send + Sync + 'static>(
    request: &mut http::Request<B>,
    entry: Arc<SessionEntry<U>>,
    transport: Transport,
) {
    let span = tracing::Span::current();
    if !span.is_disabled() {
        span.record("session.id", tracing::field::display(entry.session.id));
        // Debug, not Display: a text id's newlines and quotes come out escaped, so no id can forge
        // a log line.
        span.record("user.id", tracing::field::debug(&entry.session.user_id));
    }
    let extensions = request.extensions_mut();
    extensions.insert(Authenticated(transport));
    extensions.insert(CurrentSession::new(entry, transport));
}

/// The layer authenticated this request, but for a manager of another user id type than the
/// handler asks for (`CurrentSession` is `CurrentSession<Uuid>`): a programming error that would
/// otherwise look like a bad token.
fn warn_if_other_id_type<U>(parts: &Parts) {
    if parts.extensions.get::<Authenticated>().is_some() {
        tracing::error!(
            wanted = std::any::type_name::<CurrentSession<U>>(),
            "the handler takes a CurrentSession of another user id type than its SessionLayer's \
             manager: write CurrentSession<YourId>; the request is answered as unauthenticated"
        );
    }
}

/// Marker the layer puts into the request extensions when the session store could not be asked:
/// the request may have carried a valid session, so it must not be treated as signed out.
///
/// The [`CurrentSession`] extractor answers 503 for it by itself. A plain Tower service reads it
/// to tell 503 from 401 (or uses [`SessionRejection::for_request`]):
///
/// ```
/// use http::{Request, StatusCode};
/// use session_layer::{CurrentSession, SessionUnavailable};
///
/// fn status<B>(request: &Request<B>) -> StatusCode {
///     let extensions = request.extensions();
///     if extensions.get::<CurrentSession>().is_some() {
///         StatusCode::OK
///     } else if extensions.get::<SessionUnavailable>().is_some() {
///         StatusCode::SERVICE_UNAVAILABLE
///     } else {
///         StatusCode::UNAUTHORIZED
///     }
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionUnavailable;

/// Why [`CurrentSession`] could not be extracted. Answers with a JSON body
/// `{"error": "...", "message": "..."}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionRejection {
    /// No valid session: 401 with `WWW-Authenticate: Bearer` (and `error="invalid_token"` when
    /// a bearer token was sent, per RFC 6750).
    #[error("a valid session is required")]
    Unauthenticated {
        /// Whether the request carried `Authorization: Bearer`.
        bearer_sent: bool,
    },
    /// The session store could not be reached: 503, never a guess.
    #[error("sessions cannot be checked right now")]
    Unavailable,
}

impl SessionRejection {
    pub(crate) fn from_parts(parts: &Parts) -> Self {
        Self::from_extensions(&parts.extensions, &parts.headers)
    }

    /// Why a request that the [`SessionLayer`](crate::SessionLayer) passed on without a
    /// [`CurrentSession`] has none: for plain Tower services, which have no extractor.
    #[must_use]
    pub fn for_request<B>(request: &http::Request<B>) -> Self {
        Self::from_extensions(request.extensions(), request.headers())
    }

    fn from_extensions(extensions: &http::Extensions, headers: &http::HeaderMap) -> Self {
        if extensions.get::<SessionUnavailable>().is_some() {
            Self::Unavailable
        } else {
            Self::Unauthenticated {
                bearer_sent: crate::credential::bearer_token(headers).is_some(),
            }
        }
    }

    /// The status it answers with: 401 or 503.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The machine-readable code of its JSON body: `unauthenticated` or
    /// `session_store_unavailable`.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated { .. } => "unauthenticated",
            Self::Unavailable => "session_store_unavailable",
        }
    }

    /// The human-readable message of its JSON body.
    #[must_use]
    pub fn body_text(&self) -> &'static str {
        match self {
            Self::Unauthenticated { .. } => {
                "sign in to continue: the session is missing, expired or revoked"
            }
            Self::Unavailable => "sessions cannot be checked right now; try again shortly",
        }
    }
}

impl IntoResponse for SessionRejection {
    fn into_response(self) -> Response {
        let www_authenticate = match self {
            Self::Unauthenticated { bearer_sent: true } => Some(r#"Bearer error="invalid_token""#),
            Self::Unauthenticated { bearer_sent: false } => Some("Bearer"),
            Self::Unavailable => None,
        };
        // Codes and messages hold no character that JSON escapes.
        let body = format!(
            r#"{{"error":"{}","message":"{}"}}"#,
            self.code(),
            self.body_text()
        );
        let mut response = (self.status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(value) = www_authenticate {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
        }
        if self == Self::Unavailable {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl<S: Send + Sync, U: Clone + Send + Sync + 'static> FromRequestParts<S> for CurrentSession<U> {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Self>().cloned().ok_or_else(|| {
            warn_if_other_id_type::<U>(parts);
            SessionRejection::from_parts(parts)
        })
    }
}

impl<S: Send + Sync, U: Clone + Send + Sync + 'static> OptionalFromRequestParts<S>
    for CurrentSession<U>
{
    type Rejection = SessionRejection;

    /// `None` when no valid session was presented; still 503 when the store was down, since
    /// "signed out" would be a guess.
    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        if let Some(session) = parts.extensions.get::<Self>() {
            return Ok(Some(session.clone()));
        }
        if parts.extensions.get::<SessionUnavailable>().is_some() {
            return Err(SessionRejection::Unavailable);
        }
        warn_if_other_id_type::<U>(parts);
        Ok(None)
    }
}
