//! Review 10: attacks on anomaly events and PostgreSQL row-level security.
//!
//! Tests named `attack_*` failed on the commit under review (e137667, each was a break) and pass
//! since their fixes; tests named `held_*` document attacks that did not work.

#![cfg(feature = "postgres")]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
#[cfg(feature = "axum")]
use axum::extract::ConnectInfo;
use axum::routing::get;
use http::{Request, StatusCode};
use session_layer::anomaly::{Change, Verdict};
use session_layer::store::Tables;
use session_layer::{
    CurrentSession, MemoryStore, NewSession, PostgresStore, SessionConfig, SessionLayer,
    SessionManager, UserId,
};
use sqlx::{Connection, PgConnection, Row};
use tower::ServiceExt;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Row-level security
// ---------------------------------------------------------------------------------------------

/// `common::postgres_rls_with`: row-level security in `schema`, with a foreign key to
/// `public.app_users` when `users` is set.
async fn rls<U: UserId>(schema: Option<&str>) -> Result<common::RlsDatabase<U>, String> {
    rls_with(schema, false).await
}

async fn rls_with<U: UserId>(
    schema: Option<&str>,
    users: bool,
) -> Result<common::RlsDatabase<U>, String> {
    common::postgres_rls_with(schema, users.then_some(())).await
}

/// Runs `sql` in a transaction naming `user` (or no one): the first column as i64.
async fn scalar(
    conn: &mut PgConnection,
    user: Option<&str>,
    sql: &str,
) -> Result<i64, sqlx::Error> {
    let mut tx = conn.begin().await?;
    if let Some(user) = user {
        sqlx::query("SELECT set_config('app.current_user_id', $1, true)")
            .bind(user)
            .execute(&mut *tx)
            .await?;
    }
    let row = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut *tx)
        .await?;
    let value = row.try_get::<i64, _>(0).or_else(|_| {
        row.try_get::<Option<i64>, _>(0)
            .map(|v| v.unwrap_or_default())
    })?;
    tx.commit().await?;
    Ok(value)
}

/// The commit claims "raw SQL as that role with user B's context cannot see or revoke user A's
/// sessions". The SECURITY DEFINER cleanup function is executable by PUBLIC and takes its
/// cutoffs from the caller: the app's role, naming B (or no one), deletes every session of
/// every user, A's live ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_app_role_deletes_every_users_live_sessions_through_the_cleanup_function() {
    let db = rls::<Uuid>(Some("auth")).await.unwrap();
    let manager = SessionManager::new(db.app.clone(), SessionConfig::default()).unwrap();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let (a_token, _) = manager
        .create(NewSession::new(a))
        .await
        .unwrap()
        .into_parts();
    let _ = manager.create(NewSession::new(b)).await.unwrap();

    let mut conn = PgConnection::connect(&db.app_url).await.unwrap();
    let wiped = scalar(
        &mut conn,
        Some(&b.to_string()),
        "SELECT auth.sessions_cleanup('infinity', 'infinity')",
    )
    .await;
    let fresh = SessionManager::new(db.app.clone(), SessionConfig::default()).unwrap();
    let a_alive = fresh.validate(&a_token.expose()).await.unwrap().is_some();
    assert!(
        a_alive,
        "B's context deleted A's live session through {}_cleanup (result: {wiped:?})",
        "auth.sessions"
    );
}

/// Same function, called by a role that holds no privilege on the session tables at all (a
/// read-only reporting role with USAGE on the schema): the definer deletes for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_a_role_without_table_privileges_wipes_all_sessions() {
    let db = rls::<Uuid>(Some("auth")).await.unwrap();
    let manager = SessionManager::new(db.app.clone(), SessionConfig::default()).unwrap();
    let a = Uuid::now_v7();
    let (a_token, _) = manager
        .create(NewSession::new(a))
        .await
        .unwrap()
        .into_parts();

    let admin = sqlx::PgPool::connect(&db.admin_url).await.unwrap();
    let reporter = format!("reporter_{}", &Uuid::now_v7().simple().to_string()[20..]);
    for statement in [
        format!("CREATE ROLE {reporter} LOGIN PASSWORD 'r-pw'"),
        format!("GRANT USAGE ON SCHEMA auth TO {reporter}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&admin)
            .await
            .unwrap();
    }
    let mut conn = PgConnection::connect(&common::url_as(&db.admin_url, &reporter, "r-pw"))
        .await
        .unwrap();
    assert!(
        sqlx::query("SELECT count(*) FROM auth.sessions")
            .fetch_one(&mut conn)
            .await
            .is_err(),
        "the reporter has no privilege on the table"
    );
    let wiped = scalar(
        &mut conn,
        None,
        "SELECT auth.sessions_cleanup('infinity', 'infinity')",
    )
    .await;
    let fresh = SessionManager::new(db.app.clone(), SessionConfig::default()).unwrap();
    assert!(
        fresh.validate(&a_token.expose()).await.unwrap().is_some(),
        "a role with no privilege on the sessions deleted them (result: {wiped:?})"
    );
}

