//! PostgreSQL store, with `LISTEN/NOTIFY` so that every instance sharing the database drops a
//! revoked session from its cache before the revoking call returns (see the `feed` module).

mod notify;

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use uuid::Uuid;

use self::notify::{Notify, publish};
use super::feed::{DEFAULT_LEASE, Feed};
use super::tables::{Names, Tables};
use super::{
    Fence, FoundSession, Inserted, Invalidation, Liveness, SessionInsert, SessionStore, TokenMatch,
};
use crate::error::StoreError;
use crate::session::{RevocationReason, Session};
use crate::token::TokenHash;
use crate::user_id::{UserId, UserIdKind, UserIdValue, digest};

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
    recently_revoked: Arc<str>,
    read_fence: Arc<str>,
    touch: Arc<str>,
    cleanup: Arc<str>,
    /// With row-level security: names the transaction's user.
    scope: Option<Arc<str>>,
}

impl Sql {
    fn new(names: &Names) -> Self {
        let sql = |template: &str| -> Arc<str> {
            names.render(&template.replace("{columns}", COLUMNS)).into()
        };
        let plain = Self::plain(&sql);
        if names.row_level_security.is_none() {
            return plain;
        }
        // Row-level security: what has no user yet goes through the definer functions.
        Self {
            find: sql("SELECT {columns}, is_current FROM {schema_dot}{sessions_bare}_find($1)"),
            touch: sql("SELECT {schema_dot}{sessions_bare}_touch($1::uuid[], $2::timestamptz[])"),
            cleanup: sql("SELECT {schema_dot}{sessions_bare}_cleanup($1, $2)"),
            scope: Some(sql("SELECT set_config('app.current_user_id', $1, true)")),
            ..plain
        }
    }

