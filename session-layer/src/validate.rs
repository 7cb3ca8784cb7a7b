//! Request validation: the cache-hit path the layer takes, and the store lookup behind a miss.
//! Reuse of a rotated-out token is detected here and reported to the manager, which revokes.

use std::sync::Arc;

use crate::activity::ActivityLog;
use crate::anomaly::{Observation, Origin};
use crate::cache::{Fetched, Judgement, Loaded, Miss, SessionCache, SessionEntry};
use crate::clock::{Clock, to_us};
use crate::error::StoreError;
use crate::metrics::Counters;
use crate::session::Session;
use crate::store::{SessionStore, TokenMatch};
use crate::token::TokenHash;
use crate::touch::TouchSender;
use crate::user_id::UserId;

/// What the cache alone says about a token.
pub(crate) enum Cached<U> {
    /// A usable session; its use is recorded.
    Hit(Arc<SessionEntry<U>>),
    /// Past its absolute lifetime: refused without asking the store.
    Refused,
    /// The store must be asked.
    Unknown,
}

/// What a store-backed check concluded.
pub(crate) enum Checked<U> {
    Valid(Arc<SessionEntry<U>>),
    /// Unknown, revoked, expired or idle.
    Invalid,
    /// A rotated-out token of this session came back: the session must be revoked.
    Reused(Session<U>),
    Failed(StoreError),
}

pub(crate) struct Validator<U: UserId> {
    store: Arc<dyn SessionStore<U>>,
    cache: Arc<SessionCache<U>>,
    activity: ActivityLog<U>,
    touches: TouchSender,
    clock: Clock,
    idle_us: i64,
    touch_interval_us: i64,
    /// Uses closer together than this are recorded once (see [`LastUse`](crate::cache::LastUse)).
    use_granularity_us: i64,
    counters: Counters,
}

/// The settings a [`Validator`] judges by.
pub(crate) struct Judging {
    pub(crate) clock: Clock,
    pub(crate) idle_us: i64,
    pub(crate) touch_interval_us: i64,
}

impl<U: UserId> Validator<U> {
    pub(crate) fn new(
        store: Arc<dyn SessionStore<U>>,
        cache: Arc<SessionCache<U>>,
        activity: ActivityLog<U>,
        touches: TouchSender,
        judging: Judging,
        counters: Counters,
    ) -> Self {
        Self {
            store,
            cache,
            activity,
            touches,
            clock: judging.clock,
            idle_us: judging.idle_us,
            touch_interval_us: judging.touch_interval_us,
            // At most one write per millisecond however many requests carry the session, and
            // idle expiry never more than that early.
            use_granularity_us: (judging.idle_us / 128).clamp(1, 1_000),
            counters,
        }
    }

    pub(crate) fn cache(&self) -> &Arc<SessionCache<U>> {
        &self.cache
    }

    pub(crate) fn activity(&self) -> &ActivityLog<U> {
        &self.activity
    }

    /// The hot path: answered from memory, without waiting.
    pub(crate) fn cached(&self, hash: &TokenHash) -> Cached<U> {
        let Some(entry) = self.cache.get_now(hash, self.clock.monotonic_us()) else {
            return Cached::Unknown;
        };
        let now = self.clock.wall_us();
        match entry.judge(now, self.idle_us) {
            Judgement::Usable => {
                self.counters.cache_hits.increment(1);
                self.record_use(&entry, now);
                Cached::Hit(entry)
            }
            Judgement::Expired => Cached::Refused,
            // Another instance may have seen a more recent use: ask the store.
            Judgement::Idle => Cached::Unknown,
        }
    }

    /// A cache miss: one store query per key at a time.
    pub(crate) async fn check(&self, hash: TokenHash) -> Checked<U> {
        self.counters.cache_misses.increment(1);
        let started = self.clock.monotonic_us();
        let now = self.clock.wall_us();
        let fetched = if self.cache.holds(&hash) {
            self.cache
                .reload(
                    hash,
                    started,
                    |cached| {
                        self.cache.is_fresh(cached, started)
                            && cached.judge(now, self.idle_us) == Judgement::Usable
                    },
                    || self.load(hash, now, started, None),
                )
                .await
        } else {
            self.cache
                .load_uncached(hash, started, |miss| self.load(hash, now, started, miss))
                .await
        };
        match fetched {
            Fetched::Entry(entry) if entry.judge(now, self.idle_us) == Judgement::Usable => {
                self.record_use(&entry, now);
                Checked::Valid(entry)
            }
            Fetched::Entry(_) => Checked::Invalid,
            Fetched::Rejected(checked) => checked,
        }
    }

    /// What changed in where `entry`'s session is used from (see [`crate::anomaly`]).
    pub(crate) fn observe(&self, entry: &SessionEntry<U>, origin: Origin<'_>) -> Observation {
        entry
            .last_use()
            .seen
            .observe(self.activity.fingerprints(), &entry.session, origin, || {
                self.clock.monotonic_us()
            })
    }

    fn record_use(&self, entry: &SessionEntry<U>, now: i64) {
        if entry.record_use(now, self.touch_interval_us, self.use_granularity_us) {
            self.touches.touch(entry.session.id, now);
        }
    }

    /// Reads the token's session from the store, unless what the cache remembers of it (`miss`)
    /// says that it is useless, or that a lookup which finished after this request `started`
    /// failed.
    async fn load(
        &self,
        hash: TokenHash,
        now: i64,
        started: i64,
        miss: Option<Miss>,
    ) -> Loaded<U, Checked<U>> {
        match miss {
            Some(Miss::Useless) => {
                self.counters.miss_cache_hits.increment(1);
                return Loaded::Rejected(Checked::Invalid);
            }
            // Lookups of one token queue one behind the other: share the failure of the one
            // ahead instead of each waiting out its own.
            Some(Miss::Failed { at_us }) if at_us > started => {
                return Loaded::Rejected(Checked::Failed(StoreError::new(
                    "look up a session",
                    "a lookup of the same token queued ahead of this one just failed",
                )));
            }
            Some(Miss::Failed { .. }) | None => {}
        }
        self.counters.store_queries.increment(1);
        let found = match self.store.find_by_token(&hash).await {
            Ok(Some(found)) => found,
            Ok(None) => return Loaded::Remember(Miss::Useless, Checked::Invalid),
            Err(error) => {
                let at_us = self.clock.monotonic_us();
                return Loaded::Remember(Miss::Failed { at_us }, Checked::Failed(error));
            }
        };
        let session = found.session;
        let revoked = session.revoked_at.is_some();
        // Expiry is judged on this instance's wall clock, which may be stepped back later: only
        // a revocation is remembered as final.
        let expired = now >= to_us(session.expires_at);
        if found.matched == TokenMatch::Retired && !revoked && !expired {
            return Loaded::Rejected(Checked::Reused(session));
        }
        if revoked {
            return Loaded::Remember(Miss::Useless, Checked::Invalid);
        }
        if expired {
            return Loaded::Rejected(Checked::Invalid);
        }
        let last_use = self.activity.track(&session, now).await;
        let entry = SessionEntry::new(session, hash, last_use, self.clock.monotonic_us());
        match entry.judge(now, self.idle_us) {
            Judgement::Usable => Loaded::Usable(Arc::new(entry)),
            Judgement::Expired | Judgement::Idle => Loaded::Rejected(Checked::Invalid),
        }
    }
}
