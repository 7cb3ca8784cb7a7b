//! Where sessions live: the [`SessionStore`] trait and its PostgreSQL, SQLite and in-memory
//! implementations.
//!
//! Every statement a user can reach filters by `user_id` in the store itself, so a session id from
//! another account matches nothing. Revocation is a soft delete: the row keeps `revoked_at` and
//! `revoked_reason` until [`SessionStore::cleanup`] purges it.

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::error::StoreError;
use crate::session::{RevocationReason, Session};
use crate::token::TokenHash;

mod memory;
pub use memory::MemoryStore;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PostgresStore;

#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::SqliteStore;

/// Which of a session's hashes a presented token matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMatch {
    /// The session's current token.
    Current,
    /// The token that the last rotation replaced: presenting it again means it was copied.
    Previous,
}

/// A session found by token hash, revoked or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundSession {
    /// The session row.
    pub session: Session,
    /// Whether the current or the rotated-out token matched.
    pub matched: TokenMatch,
}

/// The window in which a session counts as active: not revoked, `expires_at > now`, and
/// `last_active_at > idle_cutoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// The current time.
    pub now: OffsetDateTime,
    /// Sessions last active at or before this are idle-dead.
    pub idle_cutoff: OffsetDateTime,
}

/// A change of sessions that another instance made, as a store with cross-instance notifications
/// reports it (see [`SessionStore::subscribe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// These token hashes were revoked or rotated out.
    Tokens(Vec<TokenHash>),
    /// The notification connection is down: notifications may be lost until it is back, so the
    /// cache must not be trusted.
    FeedLost,
    /// The notification connection is back and listening: empty the cache, then trust it again.
    FeedRestored,
}

/// Stores session rows. Implemented by [`PostgresStore`], [`SqliteStore`] and [`MemoryStore`].
///
/// Implementations must make [`insert`](Self::insert) with a session limit and
/// [`rotate`](Self::rotate) atomic: two concurrent rotations of one token have exactly one winner.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Inserts a new session stored under `token_hash`. When `max_active` is set and the user now
    /// holds more active sessions, the least recently active others (ties: the older first) are
    /// revoked with [`RevocationReason::SessionLimit`] in the same transaction; their token hashes
    /// are returned.
    async fn insert(
        &self,
        session: &Session,
        token_hash: &TokenHash,
        max_active: Option<u32>,
        live: Liveness,
    ) -> Result<Vec<TokenHash>, StoreError>;

    /// Finds the session whose current or previous token hash is `token_hash`, in any state.
    async fn find_by_token(
        &self,
        token_hash: &TokenHash,
    ) -> Result<Option<FoundSession>, StoreError>;

    /// Replaces the session's token hash `current` with `new`, keeping `current` as the previous
    /// hash, if the session belongs to `user_id`, is active, and `current` is still its token.
    /// Returns the updated session, or `None` when any condition failed (another rotation won).
    async fn rotate(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        current: &TokenHash,
        new: &TokenHash,
        live: Liveness,
    ) -> Result<Option<Session>, StoreError>;

    /// The user's active sessions, most recently active first (ties: the newer first).
    async fn list_active(&self, user_id: Uuid, live: Liveness) -> Result<Vec<Session>, StoreError>;

    /// Revokes one active session of `user_id`; returns its token hash, or `None` when no active
    /// session of that user has that id.
    async fn revoke(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Option<TokenHash>, StoreError>;

    /// Revokes every not-yet-revoked session of `user_id` except `except`; returns their hashes.
    async fn revoke_all(
        &self,
        user_id: Uuid,
        except: Option<Uuid>,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Vec<TokenHash>, StoreError>;

    /// Moves `last_active_at` forward (never back) for live sessions, in one batch.
    async fn touch(&self, touches: &[(Uuid, OffsetDateTime)]) -> Result<(), StoreError>;

    /// Deletes sessions that expired before `now` and sessions revoked before `revoked_before`;
    /// returns how many rows went.
    async fn cleanup(
        &self,
        now: OffsetDateTime,
        revoked_before: OffsetDateTime,
    ) -> Result<u64, StoreError>;

    /// Cross-instance invalidations, for stores shared by several processes. The default (`None`)
    /// means this process is the only writer. Called once, by the manager, at start.
    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<Invalidation>> {
        None
    }
}

/// Longest device name kept, in bytes.
pub(crate) const MAX_DEVICE_NAME_LEN: usize = 100;
