//! SQLite store, for a single instance (the demo's default, small deployments, tests).

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Fence, FoundSession, Inserted, Liveness, SessionInsert, SessionStore, TokenMatch};
use crate::error::StoreError;
use crate::session::{RevocationReason, Session};
use crate::token::TokenHash;

/// The session columns, as a macro so that every statement is one `&'static str` (`concat!`).
macro_rules! columns {
    () => {
        "id, user_id, device, device_type, device_name, user_agent, ip_address, \
         created_at, last_active_at, expires_at, revoked_at, revoked_reason"
    };
}

/// Sessions in an SQLite database file (WAL mode). One process only: SQLite has no
/// cross-process notifications, so a second instance would not see this one's revocations in
/// its cache.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use session_layer::SqliteStore;
///
/// let store = SqliteStore::connect("sqlite://sessions.db").await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Wraps an existing pool. Use WAL mode and a busy timeout, as [`connect`](Self::connect) does.
    #[must_use]
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// Opens (creating if missing) the database at `url` (`sqlite://path.db`, or
    /// `sqlite::memory:`), in WAL mode with a 5 s busy timeout.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the URL is invalid or the file cannot be opened.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        const OP: &str = "open the SQLite database";
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::new(OP, e))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        // An in-memory database exists per connection, so it must be a single one.
        let max = if url.contains(":memory:") { 1 } else { 8 };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        Ok(Self::new(pool))
    }

    /// The underlying pool, to share with the application.
    #[must_use]
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Creates or upgrades the `sessions`, `session_retired_tokens` and `session_user_fences`
    /// tables. Its bookkeeping lives in
    /// `_session_layer_migrations`, apart from the application's own sqlx migrations.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when a migration fails.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut migrator = sqlx::migrate!("migrations/sqlite");
        migrator.dangerous_set_table_name("_session_layer_migrations");
        migrator
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::new("run the session-layer SQLite migrations", e))
    }

    async fn begin(&self, operation: &'static str) -> Result<Transaction<'_, Sqlite>, StoreError> {
        // `BEGIN IMMEDIATE` takes the write lock up front, so a transaction that reads before
        // it writes cannot fail to upgrade and deadlock with another writer.
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| StoreError::new(operation, e))
    }
}

/// Reads an IP column; a value that does not parse is dropped, not fatal.
fn parse_ip(text: Option<String>) -> Option<IpAddr> {
    text.and_then(|t| t.parse().ok())
}

fn ip_text(ip: Option<IpAddr>) -> Option<String> {
    ip.map(|ip| ip.to_string())
}

