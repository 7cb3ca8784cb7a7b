//! Fitting the application's database: configurable schema and table names that keep two
//! configurations apart, and the foreign key to the application's users with its cascade.

#![cfg(any(feature = "sqlite", feature = "postgres"))]

mod common;

#[cfg(feature = "postgres")]
use std::time::Duration;

#[cfg(feature = "postgres")]
use session_layer::PostgresStore;
#[cfg(feature = "sqlite")]
use session_layer::SqliteStore;
use session_layer::store::Tables;
use session_layer::{NewSession, RevocationReason, SessionConfig, SessionManager};
use uuid::Uuid;

async fn valid<U: session_layer::UserId>(manager: &SessionManager<U>, token: &str) -> bool {
    manager.validate(token).await.unwrap().is_some()
}

/// Two applications on one PostgreSQL database: the default tables, and `auth.user_sessions`
/// with `BIGINT` user ids. Neither sees the other's sessions, and their notification channels
/// are apart (a revocation in one waits for nobody in the other).
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_configurations_on_one_postgres_database_do_not_collide() {
    let url = test_support::postgres_database();
    let plain = common::postgres_store(&url).await;
    let auth = PostgresStore::connect_with(
        &url,
        Tables::new()
            .user_id::<i64>()
            .schema("auth")
            .prefix("user_"),
    )
    .await
    .unwrap();
    auth.migrate().await.unwrap();
    auth.migrate().await.unwrap(); // idempotent
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables \
         WHERE table_schema IN ('public', 'auth') ORDER BY 1",
    )
    .fetch_all(plain.pool())
    .await
    .unwrap();
    for expected in [
        "auth._user_session_layer_migrations",
        "auth.user_session_retired_tokens",
        "auth.user_session_user_fences",
        "auth.user_sessions",
        "public._session_layer_migrations",
        "public.session_retired_tokens",
        "public.session_user_fences",
        "public.sessions",
    ] {
        assert!(
            tables.iter().any(|t| t == expected),
            "{expected} in {tables:?}"
        );
    }
    let user_type: String = sqlx::query_scalar(
        "SELECT data_type FROM information_schema.columns \
         WHERE table_schema = 'auth' AND table_name = 'user_sessions' AND column_name = 'user_id'",
    )
    .fetch_one(plain.pool())
    .await
    .unwrap();
    assert_eq!(user_type, "bigint");

    let plain = SessionManager::new(plain, SessionConfig::default()).unwrap();
    let auth = SessionManager::new(auth, SessionConfig::default()).unwrap();
    let (a, _) = plain
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    let (b, b_session) = auth
        .create(NewSession::new(42_i64))
        .await
        .unwrap()
        .into_parts();
    assert!(valid(&plain, &a.expose()).await);
    assert!(!valid(&plain, &b.expose()).await, "another app's token");
    assert!(valid(&auth, &b.expose()).await);
    assert!(!valid(&auth, &a.expose()).await, "another app's token");
    assert_eq!(auth.list(42).await.unwrap()[0].id, b_session.id);
    auth.revoke_all(42, RevocationReason::Admin).await.unwrap();
    assert!(!valid(&auth, &b.expose()).await);
    assert!(valid(&plain, &a.expose()).await);
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_prefixes_on_one_sqlite_file_do_not_collide() {
    let url = test_support::sqlite_database("shared");
    let plain = SqliteStore::connect(&url).await.unwrap();
    plain.migrate().await.unwrap();
    let other = SqliteStore::connect_with(&url, Tables::new().user_id::<String>().prefix("b_"))
        .await
        .unwrap();
    other.migrate().await.unwrap();
    let plain = SessionManager::new(plain, SessionConfig::default()).unwrap();
    let other = SessionManager::new(other, SessionConfig::default()).unwrap();
    let (a, _) = plain
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    let (b, _) = other
        .create(NewSession::new("alice@example.com".to_owned()))
        .await
        .unwrap()
        .into_parts();
    assert!(valid(&plain, &a.expose()).await);
    assert!(valid(&other, &b.expose()).await);
    assert!(!valid(&other, &a.expose()).await);
    assert!(!valid(&plain, &b.expose()).await);
    let listed = other.list("alice@example.com".to_owned()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].user_id, "alice@example.com");
}

