//! The invalidation feed's transport on PostgreSQL: `NOTIFY` to send, a `LISTEN`ing connection
//! to hear, and the revocations of a transaction notified inside it (delivered only if it
//! commits).

use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use crate::error::StoreError;
use crate::store::feed::{Feed, Ticket, Transport, TransportError};
use crate::token::TokenHash;

/// Hashes per notification: 65 bytes each keeps a payload well under PostgreSQL's 8000-byte cap.
const HASHES_PER_NOTIFICATION: usize = 100;

/// `NOTIFY` and `LISTEN` on one channel.
#[derive(Debug, Clone)]
pub(super) struct Notify {
    pool: PgPool,
    /// The channel (it follows the configured tables, so two applications on one database keep
    /// apart).
    channel: Arc<str>,
    /// The pool the listener connects through: a one-connection pool on a separate URL when the
    /// main pool goes through a pooler in transaction mode, which cannot carry `LISTEN`.
    listen: PgPool,
}

impl Notify {
    pub(super) fn new(pool: PgPool, channel: Arc<str>) -> Self {
        Self {
            listen: pool.clone(),
            pool,
            channel,
        }
    }

    /// The same, listening through a direct connection to `url`.
    pub(super) fn listening_at(self, url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::new("parse the listen URL", e))?;
        Ok(Self {
            listen: PgPoolOptions::new()
                .max_connections(1)
                .connect_lazy_with(options),
            ..self
        })
    }
}

impl Transport for Notify {
    type Listener = PgListener;

    fn send(
        &self,
        payload: String,
    ) -> impl Future<Output = Result<(), TransportError>> + Send + 'static + use<> {
        let (pool, channel) = (self.pool.clone(), Arc::clone(&self.channel));
        async move {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&*channel)
                .bind(payload)
                .execute(&pool)
                .await?;
            Ok(())
        }
    }

    fn listen(
        &self,
    ) -> impl Future<Output = Result<PgListener, TransportError>> + Send + 'static + use<> {
        let (pool, channel) = (self.listen.clone(), Arc::clone(&self.channel));
        async move {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.eager_reconnect(false);
            listener.listen(&channel).await?;
            Ok(listener)
        }
    }

    async fn next(listener: &mut PgListener) -> Option<String> {
        match listener.try_recv().await {
            Ok(Some(notification)) => Some(notification.payload().to_owned()),
            // `Ok(None)`: the connection was lost (no eager reconnect).
            Ok(None) | Err(_) => None,
        }
    }
}

/// Notifies `hashes` inside `tx` (delivered only if it commits) and registers them to be
/// acknowledged; pass the returned ticket to [`Feed::settle`] after the commit.
pub(super) async fn publish(
    feed: &Arc<Feed<Notify>>,
    tx: &mut Transaction<'_, Postgres>,
    hashes: &[TokenHash],
    operation: &'static str,
) -> Result<Ticket<Notify>, StoreError> {
    let mut ticket = feed.ticket();
    for chunk in hashes.chunks(HASHES_PER_NOTIFICATION) {
        let mut payload = feed.revocation_header(&mut ticket);
        payload.push_str(
            &chunk
                .iter()
                .map(TokenHash::to_hex)
                .collect::<Vec<_>>()
                .join(","),
        );
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&*feed.transport().channel)
            .bind(payload)
            .execute(&mut **tx)
            .await
            .map_err(|e| StoreError::new(operation, e))?;
    }
    Ok(ticket)
}
