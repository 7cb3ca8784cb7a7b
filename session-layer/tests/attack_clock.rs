//! Attack: wall-clock steps (NTP, an operator) through `Clock::manual` / `step_wall`.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use session_layer::{
    Clock, ManualClock, NewSession, SessionConfig, SessionConfigBuilder, SessionManager,
    SessionStore,
};
use uuid::Uuid;

const HOUR_US: i64 = 3_600_000_000;

fn manual(config: SessionConfigBuilder) -> (SessionConfig, ManualClock) {
    let (clock, hand) = Clock::manual();
    (config.clock(clock).build().unwrap(), hand)
}

async fn valid(manager: &SessionManager, token: &str) -> bool {
    manager.validate(token).await.unwrap().is_some()
}

/// The wall clock jumps 2 h ahead (lifetime 1 h) and is corrected a moment later. During the
/// jump a request with a live token is refused (expected: wall time judges `expires_at`). After
/// the correction the session is live again, yet the miss cache remembers its token as "useless"
/// (a final state, it assumes) and refuses it for a whole cache TTL, on real time.
async fn a_wall_step_past_expiry_and_back_does_not_poison_the_miss_cache(
    store: Arc<dyn SessionStore>,
) {
    let (config, clock) = manual(SessionConfig::builder().ttl(Duration::from_secs(3600)));
    let manager = SessionManager::from_arc(store, config).unwrap();
    let (token, _) = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    let token = token.expose();
    clock.step_wall(2 * HOUR_US);
    assert!(
        !valid(&manager, &token).await,
        "expired while the clock is ahead"
    );
    clock.step_wall(-2 * HOUR_US);
    clock.advance(Duration::from_secs(1));
    assert!(
        valid(&manager, &token).await,
        "the clock is correct again and the session has 59 min left, but its token is refused \
         (remembered as useless during the step)"
    );
}

/// A backward step of 2 h: a session signed in during it must not be born expired or rejected,
/// and existing sessions keep working.
async fn a_backward_wall_step_keeps_sessions_working(store: Arc<dyn SessionStore>) {
    let (config, clock) = manual(SessionConfig::builder());
    let manager = SessionManager::from_arc(store, config).unwrap();
    let user = Uuid::now_v7();
    let (before, _) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    clock.step_wall(-2 * HOUR_US);
    let (during, _) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    clock.advance(Duration::from_secs(120));
    assert!(valid(&manager, &before.expose()).await);
    assert!(valid(&manager, &during.expose()).await);
    let current = manager.validate(&during.expose()).await.unwrap().unwrap();
    let (rotated, _) = manager.rotate(&current).await.unwrap().into_parts();
    assert!(valid(&manager, &rotated.expose()).await);
    assert_eq!(manager.list(user).await.unwrap().len(), 2);
}

on_every_store!(
    a_wall_step_past_expiry_and_back_does_not_poison_the_miss_cache,
    a_backward_wall_step_keeps_sessions_working,
);
