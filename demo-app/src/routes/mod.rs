//! The JSON API of the contract, and what its handlers share.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use serde::Serialize;
use session_layer::{CurrentSession, Session, SessionManager};
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
    /// `session` seen from the request authenticated by `current`.
    pub(crate) fn new(session: Session, current: &CurrentSession) -> Self {
        let is_current = session.id == current.session_id();
        // The stored value is coarse; this process knows the current session's latest use.
        let last_active_at = if is_current {
            session.last_active_at.max(current.last_active_at())
        } else {
            session.last_active_at
        };
        Self::with_activity(session, last_active_at, is_current)
    }

    /// A session just created by this request (it is the current one).
    pub(crate) fn new_signed_in(session: Session) -> Self {
        let last_active_at = session.last_active_at;
        Self::with_activity(session, last_active_at, true)
    }

    fn with_activity(session: Session, last_active_at: OffsetDateTime, current: bool) -> Self {
        Self {
            id: session.id,
            device: session.device,
            device_type: session.device_type.as_str(),
            device_name: session.device_name,
            ip_address: session.ip_address,
            created_at: session.created_at,
            last_active_at,
            expires_at: session.expires_at,
            current,
        }
    }

    /// Most recently active first; on a tie the newer session (larger v7 id) first.
    pub(crate) fn sort(views: &mut [Self]) {
        views.sort_by(|a, b| {
            b.last_active_at
                .cmp(&a.last_active_at)
                .then_with(|| b.id.cmp(&a.id))
        });
    }

    /// End of the absolute lifetime (the cookie lives as long).
    pub(crate) fn expires_at(&self) -> OffsetDateTime {
        self.expires_at
    }
}
