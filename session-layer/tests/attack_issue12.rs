//! Attacks on the application-facing API of issue 12: `IssuedSession`, `SignedOut`,
//! `list_for`, serde output, `SessionRejection`, span fields, the user-agent warm-up.
//!
//! Tests of protections that hold are marked `// holds:`; the others fail on feef7ae.

#[macro_use]
mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::{get, post};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use session_layer::{
    Clock, CookieConfig, CurrentSession, Error, MemoryStore, NewSession, SessionConfig,
    SessionLayer, SessionManager, SessionRejection, SessionStore,
};
use tower::ServiceExt;
use uuid::Uuid;

async fn body_text(response: Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn set_cookies(response: &Response<Body>) -> Vec<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// An app with login (cookie or bearer), /me, /rotate, /logout, /devices.
fn app(manager: &SessionManager) -> Router {
    Router::new()
        .route(
            "/login",
            post(|State(sessions): State<SessionManager>| async move {
                sessions
                    .create(NewSession::new(Uuid::now_v7()))
                    .await
                    .map(|issued| (issued, "signed in"))
                    .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)
            }),
        )
        .route(
            "/me",
            get(|s: CurrentSession| async move { s.session_id().to_string() }),
        )
        .route(
            "/maybe",
            get(|s: Option<CurrentSession>| async move { format!("{}", s.is_some()) }),
        )
        .route(
            "/rotate",
            post(
                |State(sessions): State<SessionManager>, current: CurrentSession| async move {
                    sessions
                        .rotate(&current)
                        .await
                        .map(|issued| (issued, "rotated"))
                        .map_err(|_| StatusCode::CONFLICT)
                },
            ),
        )
        .route(
            "/logout",
            post(
                |State(sessions): State<SessionManager>, current: CurrentSession| async move {
                    sessions
                        .logout(&current)
                        .await
                        .map(|signed_out| (signed_out, StatusCode::NO_CONTENT))
                        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)
                },
            ),
        )
        .layer(SessionLayer::new(manager.clone()))
        .with_state(manager.clone())
}

fn insecure_manager(store: Arc<dyn SessionStore>) -> SessionManager {
    let config = SessionConfig::builder()
        .cookie(CookieConfig::insecure())
        .build()
        .unwrap();
    SessionManager::from_arc(store, config).unwrap()
}

async fn send(app: &Router, request: Request<Body>) -> Response<Body> {
    app.clone().oneshot(request).await.unwrap()
}

fn get_with(headers: &[(&str, &[u8])]) -> Request<Body> {
    let mut request = Request::get("/me");
    for (name, value) in headers {
        request = request.header(*name, HeaderValue::from_bytes(value).unwrap());
    }
    request.body(Body::empty()).unwrap()
}

fn pair_of(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------------
// Span fields: a user id that carries a newline forges a log line.
// ---------------------------------------------------------------------------------------------

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

/// A `String` user id is often a user-chosen name or e-mail. The layer records it on the request
/// span with `Display`, so the fmt subscriber writes its newline raw, and whatever follows starts
/// a line of its own: a forged log line.
#[tokio::test(flavor = "current_thread")]
async fn a_user_id_with_a_newline_cannot_forge_a_log_line_through_the_span() {
    let logs = Capture::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let manager =
        SessionManager::<String>::from_arc(common::memory_as::<String>(), SessionConfig::default())
            .unwrap();
    let evil = "mallory\n2026-01-01T00:00:00.000000Z  INFO FORGED: admin signed in user.id=admin"
        .to_owned();
    let (token, _) = manager
        .create(NewSession::new(evil))
        .await
        .unwrap()
        .into_parts();
    let app = common::traced_app(manager);
    let request = Request::get("/me")
        .header(header::AUTHORIZATION, format!("Bearer {}", token.expose()))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, request).await.status(), StatusCode::OK);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let forged: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("2026-01-01T00:00:00.000000Z"))
        .collect();
    assert!(
        forged.is_empty(),
        "a user id forged a log line: {forged:?}\nfull log:\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// list_for: a session that validation already refuses as idle is still listed as active.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_device_list_does_not_show_a_session_that_is_refused_as_idle() {
    let (clock, hand) = Clock::manual();
    let config = SessionConfig::builder()
        .clock(clock)
        .idle_timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let manager = SessionManager::new(MemoryStore::new(), config).unwrap();
    let user = Uuid::now_v7();
    let (stale, stale_session) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    hand.advance(Duration::from_secs(601));
    assert!(
        manager.validate(&stale.expose()).await.unwrap().is_none(),
        "precondition: the idle session is refused"
    );
    let (fresh, _) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    let current = manager.validate(&fresh.expose()).await.unwrap().unwrap();
    let listed = manager.list_for(&current).await.unwrap();
    let ids: Vec<Uuid> = listed.iter().map(|l| l.session.id).collect();
    assert!(
        !ids.contains(&stale_session.id),
        "the device list shows a session that every request refuses as idle: {listed:#?}"
    );
}