/// The touch function takes any ids and any times: the app's role, naming no one, moves
/// another user's `last_active_at` to the year 9999, so the idle timeout never ends that
/// session (a stolen session kept alive forever), and "your devices" shows a bogus time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_app_role_extends_another_users_session_through_the_touch_function() {
    let db = rls::<Uuid>(Some("auth")).await.unwrap();
    let manager = SessionManager::new(db.app.clone(), SessionConfig::default()).unwrap();
    let a = Uuid::now_v7();
    let (_, a_session) = manager
        .create(NewSession::new(a))
        .await
        .unwrap()
        .into_parts();

    let mut conn = PgConnection::connect(&db.app_url).await.unwrap();
    let touched = scalar(
        &mut conn,
        None,
        &format!(
            "SELECT count(*) FROM (SELECT auth.sessions_touch(ARRAY['{}']::uuid[], \
             ARRAY['9999-01-01']::timestamptz[])) t",
            a_session.id
        ),
    )
    .await;
    let listed = manager.list(a).await.unwrap();
    let last = listed[0].last_active_at;
    assert!(
        last < time::OffsetDateTime::now_utc() + time::Duration::days(1),
        "A's last_active_at was moved to {last} by raw SQL naming no user ({touched:?})"
    );
}

/// Without a schema (the default `search_path`, which `Tables` allows with row-level security)
/// the definer functions name their tables unqualified but run with
/// `search_path = pg_catalog, pg_temp`: the migration or every lookup fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_row_level_security_without_a_schema_is_accepted_but_broken() {
    // Fixed by refusing it: the definer functions need schema-qualified tables.
    let error = match rls::<Uuid>(None).await {
        Ok(_) => panic!("Tables accepted row-level security without a schema"),
        Err(error) => error,
    };
    assert!(error.contains("needs its own schema"), "{error}");
}

/// String user ids with quotes, commas, and SQL are bound, never spliced: each user sees only
/// their own sessions, and the set_config value is not interpreted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_string_user_ids_with_sql_metacharacters_stay_apart() {
    let db = rls::<String>(Some("auth")).await.unwrap();
    let manager = SessionManager::new(db.app.clone(), SessionConfig::default()).unwrap();
    let users = [
        "o'brien".to_owned(),
        "a,b".to_owned(),
        "x' OR '1'='1".to_owned(),
        "victim".to_owned(),
        "victim ".to_owned(),
    ];
    for user in &users {
        let _ = manager.create(NewSession::new(user.clone())).await.unwrap();
    }
    for user in &users {
        let listed = manager.list(user.clone()).await.unwrap();
        assert_eq!(listed.len(), 1, "{user:?}");
        assert_eq!(&listed[0].user_id, user);
    }
    // The empty id: NULLIF makes it "no user", so it fails closed (an error), never open.
    let empty = manager.create(NewSession::new(String::new())).await;
    let mut conn = PgConnection::connect(&db.app_url).await.unwrap();
    assert_eq!(
        scalar(&mut conn, Some(""), "SELECT count(*) FROM auth.sessions")
            .await
            .unwrap(),
        0
    );
    eprintln!("empty user id sign-in: {:?}", empty.map(|_| ()));
}

/// A session-level `app.current_user_id` left on a pooled connection by the app's own SQL does
/// not leak into the library's statements (they set it transaction-local).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_a_session_level_setting_on_a_pooled_connection_does_not_leak_into_the_library() {
    let db = rls::<Uuid>(Some("auth")).await.unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.app_url)
        .await
        .unwrap();
    let tables = Tables::new()
        .schema("auth")
        .row_level_security(&db.definer, &db.app_role);
    let store = PostgresStore::with_tables(pool.clone(), tables).unwrap();
    let manager = SessionManager::new(store, SessionConfig::default()).unwrap();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let _ = manager.create(NewSession::new(a)).await.unwrap();
    let _ = manager.create(NewSession::new(b)).await.unwrap();
    // On every connection the library may use next.
    for _ in 0..4 {
        sqlx::query("SELECT set_config('app.current_user_id', $1, false)")
            .bind(b.to_string())
            .execute(&pool)
            .await
            .unwrap();
    }
    let listed = manager.list(a).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].user_id, a);
    assert_eq!(manager.list(b).await.unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Anomaly events
// ---------------------------------------------------------------------------------------------

async fn me(_: CurrentSession) -> &'static str {
    "ok"
}

