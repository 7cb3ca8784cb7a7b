//! Where sessions live: the [`SessionStore`] trait and its PostgreSQL, SQLite, Redis and
//! in-memory implementations.
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
use crate::user_id::UserId;

mod memory;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod migrations;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod tables;
pub use memory::MemoryStore;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "sqlite"))))]
pub use tables::Tables;

#[cfg(any(feature = "postgres", feature = "redis"))]
mod feed;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PostgresStore;

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisStore;

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
    /// A token that a rotation replaced, the last one or any earlier one (the session's token
    /// family): presenting it again means it was copied.
    Retired,
}

/// A user's revocation epoch, read before a sign-in proves its credential and checked when its
/// session is inserted: every [`SessionStore::revoke_all`] advances it, so a sign-in that proved
/// a password before a change or reset cannot create a session after it.
///
/// Obtain one with [`SessionManager::fence`](crate::SessionManager::fence); stores build them
/// with [`Fence::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fence(u64);

impl Fence {
    /// The fence of a user whose sessions were never all revoked.
    pub const INITIAL: Self = Self(0);

    /// A fence at epoch `epoch` (for store implementations).
    #[must_use]
    pub const fn new(epoch: u64) -> Self {
        Self(epoch)
    }

    /// The epoch (for store implementations).
    #[must_use]
    pub const fn epoch(self) -> u64 {
        self.0
    }
}

/// A session to insert, with what the insert must check and apply in the same transaction.
#[derive(Debug, Clone, Copy)]
pub struct SessionInsert<'a, U = Uuid> {
    /// The new session.
    pub session: &'a Session<U>,
    /// Its token hash.
    pub token_hash: &'a TokenHash,
    /// When set and the user would hold more active sessions, the least recently active others
    /// (ties: the older first) are revoked with [`RevocationReason::SessionLimit`].
    pub max_active: Option<u32>,
    /// The window in which a session counts as active.
    pub live: Liveness,
    /// When set, insert only if the user's fence is still at this epoch.
    pub fence: Option<Fence>,
    /// Uses of the user's sessions seen in memory but perhaps not yet written: applied (forward
    /// only) before the least recently active sessions are chosen.
    pub recent_activity: &'a [(Uuid, OffsetDateTime)],
}

/// The outcome of [`SessionStore::insert`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// The session was stored; these token hashes were revoked for the session limit.
    Created {
        /// Token hashes of the sessions evicted by the limit.
        evicted: Vec<TokenHash>,
    },
    /// The user's fence moved past the one given: nothing was stored.
    Fenced,
}

/// A session found by token hash, revoked or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundSession<U = Uuid> {
    /// The session row.
    pub session: Session<U>,
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

/// What a store with cross-instance notifications reports to the manager's cache (see
/// [`SessionStore::subscribe`]).
#[derive(Debug)]
pub enum Invalidation {
    /// Another instance revoked or rotated out these token hashes. Complete `ack` once they are
    /// gone from the cache: the revoking instance may be waiting for it.
    Tokens {
        /// The token hashes to drop.
        hashes: Vec<TokenHash>,
        /// Completed (or dropped) once the hashes are dropped.
        ack: Ack,
    },
    /// The feed was provably live: everything committed early enough to matter has been
    /// delivered, so the cache may serve hits until `until`, and must not after it unless a newer
    /// lease arrives. Until a store sends its first lease, a cache fed by it is not trusted.
    Lease {
        /// End of the lease.
        until: tokio::time::Instant,
    },
    /// The notification connection is down: notifications may be lost until it is back, so the
    /// cache must not be trusted.
    FeedLost,
    /// The notification connection is back and listening: empty the cache. It is trusted again
    /// from the next lease on.
    FeedRestored,
}

/// The acknowledgement of an [`Invalidation::Tokens`]: [`done`](Self::done) once the hashes are
/// out of the cache. Dropping it counts as done (the cache is gone).
#[derive(Debug, Default)]
pub struct Ack(Option<tokio::sync::oneshot::Sender<()>>);

