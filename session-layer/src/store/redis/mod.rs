//! Redis store: every operation is one Lua script (atomic on the server, one round trip), and
//! revocations reach the other instances over pub/sub with the same leases and
//! acknowledgements as the PostgreSQL feed.

mod channel;
mod codec;

use std::marker::PhantomData;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use uuid::Uuid;

use self::channel::Channel;
use self::codec::{Corrupt, hash_from_hex, micros, session_from_fields, user_key};
use super::feed::{DEFAULT_LEASE, Feed, Ticket};
use super::{
    Fence, FoundSession, Inserted, Invalidation, Liveness, SessionInsert, SessionStore, TokenMatch,
    by_recency,
};
use crate::error::StoreError;
use crate::session::{RevocationReason, Session};
use crate::token::TokenHash;
use crate::user_id::UserId;

/// How long a session's keys outlive its expiry by default (the default `revoked_retention` of
/// [`SessionConfig`](crate::SessionConfig)): cleanup, not the TTL, normally deletes them.
const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Sessions deleted per cleanup script, so that one script never blocks the server for long.
const CLEANUP_BATCH: u32 = 500;

/// The scripts, each with the shared prelude (key names and helpers) in front.
struct Scripts {
    insert: Script,
    find: Script,
    rotate: Script,
    list: Script,
    revoke: Script,
    revoke_all: Script,
    touch: Script,
    cleanup: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let script = |body: &str| Script::new(&format!("{}{body}", include_str!("lua/common.lua")));
    Scripts {
        insert: script(include_str!("lua/insert.lua")),
        find: script(include_str!("lua/find.lua")),
        rotate: script(include_str!("lua/rotate.lua")),
        list: script(include_str!("lua/list.lua")),
        revoke: script(include_str!("lua/revoke.lua")),
        revoke_all: script(include_str!("lua/revoke_all.lua")),
        touch: script(include_str!("lua/touch.lua")),
        cleanup: script(include_str!("lua/cleanup.lua")),
    }
});

/// Sessions in Redis (tested with 7.0; standalone, or a primary with replicas; not Redis
/// Cluster, whose scripts may only touch keys of one shard), shared by any number of instances.
///
/// # Durability
///
/// A revocation is as durable as the server makes its writes. For revocations that survive a
/// crash of the server, run it with `appendonly yes` and `appendfsync always`: with the default
/// `everysec`, a crash can lose about the last second of writes, revocations among them, and a
/// failover to a replica can lose what it had not yet received.
///
/// # Keys
///
/// Under a prefix ([`DEFAULT_PREFIX`](Self::DEFAULT_PREFIX), or the one given to
/// [`connect_with`](Self::connect_with)) so that several applications can share a server:
///
/// | key | holds |
/// |---|---|
/// | `{prefix}:s:{session id}` | a hash of the session's fields, its current token hash and its rotated-out hashes |
/// | `{prefix}:t:{token hash}` | the session id, marked current or retired |
/// | `{prefix}:u:{user}` | a sorted set of the user's session ids, by last activity |
/// | `{prefix}:f:{user}` | the user's fence epoch |
/// | `{prefix}:exp`, `{prefix}:rev` | sorted sets of session ids by expiry and by revocation time, for cleanup |
///
/// Only SHA-256 hashes of tokens are stored (hex); user ids appear in keys hex-encoded (text)
/// or as digits, so no id can reach into another key. A session's keys carry a TTL of its
/// remaining lifetime plus the retention ([`with_retention`](Self::with_retention), default
/// 30 days, like `revoked_retention`): [`cleanup`](SessionStore::cleanup) deletes expired and
/// long-revoked sessions on time, the TTL only bounds the sessions that a store never cleaned
/// keeps (its two cleanup indexes still gain one small entry per session until cleanup runs:
/// run it, e.g. with `SessionManager::spawn_cleanup`).
/// Revocation is a soft delete, as in the SQL stores: a revoked session keeps its keys, so a
/// revoked or rotated-out token is still recognised as such until cleanup. Three keys carry no
/// TTL: the two cleanup indexes; a user's index, which cleanup empties (Redis then deletes it),
/// so that no eviction can hide a session from "sign out everywhere"; and a user's fence,
/// which must outlive every session (one small key per user who ever changed a password or
/// signed out everywhere).
///
/// # Server configuration
///
/// - `maxmemory-policy noeviction` (Redis's default); [`connect`](Self::connect) refuses any
///   other. An evicted user index would let "sign out everywhere" miss sessions, an evicted
///   rotated-out token key would no longer end its family. (Fences survive a lost key: each
///   advance passes the server's clock.) Under `noeviction` a full server refuses writes:
///   sign-ins and revocations fail (503) while validations go on.
/// - Keys are the library's alone: a session deleted or changed by hand is seen by an
///   instance that cached it only once its cache entry expires (`cache_ttl`). End sessions
///   with the manager, which tells every instance.
/// - ACL: the store runs `EVALSHA`/`EVAL`, `GET`, `PUBLISH` and `INFO memory` (at connect)
///   on its connection and `SUBSCRIBE` on its channel. Its scripts name keys they build from their arguments, so
///   Redis Cluster and key-routing proxies are not supported.
///
/// # Connections and outages
///
/// Each store (and its clones) holds two connections: one multiplexed connection for every
/// command, and one subscribed to the channel. Connecting takes at most 1 s, a reply at most
/// 2 s, with one retry; then the call fails with a [`StoreError`], and the manager answers
/// 503 (fail closed) while the connection is re-established in the background. While the
/// channel is down the instance serves nothing from its cache. A fresh instance's first
/// revocation can wait up to one lease: it cannot yet know that no other instance is
/// listening.
///
/// # Atomicity
///
/// Every operation is one Lua script: Redis runs a script to its end before any other command,
/// which gives what the SQL stores get from a transaction and a row lock (a rotation re-checks
/// the current hash inside the script, so of concurrent rotations exactly one wins; a sign-in
/// checks the fence and evicts beyond the session limit in the same script as its insert).
///
/// # Strict revocation across instances
///
/// As with `PostgresStore`: every instance subscribes to one channel (`{prefix}:invalidate`),
/// serves cached sessions only while it holds a lease (it heard its own heartbeat within the
/// last lease, default 1 s, [`with_lease`](Self::with_lease)), and a revoking call returns once
/// every other live instance acknowledged dropping the token or its lease must have lapsed. A
/// script that revokes publishes the hashes itself, so they are delivered exactly when the
/// revocation took effect, in order with the heartbeats.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use session_layer::RedisStore;
///
/// let store = RedisStore::connect("redis://127.0.0.1/").await?;
/// # Ok(()) }
/// ```
pub struct RedisStore<U = Uuid> {
    conn: ConnectionManager,
    prefix: Arc<str>,
    retention: Duration,
    feed: Arc<Feed<Channel>>,
    user: PhantomData<fn() -> U>,
}

