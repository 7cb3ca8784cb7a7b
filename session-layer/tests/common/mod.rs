//! Shared test tooling: stores for every backend, and a store wrapper that counts, pauses and
//! fails lookups.

#![allow(dead_code, unreachable_pub, unused_macros)]

pub mod cluster;
pub mod relay;
#[cfg(feature = "postgres")]
mod rls;

#[cfg(feature = "postgres")]
#[allow(unused_imports)] // each test binary uses a part
pub use rls::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
#[cfg(feature = "postgres")]
use session_layer::PostgresStore;
#[cfg(feature = "sqlite")]
use session_layer::SqliteStore;
use session_layer::store::{FoundSession, Inserted, Invalidation, Liveness, SessionInsert};
use session_layer::{
    Fence, MemoryStore, RevocationReason, Session, SessionStore, StoreError, TokenHash, UserId,
};
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

/// A user id type the suites run with: fresh, distinct ids.
pub trait TestUser: UserId {
    fn fresh() -> Self;
}

impl TestUser for Uuid {
    fn fresh() -> Self {
        Uuid::now_v7()
    }
}

impl TestUser for i64 {
    fn fresh() -> Self {
        // Random, so parallel tests on one database never share a user.
        let random = session_layer::SessionToken::generate().unwrap().hash();
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&random.as_bytes()[..8]);
        i64::from_ne_bytes(bytes) & i64::MAX
    }
}

impl TestUser for String {
    fn fresh() -> Self {
        format!("user-{}", Uuid::now_v7())
    }
}

pub fn memory_as<U: UserId>() -> Arc<dyn SessionStore<U>> {
    Arc::new(MemoryStore::<U>::default())
}

#[cfg(feature = "sqlite")]
pub async fn sqlite_as<U: UserId>() -> Arc<dyn SessionStore<U>> {
    let store = SqliteStore::connect_with(
        &test_support::sqlite_database("sessions"),
        session_layer::store::Tables::new().user_id::<U>(),
    )
    .await
    .expect("open SQLite");
    store.migrate().await.expect("migrate SQLite");
    Arc::new(store)
}

#[cfg(feature = "postgres")]
pub async fn postgres_as<U: UserId>() -> Arc<dyn SessionStore<U>> {
    let store = PostgresStore::connect_with(
        &test_support::postgres_database(),
        session_layer::store::Tables::new().user_id::<U>(),
    )
    .await
    .expect("connect PostgreSQL");
    store.migrate().await.expect("migrate PostgreSQL");
    Arc::new(store)
}

/// A store on the Redis server shared by the test process, under a key prefix of its own.
#[cfg(feature = "redis")]
pub async fn redis_as<U: UserId>() -> Arc<dyn SessionStore<U>> {
    Arc::new(redis_store_on::<U>(&test_support::redis_server().url()).await)
}

#[cfg(feature = "redis")]
pub async fn redis() -> Arc<dyn SessionStore> {
    redis_as::<Uuid>().await
}

/// A store on the Redis server at `url`, under a fresh key prefix.
#[cfg(feature = "redis")]
pub async fn redis_store_on<U: UserId>(url: &str) -> session_layer::RedisStore<U> {
    session_layer::RedisStore::connect_with(url, &test_support::redis_prefix())
        .await
        .expect("connect Redis")
}

pub fn memory() -> Arc<dyn SessionStore> {
    Arc::new(MemoryStore::new())
}

#[cfg(feature = "sqlite")]
pub async fn sqlite() -> Arc<dyn SessionStore> {
    Arc::new(sqlite_store().await)
}

#[cfg(feature = "sqlite")]
pub async fn sqlite_store() -> SqliteStore {
    let store = SqliteStore::connect(&test_support::sqlite_database("sessions"))
        .await
        .expect("open SQLite");
    store.migrate().await.expect("migrate SQLite");
    store
}

#[cfg(feature = "postgres")]
pub async fn postgres() -> Arc<dyn SessionStore> {
    Arc::new(postgres_store(&test_support::postgres_database()).await)
}

#[cfg(feature = "postgres")]
pub async fn postgres_store(url: &str) -> PostgresStore {
    let store = PostgresStore::connect(url)
        .await
        .expect("connect PostgreSQL");
    store.migrate().await.expect("migrate PostgreSQL");
    store
}