impl Ack {
    /// An acknowledgement nobody waits for.
    #[must_use]
    pub fn none() -> Self {
        Self(None)
    }

    /// An acknowledgement, and the receiver that resolves once it is done or dropped.
    #[must_use]
    pub fn channel() -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (done, wait) = tokio::sync::oneshot::channel();
        (Self(Some(done)), wait)
    }

    /// The hashes are out of the cache.
    pub fn done(self) {
        if let Some(done) = self.0 {
            // The waiter may have given up (its lease bound passed): nothing to tell then.
            let _ = done.send(());
        }
    }
}

/// Stores session rows of users identified by `U` (see [`UserId`]). Implemented by
/// `PostgresStore` (feature `postgres`), `SqliteStore` (feature `sqlite`), `RedisStore`
/// (feature `redis`) and [`MemoryStore`].
///
/// Implementations must make [`insert`](Self::insert) with a session limit and
/// [`rotate`](Self::rotate) atomic: two concurrent rotations of one token have exactly one winner.
#[async_trait]
pub trait SessionStore<U: UserId = Uuid>: Send + Sync + 'static {
    /// Inserts a new session, atomically with its checks: the fence (if given) must be unchanged,
    /// and with `max_active` set the least recently active other sessions beyond the limit are
    /// revoked in the same transaction, after `recent_activity` was applied. Must be serialised
    /// per user against [`revoke_all`](Self::revoke_all).
    async fn insert(&self, insert: SessionInsert<'_, U>) -> Result<Inserted, StoreError>;

    /// The user's current fence ([`Fence::INITIAL`] if their sessions were never all revoked).
    async fn fence(&self, user_id: &U) -> Result<Fence, StoreError>;

    /// Finds the session whose current token hash, or one of whose rotated-out hashes, is
    /// `token_hash`, in any state.
    async fn find_by_token(
        &self,
        token_hash: &TokenHash,
    ) -> Result<Option<FoundSession<U>>, StoreError>;

    /// Replaces the session's token hash `current` with `new`, keeping `current` among the
    /// session's retired hashes for as long as the session row exists, if the session belongs to
    /// `user_id`, is active, and `current` is still its token.
    /// Returns the updated session, or `None` when any condition failed (another rotation won).
    async fn rotate(
        &self,
        user_id: &U,
        session_id: Uuid,
        current: &TokenHash,
        new: &TokenHash,
        live: Liveness,
    ) -> Result<Option<Session<U>>, StoreError>;

    /// The user's active sessions, most recently active first (ties: the newer first).
    async fn list_active(&self, user_id: &U, live: Liveness)
    -> Result<Vec<Session<U>>, StoreError>;

    /// Revokes one active session of `user_id`; returns its token hash, or `None` when no active
    /// session of that user has that id.
    async fn revoke(
        &self,
        user_id: &U,
        session_id: Uuid,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Option<TokenHash>, StoreError>;

    /// Advances the user's fence and revokes every not-yet-revoked session of `user_id` except
    /// `except`, in one transaction; returns the revoked hashes.
    async fn revoke_all(
        &self,
        user_id: &U,
        except: Option<Uuid>,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Vec<TokenHash>, StoreError>;

    /// Moves `last_active_at` forward (never back) for live sessions, in one batch.
    async fn touch(&self, touches: &[(Uuid, OffsetDateTime)]) -> Result<(), StoreError>;

    /// Deletes sessions that expired before `now` and sessions revoked before `revoked_before`,
    /// with their retired token hashes; returns how many sessions went.
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

/// The order of [`SessionStore::list_active`]: most recently active first; on a tie the newer
/// session first.
pub(crate) fn by_recency<U>(a: &Session<U>, b: &Session<U>) -> std::cmp::Ordering {
    (b.last_active_at, b.created_at, b.id).cmp(&(a.last_active_at, a.created_at, a.id))
}

/// Longest device name kept, in bytes.
pub(crate) const MAX_DEVICE_NAME_LEN: usize = 100;
