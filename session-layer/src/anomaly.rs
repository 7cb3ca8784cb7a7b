//! Sessions used from somewhere new: a different client address or user agent than the session
//! was created with, or than it was last seen with.
//!
//! The layer compares each authenticated request's client address and `User-Agent` with the
//! last ones seen for its session. On a change it emits one `tracing` event (target
//! `session_layer::anomaly`, level `WARN`) per changed value, with the session id, user id, and
//! the old and new values, and calls the hook set with
//! [`SessionManager::on_anomaly`](crate::SessionManager::on_anomaly). Requests that change
//! nothing cost one hash of the two values and one atomic load: no lock and no allocation.
//!
//! At most 10 changes per session and hour are reported; past that, one more WARN says so and
//! the rest of the hour is quiet, so that a token flipping between values cannot flood the log
//! or the hook. A panicking hook is logged and the request goes on. User ids are logged in
//! their `Debug` form, so a text id cannot forge a log line.
//!
//! What "last seen" means: each process remembers it per session for as long as it remembers the
//! session's activity (the idle timeout plus the cache TTL). Several instances each report a change
//! once, and a process that restarts compares with the values the session was created with.
//!
//! The client address is the socket peer, resolved through
//! [`trusted_proxies`](crate::SessionConfigBuilder::trusted_proxies) like
//! [`SessionManager::client_ip`](crate::SessionManager::client_ip). The layer reads the peer from
//! a [`PeerAddr`] request extension, which a plain Tower or hyper server inserts itself, or (with
//! the default feature `axum`) from axum's `ConnectInfo<SocketAddr>` (serve with
//! `into_make_service_with_connect_info::<SocketAddr>()`). Without either, the address is
//! unknown and only the user agent is compared.

use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{Extensions, HeaderMap, header};
use uuid::Uuid;

use crate::client_ip::resolve_client_ip;
use crate::device::{MAX_USER_AGENT_LEN, truncate};
use crate::session::Session;

/// A session was used from a different address or user agent than before (see the
/// [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionAnomaly<U = Uuid> {
    /// The session.
    pub session_id: Uuid,
    /// Its owner.
    pub user_id: U,
    /// What changed.
    pub change: Change,
}

/// What changed between two uses of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// The client address.
    IpAddress {
        /// The address at sign-in or at the last use seen (`None`: unknown then).
        previous: Option<IpAddr>,
        /// The address of this use.
        current: IpAddr,
    },
    /// The `User-Agent` header (trimmed, at most 512 bytes).
    UserAgent {
        /// The user agent at sign-in or at the last use seen.
        previous: Option<String>,
        /// The user agent of this use (`None`: no header, or one that is not text).
        current: Option<String>,
    },
}

/// The socket peer of a request, for servers that are not axum's: insert it into the request's
/// extensions before the [`SessionLayer`](crate::SessionLayer) sees the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The socket peer the server recorded in `extensions`.
fn peer(extensions: &Extensions) -> Option<IpAddr> {
    if let Some(PeerAddr(peer)) = extensions.get() {
        return Some(peer.ip());
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(peer)) =
        extensions.get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(peer.ip());
    }
    None
}

/// What the layer does with the request that showed a [`SessionAnomaly`], as the hook decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Serve the request as usual.
    Allow,
    /// Revoke the session with this reason, then pass the request on unauthenticated (a
    /// `CurrentSession` extractor answers 401). The revocation is complete, on every instance,
    /// before the request reaches the handler, so neither it nor any later request is served
    /// with the session.
    Revoke(crate::RevocationReason),
}

/// The hook called for every [`SessionAnomaly`]: it runs on the request's task, so it should be
/// quick; spawn a task for anything that waits (an email).
pub(crate) type AnomalyHook<U> =
    std::sync::Arc<dyn Fn(&SessionAnomaly<U>) -> Verdict + Send + Sync>;

/// Where a request came from, as the layer compares it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin<'a> {
    ip: Option<IpAddr>,
    user_agent: Option<&'a str>,
}

impl<'a> Origin<'a> {
    pub(crate) fn of_request(
        headers: &'a HeaderMap,
        extensions: &Extensions,
        trusted_proxies: &[ipnet::IpNet],
    ) -> Self {
        let peer = peer(extensions);
        Self {
            ip: peer.and_then(|peer| resolve_client_ip(headers, Some(peer), trusted_proxies)),
            user_agent: headers
                .get(header::USER_AGENT)
                .and_then(|value| value.to_str().ok())
                .and_then(normal_user_agent),
        }
    }

