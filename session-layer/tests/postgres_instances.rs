//! Several instances on one PostgreSQL database: revocations cross instances, a lost
//! notification connection empties the cache, and a database outage fails closed.

#![cfg(feature = "postgres")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use session_layer::{NewSession, PostgresStore, RevocationReason, SessionConfig, SessionManager};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

async fn instance(url: &str) -> SessionManager {
    SessionManager::new(common::postgres_store(url).await, SessionConfig::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_on_one_instance_is_refused_by_another_that_cached_it() {
    let url = test_support::postgres_database();
    let (a, b) = (instance(&url).await, instance(&url).await);
    let user = Uuid::now_v7();
    for reason in [
        RevocationReason::RevokedByUser,
        RevocationReason::PasswordReset,
    ] {
        let (token, session) = a.create(NewSession::new(user)).await.unwrap().into_parts();
        let token = token.expose();
        common::cached_on(&b, &token).await;
        match reason {
            RevocationReason::RevokedByUser => a.revoke(user, session.id, reason).await.unwrap(),
            _ => assert_eq!(a.revoke_all(user, reason).await.unwrap(), 1),
        }
        // NOTIFY is delivered asynchronously; it must land well within a second.
        common::eventually(
            Duration::from_secs(2),
            "instance B still accepts a token revoked on A",
            async || b.validate(&token).await.unwrap().is_none(),
        )
        .await;
        for _ in 0..20 {
            assert!(b.validate(&token).await.unwrap().is_none());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_on_one_instance_kills_the_old_token_on_another() {
    let url = test_support::postgres_database();
    let (a, b) = (instance(&url).await, instance(&url).await);
    let (token, _) = a
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    let old = token.expose();
    common::cached_on(&b, &old).await;
    let current = a.validate(&old).await.unwrap().unwrap();
    let (new, _) = a.rotate(&current).await.unwrap().into_parts();
    common::eventually(
        Duration::from_secs(2),
        "instance B still accepts a rotated-out token",
        async || b.validate(&old).await.unwrap().is_none(),
    )
    .await;
    // Presenting the old token on B was reuse: the session is gone everywhere.
    assert!(a.validate(&new.expose()).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_notification_connection_empties_the_cache() {
    let url = test_support::postgres_database();
    let manager = instance(&url).await;
    let user = Uuid::now_v7();
    let (token, session) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    let token = token.expose();
    common::cached_on(&manager, &token).await;

    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    // Revoke behind the library's back (no NOTIFY), then cut the listener: the notification
    // that would have told this instance is lost, so only emptying the cache saves us.
    sqlx::query("UPDATE sessions SET revoked_at = now(), revoked_reason = 'admin' WHERE id = $1")
        .bind(session.id)
        .execute(&admin)
        .await
        .unwrap();
    assert!(
        manager.validate(&token).await.unwrap().is_some(),
        "precondition: the cache still serves the session"
    );
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .execute(&admin)
    .await
    .unwrap();
    common::eventually(
        Duration::from_secs(5),
        "a revoked session was served after the listener connection was lost",
        async || manager.validate(&token).await.unwrap().is_none(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_under_load_fails_closed_and_recovers() {
    let server = Arc::new(test_support::dedicated_postgres());
    // A short acquire timeout, so a lookup during the outage fails instead of waiting it out.
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect(&server.database_url())
        .await
        .unwrap();
    let store = PostgresStore::new(pool);
    store.migrate().await.unwrap();
    let manager = SessionManager::new(store, SessionConfig::default()).unwrap();
    let (token, _) = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    let token = token.expose();
    common::cached_on(&manager, &token).await;

    let done = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (manager, token, done) = (manager.clone(), token.clone(), done.clone());
        async move {
            let mut outcomes = Vec::new();
            while !done.load(Ordering::SeqCst) {
                outcomes.push(common::outcome(&manager, &token).await);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            outcomes
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = server.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let starting = server.clone();
    tokio::task::spawn_blocking(move || starting.start())
        .await
        .unwrap();
    let back = common::poll_until(Duration::from_secs(15), async || {
        common::outcome(&manager, &token).await == common::Outcome::Ok
    })
    .await
    .is_some();
    done.store(true, Ordering::SeqCst);
    let outcomes = load.await.unwrap();
    assert!(back, "the session did not come back after the database did");

    common::assert_failed_closed(&outcomes);
}
