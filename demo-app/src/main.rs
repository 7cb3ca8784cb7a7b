//! `cargo run -p demo-app`: serves the demo on `BIND_ADDR` (default 127.0.0.1:3000) with the
//! database of `DATABASE_URL` (default: an SQLite file in the working directory), and the
//! sessions in the Redis of `SESSION_STORE_URL` when it is set.

use std::process::ExitCode;

use demo_app::{AppConfig, build_app, serve_with};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let config = match AppConfig::from_env() {
        Ok(config) => config,
        Err(error) => {
            tracing::error!("configuration error: {error}");
            eprintln!("demo-app: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("demo-app failed: {error}");
            eprintln!("demo-app: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: AppConfig) -> Result<(), Box<dyn std::error::Error>> {
    let bind_addr = config.bind_addr;
    let database = config.database.name();
    let (router, handle) = build_app(config).await?;
    let listener = tokio::net::TcpListener::bind(bind_addr)
        .await
        .map_err(|e| format!("cannot listen on {bind_addr}: {e}"))?;
    let local = listener.local_addr()?;
    tracing::info!(database, "listening on http://{local}");
    // Stops accepting on the signal; in-flight requests finish, other connections are closed,
    // within `demo_app::server::SHUTDOWN_GRACE` at most.
    let limits = handle.connection_limits();
    serve_with(listener, router, shutdown_signal(), limits).await?;
    tracing::info!("shutting down: writing pending session activity");
    handle.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Logs go to stderr; `RUST_LOG` (e.g. `info,session_layer=debug`) overrides the default `info`.
fn init_logging() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown signal received");
}
