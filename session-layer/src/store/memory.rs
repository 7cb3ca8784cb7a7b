//! An in-process store for unit tests and single-process prototypes. Nothing survives a restart.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    Fence, FoundSession, Inserted, Liveness, SessionInsert, SessionStore, TokenMatch, by_recency,
};
use crate::error::StoreError;
use crate::session::{RevocationReason, Session};
use crate::token::TokenHash;
use crate::user_id::UserId;

#[derive(Clone)]
struct Row<U> {
    session: Session<U>,
    token_hash: TokenHash,
    /// Every hash a rotation replaced.
    retired: Vec<TokenHash>,
}

impl<U> Row<U> {
    fn is_active(&self, live: Liveness) -> bool {
        let s = &self.session;
        s.revoked_at.is_none() && s.expires_at > live.now && s.last_active_at > live.idle_cutoff
    }

    fn revoke(&mut self, reason: RevocationReason, now: OffsetDateTime) -> TokenHash {
        self.session.revoked_at = Some(now);
        self.session.revoked_reason = Some(reason);
        self.token_hash
    }
}

/// Sessions in a `HashMap` behind one mutex: the same semantics as the SQL stores, none of their
/// durability. Use it in tests.
pub struct MemoryStore<U = Uuid> {
    state: Mutex<State<U>>,
}

struct State<U> {
    rows: Vec<Row<U>>,
    fences: HashMap<U, u64>,
}

impl<U> Default for MemoryStore<U> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                rows: Vec::new(),
                fences: HashMap::new(),
            }),
        }
    }
}

impl<U> std::fmt::Debug for MemoryStore<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store for [`Uuid`] user ids; `MemoryStore::<I>::default()` for another
    /// [`UserId`] type.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl<U> MemoryStore<U> {
    fn state(&self) -> MutexGuard<'_, State<U>> {
        // A panic while holding the lock cannot leave a row half-written (every update is a
        // plain field assignment), so a poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl<U: UserId> SessionStore<U> for MemoryStore<U> {
    async fn insert(&self, insert: SessionInsert<'_, U>) -> Result<Inserted, StoreError> {
        let (session, token_hash) = (insert.session, *insert.token_hash);
        let mut state = self.state();
        let State { rows, fences } = &mut *state;
        if insert
            .fence
            .is_some_and(|f| f.epoch() != fences.get(&session.user_id).copied().unwrap_or(0))
        {
            return Ok(Inserted::Fenced);
        }
        if rows.iter().any(|r| {
            r.session.id == session.id
                || r.token_hash == token_hash
                || r.retired.contains(&token_hash)
        }) {
            return Err(StoreError::new(
                "insert a session",
                "duplicate session id or token hash",
            ));
        }
        let mut evicted = Vec::new();
        if let Some(max) = insert.max_active {
            touch_rows(rows, insert.recent_activity);
            let keep = usize::try_from(max.saturating_sub(1)).unwrap_or(usize::MAX);
            let mut others: Vec<usize> = (0..rows.len())
                .filter(|&i| {
                    rows[i].session.user_id == session.user_id && rows[i].is_active(insert.live)
                })
                .collect();
            others.sort_by(|&a, &b| by_recency(&rows[a].session, &rows[b].session));
            for &i in others.iter().skip(keep) {
                evicted.push(rows[i].revoke(RevocationReason::SessionLimit, insert.live.now));
            }
        }
        rows.push(Row {
            session: session.clone(),
            token_hash,
            retired: Vec::new(),
        });
        Ok(Inserted::Created { evicted })
    }

    async fn fence(&self, user_id: &U) -> Result<Fence, StoreError> {
        Ok(Fence::new(
            self.state().fences.get(user_id).copied().unwrap_or(0),
        ))
    }

    async fn find_by_token(
        &self,
        token_hash: &TokenHash,
    ) -> Result<Option<FoundSession<U>>, StoreError> {
        Ok(self.state().rows.iter().find_map(|r| {
            let matched = if r.token_hash == *token_hash {
                TokenMatch::Current
            } else if r.retired.contains(token_hash) {
                TokenMatch::Retired
            } else {
                return None;
            };
            Some(FoundSession {
                session: r.session.clone(),
                matched,
            })
        }))
    }

    async fn rotate(
        &self,
        user_id: &U,
        session_id: Uuid,
        current: &TokenHash,
        new: &TokenHash,
        live: Liveness,
    ) -> Result<Option<Session<U>>, StoreError> {
        let mut state = self.state();
        let Some(row) = state.rows.iter_mut().find(|r| {
            r.session.id == session_id
                && r.session.user_id == *user_id
                && r.token_hash == *current
                && r.is_active(live)
        }) else {
            return Ok(None);
        };
        row.retired.push(row.token_hash);
        row.token_hash = *new;
        Ok(Some(row.session.clone()))
    }

    async fn list_active(
        &self,
        user_id: &U,
        live: Liveness,
    ) -> Result<Vec<Session<U>>, StoreError> {
        let mut sessions: Vec<Session<U>> = self
            .state()
            .rows
            .iter()
            .filter(|r| r.session.user_id == *user_id && r.is_active(live))
            .map(|r| r.session.clone())
            .collect();
        sessions.sort_by(by_recency);
        Ok(sessions)
    }

    async fn revoke(
        &self,
        user_id: &U,
        session_id: Uuid,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Option<TokenHash>, StoreError> {
        Ok(self
            .state()
            .rows
            .iter_mut()
            .find(|r| {
                r.session.id == session_id
                    && r.session.user_id == *user_id
                    && r.session.revoked_at.is_none()
                    && r.session.expires_at > now
            })
            .map(|r| r.revoke(reason, now)))
    }

    async fn revoke_all(
        &self,
        user_id: &U,
        except: Option<Uuid>,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Vec<TokenHash>, StoreError> {
        let mut state = self.state();
        *state.fences.entry(user_id.clone()).or_insert(0) += 1;
        Ok(state
            .rows
            .iter_mut()
            .filter(|r| {
                r.session.user_id == *user_id
                    && r.session.revoked_at.is_none()
                    && Some(r.session.id) != except
            })
            .map(|r| r.revoke(reason, now))
            .collect())
    }

    async fn touch(&self, touches: &[(Uuid, OffsetDateTime)]) -> Result<(), StoreError> {
        touch_rows(&mut self.state().rows, touches);
        Ok(())
    }

    async fn cleanup(
        &self,
        now: OffsetDateTime,
        revoked_before: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let rows = &mut self.state().rows;
        let before = rows.len();
        rows.retain(|r| {
            r.session.expires_at >= now
                && r.session.revoked_at.is_none_or(|at| at >= revoked_before)
        });
        Ok(u64::try_from(before - rows.len()).unwrap_or(u64::MAX))
    }
}

/// Moves `last_active_at` forward (never back) for live sessions.
fn touch_rows<U>(rows: &mut [Row<U>], touches: &[(Uuid, OffsetDateTime)]) {
    for (id, at) in touches {
        if let Some(row) = rows
            .iter_mut()
            .find(|r| r.session.id == *id && r.session.revoked_at.is_none())
        {
            row.session.last_active_at = row.session.last_active_at.max(*at);
        }
    }
}
