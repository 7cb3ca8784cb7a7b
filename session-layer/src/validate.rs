//! Request validation: the cache-hit path the layer takes, the store lookup behind a miss, and
//! reuse detection for rotated-out tokens.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::cache::{Loaded, SessionEntry, Usability, from_us, now_us};
use crate::error::{Error, StoreError};
use crate::extract::{CurrentSession, Transport};
use crate::manager::SessionManager;
use crate::session::{RevocationReason, Session};
use crate::store::TokenMatch;
use crate::token::TokenHash;

/// Why a token did not yield a usable session on a cache miss.
enum Verdict {
    Unusable,
    Reused(Session),
    Failed(StoreError),
}

impl SessionManager {
    /// Validates an encoded token as the layer does (cache first, then the store).
    /// `Ok(None)` for a malformed, unknown, expired, idle or revoked token.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the store cannot be reached on a cache miss: fail closed.
    pub async fn validate(&self, token: &str) -> Result<Option<CurrentSession>, Error> {
        let Ok(hash) = TokenHash::from_encoded(token) else {
            return Ok(None);
        };
        let entry = match self.authenticate_cached(&hash) {
            Some(cached) => cached,
            None => self.authenticate_slow(hash).await?,
        };
        Ok(entry.map(|entry| CurrentSession::new(entry, Transport::Bearer)))
    }

    /// The hot path: a cache hit answered without waiting. `None` means "go to the store".
    pub(crate) fn authenticate_cached(
        &self,
        hash: &TokenHash,
    ) -> Option<Option<Arc<SessionEntry>>> {
        let inner = &self.inner;
        let now = now_us();
        let entry = inner.cache.peek(hash, now)?;
        match entry.use_at(now, inner.idle_us, inner.touch_interval_us) {
            Usability::Usable { touch_due } => {
                inner.counters.cache_hits.increment(1);
                if touch_due {
                    inner.touches.touch(entry.session.id, now);
                }
                Some(Some(entry))
            }
            Usability::Expired => Some(None),
            // Another instance may have seen a more recent use: ask the store.
            Usability::Idle => None,
        }
    }

    /// A cache miss: one store query per key at a time, and reuse detection.
    pub(crate) async fn authenticate_slow(
        &self,
        hash: TokenHash,
    ) -> Result<Option<Arc<SessionEntry>>, StoreError> {
        let inner = &self.inner;
        inner.counters.cache_misses.increment(1);
        let now_us = now_us();
        let loaded = inner
            .cache
            .get_or_load(
                hash,
                |cached| {
                    matches!(
                        cached.use_at(now_us, inner.idle_us, i64::MAX),
                        Usability::Usable { .. }
                    )
                },
                || self.load(hash, now_us),
            )
            .await;
        match loaded {
            Loaded::Entry(entry) => {
                match entry.use_at(now_us, inner.idle_us, inner.touch_interval_us) {
                    Usability::Usable { touch_due } => {
                        if touch_due {
                            inner.touches.touch(entry.session.id, now_us);
                        }
                        Ok(Some(entry))
                    }
                    Usability::Expired | Usability::Idle => Ok(None),
                }
            }
            Loaded::Other(Verdict::Unusable) => Ok(None),
            Loaded::Other(Verdict::Failed(error)) => {
                inner.counters.store_errors.increment(1);
                tracing::error!(%error, "session lookup failed; request treated as unauthenticated-unavailable");
                Err(error)
            }
            Loaded::Other(Verdict::Reused(session)) => {
                self.handle_reuse(&session).await;
                Ok(None)
            }
        }
    }

    async fn load(&self, hash: TokenHash, now_us: i64) -> Loaded<Verdict> {
        let failures = &self.inner.last_lookup_failure_us;
        if failures.load(Ordering::Acquire) >= now_us {
            // A lookup that started no earlier than this request failed: share its outcome.
            return Loaded::Other(Verdict::Failed(StoreError::new(
                "look up a session",
                "a lookup queued ahead of this one just failed",
            )));
        }
        self.inner.counters.store_queries.increment(1);
        let found = match self.inner.store.find_by_token(&hash).await {
            Ok(Some(found)) => found,
            Ok(None) => return Loaded::Other(Verdict::Unusable),
            Err(error) => {
                failures.fetch_max(crate::cache::now_us(), Ordering::AcqRel);
                return Loaded::Other(Verdict::Failed(error));
            }
        };
        let session = found.session;
        match found.matched {
            TokenMatch::Previous => Loaded::Other(Verdict::Reused(session)),
            TokenMatch::Current => {
                let now = from_us(now_us);
                if session.is_usable(now, session.last_active_at, self.inner.config.idle_timeout) {
                    Loaded::Entry(Arc::new(SessionEntry::new(session, hash)))
                } else {
                    Loaded::Other(Verdict::Unusable)
                }
            }
        }
    }

    /// A rotated-out token came back: whoever holds it copied it. End the session everywhere.
    async fn handle_reuse(&self, session: &Session) {
        if session.revoked_at.is_some() {
            return;
        }
        self.inner.counters.token_reuse.increment(1);
        tracing::warn!(
            session_id = %session.id,
            user_id = %session.user_id,
            "rotated-out session token presented again; revoking the session"
        );
        if let Err(error) = self
            .revoke(session.user_id, session.id, RevocationReason::TokenReuse)
            .await
        {
            tracing::error!(%error, session_id = %session.id, "could not revoke a session after token reuse");
        }
    }
}