    /// The same origin, owning its values (for the lookup path, which outlives the request
    /// borrow).
    pub(crate) fn to_owned(self) -> OwnedOrigin {
        OwnedOrigin {
            ip: self.ip,
            user_agent: self.user_agent.map(Box::from),
        }
    }
}

/// An [`Origin`] that owns its user agent.
#[derive(Debug, Clone)]
pub(crate) struct OwnedOrigin {
    ip: Option<IpAddr>,
    user_agent: Option<Box<str>>,
}

impl OwnedOrigin {
    pub(crate) fn as_origin(&self) -> Origin<'_> {
        Origin {
            ip: self.ip,
            user_agent: self.user_agent.as_deref(),
        }
    }
}

fn normal_user_agent(ua: &str) -> Option<&str> {
    Some(truncate(ua.trim(), MAX_USER_AGENT_LEN)).filter(|ua| !ua.is_empty())
}

/// Hashes origins with a key of this process, so that no client can choose a user agent whose
/// fingerprint matches another's and hide a change.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fingerprints(RandomState);

impl Fingerprints {
    fn of(&self, ip: Option<IpAddr>, user_agent: Option<&str>) -> u64 {
        let mut hasher = self.0.build_hasher();
        ip.hash(&mut hasher);
        user_agent.hash(&mut hasher);
        hasher.finish()
    }
}

/// The last origin seen of one session, kept with its use record.
#[derive(Debug)]
pub(crate) struct LastSeen {
    /// Fingerprint of the last origin observed (its address may be unknown): equal means nothing
    /// to compare.
    observed: AtomicU64,
    /// The last known values; `None` while they are still the ones of the sign-in.
    known: Mutex<Option<Box<Known>>>,
}

#[derive(Debug)]
struct Known {
    ip: Option<IpAddr>,
    user_agent: Option<Box<str>>,
    /// Monotonic start of the current reporting window, and the changes reported in it.
    window_start_us: i64,
    reported: u32,
    /// The window's reports are used up, and that was said.
    silenced: bool,
}

/// At most this many changes of one session are reported per [`REPORT_WINDOW_US`]: whoever
/// holds a token cannot turn the hook into a flood of notifications by flipping values.
pub(crate) const MAX_REPORTS: u32 = 10;
/// One hour.
pub(crate) const REPORT_WINDOW_US: i64 = 3_600_000_000;

/// What one observation found.
#[derive(Debug, Default)]
pub(crate) struct Observation {
    /// The changes to report.
    pub(crate) changes: Vec<Change>,
    /// Changes were seen but not reported: the session used up its reports for this window.
    /// Set once per window, on the first change left unreported.
    pub(crate) suppressing: bool,
}

impl LastSeen {
    pub(crate) fn new<U>(fingerprints: &Fingerprints, session: &Session<U>) -> Self {
        let user_agent = session.user_agent.as_deref().and_then(normal_user_agent);
        Self {
            observed: AtomicU64::new(fingerprints.of(session.ip_address, user_agent)),
            known: Mutex::new(None),
        }
    }

