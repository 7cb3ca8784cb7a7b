//! The servers under load, one per child process (`session-bench serve VARIANT [URL]`), each on
//! a single-threaded runtime. Each prints `READY <addr> <header name> <header value>` once it
//! holds a signed-in session, and exits when its standard input closes.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header::AUTHORIZATION};
use axum::routing::get;
use axum::{Extension, Router};
use session_layer::{
    CurrentSession, MemoryStore, NewSession, PostgresStore, SessionConfig, SessionLayer,
    SessionManager, SessionStore, SqliteStore, TokenHash,
};
use tower::util::MapRequestLayer;
use uuid::Uuid;

/// The user every benchmark session belongs to.
const USER: Uuid = Uuid::from_u128(0x0196c4b6_0f7e_7d43_9f3a_2f1c7c3e5a10);

/// The same tiny handler everywhere: answer the signed-in user's id.
async fn with_session(session: CurrentSession) -> String {
    session.user_id().to_string()
}

async fn bare() -> String {
    USER.to_string()
}

pub fn run(variant: &str, url: Option<&str>) {
    let sqlite_file =
        std::env::temp_dir().join(format!("session-bench-{}-{variant}.db", std::process::id()));
    exit_with_parent(sqlite_file.clone());
    let sqlite_url = format!("sqlite://{}", sqlite_file.display());
    let pg_url = || url.expect("this variant needs a PostgreSQL URL").to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let cached = SessionConfig::default();
        let uncached = SessionConfig::builder()
            .cache_ttl(Duration::ZERO)
            .build()
            .expect("config");
        match variant {
            "bare" => serve(Router::new().route("/", get(bare)), None).await,
            "extension-only" => serve(extension_only(), None).await,
            "layer-anonymous" => {
                let manager = SessionManager::new(MemoryStore::new(), cached).expect("manager");
                let app = Router::new()
                    .route("/", get(bare))
                    .layer(SessionLayer::new(manager));
                serve(app, None).await;
            }
            "layer-cookie" => layer(MemoryStore::new(), cached, Credential::Cookie).await,
            "layer-bearer" => layer(MemoryStore::new(), cached, Credential::Bearer).await,
            "layer-sqlite" => layer(sqlite(&sqlite_url).await, uncached, Credential::Bearer).await,
            "layer-pg" => layer(postgres(&pg_url()).await, uncached, Credential::Bearer).await,
            // The feed (LISTEN plus a heartbeat every quarter lease) runs on this same thread.
            "layer-hit-pg" => layer(postgres(&pg_url()).await, cached, Credential::Bearer).await,
            "floor-sqlite" => {
                let store = sqlite(&sqlite_url).await;
                let pool = store.pool().clone();
                let token = sign_in(store, uncached).await;
                let app = Router::new().route("/", get(floor_sqlite)).with_state(pool);
                serve(app, Some(bearer(&token))).await;
            }
            "floor-pg" => {
                let store = postgres(&pg_url()).await;
                let pool = store.pool().clone();
                let token = sign_in(store, uncached).await;
                let app = Router::new().route("/", get(floor_pg)).with_state(pool);
                serve(app, Some(bearer(&token))).await;
            }
            other => panic!("unknown variant {other}"),
        }
    });
}

/// What any middleware that hands handlers a value through the request extensions pays: one
/// insert per request and one extraction, with nothing looked up.
fn extension_only() -> Router {
    let value = Arc::new(USER);
    Router::new()
        .route(
            "/",
            get(|Extension(user): Extension<Arc<Uuid>>| async move { user.to_string() }),
        )
        .layer(MapRequestLayer::new(move |mut request: Request| {
            request.extensions_mut().insert(Arc::clone(&value));
            request
        }))
}

enum Credential {
    Cookie,
    Bearer,
}

