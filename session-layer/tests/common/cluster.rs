//! Instances of one application on one shared store, for the cross-instance suites that run on
//! every store with a feed.

use std::time::Duration;

use session_layer::{SessionConfig, SessionManager};

use super::relay::Relay;

/// How an instance reaches the store.
#[derive(Clone, Copy)]
pub enum Via<'a> {
    Direct,
    /// Its listener goes through the relay; its queries do not.
    ListenThrough(&'a Relay),
    /// Everything goes through the relay (a relay kill is the instance crashing).
    AllThrough(&'a Relay),
}

/// One shared store that several instances use.
#[allow(async_fn_in_trait)] // only awaited in place by the tests
pub trait Cluster {
    /// A new instance with `lease`.
    async fn instance(&self, lease: Duration, via: Via<'_>) -> SessionManager;

    /// The port of the server, for a relay in front of it.
    fn port(&self) -> u16;
}

fn manager(store: impl session_layer::SessionStore) -> SessionManager {
    SessionManager::new(store, SessionConfig::default()).unwrap()
}

/// A fresh database on the shared PostgreSQL server.
#[cfg(feature = "postgres")]
pub struct Postgres {
    url: String,
}

#[cfg(feature = "postgres")]
impl Postgres {
    pub fn new() -> Self {
        Self {
            url: test_support::postgres_database(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(feature = "postgres")]
impl Cluster for Postgres {
    async fn instance(&self, lease: Duration, via: Via<'_>) -> SessionManager {
        let store = match via {
            Via::Direct => super::postgres_store(&self.url).await,
            Via::ListenThrough(relay) => super::postgres_store(&self.url)
                .await
                .with_listen_url(&relay.url(&self.url))
                .unwrap(),
            Via::AllThrough(relay) => {
                let url = relay.url(&self.url);
                super::postgres_store(&url)
                    .await
                    .with_listen_url(&url)
                    .unwrap()
            }
        };
        manager(store.with_lease(lease))
    }

    fn port(&self) -> u16 {
        test_support::postgres_server().port()
    }
}

/// A fresh key prefix on the shared Redis server.
#[cfg(feature = "redis")]
pub struct Redis {
    url: String,
    prefix: String,
}

#[cfg(feature = "redis")]
impl Redis {
    pub fn new() -> Self {
        Self {
            url: test_support::redis_server().url(),
            prefix: test_support::redis_prefix(),
        }
    }
}

#[cfg(feature = "redis")]
impl Cluster for Redis {
    async fn instance(&self, lease: Duration, via: Via<'_>) -> SessionManager {
        let connect = async |url: &str| {
            session_layer::RedisStore::connect_with(url, &self.prefix)
                .await
                .unwrap()
        };
        let store = match via {
            Via::Direct => connect(&self.url).await,
            Via::ListenThrough(relay) => connect(&self.url)
                .await
                .with_listen_url(&relay.url(&self.url))
                .unwrap(),
            Via::AllThrough(relay) => {
                let url = relay.url(&self.url);
                connect(&url).await.with_listen_url(&url).unwrap()
            }
        };
        manager(store.with_lease(lease))
    }

    fn port(&self) -> u16 {
        test_support::redis_server().port()
    }
}