impl<U> Clone for RedisStore<U> {
    fn clone(&self) -> Self {
        Self {
            conn: self.conn.clone(),
            prefix: Arc::clone(&self.prefix),
            retention: self.retention,
            feed: Arc::clone(&self.feed),
            user: PhantomData,
        }
    }
}

impl<U> std::fmt::Debug for RedisStore<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the URL: it may carry a password.
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("retention", &self.retention)
            .field("lease", &self.feed.lease())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// The key prefix of [`connect`](Self::connect).
    pub const DEFAULT_PREFIX: &str = "session-layer";

    /// Connects to `url` (`redis://[user:password@]host[:port][/db]` or
    /// `redis+unix:///path/to/socket[?db=N]`) with the default key prefix and [`Uuid`] user ids.
    /// The server must be reachable now; later outages are survived (see the type's docs).
    ///
    /// `rediss://` (TLS) is refused: this crate builds the `redis` client without TLS. Keep
    /// Redis on a private network, or put a local TLS tunnel in front of it.
    ///
    /// # Errors
    ///
    /// As [`connect_with`](RedisStore::connect_with). Messages name the server's address,
    /// never its password.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, Self::DEFAULT_PREFIX).await
    }
}

impl<U: UserId> RedisStore<U> {
    /// Connects to `url` with the key prefix `prefix` (1 to 64 ASCII letters, digits, `_`, `-`
    /// or `.`) and user ids of type `U`.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the prefix is not valid, the URL is malformed or uses TLS, the server
    /// cannot be reached, or its `maxmemory-policy` may evict keys (anything but
    /// `noeviction`).
    pub async fn connect_with(url: &str, prefix: &str) -> Result<Self, StoreError> {
        const OP: &str = "connect to Redis";
        let valid = (1..=64).contains(&prefix.len())
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !valid {
            return Err(StoreError::new(
                "configure the Redis key prefix",
                "the prefix must be 1 to 64 ASCII letters, digits, '_', '-' or '.'",
            ));
        }
        let client = redis::Client::open(url).map_err(|e| StoreError::new(OP, e))?;
        let addr = client.get_connection_info().addr();
        if matches!(addr, redis::ConnectionAddr::TcpTls { .. }) {
            return Err(StoreError::new(
                OP,
                "`rediss://` (TLS) is not supported by this build: use `redis://` on a private \
                 network, or a local TLS tunnel (stunnel, a sidecar) in front of the server",
            ));
        }
        // The address only: the URL may carry a password.
        let unreachable =
            |e: redis::RedisError| StoreError::new(OP, format!("Redis at {addr}: {e}"));
        // Fail fast while the server is down: the manager answers 503 (fail closed) rather
        // than holding requests, and the connection manager reconnects in the background.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(unreachable)?;
        refuse_eviction(&mut conn.clone(), addr).await?;
        let prefix: Arc<str> = prefix.into();
        let channel = Channel::new(client, conn.clone(), format!("{prefix}:invalidate").into());
        Ok(Self {
            conn,
            prefix,
            retention: DEFAULT_RETENTION,
            feed: Feed::new(channel, DEFAULT_LEASE),
            user: PhantomData,
        })
    }

