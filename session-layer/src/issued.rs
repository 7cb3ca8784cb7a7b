//! What a sign-in, a rotation or a sign-out hands back to the handler: [`IssuedSession`] and
//! [`SignedOut`], both response parts, so that no handler writes a `Set-Cookie` by hand.

use std::fmt;

use axum_core::response::{IntoResponse, IntoResponseParts, Response, ResponseParts};
use cookie::Cookie;
use http::header::{CONTENT_TYPE, SET_COOKIE};
use http::{HeaderValue, StatusCode};
use uuid::Uuid;

use crate::config::CookieConfig;
use crate::extract::Transport;
use crate::session::Session;
use crate::token::SessionToken;

/// A session just created ([`SessionManager::create`](crate::SessionManager::create)) or a token
/// just rotated ([`SessionManager::rotate`](crate::SessionManager::rotate)): the token, which
/// exists only here, and the session it opens.
///
/// Deliver it one of three ways:
/// - to a browser, as response parts: `(issued, Json(body))` sets the session cookie (except
///   for the rotation of a session that came as a bearer token: a bearer client does not gain
///   a cookie);
/// - into an [axum-extra `CookieJar`](https://docs.rs/axum-extra/latest/axum_extra/extract/cookie/struct.CookieJar.html):
///   `jar.add(issued.cookie())` (or `jar.add(issued)`: it converts into a [`Cookie`]);
/// - to a bearer client (a mobile app, curl): send [`token`](Self::token)`().expose()` in the
///   body and leave the cookie out.
///
/// ```
/// use axum::{Json, extract::State, response::{IntoResponse, Response}};
/// use session_layer::{NewSession, SessionManager};
///
/// async fn login(State(sessions): State<SessionManager>, bearer: bool) -> Response {
///     # let user_id = uuid::Uuid::now_v7();
///     // ... check the password of `user_id` first ...
///     let Ok(issued) = sessions.create(NewSession::new(user_id)).await else {
///         return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
///     };
///     let id = issued.session().id.to_string();
///     if bearer {
///         Json(serde_json::json!({ "session_id": id, "token": issued.token().expose() }))
///             .into_response()
///     } else {
///         (issued, Json(serde_json::json!({ "session_id": id }))).into_response()
///     }
/// }
/// ```
#[must_use = "the token exists only here: deliver it, or the sign-in is lost"]
pub struct IssuedSession<U = Uuid> {
    token: SessionToken,
    session: Session<U>,
    cookie: CookieConfig,
    /// A rotation for a bearer client: its response parts set no cookie.
    bearer: bool,
}

impl<U> IssuedSession<U> {
    pub(crate) fn new(token: SessionToken, session: Session<U>, cookie: CookieConfig) -> Self {
        Self {
            token,
            session,
            cookie,
            bearer: false,
        }
    }

    /// As response parts, sets no cookie: the rotation of a bearer client's session, which
    /// must not gain a cookie credential (one that cross-site requests would carry).
    pub(crate) fn for_bearer(mut self) -> Self {
        self.bearer = true;
        self
    }

    /// The token, for a bearer client (`token().expose()` is what it sends back).
    pub fn token(&self) -> &SessionToken {
        &self.token
    }

    /// The session the token opens.
    pub fn session(&self) -> &Session<U> {
        &self.session
    }

    /// The `Set-Cookie` that delivers the token to a browser: the configured name and
    /// attributes, living until the session expires.
    pub fn cookie(&self) -> Cookie<'static> {
        self.cookie
            .session_cookie(&self.token, self.session.expires_at)
    }

    /// The token and the session, apart.
    pub fn into_parts(self) -> (SessionToken, Session<U>) {
        (self.token, self.session)
    }
}

impl<U: fmt::Debug> fmt::Debug for IssuedSession<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token's own `Debug` is redacted.
        f.debug_struct("IssuedSession")
            .field("token", &self.token)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// Sets the session cookie.
impl<U> IntoResponseParts for IssuedSession<U> {
    type Error = CookieHeaderError;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        if !self.bearer {
            append_cookie(&mut res, &self.cookie())?;
        }
        Ok(res)
    }
}

/// For `CookieJar::add(issued)`.
impl<U> From<IssuedSession<U>> for Cookie<'static> {
    fn from(issued: IssuedSession<U>) -> Self {
        issued.cookie()
    }
}

/// A session ended by its own user ([`SessionManager::logout`](crate::SessionManager::logout)).
///
/// As response parts it clears the session cookie when the request came with the cookie, and
/// adds nothing for a bearer client: `(signed_out, StatusCode::NO_CONTENT)`. With an axum-extra
/// `CookieJar`, `jar.add(signed_out.removal_cookie())`.
#[derive(Debug, Clone)]
#[must_use = "a cookie client's cookie is cleared only if this is part of the response"]
pub struct SignedOut {
    session_id: Uuid,
    transport: Transport,
    cookie: CookieConfig,
}

