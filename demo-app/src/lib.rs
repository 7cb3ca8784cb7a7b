//! The session-layer demo: an Axum app that serves the HTTP contract in `shared/demo-api.md`.
//!
//! [`build_app`] connects the database (SQLite or PostgreSQL), runs the migrations of the library
//! and of the app, and returns the [`Router`] plus an [`AppHandle`] for shutdown. `main.rs` binds
//! it to `BIND_ADDR`; the end-to-end tests bind it to an ephemeral port.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::net::SocketAddr;
//! use demo_app::{AppConfig, build_app};
//!
//! let config = AppConfig::from_env()?;
//! let (router, handle) = build_app(config).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! handle.shutdown().await;
//! # Ok(()) }
//! ```
#![warn(missing_docs, rust_2018_idioms, clippy::all)]
#![deny(unreachable_pub, unsafe_code)]

mod accounts;
pub mod config;
mod error;
mod middleware;
mod page;
mod routes;

use axum::Router;
use axum::routing::{delete, get, post};
use session_layer::{PostgresStore, SessionLayer, SessionManager, SqliteStore};
use tokio::task::JoinHandle;

pub use config::{AppConfig, ConfigError};
pub use error::{ApiError, ApiJson};

use accounts::{Db, Passwords};
use routes::{AppState, auth, sessions};

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
}

impl AppHandle {
    /// The session manager the app uses.
    #[must_use]
    pub fn sessions(&self) -> &SessionManager {
        &self.sessions
    }

    /// Stops the cleanup task and writes pending `last_active_at` updates. Call it after the
    /// server stopped accepting requests.
    pub async fn shutdown(self) {
        self.cleanup.abort();
        self.sessions.shutdown().await;
    }
}

/// Connects the database named by `config.database_url`, runs the migrations of the session
/// library and of the app, starts the session cleanup task, and returns the router.
///
/// Serve it with `into_make_service_with_connect_info::<SocketAddr>()` so that sessions record
/// the client address.
///
/// # Errors
///
/// [`StartError`] when the database cannot be reached or migrated.
pub async fn build_app(config: AppConfig) -> Result<(Router, AppHandle), StartError> {
    let (db, sessions) = if config.database_url.starts_with("sqlite:") {
        let store = SqliteStore::connect(&config.database_url).await?;
        store.migrate().await?;
        let db = Db::Sqlite(store.pool().clone());
        (db, SessionManager::new(store, config.session.clone())?)
    } else {
        let store = PostgresStore::connect(&config.database_url).await?;
        store.migrate().await?;
        let db = Db::Postgres(store.pool().clone());
        (db, SessionManager::new(store, config.session.clone())?)
    };
    db.migrate().await?;
    let passwords = Passwords::new().await.map_err(|_| StartError::Passwords)?;
    let cleanup = sessions.spawn_cleanup(config.cleanup_period);

    let state = AppState {
        sessions: sessions.clone(),
        db,
        passwords,
    };
    let router = router(state);
    Ok((router, AppHandle { sessions, cleanup }))
}

fn router(state: AppState) -> Router {
    let manager = state.sessions.clone();
    Router::new()
        .route("/", get(page::index))
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
        .layer(SessionLayer::new(manager))
        .layer(axum::middleware::from_fn(middleware::reject_cross_site))
        .layer(axum::middleware::from_fn(middleware::log_request))
        .with_state(state)
}
