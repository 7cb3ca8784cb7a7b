//! Security-sensitive races: revoke-then-use, the in-flight load, rotation and reuse, stampede.

#[macro_use]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use session_layer::{
    Error, NewSession, RevocationReason, SessionConfig, SessionManager, SessionStore,
};
use uuid::Uuid;

fn manager_over(store: Arc<dyn SessionStore>) -> SessionManager {
    SessionManager::from_arc(store, SessionConfig::default()).unwrap()
}

async fn revoke_then_use_never_succeeds_under_concurrency(store: Arc<dyn SessionStore>) {
    let manager = manager_over(store);
    let user = Uuid::now_v7();
    let (token, session) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    let token = Arc::new(token.expose());
    let revoked = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    // (successes before the revoke returned, attempts after it, successes after it)
    let counts = Arc::new([
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ]);
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (manager, token) = (manager.clone(), token.clone());
            let (revoked, stop, counts) = (revoked.clone(), stop.clone(), counts.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    // Read the flag before validating: a success that started after the revoke
                    // returned is a broken promise.
                    let started_after_revoke = revoked.load(Ordering::SeqCst);
                    let ok = manager.validate(&token).await.unwrap().is_some();
                    match (ok, started_after_revoke) {
                        (true, false) => counts[0].fetch_add(1, Ordering::SeqCst),
                        (ok, true) => {
                            counts[2].fetch_add(usize::from(ok), Ordering::SeqCst);
                            counts[1].fetch_add(1, Ordering::SeqCst)
                        }
                        _ => 0,
                    };
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    // Let the workers use the token for a while first: at least 100 uses, however loaded the
    // machine (a fixed 100 ms was too short for PostgreSQL when other tests share the cores).
    tokio::time::sleep(Duration::from_millis(100)).await;
    common::eventually(
        Duration::from_secs(10),
        "the token was barely exercised",
        async || counts[0].load(Ordering::SeqCst) > 100,
    )
    .await;
    manager
        .revoke(user, session.id, RevocationReason::RevokedByUser)
        .await
        .unwrap();
    revoked.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    common::eventually(
        Duration::from_secs(10),
        "too few uses after the revocation",
        async || counts[1].load(Ordering::SeqCst) > 100,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    let [early, late_attempts, late_successes] = &*counts;
    assert!(
        early.load(Ordering::SeqCst) > 100,
        "the token was barely exercised"
    );
    assert!(
        late_attempts.load(Ordering::SeqCst) > 100,
        "too few uses after the revocation"
    );
    assert_eq!(late_successes.load(Ordering::SeqCst), 0);
}

/// The moka trap: a load that read the row before the revocation must not re-cache it after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_in_flight_during_revocation_cannot_recache_the_session() {
    let probe = common::ProbeStore::new(common::memory());
    let manager = manager_over(probe.clone());
    let user = Uuid::now_v7();
    let (token, session) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    let token = token.expose();

    probe.pause_lookups();
    let waiting = probe.lookup_waiting.notified();
    let in_flight = tokio::spawn({
        let (manager, token) = (manager.clone(), token.clone());
        async move { manager.validate(&token).await.unwrap().is_some() }
    });
    // The load has read the still-active row and is held before it can cache it.
    waiting.await;
    let revoking = tokio::spawn({
        let manager = manager.clone();
        async move {
            manager
                .revoke(user, session.id, RevocationReason::RevokedByUser)
                .await
        }
    });
    // Give the revocation time to commit in the store and reach the cache.
    tokio::time::sleep(Duration::from_millis(100)).await;
    probe.release();
    assert!(
        in_flight.await.unwrap(),
        "the in-flight request started before the revocation"
    );
    revoking.await.unwrap().unwrap();

    let lookups_before = probe.lookups();
    assert!(manager.validate(&token).await.unwrap().is_none());
    assert_eq!(
        probe.lookups(),
        lookups_before + 1,
        "the refusal must come from the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_token_make_one_store_query() {
    let probe = common::ProbeStore::new(common::memory());
    let manager = manager_over(probe.clone());
    let (token, _) = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    let token = Arc::new(token.expose());
    let requests: Vec<_> = (0..1000)
        .map(|_| {
            let (manager, token) = (manager.clone(), token.clone());
            tokio::spawn(async move { manager.validate(&token).await.unwrap().is_some() })
        })
        .collect();
    for request in requests {
        assert!(request.await.unwrap());
    }
    assert_eq!(probe.lookups(), 1);
}

async fn rotation_race_has_one_winner_and_reuse_revokes_the_session(store: Arc<dyn SessionStore>) {
    let manager = manager_over(store);
    let user = Uuid::now_v7();
    let (token, session) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    let old = token.expose();
    let current = manager.validate(&old).await.unwrap().unwrap();

    let attempts: Vec<_> = (0..4)
        .map(|_| {
            let (manager, current) = (manager.clone(), current.clone());
            tokio::spawn(async move { manager.rotate(&current).await })
        })
        .collect();
    let mut new_tokens = Vec::new();
    for attempt in attempts {
        match attempt
            .await
            .unwrap()
            .map(session_layer::IssuedSession::into_parts)
        {
            Ok((token, rotated)) => {
                assert_eq!(rotated.id, session.id);
                assert_eq!(rotated.expires_at, session.expires_at);
                new_tokens.push(token.expose());
            }
            Err(Error::RotationConflict) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(new_tokens.len(), 1, "exactly one rotation wins");
    let new = &new_tokens[0];

    assert!(manager.validate(new).await.unwrap().is_some());
    // The old token is dead at once, and presenting it again is treated as theft.
    assert!(manager.validate(&old).await.unwrap().is_none());
    assert!(
        manager.validate(new).await.unwrap().is_none(),
        "reuse revokes the whole session"
    );
    assert!(manager.list(user).await.unwrap().is_empty());
}

#[tokio::test]
async fn session_limit_eviction_is_refused_even_when_cached() {
    let config = SessionConfig::builder()
        .max_sessions_per_user(Some(2))
        .build()
        .unwrap();
    let manager = SessionManager::new(session_layer::MemoryStore::new(), config).unwrap();
    let user = Uuid::now_v7();
    let (first, _) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    let first = first.expose();
    assert!(manager.validate(&first).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(2)).await;
    let (second, _) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    tokio::time::sleep(Duration::from_millis(2)).await;
    let (third, _) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    assert!(manager.validate(&first).await.unwrap().is_none());
    assert!(manager.validate(&second.expose()).await.unwrap().is_some());
    assert!(manager.validate(&third.expose()).await.unwrap().is_some());
}

#[tokio::test]
async fn revoke_others_keeps_only_the_current_session() {
    let manager =
        SessionManager::new(session_layer::MemoryStore::new(), SessionConfig::default()).unwrap();
    let user = Uuid::now_v7();
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(
            manager
                .create(NewSession::new(user))
                .await
                .unwrap()
                .into_parts()
                .0
                .expose(),
        );
    }
    let current = manager.validate(&tokens[0]).await.unwrap().unwrap();
    for token in &tokens[1..] {
        assert!(manager.validate(token).await.unwrap().is_some());
    }
    let revoked = manager
        .revoke_others(&current, RevocationReason::PasswordChange)
        .await
        .unwrap();
    assert_eq!(revoked, 2);
    assert!(manager.validate(&tokens[0]).await.unwrap().is_some());
    for token in &tokens[1..] {
        assert!(manager.validate(token).await.unwrap().is_none());
    }
    // Another user's session id is simply not found.
    let stranger = Uuid::now_v7();
    assert!(matches!(
        manager
            .revoke(
                stranger,
                current.session_id(),
                RevocationReason::RevokedByUser
            )
            .await,
        Err(Error::SessionNotFound)
    ));
    assert!(manager.validate(&tokens[0]).await.unwrap().is_some());
}

/// Lookups of one token run one at a time; when the store fails, the requests queued behind the
/// failing lookup must fail with it instead of each waiting out a failure of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_behind_a_failed_lookup_share_its_failure() {
    let probe = common::ProbeStore::new(common::memory());
    let manager = manager_over(probe.clone());
    let (token, _) = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    let token = Arc::new(token.expose());
    probe.fail(true);
    probe.pause_lookups();
    let waiting = probe.lookup_waiting.notified();
    let requests: Vec<_> = (0..50)
        .map(|_| {
            let (manager, token) = (manager.clone(), token.clone());
            tokio::spawn(async move { manager.validate(&token).await })
        })
        .collect();
    waiting.await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    probe.release();
    for request in requests {
        assert!(matches!(request.await.unwrap(), Err(Error::Store(_))));
    }
    assert_eq!(probe.lookups(), 1);
    probe.fail(false);
    assert!(manager.validate(&token).await.unwrap().is_some());
}

on_every_store!(
    revoke_then_use_never_succeeds_under_concurrency,
    rotation_race_has_one_winner_and_reuse_revokes_the_session,
);