/// Deleting a user deletes their sessions (`ON DELETE CASCADE`), and every instance's cache
/// drops them: the database announces the deleted rows.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_user_deletes_their_sessions_on_postgres_and_no_cache_serves_them() {
    let url = test_support::postgres_database();
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE users (id BIGINT PRIMARY KEY)")
        .execute(&admin)
        .await
        .unwrap();
    let tables = || Tables::new().user_id::<i64>().references("users", "id");
    let store = PostgresStore::connect_with(&url, tables()).await.unwrap();
    store.migrate().await.unwrap();
    let other_instance = PostgresStore::connect_with(&url, tables()).await.unwrap();
    let a = SessionManager::new(store, SessionConfig::default()).unwrap();
    let b = SessionManager::new(other_instance, SessionConfig::default()).unwrap();

    // No session for a user the application does not have.
    assert!(a.create(NewSession::new(7_i64)).await.is_err());

    sqlx::query("INSERT INTO users (id) VALUES (7)")
        .execute(&admin)
        .await
        .unwrap();
    let (token, _) = a.create(NewSession::new(7_i64)).await.unwrap().into_parts();
    let token = token.expose();
    common::eventually(
        Duration::from_secs(10),
        "the session never reached B's cache",
        async || {
            assert!(valid(&b, &token).await);
            b.sync_cache().await;
            b.cached_sessions() == 1
        },
    )
    .await;

    sqlx::query("DELETE FROM users WHERE id = 7")
        .execute(&admin)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(left, 0, "the cascade deletes the user's sessions");
    common::eventually(
        Duration::from_secs(2),
        "a cache served the session of a deleted user",
        async || !valid(&b, &token).await && !valid(&a, &token).await,
    )
    .await;
}

/// SQLite: the cascade deletes the rows; revoking first cuts the one instance's cache off at
/// once, as the documentation advises.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_user_deletes_their_sessions_on_sqlite() {
    let url = test_support::sqlite_database("fk");
    let store = SqliteStore::connect_with(
        &url,
        Tables::new()
            .user_id::<String>()
            .references("accounts", "email"),
    )
    .await
    .unwrap();
    sqlx::raw_sql("CREATE TABLE accounts (email TEXT PRIMARY KEY NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let pool = store.pool().clone();
    let manager = SessionManager::new(store, SessionConfig::default()).unwrap();
    let user = "ada@example.com".to_owned();
    assert!(manager.create(NewSession::new(user.clone())).await.is_err());
    sqlx::query("INSERT INTO accounts (email) VALUES (?1)")
        .bind(&user)
        .execute(&pool)
        .await
        .unwrap();
    let (token, _) = manager
        .create(NewSession::new(user.clone()))
        .await
        .unwrap()
        .into_parts();
    let token = token.expose();
    assert!(valid(&manager, &token).await);
    manager
        .revoke_all(&user, RevocationReason::Admin)
        .await
        .unwrap();
    sqlx::query("DELETE FROM accounts WHERE email = ?1")
        .bind(&user)
        .execute(&pool)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "the cascade deletes the user's sessions");
    assert!(!valid(&manager, &token).await);
}

/// A failed migration (here: the referenced users table does not exist yet) must not leave
/// sqlx's migration lock behind: the next `migrate`, on this store or another instance's,
/// proceeds instead of waiting forever.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_migration_does_not_block_the_next_one() {
    let url = test_support::postgres_database();
    let tables = || Tables::new().user_id::<i64>().references("users", "id");
    let first = PostgresStore::connect_with(&url, tables()).await.unwrap();
    assert!(first.migrate().await.is_err(), "users does not exist yet");
    sqlx::raw_sql("CREATE TABLE users (id BIGINT PRIMARY KEY)")
        .execute(first.pool())
        .await
        .unwrap();
    let second = PostgresStore::connect_with(&url, tables()).await.unwrap();
    let migrated = tokio::time::timeout(Duration::from_secs(20), second.migrate()).await;
    assert!(
        matches!(migrated, Ok(Ok(()))),
        "the second migrate waited on a lock the failed one kept: {migrated:?}"
    );
    let again = tokio::time::timeout(Duration::from_secs(20), first.migrate()).await;
    assert!(matches!(again, Ok(Ok(()))), "{again:?}");
}
