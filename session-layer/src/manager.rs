//! [`SessionManager`]: create, validate, rotate, list, revoke, clean up.

use std::borrow::Borrow;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use http::HeaderMap;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::activity::{ActivityLog, Bounds};
use crate::anomaly::{self, AnomalyHook, Change, Observation, Origin, SessionAnomaly, Verdict};
use crate::cache::{SessionCache, SessionEntry};
use crate::client_ip::resolve_client_ip;
use crate::clock::duration_us;
use crate::config::SessionConfig;
use crate::device::{DeviceInfo, MAX_USER_AGENT_LEN, truncate};
use crate::error::{Error, StoreError};
use crate::extract::{CurrentSession, Transport};
use crate::invalidation::spawn_relay;
use crate::issued::{IssuedSession, SignedOut};
use crate::metrics;
use crate::session::{ListedSession, RevocationReason, Session};
use crate::store::{Fence, Inserted, Liveness, MAX_DEVICE_NAME_LEN, SessionInsert, SessionStore};
use crate::token::{SessionToken, TokenHash};
use crate::touch::{TouchSender, spawn_writer};
use crate::user_id::UserId;
use crate::validate::{Cached, Checked, Judging, Validator};

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
pub struct NewSession<U = Uuid> {
    user_id: U,
    user_agent: Option<String>,
    ip_address: Option<IpAddr>,
    device_name: Option<String>,
    fence: Option<Fence>,
}

impl<U> NewSession<U> {
    /// A sign-in of `user_id` with nothing known about the device.
    pub fn new(user_id: U) -> Self {
        Self {
            user_id,
            user_agent: None,
            ip_address: None,
            device_name: None,
            fence: None,
        }
    }

    /// Creates the session only if the user's sessions were not all revoked since `fence` was
    /// read (see [`SessionManager::fence`]); otherwise [`create`](SessionManager::create) fails
    /// with [`Error::Fenced`].
    pub fn fence(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    /// The `User-Agent` header; the device description is derived from it.
    pub fn user_agent(mut self, user_agent: Option<&str>) -> Self {
        self.user_agent = user_agent
            .map(|ua| truncate(ua.trim(), MAX_USER_AGENT_LEN).to_owned())
            .filter(|ua| !ua.is_empty());
        self
    }

    /// The client address (see [`SessionManager::client_ip`]). An IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`, as a dual-stack socket reports IPv4 peers) is kept as plain IPv4.
    pub fn ip_address(mut self, ip: Option<IpAddr>) -> Self {
        self.ip_address = ip.map(crate::client_ip::canonical);
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
/// it returns, so a revoked token is refused on its very next request. With the PostgreSQL
/// [store](crate::store) the change is also published to every other instance.
///
/// Every call that changes sessions runs to its end once started, on a task of its own: if the
/// caller's future is dropped (a client that disconnects), the store commit, the cache
/// invalidation and the publication still all happen.
///
/// Background work (batched `last_active_at` writes, cross-instance invalidation) runs on the
/// Tokio runtime that [`new`](Self::new) is called from. Call [`shutdown`](Self::shutdown)
/// before the process exits so pending activity is written.
///
/// With another user id type than [`Uuid`] (see [`UserId`]), it is `SessionManager<YourId>`,
/// built over a store of that type.
pub struct SessionManager<U: UserId = Uuid> {
    inner: Arc<Inner<U>>,
}

impl<U: UserId> Clone for SessionManager<U> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<U: UserId> {
    store: Arc<dyn SessionStore<U>>,
    config: SessionConfig,
    validator: Validator<U>,
    touches: TouchSender,
    counters: metrics::Counters,
    anomaly_hook: RwLock<Option<AnomalyHook<U>>>,
    /// Dropped with the manager, which stops the invalidation relay.
    _stop_relay: Option<oneshot::Sender<()>>,
}

impl<U: UserId> std::fmt::Debug for SessionManager<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionManager")
            .field("config", &self.inner.config)
            .field("cached_sessions", &self.cached_sessions())
            .finish_non_exhaustive()
    }
}

impl<U: UserId> SessionManager<U> {
    /// Builds the manager over `store`. Run the store's migrations first.
    ///
    /// # Errors
    ///
    /// [`Error::NoRuntime`] when called outside a Tokio runtime.
    pub fn new(store: impl SessionStore<U>, config: SessionConfig) -> Result<Self, Error> {
        Self::from_arc(Arc::new(store), config)
    }

