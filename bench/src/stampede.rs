//! Stampede: 1,000 concurrent requests carrying one valid, uncached token, through the layer,
//! in-process. Counted twice: by a store wrapper and by the library's metrics counters.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use session_layer::store::{FoundSession, Inserted, Liveness, SessionInsert};
use session_layer::{
    CurrentSession, Fence, NewSession, PostgresStore, RevocationReason, Session, SessionConfig,
    SessionLayer, SessionManager, SessionStore, StoreError, TokenHash, metrics as names,
};
use time::OffsetDateTime;
use tower::{Layer as _, ServiceExt as _, service_fn};
use uuid::Uuid;

use crate::counters::Counters;

/// Delegates to the real store and counts token lookups.
struct CountingStore {
    inner: PostgresStore,
    lookups: Arc<AtomicU64>,
}

#[async_trait]
impl SessionStore for CountingStore {
    async fn insert(&self, insert: SessionInsert<'_>) -> Result<Inserted, StoreError> {
        self.inner.insert(insert).await
    }

    async fn fence(&self, user_id: &Uuid) -> Result<Fence, StoreError> {
        self.inner.fence(user_id).await
    }

    async fn find_by_token(&self, hash: &TokenHash) -> Result<Option<FoundSession>, StoreError> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        self.inner.find_by_token(hash).await
    }

    async fn rotate(
        &self,
        user_id: &Uuid,
        session_id: Uuid,
        current: &TokenHash,
        new: &TokenHash,
        live: Liveness,
    ) -> Result<Option<Session>, StoreError> {
        self.inner
            .rotate(user_id, session_id, current, new, live)
            .await
    }

    async fn list_active(
        &self,
        user_id: &Uuid,
        live: Liveness,
    ) -> Result<Vec<Session>, StoreError> {
        self.inner.list_active(user_id, live).await
    }

    async fn revoke(
        &self,
        user_id: &Uuid,
        session_id: Uuid,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Option<TokenHash>, StoreError> {
        self.inner.revoke(user_id, session_id, reason, now).await
    }

    async fn revoke_all(
        &self,
        user_id: &Uuid,
        except: Option<Uuid>,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Vec<TokenHash>, StoreError> {
        self.inner.revoke_all(user_id, except, reason, now).await
    }

    async fn touch(&self, touches: &[(Uuid, OffsetDateTime)]) -> Result<(), StoreError> {
        self.inner.touch(touches).await
    }

    async fn cleanup(
        &self,
        now: OffsetDateTime,
        revoked_before: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        self.inner.cleanup(now, revoked_before).await
    }

    fn subscribe(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<session_layer::store::Invalidation>> {
        self.inner.subscribe()
    }
}

pub struct Report {
    pub requests: usize,
    pub authenticated: usize,
    pub store_lookups: u64,
    /// Counter name and the increase during the stampede (and the revocation after it).
    pub counters: Vec<(&'static str, u64)>,
}

pub async fn run(pg_url: &str, requests: usize) -> Report {
    let counters = Counters::global();
    let store = PostgresStore::connect(pg_url)
        .await
        .expect("connect to PostgreSQL");
    store.migrate().await.expect("migrate PostgreSQL");
    let lookups = Arc::new(AtomicU64::new(0));
    let store = CountingStore {
        inner: store,
        lookups: Arc::clone(&lookups),
    };
    let manager = SessionManager::new(store, SessionConfig::default()).expect("manager");
    let user = Uuid::now_v7();
    let (token, session) = manager
        .create(NewSession::new(user))
        .await
        .expect("create the session")
        .into_parts();
    // With PostgreSQL the cache is trusted once the LISTEN connection is up.
    wait_for_cache(&manager, &token.expose()).await;
    // The wait above cached the token; forget it without revoking: a second session is fresh.
    let (token, _) = manager
        .create(NewSession::new(user))
        .await
        .expect("create the stampede session")
        .into_parts();
    let tracked = [
        names::CACHE_HITS,
        names::CACHE_MISSES,
        names::STORE_QUERIES,
        names::STORE_ERRORS,
        names::REVOCATIONS,
    ];
    let before: Vec<u64> = tracked.iter().map(|name| counters.get(name)).collect();
    lookups.store(0, Ordering::Relaxed);

    let service =
        SessionLayer::new(manager.clone()).layer(service_fn(|request: Request<Body>| async move {
            let status = if request.extensions().get::<CurrentSession>().is_some() {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .body(Body::empty())
                    .expect("response"),
            )
        }));
    let cookie = format!("{}={}", manager.config().cookie().name(), token.expose());
    // All futures are polled once before any store reply can arrive: every request misses.
    let responses = futures_util::future::join_all((0..requests).map(|_| {
        let request = Request::get("/")
            .header("cookie", &cookie)
            .body(Body::empty())
            .expect("request");
        service.clone().oneshot(request)
    }))
    .await;
    let authenticated = responses
        .into_iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status() == StatusCode::OK))
        .count();
    let store_lookups = lookups.load(Ordering::Relaxed);

    manager
        .revoke(user, session.id, RevocationReason::Logout)
        .await
        .expect("revoke the first session");
    let counters = tracked
        .iter()
        .zip(before)
        .map(|(name, before)| (*name, counters.get(name) - before))
        .collect();
    manager.shutdown().await;
    Report {
        requests,
        authenticated,
        store_lookups,
        counters,
    }
}

/// Waits until a validation of `token` is served from the cache.
async fn wait_for_cache(manager: &SessionManager, token: &str) {
    for _ in 0..500 {
        manager.validate(token).await.expect("validate");
        manager.sync_cache().await;
        if manager.cached_sessions() > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the PostgreSQL invalidation feed never came up: the cache stayed bypassed");
}