    /// Compares `origin` with the last origin seen of `session`, remembers it, and returns what
    /// changed (nothing on the path where no value changed). `now_us` is monotonic.
    pub(crate) fn observe<U>(
        &self,
        fingerprints: &Fingerprints,
        session: &Session<U>,
        origin: Origin<'_>,
        now_us: impl FnOnce() -> i64,
    ) -> Observation {
        let fingerprint = fingerprints.of(origin.ip, origin.user_agent);
        if self.observed.load(Ordering::Relaxed) == fingerprint {
            return Observation::default();
        }
        let now_us = now_us();
        // Every critical section below only compares and assigns: a panic cannot leave it
        // half-done.
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let known = known.get_or_insert_with(|| {
            Box::new(Known {
                ip: session.ip_address,
                user_agent: session
                    .user_agent
                    .as_deref()
                    .and_then(normal_user_agent)
                    .map(Box::from),
                window_start_us: now_us,
                reported: 0,
                silenced: false,
            })
        });
        let mut changes = Vec::new();
        if let Some(current) = origin.ip
            && known.ip != Some(current)
        {
            changes.push(Change::IpAddress {
                previous: known.ip.replace(current),
                current,
            });
        }
        if known.user_agent.as_deref() != origin.user_agent {
            let current = origin.user_agent.map(Box::<str>::from);
            let previous = std::mem::replace(&mut known.user_agent, current.clone());
            changes.push(Change::UserAgent {
                previous: previous.map(String::from),
                current: current.map(String::from),
            });
        }
        self.observed.store(fingerprint, Ordering::Relaxed);
        if changes.is_empty() {
            return Observation::default();
        }
        if now_us.saturating_sub(known.window_start_us) >= REPORT_WINDOW_US {
            known.window_start_us = now_us;
            known.reported = 0;
            known.silenced = false;
        }
        let allowed = usize::try_from(MAX_REPORTS.saturating_sub(known.reported)).unwrap_or(0);
        let suppressing = changes.len() > allowed && !known.silenced;
        known.silenced |= suppressing;
        changes.truncate(allowed);
        known.reported = known
            .reported
            .saturating_add(u32::try_from(changes.len()).unwrap_or(u32::MAX));
        Observation {
            changes,
            suppressing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn session(ip: &str, ua: &str) -> Session {
        Session {
            id: Uuid::nil(),
            user_id: Uuid::nil(),
            device: String::new(),
            device_type: crate::DeviceType::Unknown,
            device_name: None,
            user_agent: Some(ua.to_owned()),
            ip_address: Some(ip.parse().unwrap()),
            created_at: OffsetDateTime::UNIX_EPOCH,
            last_active_at: OffsetDateTime::UNIX_EPOCH,
            expires_at: OffsetDateTime::UNIX_EPOCH,
            revoked_at: None,
            revoked_reason: None,
        }
    }

    fn origin<'a>(ip: Option<&str>, ua: Option<&'a str>) -> Origin<'a> {
        Origin {
            ip: ip.map(|ip| ip.parse().unwrap()),
            user_agent: ua,
        }
    }

    #[test]
    fn each_change_is_reported_once_and_unknown_addresses_are_not_changes() {
        let fingerprints = Fingerprints::default();
        let session = session("192.0.2.1", "Firefox");
        let seen = LastSeen::new(&fingerprints, &session);
        let observe = |ip, ua| {
            seen.observe(&fingerprints, &session, origin(ip, ua), || 0)
                .changes
        };

        assert!(observe(Some("192.0.2.1"), Some("Firefox")).is_empty());
        assert!(observe(None, Some("Firefox")).is_empty());
        assert_eq!(
            observe(Some("198.51.100.7"), Some("Firefox")),
            [Change::IpAddress {
                previous: Some("192.0.2.1".parse().unwrap()),
                current: "198.51.100.7".parse().unwrap(),
            }]
        );
        assert!(observe(Some("198.51.100.7"), Some("Firefox")).is_empty());
        assert_eq!(
            observe(Some("192.0.2.1"), Some("curl")),
            [
                Change::IpAddress {
                    previous: Some("198.51.100.7".parse().unwrap()),
                    current: "192.0.2.1".parse().unwrap(),
                },
                Change::UserAgent {
                    previous: Some("Firefox".into()),
                    current: Some("curl".into()),
                }
            ]
        );
        assert_eq!(
            observe(Some("192.0.2.1"), None),
            [Change::UserAgent {
                previous: Some("curl".into()),
                current: None,
            }]
        );
        assert!(observe(Some("192.0.2.1"), None).is_empty());
    }

    #[test]
    fn reports_are_bounded_per_session_and_window_and_the_bound_is_said_once() {
        let fingerprints = Fingerprints::default();
        let session = session("192.0.2.1", "Firefox");
        let seen = LastSeen::new(&fingerprints, &session);
        let flip = |i: i64, now: i64| {
            let ua = if i % 2 == 0 { "curl" } else { "Firefox" };
            seen.observe(&fingerprints, &session, origin(None, Some(ua)), || now)
        };
        let mut reported = 0;
        let mut said = 0;
        for i in 0..100 {
            let observation = flip(i, 1_000);
            reported += observation.changes.len();
            said += usize::from(observation.suppressing);
        }
        assert_eq!((reported, said), (MAX_REPORTS as usize, 1));
        // A new window reports again.
        assert_eq!(flip(100, 1_000 + REPORT_WINDOW_US).changes.len(), 1);
    }
}
