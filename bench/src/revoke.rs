//! Revocation across instances on one PostgreSQL database: how long `SessionManager::revoke`
//! takes now that it returns only once every other live instance acknowledged (LISTEN/NOTIFY),
//! or once the lease of one that did not must have lapsed.
//!
//! Configurations, each on a fresh database with instances (a `SessionManager` over its own
//! `PostgresStore`) in this process: 1, 2 and 3 healthy instances, and 3 of which the last is
//! partitioned (its listener reaches PostgreSQL through a TCP relay that stops passing bytes;
//! its queries, heartbeats included, do not go through the relay). Instance 0 revokes. Before
//! every revocation the session is validated on every instance until it is served from that
//! instance's cache, so the acknowledgements are real; after it, every instance must refuse the
//! token. The configurations are interleaved over rounds.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use session_layer::{
    NewSession, PostgresStore, RevocationReason, SessionConfig, SessionManager, metrics as names,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::counters::Counters;
use crate::scale::{histogram, nanos};

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The lease of every instance (the library's default is 1 s).
    pub lease: Duration,
    /// Measured revocations per healthy configuration.
    pub healthy: usize,
    /// Measured revocations in the partitioned configuration (each waits out one lease).
    pub partitioned: usize,
    /// Unmeasured revocations per configuration first (pools, plans, peers heard).
    pub warmup: usize,
    pub rounds: usize,
}

/// The result for one configuration.
pub struct Outcome {
    pub instances: usize,
    pub partitioned: bool,
    pub revocations: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// Counter increases during this configuration's measured revocations.
    pub acks: u64,
    pub ack_timeouts: u64,
    pub lease_lapses: u64,
}

pub struct Report {
    pub settings: Settings,
    pub outcomes: Vec<Outcome>,
}

/// The configurations: (instances, whether the last one is partitioned).
const CONFIGURATIONS: [(usize, bool); 4] = [(1, false), (2, false), (3, false), (3, true)];

/// Runs every configuration. `urls` gives one fresh database per configuration (created outside
/// the runtime: `test_support` runs `psql`).
pub async fn run(urls: Vec<String>, settings: Settings) -> Report {
    assert_eq!(
        urls.len(),
        CONFIGURATIONS.len(),
        "one database per configuration"
    );
    let counters = Counters::global();
    let mut clusters = Vec::new();
    for (url, (instances, partitioned)) in urls.iter().zip(CONFIGURATIONS) {
        let mut cluster = Cluster::start(url, instances, partitioned, settings.lease).await;
        for _ in 0..settings.warmup {
            cluster.revoke_once().await;
        }
        clusters.push(cluster);
    }
    let rounds = settings.rounds.max(1);
    for round in 0..rounds {
        for k in 0..clusters.len() {
            let cluster = &mut clusters[(k + round) % CONFIGURATIONS.len()];
            let total = if cluster.relay.is_some() {
                settings.partitioned
            } else {
                settings.healthy
            };
            // Spread `total` over the rounds, the remainder on the first ones.
            let batch = total / rounds + usize::from(round < total % rounds);
            let tracked = [
                names::REVOCATION_ACKS,
                names::REVOCATION_ACK_TIMEOUTS,
                names::CACHE_LEASE_LAPSES,
            ];
            let before = tracked.map(|name| counters.get(name));
            for _ in 0..batch {
                let took = cluster.revoke_once().await;
                cluster.latencies.saturating_record(nanos(took));
            }
            let after = tracked.map(|name| counters.get(name));
            for (total, (after, before)) in cluster.counts.iter_mut().zip(after.iter().zip(before))
            {
                *total += after - before;
            }
            eprintln!(
                "revoke round {} {} instance(s){}: {batch} revocations, p99 so far {:.2} ms",
                round + 1,
                cluster.managers.len(),
                if cluster.relay.is_some() {
                    ", 1 partitioned"
                } else {
                    ""
                },
                ms(cluster.latencies.value_at_quantile(0.99))
            );
        }
    }
    let mut outcomes = Vec::new();
    for cluster in clusters {
        let h = &cluster.latencies;
        outcomes.push(Outcome {
            instances: cluster.managers.len(),
            partitioned: cluster.relay.is_some(),
            revocations: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1e6,
            acks: cluster.counts[0],
            ack_timeouts: cluster.counts[1],
            lease_lapses: cluster.counts[2],
        });
        cluster.stop().await;
    }
    Report { settings, outcomes }
}

fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

/// Instances on one database; `managers[0]` revokes.
struct Cluster {
    managers: Vec<SessionManager>,
    /// Carries the last instance's listener when it is partitioned.
    relay: Option<Relay>,
    latencies: Histogram<u64>,
    /// Acks, ack timeouts, lease lapses.
    counts: [u64; 3],
}

impl Cluster {
    async fn start(url: &str, instances: usize, partitioned: bool, lease: Duration) -> Self {
        let relay = if partitioned {
            Some(Relay::start(test_support::postgres_server().port()).await)
        } else {
            None
        };
        let mut managers = Vec::new();
        for i in 0..instances {
            let mut store = PostgresStore::connect(url)
                .await
                .expect("connect to PostgreSQL")
                .with_lease(lease);
            if let Some(relay) = relay.as_ref().filter(|_| i == instances - 1) {
                store = store
                    .with_listen_url(&relay.url(url))
                    .expect("listen URL through the relay");
            }
            store.migrate().await.expect("migrate PostgreSQL");
            managers.push(SessionManager::new(store, SessionConfig::default()).expect("manager"));
        }
        Self {
            managers,
            relay,
            latencies: histogram(),
            counts: [0; 3],
        }
    }

    /// One revocation of a session cached on every instance; returns how long `revoke` took.
    async fn revoke_once(&mut self) -> Duration {
        let revoking = &self.managers[0];
        let user = Uuid::now_v7();
        let (token, session) = revoking
            .create(NewSession::new(user))
            .await
            .expect("create a session")
            .into_parts();
        let token = token.expose();
        // The partitioned instance heals long enough to cache the session, as it would have
        // before a partition that nobody noticed.
        if let Some(relay) = &self.relay {
            relay.freeze(false);
        }
        for manager in &self.managers {
            cache_on(manager, &token).await;
        }
        if let Some(relay) = &self.relay {
            relay.freeze(true);
        }
        let started = Instant::now();
        revoking
            .revoke(user, session.id, RevocationReason::RevokedByUser)
            .await
            .expect("revoke");
        let took = started.elapsed();
        for (i, manager) in self.managers.iter().enumerate() {
            let found = manager.validate(&token).await.expect("validate");
            assert!(
                found.is_none(),
                "instance {i} accepted a token after the revoking call returned"
            );
        }
        took
    }

    async fn stop(self) {
        if let Some(relay) = &self.relay {
            relay.freeze(false);
        }
        for manager in &self.managers {
            manager.shutdown().await;
        }
        // Dropping the managers drops the stores: each says goodbye on the channel.
        drop(self.managers);
    }
}

/// Validates `token` on `manager` until it is served from that instance's cache, which takes
/// the instance's lease to hold.
async fn cache_on(manager: &SessionManager, token: &str) {
    manager.sync_cache().await;
    let before = manager.cached_sessions();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = manager.validate(token).await.expect("validate");
        assert!(found.is_some(), "a fresh session must validate");
        manager.sync_cache().await;
        if manager.cached_sessions() > before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the session never reached an instance's cache: its lease never held"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A TCP relay to PostgreSQL that can stop passing bytes without closing anything: a partition
/// that nobody notices. (The same idea as the relay in session-layer's `postgres_leases` tests.)
struct Relay {
    port: u16,
    target_port: u16,
    frozen: watch::Sender<bool>,
    accepting: JoinHandle<()>,
}

impl Relay {
    async fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        let (frozen, _) = watch::channel(false);
        let frozen_rx = frozen.subscribe();
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, frozen_rx.clone()));
                tokio::spawn(pump(server_read, client_write, frozen_rx.clone()));
            }
        });
        Self {
            port,
            target_port,
            frozen,
            accepting,
        }
    }

    /// `url` (of the server on `target_port`) through the relay.
    fn url(&self, url: &str) -> String {
        let (direct, relayed) = (
            format!(":{}/", self.target_port),
            format!(":{}/", self.port),
        );
        assert!(url.contains(&direct), "unexpected PostgreSQL URL {url}");
        url.replace(&direct, &relayed)
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accepting.abort();
        self.frozen.send_replace(false);
    }
}

async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Partitioned: hold the bytes, keep both sockets open.
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
