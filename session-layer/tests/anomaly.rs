//! Anomaly events: a session used from a new client address or user agent is reported once per
//! change (a `tracing` event and the hook), on the cache-hit and the lookup path alike, and never
//! with the token. Revocations are logged with their reason.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
#[cfg(feature = "axum")]
use axum::extract::ConnectInfo;
use axum::routing::get;
use http::{Request, StatusCode};
use session_layer::anomaly::{Change, PeerAddr, Verdict};
use session_layer::{
    CurrentSession, NewSession, RevocationReason, SessionAnomaly, SessionConfig, SessionLayer,
    SessionManager, SessionStore,
};
use tower::ServiceExt;
use uuid::Uuid;

async fn me(_: CurrentSession) -> &'static str {
    "ok"
}

/// A request from socket peer `peer`, with `X-Forwarded-For: forwarded` if given.
async fn send(
    app: &Router,
    token: &str,
    peer: &str,
    forwarded: Option<&str>,
    user_agent: &str,
) -> StatusCode {
    let mut request = Request::get("/me")
        .header("authorization", format!("Bearer {token}"))
        .header("user-agent", user_agent);
    if let Some(forwarded) = forwarded {
        request = request.header("x-forwarded-for", forwarded);
    }
    let mut request = request.body(Body::empty()).unwrap();
    let peer: SocketAddr = format!("{peer}:40000").parse().unwrap();
    // axum's server records the peer as `ConnectInfo`, which the layer reads with the `axum`
    // feature; other servers insert `PeerAddr`.
    #[cfg(feature = "axum")]
    request.extensions_mut().insert(ConnectInfo(peer));
    #[cfg(not(feature = "axum"))]
    request.extensions_mut().insert(PeerAddr(peer));
    app.clone().oneshot(request).await.unwrap().status()
}