    /// Like [`new`](Self::new), for a store that is already shared.
    ///
    /// # Errors
    ///
    /// [`Error::NoRuntime`] when called outside a Tokio runtime.
    pub fn from_arc(store: Arc<dyn SessionStore<U>>, config: SessionConfig) -> Result<Self, Error> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        crate::device::warm_up();
        let touches = spawn_writer(Arc::clone(&store), config.touch_flush_interval);
        let feed = store.subscribe();
        // With a feed, the cache is trusted only once the feed reports that it is listening.
        let cache = Arc::new(SessionCache::new(
            config.cache_ttl,
            config.cache_capacity,
            config.miss_cache_capacity,
            touches.clone(),
            feed.is_some(),
        ));
        let stop_relay = feed.map(|feed| spawn_relay(&cache, config.clock.clone(), feed));
        let counters = metrics::Counters::register();
        let validator = Validator::new(
            Arc::clone(&store),
            cache,
            ActivityLog::new(Bounds {
                idle: config.idle_timeout(),
                cache_ttl: config.cache_ttl,
                users: config.cache_capacity,
                per_user: config.max_sessions_per_user.map_or(256, |max| {
                    usize::try_from(max).unwrap_or(usize::MAX).saturating_mul(2)
                }),
                unwritten_window: config.touch_interval()
                    + config.touch_flush_interval
                    + Duration::from_secs(1),
            }),
            touches.clone(),
            Judging {
                clock: config.clock.clone(),
                idle_us: duration_us(config.idle_timeout()),
                touch_interval_us: duration_us(config.touch_interval()),
            },
            counters.clone(),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                config,
                validator,
                touches,
                counters,
                anomaly_hook: RwLock::new(None),
                _stop_relay: stop_relay,
            }),
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &SessionConfig {
        &self.inner.config
    }

    /// The user's current [`Fence`]. Pass it to [`NewSession::fence`]: if a password change or
    /// reset revokes the user's sessions ([`revoke_all`](Self::revoke_all) or
    /// [`revoke_others`](Self::revoke_others)) after this read, the sign-in creates no session
    /// ([`Error::Fenced`]), so a login that proved the old password cannot outlive the change.
    ///
    /// The order matters on both sides:
    /// - sign-in: find the user's id, read the fence, **then read** the password hash and check
    ///   it. Reading the hash before the fence (say, in the same query as the id) lets a login
    ///   that read the old hash and then a new fence through;
    /// - password change: store the new hash, **then** revoke.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the store fails.
    pub async fn fence(&self, user_id: impl Borrow<U>) -> Result<Fence, Error> {
        Ok(self
            .store_call(self.inner.store.fence(user_id.borrow()))
            .await?)
    }

    /// Signs a user in: issues a token and stores its session. When the user would hold more
    /// than `max_sessions_per_user` active sessions, the least recently active ones (judged on
    /// the most recent use this process has seen, written or not) are revoked with
    /// [`RevocationReason::SessionLimit`].
    ///
    /// The token is returned once, here, in the [`IssuedSession`]; only its hash is stored.
    /// Return the `IssuedSession` as response parts to set the cookie, or send its token to a
    /// bearer client.
    ///
    /// # Errors
    ///
    /// [`Error::Fenced`] when the sign-in carried a fence that a revocation of all the user's
    /// sessions has passed; [`Error::Store`] when the store fails (no session was created);
    /// [`Error::Token`] when the OS random source fails.
    pub async fn create(&self, new: NewSession<U>) -> Result<IssuedSession<U>, Error> {
        let this = self.clone();
        let (token, session) = run_to_end(async move { this.create_now(new).await }).await?;
        Ok(self.issued(token, session))
    }

    fn issued(&self, token: SessionToken, session: Session<U>) -> IssuedSession<U> {
        IssuedSession::new(token, session, self.inner.config.cookie.clone())
    }

