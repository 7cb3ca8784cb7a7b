//! The guarantees that the first version broke under attack, one test per finding, on every
//! store: token families, cancel-safe revocation, password fences, true activity, monotonic
//! bookkeeping, the miss cache. Timing runs on a manual clock, not on sleeps.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use session_layer::{
    Clock, Error, ManualClock, NewSession, RevocationReason, SessionConfig, SessionConfigBuilder,
    SessionManager, SessionStore, SessionToken,
};
use uuid::Uuid;

fn manual(config: SessionConfigBuilder) -> (SessionConfig, ManualClock) {
    let (clock, hand) = Clock::manual();
    (config.clock(clock).build().unwrap(), hand)
}

async fn valid(manager: &SessionManager, token: &str) -> bool {
    manager.validate(token).await.unwrap().is_some()
}

/// Finding 1: log in (A), refresh A → B, B → C, present A: the whole session must end.
async fn any_rotated_out_token_revokes_the_session(store: Arc<dyn SessionStore>) {
    let manager = SessionManager::from_arc(store, SessionConfig::default()).unwrap();
    let user = Uuid::now_v7();
    let (a, session) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    let mut family = vec![a.expose()];
    for _ in 0..2 {
        let current = manager
            .validate(family.last().unwrap())
            .await
            .unwrap()
            .unwrap();
        let (next, _) = manager.rotate(&current).await.unwrap().into_parts();
        family.push(next.expose());
    }
    let c = family.last().unwrap();
    assert!(valid(&manager, c).await, "the newest token works");
    assert!(!valid(&manager, &family[0]).await, "A is refused");
    assert!(
        !valid(&manager, c).await,
        "presenting A, two rotations old, revoked the session"
    );
    assert!(manager.list(user).await.unwrap().is_empty());
    // Every member of the family stays refused, and reuse keeps being detected, not only once.
    for token in &family {
        assert!(!valid(&manager, token).await);
    }
    assert!(matches!(
        manager
            .revoke(user, session.id, RevocationReason::Logout)
            .await,
        Err(Error::SessionNotFound)
    ));
}

/// Finding 2: the revoking call's future is dropped after the store committed (a client that
/// went away); the revocation must still reach the cache.
async fn a_dropped_revocation_still_reaches_the_cache(store: Arc<dyn SessionStore>) {
    let probe = common::ProbeStore::new(store);
    let manager = SessionManager::from_arc(probe.clone(), SessionConfig::default()).unwrap();
    let user = Uuid::now_v7();
    let (token, session) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    let token = token.expose();
    assert!(
        valid(&manager, &token).await,
        "cached before the revocation"
    );

    probe.hold_after_commit();
    let committed = probe.commit_waiting.notified();
    let revoking = {
        let manager = manager.clone();
        async move {
            manager
                .revoke(user, session.id, RevocationReason::RevokedByUser)
                .await
        }
    };
    tokio::select! {
        _ = revoking => panic!("the revocation cannot finish while the store holds it"),
        () = committed => {}
    }
    // The `select!` dropped the revoking future right after the store commit.
    probe.release();
    common::eventually(
        Duration::from_secs(2),
        "the dropped revocation never reached the cache",
        async || !valid(&manager, &token).await,
    )
    .await;
}