    /// Sets the invalidation lease (default 1 s; at least 10 ms). Set it before the store is
    /// used, on every instance alike.
    #[must_use]
    pub fn with_lease(self, lease: Duration) -> Self {
        let channel = self.feed.transport().clone();
        Self {
            feed: Feed::new(channel, lease),
            ..self
        }
    }

    /// Subscribes to the invalidation channel through `url` instead of the store's own URL
    /// (for example a proxy that carries pub/sub). Set it before the store is used.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when `url` is not a Redis URL.
    pub fn with_listen_url(self, url: &str) -> Result<Self, StoreError> {
        let client =
            redis::Client::open(url).map_err(|e| StoreError::new("parse the listen URL", e))?;
        let channel = self.feed.transport().clone().listening_at(client);
        let lease = self.feed.lease();
        Ok(Self {
            feed: Feed::new(channel, lease),
            ..self
        })
    }

    /// Sets how long a session's keys outlive its expiry (default 30 days). Keep it at least
    /// the manager's `revoked_retention`, or revoked sessions leave before cleanup would purge
    /// them.
    #[must_use]
    pub fn with_retention(self, retention: Duration) -> Self {
        Self { retention, ..self }
    }

    /// The key prefix.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The pub/sub channel of the invalidation feed.
    #[must_use]
    pub fn channel(&self) -> &str {
        self.feed.transport().name()
    }

    /// Runs `script` with `args` after the prefix.
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        args: impl FnOnce(&mut redis::ScriptInvocation<'_>),
        operation: &'static str,
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        invocation.arg(&*self.prefix);
        args(&mut invocation);
        invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| StoreError::new(operation, e))
    }

    /// The channel and message header a revoking script publishes with.
    fn publishing(&self, ticket: &mut Ticket<Channel>) -> (String, String) {
        let header = self.feed.revocation_header(ticket);
        (self.channel().to_owned(), header)
    }

    /// Waits for the other instances when the script revoked anything; else forgets the ticket.
    async fn settle(&self, ticket: Ticket<Channel>, revoked: bool) {
        if revoked {
            self.feed.settle(ticket).await;
        }
    }
    /// Settles the reply of a script that revokes (`{published count, revoked hashes, error}`):
    /// waits for the other instances whenever it published anything, also when it failed
    /// half-way (Redis keeps a script's writes, and the script announced what it revoked),
    /// then reports the failure or the revoked hashes.
    async fn settle_revoked(
        &self,
        ticket: Ticket<Channel>,
        (published, revoked, failed): (String, Vec<String>, String),
        operation: &'static str,
    ) -> Result<Vec<TokenHash>, StoreError> {
        self.settle(ticket, published != "0").await;
        if !failed.is_empty() {
            return Err(StoreError::new(
                operation,
                format!(
                    "a script failed part-way ({failed}); what it revoked before stays revoked \
                     and was announced to every instance: check the server's data"
                ),
            ));
        }
        hashes(&revoked, operation)
    }
}