// holds: list_for marks only the caller's session, lists only the caller's user, no revoked
// session, and never a last_active_at in the future or behind the stored value.
#[tokio::test]
async fn list_for_shows_only_own_active_sessions_marked_once() {
    let manager = SessionManager::new(MemoryStore::new(), SessionConfig::default()).unwrap();
    let (alice, mallory) = (Uuid::now_v7(), Uuid::now_v7());
    let a1 = manager.create(NewSession::new(alice)).await.unwrap();
    let a2 = manager.create(NewSession::new(alice)).await.unwrap();
    let a3 = manager.create(NewSession::new(alice)).await.unwrap();
    let _m = manager.create(NewSession::new(mallory)).await.unwrap();
    manager
        .revoke(
            alice,
            a3.session().id,
            session_layer::RevocationReason::Admin,
        )
        .await
        .unwrap();
    let current = manager
        .validate(&a1.token().expose())
        .await
        .unwrap()
        .unwrap();
    let listed = manager.list_for(&current).await.unwrap();
    let now = time::OffsetDateTime::now_utc();
    assert_eq!(listed.len(), 2, "{listed:#?}");
    assert_eq!(listed.iter().filter(|l| l.current).count(), 1);
    for l in &listed {
        assert_eq!(l.session.user_id, alice);
        assert!(l.session.revoked_at.is_none());
        assert!(l.session.last_active_at <= now);
        assert!(l.session.last_active_at >= l.session.created_at);
        assert_eq!(l.current, l.session.id == a1.session().id);
    }
    assert!(listed.iter().any(|l| l.session.id == a2.session().id));
}

// ---------------------------------------------------------------------------------------------
// Cookies.
// ---------------------------------------------------------------------------------------------

// holds: the issued cookie carries HttpOnly, Secure (secure config), SameSite=Lax, Path=/, no
// Domain, and expires exactly with the session; the removal cookie matches name/Path/Domain.
#[tokio::test]
async fn issued_and_removal_cookies_have_matching_safe_attributes() {
    let manager = SessionManager::new(MemoryStore::new(), SessionConfig::default()).unwrap();
    let issued = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap();
    let expires_at = issued.session().expires_at;
    let token = issued.token().expose();
    let cookie = issued.cookie();
    assert_eq!(cookie.name(), "__Host-session");
    assert_eq!(cookie.value(), token);
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.secure(), Some(true));
    assert_eq!(
        cookie.same_site(),
        Some(session_layer::cookie::SameSite::Lax)
    );
    assert_eq!(cookie.path(), Some("/"));
    assert_eq!(cookie.domain(), None);
    let expires = cookie.expires_datetime().expect("an Expires attribute");
    assert_eq!(expires.unix_timestamp(), expires_at.unix_timestamp());
    // The response part is the same cookie.
    let response = axum::response::IntoResponse::into_response((issued, "ok"));
    let header = set_cookies(&response);
    assert_eq!(header.len(), 1);
    let parsed = session_layer::cookie::Cookie::parse(header[0].clone()).unwrap();
    assert_eq!(parsed.value(), token);
    assert_eq!(parsed.secure(), Some(true));
    assert!(!format!("{:?}", manager).contains(&token));

    let current = manager.validate(&token).await.unwrap().unwrap();
    let removal = manager.logout(&current).await.unwrap().removal_cookie();
    assert_eq!(removal.name(), cookie.name());
    assert_eq!(removal.path(), cookie.path());
    assert_eq!(removal.domain(), cookie.domain());
    assert_eq!(removal.secure(), Some(true));
    assert_eq!(removal.value(), "");
    assert_eq!(removal.max_age(), Some(time::Duration::ZERO));
}

