//! Row-level security on PostgreSQL (`Tables::row_level_security`): the library works as the
//! application's role, and that role's raw SQL, with user B named in its transaction, can
//! neither see nor change user A's sessions. (The whole store conformance suite also runs as
//! that role: `store_conformance.rs`, `postgres_rls*`.)

#![cfg(feature = "postgres")]

mod common;

use std::time::Duration;

use session_layer::{NewSession, RevocationReason, SessionConfig, SessionManager};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

/// Runs `sql` as the app in a transaction naming `user` (or no one); returns the rows' first
/// column as i64 for a query, the affected row count for a change, or the error.
async fn as_app(
    conn: &mut PgConnection,
    user: Option<Uuid>,
    sql: &str,
) -> Result<i64, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    if let Some(user) = user {
        sqlx::query("SELECT set_config('app.current_user_id', $1, true)")
            .bind(user.to_string())
            .execute(&mut *tx)
            .await?;
    }
    let query = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
    let result = if sql.starts_with("SELECT") {
        query.fetch_one(&mut *tx).await?.try_get::<i64, _>(0)?
    } else {
        i64::try_from(query.execute(&mut *tx).await?.rows_affected()).unwrap()
    };
    tx.commit().await?;
    Ok(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_role_with_user_bs_context_cannot_see_or_revoke_user_as_sessions() {
    let db = common::postgres_rls::<Uuid>().await;
    let config = SessionConfig::builder()
        .revoked_retention(Duration::ZERO)
        .build()
        .unwrap();
    let manager = SessionManager::new(db.app.clone(), config).unwrap();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());

    // The library does everything as the app's role: sign-ins, a lookup, a rotation (a retired
    // hash), the session limit's reads, lists.
    let (a1, _) = manager
        .create(NewSession::new(a))
        .await
        .unwrap()
        .into_parts();
    let (_a2, _) = manager
        .create(NewSession::new(a))
        .await
        .unwrap()
        .into_parts();
    let (b1, b_session) = manager
        .create(NewSession::new(b))
        .await
        .unwrap()
        .into_parts();
    let current = manager.validate(&a1.expose()).await.unwrap().unwrap();
    let (a1_rotated, _) = manager.rotate(&current).await.unwrap().into_parts();
    assert!(
        manager
            .validate(&a1_rotated.expose())
            .await
            .unwrap()
            .is_some()
    );
    assert!(manager.validate(&b1.expose()).await.unwrap().is_some());
    assert_eq!(manager.list(a).await.unwrap().len(), 2);
    assert_eq!(manager.list(b).await.unwrap().len(), 1);

    let mut conn = <PgConnection as sqlx::Connection>::connect(&db.app_url)
        .await
        .unwrap();
    let (sessions, retired, fences) = (
        "auth.sessions",
        "auth.session_retired_tokens",
        "auth.session_user_fences",
    );
    let b_ctx = Some(b);
    // B sees B's session only; A's rows and A's retired hash are invisible.
    let count = |table: &str| format!("SELECT count(*) FROM {table}");
    assert_eq!(as_app(&mut conn, b_ctx, &count(sessions)).await.unwrap(), 1);
    let a_rows = format!("SELECT count(*) FROM {sessions} WHERE user_id = '{a}'");
    assert_eq!(as_app(&mut conn, b_ctx, &a_rows).await.unwrap(), 0);
    assert_eq!(as_app(&mut conn, b_ctx, &count(retired)).await.unwrap(), 0);
    // Nor can B revoke, delete, or re-fence A's sessions.
    let revoke_a = format!(
        "UPDATE {sessions} SET revoked_at = now(), revoked_reason = 'admin' WHERE user_id = '{a}'"
    );
    assert_eq!(as_app(&mut conn, b_ctx, &revoke_a).await.unwrap(), 0);
    let revoke_every = format!(
        "UPDATE {sessions} SET revoked_at = now(), revoked_reason = 'admin' WHERE revoked_at IS NULL"
    );
    assert_eq!(
        as_app(&mut conn, b_ctx, &revoke_every).await.unwrap(),
        1,
        "only B's own"
    );
    let delete_a = format!("DELETE FROM {sessions} WHERE user_id = '{a}'");
    assert_eq!(as_app(&mut conn, b_ctx, &delete_a).await.unwrap(), 0);
    let delete_retired = format!("DELETE FROM {retired}");
    assert_eq!(as_app(&mut conn, b_ctx, &delete_retired).await.unwrap(), 0);
    let fence_a = format!("INSERT INTO {fences} (user_id, epoch) VALUES ('{a}', 99)");
    assert!(
        as_app(&mut conn, b_ctx, &fence_a).await.is_err(),
        "a row of A's cannot be written"
    );
    // With no user named, nothing at all.
    assert_eq!(as_app(&mut conn, None, &count(sessions)).await.unwrap(), 0);
    assert_eq!(as_app(&mut conn, None, &revoke_every).await.unwrap(), 0);
    // The narrow path answers for one hash only, and the role that owns it is out of reach.
    let find_nothing = "SELECT count(*) FROM auth.sessions_find(decode(repeat('00', 32), 'hex'))";
    assert_eq!(as_app(&mut conn, None, find_nothing).await.unwrap(), 0);
    // The owner (a NOINHERIT member of the definer role, so that it could hand the functions
    // over) sees nothing without a user either.
    let mut owner = <PgConnection as sqlx::Connection>::connect(&db.owner_url)
        .await
        .unwrap();
    assert_eq!(as_app(&mut owner, None, &count(sessions)).await.unwrap(), 0);
    let become_definer = format!("SET ROLE {}", db.definer);
    assert!(
        sqlx::query(sqlx::AssertSqlSafe(become_definer))
            .execute(&mut conn)
            .await
            .is_err()
    );

    // A's sessions are untouched: the rotated token still works, the list still holds two.
    let fresh = SessionManager::new(db.app.clone(), SessionConfig::default()).unwrap();
    assert!(
        fresh
            .validate(&a1_rotated.expose())
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(fresh.list(a).await.unwrap().len(), 2);
    // B's own raw revocation took: the library sees it.
    assert!(fresh.validate(&b1.expose()).await.unwrap().is_none());
    assert!(fresh.list(b).await.unwrap().is_empty());

    // Activity and cleanup go through the definer functions.
    manager
        .revoke(a, current.session_id(), RevocationReason::Logout)
        .await
        .unwrap();
    assert_eq!(
        manager.cleanup().await.unwrap(),
        2,
        "A's revoked and B's revoked"
    );
    assert_eq!(manager.list(a).await.unwrap().len(), 1);
    let _ = b_session;
}
