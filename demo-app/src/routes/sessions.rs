//! `/api/sessions*`: the caller's devices, and signing them out.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use session_layer::{CurrentSession, RevocationReason};
use uuid::Uuid;

use super::{AppState, SessionView};
use crate::error::ApiError;

/// `GET /api/sessions` → the caller's active sessions, most recently active first, and the new
/// address each was last used from where that differs from its sign-in address
/// (`new_locations`, by session id).
pub(crate) async fn list(
    State(state): State<AppState>,
    current: CurrentSession,
) -> Result<Response, ApiError> {
    // Most recently active first, the caller's marked, each with its most recent use known.
    let sessions = state.sessions.list_for(&current).await?;
    let new_locations: serde_json::Map<String, serde_json::Value> = sessions
        .iter()
        .filter_map(|listed| {
            let ip = state.locations.of(&listed.session)?;
            Some((listed.session.id.to_string(), json!(ip)))
        })
        .collect();
    let views: Vec<SessionView> = sessions.into_iter().map(SessionView::listed).collect();
    Ok(Json(json!({ "sessions": views, "new_locations": new_locations })).into_response())
}

/// `DELETE /api/sessions/{id}` → `204`; another user's id is simply not found.
pub(crate) async fn revoke(
    State(state): State<AppState>,
    current: CurrentSession,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = id
        .ok()
        .and_then(|Path(id)| Uuid::parse_str(id.trim()).ok())
        .ok_or(ApiError::InvalidSessionId)?;
    if id == current.session_id() {
        return Err(ApiError::CannotRevokeCurrentSession);
    }
    state
        .sessions
        .revoke(current.user_id(), id, RevocationReason::RevokedByUser)
        .await?;
    tracing::info!(session_id = %id, by = %current.session_id(), "session revoked by its user");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/sessions/revoke-others` → `{"revoked": <count>}`.
pub(crate) async fn revoke_others(
    State(state): State<AppState>,
    current: CurrentSession,
) -> Result<Response, ApiError> {
    let revoked = state
        .sessions
        .revoke_others(&current, RevocationReason::RevokedByUser)
        .await?;
    tracing::info!(session_id = %current.session_id(), revoked, "signed out everywhere else");
    Ok(Json(json!({ "revoked": revoked })).into_response())
}
