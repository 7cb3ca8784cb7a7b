//! The validation cache: moka keyed by token hash, with revocation that cannot be undone by a
//! load that was already in flight, and, kept apart, a short memory of tokens that are known to
//! be of no use (unknown, revoked, expired) or whose lookup just failed.
//!
//! moka's `invalidate` does not stop an in-flight `get_with` from inserting its (now stale) value
//! afterwards. So loads and removals both go through `entry(hash).and_compute_with`, which moka
//! serialises per key: a revocation either runs after the load's insert (and removes it) or
//! before the load's compute starts (and the load then reads the revoked row). Whole-cache
//! clears (a lost notification feed) cannot lock every key, so they bump an epoch that a load
//! checks inside its compute before it inserts.
//!
//! Freshness is judged here, on the manager's monotonic clock, not only by moka's TTL, so that
//! tests that move the clock see entries age.

mod entry;
mod front;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;

pub(crate) use entry::{Judgement, LastUse, SessionEntry};

use crate::clock::duration_us;
use crate::token::TokenHash;
use crate::touch::TouchSender;
use crate::user_id::UserId;

/// What a load through the cache produced: a usable entry (cached when the cache is trusted),
/// or the loader's reason for not producing one, passed through uncached.
pub(crate) enum Fetched<U, R> {
    Entry(Arc<SessionEntry<U>>),
    Rejected(R),
}

/// What a loader produced for a token.
pub(crate) enum Loaded<U, R> {
    /// A usable session: cached (when the cache is trusted and nothing was removed meanwhile).
    Usable(Arc<SessionEntry<U>>),
    /// No session; remember this about the token (apart from the sessions).
    Remember(Miss, R),
    /// No session, and nothing to remember (an idle session, a reused token, a shared failure).
    Rejected(R),
}

/// What the cache remembers about a token that yielded no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Miss {
    /// No session has this token, or its session is revoked: final states, and a token that is
    /// issued later is removed from this memory when it is issued.
    Useless,
    /// A store lookup for this token failed at this monotonic time; lookups that started
    /// before it share the failure.
    Failed { at_us: i64 },
}

pub(crate) struct SessionCache<U> {
    /// `None` when the cache is disabled (`cache_ttl` zero).
    sessions: Option<Cache<TokenHash, Arc<SessionEntry<U>>>>,
    /// Tokens that yielded no session, and the per-token queue of first lookups. Kept apart so
    /// that a flood of unknown tokens never competes with `sessions` for capacity: moka's
    /// compute on an absent key takes part in eviction even when it stores nothing.
    misses: Option<Cache<TokenHash, Miss>>,
    /// Whether `misses` remembers anything (a zero capacity only queues).
    remember_misses: bool,
    /// Monotonic time until which hits may be served: forever for a store that is the only
    /// writer, else the end of the invalidation feed's lease (before the first lease, and after
    /// the feed is lost, no hit is served and nothing is stored).
    trusted_until: AtomicI64,
    /// Bumped by every whole-cache clear; a load inserts only if it is unchanged.
    epoch: AtomicU64,
    /// Bumped after every removal: a per-thread front slot is only trusted while it is unchanged.
    generation: AtomicU64,
    /// Bumped before every removal: a first lookup caches its entry only if it is unchanged
    /// since before the store was read.
    removals: AtomicU64,
    /// Tells this cache's front slots apart from another manager's in the same thread.
    id: u64,
    ttl_us: i64,
}

