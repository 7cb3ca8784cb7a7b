//! The cross-instance invalidation feed, with leases and acknowledgements, over any [`Transport`]
//! that delivers one channel's messages to every listener in the order the writes that sent them
//! took effect: PostgreSQL `LISTEN/NOTIFY` (notifications are delivered in commit order) and
//! Redis pub/sub (a script's `PUBLISH` runs inside the atomic script, and the single-threaded
//! server delivers messages in execution order).
//!
//! That order gives two proofs without a round trip per request:
//!
//! - **Lease.** Each instance with a cache publishes a heartbeat every quarter lease. Hearing its
//!   own heartbeat proves that every notification committed before the heartbeat was sent has
//!   been heard (and applied) first, so the cache may serve hits until one lease after the
//!   heartbeat was *sent*. An instance that stops hearing the feed stops serving from its cache
//!   within one lease, without noticing anything else.
//! - **Acknowledgement.** A revocation's notification carries this instance's id and a sequence
//!   number. Every other instance that holds a cache drops the hashes and answers with an ack.
//!   The revoking call returns once its own notification came back (so every instance that
//!   heartbeated before the commit is known) and every such instance whose lease might still run
//!   has acked, or, for one that has not, once one lease (plus a margin) has passed since the
//!   commit: by then its lease has lapsed, since it was started by a heartbeat sent before the
//!   commit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::metrics;
use crate::store::{Ack, Invalidation};
use crate::token::TokenHash;

/// Heartbeat send times kept to match heard heartbeats against.
const HEARTBEATS_KEPT: usize = 64;

/// The default invalidation lease.
pub(super) const DEFAULT_LEASE: Duration = Duration::from_secs(1);

/// The shortest lease a store accepts.
pub(super) const MIN_LEASE: Duration = Duration::from_millis(10);

/// A failure of the transport, only ever logged.
pub(super) type TransportError = Box<dyn std::error::Error + Send + Sync>;

/// How the feed's messages travel. One channel carries revocations, heartbeats,
/// acknowledgements and goodbyes; a store sends its revocations itself, inside the write that
/// revokes (see [`Feed::revocation_header`]), so that they are delivered only if it took effect.
pub(super) trait Transport: Send + Sync + 'static {
    /// A connection that hears the channel.
    type Listener: Send + 'static;

    /// Sends one message on the channel, outside any write.
    fn send(
        &self,
        payload: String,
    ) -> impl Future<Output = Result<(), TransportError>> + Send + 'static + use<Self>;

    /// Connects a listener; resolves once it is listening.
    fn listen(
        &self,
    ) -> impl Future<Output = Result<Self::Listener, TransportError>> + Send + 'static + use<Self>;

    /// The next message heard, or `None` once the connection is lost.
    fn next(listener: &mut Self::Listener) -> impl Future<Output = Option<String>> + Send + '_;
}

/// One message on the channel.
#[derive(Debug, PartialEq, Eq)]
enum Message {
    /// `r <origin> <seq> <hex,hex,…>`
    Revoked {
        origin: u64,
        seq: u64,
        hashes: Vec<TokenHash>,
    },
    /// `h <origin> <n>`
    Heartbeat { origin: u64, n: u64 },
    /// `a <from> <origin> <seq>`
    Ack { from: u64, origin: u64, seq: u64 },
    /// `b <origin>`
    Bye { origin: u64 },
    /// `d <hex>`: a session deleted behind the library's back (the cascade from a deleted user),
    /// sent by the trigger that [`Tables::references`](crate::store::Tables::references) adds.
    Deleted { hash: TokenHash },
}