    async fn create_now(&self, new: NewSession<U>) -> Result<(SessionToken, Session<U>), Error> {
        let token = SessionToken::generate()?;
        let now = self.now();
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
        let max_active = self.inner.config.max_sessions_per_user;
        let recent_activity = match max_active {
            Some(_) => {
                let now_us = self.inner.config.clock.wall_us();
                self.inner
                    .validator
                    .activity()
                    .recent(&session.user_id, now_us)
                    .await
            }
            None => Vec::new(),
        };
        let hash = token.hash();
        let inserted = self
            .store_call(self.inner.store.insert(SessionInsert {
                session: &session,
                token_hash: &hash,
                max_active,
                live: self.liveness(now),
                fence: new.fence,
                recent_activity: &recent_activity,
            }))
            .await?;
        let evicted = match inserted {
            Inserted::Created { evicted } => evicted,
            Inserted::Fenced => {
                tracing::info!(user_id = ?session.user_id, "sign-in fenced out by a revocation of all sessions");
                return Err(Error::Fenced);
            }
        };
        self.forget(&evicted, RevocationReason::SessionLimit).await;
        self.cache().forget_miss(&hash).await;
        tracing::debug!(session_id = %session.id, user_id = ?session.user_id, "session created");
        Ok((token, session))
    }

    /// Issues a new token for the current session. The presented token stops working at once;
    /// presenting it, or any token this session had before, again later revokes the session
    /// ([`RevocationReason::TokenReuse`]). `expires_at` does not move. Of two concurrent
    /// rotations of one token exactly one wins.
    ///
    /// # Errors
    ///
    /// [`Error::RotationConflict`] when the token was already rotated, or the session ended;
    /// [`Error::Store`] when the store fails.
    pub async fn rotate(&self, current: &CurrentSession<U>) -> Result<IssuedSession<U>, Error> {
        let (this, current) = (self.clone(), current.clone());
        let (last_used, transport) = (current.last_active_at(), current.transport());
        let (token, mut session) =
            run_to_end(async move { this.rotate_now(&current).await }).await?;
        // The stored value lags; the request that rotates is itself a use.
        session.last_active_at = session.last_active_at.max(last_used);
        let issued = self.issued(token, session);
        Ok(match transport {
            Transport::Bearer => issued.for_bearer(),
            Transport::Cookie => issued,
        })
    }

    async fn rotate_now(
        &self,
        current: &CurrentSession<U>,
    ) -> Result<(SessionToken, Session<U>), Error> {
        let new = SessionToken::generate()?;
        let old = current.token_hash();
        let new_hash = new.hash();
        let rotated = self
            .store_call(self.inner.store.rotate(
                &current.user_id(),
                current.session_id(),
                &old,
                &new_hash,
                self.liveness(self.now()),
            ))
            .await;
        // Whatever the outcome, the presented token is no longer valid: drop it now.
        self.cache().invalidate(old).await;
        match rotated? {
            Some(session) => {
                self.cache().forget_miss(&new_hash).await;
                Ok((new, session))
            }
            None => Err(Error::RotationConflict),
        }
    }

    /// The user's active sessions, most recently active first (on a tie, the newer first).
    /// Nothing secret is included.
    ///
    /// `last_active_at` is the most recent use known: the stored value, or a later use that this
    /// process has seen and not written yet (writes lag by up to a touch interval).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the store fails.
    pub async fn list(&self, user_id: impl Borrow<U>) -> Result<Vec<Session<U>>, Error> {
        self.list_seen(user_id.borrow(), None).await
    }

    /// The signed-in user's active sessions as their "your devices" page shows them: like
    /// [`list`](Self::list), with the session of `current` marked
    /// ([`ListedSession::current`]) and its use by this very request counted.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the store fails.
    pub async fn list_for(
        &self,
        current: &CurrentSession<U>,
    ) -> Result<Vec<ListedSession<U>>, Error> {
        let own = (current.session_id(), current.last_active_at());
        let sessions = self.list_seen(&current.user_id(), Some(own)).await?;
        Ok(sessions
            .into_iter()
            .map(|session| ListedSession {
                current: session.id == own.0,
                session,
            })
            .collect())
    }

    /// The active sessions with the most recent use known of each (stored, seen by this
    /// process, or `also_seen`), most recently active first.
    async fn list_seen(
        &self,
        user_id: &U,
        also_seen: Option<(Uuid, OffsetDateTime)>,
    ) -> Result<Vec<Session<U>>, Error> {
        let now = self.now();
        let mut sessions = self
            .store_call(self.inner.store.list_active(user_id, self.liveness(now)))
            .await?;
        let mut seen = self.inner.validator.activity().last_uses(user_id).await;
        seen.extend(also_seen);
        for (id, used) in seen {
            if let Some(session) = sessions.iter_mut().find(|s| s.id == id) {
                session.last_active_at = session.last_active_at.max(used);
            }
        }
        // The store's cutoff is padded by the activity writes' lag; with the uses merged, judge
        // idleness as a request would, so the list shows no session that a request refuses.
        let idle = self.inner.config.idle_timeout();
        sessions.retain(|s| now - s.last_active_at < idle);
        sessions.sort_by(|a, b| {
            b.last_active_at
                .cmp(&a.last_active_at)
                .then_with(|| b.id.cmp(&a.id))
        });
        Ok(sessions)
    }