impl<U: UserId> SessionCache<U> {
    pub(crate) fn new(
        ttl: Duration,
        capacity: u64,
        miss_capacity: u64,
        touches: TouchSender,
        has_feed: bool,
    ) -> Self {
        let enabled = !ttl.is_zero();
        let sessions = enabled.then(|| {
            Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .eviction_listener(move |_hash, entry: Arc<SessionEntry<U>>, cause| {
                    // A use seen only in memory would wait for the next use to be written.
                    if cause != RemovalCause::Replaced
                        && let Some(used) = entry.last_use().take_unwritten()
                    {
                        touches.touch(entry.session.id, used);
                    }
                })
                .build()
        });
        let misses = enabled.then(|| {
            Cache::builder()
                .max_capacity(miss_capacity.max(1))
                .time_to_live(ttl)
                .build()
        });
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            sessions,
            misses,
            remember_misses: miss_capacity > 0,
            trusted_until: AtomicI64::new(if has_feed { i64::MIN } else { i64::MAX }),
            epoch: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            removals: AtomicU64::new(0),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            ttl_us: duration_us(ttl),
        }
    }

    pub(crate) fn is_fresh(&self, entry: &SessionEntry<U>, now_mono: i64) -> bool {
        entry.is_fresh(now_mono, self.ttl_us)
    }

    fn is_trusted(&self, now_mono: i64) -> bool {
        now_mono < self.trusted_until.load(Ordering::Acquire)
    }

    /// The invalidation feed holds a lease until monotonic time `until`.
    pub(crate) fn trust_until(&self, until: i64) {
        self.trusted_until.fetch_max(until, Ordering::AcqRel);
    }

    /// The cached entry for `hash` if one can be had without waiting.
    ///
    /// The per-thread front answers first. Behind it, moka's `get` only suspends while it runs
    /// cache maintenance; a lookup that would wait is answered `None`, and the caller's miss
    /// path then finds the entry without a store query. This keeps the hit path free of a boxed
    /// future.
    pub(crate) fn get_now(&self, hash: &TokenHash, now_mono: i64) -> Option<Arc<SessionEntry<U>>> {
        let sessions = self.sessions.as_ref()?;
        if !self.is_trusted(now_mono) {
            return None;
        }
        // Read before moka, so a removal that lands in between makes the slot stale.
        let generation = self.generation.load(Ordering::Acquire);
        let fresh = |entry: &SessionEntry<U>| self.is_fresh(entry, now_mono);
        if let Some(entry) = front::get(self.id, generation, hash, fresh) {
            return Some(entry);
        }
        let lookup = pin!(sessions.get(hash));
        let found = match lookup.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(found) => found.filter(|entry| fresh(entry)),
            Poll::Pending => None,
        };
        if let Some(entry) = &found {
            front::put(self.id, generation, entry);
        }
        found
    }

    /// Whether a (possibly stale) entry for `hash` is cached.
    pub(crate) fn holds(&self, hash: &TokenHash) -> bool {
        self.sessions
            .as_ref()
            .is_some_and(|sessions| sessions.contains_key(hash))
    }

    /// For a token with a cached entry: returns it if `reuse` accepts it, else runs `load` and
    /// replaces or removes it. Loads and removals of one key run one at a time, so a revocation
    /// either removes what the load put back or runs first, and the load reads the revoked row.
    pub(crate) async fn reload<R, Fut>(
        &self,
        hash: TokenHash,
        now_mono: i64,
        reuse: impl FnOnce(&SessionEntry<U>) -> bool,
        load: impl FnOnce() -> Fut,
    ) -> Fetched<U, R>
    where
        Fut: Future<Output = Loaded<U, R>>,
    {
        let Some(sessions) = &self.sessions else {
            return self.settle_uncached(hash, load().await).await;
        };
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut outcome = None;
        let mut replaced = false;
        let mut remember = None;
        sessions
            .entry(hash)
            .and_compute_with(|existing| async {
                if let Some(existing) = existing {
                    let entry = existing.into_value();
                    if self.is_trusted(now_mono) && reuse(&entry) {
                        outcome = Some(Fetched::Entry(entry));
                        return Op::Nop;
                    }
                    replaced = true;
                }
                match load().await {
                    Loaded::Usable(entry) => {
                        let cacheable = self.is_trusted(now_mono)
                            && self.epoch.load(Ordering::Acquire) == epoch;
                        outcome = Some(Fetched::Entry(Arc::clone(&entry)));
                        if cacheable {
                            Op::Put(entry)
                        } else {
                            Op::Remove
                        }
                    }
                    Loaded::Remember(miss, reason) => {
                        remember = Some(miss);
                        outcome = Some(Fetched::Rejected(reason));
                        Op::Remove
                    }
                    Loaded::Rejected(reason) => {
                        outcome = Some(Fetched::Rejected(reason));
                        Op::Remove
                    }
                }
            })
            .await;
        if replaced {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(miss) = remember {
            self.remember(hash, miss).await;
        }
        // moka runs the closure, and awaits its future to the end, before `and_compute_with`
        // returns; every branch of that future sets `outcome`.
        outcome.expect("the compute closure sets the outcome on every path")
    }

    /// For a token with no cached entry: first lookups of one token queue one behind the other
    /// (on the miss memory, not the sessions), each handed what is remembered about the token;
    /// a burst of them makes one store query. A usable session is then cached unless a removal
    /// started after `load` was called.
    pub(crate) async fn load_uncached<R, Fut>(
        &self,
        hash: TokenHash,
        now_mono: i64,
        load: impl FnOnce(Option<Miss>) -> Fut,
    ) -> Fetched<U, R>
    where
        Fut: Future<Output = Loaded<U, R>>,
    {
        let (Some(sessions), Some(misses)) = (&self.sessions, &self.misses) else {
            return self.settle_uncached(hash, load(None).await).await;
        };
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut outcome = None;
        misses
            .entry(hash)
            .and_compute_with(|miss| async {
                // A lookup queued behind one that loaded the session finds it here.
                if let Some(entry) = sessions.get(&hash).await
                    && self.is_trusted(now_mono)
                    && self.is_fresh(&entry, now_mono)
                {
                    outcome = Some(Fetched::Entry(entry));
                    return Op::Nop;
                }
                let removals = self.removals.load(Ordering::Acquire);
                match load(miss.map(|m| m.into_value())).await {
                    Loaded::Usable(entry) => {
                        self.admit(hash, Arc::clone(&entry), removals, epoch, now_mono)
                            .await;
                        outcome = Some(Fetched::Entry(entry));
                        Op::Remove
                    }
                    Loaded::Remember(miss, reason) => {
                        outcome = Some(Fetched::Rejected(reason));
                        if self.remember_misses {
                            Op::Put(miss)
                        } else {
                            Op::Nop
                        }
                    }
                    Loaded::Rejected(reason) => {
                        outcome = Some(Fetched::Rejected(reason));
                        Op::Nop
                    }
                }
            })
            .await;
        // As in `reload`: the closure always ran to its end.
        outcome.expect("the compute closure sets the outcome on every path")
    }

    /// Caches a freshly loaded entry, unless an entry is there already, or a removal started or
    /// the cache was cleared since before the load read the store, or the cache is not trusted.
    async fn admit(
        &self,
        hash: TokenHash,
        entry: Arc<SessionEntry<U>>,
        removals: u64,
        epoch: u64,
        now_mono: i64,
    ) {
        let Some(sessions) = &self.sessions else {
            return;
        };
        sessions
            .entry(hash)
            .and_compute_with(|existing| {
                let admissible = existing.is_none()
                    && self.is_trusted(now_mono)
                    && self.removals.load(Ordering::Acquire) == removals
                    && self.epoch.load(Ordering::Acquire) == epoch;
                std::future::ready(if admissible { Op::Put(entry) } else { Op::Nop })
            })
            .await;
    }

    /// A load's outcome when nothing is cached (the cache is disabled).
    async fn settle_uncached<R>(&self, hash: TokenHash, loaded: Loaded<U, R>) -> Fetched<U, R> {
        match loaded {
            Loaded::Usable(entry) => Fetched::Entry(entry),
            Loaded::Remember(miss, reason) => {
                self.remember(hash, miss).await;
                Fetched::Rejected(reason)
            }
            Loaded::Rejected(reason) => Fetched::Rejected(reason),
        }
    }

    /// Removes `hash`, waiting for any load of it in flight to finish first.
    pub(crate) async fn invalidate(&self, hash: TokenHash) {
        if let Some(sessions) = &self.sessions {
            self.removals.fetch_add(1, Ordering::AcqRel);
            sessions
                .entry(hash)
                .and_compute_with(|_| std::future::ready(Op::Remove))
                .await;
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    async fn remember(&self, hash: TokenHash, miss: Miss) {
        if let Some(misses) = &self.misses
            && self.remember_misses
        {
            misses.insert(hash, miss).await;
        }
    }

    /// Forgets a remembered miss: `hash` was just issued (a sign-in or rotation).
    pub(crate) async fn forget_miss(&self, hash: &TokenHash) {
        if let Some(misses) = &self.misses {
            misses.invalidate(hash).await;
        }
    }

    /// Empties the cache and stops trusting it until the next lease.
    pub(crate) fn clear(&self) {
        self.trusted_until.store(i64::MIN, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(sessions) = &self.sessions {
            sessions.invalidate_all();
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Number of cached sessions (approximate, as moka counts).
    pub(crate) fn len(&self) -> u64 {
        self.sessions.as_ref().map_or(0, Cache::entry_count)
    }

    /// Runs moka's pending maintenance (eviction listeners, counts).
    pub(crate) async fn run_pending_tasks(&self) {
        if let Some(sessions) = &self.sessions {
            sessions.run_pending_tasks().await;
        }
        if let Some(misses) = &self.misses {
            misses.run_pending_tasks().await;
        }
    }
}