/// `CookieConfig::insecure().with_name("__Host-session")` (a dev config pointed at the
/// production name) produced a `__Host-` cookie without `Secure`, which every browser drops:
/// sign-in silently never stuck. The configuration is now refused when it is built.
#[test]
fn a_host_prefixed_cookie_name_is_never_issued_without_secure() {
    for name in ["__Host-session", "__Secure-session", "__host-session"] {
        let built = SessionConfig::builder()
            .cookie(CookieConfig::insecure().with_name(name))
            .build();
        assert!(
            matches!(
                built,
                Err(session_layer::ConfigError::PrefixedCookieNotSecure)
            ),
            "{name} without Secure was accepted: browsers drop that cookie"
        );
    }
    assert!(
        SessionConfig::builder()
            .cookie(CookieConfig::secure().with_name("__Secure-sid"))
            .build()
            .is_ok()
    );
}

// holds: the token never appears in Debug output of IssuedSession, its Session, the
// CurrentSession, SignedOut, or any error, nor in the logs of create/rotate/logout.
#[tokio::test]
async fn the_token_and_its_hash_never_reach_debug_output_or_logs() {
    common::capture_logs();
    let manager = SessionManager::new(MemoryStore::new(), SessionConfig::default()).unwrap();
    let issued = manager
        .create(NewSession::new(Uuid::now_v7()).user_agent(Some("curl/8.0")))
        .await
        .unwrap();
    let first = issued.token().clone();
    let mut secrets = vec![first.expose(), first.hash().to_hex()];
    let mut printed = format!("{issued:?} {:?}", issued.session());
    let current = manager.validate(&first.expose()).await.unwrap().unwrap();
    printed += &format!("{current:?}");
    let rotated = manager.rotate(&current).await.unwrap();
    secrets.push(rotated.token().expose());
    secrets.push(rotated.token().hash().to_hex());
    printed += &format!("{rotated:?}");
    // The old token again: reuse, which logs a warning.
    assert!(manager.validate(&first.expose()).await.unwrap().is_none());
    let again = manager.rotate(&current).await.unwrap_err();
    printed += &format!("{again:?} {again}");
    let current = manager.validate(&rotated.token().expose()).await.unwrap();
    printed += &format!("{current:?}");
    manager.shutdown().await;
    let text = common::captured_logs() + &printed;
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "secret leaked");
    }
}

// ---------------------------------------------------------------------------------------------
// Logout and rotate through the layer.
// ---------------------------------------------------------------------------------------------