    fn plain(sql: &impl Fn(&str) -> Arc<str>) -> Self {
        Self {
            insert: sql(
                "INSERT INTO {sessions} (id, user_id, token_hash, device, device_type, device_name, \
                 user_agent, ip_address, created_at, last_active_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            ),
            evict: sql(
                "UPDATE {sessions} SET revoked_at = GREATEST($3, created_at), \
                   revoked_reason = 'session_limit' \
                 WHERE id IN (SELECT id FROM {sessions} \
                     WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL \
                       AND expires_at > $3 AND last_active_at > $4 \
                     ORDER BY last_active_at DESC, created_at DESC, id DESC \
                     OFFSET $5) \
                 RETURNING token_hash",
            ),
            // A hash is random and 256 bits long, so at most one row matches either branch;
            // each branch is one plain index probe.
            find: sql(
                "SELECT {columns}, TRUE AS is_current FROM {sessions} WHERE token_hash = $1 \
                 UNION ALL \
                 SELECT {columns}, FALSE FROM {retired} r JOIN {sessions} s ON s.id = r.session_id \
                 WHERE r.token_hash = $1 \
                 LIMIT 1",
            ),
            // The `token_hash = $3` condition is re-checked under the row lock, so of two
            // concurrent rotations of one token exactly one updates a row.
            rotate: sql("UPDATE {sessions} SET token_hash = $4 \
                 WHERE id = $1 AND user_id = $2 AND token_hash = $3 AND revoked_at IS NULL \
                   AND expires_at > $5 AND last_active_at > $6 \
                 RETURNING {columns}"),
            retire: sql(
                "INSERT INTO {retired} (token_hash, session_id, retired_at) VALUES ($1, $2, $3)",
            ),
            list: sql("SELECT {columns} FROM {sessions} \
                 WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 \
                   AND last_active_at > $3 \
                 ORDER BY last_active_at DESC, created_at DESC, id DESC"),
            revoke: sql(
                "UPDATE {sessions} SET revoked_at = GREATEST($3, created_at), revoked_reason = $4 \
                 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL AND expires_at > $3 \
                 RETURNING token_hash",
            ),
            bump_fence: sql("INSERT INTO {fences} (user_id, epoch) VALUES ($1, 1) \
                 ON CONFLICT (user_id) DO UPDATE SET epoch = {fences}.epoch + 1"),
            revoke_all: sql(
                "UPDATE {sessions} SET revoked_at = GREATEST($3, created_at), revoked_reason = $4 \
                 WHERE id IN (SELECT id FROM {sessions} \
                     WHERE user_id = $1 AND revoked_at IS NULL AND id IS DISTINCT FROM $2 \
                     ORDER BY id FOR UPDATE) \
                 RETURNING token_hash",
            ),
            recently_revoked: sql("SELECT token_hash FROM {sessions} \
                 WHERE user_id = $1 AND id IS DISTINCT FROM $2 AND revoked_at >= $3"),
            read_fence: sql("SELECT epoch FROM {fences} WHERE user_id = $1"),
            // Rows are locked in id order and rows locked by others are skipped: a touch is an
            // optimisation of idle tracking, and waiting could deadlock with another instance's
            // batch or with a revocation.
            touch: sql("WITH t AS (SELECT id, max(at) AS at \
                            FROM UNNEST($1::uuid[], $2::timestamptz[]) AS u(id, at) GROUP BY id), \
                      locked AS (SELECT s.id, t.at FROM {sessions} s JOIN t ON s.id = t.id \
                                 WHERE s.revoked_at IS NULL AND s.last_active_at < t.at \
                                 ORDER BY s.id FOR UPDATE OF s SKIP LOCKED) \
                 UPDATE {sessions} AS s SET last_active_at = locked.at FROM locked \
                 WHERE s.id = locked.id AND s.last_active_at < locked.at"),
            cleanup: sql("DELETE FROM {sessions} WHERE expires_at < $1 OR revoked_at < $2"),
            scope: None,
        }
    }
}

fn q(sql: &Arc<str>) -> sqlx::AssertSqlSafe<Arc<str>> {
    sqlx::AssertSqlSafe(Arc::clone(sql))
}

type Query<'q> = sqlx::query::Query<'q, Postgres, <Postgres as sqlx::Database>::Arguments>;

/// Binds a user id as its [`UserIdKind`] is stored.
fn bind_user<'q, U: UserId>(query: Query<'q>, user: &U) -> Query<'q> {
    match user.to_value() {
        UserIdValue::Uuid(id) => query.bind(id),
        UserIdValue::BigInt(id) => query.bind(id),
        UserIdValue::Text(id) => query.bind(id.into_owned()),
    }
}

fn user_from_row<U: UserId>(row: &PgRow) -> Result<U, sqlx::Error> {
    let value = match U::KIND {
        UserIdKind::Uuid => UserIdValue::Uuid(row.try_get("user_id")?),
        UserIdKind::BigInt => UserIdValue::BigInt(row.try_get("user_id")?),
        UserIdKind::Text => UserIdValue::Text(Cow::Owned(row.try_get("user_id")?)),
    };
    U::from_value(value).ok_or_else(|| {
        sqlx::Error::Decode("a stored user_id is not a valid id of the configured type".into())
    })
}

/// Sessions in PostgreSQL (15 or later), shared by any number of instances.
///
/// # Strict revocation across instances
///
/// Every instance listens on one notification channel. An instance serves cached sessions only
/// while it holds a *lease*: it heard its own heartbeat, published through the database every
/// quarter lease, within the last lease (default 1 s, [`with_lease`](Self::with_lease)). A
/// revoking call returns once every other live instance has acknowledged dropping the token, or,
/// for one that has not answered, once its lease must have lapsed: about one round trip when all
/// are healthy, never more than one lease. So a revoked token is refused by every instance from
/// the moment the call returns, without a database round trip per request.
///
/// The trade-off of the lease: a shorter one bounds how long a revocation can wait for a stuck
/// instance, and costs more heartbeats (each instance sends four per lease; each is one small
/// `NOTIFY` that every instance receives). An instance that cannot hear the channel for a lease
/// serves every request from the database until it can.
///
/// `LISTEN` needs a session-mode connection. Behind a pooler in transaction mode (PgBouncer's
/// default), give the listener a direct URL with [`with_listen_url`](Self::with_listen_url).
/// Without one, the listener never hears anything: the cache is never trusted (every request
/// reads the database) and every revocation waits one full lease. That is slow, never unsafe.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use session_layer::PostgresStore;
///
/// let store = PostgresStore::connect("postgres://app@localhost/app").await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
///
/// With other user ids or table names, [`connect_with`](Self::connect_with) and
/// [`Tables`](super::Tables).
pub struct PostgresStore<U = Uuid> {
    pool: PgPool,
    feed: Arc<Feed<Notify>>,
    names: Arc<Names>,
    sql: Arc<Sql>,
    user: PhantomData<fn() -> U>,
}

