//! An in-process store for unit tests and single-process prototypes. Nothing survives a restart.

use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{FoundSession, Liveness, SessionStore, TokenMatch};
use crate::error::StoreError;
use crate::session::{RevocationReason, Session};
use crate::token::TokenHash;

#[derive(Clone)]
struct Row {
    session: Session,
    token_hash: TokenHash,
    previous_token_hash: Option<TokenHash>,
}

impl Row {
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
#[derive(Default)]
pub struct MemoryStore {
    rows: Mutex<Vec<Row>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn rows(&self) -> MutexGuard<'_, Vec<Row>> {
        // A panic while holding the lock cannot leave a row half-written (every update is a
        // plain field assignment), so a poisoned lock is still consistent.
        self.rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Most recently active first; on a tie the newer session first.
fn by_recency(a: &Session, b: &Session) -> std::cmp::Ordering {
    (b.last_active_at, b.created_at, b.id).cmp(&(a.last_active_at, a.created_at, a.id))
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn insert(
        &self,
        session: &Session,
        token_hash: &TokenHash,
        max_active: Option<u32>,
        live: Liveness,
    ) -> Result<Vec<TokenHash>, StoreError> {
        let mut rows = self.rows();
        if rows.iter().any(|r| {
            r.session.id == session.id
                || r.token_hash == *token_hash
                || r.previous_token_hash == Some(*token_hash)
        }) {
            return Err(StoreError::new(
                "insert a session",
                "duplicate session id or token hash",
            ));
        }
        let mut evicted = Vec::new();
        if let Some(max) = max_active {
            let keep = usize::try_from(max.saturating_sub(1)).unwrap_or(usize::MAX);
            let mut others: Vec<usize> = (0..rows.len())
                .filter(|&i| rows[i].session.user_id == session.user_id && rows[i].is_active(live))
                .collect();
            others.sort_by(|&a, &b| by_recency(&rows[a].session, &rows[b].session));
            for &i in others.iter().skip(keep) {
                evicted.push(rows[i].revoke(RevocationReason::SessionLimit, live.now));
            }
        }
        rows.push(Row {
            session: session.clone(),
            token_hash: *token_hash,
            previous_token_hash: None,
        });
        Ok(evicted)
    }

    async fn find_by_token(
        &self,
        token_hash: &TokenHash,
    ) -> Result<Option<FoundSession>, StoreError> {
        Ok(self.rows().iter().find_map(|r| {
            let matched = if r.token_hash == *token_hash {
                TokenMatch::Current
            } else if r.previous_token_hash == Some(*token_hash) {
                TokenMatch::Previous
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
        user_id: Uuid,
        session_id: Uuid,
        current: &TokenHash,
        new: &TokenHash,
        live: Liveness,
    ) -> Result<Option<Session>, StoreError> {
        let mut rows = self.rows();
        let Some(row) = rows.iter_mut().find(|r| {
            r.session.id == session_id
                && r.session.user_id == user_id
                && r.token_hash == *current
                && r.is_active(live)
        }) else {
            return Ok(None);
        };
        row.previous_token_hash = Some(row.token_hash);
        row.token_hash = *new;
        Ok(Some(row.session.clone()))
    }

    async fn list_active(&self, user_id: Uuid, live: Liveness) -> Result<Vec<Session>, StoreError> {
        let mut sessions: Vec<Session> = self
            .rows()
            .iter()
            .filter(|r| r.session.user_id == user_id && r.is_active(live))
            .map(|r| r.session.clone())
            .collect();
        sessions.sort_by(by_recency);
        Ok(sessions)
    }

    async fn revoke(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Option<TokenHash>, StoreError> {
        Ok(self
            .rows()
            .iter_mut()
            .find(|r| {
                r.session.id == session_id
                    && r.session.user_id == user_id
                    && r.session.revoked_at.is_none()
                    && r.session.expires_at > now
            })
            .map(|r| r.revoke(reason, now)))
    }

    async fn revoke_all(
        &self,
        user_id: Uuid,
        except: Option<Uuid>,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Vec<TokenHash>, StoreError> {
        Ok(self
            .rows()
            .iter_mut()
            .filter(|r| {
                r.session.user_id == user_id
                    && r.session.revoked_at.is_none()
                    && Some(r.session.id) != except
            })
            .map(|r| r.revoke(reason, now))
            .collect())
    }

    async fn touch(&self, touches: &[(Uuid, OffsetDateTime)]) -> Result<(), StoreError> {
        let mut rows = self.rows();
        for (id, at) in touches {
            if let Some(row) = rows
                .iter_mut()
                .find(|r| r.session.id == *id && r.session.revoked_at.is_none())
            {
                row.session.last_active_at = row.session.last_active_at.max(*at);
            }
        }
        Ok(())
    }

    async fn cleanup(
        &self,
        now: OffsetDateTime,
        revoked_before: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let mut rows = self.rows();
        let before = rows.len();
        rows.retain(|r| {
            r.session.expires_at >= now
                && r.session.revoked_at.is_none_or(|at| at >= revoked_before)
        });
        Ok(u64::try_from(before - rows.len()).unwrap_or(u64::MAX))
    }
}
