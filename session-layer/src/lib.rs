//! Real, revocable, multi-device user sessions for [Axum](https://docs.rs/axum) and any
//! [Tower](https://docs.rs/tower) service, with one `.layer()`.
//!
//! Every sign-in is a row with its device, IP address and last activity. Users can list their
//! devices, sign one out, or sign out everywhere else; a revoked device is refused on its very
//! next request, even though validations are cached.
//!
//! ```
//! use axum::{Router, extract::State, http::{Request, StatusCode}, routing::{get, post}};
//! use session_layer::{
//!     CurrentSession, NewSession, RevocationReason, SessionConfig, SessionLayer, SessionManager,
//! };
//! use tower::ServiceExt; // for `oneshot`, to call the app without a server
//!
//! async fn me(session: CurrentSession) -> String {
//!     format!("{} on {}", session.user_id(), session.device())
//! }
//!
//! async fn sign_out_others(
//!     State(sessions): State<SessionManager>,
//!     current: CurrentSession,
//! ) -> Result<String, StatusCode> {
//!     let revoked = sessions.revoke_others(&current, RevocationReason::RevokedByUser).await;
//!     revoked.map(|n| n.to_string()).map_err(|_| StatusCode::SERVICE_UNAVAILABLE)
//! }
//!
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = session_layer::SqliteStore::connect("sqlite::memory:").await?;
//! store.migrate().await?;
//! let sessions = SessionManager::new(store, SessionConfig::default())?;
//!
//! let app = Router::new()
//!     .route("/me", get(me))
//!     .route("/sessions/revoke-others", post(sign_out_others))
//!     .layer(SessionLayer::new(sessions.clone()))
//!     .with_state(sessions.clone());
//!
//! // At sign-in: find the user's id, read their fence, then read and verify the password hash,
//! // then issue a token. The fence makes the sign-in fail if a password change revoked the
//! // user's sessions in between.
//! let user_id = uuid::Uuid::now_v7();
//! let fence = sessions.fence(user_id).await?;
//! // ... read the password hash now (not before the fence) and verify it ...
//! let issued = sessions.create(NewSession::new(user_id).fence(fence)).await?;
//! // A login handler returns `(issued, Json(body))`: that sets the session cookie (or it sends
//! // `issued.token().expose()` to a bearer client). Here, the cookie is read back by hand.
//! let cookie = issued.cookie();
//!
//! // The client sends it back; the layer resolves it to the session.
//! let request = Request::get("/me")
//!     .header("cookie", format!("{}={}", cookie.name(), cookie.value()))
//!     .body(axum::body::Body::empty())?;
//! let response = app.clone().oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//!
//! // Without a token, `CurrentSession` answers 401 by itself.
//! let anonymous = app.oneshot(Request::get("/me").body(axum::body::Body::empty())?).await?;
//! assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
//! # Ok(()) }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```
//!
//! # Parts
//!
//! - [`SessionManager`]: create, validate, rotate, list, revoke one / others / all, cleanup.
//!   A sign-in or a rotation returns an [`IssuedSession`] and a sign-out
//!   ([`logout`](SessionManager::logout)) a [`SignedOut`]: both are response parts that set or
//!   clear the session cookie. [`list_for`](SessionManager::list_for) is the "your devices"
//!   list, "this device" marked.
//! - [`CrossSiteGuard`]: refuses cross-site state-changing requests (CSRF) of cookie clients;
//!   place it inside the [`SessionLayer`].
//! - [Anomaly events](anomaly): a session used from a new client address or user agent is
//!   logged and handed to [`SessionManager::on_anomaly`], whose verdict may end it before the
//!   request is served.
//! - [`SessionLayer`]: reads `Authorization: Bearer` or the session cookie and puts a
//!   [`CurrentSession`] into the request; [`CurrentSession`] is also the extractor (401 JSON
//!   when absent, 503 when the store was unreachable: [`SessionRejection`], and
//!   [`SessionUnavailable`] for plain Tower services). It records `session.id` and `user.id` on
//!   the request span ([see](layer#tracing)).
//! - [Stores](store) behind [`SessionStore`]: `PostgresStore` (feature `postgres`, with strict
//!   cross-instance revocation over `LISTEN/NOTIFY`), `RedisStore` (feature `redis`, the same
//!   over pub/sub), `SqliteStore` (feature `sqlite`),
//!   [`MemoryStore`].
//! - The application's own user ids: [`Uuid`](uuid::Uuid) by default, `i64`, `String`, or a
//!   newtype of one of them ([`UserId`]); `SessionManager<i64>`, `CurrentSession<i64>` and so
//!   on. SQL stores keep them in a column of the matching type, in tables named and placed as
//!   `store::Tables` says (schema, prefix, a foreign key to the app's users, and on PostgreSQL
//!   row-level security).
//! - [`SessionToken`]: 256 random bits, sent as 43 characters of base64url, stored only as its
//!   SHA-256 ([`TokenHash`]). Neither ever appears in `Debug` output, logs or errors.
//!
//! # Features
//!
//! | feature | adds |
//! |---|---|
//! | `postgres` (default) | `PostgresStore`, with strict cross-instance revocation |
//! | `sqlite` (default) | `SqliteStore`, on a bundled SQLite |
//! | `axum` (default) | the client address for anomaly events from axum's `ConnectInfo<SocketAddr>` |
//! | `redis` | `RedisStore`, with strict cross-instance revocation over pub/sub |
//! | `serde` | `Serialize` for [`Session`] and [`ListedSession`] (no token hash; the raw user agent only through `Session::with_user_agent`) |
//!
//! # Guarantees
//!
//! - A cache hit touches no database, allocates no token string, and takes no lock shared by
//!   all requests. Concurrent misses for one token make one store query.
//! - A revocation removes the token from this instance's cache before the call returns, and a
//!   lookup that was in flight cannot put it back. Every call that changes sessions runs on a
//!   task of its own, so a caller that goes away half-way (a dropped request) cannot leave a
//!   committed revocation out of the cache.
//! - Any token that a session has rotated out, presented again on any route, revokes the
//!   session ([`RevocationReason::TokenReuse`]) for as long as its row exists.
//! - [`SessionManager::revoke_all`] and [`SessionManager::revoke_others`] advance the user's
//!   [`Fence`]; a sign-in that read the fence before it checked the password creates no session
//!   once the fence has moved ([`Error::Fenced`]).
//! - Idle expiry and session-limit eviction judge on the most recent use known, in memory or
//!   written. Wall time is used only for what is stored and compared with stored rows; in-process
//!   bookkeeping runs on a monotonic clock, so a step of the system clock blocks nothing. The
//!   [`Clock`] is a seam for tests (`tokio::time::pause()`, or a manual clock).
//! - Tokens that yielded no session (unknown, revoked, expired) are remembered apart from the
//!   sessions, briefly, so repeating them costs no store query and a flood of them evicts no
//!   session. With PostgreSQL or Redis, other instances drop a revoked token before the
//!   revoking call returns (or once their lease has lapsed); while their notification connection
//!   is down they bypass the cache, and they empty it when it is back.
//! - `last_active_at` is written at most once per `touch_interval` per session, in batches, off
//!   the request path; [`SessionManager::shutdown`] writes what is pending.
//! - A store failure fails closed: the request is never treated as authenticated.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, rust_2018_idioms, clippy::all)]
#![deny(unreachable_pub, unsafe_code)]

