//! The application-facing API: sessions issued and ended as response parts, the device list,
//! rejections that plain Tower services can read, span fields, serialization.

#[macro_use]
mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use session_layer::{
    Clock, CookieConfig, CurrentSession, NewSession, SessionConfig, SessionLayer, SessionManager,
    SessionRejection, SessionStore,
};
use tower::ServiceExt;
use uuid::Uuid;

async fn body_text(response: Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn set_cookie(response: &Response<Body>) -> Option<String> {
    response
        .headers()
        .get(header::SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Sign in (a cookie), use it, sign out (the cookie cleared), and the cookie is refused.
#[tokio::test]
async fn issued_sessions_and_sign_outs_set_and_clear_the_cookie_as_response_parts() {
    let config = SessionConfig::builder()
        .cookie(CookieConfig::insecure())
        .build()
        .unwrap();
    let manager = SessionManager::new(session_layer::MemoryStore::new(), config).unwrap();
    let app = Router::new()
        .route(
            "/login",
            post(|State(sessions): State<SessionManager>| async move {
                let issued = sessions.create(NewSession::new(Uuid::now_v7())).await;
                issued
                    .map(|issued| (issued, "signed in"))
                    .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)
            }),
        )
        .route(
            "/me",
            get(|s: CurrentSession| async move { s.session_id().to_string() }),
        )
        .route(
            "/logout",
            post(
                |State(sessions): State<SessionManager>, current: CurrentSession| async move {
                    let signed_out = sessions.logout(&current).await;
                    signed_out
                        .map(|signed_out| (signed_out, StatusCode::NO_CONTENT))
                        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)
                },
            ),
        )
        .layer(SessionLayer::new(manager.clone()))
        .with_state(manager.clone());
    let call = |method: &str, path: &str, cookie: &str| {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(request)
    };

    let login = call("POST", "/login", "").await.unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    let cookie = set_cookie(&login).expect("the login sets the session cookie");
    assert!(cookie.starts_with("session=") && cookie.contains("HttpOnly"));
    let pair = cookie.split(';').next().unwrap().to_owned();

    let me = call("GET", "/me", &pair).await.unwrap();
    assert_eq!(me.status(), StatusCode::OK);

    let logout = call("POST", "/logout", &pair).await.unwrap();
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    let cleared = set_cookie(&logout).expect("the logout clears the cookie");
    assert!(cleared.starts_with("session=;") && cleared.contains("Max-Age=0"));

    let after = call("GET", "/me", &pair).await.unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
}

/// The stored `last_active_at` lags by up to a touch interval: the list shows the uses this
/// process has seen, of every session, and marks the caller's.
async fn the_list_marks_the_current_session_and_shows_true_last_use(store: Arc<dyn SessionStore>) {
    let (clock, hand) = Clock::manual();
    let config = SessionConfig::builder()
        .clock(clock)
        // Nothing is written during the test: only memory knows of the uses.
        .touch_flush_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let manager = SessionManager::from_arc(store, config).unwrap();
    let user = Uuid::now_v7();
    let (laptop, laptop_session) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    hand.advance(Duration::from_secs(1));
    let (phone, phone_session) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();

    hand.advance(Duration::from_secs(10));
    let phone_used = manager.config().clock().now();
    assert!(manager.validate(&phone.expose()).await.unwrap().is_some());
    hand.advance(Duration::from_secs(10));
    let laptop_used = manager.config().clock().now();
    let current = manager.validate(&laptop.expose()).await.unwrap().unwrap();

    let listed = manager.list_for(&current).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].session.id, laptop_session.id, "most recent first");
    assert!(listed[0].current);
    assert_eq!(listed[0].session.last_active_at, laptop_used);
    assert_eq!(listed[1].session.id, phone_session.id);
    assert!(!listed[1].current);
    assert_eq!(
        listed[1].session.last_active_at, phone_used,
        "another session's use seen here counts too, not only the caller's"
    );

    // The same true last use without a current session (an administrator's view).
    let plain = manager.list(user).await.unwrap();
    assert_eq!(plain[0].last_active_at, laptop_used);
    assert_eq!(plain[1].last_active_at, phone_used);
}

on_every_store!(the_list_marks_the_current_session_and_shows_true_last_use);

