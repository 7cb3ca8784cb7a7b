//! [`SessionLayer`]: the Tower middleware that turns a session token into a
//! [`CurrentSession`](crate::CurrentSession).
//!
//! For each request the layer reads the token from `Authorization: Bearer` (which wins when
//! both are sent; another scheme is ignored) or else from the session cookie, hashes it, and
//! looks the hash up in the in-process cache; on a miss it asks the store (one query, shared by
//! concurrent misses of the same token). A usable session goes into the request extensions.
//!
//! A missing or bad credential is not the layer's decision: the request goes on without a
//! session, and the [`CurrentSession`](crate::CurrentSession) extractor answers 401. When the
//! store cannot be reached the request goes on marked as such, and the extractor answers 503: it
//! is never treated as authenticated.
//!
//! # Tracing
//!
//! When a request is authenticated, the layer records the session id and the user id on the
//! current span, in the fields `session.id` and `user.id`, if that span declares them (tracing
//! records only declared fields). Declare them, empty, on the request span, for instance with
//! tower-http's `TraceLayer` outside the session layer:
//!
//! ```
//! use axum::{Router, http::Request, routing::get};
//! use session_layer::{CurrentSession, MemoryStore, SessionConfig, SessionLayer, SessionManager};
//! use tower_http::trace::TraceLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let manager = SessionManager::new(MemoryStore::new(), SessionConfig::default())?;
//! let app: Router = Router::new()
//!     .route("/me", get(|s: CurrentSession| async move { s.user_id().to_string() }))
//!     .layer(SessionLayer::new(manager))
//!     .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
//!         tracing::info_span!(
//!             "request",
//!             method = %request.method(),
//!             path = request.uri().path(),
//!             session.id = tracing::field::Empty,
//!             user.id = tracing::field::Empty,
//!         )
//!     }));
//! # Ok(()) }
//! ```
//!
//! Every event inside the request then carries them, and so does the span's close.
//!
//! ```
//! use axum::{Router, routing::get};
//! use session_layer::{CurrentSession, MemoryStore, SessionConfig, SessionLayer, SessionManager};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = SessionManager::new(MemoryStore::new(), SessionConfig::default())?;
//! let app: Router = Router::new()
//!     .route("/me", get(|s: CurrentSession| async move { s.user_id().to_string() }))
//!     .layer(SessionLayer::new(manager));
//! # Ok(()) }
//! ```

mod future;
mod service;

pub use future::ResponseFuture;
pub use service::{SessionLayer, SessionService};
