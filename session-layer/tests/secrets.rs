//! Nothing secret at rest or in logs: after a full lifecycle, no stored row holds a token in any
//! form, and no log line holds a token or its hash.

mod common;

use std::sync::Arc;

use base64::Engine as _;
use session_layer::{NewSession, RevocationReason, SessionConfig, SessionManager, SessionStore};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use sqlx::Row;
use uuid::Uuid;

/// Runs every operation, including failures and token reuse; returns the secrets it saw.
async fn lifecycle(store: Arc<dyn SessionStore>) -> Vec<String> {
    let probe = common::ProbeStore::new(store);
    let manager = SessionManager::from_arc(probe.clone(), SessionConfig::default()).unwrap();
    let user = Uuid::now_v7();
    let mut secrets = Vec::new();
    let mut remember = |token: &session_layer::SessionToken| {
        let encoded = token.expose();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&encoded)
            .unwrap();
        let raw_hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        secrets.push(encoded);
        secrets.push(raw_hex);
    };
    let (first, _) = manager
        .create(
            NewSession::new(user)
                .user_agent(Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/121.0"))
                .device_name(Some("laptop")),
        )
        .await
        .unwrap()
        .into_parts();
    remember(&first);
    let (second, second_session) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    remember(&second);
    let current = manager.validate(&first.expose()).await.unwrap().unwrap();
    let (rotated, _) = manager.rotate(&current).await.unwrap().into_parts();
    remember(&rotated);
    // Reuse of the rotated-out token: logged as a warning, session revoked.
    assert!(manager.validate(&first.expose()).await.unwrap().is_none());
    manager.list(user).await.unwrap();
    manager
        .revoke(user, second_session.id, RevocationReason::Logout)
        .await
        .unwrap();
    probe.fail(true);
    let (third, _) = {
        probe.fail(false);
        manager
            .create(NewSession::new(user))
            .await
            .unwrap()
            .into_parts()
    };
    remember(&third);
    probe.fail(true);
    let error = manager.validate(&third.expose()).await.unwrap_err();
    secrets
        .iter()
        .for_each(|s| assert!(!error.to_string().contains(s)));
    probe.fail(false);
    manager
        .revoke_all(user, RevocationReason::Admin)
        .await
        .unwrap();
    manager.shutdown().await;
    // A log line must not carry the hash either.
    let hashes: Vec<String> = [&first, &second, &rotated, &third]
        .iter()
        .map(|t| t.hash().to_hex())
        .collect();
    let logs = common::captured_logs();
    assert!(
        logs.contains("rotated-out session token presented again"),
        "logs were not captured"
    );
    for secret in secrets.iter().chain(&hashes) {
        assert!(
            !logs.contains(secret.as_str()),
            "a log line contains a token or hash"
        );
    }
    secrets
}

fn assert_rows_free_of(dumps: Vec<String>, secrets: &[String]) {
    assert_eq!(dumps.len(), 3, "one row per session created");
    for dump in dumps {
        let dump = dump.to_lowercase();
        for secret in secrets {
            assert!(
                !dump.contains(&secret.to_lowercase()),
                "a stored row contains a token"
            );
        }
    }
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_in_sqlite_rows_or_logs() {
    common::capture_logs();
    let store = common::sqlite_store().await;
    let pool = store.pool().clone();
    let secrets = lifecycle(Arc::new(store)).await;
    let rows = sqlx::query(
        "SELECT hex(id) || hex(user_id) || hex(token_hash) \
         || device || device_type || coalesce(device_name, '') || coalesce(user_agent, '') \
         || coalesce(ip_address, '') || coalesce(revoked_reason, '') AS dump FROM sessions",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_rows_free_of(rows.iter().map(|row| row.get("dump")).collect(), &secrets);
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_in_postgres_rows_or_logs() {
    common::capture_logs();
    let store = common::postgres_store(&test_support::postgres_database()).await;
    let pool = store.pool().clone();
    let secrets = lifecycle(Arc::new(store)).await;
    let rows = sqlx::query("SELECT row_to_json(s)::text AS dump FROM sessions s")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_rows_free_of(rows.iter().map(|row| row.get("dump")).collect(), &secrets);
}

/// Every key under `prefix` with its value, one entry per key.
#[cfg(feature = "redis")]
async fn redis_dump(url: &str, prefix: &str) -> Vec<(String, String)> {
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut dump = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let command = match kind.as_str() {
            "string" => redis::cmd("GET").arg(&key).clone(),
            "hash" => redis::cmd("HGETALL").arg(&key).clone(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .clone(),
            other => panic!("unexpected key type {other}"),
        };
        let value: redis::Value = command.query_async(&mut conn).await.unwrap();
        dump.push((key, format!("{value:?}")));
    }
    dump
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_in_redis_keys_values_or_logs() {
    common::capture_logs();
    let url = test_support::redis_server().url();
    let store = common::redis_store_on::<uuid::Uuid>(&url).await;
    let prefix = store.prefix().to_owned();
    let secrets = lifecycle(Arc::new(store)).await;
    let dump = redis_dump(&url, &prefix).await;
    let sessions = dump
        .iter()
        .filter(|(key, _)| key.starts_with(&format!("{prefix}:s:")))
        .map(|(key, value)| format!("{key} {value}"))
        .collect();
    assert_rows_free_of(sessions, &secrets);
    // The token keys, indexes and fences too.
    assert!(dump.len() > 3, "{dump:?}");
    for (key, value) in &dump {
        let entry = format!("{key} {value}").to_lowercase();
        for secret in &secrets {
            assert!(
                !entry.contains(&secret.to_lowercase()),
                "a Redis key or value contains a token"
            );
        }
    }
}
