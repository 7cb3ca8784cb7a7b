//! Strict revocation across instances on one PostgreSQL database: leases and acknowledgements.
//! After a revoking call returns, no instance accepts the token, whether the others are
//! healthy, partitioned from the notification channel, leaving or gone.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use session_layer::{NewSession, PostgresStore, RevocationReason, SessionConfig, SessionManager};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
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
    let (token, session) = a.create(NewSession::new(user)).await.unwrap();
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
    let lease = Duration::from_secs(5);
    let a = instance(store(&url, lease).await).await;
    let b = instance(store(&url, lease).await).await;
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

/// A TCP relay to PostgreSQL that can stop passing bytes without closing anything (a partition
/// that nobody notices) or drop every connection (a crash).
struct Relay {
    port: u16,
    frozen: watch::Sender<bool>,
    killed: watch::Sender<bool>,
}

impl Relay {
    async fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (frozen, _) = watch::channel(false);
        let (killed, _) = watch::channel(false);
        let (frozen_rx, killed_rx) = (frozen.subscribe(), killed.subscribe());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                for (from, to) in [
                    (
                        Box::new(client_read) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                        Box::new(server_write) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    ),
                    (Box::new(server_read), Box::new(client_write)),
                ] {
                    tokio::spawn(pump(from, to, frozen_rx.clone(), killed_rx.clone()));
                }
            }
        });
        Self {
            port,
            frozen,
            killed,
        }
    }

    fn url(&self, url: &str, target_port: u16) -> String {
        url.replace(&format!(":{target_port}/"), &format!(":{}/", self.port))
    }
}

async fn pump(
    mut from: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    mut to: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    mut frozen: watch::Receiver<bool>,
    mut killed: watch::Receiver<bool>,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = tokio::select! {
            _ = killed.wait_for(|k| *k) => return,
            read = from.read(&mut buffer) => read,
        };
        let Ok(n) = read else { return };
        if n == 0 {
            return;
        }
        // Partitioned: hold the bytes, keep the socket open.
        tokio::select! {
            _ = killed.wait_for(|k| *k) => return,
            _ = frozen.wait_for(|f| !*f) => {}
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
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
        .with_listen_url(&relay.url(&url, pg_port()))
        .unwrap();
    let b = instance(b_store).await;

    let user = Uuid::now_v7();
    let (token, session) = a.create(NewSession::new(user)).await.unwrap();
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
    let (other, _) = a.create(NewSession::new(user)).await.unwrap();
    cached_on(&b, &other.expose()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_leaving_or_crashing_stall_revocations_by_at_most_one_lease() {
    let url = test_support::postgres_database();
    let lease = Duration::from_millis(600);
    let a = instance(store(&url, lease).await).await;
    let b = instance(store(&url, lease).await).await;

    // C leaves cleanly: dropping its manager says goodbye.
    let c = instance(store(&url, lease).await).await;
    let (token, _) = a.create(NewSession::new(Uuid::now_v7())).await.unwrap();
    cached_on(&c, &token.expose()).await;
    drop(c);
    tokio::time::sleep(lease / 2).await;
    let took = revoke_under_fire(&a, std::slice::from_ref(&b)).await;
    assert!(took < lease / 2, "a departed instance stalled: {took:?}");

    // D crashes: every connection it has drops at once, no goodbye.
    let relay = Relay::start(pg_port()).await;
    let d_url = relay.url(&url, pg_port());
    let d = instance(store(&d_url, lease).await.with_listen_url(&d_url).unwrap()).await;
    let (token, _) = a.create(NewSession::new(Uuid::now_v7())).await.unwrap();
    cached_on(&d, &token.expose()).await;
    relay.killed.send_replace(true);
    let took = revoke_under_fire(&a, std::slice::from_ref(&b)).await;
    assert!(took < lease * 2, "a crashed instance stalled: {took:?}");
    // A new instance joins; revocations still settle by acknowledgement.
    let e = instance(store(&url, lease).await).await;
    tokio::time::sleep(lease * 2).await;
    let took = revoke_under_fire(&a, &[b, e]).await;
    assert!(took < lease / 2, "after a join: {took:?}");
}