impl Message {
    fn parse(payload: &str) -> Option<Self> {
        if let Some(hex) = payload.strip_prefix("d ") {
            return Some(Self::Deleted {
                hash: TokenHash::from_hex(hex)?,
            });
        }
        let mut parts = payload.split(' ');
        let kind = parts.next()?;
        let mut number = || u64::from_str_radix(parts.next()?, 16).ok();
        let message = match kind {
            "r" => {
                let (origin, seq) = (number()?, number()?);
                let hashes = parts
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(TokenHash::from_hex)
                    .collect();
                Self::Revoked {
                    origin,
                    seq,
                    hashes,
                }
            }
            "h" => Self::Heartbeat {
                origin: number()?,
                n: number()?,
            },
            "a" => Self::Ack {
                from: number()?,
                origin: number()?,
                seq: number()?,
            },
            "b" => Self::Bye { origin: number()? },
            _ => return None,
        };
        Some(message)
    }
}

/// A revocation of this instance waiting to be acknowledged.
struct Pending {
    published_at: Instant,
    /// Set when this instance heard its own notification: the peers still to acknowledge.
    /// Stays unset when this instance had not listened long enough to know every live peer:
    /// the revocation then waits out the lease.
    awaiting: Option<HashSet<u64>>,
    /// Whether the caches of this process (other managers on this store) dropped the hashes.
    local_done: bool,
}

#[derive(Default)]
struct State {
    /// Other instances that hold a cache: when their last heartbeat was heard.
    peers: HashMap<u64, Instant>,
    pending: HashMap<u64, Pending>,
    subscribers: Vec<mpsc::UnboundedSender<Invalidation>>,
    /// Send times of this instance's recent heartbeats, by number.
    heartbeats: VecDeque<(u64, Instant)>,
    listening: bool,
    /// When the listener's current connection started listening: a peer is surely known once
    /// it has listened for a whole lease (every live peer heartbeats four times a lease).
    listening_since: Option<Instant>,
}

pub(super) struct Feed<T: Transport> {
    transport: T,
    lease: Duration,
    instance: u64,
    next_seq: std::sync::atomic::AtomicU64,
    state: Mutex<State>,
    /// Signalled whenever a pending revocation may have settled.
    settled: Notify,
    /// Dropped with the feed: the listener and heartbeat tasks stop.
    _alive: watch::Sender<()>,
    alive: watch::Receiver<()>,
}

impl<T: Transport> Feed<T> {
    /// A feed over `transport` with `lease` (at least [`MIN_LEASE`]).
    pub(super) fn new(transport: T, lease: Duration) -> Arc<Self> {
        let (alive_tx, alive) = watch::channel(());
        Arc::new(Self {
            transport,
            lease: lease.max(MIN_LEASE),
            instance: instance_id(),
            next_seq: std::sync::atomic::AtomicU64::new(1),
            state: Mutex::new(State::default()),
            settled: Notify::new(),
            _alive: alive_tx,
            alive,
        })
    }

    pub(super) fn lease(&self) -> Duration {
        self.lease
    }

