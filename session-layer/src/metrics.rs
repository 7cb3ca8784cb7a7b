//! Names of the counters this crate records through the [`metrics`](https://docs.rs/metrics)
//! facade. Install any recorder (Prometheus exporter, StatsD, ...) to export them; without one
//! they cost next to nothing.
//!
//! Install the recorder before building the [`SessionManager`](crate::SessionManager): it
//! registers its counters once, at construction, so the request path only increments them.

/// Requests whose session came from the in-process cache.
pub const CACHE_HITS: &str = "session_layer_cache_hits_total";
/// Requests whose token was not in the cache.
pub const CACHE_MISSES: &str = "session_layer_cache_misses_total";
/// Cache misses answered from the memory of unknown, revoked or expired tokens, without a store
/// query.
pub const MISS_CACHE_HITS: &str = "session_layer_miss_cache_hits_total";
/// Token lookups sent to the store.
pub const STORE_QUERIES: &str = "session_layer_store_queries_total";
/// Sessions revoked through the manager (label `reason`).
pub const REVOCATIONS: &str = "session_layer_revocations_total";
/// Store operations that failed.
pub const STORE_ERRORS: &str = "session_layer_store_errors_total";
/// Rotated-out tokens presented again (each revokes its session).
pub const TOKEN_REUSE: &str = "session_layer_token_reuse_total";

/// Histogram of how long a revoking call waited, after its commit, for every other live
/// instance to acknowledge the invalidation (PostgreSQL with leases), in seconds.
pub const REVOCATION_PROPAGATION_SECONDS: &str = "session_layer_revocation_propagation_seconds";
/// Acknowledgements received from other instances for this instance's revocations.
pub const REVOCATION_ACKS: &str = "session_layer_revocation_acks_total";
/// Revocations that waited out the lease because an instance did not acknowledge in time.
pub const REVOCATION_ACK_TIMEOUTS: &str = "session_layer_revocation_ack_timeouts_total";
/// Times this instance stopped trusting its cache because its invalidation lease lapsed.
pub const CACHE_LEASE_LAPSES: &str = "session_layer_cache_lease_lapses_total";

/// Counter handles registered once per manager, so a request does no registry lookup.
#[derive(Clone)]
pub(crate) struct Counters {
    pub(crate) cache_hits: metrics::Counter,
    pub(crate) cache_misses: metrics::Counter,
    pub(crate) miss_cache_hits: metrics::Counter,
    pub(crate) store_queries: metrics::Counter,
    pub(crate) store_errors: metrics::Counter,
    pub(crate) token_reuse: metrics::Counter,
}

impl Counters {
    pub(crate) fn register() -> Self {
        Self {
            cache_hits: metrics::counter!(CACHE_HITS),
            cache_misses: metrics::counter!(CACHE_MISSES),
            miss_cache_hits: metrics::counter!(MISS_CACHE_HITS),
            store_queries: metrics::counter!(STORE_QUERIES),
            store_errors: metrics::counter!(STORE_ERRORS),
            token_reuse: metrics::counter!(TOKEN_REUSE),
        }
    }
}