// holds: after logout the cookie, and the same token as a bearer, are 401 on the very next
// request; the clearing Set-Cookie has the same name and Path as the issued one.
#[tokio::test]
async fn a_replayed_cookie_after_logout_is_refused_at_once_also_as_bearer() {
    let manager = insecure_manager(common::memory());
    let app = app(&manager);
    let login = send(&app, Request::post("/login").body(Body::empty()).unwrap()).await;
    let issued = set_cookies(&login);
    assert_eq!(issued.len(), 1);
    let pair = pair_of(&issued[0]);
    let token = pair.trim_start_matches("session=").to_owned();
    // Warm the cache so that a stale cache entry would be served.
    for _ in 0..3 {
        let me = send(&app, get_with(&[("cookie", pair.as_bytes())])).await;
        assert_eq!(me.status(), StatusCode::OK);
    }
    let logout = send(
        &app,
        Request::post("/logout")
            .header(header::COOKIE, &pair)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    let cleared = set_cookies(&logout);
    assert_eq!(cleared.len(), 1);
    let removal = session_layer::cookie::Cookie::parse(cleared[0].clone()).unwrap();
    let original = session_layer::cookie::Cookie::parse(issued[0].clone()).unwrap();
    assert_eq!(removal.name(), original.name());
    assert_eq!(removal.path(), original.path());
    assert_eq!(removal.domain(), original.domain());

    let replay = send(&app, get_with(&[("cookie", pair.as_bytes())])).await;
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    let bearer = format!("Bearer {token}");
    let replay = send(&app, get_with(&[("authorization", bearer.as_bytes())])).await;
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    // A second logout with the dead cookie is a 401, not a 500.
    let again = send(
        &app,
        Request::post("/logout")
            .header(header::COOKIE, &pair)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
}

// holds: after a rotation the old cookie is refused, and presenting it ends the family: the new
// cookie is refused too.
#[tokio::test]
async fn the_old_cookie_after_rotate_is_refused_and_ends_the_family() {
    let manager = insecure_manager(common::memory());
    let app = app(&manager);
    let login = send(&app, Request::post("/login").body(Body::empty()).unwrap()).await;
    let old = pair_of(&set_cookies(&login)[0]);
    assert_eq!(
        send(&app, get_with(&[("cookie", old.as_bytes())]))
            .await
            .status(),
        StatusCode::OK
    );
    let rotate = send(
        &app,
        Request::post("/rotate")
            .header(header::COOKIE, &old)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(rotate.status(), StatusCode::OK);
    let new = pair_of(&set_cookies(&rotate)[0]);
    assert_ne!(old, new);
    assert_eq!(
        send(&app, get_with(&[("cookie", new.as_bytes())]))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&app, get_with(&[("cookie", old.as_bytes())]))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&app, get_with(&[("cookie", new.as_bytes())]))
            .await
            .status(),
        StatusCode::UNAUTHORIZED,
        "the reuse of the old token must end the whole session"
    );
}

// ---------------------------------------------------------------------------------------------
// Rejections for hostile input, and outages.
// ---------------------------------------------------------------------------------------------

async fn assert_json_401(app: &Router, request: Request<Body>, what: &str) {
    let response = send(app, request).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
    assert_eq!(
        response.headers().get(header::CONTENT_TYPE).unwrap(),
        "application/json",
        "{what}"
    );
    let body = body_text(response).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "unauthenticated", "{what}");
}