mod activity;
pub mod anomaly;
mod cache;
mod client_ip;
mod clock;
mod config;
mod credential;
mod device;
mod error;
mod extract;
pub mod guard;
mod invalidation;
mod issued;
pub mod layer;
mod manager;
pub mod metrics;
mod session;
pub mod store;
mod token;
mod touch;
mod user_id;
mod validate;

pub use anomaly::SessionAnomaly;
pub use client_ip::resolve_client_ip;
pub use clock::{Clock, ManualClock};
pub use config::{CookieConfig, SessionConfig, SessionConfigBuilder};
#[doc(hidden)]
pub use device::user_agent_data_ready;
pub use device::{DeviceInfo, DeviceType};
pub use error::{ConfigError, Error, StoreError, TokenError};
pub use extract::{CurrentSession, SessionRejection, SessionUnavailable, Transport};
pub use guard::CrossSiteGuard;
pub use issued::{CookieHeaderError, IssuedSession, SignedOut};
pub use layer::{SessionLayer, SessionService};
pub use manager::{NewSession, SessionManager};
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub use session::WithUserAgent;
pub use session::{ListedSession, RevocationReason, Session, UnknownReason};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use store::PostgresStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use store::RedisStore;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use store::SqliteStore;
pub use store::{Fence, MemoryStore, SessionStore};
pub use token::{SessionToken, TOKEN_LEN, TokenHash};
pub use user_id::{UserId, UserIdKind, UserIdValue};

/// Re-exported so that applications build cookies with the same version.
pub use cookie;
