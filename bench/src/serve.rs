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
    CurrentSession, MemoryStore, NewSession, PostgresStore, RedisStore, SessionConfig,
    SessionLayer, SessionManager, SessionStore, SqliteStore, TokenHash,
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
    let redis_url = || url.expect("this variant needs a Redis URL").to_owned();
    let runtime = server_runtime();
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
            "layer-redis" => {
                let store = redis_store(&redis_url(), variant).await;
                layer(store, uncached, Credential::Bearer).await;
            }
            // The feed (a pub/sub connection plus a heartbeat every quarter lease) runs on this
            // same thread.
            "layer-hit-redis" => {
                let store = redis_store(&redis_url(), variant).await;
                layer(store, cached, Credential::Bearer).await;
            }
            "floor-redis" => {
                let store = redis_store(&redis_url(), variant).await;
                let token = sign_in(store, uncached).await;
                let conn = redis::Client::open(redis_url())
                    .expect("Redis URL")
                    .get_connection_manager()
                    .await
                    .expect("connect to Redis");
                let app = Router::new()
                    .route("/", get(floor_redis))
                    .with_state((conn, Arc::<str>::from(variant)));
                serve(app, Some(bearer(&token))).await;
            }
            other => panic!("unknown variant {other}"),
        }
    });
}

/// The runtime the regime asks for (`SESSION_BENCH_WORKERS`): unset or 0 is a single-threaded
/// runtime, N a multi-threaded one with N workers.
pub fn server_runtime() -> tokio::runtime::Runtime {
    let workers: usize = std::env::var("SESSION_BENCH_WORKERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let mut builder = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder.enable_all().build().expect("tokio runtime")
}

/// How many signed-in sessions the regime asks for (`SESSION_BENCH_TOKENS`, default 1).
fn token_count() -> usize {
    std::env::var("SESSION_BENCH_TOKENS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1)
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
    let mut values = Vec::new();
    for n in 0..token_count() {
        // One user per session, as sign-ins of many users would make them.
        let user = if n == 0 { USER } else { Uuid::now_v7() };
        let (token, _) = manager
            .create(NewSession::new(user))
            .await
            .expect("create a benchmark session")
            .into_parts();
        if !manager.config().cache_ttl().is_zero() {
            // A store with an invalidation feed serves hits only while its lease holds:
            // measure from the first request with the session cached (a MemoryStore's cache
            // is trusted at once).
            until_cached(&manager, &token.expose()).await;
        }
        values.push(match credential {
            Credential::Bearer => bearer(&token.expose()).1,
            Credential::Cookie => {
                format!("{}={}", manager.config().cookie().name(), token.expose())
            }
        });
    }
    let name = match credential {
        Credential::Bearer => "authorization",
        Credential::Cookie => "cookie",
    };
    let app = Router::new()
        .route("/", get(with_session))
        .layer(SessionLayer::new(manager));
    serve_many(app, name, values).await;
}

/// Validates `token` until it is served from the cache.
async fn until_cached(manager: &SessionManager, token: &str) {
    let before = manager.cached_sessions();
    for _ in 0..1_000 {
        let found = manager.validate(token).await.expect("validate");
        assert!(found.is_some(), "the benchmark session must validate");
        manager.sync_cache().await;
        if manager.cached_sessions() > before {
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

/// A store under a key prefix of the variant's own.
async fn redis_store(url: &str, prefix: &str) -> RedisStore {
    RedisStore::connect_with(url, prefix)
        .await
        .expect("connect to Redis")
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

/// The Redis floor: one `GET` of the token's key (what the store's lookup script starts with;
/// it then reads the session's hash in the same round trip), no layer.
async fn floor_redis(
    State((mut conn, prefix)): State<(redis::aio::ConnectionManager, Arc<str>)>,
    headers: HeaderMap,
) -> Result<String, StatusCode> {
    let hash = presented_hash(&headers).ok_or(StatusCode::UNAUTHORIZED)?;
    let found: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix}:t:{}", hash.to_hex()))
        .query_async(&mut conn)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    found
        .map(|_| USER.to_string())
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

/// Serves `app`; the READY line carries the first value of header `name`, and the lines after
/// it every value (`VALUE <value>`, then `END`), for regimes of many tokens.
async fn serve_many(app: Router, name: &str, values: Vec<String>) {
    serve_with(app, Some((name.to_owned(), values))).await;
}

async fn serve(app: Router, header: Option<(String, String)>) {
    serve_with(app, header.map(|(name, value)| (name, vec![value]))).await;
}

async fn serve_with(app: Router, header: Option<(String, Vec<String>)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    match header {
        Some((name, values)) => {
            println!("READY {addr} {name} {}", values[0]);
            for value in &values {
                println!("VALUE {value}");
            }
            println!("END");
        }
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