async fn layer(store: impl SessionStore, config: SessionConfig, credential: Credential) {
    let manager = SessionManager::new(store, config).expect("session manager");
    let (token, _) = manager
        .create(NewSession::new(USER))
        .await
        .expect("create the benchmark session")
        .into_parts();
    if !manager.config().cache_ttl().is_zero() {
        // A store with an invalidation feed serves hits only while its lease holds: measure
        // from the first request with the session cached (a MemoryStore's cache is trusted
        // at once).
        until_cached(&manager, &token.expose()).await;
    }
    let header = match credential {
        Credential::Bearer => bearer(&token.expose()),
        Credential::Cookie => (
            "cookie".to_owned(),
            format!("{}={}", manager.config().cookie().name(), token.expose()),
        ),
    };
    let app = Router::new()
        .route("/", get(with_session))
        .layer(SessionLayer::new(manager));
    serve(app, Some(header)).await;
}

/// Validates `token` until it is served from the cache.
async fn until_cached(manager: &SessionManager, token: &str) {
    for _ in 0..1_000 {
        let found = manager.validate(token).await.expect("validate");
        assert!(found.is_some(), "the benchmark session must validate");
        manager.sync_cache().await;
        if manager.cached_sessions() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the session never reached the cache: the invalidation feed's lease never held");
}

/// Signs the benchmark user in through the library, so the row has the real shape.
async fn sign_in(store: impl SessionStore, config: SessionConfig) -> String {
    let manager = SessionManager::new(store, config).expect("session manager");
    let (token, _) = manager
        .create(NewSession::new(USER))
        .await
        .expect("create the benchmark session")
        .into_parts();
    token.expose()
}

fn bearer(token: &str) -> (String, String) {
    ("authorization".to_owned(), format!("Bearer {token}"))
}

async fn sqlite(url: &str) -> SqliteStore {
    let store = SqliteStore::connect(url).await.expect("open SQLite");
    store.migrate().await.expect("migrate SQLite");
    store
}

async fn postgres(url: &str) -> PostgresStore {
    let store = PostgresStore::connect(url)
        .await
        .expect("connect to PostgreSQL");
    store.migrate().await.expect("migrate PostgreSQL");
    store
}

/// The token's hash, parsed as the layer does; the floor variants do this work too.
fn presented_hash(headers: &HeaderMap) -> Option<TokenHash> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    TokenHash::from_encoded(value.strip_prefix("Bearer ")?).ok()
}

/// The store floor: one indexed lookup of the row by hash, no layer.
async fn floor_pg(
    State(pool): State<sqlx::PgPool>,
    headers: HeaderMap,
) -> Result<String, StatusCode> {
    let hash = presented_hash(&headers).ok_or(StatusCode::UNAUTHORIZED)?;
    let row = sqlx::query("SELECT * FROM sessions WHERE token_hash = $1")
        .bind(hash.as_bytes().as_slice())
        .fetch_optional(&pool)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    row.map(|_| USER.to_string())
        .ok_or(StatusCode::UNAUTHORIZED)
}

async fn floor_sqlite(
    State(pool): State<sqlx::SqlitePool>,
    headers: HeaderMap,
) -> Result<String, StatusCode> {
    let hash = presented_hash(&headers).ok_or(StatusCode::UNAUTHORIZED)?;
    let row = sqlx::query("SELECT * FROM sessions WHERE token_hash = ?1")
        .bind(hash.as_bytes().as_slice())
        .fetch_optional(&pool)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    row.map(|_| USER.to_string())
        .ok_or(StatusCode::UNAUTHORIZED)
}

async fn serve(app: Router, header: Option<(String, String)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    match header {
        Some((name, value)) => println!("READY {addr} {name} {value}"),
        None => println!("READY {addr}"),
    }
    std::io::stdout().flush().expect("flush stdout");
    axum::serve(listener, app).await.expect("serve");
}

/// The harness holds our stdin: when it closes, remove the SQLite files and exit.
fn exit_with_parent(sqlite_file: PathBuf) {
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        for suffix in ["", "-wal", "-shm"] {
            let mut path = sqlite_file.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
        std::process::exit(0);
    });
}