fn request(token: &str, peer: &str, user_agent: &str) -> Request<Body> {
    let mut request = Request::get("/me")
        .header("authorization", format!("Bearer {token}"))
        .header("user-agent", user_agent)
        .body(Body::empty())
        .unwrap();
    let peer: SocketAddr = if peer.contains(':') {
        format!("[{peer}]:40000")
    } else {
        format!("{peer}:40000")
    }
    .parse()
    .unwrap();
    #[cfg(feature = "axum")]
    request.extensions_mut().insert(ConnectInfo(peer));
    #[cfg(not(feature = "axum"))]
    request
        .extensions_mut()
        .insert(session_layer::anomaly::PeerAddr(peer));
    request
}

/// A stolen token alternating between two user agents (or two addresses) makes one WARN event
/// and one hook call per request, without bound: the app's hook (an email, a push to the
/// victim) is a notification cannon, and the log a flood.
#[tokio::test]
async fn attack_alternating_user_agents_make_one_event_per_request_without_bound() {
    let manager = SessionManager::new(MemoryStore::new(), SessionConfig::default()).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let sink = calls.clone();
    manager.on_anomaly(move |_| {
        sink.fetch_add(1, Ordering::Relaxed);
        Verdict::Allow
    });
    let (token, _) = manager
        .create(
            NewSession::new(Uuid::now_v7())
                .ip_address(Some("203.0.113.1".parse().unwrap()))
                .user_agent(Some("Firefox/140")),
        )
        .await
        .unwrap()
        .into_parts();
    let token = token.expose();
    let app = Router::new()
        .route("/me", get(me))
        .layer(SessionLayer::new(manager));
    for i in 0..1000 {
        let ua = if i % 2 == 0 {
            "curl/8.5"
        } else {
            "Firefox/140"
        };
        let response = app
            .clone()
            .oneshot(request(&token, "203.0.113.1", ua))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let calls = calls.load(Ordering::Relaxed);
    assert!(
        calls <= 20,
        "{calls} hook calls (and as many WARN events) for 1000 requests of one session"
    );
}

/// A hook that panics on the first change of a request: the request dies with it (the panic
/// unwinds through `Service::call` on the cache-hit path), and the second change of the same
/// request (the user agent) is never reported, not even in the log, since its fingerprint was
/// already stored.
#[tokio::test]
async fn attack_a_panicking_hook_kills_the_request_and_swallows_the_other_change() {
    let manager = SessionManager::new(MemoryStore::new(), SessionConfig::default()).unwrap();
    let seen: Arc<Mutex<Vec<Change>>> = Arc::default();
    let sink = seen.clone();
    manager.on_anomaly(move |anomaly| {
        sink.lock().unwrap().push(anomaly.change.clone());
        if let Change::IpAddress { .. } = anomaly.change {
            panic!("hook bug");
        }
        Verdict::Allow
    });
    let (token, _) = manager
        .create(
            NewSession::new(Uuid::now_v7())
                .ip_address(Some("203.0.113.1".parse().unwrap()))
                .user_agent(Some("Firefox/140")),
        )
        .await
        .unwrap()
        .into_parts();
    let token = token.expose();
    let app = Router::new()
        .route("/me", get(me))
        .layer(SessionLayer::new(manager));
    // Warm the cache (the lookup path), then the hit path takes the new address and agent.
    let warm = app
        .clone()
        .oneshot(request(&token, "203.0.113.1", "Firefox/140"))
        .await
        .unwrap();
    assert_eq!(warm.status(), StatusCode::OK);
    let attacker = {
        let (app, token) = (app.clone(), token.to_string());
        tokio::spawn(async move {
            app.oneshot(request(&token, "198.51.100.66", "curl/8.5"))
                .await
                .unwrap()
                .status()
        })
    };
    let outcome = attacker.await;
    // Later requests from the attacker's origin report nothing more either.
    let _ = tokio::spawn({
        let (app, token) = (app.clone(), token.to_string());
        async move {
            app.oneshot(request(&token, "198.51.100.66", "curl/8.5"))
                .await
        }
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert!(
        matches!(outcome, Ok(StatusCode::OK))
            && seen
                .iter()
                .any(|change| matches!(change, Change::UserAgent { .. })),
        "request outcome: {:?}; changes reported: {seen:?}",
        outcome.map_err(|e| e.is_panic())
    );
}

/// Concurrent requests from one new address race between the fingerprint load and the lock:
/// exactly one report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_concurrent_requests_from_a_new_address_are_reported_once() {
    let manager = SessionManager::new(MemoryStore::new(), SessionConfig::default()).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let sink = calls.clone();
    let reentrant = manager.clone();
    manager.on_anomaly(move |_| {
        sink.fetch_add(1, Ordering::Relaxed);
        // Re-registering from inside the hook must not deadlock (no read guard held).
        let again = sink.clone();
        reentrant.on_anomaly(move |_| {
            again.fetch_add(1, Ordering::Relaxed);
            Verdict::Allow
        });
        Verdict::Allow
    });
    let (token, _) = manager
        .create(
            NewSession::new(Uuid::now_v7())
                .ip_address(Some("203.0.113.1".parse().unwrap()))
                .user_agent(Some("Firefox/140")),
        )
        .await
        .unwrap()
        .into_parts();
    let token = token.expose();
    let app = Router::new()
        .route("/me", get(me))
        .layer(SessionLayer::new(manager));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (app, token) = (app.clone(), token.to_string());
            tokio::spawn(async move {
                app.oneshot(request(&token, "::ffff:198.51.100.9", "Firefox/140"))
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    // The IPv4-mapped peer is canonicalised: the same address again is no change.
    let again = app
        .clone()
        .oneshot(request(&token, "198.51.100.9", "  Firefox/140 "))
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// X-Forwarded-For from an untrusted peer is ignored: the attacker cannot claim the victim's
/// address to stay silent.
#[tokio::test]
async fn held_forwarded_for_from_an_untrusted_peer_cannot_hide_a_new_address() {
    let config = SessionConfig::builder()
        .trusted_proxies(["10.0.0.0/8".parse().unwrap()])
        .build()
        .unwrap();
    let manager = SessionManager::new(MemoryStore::new(), config).unwrap();
    let seen = common::record_anomalies(&manager);
    let (token, _) = manager
        .create(
            NewSession::new(Uuid::now_v7())
                .ip_address(Some("203.0.113.1".parse().unwrap()))
                .user_agent(Some("Firefox/140")),
        )
        .await
        .unwrap()
        .into_parts();
    let app = Router::new()
        .route("/me", get(me))
        .layer(SessionLayer::new(manager));
    for (peer, xff) in [
        ("198.51.100.66", "203.0.113.1"),
        ("10.0.0.1", "203.0.113.1, 198.51.100.66"),
    ] {
        let mut req = request(&token.expose(), peer, "Firefox/140");
        req.headers_mut()
            .insert("x-forwarded-for", xff.parse().unwrap());
        assert_eq!(
            app.clone().oneshot(req).await.unwrap().status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [Change::IpAddress {
            previous: Some("203.0.113.1".parse().unwrap()),
            current: "198.51.100.66".parse().unwrap(),
        }]
    );
}

/// Under row-level security, deleting a user (as the app's role, naming no one) still cascades
/// to their sessions, and the delete trigger still drops them from every instance's cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_the_foreign_key_cascade_and_its_feed_work_under_row_level_security() {
    let db = rls_with::<Uuid>(Some("auth"), true).await.unwrap();
    let user = Uuid::now_v7();
    let mut conn = PgConnection::connect(&db.app_url).await.unwrap();
    sqlx::query("INSERT INTO public.app_users (id) VALUES ($1)")
        .bind(user)
        .execute(&mut conn)
        .await
        .unwrap();
    let manager = SessionManager::new(db.app.clone(), SessionConfig::default()).unwrap();
    let (token, _) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    assert!(manager.validate(&token.expose()).await.unwrap().is_some());
    // Give the feed a lease to start trusting the cache, then the hit path serves it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(manager.validate(&token.expose()).await.unwrap().is_some());
    let deleted = sqlx::query("DELETE FROM public.app_users WHERE id = $1")
        .bind(user)
        .execute(&mut conn)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(deleted, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(manager.validate(&token.expose()).await.unwrap().is_none());
    let fresh = SessionManager::new(db.app.clone(), SessionConfig::default()).unwrap();
    assert!(fresh.validate(&token.expose()).await.unwrap().is_none());
}

async fn me_text(_: CurrentSession<String>) -> &'static str {
    "ok"
}

/// The anomaly WARN (which whoever holds the token triggers at will) writes the user id with
/// `Display`: a text user id chosen at registration (a user name) with a line break forges a
/// log line of its own in a plain-text log.
#[tokio::test]
async fn attack_a_text_user_id_forges_log_lines_through_the_anomaly_warning() {
    common::capture_logs();
    let manager =
        SessionManager::<String>::new(MemoryStore::<String>::default(), SessionConfig::default())
            .unwrap();
    let marker = Uuid::now_v7().simple().to_string();
    let user = format!("mallory\n2026-11-25T04:00:00Z  INFO admin_login{{user=root}}: {marker}");
    let (token, _) = manager
        .create(
            NewSession::new(user)
                .ip_address(Some("203.0.113.1".parse().unwrap()))
                .user_agent(Some("Firefox/140")),
        )
        .await
        .unwrap()
        .into_parts();
    let app = Router::new()
        .route("/me", get(me_text))
        .layer(SessionLayer::new(manager));
    let response = app
        .oneshot(request(&token.expose(), "198.51.100.66", "Firefox/140"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let forged: Vec<_> = common::captured_lines_with(&marker)
        .into_iter()
        .filter(|line| line.starts_with("2026-11-25T04:00:00Z"))
        .collect();
    assert!(forged.is_empty(), "forged log lines: {forged:#?}");
}

/// With user A named, the app's role cannot attach a retired hash to B's session (which would
/// let it trip B's reuse detection and revoke B's session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_a_retired_hash_cannot_be_attached_to_another_users_session() {
    let db = rls::<Uuid>(Some("auth")).await.unwrap();
    let manager = SessionManager::new(db.app.clone(), SessionConfig::default()).unwrap();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let _ = manager.create(NewSession::new(a)).await.unwrap();
    let (_, b_session) = manager
        .create(NewSession::new(b))
        .await
        .unwrap()
        .into_parts();
    let mut conn = PgConnection::connect(&db.app_url).await.unwrap();
    let insert = format!(
        "WITH i AS (INSERT INTO auth.session_retired_tokens (token_hash, session_id, retired_at) \
         VALUES (decode(repeat('ab', 32), 'hex'), '{}', now()) RETURNING 1) SELECT count(*) FROM i",
        b_session.id
    );
    assert!(
        scalar(&mut conn, Some(&a.to_string()), &insert)
            .await
            .is_err()
    );
    assert!(scalar(&mut conn, None, &insert).await.is_err());
}

/// `NewSession::ip_address` stores the address as given; the layer compares canonical ones. An
/// app that records the raw peer of a dual-stack listener (`::ffff:a.b.c.d`) gets a "new
/// address" report on the first request of every session, from the very socket it signed in
/// on: alert fatigue that buries real reports (or mass sign-outs, with a revoking hook).
#[tokio::test]
async fn attack_a_mapped_sign_in_address_reports_every_session_as_moved() {
    let manager = SessionManager::new(MemoryStore::new(), SessionConfig::default()).unwrap();
    let seen = common::record_anomalies(&manager);
    let (token, _) = manager
        .create(
            NewSession::new(Uuid::now_v7())
                .ip_address(Some("::ffff:203.0.113.1".parse().unwrap()))
                .user_agent(Some("Firefox/140")),
        )
        .await
        .unwrap()
        .into_parts();
    let app = Router::new()
        .route("/me", get(me))
        .layer(SessionLayer::new(manager));
    let response = app
        .oneshot(request(
            &token.expose(),
            "::ffff:203.0.113.1",
            "Firefox/140",
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(*seen.lock().unwrap(), []);
}

/// A dead database under row-level security fails closed: 503 on lookups once the cache's
/// lease lapses, never a pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_a_dead_database_under_row_level_security_fails_closed() {
    let server = test_support::dedicated_postgres();
    let db = common::postgres_rls_on::<Uuid>(server.create_database(), Some("auth"), None)
        .await
        .unwrap();
    let store = db.app.clone().with_lease(Duration::from_millis(200));
    let manager = SessionManager::new(store, SessionConfig::default()).unwrap();
    let (cached, _) = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    let (uncached, _) = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    let app = Router::new()
        .route("/me", get(me))
        .layer(SessionLayer::new(manager));
    let status = |token: String| {
        let app = app.clone();
        async move {
            app.oneshot(request(&token, "203.0.113.1", "Firefox/140"))
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status(cached.expose().to_string()).await, StatusCode::OK);
    server.stop();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        status(cached.expose().to_string()).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        status(uncached.expose().to_string()).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
}
