//! The session list, revoking one session or every other one, and the new-location marker.

use e2e_tests::{
    Backend, CHROME_WINDOWS, FIREFOX_LINUX, SAFARI_IPHONE, TestApp, captured_logs, unique_email,
};
use reqwest::Method;
use serde_json::{Value, json};

use super::{PASSWORD, assert_rfc3339_utc};

e2e_tests::route_tests!(
    session_list_shows_each_device_most_recent_first_with_this_one_marked,
    revoked_session_is_refused_on_next_request_even_when_cached,
    revoking_the_current_or_a_malformed_or_unknown_id_is_refused,
    a_user_cannot_see_or_revoke_another_users_session,
    revoke_others_signs_out_every_other_device,
    a_session_used_from_a_new_address_is_logged_and_marked_in_the_list,
);

async fn session_list_shows_each_device_most_recent_first_with_this_one_marked(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let email = unique_email("list");
    let laptop = app.device(CHROME_WINDOWS);
    laptop.register(&email, PASSWORD).await;
    let phone = app.device(SAFARI_IPHONE);
    let desktop = app.device(FIREFOX_LINUX);
    let laptop_view = laptop.login_cookie(&email, PASSWORD).await;
    let phone_view = phone.login_bearer(&email, PASSWORD).await;
    let desktop_view = desktop.login_cookie(&email, PASSWORD).await;

    let reply = phone.get("/api/sessions").await;
    reply.expect(200);
    let sessions = reply.json["sessions"].as_array().expect("sessions").clone();
    assert_eq!(sessions.len(), 3, "{sessions:#?}");
    let ids: Vec<&Value> = sessions.iter().map(|s| &s["id"]).collect();
    // The phone is using its session right now, so it is the most recent; the other two
    // tie or follow sign-in order, newest first.
    assert_eq!(
        ids,
        [&phone_view["id"], &desktop_view["id"], &laptop_view["id"]]
    );
    let current: Vec<bool> = sessions.iter().map(|s| s["current"] == true).collect();
    assert_eq!(current, [true, false, false]);
    let devices: Vec<&str> = sessions
        .iter()
        .map(|s| s["device"].as_str().unwrap())
        .collect();
    assert_eq!(
        devices,
        ["Safari on iPhone", "Firefox on Ubuntu", "Chrome on Windows"]
    );
    for session in &sessions {
        let mut keys: Vec<&str> = session
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
                "last_active_at"
            ],
            "a SessionView has exactly the contract's fields (no token, hash or user agent)"
        );
        for field in ["created_at", "last_active_at", "expires_at"] {
            assert_rfc3339_utc(&session[field]);
        }
    }
    let text = reply.text;
    assert!(!text.contains(&phone.bearer().unwrap()) && !text.contains(&laptop.cookie().unwrap()));
    assert!(
        !text.contains("Mozilla/5.0"),
        "the raw user agent is never listed"
    );
    app.stop().await;
}

