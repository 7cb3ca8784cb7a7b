//! Attack: concurrent rotate / revoke / revoke_all / validate / create, and the fences.

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

/// 16 concurrent refreshes of one token: exactly one winner; the losers get a plain conflict and
/// do not revoke the session; presenting the old token afterwards is reuse.
async fn concurrent_rotations_have_one_winner_and_plain_losers(store: Arc<dyn SessionStore>) {
    let manager = SessionManager::from_arc(store, SessionConfig::default()).unwrap();
    for _ in 0..10 {
        let user = Uuid::now_v7();
        let (a, _) = manager
            .create(NewSession::new(user))
            .await
            .unwrap()
            .into_parts();
        let a = a.expose();
        let current = manager.validate(&a).await.unwrap().unwrap();
        let rotations: Vec<_> = (0..16)
            .map(|_| {
                let (manager, current) = (manager.clone(), current.clone());
                tokio::spawn(async move { manager.rotate(&current).await })
            })
            .collect();
        let mut winners = Vec::new();
        for r in rotations {
            match r.await.unwrap() {
                Ok(issued) => winners.push(issued.token().expose()),
                Err(Error::RotationConflict) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one rotation wins");
        assert!(valid(&manager, &winners[0]).await, "losers did not revoke");
        assert!(!valid(&manager, &a).await);
        assert!(!valid(&manager, &winners[0]).await, "A again: reuse");
    }
}

/// Documented behaviour, with its cost: a client that refreshes and, in parallel, sends one more
/// request with the pre-refresh token (two browser tabs, a retried request) ends its own session
/// as soon as that request misses the cache after the rotation committed. No grace period.
async fn design_a_parallel_request_with_the_pre_refresh_token_ends_the_session(
    store: Arc<dyn SessionStore>,
) {
    let manager = SessionManager::from_arc(store, SessionConfig::default()).unwrap();
    let (a, _) = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    let a = a.expose();
    let current = manager.validate(&a).await.unwrap().unwrap();
    let (b, _) = manager.rotate(&current).await.unwrap().into_parts();
    // The other tab's request, sent before the Set-Cookie with B arrived.
    assert!(!valid(&manager, &a).await);
    assert!(
        !valid(&manager, &b.expose()).await,
        "the fresh token B dies with the session"
    );
}

/// rotate and revoke race; once both returned, no token of the session is served.
async fn rotate_racing_revoke_leaves_nothing_valid(store: Arc<dyn SessionStore>) {
    let manager = SessionManager::from_arc(store, SessionConfig::default()).unwrap();
    for round in 0..30 {
        let user = Uuid::now_v7();
        let (a, session) = manager
            .create(NewSession::new(user))
            .await
            .unwrap()
            .into_parts();
        let a = a.expose();
        let current = manager.validate(&a).await.unwrap().unwrap();
        let rotating = {
            let (m, c) = (manager.clone(), current.clone());
            tokio::spawn(async move { m.rotate(&c).await })
        };
        let revoking = {
            let m = manager.clone();
            tokio::spawn(async move {
                if round % 2 == 0 {
                    m.revoke(user, session.id, RevocationReason::Logout)
                        .await
                        .map(|()| 1)
                } else {
                    m.revoke_all(user, RevocationReason::PasswordReset).await
                }
            })
        };
        // Hammer validation of both tokens meanwhile.
        let rotated = rotating.await.unwrap();
        let _ = revoking.await.unwrap();
        let b = rotated.ok().map(|issued| issued.token().expose());
        assert!(!valid(&manager, &a).await, "round {round}: A served");
        if let Some(b) = b {
            assert!(
                !valid(&manager, &b).await,
                "round {round}: B served after revoke"
            );
        }
        assert!(manager.list(user).await.unwrap().is_empty());
    }
}

/// A fenced-out sign-in must not have side effects: with a limit of 1, it must not evict the
/// session that survived the password change.
async fn a_fenced_sign_in_evicts_nothing(store: Arc<dyn SessionStore>) {
    let config = SessionConfig::builder()
        .max_sessions_per_user(Some(1))
        .build()
        .unwrap();
    let manager = SessionManager::from_arc(store, config).unwrap();
    let user = Uuid::now_v7();
    let (own, _) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    let current = manager.validate(&own.expose()).await.unwrap().unwrap();
    let fence = manager.fence(user).await.unwrap();
    manager
        .revoke_others(&current, RevocationReason::PasswordChange)
        .await
        .unwrap();
    let late = manager.create(NewSession::new(user).fence(fence)).await;
    assert!(matches!(late, Err(Error::Fenced)));
    assert!(
        valid(&manager, &own.expose()).await,
        "the fenced login evicted the survivor"
    );
}

/// Two instances over one store: logins on one, reading the fence first, a reset on the other.
/// No login that read the fence before the reset completed may hold a valid session afterwards.
async fn fence_holds_across_two_instances(store: Arc<dyn SessionStore>) {
    let m1 = SessionManager::from_arc(store.clone(), SessionConfig::default()).unwrap();
    let m2 = SessionManager::from_arc(store, SessionConfig::default()).unwrap();
    for round in 0..10u64 {
        let user = Uuid::now_v7();
        let fence = m1.fence(user).await.unwrap();
        let logins: Vec<_> = (0..24u64)
            .map(|i| {
                let m1 = m1.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros((i * 97 + round * 13) % 2000)).await;
                    m1.create(NewSession::new(user).fence(fence)).await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_micros(700)).await;
        m2.revoke_all(user, RevocationReason::PasswordReset)
            .await
            .unwrap();
        for login in logins {
            match login.await.unwrap() {
                Ok(issued) => assert!(
                    !valid(&m2, &issued.token().expose()).await,
                    "round {round}: an old-password login survived the reset"
                ),
                Err(Error::Fenced) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert!(m2.list(user).await.unwrap().is_empty(), "round {round}");
    }
}

/// Many concurrent sign-ins of one user at the limit: the limit holds (no more than N active).
async fn concurrent_sign_ins_respect_the_limit(store: Arc<dyn SessionStore>) {
    let config = SessionConfig::builder()
        .max_sessions_per_user(Some(3))
        .build()
        .unwrap();
    let manager = SessionManager::from_arc(store, config).unwrap();
    let user = Uuid::now_v7();
    let logins: Vec<_> = (0..32)
        .map(|_| {
            let m = manager.clone();
            tokio::spawn(async move { m.create(NewSession::new(user)).await })
        })
        .collect();
    let mut tokens = Vec::new();
    for l in logins {
        tokens.push(l.await.unwrap().unwrap().token().expose());
    }
    let mut served = 0;
    for t in &tokens {
        served += usize::from(valid(&manager, t).await);
    }
    assert!(served <= 3, "{served} sessions served with a limit of 3");
    assert!(manager.list(user).await.unwrap().len() <= 3);
}

on_every_store!(
    concurrent_rotations_have_one_winner_and_plain_losers,
    design_a_parallel_request_with_the_pre_refresh_token_ends_the_session,
    rotate_racing_revoke_leaves_nothing_valid,
    a_fenced_sign_in_evicts_nothing,
    fence_holds_across_two_instances,
    concurrent_sign_ins_respect_the_limit,
);
