//! Scale: cache-miss validation latency against 10k and 1M session rows in PostgreSQL, and
//! `list` for a user with 50 sessions among them.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hdrhistogram::Histogram;
use session_layer::{PostgresStore, SessionConfig, SessionManager};
use uuid::Uuid;

/// The user who holds sessions 1..=50.
pub const LISTED_USER: Uuid = Uuid::from_u128(0x0196c4b6_0f7e_7d43_9f3a_000000000050);

/// Row `i`'s token is the 32-byte big-endian encoding of `i`; the SQL below stores its SHA-256.
pub fn token(i: u64) -> String {
    let mut bytes = [0u8; 32];
    bytes[24..].copy_from_slice(&i.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

const FILL: &str = "\
INSERT INTO sessions (id, user_id, token_hash, device, device_type, user_agent, ip_address, \
                      created_at, last_active_at, expires_at) \
SELECT md5('session' || i)::uuid, \
       CASE WHEN i <= 50 THEN $1::uuid ELSE md5('user' || (i % 100000))::uuid END, \
       sha256(decode(lpad(to_hex(i), 64, '0'), 'hex')), \
       'Firefox on Linux', 'desktop', \
       'Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0', \
       '203.0.113.7'::inet, \
       now() - interval '2 hours', now() - (i % 3600) * interval '1 second', \
       now() + interval '7 days' \
FROM generate_series(1, $2::bigint) AS i";

/// Gives the shared test server the buffer cache a production server holding a million
/// sessions would have (its default, sized for tests, is 32 MB), then restarts it.
pub fn size_buffers_for_scale(client: &tokio::runtime::Runtime) {
    let server = test_support::postgres_server();
    client.block_on(async {
        let pool = sqlx::PgPool::connect(&server.admin_url())
            .await
            .expect("connect as admin");
        sqlx::query("ALTER SYSTEM SET shared_buffers = '1GB'")
            .execute(&pool)
            .await
            .expect("set shared_buffers");
        pool.close().await;
    });
    server.stop();
    server.start();
}

pub struct Report {
    pub rows: u64,
    pub fill_secs: f64,
    pub validate_p50_us: f64,
    pub validate_p99_us: f64,
    pub list_p50_us: f64,
    pub list_p99_us: f64,
}

pub async fn run(pg_url: &str, rows: u64, samples: usize) -> Report {
    let store = PostgresStore::connect(pg_url)
        .await
        .expect("connect to PostgreSQL");
    store.migrate().await.expect("migrate PostgreSQL");
    let filled = Instant::now();
    sqlx::query(FILL)
        .bind(LISTED_USER)
        .bind(i64::try_from(rows).expect("row count"))
        .execute(store.pool())
        .await
        .expect("bulk insert sessions");
    // A table in steady state: statistics current, hint bits and visibility map set, nothing
    // dirty, so the lookups below measure reads, not the aftermath of a bulk load.
    for statement in ["VACUUM (ANALYZE) sessions", "CHECKPOINT"] {
        sqlx::query(statement)
            .execute(store.pool())
            .await
            .expect(statement);
    }
    let fill_secs = filled.elapsed().as_secs_f64();
    measure(store, rows, fill_secs, samples).await
}

/// Validation (cache off) and `list` latencies over a store that holds `rows` sessions, token
/// `i` for row `i`, the first 50 of [`LISTED_USER`].
pub async fn measure(
    store: impl session_layer::SessionStore,
    rows: u64,
    fill_secs: f64,
    samples: usize,
) -> Report {
    // Cache disabled: every validation is a miss that reads the store.
    let config = SessionConfig::builder()
        .cache_ttl(Duration::ZERO)
        .build()
        .expect("config");
    let manager = SessionManager::new(store, config).expect("manager");
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15 ^ rows);
    let mut validate = histogram();
    for n in 0..samples + samples / 10 {
        let token = token(1 + random.next() % rows);
        let started = Instant::now();
        let found = manager.validate(&token).await.expect("validate");
        let took = started.elapsed();
        assert!(found.is_some(), "row token must validate");
        // The first tenth warms the pool and the plan cache.
        if n >= samples / 10 {
            validate.saturating_record(nanos(took));
        }
    }
    let mut list = histogram();
    for n in 0..samples / 4 + 10 {
        let started = Instant::now();
        let sessions = manager.list(LISTED_USER).await.expect("list");
        let took = started.elapsed();
        assert_eq!(sessions.len(), 50, "the listed user holds 50 sessions");
        if n >= 10 {
            list.saturating_record(nanos(took));
        }
    }
    manager.shutdown().await;
    Report {
        rows,
        fill_secs,
        validate_p50_us: quantile_us(&validate, 0.50),
        validate_p99_us: quantile_us(&validate, 0.99),
        list_p50_us: quantile_us(&list, 0.50),
        list_p99_us: quantile_us(&list, 0.99),
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn quantile_us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Which rows to look up: uniform, reproducible, no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
