//! The session-layer demo: an Axum app that serves the HTTP contract in `demo-app/API.md`.
//!
//! [`build_app`] connects the database (SQLite or PostgreSQL; with `SESSION_STORE_URL`, sessions
//! go to Redis), runs the migrations of the library
//! and of the app, and returns the [`Router`] plus an [`AppHandle`] for shutdown; [`serve`]
//! (or [`serve_with`]) serves it (request-head timeout, stalled writes, connection limits,
//! bounded graceful shutdown). The router bounds request bodies and request time itself. `main.rs` binds it to
//! `BIND_ADDR`; the end-to-end tests bind it to an ephemeral port.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use demo_app::{AppConfig, build_app, serve};
//!
//! let config = AppConfig::from_env()?;
//! let (router, handle) = build_app(config).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! serve(listener, router, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! handle.shutdown().await;
//! # Ok(()) }
//! ```
#![warn(missing_docs, rust_2018_idioms, clippy::all)]
#![deny(unreachable_pub, unsafe_code)]

mod accounts;
pub mod config;
mod error;
mod hashing;
mod locations;
mod page;
mod quota;
mod reset;
mod routes;
pub mod server;
mod throttle;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, Response, header};
use axum::middleware::{self, Next};
use axum::response::IntoResponse as _;
use axum::routing::{delete, get, post};
use session_layer::store::Tables;
use session_layer::{
    CrossSiteGuard, PostgresStore, RedisStore, SessionLayer, SessionManager, SqliteStore,
};
use tokio::task::JoinHandle;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

pub use config::{AppConfig, ConfigError};
pub use error::{ApiError, ApiJson};
pub use server::{ConnectionLimits, serve, serve_with};

use accounts::{Db, Passwords};
use config::Database;
use locations::NewLocations;
use reset::ResetQueue;
use routes::{AppState, auth, sessions};
use throttle::Throttle;

/// The app could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened or the session table migrated.
    #[error(transparent)]
    Store(#[from] session_layer::StoreError),
    /// The app's own migrations failed.
    #[error("the app's migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The session manager could not be built.
    #[error(transparent)]
    Session(#[from] session_layer::Error),
    /// The password hasher could not be prepared.
    #[error("the password hasher could not be prepared")]
    Passwords,
}

/// What the running app needs at shutdown.
#[derive(Debug)]
pub struct AppHandle {
    sessions: SessionManager,
    cleanup: JoinHandle<()>,
    resets: JoinHandle<()>,
}

impl AppHandle {
    /// The default [`ConnectionLimits`], with the trusted proxies (`TRUSTED_PROXIES`) exempt
    /// from the per-address limit: pass them to [`serve_with`].
    #[must_use]
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            exempt: self.sessions.config().trusted_proxies().to_vec(),
            ..ConnectionLimits::default()
        }
    }

    /// The session manager the app uses.
    #[must_use]
    pub fn sessions(&self) -> &SessionManager {
        &self.sessions
    }

    /// Stops the cleanup and reset tasks and writes pending `last_active_at` updates. Call it
    /// after the server stopped accepting requests.
    pub async fn shutdown(self) {
        self.cleanup.abort();
        self.resets.abort();
        self.sessions.shutdown().await;
    }
}

/// Connects the database named by `config.database_url` (and the Redis server of
/// `config.session_store_url` when set, for the sessions), runs the migrations of the session
/// library and of the app, starts the session cleanup task, and returns the router.
///
/// Serve it with [`serve`] (or axum's `into_make_service_with_connect_info::<SocketAddr>()`) so
/// that sessions record the client address.
///
/// # Errors
///
/// [`StartError`] when the database cannot be reached or migrated.
pub async fn build_app(config: AppConfig) -> Result<(Router, AppHandle), StartError> {
    // Sessions sit beside the accounts, in their own schema (PostgreSQL) or under their own
    // prefix (SQLite), with a foreign key to `users`: deleting a user deletes their sessions.
    // The accounts are migrated first, so the key has a table to point at.
    let sqlite = config.database == Database::Sqlite;
    let (db, sessions) = if let Some(url) = &config.session_store_url {
        // Sessions in Redis, accounts in the database. No foreign key can reach from one to
        // the other; the demo never deletes a user (an app that does calls `revoke_all` first).
        let db = accounts_only(&config.database_url, sqlite).await?;
        db.migrate().await?;
        let store = RedisStore::connect(url).await?;
        (db, SessionManager::new(store, config.session.clone())?)
    } else if sqlite {
        let tables = Tables::new().prefix("auth_").references("users", "id");
        let store = SqliteStore::connect_with(&config.database_url, tables).await?;
        let db = Db::Sqlite(store.pool().clone());
        db.migrate().await?;
        store.migrate().await?;
        (db, SessionManager::new(store, config.session.clone())?)
    } else {
        let tables = Tables::new()
            .schema("auth")
            .references("public.users", "id");
        let store = PostgresStore::connect_with(&config.database_url, tables).await?;
        let db = Db::Postgres(store.pool().clone());
        db.migrate().await?;
        store.migrate().await?;
        (db, SessionManager::new(store, config.session.clone())?)
    };
    let passwords = Passwords::new().await.map_err(|_| StartError::Passwords)?;
    let cleanup = sessions.spawn_cleanup(config.cleanup_period);
    let locations = NewLocations::watch(&sessions);
    let (resets, reset_worker) = ResetQueue::start(db.clone());

    let state = AppState {
        sessions: sessions.clone(),
        db,
        passwords,
        throttle: Arc::new(Throttle::new()),
        resets,
        locations,
    };
    let router = router(state);
    Ok((
        router,
        AppHandle {
            sessions,
            cleanup,
            resets: reset_worker,
        },
    ))
}

