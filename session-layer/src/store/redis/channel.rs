//! The invalidation feed's transport on Redis: `PUBLISH` to send, a subscribed pub/sub
//! connection to hear. Revocations are published by the scripts that make them, inside the
//! script, so they are delivered exactly when the write took effect.

use std::sync::Arc;

use futures_util::StreamExt as _;
use redis::aio::{ConnectionManager, PubSubStream};

use crate::store::feed::{Transport, TransportError};

/// One pub/sub channel.
#[derive(Clone)]
pub(super) struct Channel {
    client: redis::Client,
    conn: ConnectionManager,
    name: Arc<str>,
}

impl Channel {
    pub(super) fn new(client: redis::Client, conn: ConnectionManager, name: Arc<str>) -> Self {
        Self { client, conn, name }
    }

    /// The same channel, heard through a connection to another URL.
    pub(super) fn listening_at(self, client: redis::Client) -> Self {
        Self { client, ..self }
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }
}

impl Transport for Channel {
    type Listener = PubSubStream;

    fn send(
        &self,
        payload: String,
    ) -> impl Future<Output = Result<(), TransportError>> + Send + 'static + use<> {
        let (mut conn, name) = (self.conn.clone(), Arc::clone(&self.name));
        async move {
            redis::cmd("PUBLISH")
                .arg(&*name)
                .arg(payload)
                .query_async::<i64>(&mut conn)
                .await?;
            Ok(())
        }
    }

    fn listen(
        &self,
    ) -> impl Future<Output = Result<PubSubStream, TransportError>> + Send + 'static + use<> {
        let (client, name) = (self.client.clone(), Arc::clone(&self.name));
        async move {
            // A connection of its own: a subscribed connection can do nothing else.
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&*name).await?;
            Ok(pubsub.into_on_message())
        }
    }

    async fn next(listener: &mut PubSubStream) -> Option<String> {
        // The stream ends when the connection breaks.
        let message = listener.next().await?;
        Some(String::from_utf8_lossy(message.get_payload_bytes()).into_owned())
    }
}