impl<U> Clone for PostgresStore<U> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            feed: Arc::clone(&self.feed),
            names: Arc::clone(&self.names),
            sql: Arc::clone(&self.sql),
            user: PhantomData,
        }
    }
}

impl<U> std::fmt::Debug for PostgresStore<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("pool", &self.pool)
            .field("sessions", &self.names.sessions)
            .field("lease", &self.feed.lease())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Wraps an existing pool, with the default [`Tables`](super::Tables) ([`Uuid`] user ids).
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        let names = Tables::new()
            .resolve(false)
            // The default names are constants that pass every check (see the tests of Tables).
            .expect("the default tables are valid");
        Self::from_names(pool, names)
    }

    /// Connects a pool of up to 16 connections to `url`, with the default tables.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the server cannot be reached or refuses the login.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, Tables::new()).await
    }
}

impl<U: UserId> PostgresStore<U> {
    fn from_names(pool: PgPool, names: Names) -> Self {
        let notify = Notify::new(pool.clone(), Arc::clone(&names.channel));
        Self {
            feed: Feed::new(notify, DEFAULT_LEASE),
            sql: Arc::new(Sql::new(&names)),
            names: Arc::new(names),
            pool,
            user: PhantomData,
        }
    }

    fn with_feed(self, notify: Notify, lease: Duration) -> Self {
        Self {
            feed: Feed::new(notify, lease),
            ..self
        }
    }

    /// Wraps an existing pool, with the given tables and user id type.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the names are not valid.
    pub fn with_tables(pool: PgPool, tables: Tables<U>) -> Result<Self, StoreError> {
        Ok(Self::from_names(pool, tables.resolve(false)?))
    }

