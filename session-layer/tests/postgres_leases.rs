//! Leases and acknowledgements in situations only PostgreSQL makes (a commit that stalls, a
//! bulk revocation from outside); the suite every feed runs is `leases.rs`.

#![cfg(feature = "postgres")]

mod common;

use std::time::Duration;

use common::relay::Relay;
use session_layer::{
    NewSession, PostgresStore, RevocationReason, SessionConfig, SessionManager, SessionStore as _,
};
use uuid::Uuid;

async fn instance(store: PostgresStore) -> SessionManager {
    store.migrate().await.unwrap();
    SessionManager::new(store, SessionConfig::default()).unwrap()
}

async fn store(url: &str, lease: Duration) -> PostgresStore {
    common::postgres_store(url).await.with_lease(lease)
}

/// The wait for a silent peer counts from the end of the commit: a slow commit (a stalled
/// fsync or synchronous replica, here a deferred trigger that sleeps) must not let a partitioned
/// peer's lease outlive the revoking call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_commit_does_not_shorten_the_wait_for_a_partitioned_peer() {
    let url = test_support::postgres_database();
    let lease = Duration::from_millis(600);
    let a = instance(store(&url, lease).await).await;
    let relay = Relay::start(test_support::postgres_server().port()).await;
    let b = instance(
        store(&url, lease)
            .await
            .with_listen_url(&relay.url(&url))
            .unwrap(),
    )
    .await;
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_sleep(0.6); RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER slow_commit AFTER UPDATE ON sessions \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
         WHEN (NEW.revoked_reason = 'admin') EXECUTE FUNCTION slow_commit();",
    )
    .execute(&admin)
    .await
    .unwrap();
    tokio::time::sleep(lease + lease / 4).await;
    let user = Uuid::now_v7();
    let (token, session) = a.create(NewSession::new(user)).await.unwrap().into_parts();
    let token = token.expose();
    common::cached_on(&b, &token).await;
    let revoking = {
        let a = a.clone();
        tokio::spawn(async move { a.revoke(user, session.id, RevocationReason::Admin).await })
    };
    // B goes silent while the commit stalls; its last lease started during the stall.
    tokio::time::sleep(Duration::from_millis(450)).await;
    relay.frozen.send_replace(true);
    revoking.await.unwrap().unwrap();
    assert_eq!(
        common::served_after(&b, &token, Duration::from_millis(200)).await,
        0,
        "B served the token after the revoking call returned"
    );
}

/// Two managers on one store (one process, one feed): the revoking call also waits for the
/// sibling's cache, even while its relay is busy with a large invalidation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sibling_manager_on_the_same_store_drops_the_token_before_revoke_returns() {
    let url = test_support::postgres_database();
    let lease = Duration::from_secs(1);
    let shared = store(&url, lease).await;
    let config = SessionConfig::builder()
        .max_sessions_per_user(None)
        .build()
        .unwrap();
    let first = SessionManager::new(shared.clone(), config.clone()).unwrap();
    let sibling = SessionManager::new(shared, config).unwrap();
    // Another process (a store without a manager) revokes many sessions at once: their
    // notifications keep the sibling's relay busy.
    let other = store(&url, lease).await;
    let admin = other.pool().clone();
    let crowd = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO sessions (id, user_id, token_hash, device, device_type, created_at, \
           last_active_at, expires_at) \
         SELECT gen_random_uuid(), $1, sha256(random()::text::bytea || i::text::bytea), \
           'Other', 'unknown', now(), now(), now() + interval '1 day' \
         FROM generate_series(1, 8000) AS i",
    )
    .bind(crowd)
    .execute(other.pool())
    .await
    .unwrap();
    let user = Uuid::now_v7();
    let (token, session) = first
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    let token = token.expose();
    common::cached_on(&sibling, &token).await;
    // Past a lease of listening, the revoker knows its peers and would not wait out the lease.
    tokio::time::sleep(lease + lease / 4).await;
    // Committed before the revocation below, so the sibling's relay works through it first.
    let flood = tokio::spawn(async move {
        other
            .revoke_all(
                &crowd,
                None,
                RevocationReason::Admin,
                time::OffsetDateTime::now_utc(),
            )
            .await
    });
    common::eventually(
        Duration::from_secs(10),
        "the crowd's revocation began",
        async || {
            let revoked: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM sessions WHERE user_id = $1 AND revoked_at IS NOT NULL",
            )
            .bind(crowd)
            .fetch_one(&admin)
            .await
            .unwrap();
            revoked > 0
        },
    )
    .await;
    first
        .revoke(user, session.id, RevocationReason::RevokedByUser)
        .await
        .unwrap();
    assert!(
        sibling.validate(&token).await.unwrap().is_none(),
        "the sibling manager served the token after the revoking call returned"
    );
    flood.await.unwrap().unwrap();
}
