//! Scale on Redis: cache-miss validation latency against 10k and 1M sessions in `RedisStore`,
//! `list` for a user with 50 sessions among them, and the server's memory per session.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use session_layer::store::{Liveness, SessionInsert};
use session_layer::{DeviceType, RedisStore, Session, SessionStore as _, TokenHash};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::scale::{self, LISTED_USER};

pub struct Report {
    pub scale: scale::Report,
    /// `used_memory` of the server after the fill, minus before.
    pub bytes_per_session: f64,
}

/// Session `i` as the PostgreSQL scale fill shapes it: 100,000 users, the first 50 sessions
/// the listed user's, activity spread over the last hour.
fn session(i: u64, now: OffsetDateTime) -> Session {
    let user = if i <= 50 {
        LISTED_USER
    } else {
        Uuid::from_u128(0x0196_c4b6_0000_7000_8000_0000_0000_0000 | u128::from(i % 100_000))
    };
    let since = |secs: u64| now - Duration::from_secs(secs);
    Session {
        id: Uuid::from_u128(0x0196_c4b6_ffff_7000_8000_0000_0000_0000 | u128::from(i)),
        user_id: user,
        device: "Firefox on Linux".into(),
        device_type: DeviceType::Desktop,
        device_name: None,
        user_agent: Some(
            "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0".into(),
        ),
        ip_address: Some("203.0.113.7".parse().expect("address")),
        created_at: since(7200),
        last_active_at: since(i % 3600),
        expires_at: now + Duration::from_secs(7 * 24 * 3600),
        revoked_at: None,
        revoked_reason: None,
    }
}

async fn used_memory(url: &str) -> u64 {
    let mut conn = redis::Client::open(url)
        .expect("Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis");
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .expect("INFO memory");
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("used_memory in INFO")
}

pub async fn run(url: &str, rows: u64, samples: usize) -> Report {
    let store: RedisStore = RedisStore::connect_with(url, &format!("scale{rows}"))
        .await
        .expect("connect to Redis");
    let before = used_memory(url).await;
    let now = OffsetDateTime::now_utc();
    let live = Liveness {
        now,
        idle_cutoff: now - Duration::from_secs(24 * 3600),
    };
    let filled = Instant::now();
    // Through the store's own insert script, 256 in flight on its multiplexed connection.
    futures_util::stream::iter(1..=rows)
        .map(|i| {
            let store = &store;
            async move {
                let session = session(i, now);
                let hash = TokenHash::from_encoded(&scale::token(i)).expect("token");
                store
                    .insert(SessionInsert {
                        session: &session,
                        token_hash: &hash,
                        max_active: None,
                        live,
                        fence: None,
                        recent_activity: &[],
                    })
                    .await
                    .expect("insert a session");
            }
        })
        .buffer_unordered(256)
        .for_each(|()| async {})
        .await;
    let fill_secs = filled.elapsed().as_secs_f64();
    let after = used_memory(url).await;
    Report {
        scale: scale::measure(store, rows, fill_secs, samples).await,
        bytes_per_session: after.saturating_sub(before) as f64 / rows as f64,
    }
}