    /// Like [`connect`](PostgresStore::connect), with the given tables and user id type.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the names are not valid, or the server cannot be reached or
    /// refuses the login.
    pub async fn connect_with(url: &str, tables: Tables<U>) -> Result<Self, StoreError> {
        let names = tables.resolve(false)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| StoreError::new("connect to PostgreSQL", e))?;
        Ok(Self::from_names(pool, names))
    }

    /// Sets the invalidation lease (default 1 s; at least 10 ms). Set it before the store is
    /// used, on every instance alike.
    #[must_use]
    pub fn with_lease(self, lease: Duration) -> Self {
        let notify = self.feed.transport().clone();
        self.with_feed(notify, lease)
    }

    /// Connects the notification listener to `url` instead of through the pool: a direct,
    /// session-mode connection when the pool goes through a transaction-mode pooler. Set it
    /// before the store is used.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when `url` is not a PostgreSQL URL.
    pub fn with_listen_url(self, url: &str) -> Result<Self, StoreError> {
        let notify = self.feed.transport().clone().listening_at(url)?;
        let lease = self.feed.lease();
        Ok(self.with_feed(notify, lease))
    }

    /// The underlying pool, to share with the application.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates or upgrades the session tables (see [`Tables`](super::Tables) for their names).
    /// Safe to run on every start and from several instances at once, except with
    /// [row-level security](super::Tables::row_level_security), where only the tables' owner
    /// migrates. The bookkeeping lives in
    /// `_session_layer_migrations` (with the prefix, in the schema), apart from the
    /// application's own sqlx migrations.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when a migration fails.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        const OP: &str = "run the session-layer PostgreSQL migrations";
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        let create_schema = match &self.names.schema {
            Some(schema) => {
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                )
                .bind(schema)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| StoreError::new(OP, e))?;
                !exists
            }
            None => false,
        };
        let ran = super::migrations::postgres(&self.names, create_schema)
            .run(&mut *conn)
            .await;
        if ran.is_err() {
            // sqlx keeps its session-level migration lock when a migration fails: close this
            // connection instead of returning it to the pool, or every later `migrate` (here or
            // on another instance) would wait for that lock forever.
            conn.close_on_drop();
        }
        ran.map_err(|e| super::migrations::failed("postgres", e))
    }

    async fn begin(
        &self,
        operation: &'static str,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool
            .begin()
            .await
            .map_err(|e| StoreError::new(operation, e))
    }

    /// A transaction for statements about `user_id` (named for row-level security, if on).
    async fn begin_for(
        &self,
        user_id: &U,
        operation: &'static str,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.begin(operation).await?;
        self.scope(&mut tx, user_id, operation).await?;
        Ok(tx)
    }

    /// Names `user_id` for the rest of the transaction, when row-level security is on.
    async fn scope(
        &self,
        tx: &mut sqlx::PgConnection,
        user_id: &U,
        operation: &'static str,
    ) -> Result<(), StoreError> {
        if let Some(scope) = &self.sql.scope {
            sqlx::query(q(scope))
                .bind(user_setting(user_id))
                .execute(tx)
                .await
                .map_err(|e| StoreError::new(operation, e))?;
        }
        Ok(())
    }

    /// A connection for reads about `user_id`: see [`UserConn`].
    async fn conn_for(&self, user_id: &U, operation: &'static str) -> Result<UserConn, StoreError> {
        if self.sql.scope.is_some() {
            return Ok(UserConn::Scoped(self.begin_for(user_id, operation).await?));
        }
        let conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| StoreError::new(operation, e))?;
        Ok(UserConn::Plain(conn))
    }
}

fn session_from_row<U: UserId>(row: &PgRow) -> Result<Session<U>, sqlx::Error> {
    let device_type: String = row.try_get("device_type")?;
    let reason: Option<String> = row.try_get("revoked_reason")?;
    Ok(Session {
        id: row.try_get("id")?,
        user_id: user_from_row(row)?,
        device: row.try_get("device")?,
        device_type: device_type.parse().unwrap_or_default(),
        device_name: row.try_get("device_name")?,
        user_agent: row.try_get("user_agent")?,
        ip_address: row.try_get("ip_address")?,
        created_at: row.try_get("created_at")?,
        last_active_at: row.try_get("last_active_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        revoked_reason: reason
            .map(|r| r.parse())
            .transpose()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
    })
}

fn hash_from_row(row: &PgRow) -> Result<TokenHash, sqlx::Error> {
    let bytes: Vec<u8> = row.try_get("token_hash")?;
    TokenHash::try_from(bytes.as_slice()).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn hashes_from_rows(rows: &[PgRow], operation: &'static str) -> Result<Vec<TokenHash>, StoreError> {
    rows.iter()
        .map(hash_from_row)
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError::new(operation, e))
}

impl<U: UserId> PostgresStore<U> {
    /// Moves `last_active_at` forward (never back) for live sessions, in one statement.
    async fn touch_with<'e>(
        &self,
        executor: impl sqlx::PgExecutor<'e>,
        touches: &[(Uuid, OffsetDateTime)],
    ) -> Result<(), sqlx::Error> {
        if touches.is_empty() {
            return Ok(());
        }
        let (ids, times): (Vec<Uuid>, Vec<OffsetDateTime>) = touches.iter().copied().unzip();
        sqlx::query(q(&self.sql.touch))
            .bind(ids)
            .bind(times)
            .execute(executor)
            .await?;
        Ok(())
    }

    async fn read_fence(
        &self,
        conn: &mut sqlx::PgConnection,
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

/// A user id as the row-level security setting holds it (the policies cast it back).
fn user_setting<U: UserId>(user: &U) -> String {
    match user.to_value() {
        UserIdValue::Uuid(id) => id.to_string(),
        UserIdValue::BigInt(id) => id.to_string(),
        UserIdValue::Text(id) => id.into_owned(),
    }
}

/// A connection for statements about one user: with row-level security, a transaction that
/// names the user; without, a plain pooled connection.
enum UserConn {
    Scoped(Transaction<'static, Postgres>),
    Plain(sqlx::pool::PoolConnection<Postgres>),
}

impl std::ops::Deref for UserConn {
    type Target = sqlx::PgConnection;

    fn deref(&self) -> &Self::Target {
        match self {
            Self::Scoped(tx) => tx,
            Self::Plain(conn) => conn,
        }
    }
}

impl std::ops::DerefMut for UserConn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            Self::Scoped(tx) => &mut *tx,
            Self::Plain(conn) => &mut *conn,
        }
    }
}

