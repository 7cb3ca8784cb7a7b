//! Attack: the in-memory activity log (activity.rs), its growth, and whether it really keeps
//! "the most recent use" across a reload, as idle expiry needs.

#[macro_use]
mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use session_layer::{NewSession, SessionConfig, SessionManager, SessionStore};
use uuid::Uuid;

/// One account, limit 2 sessions: sign in, use the session once, repeat. Every evicted (revoked)
/// session stays in the user's activity record for a whole idle timeout (1 day by default), and
/// every later sign-in ships all of them to the store inside its per-user transaction. The record
/// is bounded by nothing but the idle timeout: memory and per-login work grow with the number of
/// sign-ins.
async fn the_activity_log_stays_bounded_by_the_session_limit(store: Arc<dyn SessionStore>) {
    let recording = common::ProbeStore::new(store);
    let config = SessionConfig::builder()
        .max_sessions_per_user(Some(2))
        .build()
        .unwrap();
    let manager = SessionManager::from_arc(recording.clone(), config).unwrap();
    let user = Uuid::now_v7();
    const LOGINS: usize = 400;
    let started = Instant::now();
    for _ in 0..LOGINS {
        let (token, _) = manager
            .create(NewSession::new(user))
            .await
            .unwrap()
            .into_parts();
        assert!(manager.validate(&token.expose()).await.unwrap().is_some());
    }
    let first_half = started.elapsed();
    let carried = recording.last_recent_activity.load(Ordering::SeqCst);
    let active = manager.list(user).await.unwrap().len();
    eprintln!("{LOGINS} logins in {first_half:?}; active {active}; last insert carried {carried}");
    assert!(
        carried <= 4,
        "with 2 active sessions, the last sign-in carried {carried} activity records \
         (one per session ever used since the idle timeout began): unbounded per-user growth"
    );
}

/// Idle expiry must judge on the most recent use seen in memory. The activity log forgets a
/// user after `idle_timeout` without a *miss* (moka time-to-idle, real time); cache hits do not
/// count as access. With a cache TTL close to the idle timeout, a session used via a cache hit
/// and then reloaded is judged on the stale stored value.
///
/// idle 4 s (touch interval capped at 2 s), cache 3 s, real time:
/// t=0.0 create (stored last_active 0); t=0.1 use (miss: log accessed; not written, < 2 s);
/// t=1.9 use (cache hit: only in memory); t=5.0 use: last use 3.1 s ago < 4 s, must be valid.
async fn a_use_seen_only_through_cache_hits_survives_a_reload(store: Arc<dyn SessionStore>) {
    let config = SessionConfig::builder()
        .idle_timeout(Duration::from_secs(4))
        .cache_ttl(Duration::from_secs(3))
        .touch_flush_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    let manager = SessionManager::from_arc(store, config).unwrap();
    // With PostgreSQL, wait until the invalidation feed listens (the cache is trusted).
    common::eventually(Duration::from_secs(5), "the cache is trusted", async || {
        let (t, _) = manager
            .create(NewSession::new(Uuid::now_v7()))
            .await
            .unwrap()
            .into_parts();
        let _ = manager.validate(&t.expose()).await;
        manager.sync_cache().await;
        manager.cached_sessions() > 0
    })
    .await;
    let t0 = tokio::time::Instant::now();
    let (token, _) = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    let token = token.expose();
    tokio::time::sleep_until(t0 + Duration::from_millis(100)).await;
    assert!(manager.validate(&token).await.unwrap().is_some());
    tokio::time::sleep_until(t0 + Duration::from_millis(1900)).await;
    assert!(manager.validate(&token).await.unwrap().is_some());
    tokio::time::sleep_until(t0 + Duration::from_millis(4900)).await;
    // Other traffic (any sign-in and first use) lets moka run its housekeeping.
    for _ in 0..3 {
        let (other, _) = manager
            .create(NewSession::new(Uuid::now_v7()))
            .await
            .unwrap()
            .into_parts();
        assert!(manager.validate(&other.expose()).await.unwrap().is_some());
        manager.sync_cache().await;
    }
    tokio::time::sleep_until(t0 + Duration::from_millis(5000)).await;
    let ok = manager.validate(&token).await.unwrap().is_some();
    assert!(
        ok,
        "last used 3.1 s ago (idle timeout 4 s) but refused as idle after the cache entry \
         was reloaded: the activity log had forgotten the user"
    );
}

on_every_store!(
    the_activity_log_stays_bounded_by_the_session_limit,
    a_use_seen_only_through_cache_hits_survives_a_reload,
);