/// The accounts' database without the session tables: the stores' own connection settings
/// (SQLite WAL and busy timeout, pool sizes), their tables never created.
async fn accounts_only(url: &str, sqlite: bool) -> Result<Db, StartError> {
    Ok(if sqlite {
        Db::Sqlite(SqliteStore::connect(url).await?.pool().clone())
    } else {
        Db::Postgres(PostgresStore::connect(url).await?.pool().clone())
    })
}

/// Largest request body (every body of the API is a small JSON object); a larger one is refused
/// with `400 invalid_request` before it is read any further.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Longest wait for the next part of a request body; then the body is refused (`400`) and the
/// connection closed.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest time from a request head to its answer (a body trickled in, a handler stuck on the
/// database): then `408 request_timeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Refuses a request whose `Content-Length` is over [`MAX_BODY_BYTES`] at once, without waiting
/// for its body (the body limit alone would only notice once that much has arrived).
async fn refuse_large_bodies(request: Request, next: Next) -> axum::response::Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    if announced.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return ApiError::InvalidRequest(format!(
            "the body is larger than {} KiB",
            MAX_BODY_BYTES / 1024
        ))
        .into_response();
    }
    next.run(request).await
}

/// Answers `408 request_timeout` when the rest of the stack takes over [`REQUEST_TIMEOUT`].
async fn request_deadline(request: Request, next: Next) -> axum::response::Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout.into_response(),
    }
}

fn router(state: AppState) -> Router {
    let manager = state.sessions.clone();
    Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/app.css", get(page::styles))
        .route("/api/auth/register", post(auth::register))
        .route("/api/auth/login", post(auth::login))
        .route("/api/auth/logout", post(auth::logout))
        .route("/api/auth/refresh", post(auth::refresh))
        .route("/api/auth/password", post(auth::change_password))
        .route(
            "/api/auth/password-reset/request",
            post(auth::request_password_reset),
        )
        .route(
            "/api/auth/password-reset/confirm",
            post(auth::confirm_password_reset),
        )
        .route("/api/me", get(auth::me))
        .route("/api/sessions", get(sessions::list))
        .route("/api/sessions/{id}", delete(sessions::revoke))
        .route("/api/sessions/revoke-others", post(sessions::revoke_others))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // Inside the session layer: it sees whether a bearer token authenticated the request.
        .layer(CrossSiteGuard::new())
        .layer(SessionLayer::new(manager))
        // Slow or large bodies (`demo-app/API.md`, "Starting it"): a body that stops arriving,
        // a request that takes too long, a body larger than any the API takes.
        .layer(RequestBodyTimeoutLayer::new(BODY_READ_TIMEOUT))
        .layer(middleware::from_fn(request_deadline))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(refuse_large_bodies))
        // Headers of `demo-app/API.md`, "Hardening that clients can observe". Pages set their
        // own policy; everything else (JSON) gets one that allows nothing.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        // One INFO line per request: method, path (never the query), status, latency. Bodies
        // and headers, where tokens and passwords travel, are never logged.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        path = request.uri().path(),
                        // Filled in by the session layer for an authenticated request.
                        session.id = tracing::field::Empty,
                        user.id = tracing::field::Empty,
                    )
                })
                .on_request(())
                .on_response(|response: &Response<_>, latency: Duration, _: &Span| {
                    tracing::info!(
                        status = response.status().as_u16(),
                        latency_ms = format_args!("{:.1}", latency.as_secs_f64() * 1000.0),
                        "answered"
                    );
                })
                .on_failure(()),
        )
        .with_state(state)
}
