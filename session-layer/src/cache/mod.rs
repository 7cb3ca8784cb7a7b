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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;

pub(crate) use entry::{Judgement, LastUse, SessionEntry};

use crate::clock::duration_us;
use crate::token::TokenHash;
use crate::touch::TouchSender;

/// What a load through the cache produced: a usable entry (cached when the cache is trusted),
/// or the loader's reason for not producing one, passed through uncached.
pub(crate) enum Fetched<R> {
    Entry(Arc<SessionEntry>),
    Rejected(R),
}

/// What the cache remembers about a token that yielded no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Miss {
    /// No session has this token, or its session is revoked or expired: final states, and a
    /// token that is issued later is removed from this memory when it is issued.
    Useless,
    /// A store lookup for this token failed at this monotonic time; lookups that started
    /// before it share the failure.
    Failed { at_us: i64 },
}

pub(crate) struct SessionCache {
    /// `None` when the cache is disabled (`cache_ttl` zero).
    sessions: Option<Cache<TokenHash, Arc<SessionEntry>>>,
    /// Tokens that yielded no session; never competes with `sessions` for capacity.
    misses: Option<Cache<TokenHash, Miss>>,
    /// False while cross-instance notifications may be lost: no hit is served, nothing is stored.
    trusted: AtomicBool,
    /// Bumped by every whole-cache clear; a load inserts only if it is unchanged.
    epoch: AtomicU64,
    /// Bumped after every removal: a per-thread front slot is only trusted while it is unchanged.
    generation: AtomicU64,
    /// Tells this cache's front slots apart from another manager's in the same thread.
    id: u64,
    ttl_us: i64,
}

impl SessionCache {
    pub(crate) fn new(
        ttl: Duration,
        capacity: u64,
        miss_capacity: u64,
        touches: TouchSender,
        trusted: bool,
    ) -> Self {
        let enabled = !ttl.is_zero();
        let sessions = enabled.then(|| {
            Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .eviction_listener(move |_hash, entry: Arc<SessionEntry>, cause| {
                    // A use seen only in memory would wait for the next use to be written.
                    if cause != RemovalCause::Replaced
                        && let Some(used) = entry.last_use().take_unwritten()
                    {
                        touches.touch(entry.session.id, used);
                    }
                })
                .build()
        });
        let misses = (enabled && miss_capacity > 0).then(|| {
            Cache::builder()
                .max_capacity(miss_capacity)
                .time_to_live(ttl)
                .build()
        });
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            sessions,
            misses,
            trusted: AtomicBool::new(trusted),
            epoch: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            ttl_us: duration_us(ttl),
        }
    }

    pub(crate) fn is_fresh(&self, entry: &SessionEntry, now_mono: i64) -> bool {
        entry.is_fresh(now_mono, self.ttl_us)
    }

    /// The cached entry for `hash` if one can be had without waiting.
    ///
    /// The per-thread front answers first. Behind it, moka's `get` only suspends while it runs
    /// cache maintenance; a lookup that would wait is answered `None`, and the caller's miss
    /// path then finds the entry without a store query. This keeps the hit path free of a boxed
    /// future.
    pub(crate) fn get_now(&self, hash: &TokenHash, now_mono: i64) -> Option<Arc<SessionEntry>> {
        let sessions = self.sessions.as_ref()?;
        if !self.trusted.load(Ordering::Acquire) {
            return None;
        }
        // Read before moka, so a removal that lands in between makes the slot stale.
        let generation = self.generation.load(Ordering::Acquire);
        let fresh = |entry: &SessionEntry| self.is_fresh(entry, now_mono);
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

    /// Returns the cached entry if `reuse` accepts it, else runs `load` and caches a usable
    /// result. Concurrent calls for one key run one at a time, so a burst of misses makes one
    /// store query and the others find its entry.
    pub(crate) async fn get_or_load<R, F, Fut>(
        &self,
        hash: TokenHash,
        reuse: impl FnOnce(&SessionEntry) -> bool,
        load: F,
    ) -> Fetched<R>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Fetched<R>>,
    {
        let Some(sessions) = &self.sessions else {
            return load().await;
        };
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut outcome = None;
        let mut replaced = false;
        sessions
            .entry(hash)
            .and_compute_with(|existing| async {
                if let Some(existing) = existing {
                    let entry = existing.into_value();
                    if self.trusted.load(Ordering::Acquire) && reuse(&entry) {
                        outcome = Some(Fetched::Entry(entry));
                        return Op::Nop;
                    }
                    replaced = true;
                }
                match load().await {
                    Fetched::Entry(entry) => {
                        let cacheable = self.trusted.load(Ordering::Acquire)
                            && self.epoch.load(Ordering::Acquire) == epoch;
                        outcome = Some(Fetched::Entry(Arc::clone(&entry)));
                        if cacheable {
                            Op::Put(entry)
                        } else {
                            Op::Remove
                        }
                    }
                    Fetched::Rejected(reason) => {
                        outcome = Some(Fetched::Rejected(reason));
                        Op::Remove
                    }
                }
            })
            .await;
        if replaced {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        // moka runs the closure, and awaits its future to the end, before `and_compute_with`
        // returns; every branch of that future sets `outcome`.
        outcome.expect("the compute closure sets the outcome on every path")
    }

    /// Removes `hash`, waiting for any load of it in flight to finish first.
    pub(crate) async fn invalidate(&self, hash: TokenHash) {
        if let Some(sessions) = &self.sessions {
            sessions
                .entry(hash)
                .and_compute_with(|_| std::future::ready(Op::Remove))
                .await;
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// What is remembered about a token that yielded no session.
    pub(crate) async fn miss(&self, hash: &TokenHash) -> Option<Miss> {
        match &self.misses {
            Some(misses) => misses.get(hash).await,
            None => None,
        }
    }

    pub(crate) async fn remember_miss(&self, hash: TokenHash, miss: Miss) {
        if let Some(misses) = &self.misses {
            misses.insert(hash, miss).await;
        }
    }

    /// Forgets a remembered miss: `hash` was just issued (a sign-in or rotation).
    pub(crate) async fn forget_miss(&self, hash: &TokenHash) {
        if let Some(misses) = &self.misses {
            misses.invalidate(hash).await;
        }
    }

    /// Empties the cache and sets whether it may be used from now on.
    pub(crate) fn clear(&self, trusted_after: bool) {
        self.trusted.store(false, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(sessions) = &self.sessions {
            sessions.invalidate_all();
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.trusted.store(trusted_after, Ordering::Release);
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