#[test]
fn rejections_tell_their_status_and_code_as_their_responses_do() {
    let cases = [
        (
            SessionRejection::Unauthenticated { bearer_sent: false },
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            SessionRejection::Unavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            "session_store_unavailable",
        ),
    ];
    for (rejection, status, code) in cases {
        assert_eq!(rejection.status(), status);
        assert_eq!(rejection.code(), code);
        let response = rejection.into_response();
        assert_eq!(response.status(), status);
        let body = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(body_text(response));
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"], code);
        assert_eq!(json["message"], rejection.body_text());
    }
}

/// A plain Tower service (no axum extractor) tells a store outage (503) from a missing
/// session (401) through `SessionRejection::for_request`.
#[tokio::test]
async fn a_plain_tower_service_tells_an_outage_from_a_missing_session() {
    let probe = common::ProbeStore::new(common::memory());
    let manager = SessionManager::from_arc(probe.clone(), SessionConfig::default()).unwrap();
    let (token, _) = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    let service = tower::ServiceBuilder::new()
        .layer(SessionLayer::new(manager))
        .service_fn(|request: Request<Body>| async move {
            let status = match request.extensions().get::<CurrentSession>() {
                Some(_) => StatusCode::OK,
                None => SessionRejection::for_request(&request).status(),
            };
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .status(status)
                    .body(Body::empty())
                    .unwrap(),
            )
        });
    let call = |token: Option<&str>| {
        let mut request = Request::get("/");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        service
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
    };
    assert_eq!(call(None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    probe.fail(true);
    assert_eq!(
        call(Some(&token.expose())).await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    probe.fail(false);
    assert_eq!(
        call(Some(&token.expose())).await.unwrap().status(),
        StatusCode::OK
    );
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The request span declares `session.id` and `user.id`; the layer fills them in, on a store
/// lookup and on a cache hit alike, so the handler's events carry them.
#[tokio::test]
async fn the_layer_records_session_and_user_ids_on_the_request_span() {
    let logs = Capture::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let manager =
        SessionManager::new(session_layer::MemoryStore::new(), SessionConfig::default()).unwrap();
    let user = Uuid::now_v7();
    let (token, session) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    let app = common::traced_app(manager);
    for round in ["store lookup", "cache hit"] {
        logs.0.lock().unwrap().clear();
        let request = Request::get("/me")
            .header(header::AUTHORIZATION, format!("Bearer {}", token.expose()))
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            app.clone().oneshot(request).await.unwrap().status(),
            StatusCode::OK
        );
        let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let line = logs
            .lines()
            .find(|line| line.contains("handler ran"))
            .unwrap_or_else(|| panic!("{round}: no handler event in {logs}"));
        assert!(
            line.contains(&format!("session.id={}", session.id)),
            "{round}: {line}"
        );
        assert!(line.contains(&format!("user.id={user}")), "{round}: {line}");
    }
}

#[cfg(feature = "serde")]
mod serde_output {
    use super::*;

    #[tokio::test]
    async fn sessions_serialize_without_the_raw_user_agent_unless_asked() {
        let manager =
            SessionManager::new(session_layer::MemoryStore::new(), SessionConfig::default())
                .unwrap();
        let user_agent = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";
        let (token, session) = manager
            .create(NewSession::new(Uuid::now_v7()).user_agent(Some(user_agent)))
            .await
            .unwrap()
            .into_parts();
        let current = manager.validate(&token.expose()).await.unwrap().unwrap();
        let listed = manager.list_for(&current).await.unwrap();
        let json = serde_json::to_value(&listed[0]).unwrap();
        let text = json.to_string();
        assert!(!text.contains("Mozilla"), "{text}");
        assert!(!text.contains(&token.hash().to_hex()), "{text}");
        assert!(!text.contains(&token.expose()), "{text}");
        assert_eq!(json["current"], true);
        assert_eq!(json["id"], session.id.to_string());
        assert_eq!(json["device"], "Firefox on Linux");
        assert_eq!(json["device_type"], "desktop");
        assert_eq!(json["revoked_reason"], serde_json::Value::Null);
        let created = json["created_at"].as_str().unwrap();
        assert!(
            created.len() >= 20 && created.as_bytes()[10] == b'T' && created.ends_with('Z'),
            "RFC 3339 in UTC: {created}"
        );

        let audited = serde_json::to_value(session.with_user_agent()).unwrap();
        assert_eq!(audited["user_agent"], user_agent);
        assert_eq!(audited["id"], session.id.to_string());
    }
}