    pub(super) fn transport(&self) -> &T {
        &self.transport
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section is a few map operations that cannot panic half-way.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A cache's subscription: starts the listener (and heartbeats) if needed.
    pub(super) fn subscribe(self: &Arc<Self>) -> mpsc::UnboundedReceiver<Invalidation> {
        let (tx, rx) = mpsc::unbounded_channel();
        let first = {
            let mut state = self.state();
            state.subscribers.push(tx);
            state.subscribers.len() == 1
        };
        self.start_listener();
        if first {
            tokio::spawn(heartbeat(Arc::downgrade(self), self.alive.clone()));
        }
        rx
    }

    fn start_listener(self: &Arc<Self>) {
        let start = {
            let mut state = self.state();
            !std::mem::replace(&mut state.listening, true)
        };
        if start {
            tokio::spawn(listen(Arc::downgrade(self), self.alive.clone()));
        }
    }

    /// An empty ticket for the revocations of one write.
    pub(super) fn ticket(self: &Arc<Self>) -> Ticket<T> {
        Ticket {
            seqs: Vec::new(),
            feed: Arc::downgrade(self),
        }
    }

    /// Registers one revocation message of the write that `ticket` belongs to and returns its
    /// header, `r <origin> <seq> `: the write sends the header followed by the revoked hashes
    /// (hex, comma-separated) on the channel, as part of itself. Pass the ticket to
    /// [`settle`](Self::settle) once the write took effect; drop it if the write failed or sent
    /// nothing.
    pub(super) fn revocation_header(self: &Arc<Self>, ticket: &mut Ticket<T>) -> String {
        // Our own message must come back to prove who heard it.
        self.start_listener();
        let seq = self
            .next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.state().pending.insert(
            seq,
            Pending {
                published_at: Instant::now(),
                awaiting: None,
                local_done: false,
            },
        );
        ticket.seqs.push(seq);
        format!("r {:x} {seq:x} ", self.instance)
    }

    /// Waits, after the commit, until every other live instance has dropped the published
    /// hashes, or until their leases must have lapsed.
    pub(super) async fn settle(&self, mut ticket: Ticket<T>) {
        let seqs = std::mem::take(&mut ticket.seqs);
        if seqs.is_empty() {
            return;
        }
        // Counted from now, after the commit: the lease of any instance that trusted its cache
        // when the commit became visible began with a heartbeat sent before it, so one lease
        // (plus slack) from now it has lapsed, however long the commit took.
        let committed = Instant::now();
        let deadline = committed + self.lease + margin(self.lease);
        let waited = loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let open = {
                let state = self.state();
                seqs.iter().any(|seq| {
                    state.pending.get(seq).is_some_and(|p| {
                        !p.local_done || p.awaiting.as_ref().is_none_or(|a| !a.is_empty())
                    })
                })
            };
            if !open {
                break false;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break true;
            }
        };
        {
            let mut state = self.state();
            for seq in &seqs {
                state.pending.remove(seq);
            }
        }
        if waited {
            ::metrics::counter!(metrics::REVOCATION_ACK_TIMEOUTS).increment(1);
            tracing::warn!(
                lease_ms = self.lease.as_millis(),
                "a revocation was not acknowledged by every instance; waited out their lease"
            );
        }
        ::metrics::histogram!(metrics::REVOCATION_PROPAGATION_SECONDS)
            .record(committed.elapsed().as_secs_f64());
    }

    fn forward(&self, make: impl Fn() -> Invalidation) {
        self.state()
            .subscribers
            .retain(|subscriber| subscriber.send(make()).is_ok());
    }

    /// Applies one message heard on the channel.
    fn heard(self: &Arc<Self>, message: Message) {
        let me = self.instance;
        match message {
            Message::Heartbeat { origin, n } if origin == me => {
                let sent = self
                    .state()
                    .heartbeats
                    .iter()
                    .find(|(number, _)| *number == n)
                    .map(|(_, sent)| *sent);
                if let Some(sent) = sent {
                    let until = sent + self.lease;
                    self.forward(|| Invalidation::Lease { until });
                }
            }
            Message::Heartbeat { origin, .. } => {
                self.state().peers.insert(origin, Instant::now());
            }
            Message::Revoked {
                origin,
                seq,
                hashes,
            } if origin == me => {
                // Every cache of this process drops the hashes too (other managers on this
                // store), and the revoking call waits for them as for any instance.
                let local = self.hand_to_caches(&hashes);
                let mut state = self.state();
                let lease = self.lease + margin(self.lease);
                let knows_every_peer = state
                    .listening_since
                    .is_some_and(|since| since + lease <= Instant::now());
                let State { peers, pending, .. } = &mut *state;
                if let Some(pending) = pending.get_mut(&seq) {
                    if knows_every_peer {
                        let live = peers
                            .iter()
                            .filter(|(_, heard)| **heard + lease > pending.published_at)
                            .map(|(peer, _)| *peer)
                            .collect();
                        pending.awaiting = Some(live);
                    }
                    pending.local_done = local.is_empty();
                }
                drop(state);
                self.settled.notify_waiters();
                if !local.is_empty() {
                    let feed = Arc::downgrade(self);
                    tokio::spawn(async move {
                        for wait in local {
                            let _ = wait.await;
                        }
                        if let Some(feed) = feed.upgrade() {
                            if let Some(pending) = feed.state().pending.get_mut(&seq) {
                                pending.local_done = true;
                            }
                            feed.settled.notify_waiters();
                        }
                    });
                }
            }
            Message::Revoked {
                origin,
                seq,
                hashes,
            } => self.relay_revocation(origin, seq, hashes),
            Message::Ack { from, origin, seq } if origin == me => {
                ::metrics::counter!(metrics::REVOCATION_ACKS).increment(1);
                if let Some(awaiting) = self
                    .state()
                    .pending
                    .get_mut(&seq)
                    .and_then(|p| p.awaiting.as_mut())
                {
                    awaiting.remove(&from);
                }
                self.settled.notify_waiters();
            }
            Message::Ack { .. } => {}
            Message::Deleted { hash } => {
                self.forward(|| Invalidation::Tokens {
                    hashes: vec![hash],
                    ack: Ack::none(),
                });
            }
            Message::Bye { origin } => {
                let mut state = self.state();
                state.peers.remove(&origin);
                for pending in state.pending.values_mut() {
                    if let Some(awaiting) = pending.awaiting.as_mut() {
                        awaiting.remove(&origin);
                    }
                }
                drop(state);
                self.settled.notify_waiters();
            }
        }
    }

