//! The most recent use of each session seen by this process, by user, so that idle expiry and
//! session-limit eviction judge on true activity: a use that was only in memory (not yet written,
//! at most one touch interval old) is not forgotten when a cache entry ends and the session is
//! read again, and is counted when a new sign-in decides which session to evict.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::future::Cache;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::anomaly::{Fingerprints, LastSeen};
use crate::cache::LastUse;
use crate::clock::{from_us, to_us};
use crate::session::Session;
use crate::user_id::UserId;

type Sessions = Arc<Mutex<Vec<(Uuid, Arc<LastUse>)>>>;

pub(crate) struct ActivityLog<U> {
    /// A user's record is read on every cache miss of their sessions, and an entry in use is
    /// reloaded at least once per cache TTL: a user unread for the idle timeout plus the cache
    /// TTL has no live session left to judge.
    users: Cache<U, Sessions>,
    idle_us: i64,
    /// Records kept per user, the most recently used first.
    per_user: usize,
    /// Uses older than this are written for sure (a touch interval plus a flush, with slack).
    unwritten_window_us: i64,
    fingerprints: Fingerprints,
}

/// How the log is bounded.
pub(crate) struct Bounds {
    pub(crate) idle: Duration,
    pub(crate) cache_ttl: Duration,
    pub(crate) users: u64,
    pub(crate) per_user: usize,
    pub(crate) unwritten_window: Duration,
}

impl<U: UserId> ActivityLog<U> {
    pub(crate) fn new(bounds: Bounds) -> Self {
        Self {
            users: Cache::builder()
                .max_capacity(bounds.users)
                .time_to_idle(bounds.idle.saturating_add(bounds.cache_ttl))
                .build(),
            idle_us: crate::clock::duration_us(bounds.idle),
            per_user: bounds.per_user.max(1),
            unwritten_window_us: crate::clock::duration_us(bounds.unwritten_window),
            fingerprints: Fingerprints::default(),
        }
    }

    /// The key that [`LastSeen`] records of this log are fingerprinted with.
    pub(crate) fn fingerprints(&self) -> &Fingerprints {
        &self.fingerprints
    }

    /// The use record of a session just read from the store; the same record as its earlier
    /// cache entries had, if any. Records of the user's sessions unused for longer than the idle
    /// timeout are dropped on the way.
    pub(crate) async fn track(&self, session: &Session<U>, now_us: i64) -> Arc<LastUse> {
        let (session_id, stored_us) = (session.id, to_us(session.last_active_at));
        let sessions = self
            .users
            .get_with_by_ref(&session.user_id, async {
                // Most users hold one session at a time: no room for four.
                Arc::new(Mutex::new(Vec::with_capacity(1)))
            })
            .await;
        let mut sessions = lock(&sessions);
        sessions.retain(|(id, used)| {
            *id == session_id || now_us.saturating_sub(used.used_us()) < self.idle_us
        });
        if let Some((_, used)) = sessions.iter().find(|(id, _)| *id == session_id) {
            used.merge_stored(stored_us);
            return Arc::clone(used);
        }
        let used = Arc::new(LastUse::new(
            stored_us,
            LastSeen::new(&self.fingerprints, session),
        ));
        if sessions.len() >= self.per_user {
            // Past the bound, the least recently used record goes.
            if let Some(oldest) = (0..sessions.len()).min_by_key(|&i| sessions[i].1.used_us()) {
                sessions.swap_remove(oldest);
            }
        }
        sessions.push((session_id, Arc::clone(&used)));
        used
    }

    /// Forgets the records of revoked sessions: `None` means every session of the user but
    /// `except`.
    pub(crate) async fn forget(
        &self,
        user_id: &U,
        sessions: Option<&[Uuid]>,
        except: Option<Uuid>,
    ) {
        if let Some(records) = self.users.get(user_id).await {
            lock(&records).retain(|(id, _)| match sessions {
                Some(revoked) => !revoked.contains(id),
                None => Some(*id) == except,
            });
        }
    }

    /// The most recent use seen here of each of the user's sessions that this process tracks.
    pub(crate) async fn last_uses(&self, user_id: &U) -> Vec<(Uuid, OffsetDateTime)> {
        match self.users.get(user_id).await {
            Some(sessions) => lock(&sessions)
                .iter()
                .map(|(id, used)| (*id, from_us(used.used_us())))
                .collect(),
            None => Vec::new(),
        }
    }

    /// The uses seen here of the user's sessions that the store may not know yet.
    pub(crate) async fn recent(&self, user_id: &U, now_us: i64) -> Vec<(Uuid, OffsetDateTime)> {
        match self.users.get(user_id).await {
            Some(sessions) => lock(&sessions)
                .iter()
                .filter(|(_, used)| {
                    now_us.saturating_sub(used.used_us()) <= self.unwritten_window_us
                })
                .map(|(id, used)| (*id, from_us(used.used_us())))
                .collect(),
            None => Vec::new(),
        }
    }
}

fn lock(sessions: &Sessions) -> std::sync::MutexGuard<'_, Vec<(Uuid, Arc<LastUse>)>> {
    // Every critical section is a plain scan or push: a panic cannot leave it half-done.
    sessions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
