//! How sessions end on their own: the per-user limit, the absolute lifetime, the idle timeout.

use std::time::{Duration, Instant};

use e2e_tests::{
    Backend, CHROME_WINDOWS, FIREFOX_LINUX, SAFARI_IPHONE, TestApp, eventually, unique_email,
};
use serde_json::Value;

use super::PASSWORD;

e2e_tests::route_tests!(
    login_past_the_session_limit_evicts_the_least_recently_active_session,
    session_is_refused_after_its_absolute_lifetime_even_when_in_use,
    idle_session_is_refused_but_a_used_one_lives_on,
);

async fn login_past_the_session_limit_evicts_the_least_recently_active_session(backend: Backend) {
    let app = TestApp::start(
        backend,
        &[
            ("MAX_SESSIONS_PER_USER", "2"),
            ("SESSION_CACHE_TTL_SECS", "300"),
        ],
    )
    .await;
    let email = unique_email("limit");
    let first = app.device(CHROME_WINDOWS);
    first.register(&email, PASSWORD).await;
    let first_view = first.login_bearer(&email, PASSWORD).await;
    let second = app.device(SAFARI_IPHONE);
    let second_view = second.login_bearer(&email, PASSWORD).await;
    first.get("/api/me").await.expect(200);
    second.get("/api/me").await.expect(200);

    let third = app.device(FIREFOX_LINUX);
    let third_view = third.login_bearer(&email, PASSWORD).await;
    // Both older sessions were used at about the same (coarse) time; on a tie the older one
    // counts as less recently active, so the first is evicted.
    first
        .get("/api/me")
        .await
        .expect_error(401, "unauthenticated");
    second.get("/api/me").await.expect(200);
    third.get("/api/me").await.expect(200);
    let listed = third.get("/api/sessions").await;
    let mut ids: Vec<Value> = listed.json["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    ids.sort_by_key(|v| v.as_str().unwrap().to_owned());
    assert_eq!(ids, [second_view["id"].clone(), third_view["id"].clone()]);
    assert!(!ids.contains(&first_view["id"]));
    app.stop().await;
}

async fn session_is_refused_after_its_absolute_lifetime_even_when_in_use(backend: Backend) {
    let app = TestApp::start(
        backend,
        &[
            ("SESSION_TTL_SECS", "3"),
            ("SESSION_IDLE_TIMEOUT_SECS", "3"),
            ("SESSION_CACHE_TTL_SECS", "1"),
        ],
    )
    .await;
    let email = unique_email("ttl");
    let d = app.device(CHROME_WINDOWS);
    d.register(&email, PASSWORD).await;
    let started = Instant::now();
    let view = d.login_bearer(&email, PASSWORD).await;
    let expires = time::OffsetDateTime::parse(
        view["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let created = time::OffsetDateTime::parse(
        view["created_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(expires - created, time::Duration::seconds(3));
    // Used continuously, and refreshed once: still refused at the absolute expiry.
    d.get("/api/me").await.expect(200);
    let refreshed = d.post_empty("/api/auth/refresh").await;
    refreshed.expect(200);
    d.set_bearer(refreshed.json["token"].as_str());
    let refused_after = eventually(Duration::from_secs(10), "absolute expiry", || async {
        let status = d.get("/api/me").await.status;
        (status == 401).then(|| started.elapsed())
    })
    .await;
    assert!(
        refused_after >= Duration::from_millis(2900),
        "refused after {refused_after:?}, before the 3 s lifetime"
    );
    app.stop().await;
}

async fn idle_session_is_refused_but_a_used_one_lives_on(backend: Backend) {
    let app = TestApp::start(
        backend,
        &[
            ("SESSION_TTL_SECS", "60"),
            ("SESSION_IDLE_TIMEOUT_SECS", "2"),
            ("SESSION_CACHE_TTL_SECS", "1"),
        ],
    )
    .await;
    let email = unique_email("idle");
    let busy = app.device(CHROME_WINDOWS);
    busy.register(&email, PASSWORD).await;
    busy.login_bearer(&email, PASSWORD).await;
    let idle = app.device(SAFARI_IPHONE);
    idle.login_bearer(&email, PASSWORD).await;
    idle.get("/api/me").await.expect(200);
    let last_idle_use = Instant::now();

    // The busy device keeps using its session for well past the idle timeout.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(4500) {
        busy.get("/api/me").await.expect(200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(last_idle_use.elapsed() > Duration::from_secs(2));
    idle.get("/api/me")
        .await
        .expect_error(401, "unauthenticated");
    let listed = busy.get("/api/sessions").await;
    listed.expect(200);
    assert_eq!(
        listed.json["sessions"].as_array().unwrap().len(),
        1,
        "the idle session is no longer listed: {}",
        listed.text
    );
    app.stop().await;
}