impl UserConn {
    async fn finish(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Scoped(tx) => tx.commit().await,
            Self::Plain(_) => Ok(()),
        }
    }
}

/// Takes the per-user transaction lock that sign-ins and `revoke_all` share.
async fn lock_user<U: UserId>(
    tx: &mut Transaction<'_, Postgres>,
    user_id: &U,
    operation: &'static str,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(digest(user_id))
        .execute(&mut **tx)
        .await
        .map_err(|e| StoreError::new(operation, e))?;
    Ok(())
}

#[async_trait]
impl<U: UserId> SessionStore<U> for PostgresStore<U> {
    async fn insert(&self, insert: SessionInsert<'_, U>) -> Result<Inserted, StoreError> {
        const OP: &str = "insert a session";
        let session = insert.session;
        let mut tx = self.begin_for(&session.user_id, OP).await?;
        // Serialises sign-ins of one user with each other (the session limit) and with
        // `revoke_all` (the fence). Every later statement of this transaction takes a new
        // snapshot, so it sees whatever committed before the lock was granted.
        lock_user(&mut tx, &session.user_id, OP).await?;
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
        .bind(session.ip_address)
        .bind(session.created_at)
        .bind(session.last_active_at)
        .bind(session.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::new(OP, e))?;
        let evicted = match insert.max_active {
            None => Vec::new(),
            Some(max) => {
                self.touch_with(&mut *tx, insert.recent_activity)
                    .await
                    .map_err(|e| StoreError::new(OP, e))?;
                let live = insert.live;
                let rows = bind_user(sqlx::query(q(&self.sql.evict)), &session.user_id)
                    .bind(session.id)
                    .bind(live.now)
                    .bind(live.idle_cutoff)
                    .bind(i64::from(max.saturating_sub(1)))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(|e| StoreError::new(OP, e))?;
                hashes_from_rows(&rows, OP)?
            }
        };
        let ticket = publish(&self.feed, &mut tx, &evicted, OP).await?;
        tx.commit().await.map_err(|e| StoreError::new(OP, e))?;
        self.feed.settle(ticket).await;
        Ok(Inserted::Created { evicted })
    }

    async fn fence(&self, user_id: &U) -> Result<Fence, StoreError> {
        const OP: &str = "read a user's fence";
        let mut conn = self.conn_for(user_id, OP).await?;
        let fence = self
            .read_fence(&mut conn, user_id)
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        conn.finish().await.map_err(|e| StoreError::new(OP, e))?;
        Ok(fence)
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
        let mut tx = self.begin_for(user_id, OP).await?;
        let row = bind_user(sqlx::query(q(&self.sql.rotate)).bind(session_id), user_id)
            .bind(current.as_bytes().as_slice())
            .bind(new.as_bytes().as_slice())
            .bind(live.now)
            .bind(live.idle_cutoff)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        let Some(row) = row else { return Ok(None) };
        let session = session_from_row(&row).map_err(|e| StoreError::new(OP, e))?;
        sqlx::query(q(&self.sql.retire))
            .bind(current.as_bytes().as_slice())
            .bind(session_id)
            .bind(live.now)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        let ticket = publish(&self.feed, &mut tx, std::slice::from_ref(current), OP).await?;
        tx.commit().await.map_err(|e| StoreError::new(OP, e))?;
        self.feed.settle(ticket).await;
        Ok(Some(session))
    }

