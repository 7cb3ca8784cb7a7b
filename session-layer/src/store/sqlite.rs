//! SQLite store, for a single instance (the demo's default, small deployments, tests).

use std::borrow::Cow;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::tables::{Names, Tables};
use super::{Fence, FoundSession, Inserted, Liveness, SessionInsert, SessionStore, TokenMatch};
use crate::error::StoreError;
use crate::session::{RevocationReason, Session};
use crate::token::TokenHash;
use crate::user_id::{UserId, UserIdKind, UserIdValue};

/// The session columns every read selects.
const COLUMNS: &str = "id, user_id, device, device_type, device_name, user_agent, ip_address, \
                       created_at, last_active_at, expires_at, revoked_at, revoked_reason";

/// Every statement, rendered once for the configured tables.
#[derive(Debug)]
struct Sql {
    insert: Arc<str>,
    evict: Arc<str>,
    find: Arc<str>,
    rotate: Arc<str>,
    retire: Arc<str>,
    list: Arc<str>,
    revoke: Arc<str>,
    bump_fence: Arc<str>,
    revoke_all: Arc<str>,
    read_fence: Arc<str>,
    touch: Arc<str>,
    cleanup_retired: Arc<str>,
    cleanup: Arc<str>,
}

impl Sql {
    fn new(names: &Names) -> Self {
        let sql = |template: &str| -> Arc<str> {
            names.render(&template.replace("{columns}", COLUMNS)).into()
        };
        Self {
            insert: sql(
                "INSERT INTO {sessions} (id, user_id, token_hash, device, device_type, device_name, \
                 user_agent, ip_address, created_at, last_active_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            ),
            evict: sql("UPDATE {sessions} SET revoked_at = MAX(?3, created_at), \
                   revoked_reason = 'session_limit' \
                 WHERE id IN (SELECT id FROM {sessions} \
                     WHERE user_id = ?1 AND id <> ?2 AND revoked_at IS NULL \
                       AND expires_at > ?3 AND last_active_at > ?4 \
                     ORDER BY last_active_at DESC, created_at DESC, id DESC \
                     LIMIT -1 OFFSET ?5) \
                 RETURNING token_hash"),
            // A hash is random and 256 bits long, so at most one row matches either branch;
            // each branch is one plain index probe.
            find: sql(
                "SELECT {columns}, TRUE AS is_current FROM {sessions} WHERE token_hash = ?1 \
                 UNION ALL \
                 SELECT {columns}, FALSE FROM {retired} r JOIN {sessions} s ON s.id = r.session_id \
                 WHERE r.token_hash = ?1 \
                 LIMIT 1",
            ),
            rotate: sql("UPDATE {sessions} SET token_hash = ?4 \
                 WHERE id = ?1 AND user_id = ?2 AND token_hash = ?3 AND revoked_at IS NULL \
                   AND expires_at > ?5 AND last_active_at > ?6 \
                 RETURNING {columns}"),
            retire: sql(
                "INSERT INTO {retired} (token_hash, session_id, retired_at) VALUES (?1, ?2, ?3)",
            ),
            list: sql("SELECT {columns} FROM {sessions} \
                 WHERE user_id = ?1 AND revoked_at IS NULL AND expires_at > ?2 \
                   AND last_active_at > ?3 \
                 ORDER BY last_active_at DESC, created_at DESC, id DESC"),
            revoke: sql(
                "UPDATE {sessions} SET revoked_at = MAX(?3, created_at), revoked_reason = ?4 \
                 WHERE id = ?1 AND user_id = ?2 AND revoked_at IS NULL AND expires_at > ?3 \
                 RETURNING token_hash",
            ),
            bump_fence: sql("INSERT INTO {fences} (user_id, epoch) VALUES (?1, 1) \
                 ON CONFLICT (user_id) DO UPDATE SET epoch = epoch + 1"),
            revoke_all: sql(
                "UPDATE {sessions} SET revoked_at = MAX(?3, created_at), revoked_reason = ?4 \
                 WHERE user_id = ?1 AND revoked_at IS NULL AND id IS NOT ?2 \
                 RETURNING token_hash",
            ),
            read_fence: sql("SELECT epoch FROM {fences} WHERE user_id = ?1"),
            touch: sql("UPDATE {sessions} SET last_active_at = ?2 \
                 WHERE id = ?1 AND revoked_at IS NULL AND last_active_at < ?2"),
            // Explicit rather than through the foreign key, which a pool opened without
            // `foreign_keys` would not enforce.
            cleanup_retired: sql("DELETE FROM {retired} WHERE session_id IN \
                 (SELECT id FROM {sessions} WHERE expires_at < ?1 OR revoked_at < ?2)"),
            cleanup: sql("DELETE FROM {sessions} WHERE expires_at < ?1 OR revoked_at < ?2"),
        }
    }
}

fn q(sql: &Arc<str>) -> sqlx::AssertSqlSafe<Arc<str>> {
    sqlx::AssertSqlSafe(Arc::clone(sql))
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
///
/// With other user ids or table names, [`connect_with`](Self::connect_with) and
/// [`Tables`](super::Tables).
pub struct SqliteStore<U = Uuid> {
    pool: SqlitePool,
    names: Arc<Names>,
    sql: Arc<Sql>,
    user: PhantomData<fn() -> U>,
}

impl<U> Clone for SqliteStore<U> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            names: Arc::clone(&self.names),
            sql: Arc::clone(&self.sql),
            user: PhantomData,
        }
    }
}