/// Timestamps are stored as integer microseconds since the epoch (UTC).
fn micros(t: OffsetDateTime) -> i64 {
    // ±100 years of microseconds is far inside i64; the config caps every duration at that.
    i64::try_from(t.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

fn from_micros(us: i64) -> Result<OffsetDateTime, sqlx::Error> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn session_from_row(row: &SqliteRow) -> Result<Session, sqlx::Error> {
    let device_type: String = row.try_get("device_type")?;
    let reason: Option<String> = row.try_get("revoked_reason")?;
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    Ok(Session {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        device: row.try_get("device")?,
        device_type: device_type.parse().unwrap_or_default(),
        device_name: row.try_get("device_name")?,
        user_agent: row.try_get("user_agent")?,
        ip_address: parse_ip(row.try_get("ip_address")?),
        created_at: from_micros(row.try_get("created_at")?)?,
        last_active_at: from_micros(row.try_get("last_active_at")?)?,
        expires_at: from_micros(row.try_get("expires_at")?)?,
        revoked_at: revoked_at.map(from_micros).transpose()?,
        revoked_reason: reason
            .map(|r| r.parse())
            .transpose()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
    })
}

fn hashes_from_rows(
    rows: &[SqliteRow],
    operation: &'static str,
) -> Result<Vec<TokenHash>, StoreError> {
    rows.iter()
        .map(|row| {
            let bytes: Vec<u8> = row.try_get("token_hash")?;
            TokenHash::try_from(bytes.as_slice()).map_err(|e| sqlx::Error::Decode(Box::new(e)))
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(|e| StoreError::new(operation, e))
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn insert(&self, insert: SessionInsert<'_>) -> Result<Inserted, StoreError> {
        const OP: &str = "insert a session";
        let session = insert.session;
        // `BEGIN IMMEDIATE` serialises this transaction with every other writer, `revoke_all`
        // included, so the fence read below cannot go stale before the commit.
        let mut tx = self.begin(OP).await?;
        if let Some(fence) = insert.fence
            && read_fence(&mut tx, session.user_id)
                .await
                .map_err(|e| StoreError::new(OP, e))?
                != fence
        {
            return Ok(Inserted::Fenced);
        }
        sqlx::query(
            "INSERT INTO sessions (id, user_id, token_hash, device, device_type, device_name, \
             user_agent, ip_address, created_at, last_active_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .bind(session.id)
        .bind(session.user_id)
        .bind(insert.token_hash.as_bytes().as_slice())
        .bind(&session.device)
        .bind(session.device_type.as_str())
        .bind(&session.device_name)
        .bind(&session.user_agent)
        .bind(ip_text(session.ip_address))
        .bind(micros(session.created_at))
        .bind(micros(session.last_active_at))
        .bind(micros(session.expires_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::new(OP, e))?;
        let Some(max) = insert.max_active else {
            tx.commit().await.map_err(|e| StoreError::new(OP, e))?;
            return Ok(Inserted::Created {
                evicted: Vec::new(),
            });
        };
        touch_in(&mut tx, insert.recent_activity)
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        let live = insert.live;
        let rows = sqlx::query(
            "UPDATE sessions SET revoked_at = MAX(?3, created_at), \
               revoked_reason = 'session_limit' \
             WHERE id IN (SELECT id FROM sessions \
                 WHERE user_id = ?1 AND id <> ?2 AND revoked_at IS NULL \
                   AND expires_at > ?3 AND last_active_at > ?4 \
                 ORDER BY last_active_at DESC, created_at DESC, id DESC \
                 LIMIT -1 OFFSET ?5) \
             RETURNING token_hash",
        )
        .bind(session.user_id)
        .bind(session.id)
        .bind(micros(live.now))
        .bind(micros(live.idle_cutoff))
        .bind(i64::from(max.saturating_sub(1)))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| StoreError::new(OP, e))?;
        let evicted = hashes_from_rows(&rows, OP)?;
        tx.commit().await.map_err(|e| StoreError::new(OP, e))?;
        Ok(Inserted::Created { evicted })
    }

    async fn fence(&self, user_id: Uuid) -> Result<Fence, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| StoreError::new("read a user's fence", e))?;
        read_fence(&mut conn, user_id)
            .await
            .map_err(|e| StoreError::new("read a user's fence", e))
    }

    async fn find_by_token(
        &self,
        token_hash: &TokenHash,
    ) -> Result<Option<FoundSession>, StoreError> {
        const OP: &str = "look up a session";
        // A hash is random and 256 bits long, so at most one row matches either branch; each
        // branch is one plain index probe.
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            ", TRUE AS is_current FROM sessions WHERE token_hash = ?1 \
             UNION ALL \
             SELECT ",
            columns!(),
            ", FALSE FROM session_retired_tokens r JOIN sessions s ON s.id = r.session_id \
             WHERE r.token_hash = ?1 \
             LIMIT 1"
        ))
        .bind(token_hash.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| StoreError::new(OP, e))?;
        let Some(row) = row else { return Ok(None) };
        let is_current: bool = row
            .try_get("is_current")
            .map_err(|e| StoreError::new(OP, e))?;
        Ok(Some(FoundSession {
            session: session_from_row(&row).map_err(|e| StoreError::new(OP, e))?,
            matched: if is_current {
                TokenMatch::Current
            } else {
                TokenMatch::Retired
            },
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
        const OP: &str = "rotate a session token";
        let mut tx = self.begin(OP).await?;
        let row = sqlx::query(concat!(
            "UPDATE sessions SET token_hash = ?4 \
             WHERE id = ?1 AND user_id = ?2 AND token_hash = ?3 AND revoked_at IS NULL \
               AND expires_at > ?5 AND last_active_at > ?6 \
             RETURNING ",
            columns!()
        ))
        .bind(session_id)
        .bind(user_id)
        .bind(current.as_bytes().as_slice())
        .bind(new.as_bytes().as_slice())
        .bind(micros(live.now))
        .bind(micros(live.idle_cutoff))
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| StoreError::new(OP, e))?;
        let Some(row) = row else { return Ok(None) };
        let session = session_from_row(&row).map_err(|e| StoreError::new(OP, e))?;
        sqlx::query(
            "INSERT INTO session_retired_tokens (token_hash, session_id, retired_at) \
             VALUES (?1, ?2, ?3)",
        )
        .bind(current.as_bytes().as_slice())
        .bind(session_id)
        .bind(micros(live.now))
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::new(OP, e))?;
        tx.commit().await.map_err(|e| StoreError::new(OP, e))?;
        Ok(Some(session))
    }

    async fn list_active(&self, user_id: Uuid, live: Liveness) -> Result<Vec<Session>, StoreError> {
        const OP: &str = "list a user's sessions";
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM sessions \
             WHERE user_id = ?1 AND revoked_at IS NULL AND expires_at > ?2 AND last_active_at > ?3 \
             ORDER BY last_active_at DESC, created_at DESC, id DESC"
        ))
        .bind(user_id)
        .bind(micros(live.now))
        .bind(micros(live.idle_cutoff))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| StoreError::new(OP, e))?;
        rows.iter()
            .map(session_from_row)
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::new(OP, e))
    }

    async fn revoke(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Option<TokenHash>, StoreError> {
        const OP: &str = "revoke a session";
        let rows = sqlx::query(
            "UPDATE sessions SET revoked_at = MAX(?3, created_at), revoked_reason = ?4 \
             WHERE id = ?1 AND user_id = ?2 AND revoked_at IS NULL AND expires_at > ?3 \
             RETURNING token_hash",
        )
        .bind(session_id)
        .bind(user_id)
        .bind(micros(now))
        .bind(reason.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| StoreError::new(OP, e))?;
        Ok(hashes_from_rows(&rows, OP)?.into_iter().next())
    }

    async fn revoke_all(
        &self,
        user_id: Uuid,
        except: Option<Uuid>,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Vec<TokenHash>, StoreError> {
        const OP: &str = "revoke a user's sessions";
        let mut tx = self.begin(OP).await?;
        sqlx::query(
            "INSERT INTO session_user_fences (user_id, epoch) VALUES (?1, 1) \
             ON CONFLICT (user_id) DO UPDATE SET epoch = epoch + 1",
        )
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::new(OP, e))?;
        let rows = sqlx::query(
            "UPDATE sessions SET revoked_at = MAX(?3, created_at), revoked_reason = ?4 \
             WHERE user_id = ?1 AND revoked_at IS NULL AND id IS NOT ?2 \
             RETURNING token_hash",
        )
        .bind(user_id)
        .bind(except)
        .bind(micros(now))
        .bind(reason.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| StoreError::new(OP, e))?;
        let hashes = hashes_from_rows(&rows, OP)?;
        tx.commit().await.map_err(|e| StoreError::new(OP, e))?;
        Ok(hashes)
    }

    async fn touch(&self, touches: &[(Uuid, OffsetDateTime)]) -> Result<(), StoreError> {
        const OP: &str = "record session activity";
        if touches.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin(OP).await?;
        touch_in(&mut tx, touches)
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        tx.commit().await.map_err(|e| StoreError::new(OP, e))
    }

    async fn cleanup(
        &self,
        now: OffsetDateTime,
        revoked_before: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        const OP: &str = "delete expired sessions";
        let mut tx = self.begin(OP).await?;
        // Explicit rather than through the foreign key, which a pool opened without
        // `foreign_keys` would not enforce.
        sqlx::query(
            "DELETE FROM session_retired_tokens WHERE session_id IN \
             (SELECT id FROM sessions WHERE expires_at < ?1 OR revoked_at < ?2)",
        )
        .bind(micros(now))
        .bind(micros(revoked_before))
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::new(OP, e))?;
        let result = sqlx::query("DELETE FROM sessions WHERE expires_at < ?1 OR revoked_at < ?2")
            .bind(micros(now))
            .bind(micros(revoked_before))
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        tx.commit().await.map_err(|e| StoreError::new(OP, e))?;
        Ok(result.rows_affected())
    }
}

/// Moves `last_active_at` forward (never back) for live sessions.
async fn touch_in(
    tx: &mut Transaction<'_, Sqlite>,
    touches: &[(Uuid, OffsetDateTime)],
) -> Result<(), sqlx::Error> {
    for (id, at) in touches {
        sqlx::query(
            "UPDATE sessions SET last_active_at = ?2 \
             WHERE id = ?1 AND revoked_at IS NULL AND last_active_at < ?2",
        )
        .bind(id)
        .bind(micros(*at))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn read_fence(
    conn: &mut sqlx::SqliteConnection,
    user_id: Uuid,
) -> Result<Fence, sqlx::Error> {
    let epoch: Option<i64> =
        sqlx::query_scalar("SELECT epoch FROM session_user_fences WHERE user_id = ?1")
            .bind(user_id)
            .fetch_optional(conn)
            .await?;
    Ok(Fence::new(
        epoch.map_or(0, |e| u64::try_from(e).unwrap_or(0)),
    ))
}
