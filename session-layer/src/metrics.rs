//! Names of the counters this crate records through the [`metrics`](https://docs.rs/metrics)
//! facade. Install any recorder (Prometheus exporter, StatsD, ...) to export them; without one
//! they cost next to nothing.

/// Requests whose session came from the in-process cache.
pub const CACHE_HITS: &str = "session_layer_cache_hits_total";
/// Requests whose token was not in the cache.
pub const CACHE_MISSES: &str = "session_layer_cache_misses_total";
/// Token lookups sent to the store.
pub const STORE_QUERIES: &str = "session_layer_store_queries_total";
/// Sessions revoked through the manager (label `reason`).
pub const REVOCATIONS: &str = "session_layer_revocations_total";
/// Store operations that failed.
pub const STORE_ERRORS: &str = "session_layer_store_errors_total";
/// Rotated-out tokens presented again (each revokes its session).
pub const TOKEN_REUSE: &str = "session_layer_token_reuse_total";
