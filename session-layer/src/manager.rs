//! [`SessionManager`]: create, validate, rotate, list, revoke, clean up.

use std::net::IpAddr;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::HeaderMap;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::cache::{SessionCache, duration_us, from_us, now_us};
use crate::client_ip::resolve_client_ip;
use crate::config::SessionConfig;
use crate::device::{DeviceInfo, MAX_USER_AGENT_LEN, truncate};
use crate::error::{Error, StoreError};
use crate::extract::CurrentSession;
use crate::metrics;
use crate::session::{RevocationReason, Session};
use crate::store::{Liveness, MAX_DEVICE_NAME_LEN, SessionStore};
use crate::token::{SessionToken, TokenHash};
use crate::touch::{TouchSender, spawn_writer};

/// What is known about a sign-in when its session is created.
///
/// ```
/// use session_layer::NewSession;
/// # let user_id = uuid::Uuid::now_v7();
/// let new = NewSession::new(user_id)
///     .user_agent(Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/121.0"))
///     .ip_address(Some("203.0.113.7".parse().unwrap()))
///     .device_name(Some("Work laptop"));
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct NewSession {
    user_id: Uuid,
    user_agent: Option<String>,
    ip_address: Option<IpAddr>,
    device_name: Option<String>,
}

impl NewSession {
    /// A sign-in of `user_id` with nothing known about the device.
    pub fn new(user_id: Uuid) -> Self {
        Self {
            user_id,
            user_agent: None,
            ip_address: None,
            device_name: None,
        }
    }

    /// The `User-Agent` header; the device description is derived from it.
    pub fn user_agent(mut self, user_agent: Option<&str>) -> Self {
        self.user_agent = user_agent
            .map(|ua| truncate(ua.trim(), MAX_USER_AGENT_LEN).to_owned())
            .filter(|ua| !ua.is_empty());
        self
    }

    /// The client address (see [`SessionManager::client_ip`]).
    pub fn ip_address(mut self, ip: Option<IpAddr>) -> Self {
        self.ip_address = ip;
        self
    }

    /// A name the user chose for the device ("Work laptop"); trimmed, at most 100 bytes, empty
    /// means none.
    pub fn device_name(mut self, name: Option<&str>) -> Self {
        self.device_name = name
            .map(|n| truncate(n.trim(), MAX_DEVICE_NAME_LEN).to_owned())
            .filter(|n| !n.is_empty());
        self
    }
}

/// The session API: one per application, cheap to clone (an `Arc` inside).
///
/// Every call that changes sessions removes the affected tokens from the validation cache before
/// it returns, so a revoked token is refused on its very next request. With
/// [`PostgresStore`](crate::PostgresStore) the change is also published to every other instance.
///
/// Background work (batched `last_active_at` writes, cross-instance invalidation) runs on the
/// Tokio runtime that [`new`](Self::new) is called from. Call [`shutdown`](Self::shutdown)
/// before the process exits so pending activity is written.
#[derive(Clone)]
pub struct SessionManager {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) config: SessionConfig,
    pub(crate) cache: Arc<SessionCache>,
    pub(crate) touches: TouchSender,
    pub(crate) idle_us: i64,
    pub(crate) touch_interval_us: i64,
    /// When a token lookup last failed. Lookups for one token run one at a time, so without
    /// this, requests queued behind a failing lookup would each wait out their own failure.
    pub(crate) last_lookup_failure_us: AtomicI64,
    pub(crate) counters: metrics::Counters,
    /// Dropped with the manager, which stops the invalidation relay.
    _stop_relay: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionManager")
            .field("config", &self.inner.config)
            .field("cached_sessions", &self.inner.cache.len())
            .finish_non_exhaustive()
    }
}

impl SessionManager {
    /// Builds the manager over `store`. Run the store's migrations first.
    ///
    /// # Errors
    ///
    /// [`Error::NoRuntime`] when called outside a Tokio runtime.
    pub fn new(store: impl SessionStore, config: SessionConfig) -> Result<Self, Error> {
        Self::from_arc(Arc::new(store), config)
    }