impl<U> std::fmt::Debug for SqliteStore<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("pool", &self.pool)
            .field("sessions", &self.names.sessions)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Wraps an existing pool, with the default [`Tables`](super::Tables) ([`Uuid`] user ids).
    /// Use WAL mode and a busy timeout, as [`connect`](Self::connect) does.
    #[must_use]
    pub fn new(pool: SqlitePool) -> Self {
        let names = Tables::new()
            .resolve(true)
            // The default names are constants that pass every check (see the tests of Tables).
            .expect("the default tables are valid");
        Self::from_names(pool, names)
    }

    /// Opens (creating if missing) the database at `url` (`sqlite://path.db`, or
    /// `sqlite::memory:`), in WAL mode with a 5 s busy timeout, with the default tables.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the URL is invalid or the file cannot be opened.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, Tables::new()).await
    }
}

impl<U: UserId> SqliteStore<U> {
    fn from_names(pool: SqlitePool, names: Names) -> Self {
        Self {
            sql: Arc::new(Sql::new(&names)),
            names: Arc::new(names),
            pool,
            user: PhantomData,
        }
    }

    /// Wraps an existing pool, with the given tables and user id type.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the names are not valid (or name a schema, which SQLite lacks).
    pub fn with_tables(pool: SqlitePool, tables: Tables<U>) -> Result<Self, StoreError> {
        Ok(Self::from_names(pool, tables.resolve(true)?))
    }

    /// Like [`connect`](SqliteStore::connect), with the given tables and user id type.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the names are not valid, the URL is invalid or the file cannot be
    /// opened.
    pub async fn connect_with(url: &str, tables: Tables<U>) -> Result<Self, StoreError> {
        const OP: &str = "open the SQLite database";
        let names = tables.resolve(true)?;
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
        Ok(Self::from_names(pool, names))
    }

    /// The underlying pool, to share with the application.
    #[must_use]
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Creates or upgrades the session tables (see [`Tables`](super::Tables) for their names).
    /// The bookkeeping lives in `_session_layer_migrations` (with the prefix), apart from the
    /// application's own sqlx migrations.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when a migration fails.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        super::migrations::sqlite(&self.names)
            .run(&self.pool)
            .await
            .map_err(|e| super::migrations::failed("sqlite", e))
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

type Query<'q> = sqlx::query::Query<'q, Sqlite, <Sqlite as sqlx::Database>::Arguments>;

/// Binds a user id as its [`UserIdKind`] is stored.
fn bind_user<'q, U: UserId>(query: Query<'q>, user: &U) -> Query<'q> {
    match user.to_value() {
        UserIdValue::Uuid(id) => query.bind(id),
        UserIdValue::BigInt(id) => query.bind(id),
        UserIdValue::Text(id) => query.bind(id.into_owned()),
    }
}

fn user_from_row<U: UserId>(row: &SqliteRow) -> Result<U, sqlx::Error> {
    let value = match U::KIND {
        UserIdKind::Uuid => UserIdValue::Uuid(row.try_get("user_id")?),
        UserIdKind::BigInt => UserIdValue::BigInt(row.try_get("user_id")?),
        UserIdKind::Text => UserIdValue::Text(Cow::Owned(row.try_get("user_id")?)),
    };
    U::from_value(value).ok_or_else(|| {
        sqlx::Error::Decode("a stored user_id is not a valid id of the configured type".into())
    })
}