    /// Signs the current session out ([`RevocationReason::Logout`]). A session that ended
    /// meanwhile (revoked from another device) counts as signed out. Return the [`SignedOut`] as
    /// response parts: it clears the cookie of a cookie client.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the store fails.
    pub async fn logout(&self, current: &CurrentSession<U>) -> Result<SignedOut, Error> {
        match self
            .revoke(
                current.user_id(),
                current.session_id(),
                RevocationReason::Logout,
            )
            .await
        {
            Ok(()) | Err(Error::SessionNotFound) => Ok(SignedOut::new(
                current.session_id(),
                current.transport(),
                self.inner.config.cookie.clone(),
            )),
            Err(other) => Err(other),
        }
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
        user_id: impl Borrow<U>,
        session_id: Uuid,
        reason: RevocationReason,
    ) -> Result<(), Error> {
        let (this, user_id) = (self.clone(), user_id.borrow().clone());
        run_to_end(async move {
            let revoked = this
                .store_call(
                    this.inner
                        .store
                        .revoke(&user_id, session_id, reason, this.now()),
                )
                .await?;
            let hash = revoked.ok_or(Error::SessionNotFound)?;
            tracing::info!(%session_id, user_id = ?user_id, %reason, "session revoked");
            this.forget(&[hash], reason).await;
            this.inner
                .validator
                .activity()
                .forget(&user_id, Some(&[session_id]), None)
                .await;
            Ok(())
        })
        .await
    }

    /// Revokes every session of the current user except the current one ("sign out everywhere
    /// else", password change), and advances the user's [`Fence`]. Returns how many were
    /// revoked.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the store fails.
    pub async fn revoke_others(
        &self,
        current: &CurrentSession<U>,
        reason: RevocationReason,
    ) -> Result<u64, Error> {
        self.revoke_all_except(current.user_id(), Some(current.session_id()), reason)
            .await
    }

    /// Revokes every session of `user_id` (password reset, account deletion, admin action), and
    /// advances the user's [`Fence`]. Returns how many were revoked.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the store fails.
    pub async fn revoke_all(
        &self,
        user_id: impl Borrow<U>,
        reason: RevocationReason,
    ) -> Result<u64, Error> {
        self.revoke_all_except(user_id.borrow().clone(), None, reason)
            .await
    }

    async fn revoke_all_except(
        &self,
        user_id: U,
        except: Option<Uuid>,
        reason: RevocationReason,
    ) -> Result<u64, Error> {
        let this = self.clone();
        run_to_end(async move {
            let hashes = this
                .store_call(
                    this.inner
                        .store
                        .revoke_all(&user_id, except, reason, this.now()),
                )
                .await?;
            tracing::info!(
                user_id = ?user_id,
                except = ?except,
                revoked = hashes.len(),
                %reason,
                "sessions revoked"
            );
            this.forget(&hashes, reason).await;
            this.inner
                .validator
                .activity()
                .forget(&user_id, None, except)
                .await;
            Ok(u64::try_from(hashes.len()).unwrap_or(u64::MAX))
        })
        .await
    }