/// Raw request headers: name, bytes (not necessarily UTF-8).
type Headers = Vec<(&'static str, Vec<u8>)>;

// holds: malformed tokens, huge or many Cookie headers, non-UTF-8 bytes: 401 JSON, at most one
// store lookup, never 500 or a panic.
#[tokio::test]
async fn hostile_credentials_are_401_json_with_at_most_one_lookup() {
    let probe = common::ProbeStore::new(common::memory());
    let manager = insecure_manager(probe.clone());
    let app = app(&manager);
    let well_formed = session_layer::SessionToken::generate().unwrap().expose();
    let long = format!("session={}", "A".repeat(60_000));
    let cases: Vec<(&str, Headers)> = vec![
        ("short", vec![("cookie", b"session=abc".to_vec())]),
        (
            "44 chars",
            vec![("cookie", format!("session={well_formed}A").into_bytes())],
        ),
        (
            "padding",
            vec![(
                "cookie",
                format!("session={}=", &well_formed[..42]).into_bytes(),
            )],
        ),
        (
            "not base64",
            vec![("cookie", format!("session={}", "!".repeat(43)).into_bytes())],
        ),
        ("huge", vec![("cookie", long.into_bytes())]),
        (
            "non-utf8",
            vec![("cookie", b"session=\xff\xfe\x80; a=\xc3".to_vec())],
        ),
        (
            "bearer non-utf8",
            vec![("authorization", b"Bearer \xff\xfe".to_vec())],
        ),
        ("bearer empty", vec![("authorization", b"Bearer ".to_vec())]),
        ("bearer only", vec![("authorization", b"Bearer".to_vec())]),
        (
            "bearer wrong length",
            vec![(
                "authorization",
                format!("Bearer {well_formed}xx").into_bytes(),
            )],
        ),
    ];
    for (what, headers) in cases {
        let refs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        assert_json_401(&app, get_with(&refs), what).await;
    }
    assert_eq!(probe.lookups(), 0, "malformed tokens never reach the store");

    // 500 Cookie headers, each with a well-formed unknown token: one lookup at most.
    let mut request = Request::get("/me");
    for _ in 0..500 {
        let token = session_layer::SessionToken::generate().unwrap().expose();
        request = request.header(header::COOKIE, format!("a=1; session={token}"));
    }
    assert_json_401(&app, request.body(Body::empty()).unwrap(), "many cookies").await;
    assert!(probe.lookups() <= 1, "{} lookups", probe.lookups());
}

// holds: bearer scheme in any case with extra spaces authenticates; a malformed bearer does not
// fall back to a valid cookie; a revoked duplicate cookie first is 401 (not a 500).
#[tokio::test]
async fn bearer_spelling_and_duplicate_cookies() {
    let manager = insecure_manager(common::memory());
    let app = app(&manager);
    let (token, _) = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    let token = token.expose();
    for spelling in [format!("bearer   {token}  "), format!("BEARER {token}")] {
        let response = send(&app, get_with(&[("authorization", spelling.as_bytes())])).await;
        assert_eq!(response.status(), StatusCode::OK, "{spelling}");
    }
    let cookie = format!("session={token}");
    let response = send(
        &app,
        get_with(&[
            ("authorization", b"Bearer not-a-token"),
            ("cookie", cookie.as_bytes()),
        ]),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let (revoked, revoked_session) = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    manager
        .revoke(
            revoked_session.user_id,
            revoked_session.id,
            session_layer::RevocationReason::Logout,
        )
        .await
        .unwrap();
    let both = format!("session={}; session={token}", revoked.expose());
    let response = send(&app, get_with(&[("cookie", both.as_bytes())])).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let both = format!("session={token}; session={}", revoked.expose());
    let response = send(&app, get_with(&[("cookie", both.as_bytes())])).await;
    assert_eq!(response.status(), StatusCode::OK);
}

// holds: a store outage is 503 with JSON and Retry-After, for a cookie, for a bearer, and for
// Option<CurrentSession>; never 401 or 500.
#[tokio::test]
async fn a_store_outage_is_503_for_every_transport_and_extractor() {
    let probe = common::ProbeStore::new(common::memory());
    let manager = insecure_manager(probe.clone());
    let app = app(&manager);
    let (token, _) = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    probe.fail(true);
    let cookie = format!("session={}", token.expose());
    let bearer = format!("bearer {}", token.expose());
    for (path, name, value) in [
        ("/me", "cookie", &cookie),
        ("/me", "authorization", &bearer),
        ("/maybe", "cookie", &cookie),
    ] {
        let request = Request::get(path)
            .header(name, value.as_str())
            .body(Body::empty())
            .unwrap();
        let response = send(&app, request).await;
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{path} {name}"
        );
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        let json: serde_json::Value = serde_json::from_str(&body_text(response).await).unwrap();
        assert_eq!(json["error"], "session_store_unavailable");
    }
    // Logout during the outage does not pretend to have signed out.
    probe.fail(false);
    let current = manager.validate(&token.expose()).await.unwrap().unwrap();
    probe.fail(true);
    assert!(matches!(
        manager.logout(&current).await,
        Err(Error::Store(_))
    ));
    assert_eq!(
        SessionRejection::Unavailable.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

// ---------------------------------------------------------------------------------------------
// serde.
// ---------------------------------------------------------------------------------------------

// holds: the serialized fields are exactly the documented ones: no token, no hash, no raw user
// agent unless asked.
#[cfg(feature = "serde")]
#[tokio::test]
async fn serialized_sessions_carry_exactly_the_documented_fields() {
    let manager = SessionManager::new(MemoryStore::new(), SessionConfig::default()).unwrap();
    let ua = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";
    let issued = manager
        .create(NewSession::new(Uuid::now_v7()).user_agent(Some(ua)))
        .await
        .unwrap();
    let token = issued.token().clone();
    let current = manager.validate(&token.expose()).await.unwrap().unwrap();
    let listed = manager.list_for(&current).await.unwrap();
    let json = serde_json::to_value(&listed[0]).unwrap();
    let mut keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "created_at",
            "current",
            "device",
            "device_name",
            "device_type",
            "expires_at",
            "id",
            "ip_address",
            "last_active_at",
            "revoked_at",
            "revoked_reason",
            "user_id"
        ]
    );
    let text = serde_json::to_string(current.session()).unwrap()
        + &serde_json::to_string(issued.session()).unwrap()
        + &json.to_string();
    assert!(!text.contains("Mozilla"));
    assert!(!text.contains(&token.expose()));
    assert!(!text.contains(&token.hash().to_hex()));
    let audited = serde_json::to_value(issued.session().with_user_agent()).unwrap();
    assert_eq!(audited["user_agent"], ua);
}

// ---------------------------------------------------------------------------------------------
// The user-agent warm-up.
// ---------------------------------------------------------------------------------------------

fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

// holds: outside a runtime the manager is an error, not a panic; 50 managers in a loop do not
// spawn a thread each.
#[test]
fn many_managers_and_no_runtime() {
    assert!(matches!(
        SessionManager::new(MemoryStore::new(), SessionConfig::default()),
        Err(Error::NoRuntime)
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let _first = SessionManager::new(MemoryStore::new(), SessionConfig::default()).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = threads();
        let managers: Vec<_> = (0..50)
            .map(|_| SessionManager::new(MemoryStore::new(), SessionConfig::default()).unwrap())
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = threads();
        assert!(after <= before + 4, "{before} -> {after} threads");
        drop(managers);
    });
}

// holds: dropping the managers ends their background tasks (touch writer, relay): building
// managers in a loop does not leak tasks.
#[test]
fn dropped_managers_leave_no_tasks_behind() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let metrics = tokio::runtime::Handle::current().metrics();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = metrics.num_alive_tasks();
        let managers: Vec<_> = (0..50)
            .map(|_| SessionManager::new(MemoryStore::new(), SessionConfig::default()).unwrap())
            .collect();
        assert!(metrics.num_alive_tasks() >= before + 50);
        drop(managers);
        let ended = common::poll_until(Duration::from_secs(10), async || {
            metrics.num_alive_tasks() <= before
        })
        .await
        .is_some();
        assert!(
            ended,
            "{} tasks alive, {before} before",
            metrics.num_alive_tasks()
        );
    });
}

