//! The JSON API of the contract, and what its handlers share.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use serde::Serialize;
use session_layer::{ListedSession, Session, SessionManager};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::accounts::{Db, Passwords};
use crate::locations::NewLocations;
use crate::reset::ResetQueue;
use crate::throttle::Throttle;

pub(crate) mod auth;
pub(crate) mod sessions;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) sessions: SessionManager,
    pub(crate) db: Db,
    pub(crate) passwords: Passwords,
    pub(crate) throttle: Arc<Throttle>,
    pub(crate) resets: ResetQueue,
    pub(crate) locations: NewLocations,
}

// The parts a handler can take on their own (`State<SessionManager>`, ...) when it needs no
// other: its signature then says what it touches.

impl FromRef<AppState> for SessionManager {
    fn from_ref(state: &AppState) -> Self {
        state.sessions.clone()
    }
}

impl FromRef<AppState> for Db {
    fn from_ref(state: &AppState) -> Self {
        state.db.clone()
    }
}

impl FromRef<AppState> for NewLocations {
    fn from_ref(state: &AppState) -> Self {
        state.locations.clone()
    }
}

/// The socket peer's address: [`crate::serve`] (or axum's
/// `into_make_service_with_connect_info::<SocketAddr>()`) provides it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerIp(pub(crate) Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip()),
        ))
    }
}

/// A session as clients see it: never the token, its hash or the raw user agent.
#[derive(Debug, Serialize)]
pub(crate) struct SessionView {
    id: Uuid,
    device: String,
    device_type: &'static str,
    device_name: Option<String>,
    ip_address: Option<IpAddr>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    last_active_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    current: bool,
}

impl SessionView {
    /// A session of the caller's list.
    pub(crate) fn listed(listed: ListedSession) -> Self {
        Self::of(listed.session, listed.current)
    }

    /// The session that a sign-in or a refresh just issued to the caller.
    pub(crate) fn issued(session: &Session) -> Self {
        Self::of(session.clone(), true)
    }

    fn of(session: Session, current: bool) -> Self {
        Self {
            id: session.id,
            device: session.device,
            device_type: session.device_type.as_str(),
            device_name: session.device_name,
            ip_address: session.ip_address,
            created_at: session.created_at,
            last_active_at: session.last_active_at,
            expires_at: session.expires_at,
            current,
        }
    }
}