    /// Deletes expired sessions and sessions revoked longer than `revoked_retention` ago, with
    /// their rotated-out token hashes. Returns how many sessions were deleted.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the store fails.
    pub async fn cleanup(&self) -> Result<u64, Error> {
        let this = self.clone();
        run_to_end(async move {
            let now = this.now();
            let retention = this.inner.config.revoked_retention;
            Ok(this
                .store_call(this.inner.store.cleanup(now, now - retention))
                .await?)
        })
        .await
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

    /// Writes all pending `last_active_at` updates and waits for them. Call it on shutdown; the
    /// manager stays usable after it.
    pub async fn shutdown(&self) {
        self.cache().run_pending_tasks().await;
        self.inner.touches.flush().await;
    }

    /// The client address of a request: the socket peer, or `X-Forwarded-For` when the peer is
    /// one of the configured trusted proxies.
    #[must_use]
    pub fn client_ip(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
        resolve_client_ip(headers, peer, &self.inner.config.trusted_proxies)
    }

    /// Number of sessions currently cached (approximate). For tests and benchmarks; not part of
    /// the API.
    #[doc(hidden)]
    #[must_use]
    pub fn cached_sessions(&self) -> u64 {
        self.cache().len()
    }

    /// Runs the cache's pending maintenance, so that [`cached_sessions`](Self::cached_sessions)
    /// is exact. For tests and benchmarks; not part of the API.
    #[doc(hidden)]
    pub async fn sync_cache(&self) {
        self.cache().run_pending_tasks().await;
    }

    /// Validates an encoded token as the layer does (cache first, then the store).
    /// `Ok(None)` for a malformed, unknown, expired, idle or revoked token.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the store cannot be reached on a cache miss: fail closed.
    pub async fn validate(&self, token: &str) -> Result<Option<CurrentSession<U>>, Error> {
        let Ok(hash) = TokenHash::from_encoded(token) else {
            return Ok(None);
        };
        let entry = match self.authenticate_cached(&hash) {
            Cached::Hit(entry) => Some(entry),
            Cached::Refused => None,
            Cached::Unknown => self.authenticate(hash).await?,
        };
        Ok(entry.map(|entry| CurrentSession::new(entry, Transport::Bearer)))
    }

    /// Calls `hook` for every [`SessionAnomaly`]: a session used from a different client address
    /// or user agent than it was created with or last seen with (see [`crate::anomaly`]). The
    /// hook's [`Verdict`] says whether the request goes on with its session, or the session is
    /// revoked first. Replaces an earlier hook. The hook runs on the request's task: keep it
    /// quick, and spawn anything that waits, such as a notification:
    ///
    /// ```
    /// # fn run(sessions: session_layer::SessionManager) {
    /// use session_layer::RevocationReason;
    /// use session_layer::anomaly::{Change, Verdict};
    ///
    /// sessions.on_anomaly(|anomaly| match anomaly.change {
    ///     // Another browser with this session's token: end the session before it is served.
    ///     Change::UserAgent { .. } => Verdict::Revoke(RevocationReason::Admin),
    ///     // A new network: let it through (the event is logged), perhaps email the user.
    ///     _ => Verdict::Allow,
    /// });
    /// # }
    /// ```
    pub fn on_anomaly(&self, hook: impl Fn(&SessionAnomaly<U>) -> Verdict + Send + Sync + 'static) {
        *self
            .inner
            .anomaly_hook
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(hook));
    }