    /// Hands hashes to every cache of this process; the receivers resolve once each dropped
    /// them (or is gone).
    fn hand_to_caches(&self, hashes: &[TokenHash]) -> Vec<oneshot::Receiver<()>> {
        let mut waits = Vec::new();
        self.state().subscribers.retain(|subscriber| {
            let (ack, wait) = Ack::channel();
            let sent = subscriber.send(Invalidation::Tokens {
                hashes: hashes.to_vec(),
                ack,
            });
            if sent.is_ok() {
                waits.push(wait);
            }
            sent.is_ok()
        });
        waits
    }

    /// Hands another instance's revocation to every cache here and acknowledges it once all of
    /// them dropped the hashes.
    fn relay_revocation(self: &Arc<Self>, origin: u64, seq: u64, hashes: Vec<TokenHash>) {
        let waits = self.hand_to_caches(&hashes);
        if waits.is_empty() {
            // No cache here: nothing to drop, and nobody waits for this instance.
            return;
        }
        let ack = self
            .transport
            .send(format!("a {:x} {origin:x} {seq:x}", self.instance));
        tokio::spawn(async move {
            for wait in waits {
                // An error means the cache is gone: nothing left to drop.
                let _ = wait.await;
            }
            if let Err(error) = ack.await {
                // The origin then waits out this instance's lease: slower, never wrong.
                tracing::warn!(%error, "could not acknowledge a session revocation");
            }
        });
    }
}

impl<T: Transport> Drop for Feed<T> {
    fn drop(&mut self) {
        // The last handle of the store is gone (with its manager): say goodbye, so that no
        // revocation elsewhere waits out this instance's lease. Best effort: without a runtime
        // the others wait one lease, as for a crash. Others count this instance as a peer once
        // it has sent a heartbeat.
        let announced = !self.state().heartbeats.is_empty();
        if announced && let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.transport.send(format!("b {:x}", self.instance)));
        }
    }
}

/// The revocations one write published; [`Feed::settle`] waits for them. Dropped without
/// settling (the write failed), it forgets them.
pub(super) struct Ticket<T: Transport> {
    seqs: Vec<u64>,
    feed: Weak<Feed<T>>,
}

impl<T: Transport> Drop for Ticket<T> {
    fn drop(&mut self) {
        if self.seqs.is_empty() {
            return;
        }
        if let Some(feed) = self.feed.upgrade() {
            let mut state = feed.state();
            for seq in &self.seqs {
                state.pending.remove(seq);
            }
        }
    }
}

/// Slack for scheduling and clock-rate differences between instances.
fn margin(lease: Duration) -> Duration {
    lease / 20 + Duration::from_millis(5)
}

