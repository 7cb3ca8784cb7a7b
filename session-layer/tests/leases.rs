//! Strict revocation across instances on one shared store, on every store with a feed
//! (PostgreSQL `LISTEN/NOTIFY`, Redis pub/sub): leases and acknowledgements. After a revoking
//! call returns, no instance accepts the token, whether the others are healthy, partitioned
//! from the channel, leaving or gone.

#![cfg(any(feature = "postgres", feature = "redis"))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Via};
use common::relay::Relay;
use session_layer::{NewSession, RevocationReason, SessionManager};
use uuid::Uuid;

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
        common::cached_on(other, &token).await;
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

async fn revoke_then_use_never_succeeds_on_any_of_two_or_three_instances(cluster: impl Cluster) {
    // A long lease: a call that returned well within it was released by acknowledgements.
    let lease = Duration::from_secs(3);
    let a = cluster.instance(lease, Via::Direct).await;
    let b = cluster.instance(lease, Via::Direct).await;
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
    let c = cluster.instance(lease, Via::Direct).await;
    for _ in 0..10 {
        let took = revoke_under_fire(&a, &[b.clone(), c.clone()]).await;
        assert!(took < lease / 2, "three instances: waited {took:?}");
    }
}

async fn a_partitioned_instance_delays_a_revocation_by_at_most_one_lease_and_refuses_at_once(
    cluster: impl Cluster,
) {
    let lease = Duration::from_millis(600);
    let a = cluster.instance(lease, Via::Direct).await;
    // B's listener reaches the database through the relay; its queries do not.
    let relay = Relay::start(cluster.port()).await;
    let b = cluster.instance(lease, Via::ListenThrough(&relay)).await;

    let user = Uuid::now_v7();
    let (token, session) = a.create(NewSession::new(user)).await.unwrap().into_parts();
    let token = token.expose();
    common::cached_on(&b, &token).await;
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
    common::cached_on(&b, &other.expose()).await;
}

async fn instances_leaving_or_crashing_stall_revocations_by_at_most_one_lease(
    cluster: impl Cluster,
) {
    let lease = Duration::from_millis(600);
    let a = cluster.instance(lease, Via::Direct).await;
    let b = cluster.instance(lease, Via::Direct).await;
    // Past its first lease of listening, A knows every live peer.
    tokio::time::sleep(lease + lease / 4).await;

    // C leaves cleanly: dropping its manager says goodbye.
    let c = cluster.instance(lease, Via::Direct).await;
    let (token, _) = a
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    common::cached_on(&c, &token.expose()).await;
    drop(c);
    tokio::time::sleep(lease / 2).await;
    let took = revoke_under_fire(&a, std::slice::from_ref(&b)).await;
    assert!(took < lease / 2, "a departed instance stalled: {took:?}");

    // D crashes: every connection it has drops at once, no goodbye.
    let relay = Relay::start(cluster.port()).await;
    let d = cluster.instance(lease, Via::AllThrough(&relay)).await;
    let (token, _) = a
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    common::cached_on(&d, &token.expose()).await;
    relay.kill();
    // A crash leaves nothing behind: new connections through the relay die too.
    relay.frozen.send_replace(true);
    let took = revoke_under_fire(&a, std::slice::from_ref(&b)).await;
    assert!(took < lease * 2, "a crashed instance stalled: {took:?}");
    // A new instance joins; revocations still settle by acknowledgement.
    let e = cluster.instance(lease, Via::Direct).await;
    tokio::time::sleep(lease * 2).await;
    let took = revoke_under_fire(&a, &[b, e]).await;
    assert!(took < lease / 2, "after a join: {took:?}");
}

/// A revoker that has listened for less than a lease may not have heard every live peer yet:
/// it waits the lease out instead of returning when its (incomplete) peer list has acked. The
/// first version returned at once and B served the token in 6 of 20 rounds.
async fn a_fresh_revoker_does_not_trust_a_peer_list_it_has_not_heard_in_full(
    cluster: impl Cluster,
) {
    let lease = Duration::from_millis(300);
    let b = cluster.instance(lease, Via::Direct).await;
    for _ in 0..8 {
        let user = Uuid::now_v7();
        let (token, session) = b.create(NewSession::new(user)).await.unwrap().into_parts();
        let token = token.expose();
        common::cached_on(&b, &token).await;
        // A deploy whose first request is a sign-out.
        let a = cluster.instance(lease, Via::Direct).await;
        let hammering = {
            let (b, token) = (b.clone(), token.clone());
            tokio::spawn(
                async move { common::served_after(&b, &token, Duration::from_millis(5)).await },
            )
        };
        a.revoke(user, session.id, RevocationReason::Logout)
            .await
            .unwrap();
        hammering.await.unwrap();
        assert_eq!(
            common::served_after(&b, &token, Duration::from_millis(50)).await,
            0,
            "B served a token that a fresh instance had revoked"
        );
    }
}

/// A second "sign out everywhere" right behind the first finds nothing left to revoke, but must
/// not return while the first one's revocation may still be served by a silent instance.
async fn a_repeated_revoke_all_waits_like_the_first(cluster: impl Cluster) {
    let lease = Duration::from_millis(600);
    let a = cluster.instance(lease, Via::Direct).await;
    let relay = Relay::start(cluster.port()).await;
    let b = cluster.instance(lease, Via::ListenThrough(&relay)).await;
    tokio::time::sleep(lease + lease / 4).await;
    let user = Uuid::now_v7();
    let (token, _) = a.create(NewSession::new(user)).await.unwrap().into_parts();
    let token = token.expose();
    common::cached_on(&b, &token).await;
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
        common::served_after(&b, &token, Duration::from_millis(50)).await,
        0,
        "B served the token after the second revoke_all returned"
    );
    assert_eq!(first.await.unwrap().unwrap(), 1);
}

test_support::for_each_backend! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    backends {
        #[cfg(feature = "postgres")]
        postgres => common::cluster::Postgres::new(),
        #[cfg(feature = "redis")]
        redis => common::cluster::Redis::new(),
    }
    scenarios {
        revoke_then_use_never_succeeds_on_any_of_two_or_three_instances,
        a_partitioned_instance_delays_a_revocation_by_at_most_one_lease_and_refuses_at_once,
        instances_leaving_or_crashing_stall_revocations_by_at_most_one_lease,
        a_fresh_revoker_does_not_trust_a_peer_list_it_has_not_heard_in_full,
        a_repeated_revoke_all_waits_like_the_first,
    }
}
