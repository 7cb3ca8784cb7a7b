//! The validation cache: moka keyed by token hash, with revocation that cannot be undone by a
//! load that was already in flight.
//!
//! moka's `invalidate` does not stop an in-flight `get_with` from inserting its (now stale) value
//! afterwards. So loads and removals both go through `entry(hash).and_compute_with`, which moka
//! serialises per key: a revocation either runs after the load's insert (and removes it) or
//! before the load's compute starts (and the load then reads the revoked row). Whole-cache
//! clears (a lost notification feed) cannot lock every key, so they bump an epoch that a load
//! checks inside its compute before it inserts.

use std::cell::RefCell;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::session::Session;
use crate::store::Invalidation;
use crate::token::TokenHash;
use crate::touch::TouchSender;

/// Microseconds since the Unix epoch, the unit of every hot-path timestamp.
pub(crate) fn now_us() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

pub(crate) fn to_us(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

pub(crate) fn from_us(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub(crate) fn duration_us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Slots of the per-thread front (direct-mapped by the first hash byte).
const FRONT_SLOTS: usize = 8;

struct FrontSlot {
    cache_id: u64,
    generation: u64,
    entry: Arc<SessionEntry>,
}

thread_local! {
    static FRONT: RefCell<[Option<FrontSlot>; FRONT_SLOTS]> =
        const { RefCell::new([const { None }; FRONT_SLOTS]) };
}

/// A validated session as cached, with this process's view of its activity.
pub(crate) struct SessionEntry {
    pub(crate) session: Session,
    pub(crate) token_hash: TokenHash,
    /// When it was read from the store; bounds how long the per-thread front may serve it.
    loaded_at_us: i64,
    expires_at_us: i64,
    /// Most recent use seen here (or the stored `last_active_at` at load).
    last_used_us: AtomicI64,
    /// The `last_active_at` that is stored or queued for writing.
    last_written_us: AtomicI64,
}

/// Verdict on a cached entry for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Usability {
    /// Usable; `touch_due` when this use should be written to the store.
    Usable { touch_due: bool },
    /// Past its absolute lifetime: no store read can change that.
    Expired,
    /// Idle for too long as far as this process saw; another instance may know better.
    Idle,
}

impl SessionEntry {
    pub(crate) fn new(session: Session, token_hash: TokenHash) -> Self {
        let last_active = to_us(session.last_active_at);
        Self {
            loaded_at_us: now_us(),
            expires_at_us: to_us(session.expires_at),
            last_used_us: AtomicI64::new(last_active),
            last_written_us: AtomicI64::new(last_active),
            session,
            token_hash,
        }
    }

    /// Judges the entry at `now` and, when usable, records the use.
    pub(crate) fn use_at(&self, now: i64, idle_us: i64, touch_interval_us: i64) -> Usability {
        if now >= self.expires_at_us {
            return Usability::Expired;
        }
        let last_used = self.last_used_us.load(Ordering::Relaxed);
        if now.saturating_sub(last_used) >= idle_us {
            return Usability::Idle;
        }
        if now > last_used {
            self.last_used_us.fetch_max(now, Ordering::Relaxed);
        }
        let written = self.last_written_us.load(Ordering::Relaxed);
        // Only the thread that wins the exchange queues the write: one touch per interval.
        let touch_due = now.saturating_sub(written) >= touch_interval_us
            && self
                .last_written_us
                .compare_exchange(written, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        Usability::Usable { touch_due }
    }

    /// The most recent use known here.
    pub(crate) fn last_used(&self) -> OffsetDateTime {
        from_us(self.last_used_us.load(Ordering::Relaxed))
    }

    /// A use seen but not yet queued for writing, if any.
    fn unwritten_use(&self) -> Option<i64> {
        let used = self.last_used_us.load(Ordering::Relaxed);
        (used > self.last_written_us.swap(used, Ordering::Relaxed)).then_some(used)
    }
}

/// What a loader hands back, and what a load through the cache found: a usable entry (cached
/// when the cache is trusted), or the loader's verdict, passed through uncached.
pub(crate) enum Loaded<T> {
    /// An entry, cached or freshly loaded.
    Entry(Arc<SessionEntry>),
    /// The loader's verdict when it produced no usable entry.
    Other(T),
}

pub(crate) struct SessionCache {
    /// `None` when the cache is disabled (`cache_ttl` zero).
    cache: Option<Cache<TokenHash, Arc<SessionEntry>>>,
    /// False while cross-instance notifications may be lost: no hit is served, nothing is stored.
    trusted: AtomicBool,
    /// Bumped by every whole-cache clear; a load inserts only if it is unchanged.
    epoch: AtomicU64,
    /// Bumped after every removal: a per-thread front entry is only trusted while it is unchanged.
    generation: AtomicU64,
    /// Tells this cache's front entries apart from another manager's in the same thread.
    id: u64,
    ttl_us: i64,
}

impl SessionCache {
    pub(crate) fn new(ttl: Duration, capacity: u64, touches: TouchSender, trusted: bool) -> Self {
        let cache = (!ttl.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .eviction_listener(move |_hash, entry: Arc<SessionEntry>, cause| {
                    // A use seen only in memory would be lost with the entry; queue it.
                    if cause != RemovalCause::Replaced
                        && let Some(used) = entry.unwritten_use()
                    {
                        touches.touch(entry.session.id, used);
                    }
                })
                .build()
        });
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            cache,
            trusted: AtomicBool::new(trusted),
            epoch: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            ttl_us: duration_us(ttl),
        }
    }

    /// The cached entry, answered without waiting.
    ///
    /// A small per-thread front answers repeated tokens without touching moka; its entries are
    /// trusted only while no removal has happened since they were read (`generation`) and for
    /// no longer than the cache TTL since the row was loaded, so it never serves what moka
    /// would no longer serve. Behind it, moka's `get` only suspends while it runs cache
    /// maintenance; a lookup that would wait is treated as a miss, whose compute path then
    /// finds the entry without a store query. This keeps the hit path free of a boxed future.
    pub(crate) fn peek(&self, hash: &TokenHash, now_us: i64) -> Option<Arc<SessionEntry>> {
        let cache = self.cache.as_ref()?;
        if !self.trusted.load(Ordering::Acquire) {
            return None;
        }
        // Read before moka, so a removal that lands in between makes the slot stale.
        let generation = self.generation.load(Ordering::Acquire);
        let slot = usize::from(hash.as_bytes()[0]) % FRONT_SLOTS;
        let fresh = |entry: &SessionEntry| now_us.saturating_sub(entry.loaded_at_us) < self.ttl_us;
        let front_hit = FRONT.with_borrow(|front| match &front[slot] {
            Some(s)
                if s.cache_id == self.id
                    && s.generation == generation
                    && s.entry.token_hash == *hash
                    && fresh(&s.entry) =>
            {
                Some(Arc::clone(&s.entry))
            }
            _ => None,
        });
        if front_hit.is_some() {
            return front_hit;
        }
        let lookup = pin!(cache.get(hash));
        let found = match lookup.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(found) => found,
            Poll::Pending => None,
        };
        if let Some(entry) = &found {
            FRONT.with_borrow_mut(|front| {
                front[slot] = Some(FrontSlot {
                    cache_id: self.id,
                    generation,
                    entry: Arc::clone(entry),
                });
            });
        }
        found
    }

    /// Returns the cached entry if `reuse` accepts it, else runs `load` and caches a usable
    /// result. Concurrent calls for one key run one at a time, so a burst of misses makes one
    /// store query and the others find its entry.
    pub(crate) async fn get_or_load<T, F, Fut>(
        &self,
        hash: TokenHash,
        reuse: impl FnOnce(&SessionEntry) -> bool,
        load: F,
    ) -> Loaded<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Loaded<T>>,
    {
        let Some(cache) = &self.cache else {
            return load().await;
        };
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut outcome = None;
        let mut replaced = false;
        cache
            .entry(hash)
            .and_compute_with(|existing| async {
                if let Some(existing) = existing {
                    let entry = existing.into_value();
                    if self.trusted.load(Ordering::Acquire) && reuse(&entry) {
                        outcome = Some(Loaded::Entry(entry));
                        return Op::Nop;
                    }
                    replaced = true;
                }
                match load().await {
                    Loaded::Entry(entry) => {
                        let cacheable = self.trusted.load(Ordering::Acquire)
                            && self.epoch.load(Ordering::Acquire) == epoch;
                        outcome = Some(Loaded::Entry(Arc::clone(&entry)));
                        if cacheable {
                            Op::Put(entry)
                        } else {
                            Op::Remove
                        }
                    }
                    Loaded::Other(verdict) => {
                        outcome = Some(Loaded::Other(verdict));
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
        if let Some(cache) = &self.cache {
            cache
                .entry(hash)
                .and_compute_with(|_| std::future::ready(Op::Remove))
                .await;
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Empties the cache and sets whether it may be used from now on.
    pub(crate) fn clear(&self, trusted_after: bool) {
        self.trusted.store(false, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(cache) = &self.cache {
            cache.invalidate_all();
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.trusted.store(trusted_after, Ordering::Release);
    }

    /// Number of cached sessions (approximate, as moka counts).
    pub(crate) fn len(&self) -> u64 {
        self.cache.as_ref().map_or(0, Cache::entry_count)
    }

    /// Runs moka's pending maintenance (eviction listeners, counts); for tests and benchmarks.
    pub(crate) async fn run_pending_tasks(&self) {
        if let Some(cache) = &self.cache {
            cache.run_pending_tasks().await;
        }
    }
}

/// Applies other instances' invalidations to this one's cache.
pub(crate) async fn relay(
    cache: Weak<SessionCache>,
    mut feed: mpsc::UnboundedReceiver<Invalidation>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let invalidation = tokio::select! {
            _ = &mut stop => return,
            invalidation = feed.recv() => invalidation,
        };
        let Some(cache) = cache.upgrade() else { return };
        match invalidation {
            Some(Invalidation::Tokens(hashes)) => {
                for hash in hashes {
                    cache.invalidate(hash).await;
                }
            }
            Some(Invalidation::FeedRestored) => cache.clear(true),
            Some(Invalidation::FeedLost) | None => {
                cache.clear(false);
                if invalidation.is_none() {
                    tracing::error!("session invalidation feed ended; the cache stays bypassed");
                    return;
                }
            }
        }
    }
}
