//! [`ApiError`]: every error the API answers, as `{"error": "<code>", "message": "<text>"}`.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

/// An error answer of the API. The code strings are fixed by the contract.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not valid JSON, lacks a field or has a field of the wrong type.
    #[error("{0}")]
    InvalidRequest(String),
    /// 401: wrong password or unknown email (deliberately the same answer).
    #[error("email or password is wrong")]
    InvalidCredentials,
    /// 403: the current password given for a password change is wrong.
    #[error("the current password is wrong")]
    InvalidPassword,
    /// 409: an account with that email exists.
    #[error("an account with this email already exists")]
    EmailTaken,
    /// 422: the email is not an address.
    #[error("that is not an email address")]
    InvalidEmail,
    /// 422: the device name holds a control character or is too long.
    #[error("the device name must be at most 100 characters, without control characters")]
    InvalidDeviceName,
    /// 422: the password has fewer than 8 characters.
    #[error("the password must have at least 8 characters")]
    WeakPassword,
    /// 400: unknown, used or expired password-reset token.
    #[error("the reset link is invalid, used or expired; request a new one")]
    InvalidResetToken,
    /// 400: the session id in the path is not a UUID.
    #[error("the session id is not a valid id")]
    InvalidSessionId,
    /// 400: the caller tried to revoke the session it is using.
    #[error("this is the current session; sign out instead")]
    CannotRevokeCurrentSession,
    /// 404: no such active session of the caller.
    #[error("no such session")]
    SessionNotFound,
    /// 404: no such route.
    #[error("no such route")]
    NotFound,
    /// 405: the route exists, not with this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// 429: too many failed password attempts from this address; retry after the duration.
    #[error("too many failed attempts; try again later")]
    TooManyAttempts(std::time::Duration),
    /// 503: every password hasher is busy and the queue is full, or this client address has
    /// as many hash jobs queued as it may; retry in a moment.
    #[error("the server is busy; try again in a moment")]
    Busy,
    /// 503: this client address has used up its share of password hashing for now (see
    /// `demo-app/API.md`, "Throttling and bounded hashing"); retry after the duration.
    #[error("the server is busy; try again later")]
    BusyFor(std::time::Duration),
    /// 408: the request took longer than the server allows (see [`crate::server`]).
    #[error("the request took too long")]
    RequestTimeout,
    /// 503: the database could not be reached; logged with its cause.
    #[error("the service is temporarily unavailable; try again shortly")]
    Unavailable,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            Self::InvalidPassword => (StatusCode::FORBIDDEN, "invalid_password"),
            Self::EmailTaken => (StatusCode::CONFLICT, "email_taken"),
            Self::InvalidEmail => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_email"),
            Self::InvalidDeviceName => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_device_name"),
            Self::WeakPassword => (StatusCode::UNPROCESSABLE_ENTITY, "weak_password"),
            Self::InvalidResetToken => (StatusCode::BAD_REQUEST, "invalid_reset_token"),
            Self::InvalidSessionId => (StatusCode::BAD_REQUEST, "invalid_session_id"),
            Self::CannotRevokeCurrentSession => {
                (StatusCode::BAD_REQUEST, "cannot_revoke_current_session")
            }
            Self::SessionNotFound => (StatusCode::NOT_FOUND, "session_not_found"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::TooManyAttempts(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"),
            Self::Busy | Self::BusyFor(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            Self::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
        }
    }

    /// Logs a database failure (never with a secret) and answers 503.
    pub(crate) fn database(error: &sqlx::Error) -> Self {
        tracing::error!(%error, "database call failed");
        Self::Unavailable
    }
}

impl From<session_layer::Error> for ApiError {
    fn from(error: session_layer::Error) -> Self {
        // Every variant is named, so a new one must be mapped here on purpose.
        match error {
            session_layer::Error::SessionNotFound => Self::SessionNotFound,
            // A password change or reset revoked the user's sessions while the sign-in was
            // checking the password: the one it proved may be the old one.
            session_layer::Error::Fenced => Self::InvalidCredentials,
            session_layer::Error::Store(_)
            | session_layer::Error::Interrupted
            | session_layer::Error::RotationConflict
            | session_layer::Error::Token(_)
            | session_layer::Error::NoRuntime => {
                tracing::error!(%error, "session call failed");
                Self::Unavailable
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = Json(json!({ "error": code, "message": self.to_string() }));
        let retry_after = match self {
            // Whole seconds, rounded up: retrying at that moment succeeds.
            Self::TooManyAttempts(wait) | Self::BusyFor(wait) => {
                Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
            }
            Self::Busy | Self::Unavailable => Some(1),
            _ => None,
        };
        let mut response = (status, body).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}

/// `Json<T>` whose rejection is `400 invalid_request` JSON instead of axum's plain text.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::InvalidRequest(describe(&rejection))),
        }
    }
}

/// The rejection's text says what was wrong with the body (serde's message, no body echo
/// beyond the offending position), which helps a client author.
fn describe(rejection: &JsonRejection) -> String {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "expected a JSON body with Content-Type: application/json".to_owned()
        }
        other => other.body_text(),
    }
}
