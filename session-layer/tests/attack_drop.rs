//! Attack: dropped futures at the await points of the *validation* path (the layer's lookup is a
//! plain boxed future that hyper drops when the client goes away), and what they leave behind.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use session_layer::{
    Error, NewSession, RevocationReason, SessionConfig, SessionManager, SessionStore,
};
use uuid::Uuid;

async fn valid(manager: &SessionManager, token: &str) -> bool {
    manager.validate(token).await.unwrap().is_some()
}

/// A thief holds B (rotated from A); the victim's client presents A. The request carrying A is
/// dropped after the store said "A is a retired token of this session" but before the revocation
/// started (client closed the socket). Contract: any rotated-out token presented on any route
/// revokes the session. Expected: B stops working.
async fn a_dropped_request_presenting_a_retired_token_still_revokes(store: Arc<dyn SessionStore>) {
    let probe = common::ProbeStore::new(store);
    let manager = SessionManager::from_arc(probe.clone(), SessionConfig::default()).unwrap();
    let user = Uuid::now_v7();
    let (a, _) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    let a = a.expose();
    let current = manager.validate(&a).await.unwrap().unwrap();
    let (b, _) = manager.rotate(&current).await.unwrap().into_parts();
    let b = b.expose();
    assert!(valid(&manager, &b).await);

    probe.pause_lookups();
    let waiting = probe.lookup_waiting.notified();
    let presenting = {
        let manager = manager.clone();
        let a = a.clone();
        async move { manager.validate(&a).await }
    };
    tokio::select! {
        _ = presenting => panic!("the lookup is held at the gate"),
        () = waiting => {}
    }
    // The request presenting A was dropped with its lookup done; let the store go on.
    probe.release();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b_still_works = valid(&manager, &b).await;
    assert!(
        !b_still_works,
        "retired token A was presented (the store found it) but the request was dropped: \
         no token_reuse revocation happened, the thief's token B still works"
    );
}

/// A lookup future dropped while it holds moka's per-key compute lock must not leave the key
/// locked: a later revocation and a later validation of the same token must both complete.
async fn a_dropped_lookup_leaves_no_lock_behind(store: Arc<dyn SessionStore>) {
    let probe = common::ProbeStore::new(store);
    let manager = SessionManager::from_arc(probe.clone(), SessionConfig::default()).unwrap();
    let user = Uuid::now_v7();
    let (token, session) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    let token = token.expose();

    probe.pause_lookups();
    let waiting = probe.lookup_waiting.notified();
    let looking = {
        let manager = manager.clone();
        let token = token.clone();
        async move { manager.validate(&token).await }
    };
    tokio::select! {
        _ = looking => panic!("held"),
        () = waiting => {}
    }
    probe.release();
    let revoked = tokio::time::timeout(
        Duration::from_secs(3),
        manager.revoke(user, session.id, RevocationReason::Logout),
    )
    .await
    .expect("revocation hung behind a dropped lookup");
    revoked.unwrap();
    let after = tokio::time::timeout(Duration::from_secs(3), manager.validate(&token))
        .await
        .expect("validation hung behind a dropped lookup")
        .unwrap();
    assert!(after.is_none());
}

/// Drop `create` at many points in time (every few microseconds): whatever happened must be
/// whole: either no session at all, or a session that is listed. And no evicted session (limit 1)
/// may remain served from the cache.
async fn dropped_creates_at_every_instant_leave_whole_effects(store: Arc<dyn SessionStore>) {
    let config = SessionConfig::builder()
        .max_sessions_per_user(Some(1))
        .build()
        .unwrap();
    let manager = SessionManager::from_arc(store, config).unwrap();
    let user = Uuid::now_v7();
    let (first, _) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    let first = first.expose();
    assert!(valid(&manager, &first).await, "cached");
    for delay_us in [0u64, 1, 5, 20, 50, 100, 200, 400, 800, 1600, 3200] {
        let creating = manager.create(NewSession::new(user));
        let _ = tokio::time::timeout(Duration::from_micros(delay_us), creating).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Whatever number of dropped creates ran to the end, `first` was evicted by the first one
    // that did, and the limit of 1 holds.
    let listed = manager.list(user).await.unwrap();
    assert!(listed.len() <= 1, "limit 1 but {} listed", listed.len());
    if !listed.is_empty() {
        assert!(
            !valid(&manager, &first).await,
            "evicted by a dropped create but still served from the cache"
        );
    }
}

/// Concurrent validations of one token dropped at random instants while a revocation runs:
/// after the revocation returns the token is refused.
async fn dropped_validations_racing_a_revocation(store: Arc<dyn SessionStore>) {
    let manager = SessionManager::from_arc(store, SessionConfig::default()).unwrap();
    for round in 0..20u64 {
        let user = Uuid::now_v7();
        let (token, session) = manager
            .create(NewSession::new(user))
            .await
            .unwrap()
            .into_parts();
        let token = token.expose();
        let mut tasks = Vec::new();
        for i in 0..8u64 {
            let manager = manager.clone();
            let token = token.clone();
            tasks.push(tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_micros((i * 37 + round * 11) % 300),
                    manager.validate(&token),
                )
                .await;
            }));
        }
        match manager
            .revoke(user, session.id, RevocationReason::Logout)
            .await
        {
            Ok(()) => {}
            Err(e) => panic!("revoke: {e}"),
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert!(
            !valid(&manager, &token).await,
            "round {round}: a revoked token was served after the revocation returned"
        );
    }
    let _ = Error::Fenced;
}

on_every_store!(
    a_dropped_request_presenting_a_retired_token_still_revokes,
    a_dropped_lookup_leaves_no_lock_behind,
    dropped_creates_at_every_instant_leave_whole_effects,
    dropped_validations_racing_a_revocation,
);
