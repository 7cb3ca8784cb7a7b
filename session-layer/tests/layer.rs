//! The layer and the extractor, driven through `tower::ServiceExt::oneshot`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use session_layer::{
    Clock, CookieConfig, CurrentSession, NewSession, RevocationReason, SessionConfig, SessionLayer,
    SessionManager, SessionToken,
};
use tower::ServiceExt;
use uuid::Uuid;

fn config() -> session_layer::SessionConfigBuilder {
    SessionConfig::builder().cookie(CookieConfig::insecure())
}

fn app(manager: &SessionManager) -> Router {
    Router::new()
        .route(
            "/me",
            get(|s: CurrentSession| async move { s.session_id().to_string() }),
        )
        .route(
            "/maybe",
            get(|s: Option<CurrentSession>| async move {
                s.map_or_else(|| "anonymous".to_owned(), |s| s.session_id().to_string())
            }),
        )
        .layer(SessionLayer::new(manager.clone()))
}

struct Reply {
    status: StatusCode,
    www_authenticate: Option<String>,
    body: String,
}

async fn send(app: &Router, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let www_authenticate = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        www_authenticate,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

async fn sign_in(manager: &SessionManager, user: Uuid) -> (String, Uuid) {
    let (token, session) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    (token.expose(), session.id)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn cookie(token: &str) -> String {
    format!("theme=dark; session={token}")
}

fn assert_unauthenticated(reply: &Reply, bearer_sent: bool) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(json["error"], "unauthenticated");
    assert!(json["message"].is_string());
    let expected = if bearer_sent {
        r#"Bearer error="invalid_token""#
    } else {
        "Bearer"
    };
    assert_eq!(reply.www_authenticate.as_deref(), Some(expected));
}

#[tokio::test]
async fn cookie_and_bearer_tokens_both_authenticate() {
    let manager =
        SessionManager::new(session_layer::MemoryStore::new(), config().build().unwrap()).unwrap();
    let app = app(&manager);
    let (token, id) = sign_in(&manager, Uuid::now_v7()).await;
    let by_cookie = send(&app, "/me", &[("cookie", &cookie(&token))]).await;
    assert_eq!(
        (by_cookie.status, by_cookie.body),
        (StatusCode::OK, id.to_string())
    );
    let by_bearer = send(&app, "/me", &[("authorization", &bearer(&token))]).await;
    assert_eq!(
        (by_bearer.status, by_bearer.body),
        (StatusCode::OK, id.to_string())
    );
}

#[tokio::test]
async fn bearer_wins_over_cookie_and_other_schemes_are_ignored() {
    let manager =
        SessionManager::new(session_layer::MemoryStore::new(), config().build().unwrap()).unwrap();
    let app = app(&manager);
    let (a, id_a) = sign_in(&manager, Uuid::now_v7()).await;
    let (b, id_b) = sign_in(&manager, Uuid::now_v7()).await;
    let both = send(
        &app,
        "/me",
        &[("authorization", &bearer(&a)), ("cookie", &cookie(&b))],
    )
    .await;
    assert_eq!(both.body, id_a.to_string());
    let basic = send(
        &app,
        "/me",
        &[
            ("authorization", "Basic dXNlcjpwYXNz"),
            ("cookie", &cookie(&b)),
        ],
    )
    .await;
    assert_eq!(basic.body, id_b.to_string());
    // A malformed bearer token is the client's chosen credential: no fallback to the cookie.
    let bad_bearer = send(
        &app,
        "/me",
        &[("authorization", "Bearer nope"), ("cookie", &cookie(&b))],
    )
    .await;
    assert_unauthenticated(&bad_bearer, true);
}

#[tokio::test]
async fn missing_malformed_and_unknown_tokens_get_401_json() {
    let manager =
        SessionManager::new(session_layer::MemoryStore::new(), config().build().unwrap()).unwrap();
    let app = app(&manager);
    assert_unauthenticated(&send(&app, "/me", &[]).await, false);
    let unknown = SessionToken::generate().unwrap().expose();
    for (headers, bearer_sent) in [
        (vec![("cookie", "session=short")], false),
        (vec![("cookie", "session=")], false),
        (vec![("cookie", "=;;;session")], false),
        (vec![("cookie", "session=ÿÿ")], false),
        (vec![("authorization", "Bearer")], false),
        (vec![("authorization", "Bearer a b c")], true),
        (
            vec![(
                "authorization",
                "Bearer ===========================================",
            )],
            true,
        ),
    ] {
        let reply = send(&app, "/me", &headers).await;
        assert_unauthenticated(&reply, bearer_sent);
    }
    assert_unauthenticated(
        &send(&app, "/me", &[("cookie", &cookie(&unknown))]).await,
        false,
    );
    assert_unauthenticated(
        &send(&app, "/me", &[("authorization", &bearer(&unknown))]).await,
        true,
    );
    let anonymous = send(&app, "/maybe", &[("authorization", &bearer(&unknown))]).await;
    assert_eq!(
        (anonymous.status, anonymous.body.as_str()),
        (StatusCode::OK, "anonymous")
    );
}

#[tokio::test]
async fn revoked_session_is_refused_on_next_request_even_when_cached() {
    let manager =
        SessionManager::new(session_layer::MemoryStore::new(), config().build().unwrap()).unwrap();
    let app = app(&manager);
    let user = Uuid::now_v7();
    let (token, id) = sign_in(&manager, user).await;
    // The first request loads the session, the later ones are served from memory.
    for _ in 0..3 {
        let reply = send(&app, "/me", &[("cookie", &cookie(&token))]).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    manager.sync_cache().await;
    assert_eq!(manager.cached_sessions(), 1);
    manager
        .revoke(user, id, RevocationReason::RevokedByUser)
        .await
        .unwrap();
    assert_unauthenticated(
        &send(&app, "/me", &[("cookie", &cookie(&token))]).await,
        false,
    );
}

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn expired_session_is_refused_even_when_cached() {
    let config = config()
        .ttl(40 * MINUTE)
        .cache_ttl(60 * MINUTE)
        .clock(Clock::tokio())
        .build()
        .unwrap();
    let manager = SessionManager::new(session_layer::MemoryStore::new(), config).unwrap();
    let app = app(&manager);
    let (token, _) = sign_in(&manager, Uuid::now_v7()).await;
    let auth = bearer(&token);
    // Keep it busy so it is never idle; only the absolute lifetime can end it.
    for _ in 0..3 {
        assert_eq!(
            send(&app, "/me", &[("authorization", &auth)]).await.status,
            StatusCode::OK
        );
        tokio::time::sleep(10 * MINUTE).await;
    }
    tokio::time::sleep(15 * MINUTE).await;
    assert_unauthenticated(&send(&app, "/me", &[("authorization", &auth)]).await, true);
}

#[tokio::test(start_paused = true)]
async fn idle_session_is_refused_but_use_keeps_it_alive() {
    let config = config()
        .idle_timeout(10 * MINUTE)
        .clock(Clock::tokio())
        .build()
        .unwrap();
    let manager = SessionManager::new(session_layer::MemoryStore::new(), config).unwrap();
    let app = app(&manager);
    let (token, _) = sign_in(&manager, Uuid::now_v7()).await;
    let auth = cookie(&token);
    // Used every 4 minutes for 24: longer than the idle timeout in total.
    for _ in 0..6 {
        tokio::time::sleep(4 * MINUTE).await;
        assert_eq!(
            send(&app, "/me", &[("cookie", &auth)]).await.status,
            StatusCode::OK
        );
    }
    tokio::time::sleep(11 * MINUTE).await;
    assert_unauthenticated(&send(&app, "/me", &[("cookie", &auth)]).await, false);
}

#[tokio::test]
async fn store_outage_on_cache_miss_fails_closed_with_503() {
    let probe = common::ProbeStore::new(common::memory());
    let manager = SessionManager::from_arc(probe.clone(), config().build().unwrap()).unwrap();
    let app = app(&manager);
    let (token, _) = sign_in(&manager, Uuid::now_v7()).await;
    probe.fail(true);
    for path in ["/me", "/maybe"] {
        let reply = send(&app, path, &[("cookie", &cookie(&token))]).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(json["error"], "session_store_unavailable");
    }
    // No credential means no lookup, so anonymous requests are still served.
    assert_eq!(send(&app, "/maybe", &[]).await.body, "anonymous");
    probe.fail(false);
    assert_eq!(
        send(&app, "/me", &[("cookie", &cookie(&token))])
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn secure_cookie_name_is_read_when_configured() {
    let config = SessionConfig::builder()
        .cookie(CookieConfig::secure())
        .build()
        .unwrap();
    let manager = SessionManager::new(session_layer::MemoryStore::new(), config).unwrap();
    let app = app(&manager);
    let (token, _) = sign_in(&manager, Uuid::now_v7()).await;
    let host = format!("__Host-session={token}");
    assert_eq!(
        send(&app, "/me", &[("cookie", &host)]).await.status,
        StatusCode::OK
    );
    assert_unauthenticated(
        &send(&app, "/me", &[("cookie", &cookie(&token))]).await,
        false,
    );
}

/// `last_active_at` as stored (the manager's `list` adds the uses it has seen in memory).
async fn stored_last_active(store: &common::ProbeStore, user: Uuid) -> time::OffsetDateTime {
    // Every row counts as live: what is read is the stored value, whatever the time.
    let live = session_layer::store::Liveness {
        now: time::OffsetDateTime::UNIX_EPOCH,
        idle_cutoff: time::OffsetDateTime::UNIX_EPOCH,
    };
    session_layer::SessionStore::list_active(store, &user, live)
        .await
        .unwrap()[0]
        .last_active_at
}

#[tokio::test(start_paused = true)]
async fn last_active_moves_once_per_touch_interval_and_never_on_rejected_requests() {
    let probe = common::ProbeStore::new(common::memory());
    let config = config()
        .clock(Clock::tokio())
        .touch_interval(5 * MINUTE)
        .touch_flush_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let manager = SessionManager::from_arc(probe.clone(), config).unwrap();
    let app = app(&manager);
    let user = Uuid::now_v7();
    let (token, _) = sign_in(&manager, user).await;
    let created = stored_last_active(&probe, user).await;

    // Within one interval: many uses, nothing due yet.
    for _ in 0..20 {
        send(&app, "/me", &[("cookie", &cookie(&token))]).await;
    }
    manager.shutdown().await;
    assert_eq!(stored_last_active(&probe, user).await, created);

    tokio::time::sleep(6 * MINUTE).await;
    send(&app, "/me", &[("cookie", &cookie(&token))]).await;
    let before_flush = stored_last_active(&probe, user).await;
    assert_eq!(
        before_flush, created,
        "touches are batched, not written on the request path"
    );
    manager.shutdown().await;
    let touched = stored_last_active(&probe, user).await;
    assert!(touched > created);

    // A rejected request (wrong token) moves nothing.
    tokio::time::sleep(6 * MINUTE).await;
    let other = SessionToken::generate().unwrap().expose();
    send(&app, "/me", &[("cookie", &cookie(&other))]).await;
    manager.shutdown().await;
    assert_eq!(stored_last_active(&probe, user).await, touched);
}

#[tokio::test]
async fn debug_output_of_public_types_shows_no_secret() {
    let manager =
        SessionManager::new(session_layer::MemoryStore::new(), config().build().unwrap()).unwrap();
    let (token, session) = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    let encoded = token.expose();
    let current = manager.validate(&encoded).await.unwrap().unwrap();
    let hex = token.hash().to_hex();
    let dump = format!(
        "{token:?} {current:?} {session:?} {manager:?} {:?}",
        token.hash()
    );
    assert!(!dump.contains(&encoded));
    assert!(!dump.contains(&hex));
    let _unused = Arc::new(());
}

/// The cross-site guard: a cross-site write is refused unless the session layer authenticated
/// it by a bearer token; a Basic header (which browsers add by themselves) exempts nothing.
#[tokio::test]
async fn cross_site_writes_are_refused_unless_authenticated_by_bearer() {
    let manager =
        SessionManager::new(session_layer::MemoryStore::new(), config().build().unwrap()).unwrap();
    let app = Router::new()
        .route(
            "/write",
            axum::routing::post(|| async { "done" }).get(|| async { "read" }),
        )
        .layer(session_layer::CrossSiteGuard::new())
        .layer(SessionLayer::new(manager.clone()));
    let (token, _) = sign_in(&manager, Uuid::now_v7()).await;
    let post = async |headers: &[(&str, &str)]| {
        let mut request = Request::post("/write").header("host", "app.example");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    };
    let cross = ("sec-fetch-site", "cross-site");
    let cookie_header = cookie(&token);
    let (status, body) = post(&[cross, ("cookie", &cookie_header)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("forbidden_origin"), "{body}");
    let basic = ("authorization", "Basic dXNlcjpwYXNz");
    assert_eq!(
        post(&[cross, ("cookie", &cookie_header), basic]).await.0,
        StatusCode::FORBIDDEN,
        "a Basic header must not exempt a cookie request"
    );
    let bearer_header = bearer(&token);
    assert_eq!(
        post(&[cross, ("authorization", &bearer_header)]).await.0,
        StatusCode::OK,
        "a bearer-authenticated request cannot be forged by a page"
    );
    let unknown = bearer(&SessionToken::generate().unwrap().expose());
    assert_eq!(
        post(&[cross, ("authorization", &unknown)]).await.0,
        StatusCode::FORBIDDEN,
        "only a bearer token the layer accepted exempts"
    );
    for origin in ["https://evil.example", "null"] {
        assert_eq!(post(&[("origin", origin)]).await.0, StatusCode::FORBIDDEN);
    }
    assert_eq!(
        post(&[("origin", "http://app.example")]).await.0,
        StatusCode::OK
    );
    assert_eq!(
        post(&[("sec-fetch-site", "same-origin")]).await.0,
        StatusCode::OK
    );
    assert_eq!(post(&[]).await.0, StatusCode::OK, "curl and apps pass");
    let read = Request::get("/write")
        .header("sec-fetch-site", "cross-site")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.clone().oneshot(read).await.unwrap().status(),
        StatusCode::OK
    );
}