/// Refuses a server whose `maxmemory-policy` may evict keys: an evicted user index, fence or
/// rotated-out token key would silently undo a revocation, a fence or reuse detection.
async fn refuse_eviction(
    conn: &mut ConnectionManager,
    addr: &redis::ConnectionAddr,
) -> Result<(), StoreError> {
    let info: Result<String, _> = redis::cmd("INFO").arg("memory").query_async(conn).await;
    let policy = match &info {
        Ok(info) => info
            .lines()
            .find_map(|line| line.strip_prefix("maxmemory_policy:"))
            .map(str::trim),
        Err(_) => None,
    };
    match policy {
        Some("noeviction") => Ok(()),
        Some(policy) => Err(StoreError::new(
            "connect to Redis",
            format!(
                "Redis at {addr} has maxmemory-policy {policy}, which may evict the keys that \
                 hold revocations, fences and rotated-out tokens: set it to noeviction"
            ),
        )),
        None => {
            tracing::warn!(
                %addr,
                "could not read the Redis server's maxmemory-policy (INFO memory): make sure it \
                 is noeviction, or evicted keys may undo revocations"
            );
            Ok(())
        }
    }
}

fn hashes(hex: &[String], operation: &'static str) -> Result<Vec<TokenHash>, StoreError> {
    hex.iter()
        .map(|h| hash_from_hex(h))
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError::new(operation, e))
}

fn corrupt(operation: &'static str) -> impl FnOnce(Corrupt) -> StoreError {
    move |e| StoreError::new(operation, e)
}

#[async_trait]
impl<U: UserId> SessionStore<U> for RedisStore<U> {
    async fn insert(&self, insert: SessionInsert<'_, U>) -> Result<Inserted, StoreError> {
        const OP: &str = "insert a session";
        let s = insert.session;
        let remaining = (s.expires_at - insert.live.now).max(time::Duration::ZERO);
        let ttl = codec::ttl_ms(remaining.unsigned_abs().saturating_add(self.retention));
        let mut ticket = self.feed.ticket();
        let (channel, header) = match insert.max_active {
            Some(_) => self.publishing(&mut ticket),
            None => (String::new(), String::new()),
        };
        let fields = codec::session_fields(s);
        let reply: (String, (String, Vec<String>, String)) = self
            .run(
                &SCRIPTS.insert,
                |inv| {
                    inv.arg(s.id.to_string())
                        .arg(user_key(&s.user_id))
                        .arg(insert.token_hash.to_hex())
                        .arg(
                            insert
                                .fence
                                .map(|f| f.epoch().to_string())
                                .unwrap_or_default(),
                        )
                        .arg(
                            insert
                                .max_active
                                .map(|m| m.max(1).to_string())
                                .unwrap_or_default(),
                        )
                        .arg(micros(insert.live.now))
                        .arg(micros(insert.live.idle_cutoff))
                        .arg(ttl)
                        .arg(channel)
                        .arg(header)
                        .arg(micros(s.last_active_at))
                        .arg(micros(s.expires_at))
                        .arg(fields.len());
                    for (name, value) in fields {
                        inv.arg(name).arg(value);
                    }
                    for (id, at) in insert.recent_activity {
                        inv.arg(id.to_string()).arg(micros(*at));
                    }
                },
                OP,
            )
            .await?;
        let (outcome, revoked) = reply;
        match outcome.as_str() {
            "created" => Ok(Inserted::Created {
                evicted: self.settle_revoked(ticket, revoked, OP).await?,
            }),
            "fenced" => Ok(Inserted::Fenced),
            _ => Err(StoreError::new(OP, Corrupt("insert reply"))),
        }
    }