async fn revoked_session_is_refused_on_next_request_even_when_cached(backend: Backend) {
    // A long cache lifetime: only the revocation can make the phone's cached session go away.
    let app = TestApp::start(backend, &[("SESSION_CACHE_TTL_SECS", "300")]).await;
    let email = unique_email("revoke");
    let laptop = app.device(CHROME_WINDOWS);
    laptop.register(&email, PASSWORD).await;
    laptop.login_cookie(&email, PASSWORD).await;
    let phone = app.device(SAFARI_IPHONE);
    let phone_view = phone.login_bearer(&email, PASSWORD).await;
    for _ in 0..3 {
        phone.get("/api/me").await.expect(200); // now cached
    }
    let id = phone_view["id"].as_str().unwrap();
    laptop
        .delete(&format!("/api/sessions/{id}"))
        .await
        .expect(204);
    let refused = phone.get("/api/me").await;
    refused.expect_error(401, "unauthenticated");
    assert_eq!(
        refused.headers["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );
    laptop
        .delete(&format!("/api/sessions/{id}"))
        .await
        .expect_error(404, "session_not_found");
    let listed = laptop.get("/api/sessions").await;
    assert_eq!(
        listed.json["sessions"].as_array().unwrap().len(),
        1,
        "only the laptop is left"
    );
    app.stop().await;
}

async fn revoking_the_current_or_a_malformed_or_unknown_id_is_refused(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let email = unique_email("ids");
    let d = app.device(CHROME_WINDOWS);
    d.register(&email, PASSWORD).await;
    let view = d.login_cookie(&email, PASSWORD).await;
    let id = view["id"].as_str().unwrap();
    d.delete(&format!("/api/sessions/{id}"))
        .await
        .expect_error(400, "cannot_revoke_current_session");
    for bad in [
        "not-a-uuid",
        "123",
        "%FF%FE",
        "0193b6a4-zzzz-7000-8000-000000000000",
    ] {
        d.delete(&format!("/api/sessions/{bad}"))
            .await
            .expect_error(400, "invalid_session_id");
    }
    d.delete("/api/sessions/0193b6a4-0000-7000-8000-000000000000")
        .await
        .expect_error(404, "session_not_found");
    // Authentication comes first: an anonymous client gets 401 whatever the id.
    app.device(FIREFOX_LINUX)
        .delete("/api/sessions/not-a-uuid")
        .await
        .expect_error(401, "unauthenticated");
    d.get("/api/me").await.expect(200);
    app.stop().await;
}

async fn a_user_cannot_see_or_revoke_another_users_session(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let alice = app.device(CHROME_WINDOWS);
    let mallory = app.device(FIREFOX_LINUX);
    let (alice_email, mallory_email) = (unique_email("alice"), unique_email("mallory"));
    alice.register(&alice_email, PASSWORD).await;
    mallory.register(&mallory_email, PASSWORD).await;
    let alice_view = alice.login_bearer(&alice_email, PASSWORD).await;
    mallory.login_bearer(&mallory_email, PASSWORD).await;

    let listed = mallory.get("/api/sessions").await;
    let ids: Vec<&Value> = listed.json["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["id"])
        .collect();
    assert!(
        !ids.contains(&&alice_view["id"]),
        "another user's session is never listed"
    );
    assert_eq!(ids.len(), 1);
    let id = alice_view["id"].as_str().unwrap();
    mallory
        .delete(&format!("/api/sessions/{id}"))
        .await
        .expect_error(404, "session_not_found");
    alice.get("/api/me").await.expect(200);
    let revoked = mallory.post_empty("/api/sessions/revoke-others").await;
    assert_eq!(revoked.json["revoked"], 0);
    alice.get("/api/me").await.expect(200);
    app.stop().await;
}

async fn revoke_others_signs_out_every_other_device(backend: Backend) {
    let app = TestApp::start(backend, &[("SESSION_CACHE_TTL_SECS", "300")]).await;
    let email = unique_email("others");
    let laptop = app.device(CHROME_WINDOWS);
    laptop.register(&email, PASSWORD).await;
    laptop.login_cookie(&email, PASSWORD).await;
    let phone = app.device(SAFARI_IPHONE);
    phone.login_bearer(&email, PASSWORD).await;
    let desktop = app.device(FIREFOX_LINUX);
    desktop.login_cookie(&email, PASSWORD).await;
    phone.get("/api/me").await.expect(200);
    desktop.get("/api/me").await.expect(200);

    let reply = laptop.post_empty("/api/sessions/revoke-others").await;
    reply.expect(200);
    assert_eq!(reply.json, json!({"revoked": 2}));
    phone
        .get("/api/me")
        .await
        .expect_error(401, "unauthenticated");
    desktop
        .get("/api/me")
        .await
        .expect_error(401, "unauthenticated");
    laptop.get("/api/me").await.expect(200);
    let listed = laptop.get("/api/sessions").await;
    assert_eq!(listed.json["sessions"].as_array().unwrap().len(), 1);
    let again = laptop.post_empty("/api/sessions/revoke-others").await;
    assert_eq!(again.json, json!({"revoked": 0}));
    app.stop().await;
}

/// The library's anomaly hook: a session used from another address than its sign-in's is logged
/// once and marked in the list (`new_locations`); the device it moved to is the only one marked.
async fn a_session_used_from_a_new_address_is_logged_and_marked_in_the_list(backend: Backend) {
    let app = TestApp::start(backend, &[("TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    let email = unique_email("moved");
    let laptop = app.device(CHROME_WINDOWS);
    laptop.register(&email, PASSWORD).await;
    let home = [("x-forwarded-for", "203.0.113.5")];
    let body = json!({"email": email, "password": PASSWORD, "transport": "bearer"});
    let reply = laptop
        .send(
            Method::POST,
            "/api/auth/login",
            Some(body.to_string()),
            &home,
        )
        .await;
    assert_eq!(reply.status.as_u16(), 200);
    let id = reply.json["session"]["id"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {}", reply.json["token"].as_str().unwrap());
    let list = |from: &'static str| {
        let (laptop, bearer) = (&laptop, bearer.clone());
        async move {
            let headers = [
                ("x-forwarded-for", from),
                ("authorization", bearer.as_str()),
            ];
            let reply = laptop
                .send(Method::GET, "/api/sessions", None, &headers)
                .await;
            assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
            reply.json
        }
    };

    let at_home = list("203.0.113.5").await;
    assert_eq!(at_home["new_locations"], json!({}), "{at_home}");
    assert_eq!(at_home["sessions"][0]["ip_address"], "203.0.113.5");

    let away = list("198.51.100.77").await;
    assert_eq!(
        away["new_locations"],
        json!({ &id: "198.51.100.77" }),
        "{away}"
    );
    assert_eq!(
        away["sessions"][0]["ip_address"], "203.0.113.5",
        "the sign-in address stays"
    );
    list("198.51.100.77").await;
    let warnings: Vec<_> = captured_logs()
        .lines()
        .filter(|line| {
            line.contains(&id) && line.contains("session used from a new client address")
        })
        .map(str::to_owned)
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one event per change, not per request: {warnings:#?}"
    );
    assert!(warnings[0].contains("203.0.113.5") && warnings[0].contains("198.51.100.77"));

    // Back home: no marker any more.
    let back = list("203.0.113.5").await;
    assert_eq!(back["new_locations"], json!({}), "{back}");
}