    async fn list_active(
        &self,
        user_id: &U,
        live: Liveness,
    ) -> Result<Vec<Session<U>>, StoreError> {
        const OP: &str = "list a user's sessions";
        let mut conn = self.conn_for(user_id, OP).await?;
        let rows = bind_user(sqlx::query(q(&self.sql.list)), user_id)
            .bind(live.now)
            .bind(live.idle_cutoff)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        conn.finish().await.map_err(|e| StoreError::new(OP, e))?;
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
        let mut tx = self.begin_for(user_id, OP).await?;
        let rows = bind_user(sqlx::query(q(&self.sql.revoke)).bind(session_id), user_id)
            .bind(now)
            .bind(reason.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        let hashes = hashes_from_rows(&rows, OP)?;
        let ticket = publish(&self.feed, &mut tx, &hashes, OP).await?;
        tx.commit().await.map_err(|e| StoreError::new(OP, e))?;
        self.feed.settle(ticket).await;
        Ok(hashes.into_iter().next())
    }

    async fn revoke_all(
        &self,
        user_id: &U,
        except: Option<Uuid>,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Vec<TokenHash>, StoreError> {
        const OP: &str = "revoke a user's sessions";
        let mut tx = self.begin_for(user_id, OP).await?;
        lock_user(&mut tx, user_id, OP).await?;
        bind_user(sqlx::query(q(&self.sql.bump_fence)), user_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        let rows = bind_user(sqlx::query(q(&self.sql.revoke_all)), user_id)
            .bind(except)
            .bind(now)
            .bind(reason.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        let hashes = hashes_from_rows(&rows, OP)?;
        // A revocation of the same sessions that committed moments ago may still be waiting
        // for a silent instance's lease: publish those hashes again, so that this call, too,
        // returns only once every instance dropped them (a repeated "sign out everywhere").
        let recent = bind_user(sqlx::query(q(&self.sql.recently_revoked)), user_id)
            .bind(except)
            .bind(now - self.feed.lease() * 2)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        let mut published = hashes_from_rows(&recent, OP)?;
        published.extend(hashes.iter().copied());
        published.sort_unstable_by_key(|hash| *hash.as_bytes());
        published.dedup();
        let ticket = publish(&self.feed, &mut tx, &published, OP).await?;
        tx.commit().await.map_err(|e| StoreError::new(OP, e))?;
        self.feed.settle(ticket).await;
        Ok(hashes)
    }

    async fn touch(&self, touches: &[(Uuid, OffsetDateTime)]) -> Result<(), StoreError> {
        self.touch_with(&self.pool, touches)
            .await
            .map_err(|e| StoreError::new("record session activity", e))
    }

    async fn cleanup(
        &self,
        now: OffsetDateTime,
        revoked_before: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        const OP: &str = "delete expired sessions";
        // Retired token hashes go with their session (ON DELETE CASCADE).
        let query = sqlx::query(q(&self.sql.cleanup))
            .bind(now)
            .bind(revoked_before);
        if self.sql.scope.is_none() {
            let result = query
                .execute(&self.pool)
                .await
                .map_err(|e| StoreError::new(OP, e))?;
            return Ok(result.rows_affected());
        }
        // The definer function counts what it deleted.
        let row = query
            .fetch_one(&self.pool)
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        let deleted: i64 = row.try_get(0).map_err(|e| StoreError::new(OP, e))?;
        Ok(u64::try_from(deleted).unwrap_or(0))
    }

    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<Invalidation>> {
        Some(self.feed.subscribe())
    }
}
