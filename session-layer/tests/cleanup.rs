//! The periodic cleanup: expired and long-revoked rows go, live ones stay, and a failed run does
//! not stop the task.

mod common;

use std::sync::Arc;
use std::time::Duration;

use session_layer::{NewSession, RevocationReason, SessionConfig, SessionManager};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_cleanup_purges_dead_rows_and_survives_store_failures() {
    let rows = common::memory();
    let probe = common::ProbeStore::new(Arc::clone(&rows));
    let config = SessionConfig::builder()
        .ttl(Duration::from_millis(300))
        .idle_timeout(Duration::from_millis(300))
        .revoked_retention(Duration::from_millis(50))
        .build()
        .unwrap();
    let manager = SessionManager::from_arc(probe.clone(), config).unwrap();
    let user = Uuid::now_v7();
    let (expiring, _) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    let (revoked, revoked_session) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    manager
        .revoke(user, revoked_session.id, RevocationReason::Logout)
        .await
        .unwrap();

    // The first runs fail; the task must keep going.
    probe.fail(true);
    let task = manager.spawn_cleanup(Duration::from_millis(50));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!task.is_finished(), "a failed run ended the cleanup task");
    assert!(rows.find_by_token(&revoked.hash()).await.unwrap().is_some());
    probe.fail(false);

    common::eventually(
        Duration::from_secs(5),
        "expired and long-revoked rows were not purged",
        async || {
            rows.find_by_token(&expiring.hash())
                .await
                .unwrap()
                .is_none()
                && rows.find_by_token(&revoked.hash()).await.unwrap().is_none()
        },
    )
    .await;

    let (live, _) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        rows.find_by_token(&live.hash()).await.unwrap().is_some(),
        "cleanup deleted a live session"
    );
    task.abort();
}