    /// Like [`new`](Self::new), for a store that is already shared.
    ///
    /// # Errors
    ///
    /// [`Error::NoRuntime`] when called outside a Tokio runtime.
    pub fn from_arc(store: Arc<dyn SessionStore>, config: SessionConfig) -> Result<Self, Error> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let touches = spawn_writer(Arc::clone(&store), config.touch_flush_interval);
        let feed = store.subscribe();
        // With a feed, the cache is trusted only once the feed reports that it is listening.
        let cache = Arc::new(SessionCache::new(
            config.cache_ttl,
            config.cache_capacity,
            touches.clone(),
            feed.is_none(),
        ));
        let stop_relay = feed.map(|feed| {
            let (stop, stopped) = oneshot::channel();
            tokio::spawn(crate::cache::relay(Arc::downgrade(&cache), feed, stopped));
            stop
        });
        Ok(Self {
            inner: Arc::new(Inner {
                idle_us: duration_us(config.idle_timeout),
                touch_interval_us: duration_us(config.touch_interval()),
                store,
                config,
                cache,
                touches,
                last_lookup_failure_us: AtomicI64::new(i64::MIN),
                counters: metrics::Counters::register(),
                _stop_relay: stop_relay,
            }),
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &SessionConfig {
        &self.inner.config
    }

    /// Signs a user in: issues a token and stores its session. When the user would hold more
    /// than `max_sessions_per_user` active sessions, the least recently active ones are revoked
    /// with [`RevocationReason::SessionLimit`].
    ///
    /// The token is returned once, here; only its hash is stored.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the store fails (no session was created), [`Error::Token`] when the
    /// OS random source fails.
    pub async fn create(&self, new: NewSession) -> Result<(SessionToken, Session), Error> {
        let token = SessionToken::generate()?;
        let now = now();
        let device = DeviceInfo::from_user_agent(new.user_agent.as_deref());
        let session = Session {
            id: Uuid::now_v7(),
            user_id: new.user_id,
            device: device.description,
            device_type: device.device_type,
            device_name: new.device_name,
            user_agent: new.user_agent,
            ip_address: new.ip_address,
            created_at: now,
            last_active_at: now,
            expires_at: now + self.inner.config.ttl,
            revoked_at: None,
            revoked_reason: None,
        };
        let evicted = self
            .store_call(self.inner.store.insert(
                &session,
                &token.hash(),
                self.inner.config.max_sessions_per_user,
                self.liveness(now),
            ))
            .await?;
        self.forget(&evicted, RevocationReason::SessionLimit).await;
        tracing::debug!(session_id = %session.id, user_id = %session.user_id, "session created");
        Ok((token, session))
    }

    /// Issues a new token for the current session. The presented token stops working at once;
    /// presenting it again later revokes the session ([`RevocationReason::TokenReuse`]).
    /// `expires_at` does not move. Of two concurrent rotations of one token exactly one wins.
    ///
    /// # Errors
    ///
    /// [`Error::RotationConflict`] when the token was already rotated, or the session ended;
    /// [`Error::Store`] when the store fails.
    pub async fn rotate(&self, current: &CurrentSession) -> Result<(SessionToken, Session), Error> {
        let new = SessionToken::generate()?;
        let old = current.token_hash();
        let rotated = self
            .store_call(self.inner.store.rotate(
                current.user_id(),
                current.session_id(),
                &old,
                &new.hash(),
                self.liveness(now()),
            ))
            .await;
        // Whatever the outcome, the presented token is no longer valid: drop it now.
        self.inner.cache.invalidate(old).await;
        match rotated? {
            Some(session) => Ok((new, session)),
            None => Err(Error::RotationConflict),
        }
    }

    /// The user's active sessions, most recently active first. Nothing secret is included.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the store fails.
    pub async fn list(&self, user_id: Uuid) -> Result<Vec<Session>, Error> {
        Ok(self
            .store_call(self.inner.store.list_active(user_id, self.liveness(now())))
            .await?)
    }

    /// Revokes one active session of `user_id`. The ownership check is part of the SQL: another
    /// user's session id is simply not found.
    ///
    /// # Errors
    ///
    /// [`Error::SessionNotFound`] when `user_id` has no active session `session_id`;
    /// [`Error::Store`] when the store fails.
    pub async fn revoke(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        reason: RevocationReason,
    ) -> Result<(), Error> {
        let hash = self
            .store_call(self.inner.store.revoke(user_id, session_id, reason, now()))
            .await?
            .ok_or(Error::SessionNotFound)?;
        self.forget(&[hash], reason).await;
        Ok(())
    }

    /// Revokes every session of the current user except the current one ("sign out everywhere
    /// else", password change). Returns how many were revoked.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the store fails.
    pub async fn revoke_others(
        &self,
        current: &CurrentSession,
        reason: RevocationReason,
    ) -> Result<u64, Error> {
        self.revoke_all_except(current.user_id(), Some(current.session_id()), reason)
            .await
    }

    /// Revokes every session of `user_id` (password reset, account deletion, admin action).
    /// Returns how many were revoked.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the store fails.
    pub async fn revoke_all(&self, user_id: Uuid, reason: RevocationReason) -> Result<u64, Error> {
        self.revoke_all_except(user_id, None, reason).await
    }

    async fn revoke_all_except(
        &self,
        user_id: Uuid,
        except: Option<Uuid>,
        reason: RevocationReason,
    ) -> Result<u64, Error> {
        let hashes = self
            .store_call(self.inner.store.revoke_all(user_id, except, reason, now()))
            .await?;
        self.forget(&hashes, reason).await;
        Ok(u64::try_from(hashes.len()).unwrap_or(u64::MAX))
    }

    /// Deletes expired sessions and sessions revoked longer than `revoked_retention` ago.
    /// Returns how many rows were deleted.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the store fails.
    pub async fn cleanup(&self) -> Result<u64, Error> {
        let now = now();
        let retention = self.inner.config.revoked_retention;
        Ok(self
            .store_call(self.inner.store.cleanup(now, now - retention))
            .await?)
    }

    /// Runs [`cleanup`](Self::cleanup) every `period` on the current Tokio runtime until the
    /// manager is dropped or the handle aborted. A failed run is logged and the next one still
    /// happens.
    pub fn spawn_cleanup(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        let manager = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = Weak::upgrade(&manager) else {
                    return;
                };
                match (SessionManager { inner }).cleanup().await {
                    Ok(deleted) => tracing::debug!(deleted, "session cleanup ran"),
                    Err(error) => {
                        tracing::warn!(%error, "session cleanup failed; retrying next period")
                    }
                }
            }
        })
    }

    /// Writes all pending `last_active_at` updates and waits for them. Call it on shutdown.
    pub async fn shutdown(&self) {
        self.inner.cache.run_pending_tasks().await;
        self.inner.touches.flush().await;
    }

    /// The client address of a request: the socket peer, or `X-Forwarded-For` when the peer is
    /// one of the configured trusted proxies.
    #[must_use]
    pub fn client_ip(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
        resolve_client_ip(headers, peer, &self.inner.config.trusted_proxies)
    }

    /// Number of sessions currently cached (approximate).
    #[must_use]
    pub fn cached_sessions(&self) -> u64 {
        self.inner.cache.len()
    }

    /// Runs the cache's pending maintenance, so that [`cached_sessions`](Self::cached_sessions)
    /// is exact; for tests and benchmarks.
    pub async fn sync_cache(&self) {
        self.inner.cache.run_pending_tasks().await;
    }

    /// The window for management calls (list, rotate, the session limit). The stored
    /// `last_active_at` lags the real last use by up to one touch interval plus one flush, so
    /// the cutoff allows that much: a session in use is never missing from its own list or
    /// unable to rotate. Request validation judges idleness on the most recent use instead.
    fn liveness(&self, now: OffsetDateTime) -> Liveness {
        let config = &self.inner.config;
        let lag = config.touch_interval() + config.touch_flush_interval;
        Liveness {
            now,
            idle_cutoff: now - config.idle_timeout - lag,
        }
    }

    pub(crate) async fn store_call<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        call.await.inspect_err(|error| {
            self.inner.counters.store_errors.increment(1);
            tracing::error!(%error, "session store call failed");
        })
    }

    /// Drops revoked hashes from this instance's cache before the caller hears of success.
    async fn forget(&self, hashes: &[TokenHash], reason: RevocationReason) {
        for hash in hashes {
            self.inner.cache.invalidate(*hash).await;
        }
        if !hashes.is_empty() {
            ::metrics::counter!(metrics::REVOCATIONS, "reason" => reason.as_str())
                .increment(u64::try_from(hashes.len()).unwrap_or(u64::MAX));
        }
    }
}

/// The current time at the microsecond precision that both SQL stores keep.
pub(crate) fn now() -> OffsetDateTime {
    from_us(now_us())
}