fn session_from_row<U: UserId>(row: &SqliteRow) -> Result<Session<U>, sqlx::Error> {
    let device_type: String = row.try_get("device_type")?;
    let reason: Option<String> = row.try_get("revoked_reason")?;
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    Ok(Session {
        id: row.try_get("id")?,
        user_id: user_from_row(row)?,
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
impl<U: UserId> SessionStore<U> for SqliteStore<U> {
    async fn insert(&self, insert: SessionInsert<'_, U>) -> Result<Inserted, StoreError> {
        const OP: &str = "insert a session";
        let session = insert.session;
        // `BEGIN IMMEDIATE` serialises this transaction with every other writer, `revoke_all`
        // included, so the fence read below cannot go stale before the commit.
        let mut tx = self.begin(OP).await?;
        if let Some(fence) = insert.fence
            && self
                .read_fence(&mut tx, &session.user_id)
                .await
                .map_err(|e| StoreError::new(OP, e))?
                != fence
        {
            return Ok(Inserted::Fenced);
        }
        bind_user(
            sqlx::query(q(&self.sql.insert)).bind(session.id),
            &session.user_id,
        )
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
        self.touch_in(&mut tx, insert.recent_activity)
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        let live = insert.live;
        let rows = bind_user(sqlx::query(q(&self.sql.evict)), &session.user_id)
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

    async fn fence(&self, user_id: &U) -> Result<Fence, StoreError> {
        const OP: &str = "read a user's fence";
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        self.read_fence(&mut conn, user_id)
            .await
            .map_err(|e| StoreError::new(OP, e))
    }

    async fn find_by_token(
        &self,
        token_hash: &TokenHash,
    ) -> Result<Option<FoundSession<U>>, StoreError> {
        const OP: &str = "look up a session";
        let row = sqlx::query(q(&self.sql.find))
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
        user_id: &U,
        session_id: Uuid,
        current: &TokenHash,
        new: &TokenHash,
        live: Liveness,
    ) -> Result<Option<Session<U>>, StoreError> {
        const OP: &str = "rotate a session token";
        let mut tx = self.begin(OP).await?;
        let row = bind_user(sqlx::query(q(&self.sql.rotate)).bind(session_id), user_id)
            .bind(current.as_bytes().as_slice())
            .bind(new.as_bytes().as_slice())
            .bind(micros(live.now))
            .bind(micros(live.idle_cutoff))
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        let Some(row) = row else { return Ok(None) };
        let session = session_from_row(&row).map_err(|e| StoreError::new(OP, e))?;
        sqlx::query(q(&self.sql.retire))
            .bind(current.as_bytes().as_slice())
            .bind(session_id)
            .bind(micros(live.now))
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        tx.commit().await.map_err(|e| StoreError::new(OP, e))?;
        Ok(Some(session))
    }

    async fn list_active(
        &self,
        user_id: &U,
        live: Liveness,
    ) -> Result<Vec<Session<U>>, StoreError> {
        const OP: &str = "list a user's sessions";
        let rows = bind_user(sqlx::query(q(&self.sql.list)), user_id)
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
        user_id: &U,
        session_id: Uuid,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Option<TokenHash>, StoreError> {
        const OP: &str = "revoke a session";
        let rows = bind_user(sqlx::query(q(&self.sql.revoke)).bind(session_id), user_id)
            .bind(micros(now))
            .bind(reason.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        Ok(hashes_from_rows(&rows, OP)?.into_iter().next())
    }

    async fn revoke_all(
        &self,
        user_id: &U,
        except: Option<Uuid>,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Vec<TokenHash>, StoreError> {
        const OP: &str = "revoke a user's sessions";
        let mut tx = self.begin(OP).await?;
        bind_user(sqlx::query(q(&self.sql.bump_fence)), user_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        let rows = bind_user(sqlx::query(q(&self.sql.revoke_all)), user_id)
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
        self.touch_in(&mut tx, touches)
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
        sqlx::query(q(&self.sql.cleanup_retired))
            .bind(micros(now))
            .bind(micros(revoked_before))
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        let result = sqlx::query(q(&self.sql.cleanup))
            .bind(micros(now))
            .bind(micros(revoked_before))
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        tx.commit().await.map_err(|e| StoreError::new(OP, e))?;
        Ok(result.rows_affected())
    }
}

impl<U: UserId> SqliteStore<U> {
    /// Moves `last_active_at` forward (never back) for live sessions.
    async fn touch_in(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        touches: &[(Uuid, OffsetDateTime)],
    ) -> Result<(), sqlx::Error> {
        for (id, at) in touches {
            sqlx::query(q(&self.sql.touch))
                .bind(id)
                .bind(micros(*at))
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn read_fence(
        &self,
        conn: &mut sqlx::SqliteConnection,
        user_id: &U,
    ) -> Result<Fence, sqlx::Error> {
        let row = bind_user(sqlx::query(q(&self.sql.read_fence)), user_id)
            .fetch_optional(conn)
            .await?;
        let epoch: Option<i64> = row.map(|row| row.try_get(0)).transpose()?;
        Ok(Fence::new(
            epoch.map_or(0, |e| u64::try_from(e).unwrap_or(0)),
        ))
    }
}