/// Finding 3: logins that proved the old password, interleaved with a password change, never
/// leave a session that outlives the change.
async fn logins_that_read_the_fence_before_a_password_change_cannot_outlive_it(
    store: Arc<dyn SessionStore>,
) {
    let manager = SessionManager::from_arc(store, SessionConfig::default()).unwrap();
    let user = Uuid::now_v7();
    let (own, _) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    let current = manager.validate(&own.expose()).await.unwrap().unwrap();

    // Deterministic interleaving: the login reads the fence and checks the old password...
    let fence = manager.fence(user).await.unwrap();
    // ...the change completes...
    manager
        .revoke_others(&current, RevocationReason::PasswordChange)
        .await
        .unwrap();
    // ...and only then does the login try to create its session.
    let late = manager.create(NewSession::new(user).fence(fence)).await;
    assert!(matches!(late, Err(Error::Fenced)), "got {late:?}");
    assert_eq!(manager.list(user).await.unwrap().len(), 1);
    // Without the fence, the same interleaving leaves a session the old password created:
    // the race the fence closes.
    let (unfenced, _) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    assert!(valid(&manager, &unfenced.expose()).await);

    // And under concurrency: 16 logins that read the fence before the reset began.
    let fence = manager.fence(user).await.unwrap();
    let logins: Vec<_> = (0..16)
        .map(|i| {
            let manager = manager.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(i * 150)).await;
                manager.create(NewSession::new(user).fence(fence)).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    manager
        .revoke_all(user, RevocationReason::PasswordReset)
        .await
        .unwrap();
    let mut survivors = 0;
    for login in logins {
        match login.await.unwrap() {
            Ok(issued) => survivors += usize::from(valid(&manager, &issued.token().expose()).await),
            Err(Error::Fenced) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        survivors, 0,
        "a login with the old password survived the reset"
    );
    assert!(manager.list(user).await.unwrap().is_empty());
}

/// Finding 4: idle 10 s, cache 2 s; used at t=4, used again at t=11 (7 s after the last use):
/// the session must still be valid although its cache entry ended and the use at t=4 was never
/// written.
async fn idle_expiry_remembers_uses_after_the_cache_entry_ends(store: Arc<dyn SessionStore>) {
    let (config, clock) = manual(
        SessionConfig::builder()
            .idle_timeout(Duration::from_secs(10))
            .cache_ttl(Duration::from_secs(2))
            // No batch is written during the test: only memory knows of the use at t=4.
            .touch_flush_interval(Duration::from_secs(3600)),
    );
    let manager = SessionManager::from_arc(store, config).unwrap();
    let (token, _) = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    let token = token.expose();
    clock.advance(Duration::from_secs(4));
    assert!(valid(&manager, &token).await);
    clock.advance(Duration::from_secs(7));
    assert!(
        valid(&manager, &token).await,
        "used 7 s ago with a 10 s idle timeout"
    );
    clock.advance(Duration::from_secs(10));
    assert!(!valid(&manager, &token).await, "10 s unused: idle");
}

/// Finding 5: with a limit of 2, s1 in use and s2 never used, signing in s3 evicts s2.
async fn the_session_limit_evicts_the_least_recently_used_not_the_one_in_use(
    store: Arc<dyn SessionStore>,
) {
    let (config, clock) = manual(
        SessionConfig::builder()
            .max_sessions_per_user(Some(2))
            .touch_flush_interval(Duration::from_secs(3600)),
    );
    let manager = SessionManager::from_arc(store, config).unwrap();
    let user = Uuid::now_v7();
    let (s1, _) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    clock.advance(Duration::from_millis(500));
    let (s2, _) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    for _ in 0..10 {
        clock.advance(Duration::from_millis(200));
        assert!(valid(&manager, &s1.expose()).await);
    }
    let (s3, _) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    assert!(
        valid(&manager, &s1.expose()).await,
        "the session in use stays"
    );
    assert!(!valid(&manager, &s2.expose()).await, "the unused one goes");
    assert!(valid(&manager, &s3.expose()).await);
}

/// Finding 6: one failed lookup, then the wall clock steps back 120 s: other tokens (and fresh
/// sign-ins) must not share that failure.
async fn a_failed_lookup_and_a_clock_step_block_no_other_token(store: Arc<dyn SessionStore>) {
    let probe = common::ProbeStore::new(store);
    let (config, clock) = manual(SessionConfig::builder());
    let manager = SessionManager::from_arc(probe.clone(), config).unwrap();
    let (mine, _) = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    let (other, _) = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    probe.fail(true);
    assert!(manager.validate(&mine.expose()).await.is_err());
    probe.fail(false);
    assert!(
        valid(&manager, &other.expose()).await,
        "another token must not share the failure"
    );
    clock.step_wall(-120_000_000);
    let (fresh, _) = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    assert!(
        valid(&manager, &fresh.expose()).await,
        "a fresh sign-in works"
    );
    assert!(
        valid(&manager, &mine.expose()).await,
        "the failed token itself works once the store is back"
    );
}

/// Finding 8: 500 requests with one unknown, well-formed token cost one store query; a flood of
/// random tokens does not push real sessions out of the cache.
async fn unknown_tokens_are_remembered_apart_from_sessions(store: Arc<dyn SessionStore>) {
    let probe = common::ProbeStore::new(store);
    let config = SessionConfig::builder().cache_capacity(50).build().unwrap();
    let manager = SessionManager::from_arc(probe.clone(), config).unwrap();
    let (real, _) = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    let real = real.expose();
    // A store shared by instances serves from memory once its invalidation feed holds a lease.
    common::eventually(
        Duration::from_secs(10),
        "the real session never reached the cache",
        async || {
            assert!(valid(&manager, &real).await);
            manager.sync_cache().await;
            manager.cached_sessions() == 1
        },
    )
    .await;

    let unknown = SessionToken::generate().unwrap().expose();
    let before = probe.lookups();
    for _ in 0..500 {
        assert!(!valid(&manager, &unknown).await);
    }
    assert_eq!(
        probe.lookups() - before,
        1,
        "one query for 500 presentations"
    );

    for _ in 0..2_000 {
        let random = SessionToken::generate().unwrap().expose();
        assert!(!valid(&manager, &random).await);
    }
    manager.sync_cache().await;
    let before = probe.lookups();
    assert!(valid(&manager, &real).await);
    assert_eq!(
        probe.lookups(),
        before,
        "the real session is still served from memory"
    );
}

on_every_store!(
    any_rotated_out_token_revokes_the_session,
    a_dropped_revocation_still_reaches_the_cache,
    logins_that_read_the_fence_before_a_password_change_cannot_outlive_it,
    idle_expiry_remembers_uses_after_the_cache_entry_ends,
    the_session_limit_evicts_the_least_recently_used_not_the_one_in_use,
    a_failed_lookup_and_a_clock_step_block_no_other_token,
    unknown_tokens_are_remembered_apart_from_sessions,
);