/// What goes out when a handler pairs an `IssuedSession` with an error status or with another
/// cookie. holds (documented behaviour, no library defect): the session exists in the store, so
/// its cookie goes out even with a 500; parts are applied in order, so `(signed_out, issued)`
/// leaves the browser with the new session and `(issued, signed_out)` with none.
#[tokio::test]
async fn issued_session_with_an_error_status_or_a_second_set_cookie() {
    use axum::response::IntoResponse;
    let manager = insecure_manager(common::memory());
    let issued = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap();
    let token = issued.token().expose();
    let response = (StatusCode::INTERNAL_SERVER_ERROR, issued, "oops").into_response();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let cookies = set_cookies(&response);
    assert_eq!(cookies.len(), 1);
    assert!(cookies[0].starts_with(&format!("session={token}")));
    let current = manager.validate(&token).await.unwrap().unwrap();
    // A CurrentSession from `validate` is a Bearer one: its SignedOut clears nothing.
    let signed_out = manager.logout(&current).await.unwrap();
    let issued = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap();
    let jar_cookie = signed_out.removal_cookie();
    let response = (
        [(header::SET_COOKIE, jar_cookie.to_string())],
        issued,
        StatusCode::OK,
    )
        .into_response();
    let cookies = set_cookies(&response);
    assert_eq!(cookies.len(), 2);
    assert!(cookies[0].starts_with("session=;"));
    assert!(cookies[1].starts_with("session=") && !cookies[1].starts_with("session=;"));
}

