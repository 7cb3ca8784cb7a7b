//! "New location" markers: the session library reports a session used from a new client address
//! (its anomaly hook); the session list shows the newest such address beside the session.

use std::net::IpAddr;
use std::time::Duration;

use moka::sync::Cache;
use session_layer::anomaly::{Change, Verdict};
use session_layer::{Session, SessionManager};
use uuid::Uuid;

/// The newest address each session was used from, when it was reported as new.
#[derive(Debug, Clone)]
pub(crate) struct NewLocations {
    by_session: Cache<Uuid, IpAddr>,
}

impl NewLocations {
    /// Starts listening to `sessions`' anomaly reports; an entry lasts as long as a session can.
    pub(crate) fn watch(sessions: &SessionManager) -> Self {
        let by_session = Cache::builder()
            .max_capacity(100_000)
            .time_to_live(sessions.config().ttl().max(Duration::from_secs(1)))
            .build();
        let this = Self { by_session };
        let sink = this.clone();
        sessions.on_anomaly(move |anomaly| {
            if let Change::IpAddress { previous, current } = anomaly.change {
                tracing::info!(
                    session_id = %anomaly.session_id,
                    user_id = ?anomaly.user_id,
                    previous = ?previous,
                    %current,
                    "new location noted for the session list"
                );
                sink.by_session.insert(anomaly.session_id, current);
            }
            Verdict::Allow
        });
        this
    }

    /// The address `session` was last reported used from, unless it is the sign-in address.
    pub(crate) fn of(&self, session: &Session) -> Option<IpAddr> {
        self.by_session
            .get(&session.id)
            .filter(|ip| Some(*ip) != session.ip_address)
    }
}