impl SignedOut {
    pub(crate) fn new(session_id: Uuid, transport: Transport, cookie: CookieConfig) -> Self {
        Self {
            session_id,
            transport,
            cookie,
        }
    }

    /// The session that ended.
    #[must_use]
    pub fn session_id(&self) -> Uuid {
        self.session_id
    }

    /// The `Set-Cookie` that removes the session cookie, whatever the transport.
    pub fn removal_cookie(&self) -> Cookie<'static> {
        self.cookie.removal_cookie()
    }
}

/// Clears the session cookie for a cookie client; nothing for a bearer client.
impl IntoResponseParts for SignedOut {
    type Error = CookieHeaderError;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        if self.transport == Transport::Cookie {
            append_cookie(&mut res, &self.removal_cookie())?;
        }
        Ok(res)
    }
}

/// For `CookieJar::add(signed_out)`: the removal cookie.
impl From<SignedOut> for Cookie<'static> {
    fn from(signed_out: SignedOut) -> Self {
        signed_out.removal_cookie()
    }
}

fn append_cookie(res: &mut ResponseParts, cookie: &Cookie<'_>) -> Result<(), CookieHeaderError> {
    let value = HeaderValue::try_from(cookie.to_string()).map_err(|_| CookieHeaderError)?;
    res.headers_mut().append(SET_COOKIE, value);
    Ok(())
}

/// The session cookie cannot be written as a header: the configured cookie name
/// ([`CookieConfig::with_name`]) holds a character that headers cannot carry. Tokens and the
/// fixed attributes never do. Answers 500: the response would otherwise go out without the
/// cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the session cookie is not a valid header value; check the configured cookie name")]
pub struct CookieHeaderError;

impl IntoResponse for CookieHeaderError {
    fn into_response(self) -> Response {
        tracing::error!("{self}");
        let mut response = (
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"error":"session_cookie_invalid","message":"the session cookie could not be set"}"#,
        )
            .into_response();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn session() -> Session {
        let now = OffsetDateTime::now_utc();
        Session {
            id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            device: "curl".to_owned(),
            device_type: crate::DeviceType::Unknown,
            device_name: None,
            user_agent: None,
            ip_address: None,
            created_at: now,
            last_active_at: now,
            expires_at: now + time::Duration::hours(1),
            revoked_at: None,
            revoked_reason: None,
        }
    }

    fn set_cookies(parts: impl IntoResponseParts<Error = CookieHeaderError>) -> Vec<String> {
        (parts, StatusCode::OK)
            .into_response()
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn an_issued_session_as_response_parts_sets_the_session_cookie() {
        let token = SessionToken::generate().unwrap();
        let issued = IssuedSession::new(token.clone(), session(), CookieConfig::insecure());
        let cookies = set_cookies(issued);
        assert_eq!(cookies.len(), 1);
        assert!(cookies[0].starts_with(&format!("session={};", token.expose())));
        assert!(cookies[0].contains("HttpOnly"));
    }

    #[test]
    fn an_issued_session_converts_into_its_cookie_for_a_cookie_jar() {
        let token = SessionToken::generate().unwrap();
        let cookie = Cookie::from(IssuedSession::new(
            token.clone(),
            session(),
            CookieConfig::secure(),
        ));
        assert_eq!(cookie.name(), "__Host-session");
        assert_eq!(cookie.value(), token.expose());
    }

    #[test]
    fn an_issued_session_never_prints_its_token() {
        let token = SessionToken::generate().unwrap();
        let issued = IssuedSession::new(token.clone(), session(), CookieConfig::insecure());
        assert!(!format!("{issued:?}").contains(&token.expose()));
    }

    #[test]
    fn signing_out_clears_the_cookie_of_a_cookie_client_only() {
        let id = Uuid::now_v7();
        let cookie = set_cookies(SignedOut::new(
            id,
            Transport::Cookie,
            CookieConfig::insecure(),
        ));
        assert_eq!(cookie.len(), 1);
        assert!(cookie[0].starts_with("session=;") && cookie[0].contains("Max-Age=0"));
        let bearer = set_cookies(SignedOut::new(
            id,
            Transport::Bearer,
            CookieConfig::insecure(),
        ));
        assert!(bearer.is_empty());
    }

    #[test]
    fn a_cookie_name_that_headers_cannot_carry_answers_500_not_a_response_without_it() {
        let issued = IssuedSession::new(
            SessionToken::generate().unwrap(),
            session(),
            CookieConfig::insecure().with_name("bad\nname"),
        );
        let response = (issued, StatusCode::OK).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().get(SET_COOKIE).is_none());
    }
}