/// The warm-up runs once per process (`Once`), on the runtime of the first manager. holds if a
/// first manager built in a runtime that is shut down at once still leaves the dataset built.
/// Runs in a child process: the dataset is built once per process.
#[test]
fn the_warm_up_survives_a_first_runtime_that_is_shut_down() {
    const CHILD: &str = "ATTACK_ISSUE12_WARM_UP_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "the_warm_up_survives_a_first_runtime_that_is_shut_down",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "child failed:\n{stdout}\n{stderr}"
        );
        return;
    }
    assert!(!session_layer::user_agent_data_ready());
    let short = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    short.block_on(async {
        let _manager = SessionManager::new(MemoryStore::new(), SessionConfig::default()).unwrap();
    });
    short.shutdown_background();
    let long = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    long.block_on(async {
        let _manager = SessionManager::new(MemoryStore::new(), SessionConfig::default()).unwrap();
        common::eventually(
            Duration::from_secs(60),
            "the dataset was never built: the first sign-in will build it inline",
            async || session_layer::user_agent_data_ready(),
        )
        .await;
    });
}

/// `with_name` accepted a name that is not an RFC 6265 token. Only characters a header cannot
/// carry were caught (500, `CookieHeaderError`); a `;` passed and injected attributes into the
/// Set-Cookie (a nameless cookie `sid` for `Domain=example.com`, the token in an ignored
/// attribute). The configuration is now refused when it is built.
#[test]
fn a_cookie_name_that_is_not_a_token_is_refused_not_sent_with_injected_attributes() {
    for name in [
        "sid; Domain=example.com; x",
        "a=b",
        "",
        "sp ace",
        "quo\"te",
        "ü",
    ] {
        let built = SessionConfig::builder()
            .cookie(CookieConfig::insecure().with_name(name))
            .build();
        assert!(
            matches!(built, Err(session_layer::ConfigError::CookieName)),
            "the cookie name {name:?} was accepted"
        );
    }
}

/// The PostgreSQL example (which apps copy) returns the `IssuedSession` as response parts, an
/// `HttpOnly` cookie, and the same token in the JSON body, readable by any script on the page:
/// the `HttpOnly` protection is undone. `IssuedSession`'s own docs say one way or the other.
#[test]
fn the_postgres_example_does_not_hand_a_cookie_clients_token_to_javascript() {
    let source = include_str!("../examples/postgres.rs");
    let login = source
        .split("async fn login")
        .nth(1)
        .and_then(|rest| rest.split("\nasync fn ").next())
        .expect("the example has a login handler");
    assert!(
        !(login.contains("token().expose()") && login.contains("Ok((issued,")),
        "examples/postgres.rs login sets the HttpOnly cookie and puts the token in the body:\n{login}"
    );
}

/// `SignedOut` knows the transport and adds nothing for a bearer client; the `IssuedSession`
/// that `rotate` returns for a bearer client still sets the session cookie when returned as
/// response parts. A bearer-only browser client (token in memory, immune to CSRF) that rotates
/// through a handler written the obvious way gets an ambient cookie credential it never had.
#[tokio::test]
async fn rotating_a_bearer_session_does_not_plant_a_cookie() {
    let manager = insecure_manager(common::memory());
    let app = app(&manager);
    let (token, _) = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    let rotate = send(
        &app,
        Request::post("/rotate")
            .header(header::AUTHORIZATION, format!("Bearer {}", token.expose()))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(rotate.status(), StatusCode::OK);
    let cookies = set_cookies(&rotate);
    assert!(
        cookies.is_empty(),
        "a bearer client's rotation set a session cookie: {cookies:?}"
    );
}
