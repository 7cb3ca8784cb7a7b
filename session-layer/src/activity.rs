//! The most recent use of each session seen by this process, by user, so that idle expiry and
//! session-limit eviction judge on true activity: a use that was only in memory (not yet written,
//! at most one touch interval old) is not forgotten when a cache entry ends and the session is
//! read again, and is counted when a new sign-in decides which session to evict.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::future::Cache;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::cache::LastUse;
use crate::clock::from_us;

type Sessions = Arc<Mutex<Vec<(Uuid, Arc<LastUse>)>>>;

pub(crate) struct ActivityLog {
    /// Users idle longer than the idle timeout are dropped: their sessions are dead anyway.
    users: Cache<Uuid, Sessions>,
    idle_us: i64,
}

impl ActivityLog {
    pub(crate) fn new(idle: Duration, capacity: u64) -> Self {
        Self {
            users: Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(idle)
                .build(),
            idle_us: crate::clock::duration_us(idle),
        }
    }

    /// The use record of a session just read from the store with `stored_us` as its
    /// `last_active_at`; the same record as its earlier cache entries had, if any. Records of
    /// the user's sessions unused for longer than the idle timeout are dropped on the way.
    pub(crate) async fn track(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        stored_us: i64,
        now_us: i64,
    ) -> Arc<LastUse> {
        let sessions = self
            .users
            .get_with(user_id, async { Sessions::default() })
            .await;
        let mut sessions = lock(&sessions);
        sessions.retain(|(id, used)| {
            *id == session_id || now_us.saturating_sub(used.used_us()) < self.idle_us
        });
        if let Some((_, used)) = sessions.iter().find(|(id, _)| *id == session_id) {
            used.merge_stored(stored_us);
            return Arc::clone(used);
        }
        let used = Arc::new(LastUse::new(stored_us));
        sessions.push((session_id, Arc::clone(&used)));
        used
    }

    /// The most recent use seen here of each of the user's sessions.
    pub(crate) async fn recent(&self, user_id: Uuid) -> Vec<(Uuid, OffsetDateTime)> {
        match self.users.get(&user_id).await {
            Some(sessions) => lock(&sessions)
                .iter()
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
