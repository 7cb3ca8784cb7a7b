//! `/api/sessions*`: the caller's devices, and signing them out.

use std::collections::BTreeMap;
use std::net::IpAddr;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use session_layer::{CurrentSession, RevocationReason, SessionManager};
use uuid::Uuid;

use super::SessionView;
use crate::error::ApiError;
use crate::locations::NewLocations;

/// The body of `GET /api/sessions`.
#[derive(Serialize)]
pub(crate) struct SessionList {
    sessions: Vec<SessionView>,
    /// Session id → the address it was last used from, where that is not its sign-in address.
    new_locations: BTreeMap<Uuid, IpAddr>,
}

/// `GET /api/sessions` → the caller's active sessions, most recently active first, and the new
/// address each was last used from where that differs from its sign-in address
/// (`new_locations`, by session id).
pub(crate) async fn list(
    State(manager): State<SessionManager>,
    State(locations): State<NewLocations>,
    current: CurrentSession,
) -> Result<Json<SessionList>, ApiError> {
    // Most recently active first, the caller's marked, each with its most recent use known.
    let sessions = manager.list_for(&current).await?;
    let new_locations = sessions
        .iter()
        .filter_map(|listed| Some((listed.session.id, locations.of(&listed.session)?)))
        .collect();
    let sessions = sessions.into_iter().map(SessionView::listed).collect();
    Ok(Json(SessionList {
        sessions,
        new_locations,
    }))
}

/// `DELETE /api/sessions/{id}` → `204`; another user's id is simply not found.
pub(crate) async fn revoke(
    State(manager): State<SessionManager>,
    current: CurrentSession,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = id
        .ok()
        .and_then(|Path(id)| Uuid::parse_str(id.trim()).ok())
        .ok_or(ApiError::InvalidSessionId)?;
    if id == current.session_id() {
        return Err(ApiError::CannotRevokeCurrentSession);
    }
    manager
        .revoke(current.user_id(), id, RevocationReason::RevokedByUser)
        .await?;
    tracing::info!(session_id = %id, by = %current.session_id(), "session revoked by its user");
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `POST /api/sessions/revoke-others`.
#[derive(Serialize)]
pub(crate) struct Revoked {
    revoked: u64,
}

/// `POST /api/sessions/revoke-others` → `{"revoked": <count>}`.
pub(crate) async fn revoke_others(
    State(manager): State<SessionManager>,
    current: CurrentSession,
) -> Result<Json<Revoked>, ApiError> {
    let revoked = manager
        .revoke_others(&current, RevocationReason::RevokedByUser)
        .await?;
    tracing::info!(session_id = %current.session_id(), revoked, "signed out everywhere else");
    Ok(Json(Revoked { revoked }))
}