    async fn fence(&self, user_id: &U) -> Result<Fence, StoreError> {
        const OP: &str = "read a user's fence";
        let epoch: Option<u64> = redis::cmd("GET")
            .arg(format!("{}:f:{}", self.prefix, user_key(user_id)))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| StoreError::new(OP, e))?;
        Ok(Fence::new(epoch.unwrap_or(0)))
    }

    async fn find_by_token(
        &self,
        token_hash: &TokenHash,
    ) -> Result<Option<FoundSession<U>>, StoreError> {
        const OP: &str = "look up a session";
        let reply: Option<Vec<String>> = self
            .run(
                &SCRIPTS.find,
                |inv| {
                    inv.arg(token_hash.to_hex());
                },
                OP,
            )
            .await?;
        let Some(reply) = reply else { return Ok(None) };
        let [kind, id, fields @ ..] = reply.as_slice() else {
            return Err(StoreError::new(OP, Corrupt("lookup reply")));
        };
        let matched = match kind.as_str() {
            "c" => TokenMatch::Current,
            "r" => TokenMatch::Retired,
            "x" => {
                return Err(StoreError::new(
                    OP,
                    Corrupt("token key out of step with its session"),
                ));
            }
            _ => return Err(StoreError::new(OP, Corrupt("token key"))),
        };
        Ok(Some(FoundSession {
            session: session_from_fields(id, fields).map_err(corrupt(OP))?,
            matched,
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
        let mut ticket = self.feed.ticket();
        let (channel, header) = self.publishing(&mut ticket);
        let reply: Option<Vec<String>> = self
            .run(
                &SCRIPTS.rotate,
                |inv| {
                    inv.arg(session_id.to_string())
                        .arg(user_key(user_id))
                        .arg(current.to_hex())
                        .arg(new.to_hex())
                        .arg(micros(live.now))
                        .arg(micros(live.idle_cutoff))
                        .arg(channel)
                        .arg(header);
                },
                OP,
            )
            .await?;
        let Some(reply) = reply else { return Ok(None) };
        let [id, fields @ ..] = reply.as_slice() else {
            return Err(StoreError::new(OP, Corrupt("rotation reply")));
        };
        let session = session_from_fields(id, fields).map_err(corrupt(OP))?;
        self.settle(ticket, true).await;
        Ok(Some(session))
    }

    async fn list_active(
        &self,
        user_id: &U,
        live: Liveness,
    ) -> Result<Vec<Session<U>>, StoreError> {
        const OP: &str = "list a user's sessions";
        let reply: Vec<Vec<String>> = self
            .run(
                &SCRIPTS.list,
                |inv| {
                    inv.arg(user_key(user_id))
                        .arg(micros(live.now))
                        .arg(micros(live.idle_cutoff));
                },
                OP,
            )
            .await?;
        let mut sessions = reply
            .iter()
            .map(|row| match row.split_first() {
                Some((id, fields)) => session_from_fields(id, fields),
                None => Err(Corrupt("list reply")),
            })
            .collect::<Result<Vec<Session<U>>, _>>()
            .map_err(corrupt(OP))?;
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
        const OP: &str = "revoke a session";
        let mut ticket = self.feed.ticket();
        let (channel, header) = self.publishing(&mut ticket);
        let reply: Option<String> = self
            .run(
                &SCRIPTS.revoke,
                |inv| {
                    inv.arg(user_key(user_id))
                        .arg(session_id.to_string())
                        .arg(reason.as_str())
                        .arg(micros(now))
                        .arg(channel)
                        .arg(header);
                },
                OP,
            )
            .await?;
        let Some(hex) = reply else { return Ok(None) };
        let hash = hash_from_hex(&hex).map_err(corrupt(OP))?;
        self.settle(ticket, true).await;
        Ok(Some(hash))
    }

    async fn revoke_all(
        &self,
        user_id: &U,
        except: Option<Uuid>,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Vec<TokenHash>, StoreError> {
        const OP: &str = "revoke a user's sessions";
        let mut ticket = self.feed.ticket();
        let (channel, header) = self.publishing(&mut ticket);
        // "Moments ago", by the server's clock: two leases.
        let recent = u64::try_from((self.feed.lease() * 2).as_micros()).unwrap_or(u64::MAX);
        let reply: (String, Vec<String>, String) = self
            .run(
                &SCRIPTS.revoke_all,
                |inv| {
                    inv.arg(user_key(user_id))
                        .arg(except.map(|id| id.to_string()).unwrap_or_default())
                        .arg(reason.as_str())
                        .arg(micros(now))
                        .arg(recent)
                        .arg(channel)
                        .arg(header);
                },
                OP,
            )
            .await?;
        // The script may have re-published sessions revoked moments ago even when it revoked
        // none itself: a repeated "sign out everywhere" waits for them too.
        self.settle_revoked(ticket, reply, OP).await
    }

    async fn touch(&self, touches: &[(Uuid, OffsetDateTime)]) -> Result<(), StoreError> {
        if touches.is_empty() {
            return Ok(());
        }
        let _: i64 = self
            .run(
                &SCRIPTS.touch,
                |inv| {
                    for (id, at) in touches {
                        inv.arg(id.to_string()).arg(micros(*at));
                    }
                },
                "record session activity",
            )
            .await?;
        Ok(())
    }

    async fn cleanup(
        &self,
        now: OffsetDateTime,
        revoked_before: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let mut deleted = 0;
        loop {
            let (batch, visited): (u64, u64) = self
                .run(
                    &SCRIPTS.cleanup,
                    |inv| {
                        inv.arg(micros(now))
                            .arg(micros(revoked_before))
                            .arg(CLEANUP_BATCH);
                    },
                    "delete expired sessions",
                )
                .await?;
            deleted += batch;
            if visited == 0 {
                return Ok(deleted);
            }
        }
    }

    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<Invalidation>> {
        Some(self.feed.subscribe())
    }
}
