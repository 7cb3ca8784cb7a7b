//! The smallest useful app: sign in with a user id, see who you are, sign out everywhere else.
//!
//! ```sh
//! cargo run -p session-layer --example minimal
//! TOKEN=$(curl -s -X POST localhost:3001/login)           # a bearer token, as plain text
//! curl -H "authorization: Bearer $TOKEN" localhost:3001/me
//! ```

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use session_layer::{
    CurrentSession, NewSession, RevocationReason, SessionConfig, SessionLayer, SessionManager,
    SqliteStore,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = SqliteStore::connect("sqlite://minimal-example.db").await?;
    store.migrate().await?;
    let sessions = SessionManager::new(store, SessionConfig::default())?;

    let app = Router::new()
        .route("/login", post(login))
        .route(
            "/me",
            get(|s: CurrentSession| async move { s.user_id().to_string() }),
        )
        .route("/sessions/revoke-others", post(revoke_others))
        .layer(SessionLayer::new(sessions.clone()))
        .with_state(sessions.clone());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async { drop(tokio::signal::ctrl_c().await) })
        .await?;
    sessions.shutdown().await;
    Ok(())
}

/// A real app checks a password first; the example signs in a fresh user id (`postgres.rs`
/// also records the device and the client address).
async fn login(State(sessions): State<SessionManager>) -> Result<String, StatusCode> {
    let issued = sessions.create(NewSession::new(uuid::Uuid::now_v7())).await;
    let issued = issued.map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(issued.token().expose())
}

async fn revoke_others(
    State(sessions): State<SessionManager>,
    current: CurrentSession,
) -> Result<Json<u64>, StatusCode> {
    let revoked = sessions
        .revoke_others(&current, RevocationReason::RevokedByUser)
        .await;
    revoked
        .map(Json)
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)
}
