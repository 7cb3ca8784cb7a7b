//! The tower-sessions 0.14 peer, served on a 127.0.0.1 port for the harness in `bench/`.
//!
//! `session-bench-peer serve memory|moka-sqlite` prints
//! `READY <addr> <header name> <header value>` once its sessions exist (`SESSION_BENCH_TOKENS`,
//! default 1), then `VALUE <header value>` for each and `END`, and serves (on the runtime
//! `SESSION_BENCH_WORKERS` asks for: 0 or unset is one thread) until its standard input closes
//! (the harness ended).

use std::collections::HashMap;
use std::io::{Read as _, Write as _};

use axum::{Router, http::StatusCode, routing::get};
use time::{Duration, OffsetDateTime};
use tower_sessions::session::{Id, Record};
use tower_sessions::{
    CachingSessionStore, MemoryStore, Session, SessionManagerLayer, SessionStore,
};
use tower_sessions_moka_store::MokaStore;
use tower_sessions_sqlx_store::SqliteStore;
use tower_sessions_sqlx_store::sqlx::SqlitePool;

/// The same tiny handler as in the harness: read one value from the session, return it.
async fn user_id(session: Session) -> Result<String, StatusCode> {
    match session.get::<String>("user_id").await {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err(StatusCode::UNAUTHORIZED),
        Err(_) => Err(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

fn env_number(name: &str) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn serve<S: SessionStore + Clone>(store: S) {
    // Signed-in sessions, created through the store as the layer would on login requests.
    let mut ids = Vec::new();
    for _ in 0..env_number("SESSION_BENCH_TOKENS").max(1) {
        let mut record = Record {
            id: Id::default(),
            data: HashMap::from([(
                "user_id".to_owned(),
                serde_json::Value::String("0196c4b6-0f7e-7d43-9f3a-2f1c7c3e5a10".to_owned()),
            )]),
            expiry_date: OffsetDateTime::now_utc() + Duration::days(7),
        };
        store
            .create(&mut record)
            .await
            .expect("create the peer's session");
        ids.push(record.id);
    }
    let app = Router::new()
        .route("/", get(user_id))
        .layer(SessionManagerLayer::new(store).with_secure(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    println!("READY {addr} cookie id={}", ids[0]);
    for id in &ids {
        println!("VALUE id={id}");
    }
    println!("END");
    std::io::stdout().flush().expect("flush stdout");
    axum::serve(listener, app).await.expect("serve");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, variant] = args.as_slice() else {
        panic!("usage: session-bench-peer serve memory|moka-sqlite");
    };
    assert_eq!(
        mode, "serve",
        "usage: session-bench-peer serve memory|moka-sqlite"
    );
    // Exit with the harness: it holds our stdin.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let runtime = match env_number("SESSION_BENCH_WORKERS") {
        0 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        workers => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build(),
    }
    .expect("tokio runtime");
    runtime.block_on(async {
        match variant.as_str() {
            "memory" => serve(MemoryStore::default()).await,
            "moka-sqlite" => {
                let dir = std::env::temp_dir().join(format!("peer-{}.db", std::process::id()));
                let url = format!("sqlite://{}?mode=rwc", dir.display());
                let pool = SqlitePool::connect(&url).await.expect("open SQLite");
                let sqlite = SqliteStore::new(pool);
                sqlite
                    .migrate()
                    .await
                    .expect("migrate the peer's SQLite store");
                let store = CachingSessionStore::new(MokaStore::new(Some(100_000)), sqlite);
                serve(store).await;
            }
            other => panic!("unknown peer variant {other}"),
        }
    });
}