async fn each_change_of_address_or_user_agent_is_reported_once(store: Arc<dyn SessionStore>) {
    common::capture_logs();
    let config = SessionConfig::builder()
        .trusted_proxies(["10.0.0.0/8".parse().unwrap()])
        .cache_ttl(Duration::from_millis(100))
        .build()
        .unwrap();
    let manager = SessionManager::from_arc(store, config).unwrap();
    let reported: Arc<Mutex<Vec<SessionAnomaly>>> = Arc::default();
    let sink = reported.clone();
    manager.on_anomaly(move |anomaly| {
        sink.lock().unwrap().push(anomaly.clone());
        Verdict::Allow
    });
    let take = || std::mem::take(&mut *reported.lock().unwrap());

    let user = Uuid::now_v7();
    let (token, session) = manager
        .create(
            NewSession::new(user)
                .ip_address(Some("203.0.113.1".parse().unwrap()))
                .user_agent(Some("Firefox/140")),
        )
        .await
        .unwrap()
        .into_parts();
    let token = token.expose();
    let app = Router::new()
        .route("/me", get(me))
        .layer(SessionLayer::new(manager.clone()));

    // Where it signed in from: the lookup, then hits. Nothing to report.
    for _ in 0..3 {
        assert_eq!(
            send(&app, &token, "203.0.113.1", None, "Firefox/140").await,
            StatusCode::OK
        );
    }
    assert_eq!(take(), []);

    // A new address, behind a trusted proxy: one report, however many requests.
    for _ in 0..3 {
        let status = send(
            &app,
            &token,
            "10.1.2.3",
            Some("198.51.100.9"),
            "Firefox/140",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let new_address = SessionAnomaly {
        session_id: session.id,
        user_id: user,
        change: Change::IpAddress {
            previous: Some("203.0.113.1".parse().unwrap()),
            current: "198.51.100.9".parse().unwrap(),
        },
    };
    assert_eq!(take(), [new_address]);

    // A new user agent, then the cache entry ends and the session is read again: the last
    // values seen outlive the entry, so the reload reports nothing new.
    assert_eq!(
        send(&app, &token, "198.51.100.9", None, "curl/8.5").await,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        send(&app, &token, "198.51.100.9", None, "curl/8.5").await,
        StatusCode::OK
    );
    assert_eq!(
        take(),
        [SessionAnomaly {
            session_id: session.id,
            user_id: user,
            change: Change::UserAgent {
                previous: Some("Firefox/140".into()),
                current: Some("curl/8.5".into()),
            },
        }]
    );

    // Requests that do not authenticate report nothing.
    let status = send(&app, "not-a-token", "192.0.2.200", None, "evil").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(take(), []);

    // One warning per change, with the session, user, old and new values, never the token.
    let lines = common::captured_lines_with(&session.id.to_string());
    let warnings: Vec<_> = lines.iter().filter(|line| line.contains("WARN")).collect();
    assert_eq!(warnings.len(), 2, "{lines:#?}");
    assert!(warnings[0].contains("session used from a new client address"));
    assert!(warnings[0].contains("203.0.113.1") && warnings[0].contains("198.51.100.9"));
    assert!(warnings[0].contains(&user.to_string()));
    assert!(warnings[1].contains("session used with a new user agent"));
    assert!(warnings[1].contains("Firefox/140") && warnings[1].contains("curl/8.5"));
    assert!(lines.iter().all(|line| !line.contains(&*token)));

    // Revocations are logged with their reason.
    manager
        .revoke(user, session.id, RevocationReason::RevokedByUser)
        .await
        .unwrap();
    let revoked = common::captured_lines_with(&session.id.to_string());
    assert!(
        revoked
            .iter()
            .any(|line| line.contains("session revoked") && line.contains("revoked_by_user")),
        "{revoked:#?}"
    );
}

/// A hook that answers `Verdict::Revoke` ends the session before the request is served: that
/// request is unauthenticated, and so is every later one, on the hit and the lookup path alike.
async fn a_revoke_verdict_ends_the_session_before_the_request_is_served(
    store: Arc<dyn SessionStore>,
) {
    let manager = SessionManager::from_arc(store, SessionConfig::default()).unwrap();
    manager.on_anomaly(|anomaly| match anomaly.change {
        Change::UserAgent { .. } => Verdict::Revoke(RevocationReason::Admin),
        _ => Verdict::Allow,
    });
    let app = Router::new()
        .route("/me", get(me))
        .layer(SessionLayer::new(manager.clone()));
    for warm in [false, true] {
        let user = Uuid::now_v7();
        let (token, _) = manager
            .create(NewSession::new(user).user_agent(Some("Firefox/140")))
            .await
            .unwrap()
            .into_parts();
        let token = token.expose();
        if warm {
            // Cached: the anomaly shows on the hit path.
            let status = send(&app, &token, "203.0.113.1", None, "Firefox/140").await;
            assert_eq!(status, StatusCode::OK);
        }
        let stolen = send(&app, &token, "198.51.100.9", None, "curl/8.5").await;
        assert_eq!(stolen, StatusCode::UNAUTHORIZED, "warm cache: {warm}");
        let owner = send(&app, &token, "203.0.113.1", None, "Firefox/140").await;
        assert_eq!(owner, StatusCode::UNAUTHORIZED, "warm cache: {warm}");
        let sessions = manager.list(user).await.unwrap();
        assert!(sessions.is_empty(), "warm cache: {warm}");
    }
}

on_every_store!(
    each_change_of_address_or_user_agent_is_reported_once,
    a_revoke_verdict_ends_the_session_before_the_request_is_served
);

/// A plain Tower server tells the layer the peer with `PeerAddr`; without any peer the address
/// is unknown and is not reported as a change.
#[tokio::test]
async fn servers_that_are_not_axum_give_the_peer_as_peer_addr() {
    let manager =
        SessionManager::new(session_layer::MemoryStore::new(), SessionConfig::default()).unwrap();
    let reported = common::record_anomalies(&manager);
    let (token, _) = manager
        .create(
            NewSession::new(Uuid::now_v7())
                .ip_address(Some("203.0.113.1".parse().unwrap()))
                .user_agent(Some("app/1")),
        )
        .await
        .unwrap()
        .into_parts();
    let app = Router::new()
        .route("/me", get(me))
        .layer(SessionLayer::new(manager));
    let request = |peer: Option<&str>| {
        let mut request = Request::get("/me")
            .header("authorization", format!("Bearer {}", token.expose()))
            .header("user-agent", "app/1")
            .body(Body::empty())
            .unwrap();
        if let Some(peer) = peer {
            request
                .extensions_mut()
                .insert(PeerAddr(format!("{peer}:1").parse().unwrap()));
        }
        request
    };
    for peer in [None, Some("203.0.113.1"), None, Some("192.0.2.7")] {
        let response = app.clone().oneshot(request(peer)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        *reported.lock().unwrap(),
        [Change::IpAddress {
            previous: Some("203.0.113.1".parse().unwrap()),
            current: "192.0.2.7".parse().unwrap(),
        }]
    );
}
