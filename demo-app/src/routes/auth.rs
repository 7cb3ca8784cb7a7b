//! `/api/auth/*` and `/api/me`: register, login, logout, refresh, password change and reset.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use session_layer::{
    CurrentSession, IssuedSession, NewSession, RevocationReason, SessionManager, SignedOut,
    TokenHash, Transport,
};
use uuid::Uuid;

use super::{AppState, PeerIp, SessionView};
use crate::accounts::{
    Db, has_control, is_strong_enough, is_valid_device_name, is_valid_email, normalize_email,
};
use crate::error::{ApiError, ApiJson};
use crate::quota::{Requester, Share};

#[derive(Deserialize)]
pub(crate) struct Credentials {
    email: String,
    password: String,
}

/// The body of `201` to `POST /api/auth/register`.
#[derive(Serialize)]
pub(crate) struct Registered {
    user_id: Uuid,
}

/// `POST /api/auth/register` → `201 {"user_id"}`.
///
/// A taken email is answered `409` before any hashing; the hash then draws on the client
/// address's registration share (`demo-app/API.md`, "Throttling and bounded hashing"). The
/// insert still answers `409` when a concurrent registration took the email meanwhile.
pub(crate) async fn register(
    State(state): State<AppState>,
    PeerIp(peer): PeerIp,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    let email = normalize_email(&body.email);
    if !is_valid_email(&email) {
        return Err(ApiError::InvalidEmail);
    }
    if !is_strong_enough(&body.password) {
        return Err(ApiError::WeakPassword);
    }
    if state.db.user_id_by_email(&email).await?.is_some() {
        return Err(ApiError::EmailTaken);
    }
    let requester = Requester {
        ip: state.sessions.client_ip(&headers, peer),
        share: Share::Registration,
    };
    let hash = state.passwords.hash(body.password, requester).await?;
    let user_id = state
        .db
        .insert_user(&email, &hash)
        .await?
        .ok_or(ApiError::EmailTaken)?;
    tracing::info!(%user_id, "user registered");
    Ok((StatusCode::CREATED, Json(Registered { user_id })))
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RequestedTransport {
    #[default]
    Cookie,
    Bearer,
}

#[derive(Deserialize)]
pub(crate) struct Login {
    email: String,
    password: String,
    #[serde(default)]
    device_name: Option<String>,
    #[serde(default)]
    transport: RequestedTransport,
}

/// `POST /api/auth/login` → `{"session"}` + cookie, or `{"session", "token"}` for bearer.
///
/// Throttled per client address (`demo-app/API.md`, "Throttling"): the attempt is counted
/// before anything is looked up, and refused with `429` once the address has too many recent
/// failures, whatever the password.
pub(crate) async fn login(
    State(state): State<AppState>,
    PeerIp(peer): PeerIp,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Login>,
) -> Result<Response, ApiError> {
    let email = normalize_email(&body.email);
    // Values no account can hold are refused before any database call (PostgreSQL refuses a
    // NUL in text, SQLite would store it).
    if has_control(&email) {
        return Err(ApiError::InvalidEmail);
    }
    if body
        .device_name
        .as_deref()
        .is_some_and(|name| !is_valid_device_name(name))
    {
        return Err(ApiError::InvalidDeviceName);
    }
    let client_ip = state.sessions.client_ip(&headers, peer);
    let attempt = state.throttle.begin(client_ip, &email).await?;
    let requester = Requester {
        ip: client_ip,
        share: Share::Account,
    };
    let checked = check_password(&state, &email, body.password, requester).await;
    let (user_id, fence) = match checked {
        Ok(Some(proved)) => proved,
        Ok(None) => {
            // Counted as a failure: `attempt` stays in the window.
            drop(attempt);
            tracing::info!("login refused: invalid credentials");
            return Err(ApiError::InvalidCredentials);
        }
        Err(error) => {
            state.throttle.undo(attempt).await;
            return Err(error);
        }
    };
    state.throttle.succeeded(attempt).await;

    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let new = NewSession::new(user_id)
        .user_agent(user_agent)
        .ip_address(client_ip)
        .device_name(body.device_name.as_deref())
        .fence(fence);
    let issued = match state.sessions.create(new).await {
        Ok(issued) => issued,
        // The password was changed or reset while this login checked it: the one it proved
        // may be the old one.
        Err(session_layer::Error::Fenced) => {
            tracing::info!(%user_id, "login refused: password changed during sign-in");
            return Err(ApiError::InvalidCredentials);
        }
        Err(other) => return Err(other.into()),
    };
    tracing::info!(%user_id, session_id = %issued.session().id, "signed in");
    Ok(issue(issued, body.transport == RequestedTransport::Bearer))
}

/// The user and the fence read before the hash when `password` is the account's, `None` when
/// the email is unknown or the password wrong (the same steps either way).
async fn check_password(
    state: &AppState,
    email: &str,
    password: String,
    requester: Requester,
) -> Result<Option<(Uuid, session_layer::Fence)>, ApiError> {
    let found = state.db.user_id_by_email(email).await?;
    // An unknown email takes the same steps against an id no user has, and is verified against
    // a dummy hash: same answer, same time.
    let probe = found.unwrap_or(Uuid::nil());
    // The fence is read before the password hash: a password change or reset that commits after
    // this read fences this sign-in out, so proving the old password cannot yield a session.
    let fence = state.sessions.fence(probe).await?;
    let stored = state
        .db
        .user_by_id(probe)
        .await?
        .filter(|_| found.is_some())
        .map(|(_, hash)| hash);
    let verified = state.passwords.verify(password, stored, requester).await?;
    Ok(found.filter(|_| verified).map(|user_id| (user_id, fence)))
}

/// The body of a login or a refresh: `{"session"}` for a cookie client (the token travels in
/// the cookie), `{"session", "token"}` for a bearer client.
#[derive(Serialize)]
pub(crate) struct LoginResponse {
    session: SessionView,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

/// The answer that hands a token over: a cookie, or the token in the body for bearer clients.
fn issue(issued: IssuedSession, bearer: bool) -> Response {
    let session = SessionView::issued(issued.session());
    if bearer {
        let token = Some(issued.token().expose());
        Json(LoginResponse { session, token }).into_response()
    } else {
        let body = LoginResponse {
            session,
            token: None,
        };
        (issued, Json(body)).into_response()
    }
}

/// `POST /api/auth/logout` → `204`, and the cookie cleared for a cookie client.
pub(crate) async fn logout(
    State(manager): State<SessionManager>,
    current: CurrentSession,
) -> Result<(SignedOut, StatusCode), ApiError> {
    // A session revoked meanwhile (another device, reuse detection) counts as signed out.
    let signed_out = manager.logout(&current).await?;
    tracing::info!(session_id = %signed_out.session_id(), "signed out");
    Ok((signed_out, StatusCode::NO_CONTENT))
}

/// `POST /api/auth/refresh` → the session with a new token, delivered the way it came.
pub(crate) async fn refresh(
    State(manager): State<SessionManager>,
    current: CurrentSession,
) -> Result<Response, ApiError> {
    let bearer = current.transport() == Transport::Bearer;
    match manager.rotate(&current).await {
        Ok(issued) => Ok(issue(issued, bearer)),
        // Another rotation won or the session ended: the presented token is dead.
        Err(session_layer::Error::RotationConflict) => Ok(current.rejection().into_response()),
        Err(other) => Err(other.into()),
    }
}

#[derive(Deserialize)]
pub(crate) struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// `POST /api/auth/password` → `204`; every other session of the user is revoked.
///
/// `current_password` is guarded by the login throttle (same windows, keyed by the account's
/// email and the client address).
pub(crate) async fn change_password(
    State(state): State<AppState>,
    PeerIp(peer): PeerIp,
    headers: HeaderMap,
    current: CurrentSession,
    ApiJson(body): ApiJson<PasswordChange>,
) -> Result<Response, ApiError> {
    let Some((email, stored)) = state.db.user_by_id(current.user_id()).await? else {
        return Ok(unauthenticated(&current));
    };
    let client_ip = state.sessions.client_ip(&headers, peer);
    let attempt = state.throttle.begin(client_ip, &email).await?;
    let requester = Requester {
        ip: client_ip,
        share: Share::Account,
    };
    match state
        .passwords
        .verify(body.current_password, Some(stored), requester)
        .await
    {
        Ok(true) => state.throttle.succeeded(attempt).await,
        Ok(false) => {
            // Counted as a failure: `attempt` stays in the window.
            drop(attempt);
            return Err(ApiError::InvalidPassword);
        }
        Err(error) => {
            state.throttle.undo(attempt).await;
            return Err(error);
        }
    }
    if !is_strong_enough(&body.new_password) {
        return Err(ApiError::WeakPassword);
    }
    let hash = state.passwords.hash(body.new_password, requester).await?;
    let user_id = current.user_id();
    let revoked = run_to_end(async move {
        state.db.set_password(user_id, &hash).await?;
        // Also advances the user's fence: a login that proved the old password is refused.
        let revoked = revoke_after_password_change(user_id, || {
            state
                .sessions
                .revoke_others(&current, RevocationReason::PasswordChange)
        })
        .await?;
        Ok(revoked)
    })
    .await?;
    tracing::info!(%user_id, revoked, "password changed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub(crate) struct ResetRequest {
    email: String,
}

/// `POST /api/auth/password-reset/request` → `202`, whether or not the account exists: the
/// same steps for every well-formed body (queue the email, answer), the work happens later on
/// the reset task (see [`crate::reset`]). `429` when the client address already has as many
/// requests waiting as it may.
pub(crate) async fn request_password_reset(
    State(state): State<AppState>,
    PeerIp(peer): PeerIp,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ResetRequest>,
) -> Result<StatusCode, ApiError> {
    let email = normalize_email(&body.email);
    if has_control(&email) {
        return Err(ApiError::InvalidEmail);
    }
    state
        .resets
        .push(email, state.sessions.client_ip(&headers, peer))?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Deserialize)]
pub(crate) struct ResetConfirm {
    token: String,
    new_password: String,
}

/// `POST /api/auth/password-reset/confirm` → `204`; every session of the user is revoked.
pub(crate) async fn confirm_password_reset(
    State(state): State<AppState>,
    PeerIp(peer): PeerIp,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ResetConfirm>,
) -> Result<StatusCode, ApiError> {
    let hash =
        TokenHash::from_encoded(body.token.trim()).map_err(|_| ApiError::InvalidResetToken)?;
    // The token is checked before the new password, and used up only once both are good.
    if state.db.reset_token_user(&hash).await?.is_none() {
        return Err(ApiError::InvalidResetToken);
    }
    if !is_strong_enough(&body.new_password) {
        return Err(ApiError::WeakPassword);
    }
    let requester = Requester {
        ip: state.sessions.client_ip(&headers, peer),
        share: Share::Account,
    };
    let password_hash = state.passwords.hash(body.new_password, requester).await?;
    let (user_id, revoked) = run_to_end(async move {
        let user_id = state
            .db
            .reset_password(&hash, &password_hash)
            .await?
            .ok_or(ApiError::InvalidResetToken)?;
        // Residual window: a crash between the commit above and this revocation leaves the new
        // password set, the token used and the old sessions (and in-flight logins) alive.
        let revoked = revoke_after_password_change(user_id, || {
            state
                .sessions
                .revoke_all(user_id, RevocationReason::PasswordReset)
        })
        .await?;
        Ok((user_id, revoked))
    })
    .await?;
    tracing::info!(%user_id, revoked, "password reset");
    Ok(StatusCode::NO_CONTENT)
}

/// Runs `work` on a task of its own and waits for it: a client that goes away drops this future,
/// not the work, so a password change is never left half done.
async fn run_to_end<T: Send + 'static>(
    work: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(work).await.unwrap_or_else(|error| {
        tracing::error!(%error, "a password change's task ended before finishing");
        Err(ApiError::Unavailable)
    })
}

/// How many times the revocation that follows a committed password change is tried.
const REVOCATION_TRIES: u32 = 3;

/// Runs the revocation that must follow a committed password change, retrying a failure a few
/// times (50 ms, then 100 ms apart): the password cannot be un-changed, so giving up at once
/// would leave the old sessions alive.
async fn revoke_after_password_change<F, Fut>(
    user_id: Uuid,
    mut revoke: F,
) -> Result<u64, session_layer::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, session_layer::Error>>,
{
    let mut backoff = Duration::from_millis(50);
    let mut tries = 1;
    loop {
        match revoke().await {
            Ok(revoked) => return Ok(revoked),
            Err(error) if tries < REVOCATION_TRIES => {
                tracing::warn!(%user_id, %error, tries, "revocation after a password change failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                tries += 1;
            }
            Err(error) => {
                tracing::error!(%user_id, %error, "password changed but its revocation failed; sessions may survive");
                return Err(error);
            }
        }
    }
}

/// The body of `GET /api/me`.
#[derive(Serialize)]
pub(crate) struct Me {
    user_id: Uuid,
    email: String,
    session_id: Uuid,
}

/// `GET /api/me` → `{"user_id", "email", "session_id"}`.
pub(crate) async fn me(
    State(db): State<Db>,
    current: CurrentSession,
) -> Result<Response, ApiError> {
    let Some((email, _)) = db.user_by_id(current.user_id()).await? else {
        return Ok(unauthenticated(&current));
    };
    Ok(Json(Me {
        user_id: current.user_id(),
        email,
        session_id: current.session_id(),
    })
    .into_response())
}

/// The session belongs to a user that no longer exists.
fn unauthenticated(current: &CurrentSession) -> Response {
    current.rejection().into_response()
}