/// Wraps a store: counts token lookups, can hold them at a gate, and can fail every call.
pub struct ProbeStore<U: UserId = Uuid> {
    inner: Arc<dyn SessionStore<U>>,
    pub lookups: AtomicUsize,
    /// How many `recent_activity` entries the last insert carried.
    pub last_recent_activity: AtomicUsize,
    pub failing: AtomicBool,
    paused: AtomicBool,
    holding_commits: AtomicBool,
    /// Signalled when a lookup has read the store and is waiting at the gate.
    pub lookup_waiting: Notify,
    /// Signalled when a revocation has committed in the store and is waiting at the gate.
    pub commit_waiting: Notify,
    gate: Notify,
}

impl<U: UserId> ProbeStore<U> {
    pub fn new(inner: Arc<dyn SessionStore<U>>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            lookups: AtomicUsize::new(0),
            last_recent_activity: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            holding_commits: AtomicBool::new(false),
            lookup_waiting: Notify::new(),
            commit_waiting: Notify::new(),
            gate: Notify::new(),
        })
    }

    pub fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }

    /// From now on, lookups read the store and then wait until [`release`](Self::release).
    pub fn pause_lookups(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// From now on, revocations commit in the store and then wait until
    /// [`release`](Self::release) before they return to the manager.
    pub fn hold_after_commit(&self) {
        self.holding_commits.store(true, Ordering::SeqCst);
    }

    pub fn release(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.holding_commits.store(false, Ordering::SeqCst);
        self.gate.notify_waiters();
    }

    async fn after_commit(&self) {
        if self.holding_commits.load(Ordering::SeqCst) {
            let released = self.gate.notified();
            self.commit_waiting.notify_one();
            released.await;
        }
    }

    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn check(&self, op: &'static str) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            Err(StoreError::new(op, "simulated outage"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl<U: UserId> SessionStore<U> for ProbeStore<U> {
    async fn insert(&self, insert: SessionInsert<'_, U>) -> Result<Inserted, StoreError> {
        self.check("insert")?;
        self.last_recent_activity
            .store(insert.recent_activity.len(), Ordering::SeqCst);
        self.inner.insert(insert).await
    }

    async fn fence(&self, user_id: &U) -> Result<Fence, StoreError> {
        self.check("fence")?;
        self.inner.fence(user_id).await
    }

    async fn find_by_token(&self, hash: &TokenHash) -> Result<Option<FoundSession<U>>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let found = self.inner.find_by_token(hash).await;
        if self.paused.load(Ordering::SeqCst) {
            let released = self.gate.notified();
            self.lookup_waiting.notify_one();
            released.await;
        }
        self.check("find")?;
        found
    }

    async fn rotate(
        &self,
        user_id: &U,
        session_id: Uuid,
        current: &TokenHash,
        new: &TokenHash,
        live: Liveness,
    ) -> Result<Option<Session<U>>, StoreError> {
        self.check("rotate")?;
        self.inner
            .rotate(user_id, session_id, current, new, live)
            .await
    }

    async fn list_active(
        &self,
        user_id: &U,
        live: Liveness,
    ) -> Result<Vec<Session<U>>, StoreError> {
        self.check("list")?;
        self.inner.list_active(user_id, live).await
    }

    async fn revoke(
        &self,
        user_id: &U,
        session_id: Uuid,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Option<TokenHash>, StoreError> {
        self.check("revoke")?;
        let revoked = self.inner.revoke(user_id, session_id, reason, now).await;
        self.after_commit().await;
        revoked
    }

    async fn revoke_all(
        &self,
        user_id: &U,
        except: Option<Uuid>,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Vec<TokenHash>, StoreError> {
        self.check("revoke all")?;
        let revoked = self.inner.revoke_all(user_id, except, reason, now).await;
        self.after_commit().await;
        revoked
    }

    async fn touch(&self, touches: &[(Uuid, OffsetDateTime)]) -> Result<(), StoreError> {
        self.check("touch")?;
        self.inner.touch(touches).await
    }

    async fn cleanup(
        &self,
        now: OffsetDateTime,
        revoked_before: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        self.check("cleanup")?;
        self.inner.cleanup(now, revoked_before).await
    }

    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<Invalidation>> {
        self.inner.subscribe()
    }
}

#[allow(unused_imports)] // each test binary uses a part
pub use test_support::{captured_lines_with, captured_logs, eventually, poll_until};

/// Captures every event of every crate at TRACE, for the tests that search the logs (one level
/// for every test of a binary: see [`test_support::capture_logs`]).
pub fn capture_logs() {
    test_support::capture_logs(tracing::Level::TRACE);
}

/// Validates on `manager` until the session is served from its cache (its feed holds a lease).
pub async fn cached_on(manager: &session_layer::SessionManager, token: &str) {
    eventually(
        Duration::from_secs(10),
        "the session reached the cache",
        async || {
            assert!(manager.validate(token).await.unwrap().is_some());
            manager.sync_cache().await;
            manager.cached_sessions() >= 1
        },
    )
    .await;
}

/// Hammers `token` on `manager` for `window`; counts successes.
pub async fn served_after(
    manager: &session_layer::SessionManager,
    token: &str,
    window: Duration,
) -> usize {
    let until = std::time::Instant::now() + window;
    let mut served = 0;
    while std::time::Instant::now() < until {
        served += usize::from(manager.validate(token).await.unwrap().is_some());
        tokio::task::yield_now().await;
    }
    served
}

/// What one validation during an outage test gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Refused,
    Unavailable,
}

pub async fn outcome(manager: &session_layer::SessionManager, token: &str) -> Outcome {
    match manager.validate(token).await {
        Ok(Some(_)) => Outcome::Ok,
        Ok(None) => Outcome::Refused,
        Err(session_layer::Error::Store(_)) => Outcome::Unavailable,
        Err(other) => panic!("unexpected {other}"),
    }
}

/// The outcomes of a valid token's validations through a store outage: once the outage was
/// noticed, nothing was served from memory until the store was back, and the outage never
/// looked like a bad token.
pub fn assert_failed_closed(outcomes: &[Outcome]) {
    let first_unavailable = outcomes
        .iter()
        .position(|o| *o == Outcome::Unavailable)
        .expect("the outage was never noticed");
    let recovered = outcomes[first_unavailable..]
        .iter()
        .position(|o| *o == Outcome::Ok)
        .map_or(outcomes.len(), |i| i + first_unavailable);
    let outage = &outcomes[first_unavailable..recovered];
    assert!(
        outage.iter().all(|o| *o == Outcome::Unavailable),
        "{outage:?}"
    );
    assert!(
        !outcomes.contains(&Outcome::Refused),
        "an outage must not look like a bad token"
    );
}

/// Runs each scenario (an `async fn(Arc<dyn SessionStore>)`) against every store the cargo
/// features enable: the tests `<scenario>::memory`, `::sqlite`, `::postgres` and `::redis` (see
/// [`test_support::for_each_backend!`]).
macro_rules! on_every_store {
    ($($scenario:ident),* $(,)?) => {
        test_support::for_each_backend! {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            backends {
                memory => common::memory(),
                #[cfg(feature = "sqlite")]
                sqlite => common::sqlite().await,
                #[cfg(feature = "postgres")]
                postgres => common::postgres().await,
                #[cfg(feature = "redis")]
                redis => common::redis().await,
            }
            scenarios { $($scenario),* }
        }
    };
}

/// Registers an anomaly hook on `manager` that records every change and lets the request on.
pub fn record_anomalies(
    manager: &session_layer::SessionManager,
) -> Arc<std::sync::Mutex<Vec<session_layer::anomaly::Change>>> {
    let seen: Arc<std::sync::Mutex<Vec<_>>> = Arc::default();
    let sink = seen.clone();
    manager.on_anomaly(move |anomaly| {
        sink.lock().unwrap().push(anomaly.change.clone());
        session_layer::anomaly::Verdict::Allow
    });
    seen
}

/// An app with one route, `/me`, that logs "handler ran" inside a request span declaring
/// `session.id` and `user.id`, behind the session layer.
pub fn traced_app<U: UserId>(manager: session_layer::SessionManager<U>) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/me",
            get(|| async {
                tracing::info!("handler ran");
            }),
        )
        .layer(session_layer::SessionLayer::new(manager))
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |_: &http::Request<axum::body::Body>| {
                    tracing::info_span!(
                        "request",
                        session.id = tracing::field::Empty,
                        user.id = tracing::field::Empty,
                    )
                },
            ),
        )
}
