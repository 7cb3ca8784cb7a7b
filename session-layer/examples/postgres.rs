//! PostgreSQL, several instances: start two copies on one database, sign in on one, sign out
//! on the other; the cookie or token is refused on both before the sign-out answers.
//!
//! ```sh
//! export DATABASE_URL=postgres://localhost/sessions
//! BIND_ADDR=127.0.0.1:3002 cargo run -p session-layer --example postgres &
//! BIND_ADDR=127.0.0.1:3012 cargo run -p session-layer --example postgres &
//! curl -c jar -X POST localhost:3002/login       # sets the cookie
//! curl -b jar localhost:3012/sessions            # the other instance knows the session
//! curl -b jar -X POST localhost:3012/logout      # clears the cookie
//! curl -b jar -i localhost:3002/sessions         # 401 at once on the first instance
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header::USER_AGENT};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use session_layer::{
    CookieConfig, CrossSiteGuard, CurrentSession, IssuedSession, NewSession, PostgresStore,
    SessionConfig, SessionLayer, SessionManager, SignedOut,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL=postgres://…")?;
    let addr = std::env::var("BIND_ADDR").unwrap_or_else(|_| "127.0.0.1:3002".to_owned());
    let store = PostgresStore::connect(&url).await?;
    store.migrate().await?;
    // Plain HTTP on localhost: the `session` cookie without `Secure`. Keep the default
    // (`__Host-session`, `Secure`) behind HTTPS.
    let config = SessionConfig::builder()
        .cookie(CookieConfig::insecure())
        .build()?;
    let sessions = SessionManager::new(store, config)?;
    let cleanup = sessions.spawn_cleanup(Duration::from_secs(3600));

    let app = Router::new()
        .route("/login", post(login))
        .route("/sessions", get(list))
        .route("/logout", post(logout))
        // Cookies: refuse cross-site POSTs (CSRF). Inside the session layer, so that bearer
        // clients pass.
        .layer(CrossSiteGuard::new())
        .layer(SessionLayer::new(sessions.clone()))
        .with_state(sessions.clone());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async { drop(tokio::signal::ctrl_c().await) })
    .await?;
    cleanup.abort();
    sessions.shutdown().await;
    Ok(())
}

/// A real app checks a password first (see the crate docs on fences); the example signs in a
/// fresh user id. The token goes out in the `HttpOnly` cookie only: never also in a body that
/// the page's scripts could read.
async fn login(
    State(sessions): State<SessionManager>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<(IssuedSession, Json<Value>), StatusCode> {
    let new = NewSession::new(uuid::Uuid::now_v7())
        .user_agent(headers.get(USER_AGENT).and_then(|v| v.to_str().ok()))
        .ip_address(sessions.client_ip(&headers, Some(peer.ip())));
    let issued = sessions.create(new).await;
    let issued = issued.map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    let body = json!({ "session_id": issued.session().id.to_string() });
    Ok((issued, Json(body)))
}

/// The caller's devices, most recently active first, "this device" marked.
async fn list(
    State(sessions): State<SessionManager>,
    current: CurrentSession,
) -> Result<Json<Value>, StatusCode> {
    let listed = sessions.list_for(&current).await;
    let listed = listed.map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    let rows: Vec<Value> = listed
        .iter()
        .map(|entry| {
            json!({
                "id": entry.session.id.to_string(),
                "device": entry.session.device,
                "last_active_unix": entry.session.last_active_at.unix_timestamp(),
                "current": entry.current,
            })
        })
        .collect();
    Ok(Json(json!({ "sessions": rows })))
}

async fn logout(
    State(sessions): State<SessionManager>,
    current: CurrentSession,
) -> Result<(SignedOut, StatusCode), StatusCode> {
    let signed_out = sessions.logout(&current).await;
    let signed_out = signed_out.map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok((signed_out, StatusCode::NO_CONTENT))
}