fn instance_id() -> u64 {
    let mut bytes = [0; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // Unique enough: ids only need to differ between the instances on one database.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        return u64::from(std::process::id()) << 32 ^ (nanos as u64);
    }
    u64::from_ne_bytes(bytes)
}

/// Publishes this instance's heartbeat every quarter lease while a cache subscribes; says
/// goodbye when the last one is gone.
async fn heartbeat<T: Transport>(feed: Weak<Feed<T>>, mut alive: watch::Receiver<()>) {
    let mut n: u64 = 0;
    let period = match feed.upgrade() {
        Some(feed) => (feed.lease / 4).max(Duration::from_millis(1)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = alive.changed() => return,
            _ = tick.tick() => {}
        }
        let Some(feed) = feed.upgrade() else { return };
        let me = feed.instance;
        let subscribed = {
            let mut state = feed.state();
            state.subscribers.retain(|s| !s.is_closed());
            if !state.subscribers.is_empty() {
                n += 1;
                if state.heartbeats.len() == HEARTBEATS_KEPT {
                    state.heartbeats.pop_front();
                }
                // Taken before the heartbeat is sent, so the lease it grants can only be short.
                state.heartbeats.push_back((n, Instant::now()));
            }
            !state.subscribers.is_empty()
        };
        if !subscribed {
            let bye = feed.transport.send(format!("b {me:x}"));
            drop(feed);
            let _ = bye.await;
            return;
        }
        let beat = feed.transport.send(format!("h {me:x} {n:x}"));
        drop(feed);
        if let Err(error) = beat.await {
            tracing::debug!(%error, "session invalidation heartbeat not sent; the lease will lapse");
        }
    }
}

/// Relays the channel until the feed is dropped, reconnecting with backoff. Every gap in the
/// connection is reported, because messages sent during it are lost for good.
async fn listen<T: Transport>(feed: Weak<Feed<T>>, mut alive: watch::Receiver<()>) {
    const MIN_BACKOFF: Duration = Duration::from_millis(50);
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(connected) = feed.upgrade().map(|feed| feed.transport.listen()) else {
            return;
        };
        let mut listener = tokio::select! {
            _ = alive.changed() => return,
            result = connected => match result {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "session invalidation listener cannot connect; cache bypassed until it does");
                    tokio::select! {
                        _ = alive.changed() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        backoff = MIN_BACKOFF;
        match feed.upgrade() {
            Some(feed) => {
                feed.state().listening_since = Some(Instant::now());
                feed.forward(|| Invalidation::FeedRestored);
            }
            None => return,
        }
        loop {
            let received = tokio::select! {
                _ = alive.changed() => return,
                received = T::next(&mut listener) => received,
            };
            let Some(feed) = feed.upgrade() else { return };
            match received {
                Some(payload) => {
                    if let Some(message) = Message::parse(&payload) {
                        feed.heard(message);
                    }
                }
                None => {
                    tracing::warn!(
                        "session invalidation listener lost its connection; reconnecting"
                    );
                    feed.state().listening_since = None;
                    feed.forward(|| Invalidation::FeedLost);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_their_payloads() {
        let hash = TokenHash::from_bytes([7; 32]);
        assert_eq!(
            Message::parse(&format!("r 1f 2 {},{}", hash.to_hex(), hash.to_hex())),
            Some(Message::Revoked {
                origin: 0x1f,
                seq: 2,
                hashes: vec![hash, hash]
            })
        );
        assert_eq!(
            Message::parse("h ff 10"),
            Some(Message::Heartbeat {
                origin: 0xff,
                n: 0x10
            })
        );
        assert_eq!(
            Message::parse("a 1 2 3"),
            Some(Message::Ack {
                from: 1,
                origin: 2,
                seq: 3
            })
        );
        assert_eq!(Message::parse("b 9"), Some(Message::Bye { origin: 9 }));
        for junk in ["", "x 1", "h", "h zz 1", "a 1 2", "r"] {
            assert_eq!(Message::parse(junk), None, "{junk:?}");
        }
    }
}
