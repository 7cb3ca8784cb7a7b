//! One cached session, and the record of its most recent use that outlives cache entries.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use time::OffsetDateTime;

use crate::anomaly::LastSeen;
use crate::clock::{from_us, to_us};
use crate::session::Session;
use crate::token::TokenHash;

/// The most recent use of one session seen by this process, shared by every cache entry that
/// session has over time (see [`ActivityLog`](crate::activity::ActivityLog)), so a reload never
/// forgets a use that was only in memory.
#[derive(Debug)]
pub(crate) struct LastUse {
    /// Most recent use seen here, or the stored `last_active_at` if newer.
    used_us: AtomicI64,
    /// The newest use that is stored or queued for writing.
    written_us: AtomicI64,
    /// Where the session was last used from.
    pub(crate) seen: LastSeen,
}

impl LastUse {
    pub(crate) fn new(stored_us: i64, seen: LastSeen) -> Self {
        Self {
            used_us: AtomicI64::new(stored_us),
            written_us: AtomicI64::new(stored_us),
            seen,
        }
    }

    /// Takes in a stored `last_active_at` (which another instance may have moved).
    pub(crate) fn merge_stored(&self, stored_us: i64) {
        self.used_us.fetch_max(stored_us, Ordering::Relaxed);
        self.written_us.fetch_max(stored_us, Ordering::Relaxed);
    }

    pub(crate) fn used_us(&self) -> i64 {
        self.used_us.load(Ordering::Relaxed)
    }

    /// Records a use at `now`, to within `granularity_us`; true when this use should be written
    /// (at most once per `touch_interval_us`, and only by the caller that wins the exchange).
    ///
    /// Within the granularity a use writes nothing: many cores using one session then only
    /// read its record.
    fn record(&self, now: i64, touch_interval_us: i64, granularity_us: i64) -> bool {
        if now.saturating_sub(self.used_us.load(Ordering::Relaxed)) >= granularity_us {
            self.used_us.fetch_max(now, Ordering::Relaxed);
        }
        let written = self.written_us.load(Ordering::Relaxed);
        now.saturating_sub(written) >= touch_interval_us
            && self
                .written_us
                .compare_exchange(written, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// A use seen but not yet queued for writing, if any; marks it queued.
    pub(crate) fn take_unwritten(&self) -> Option<i64> {
        let used = self.used_us.load(Ordering::Relaxed);
        (used > self.written_us.fetch_max(used, Ordering::Relaxed)).then_some(used)
    }
}

/// A validated session as cached.
#[derive(Clone)]
pub(crate) struct SessionEntry<U> {
    pub(crate) session: Session<U>,
    pub(crate) token_hash: TokenHash,
    /// Monotonic time of the store read; the entry is served for at most the cache TTL after.
    loaded_at_us: i64,
    expires_at_us: i64,
    last_use: Arc<LastUse>,
}

/// What an entry is worth at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Judgement {
    Usable,
    /// Past its absolute lifetime: no store read can change that.
    Expired,
    /// Unused for too long as far as this process saw; another instance may know better.
    Idle,
}

impl<U> SessionEntry<U> {
    pub(crate) fn new(
        session: Session<U>,
        token_hash: TokenHash,
        last_use: Arc<LastUse>,
        loaded_at_us: i64,
    ) -> Self {
        Self {
            expires_at_us: to_us(session.expires_at),
            loaded_at_us,
            last_use,
            session,
            token_hash,
        }
    }

    /// Whether the entry may still be served at monotonic time `now_mono` (read no longer than
    /// `ttl_us` ago).
    pub(crate) fn is_fresh(&self, now_mono: i64, ttl_us: i64) -> bool {
        now_mono.saturating_sub(self.loaded_at_us) < ttl_us
    }

    /// The verdict at wall time `now`, with no side effect.
    pub(crate) fn judge(&self, now: i64, idle_us: i64) -> Judgement {
        if now >= self.expires_at_us {
            Judgement::Expired
        } else if now.saturating_sub(self.last_use.used_us()) >= idle_us {
            Judgement::Idle
        } else {
            Judgement::Usable
        }
    }

    /// Records a use at wall time `now`, to within `granularity_us`; true when it is due to be
    /// written.
    pub(crate) fn record_use(&self, now: i64, touch_interval_us: i64, granularity_us: i64) -> bool {
        self.last_use.record(now, touch_interval_us, granularity_us)
    }

    /// The most recent use known here.
    pub(crate) fn last_used(&self) -> OffsetDateTime {
        from_us(self.last_use.used_us())
    }

    pub(crate) fn last_use(&self) -> &LastUse {
        &self.last_use
    }
}
