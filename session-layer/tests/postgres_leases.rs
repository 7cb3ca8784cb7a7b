//! Strict revocation across instances on one PostgreSQL database: leases and acknowledgements.
//! After a revoking call returns, no instance accepts the token, whether the others are
//! healthy, partitioned from the notification channel, leaving or gone.

#![cfg(feature = "postgres")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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

/// Validates on `manager` until the session is served from its cache (its feed holds a lease).
async fn cached_on(manager: &SessionManager, token: &str) {
    let cached = common::eventually(Duration::from_secs(10), async || {
        assert!(manager.validate(token).await.unwrap().is_some());
        manager.sync_cache().await;
        manager.cached_sessions() >= 1
    })
    .await;
    assert!(cached, "the session never reached the cache");
}

/// Hammers `token` on every manager until `stop`; counts the uses that started after `revoked`
/// was set and still succeeded.
fn hammer(
    managers: &[SessionManager],
    token: &Arc<String>,
    revoked: &Arc<AtomicBool>,
    stop: &Arc<AtomicBool>,
    late: &Arc<[AtomicUsize; 2]>,
) -> Vec<tokio::task::JoinHandle<()>> {
    managers
        .iter()
        .flat_map(|manager| std::iter::repeat_n(manager, 2))
        .map(|manager| {
            let (manager, token) = (manager.clone(), token.clone());
            let (revoked, stop, late) = (revoked.clone(), stop.clone(), late.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let after = revoked.load(Ordering::SeqCst);
                    let ok = manager.validate(&token).await.unwrap().is_some();
                    if after {
                        late[0].fetch_add(1, Ordering::SeqCst);
                        late[1].fetch_add(usize::from(ok), Ordering::SeqCst);
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect()
}

/// Revokes on A while B and C hammer the token; returns how long the revoking call took.
async fn revoke_under_fire(a: &SessionManager, others: &[SessionManager]) -> Duration {
    let user = Uuid::now_v7();
    let (token, session) = a.create(NewSession::new(user)).await.unwrap().into_parts();
    let token = Arc::new(token.expose());
    for other in others {
        cached_on(other, &token).await;
    }
    let (revoked, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let late = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let workers = hammer(others, &token, &revoked, &stop, &late);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    a.revoke(user, session.id, RevocationReason::RevokedByUser)
        .await
        .unwrap();
    let took = started.elapsed();
    revoked.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(
        late[0].load(Ordering::SeqCst) > 0,
        "no use after the revocation"
    );
    assert_eq!(
        late[1].load(Ordering::SeqCst),
        0,
        "an instance accepted the token after the revoking call returned"
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_then_use_never_succeeds_on_any_of_two_or_three_instances() {
    let url = test_support::postgres_database();
    // A long lease: a call that returned well within it was released by acknowledgements.
    let lease = Duration::from_secs(3);
    let a = instance(store(&url, lease).await).await;
    let b = instance(store(&url, lease).await).await;
    // Until it has listened for a lease, A cannot know every live peer and waits the lease out.
    let first = revoke_under_fire(&a, std::slice::from_ref(&b)).await;
    assert!(
        first >= lease,
        "a fresh instance trusted an incomplete peer list: {first:?}"
    );
    for _ in 0..10 {
        let took = revoke_under_fire(&a, std::slice::from_ref(&b)).await;
        assert!(took < lease / 2, "two instances: waited {took:?}");
    }
    let c = instance(store(&url, lease).await).await;
    for _ in 0..10 {
        let took = revoke_under_fire(&a, &[b.clone(), c.clone()]).await;
        assert!(took < lease / 2, "three instances: waited {took:?}");
    }
}

fn pg_port() -> u16 {
    test_support::postgres_server().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_instance_delays_a_revocation_by_at_most_one_lease_and_refuses_at_once() {
    let url = test_support::postgres_database();
    let lease = Duration::from_millis(600);
    let a = instance(store(&url, lease).await).await;
    // B's listener reaches the database through the relay; its queries do not.
    let relay = Relay::start(pg_port()).await;
    let b_store = store(&url, lease)
        .await
        .with_listen_url(&relay.url(&url))
        .unwrap();
    let b = instance(b_store).await;

    let user = Uuid::now_v7();
    let (token, session) = a.create(NewSession::new(user)).await.unwrap().into_parts();
    let token = token.expose();
    cached_on(&b, &token).await;
    // A has heard B's heartbeats: B counts as live.
    tokio::time::sleep(lease / 2).await;

    relay.frozen.send_replace(true);
    let started = Instant::now();
    a.revoke(user, session.id, RevocationReason::RevokedByUser)
        .await
        .unwrap();
    let took = started.elapsed();
    // B never acknowledged: A waited out B's lease, and no more (with scheduling slack).
    assert!(
        took >= lease / 2,
        "returned before B's lease could lapse: {took:?}"
    );
    assert!(took < lease * 2, "waited {took:?} for a lease of {lease:?}");
    // From the moment A returned, B refuses the token: it asks the store.
    for _ in 0..50 {
        assert!(
            b.validate(&token).await.unwrap().is_none(),
            "the partitioned instance served a revoked token"
        );
    }
    // Once the partition heals, B trusts its cache again.
    relay.frozen.send_replace(false);
    let (other, _) = a.create(NewSession::new(user)).await.unwrap().into_parts();
    cached_on(&b, &other.expose()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_leaving_or_crashing_stall_revocations_by_at_most_one_lease() {
    let url = test_support::postgres_database();
    let lease = Duration::from_millis(600);
    let a = instance(store(&url, lease).await).await;
    let b = instance(store(&url, lease).await).await;
    // Past its first lease of listening, A knows every live peer.
    tokio::time::sleep(lease + lease / 4).await;

    // C leaves cleanly: dropping its manager says goodbye.
    let c = instance(store(&url, lease).await).await;
    let (token, _) = a
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    cached_on(&c, &token.expose()).await;
    drop(c);
    tokio::time::sleep(lease / 2).await;
    let took = revoke_under_fire(&a, std::slice::from_ref(&b)).await;
    assert!(took < lease / 2, "a departed instance stalled: {took:?}");

    // D crashes: every connection it has drops at once, no goodbye.
    let relay = Relay::start(pg_port()).await;
    let d_url = relay.url(&url);
    let d = instance(store(&d_url, lease).await.with_listen_url(&d_url).unwrap()).await;
    let (token, _) = a
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    cached_on(&d, &token.expose()).await;
    relay.kill();
    // A crash leaves nothing behind: new connections through the relay die too.
    relay.frozen.send_replace(true);
    let took = revoke_under_fire(&a, std::slice::from_ref(&b)).await;
    assert!(took < lease * 2, "a crashed instance stalled: {took:?}");
    // A new instance joins; revocations still settle by acknowledgement.
    let e = instance(store(&url, lease).await).await;
    tokio::time::sleep(lease * 2).await;
    let took = revoke_under_fire(&a, &[b, e]).await;
    assert!(took < lease / 2, "after a join: {took:?}");
}

/// Hammers `token` on `manager` for `window` after `returned`; counts successes.
async fn served_after(manager: &SessionManager, token: &str, window: Duration) -> usize {
    let until = Instant::now() + window;
    let mut served = 0;
    while Instant::now() < until {
        served += usize::from(manager.validate(token).await.unwrap().is_some());
        tokio::task::yield_now().await;
    }
    served
}

/// A revoker that has listened for less than a lease may not have heard every live peer yet:
/// it waits the lease out instead of returning when its (incomplete) peer list has acked. The
/// first version returned at once and B served the token in 6 of 20 rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_revoker_does_not_trust_a_peer_list_it_has_not_heard_in_full() {
    let url = test_support::postgres_database();
    let lease = Duration::from_millis(300);
    let b = instance(store(&url, lease).await).await;
    for _ in 0..8 {
        let user = Uuid::now_v7();
        let (token, session) = b.create(NewSession::new(user)).await.unwrap().into_parts();
        let token = token.expose();
        cached_on(&b, &token).await;
        // A deploy whose first request is a sign-out.
        let a = instance(store(&url, lease).await).await;
        let hammering = {
            let (b, token) = (b.clone(), token.clone());
            tokio::spawn(async move { served_after(&b, &token, Duration::from_millis(5)).await })
        };
        a.revoke(user, session.id, RevocationReason::Logout)
            .await
            .unwrap();
        hammering.await.unwrap();
        assert_eq!(
            served_after(&b, &token, Duration::from_millis(50)).await,
            0,
            "B served a token that a fresh instance had revoked"
        );
    }
}

/// The wait for a silent peer counts from the end of the commit: a slow commit (a stalled
/// fsync or synchronous replica, here a deferred trigger that sleeps) must not let a partitioned
/// peer's lease outlive the revoking call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_commit_does_not_shorten_the_wait_for_a_partitioned_peer() {
    let url = test_support::postgres_database();
    let lease = Duration::from_millis(600);
    let a = instance(store(&url, lease).await).await;
    let relay = Relay::start(pg_port()).await;
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
    cached_on(&b, &token).await;
    let revoking = {
        let a = a.clone();
        tokio::spawn(async move { a.revoke(user, session.id, RevocationReason::Admin).await })
    };
    // B goes silent while the commit stalls; its last lease started during the stall.
    tokio::time::sleep(Duration::from_millis(450)).await;
    relay.frozen.send_replace(true);
    revoking.await.unwrap().unwrap();
    assert_eq!(
        served_after(&b, &token, Duration::from_millis(200)).await,
        0,
        "B served the token after the revoking call returned"
    );
}

/// A second "sign out everywhere" right behind the first finds nothing left to revoke, but must
/// not return while the first one's revocation may still be served by a silent instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_revoke_all_waits_like_the_first() {
    let url = test_support::postgres_database();
    let lease = Duration::from_millis(600);
    let a = instance(store(&url, lease).await).await;
    let relay = Relay::start(pg_port()).await;
    let b = instance(
        store(&url, lease)
            .await
            .with_listen_url(&relay.url(&url))
            .unwrap(),
    )
    .await;
    tokio::time::sleep(lease + lease / 4).await;
    let user = Uuid::now_v7();
    let (token, _) = a.create(NewSession::new(user)).await.unwrap().into_parts();
    let token = token.expose();
    cached_on(&b, &token).await;
    relay.frozen.send_replace(true);
    let first = {
        let a = a.clone();
        tokio::spawn(async move { a.revoke_all(user, RevocationReason::PasswordReset).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let again = a
        .revoke_all(user, RevocationReason::PasswordReset)
        .await
        .unwrap();
    assert_eq!(again, 0, "nothing was left to revoke");
    assert_eq!(
        served_after(&b, &token, Duration::from_millis(50)).await,
        0,
        "B served the token after the second revoke_all returned"
    );
    assert_eq!(first.await.unwrap().unwrap(), 1);
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
    cached_on(&sibling, &token).await;
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
    common::eventually(Duration::from_secs(10), async || {
        let revoked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sessions WHERE user_id = $1 AND revoked_at IS NOT NULL",
        )
        .bind(crowd)
        .fetch_one(&admin)
        .await
        .unwrap();
        revoked > 0
    })
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