    /// Compares where the request of an authenticated session comes from with where the session
    /// was last used from, and reports each change; returns the revocation the hook asked for,
    /// if any.
    pub(crate) fn observe(
        &self,
        entry: &SessionEntry<U>,
        origin: Origin<'_>,
    ) -> Option<RevocationReason> {
        let Observation {
            changes,
            suppressing,
        } = self.inner.validator.observe(entry, origin);
        if suppressing {
            tracing::warn!(
                target: "session_layer::anomaly",
                session_id = %entry.session.id,
                user_id = ?entry.session.user_id,
                max = anomaly::MAX_REPORTS,
                "this session changed address or user agent too often: further changes within the \
                 hour are not reported"
            );
        }
        if changes.is_empty() {
            return None;
        }
        let mut revoke = None;
        let session = &entry.session;
        let hook = self
            .inner
            .anomaly_hook
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for change in changes {
            match &change {
                Change::IpAddress { previous, current } => tracing::warn!(
                    target: "session_layer::anomaly",
                    session_id = %session.id,
                    user_id = ?session.user_id,
                    previous = ?previous,
                    current = %current,
                    "session used from a new client address"
                ),
                Change::UserAgent { previous, current } => tracing::warn!(
                    target: "session_layer::anomaly",
                    session_id = %session.id,
                    user_id = ?session.user_id,
                    previous = ?previous,
                    current = ?current,
                    "session used with a new user agent"
                ),
            }
            if let Some(hook) = &hook {
                let anomaly = SessionAnomaly {
                    session_id: session.id,
                    user_id: session.user_id.clone(),
                    change,
                };
                // The app's hook must not take the request down, nor the report of another
                // change of the same request.
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(&anomaly))) {
                    Ok(Verdict::Revoke(reason)) => {
                        revoke.get_or_insert(reason);
                    }
                    Ok(Verdict::Allow) => {}
                    Err(_) => tracing::error!(
                        target: "session_layer::anomaly",
                        session_id = %session.id,
                        "the anomaly hook panicked; the request goes on"
                    ),
                }
            }
        }
        revoke
    }

    /// Revokes a session whose anomaly hook asked for it, before its request goes on.
    pub(crate) async fn revoke_anomalous(
        &self,
        session: &Session<U>,
        reason: RevocationReason,
    ) -> Result<(), StoreError> {
        tracing::warn!(
            target: "session_layer::anomaly",
            session_id = %session.id,
            user_id = ?session.user_id,
            %reason,
            "the anomaly hook revokes the session"
        );
        match self.revoke(&session.user_id, session.id, reason).await {
            // Revoked meanwhile by something else: the outcome is the same.
            Ok(()) | Err(Error::SessionNotFound) => Ok(()),
            Err(Error::Store(error)) => Err(error),
            Err(error) => Err(StoreError::new("revoke a session after an anomaly", error)),
        }
    }

    /// The layer's hot path: what memory alone says about `hash`.
    pub(crate) fn authenticate_cached(&self, hash: &TokenHash) -> Cached<U> {
        self.inner.validator.cached(hash)
    }

    /// The layer's miss path: asks the store (one query per token at a time) and revokes a
    /// session whose rotated-out token came back.
    ///
    /// The lookup runs on a task of its own: a request dropped half-way (a client that went
    /// away) still completes what its lookup started, above all the revocation of a session
    /// whose rotated-out token it presented.
    pub(crate) async fn authenticate(
        &self,
        hash: TokenHash,
    ) -> Result<Option<Arc<SessionEntry<U>>>, StoreError> {
        let this = self.clone();
        match tokio::spawn(async move { this.authenticate_here(hash).await }).await {
            Ok(result) => result,
            Err(error) => {
                self.inner.counters.store_errors.increment(1);
                tracing::error!(%error, "a session lookup's task ended before finishing");
                Err(StoreError::new("look up a session", error))
            }
        }
    }

    async fn authenticate_here(
        &self,
        hash: TokenHash,
    ) -> Result<Option<Arc<SessionEntry<U>>>, StoreError> {
        match self.inner.validator.check(hash).await {
            Checked::Valid(entry) => Ok(Some(entry)),
            Checked::Invalid => Ok(None),
            Checked::Reused(session) => {
                self.revoke_reused(&session).await;
                Ok(None)
            }
            Checked::Failed(error) => {
                self.inner.counters.store_errors.increment(1);
                tracing::error!(%error, "session lookup failed; request treated as unauthenticated-unavailable");
                Err(error)
            }
        }
    }

    /// A rotated-out token came back: whoever holds it copied it. End the session everywhere.
    async fn revoke_reused(&self, session: &Session<U>) {
        if session.revoked_at.is_some() {
            return;
        }
        self.inner.counters.token_reuse.increment(1);
        tracing::warn!(
            session_id = %session.id,
            user_id = ?session.user_id,
            "rotated-out session token presented again; revoking the session"
        );
        match self
            .revoke(&session.user_id, session.id, RevocationReason::TokenReuse)
            .await
        {
            // Revoked meanwhile by something else: the outcome is the same.
            Ok(()) | Err(Error::SessionNotFound) => {}
            Err(error) => {
                tracing::error!(%error, session_id = %session.id, "could not revoke a session after token reuse");
            }
        }
    }

    fn cache(&self) -> &SessionCache<U> {
        self.inner.validator.cache()
    }

    fn now(&self) -> OffsetDateTime {
        self.inner.config.clock.now()
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
            idle_cutoff: now - config.idle_timeout() - lag,
        }
    }

    async fn store_call<T>(
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
            self.cache().invalidate(*hash).await;
        }
        if !hashes.is_empty() {
            ::metrics::counter!(metrics::REVOCATIONS, "reason" => reason.as_str())
                .increment(u64::try_from(hashes.len()).unwrap_or(u64::MAX));
        }
    }
}

/// Runs a mutation on a task of its own, so that it completes (store commit, cache invalidation,
/// publication) even if the caller's future is dropped half-way.
async fn run_to_end<T: Send + 'static>(
    work: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    match tokio::spawn(work).await {
        Ok(result) => result,
        Err(error) => {
            tracing::error!(%error, "a session operation's task ended before finishing");
            Err(Error::Interrupted)
        }
    }
}
