//! Registration, sign-in (cookie and bearer), sign-out and token refresh.

use e2e_tests::{Backend, CHROME_WINDOWS, FIREFOX_LINUX, SAFARI_IPHONE, TestApp, unique_email};
use reqwest::Method;
use serde_json::{Value, json};

use super::{PASSWORD, assert_rfc3339_utc};

e2e_tests::route_tests!(
    register_validates_input_and_refuses_a_taken_email,
    wrong_password_and_unknown_email_are_indistinguishable,
    cookie_login_sets_a_lax_http_only_cookie_and_authenticates,
    bearer_login_returns_a_token_and_no_cookie_and_bearer_wins_over_cookie,
    logout_revokes_the_session_and_clears_the_cookie,
    refresh_rotates_the_token_and_reuse_of_the_old_one_revokes_the_session,
);

async fn register_validates_input_and_refuses_a_taken_email(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let d = app.device(CHROME_WINDOWS);
    let email = unique_email("register");
    let user_id = d.register(&email, PASSWORD).await;
    assert_eq!(user_id.len(), 36, "a UUID: {user_id}");

    // Same address, other case and padding: taken.
    let shouted = format!("  {}  ", email.to_uppercase());
    d.post(
        "/api/auth/register",
        json!({"email": shouted, "password": PASSWORD}),
    )
    .await
    .expect_error(409, "email_taken");
    for bad in [
        "not-an-email",
        "a@b",
        "two@@example.com",
        "sp ace@example.com",
        "",
    ] {
        d.post(
            "/api/auth/register",
            json!({"email": bad, "password": PASSWORD}),
        )
        .await
        .expect_error(422, "invalid_email");
    }
    d.post(
        "/api/auth/register",
        json!({"email": unique_email("weak"), "password": "1234567"}),
    )
    .await
    .expect_error(422, "weak_password");
    for body in [
        json!({"email": unique_email("x")}),
        json!({"email": 5, "password": PASSWORD}),
        json!([]),
        json!(null),
    ] {
        d.post("/api/auth/register", body)
            .await
            .expect_error(400, "invalid_request");
    }
    app.stop().await;
}

async fn wrong_password_and_unknown_email_are_indistinguishable(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let d = app.device(FIREFOX_LINUX);
    let email = unique_email("enum");
    d.register(&email, PASSWORD).await;
    let wrong = d
        .post(
            "/api/auth/login",
            json!({"email": email, "password": "not the password"}),
        )
        .await;
    wrong.expect_error(401, "invalid_credentials");
    let unknown = d
        .post(
            "/api/auth/login",
            json!({"email": unique_email("nobody"), "password": PASSWORD}),
        )
        .await;
    unknown.expect_error(401, "invalid_credentials");
    assert_eq!(wrong.text, unknown.text, "bodies must not differ");
    assert!(wrong.set_cookies().is_empty() && unknown.set_cookies().is_empty());
    // Emails are compared case-insensitively and trimmed.
    d.login_cookie(&format!(" {} ", email.to_uppercase()), PASSWORD)
        .await;
    app.stop().await;
}

async fn cookie_login_sets_a_lax_http_only_cookie_and_authenticates(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let d = app.device(CHROME_WINDOWS);
    let email = unique_email("cookie");
    let user_id = d.register(&email, PASSWORD).await;
    let reply = d
        .post(
            "/api/auth/login",
            json!({"email": email, "password": PASSWORD, "device_name": "Work laptop"}),
        )
        .await;
    reply.expect(200);
    assert!(
        reply.json.get("token").is_none(),
        "cookie login must not return the token"
    );
    let cookies = reply.set_cookies();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let cookie = &cookies[0];
    assert!(cookie.starts_with("session="), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    assert!(
        !cookie.contains("Secure"),
        "COOKIE_SECURE defaults to false: {cookie}"
    );
    let session = &reply.json["session"];
    assert_eq!(session["device"], "Chrome on Windows");
    assert_eq!(session["device_type"], "desktop");
    assert_eq!(session["device_name"], "Work laptop");
    assert_eq!(session["ip_address"], "127.0.0.1");
    assert_eq!(session["current"], true);
    assert_rfc3339_utc(&session["created_at"]);
    assert_rfc3339_utc(&session["expires_at"]);

    let me = d.get("/api/me").await;
    me.expect(200);
    assert_eq!(me.json["user_id"], user_id.as_str());
    assert_eq!(me.json["email"], email.as_str());
    assert_eq!(me.json["session_id"], session["id"]);

    // The secure cookie of COOKIE_SECURE=true.
    let secure = TestApp::start(backend, &[("COOKIE_SECURE", "true")]).await;
    let s = secure.device(CHROME_WINDOWS);
    s.register(&email, PASSWORD).await;
    let reply = s
        .post(
            "/api/auth/login",
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    let cookie = reply.set_cookies().join("; ");
    assert!(
        cookie.starts_with("__Host-session=") && cookie.contains("Secure"),
        "{cookie}"
    );
    secure.stop().await;
    app.stop().await;
}

async fn bearer_login_returns_a_token_and_no_cookie_and_bearer_wins_over_cookie(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let phone = app.device(SAFARI_IPHONE);
    let email = unique_email("bearer");
    phone.register(&email, PASSWORD).await;
    let reply = phone
        .post(
            "/api/auth/login",
            json!({"email": email, "password": PASSWORD, "transport": "bearer"}),
        )
        .await;
    reply.expect(200);
    assert!(
        reply.set_cookies().is_empty(),
        "bearer login sets no cookie"
    );
    let token = reply.json["token"].as_str().expect("token");
    assert_eq!(token.len(), 43);
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_eq!(reply.json["session"]["device"], "Safari on iPhone");
    assert_eq!(reply.json["session"]["device_type"], "mobile");
    assert_eq!(reply.json["session"]["device_name"], Value::Null);
    phone.set_bearer(Some(token));
    let phone_session = phone.get("/api/me").await.json["session_id"].clone();

    // A second device signed in with the cookie; when both are sent, the bearer wins.
    let laptop = app.device(CHROME_WINDOWS);
    laptop.login_cookie(&email, PASSWORD).await;
    laptop.set_bearer(Some(token));
    assert_eq!(
        laptop.get("/api/me").await.json["session_id"],
        phone_session
    );
    // A bad bearer is refused even with a good cookie, with the RFC 6750 header.
    laptop.set_bearer(Some("A".repeat(43).as_str()));
    let refused = laptop.get("/api/me").await;
    refused.expect_error(401, "unauthenticated");
    assert_eq!(
        refused.headers["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );
    // Another Authorization scheme is ignored: the cookie is used.
    laptop.set_bearer(None);
    let laptop_session = laptop.get("/api/me").await.json["session_id"].clone();
    let basic = laptop
        .send(
            Method::GET,
            "/api/me",
            None,
            &[("authorization", "Basic dXNlcjpwYXNz")],
        )
        .await;
    basic.expect(200);
    assert_eq!(basic.json["session_id"], laptop_session);
    // Without anything: 401 with the plain challenge.
    let anonymous = app.device(FIREFOX_LINUX).get("/api/me").await;
    anonymous.expect_error(401, "unauthenticated");
    assert_eq!(anonymous.headers["www-authenticate"], "Bearer");
    app.stop().await;
}

async fn logout_revokes_the_session_and_clears_the_cookie(backend: Backend) {
    let app = TestApp::start(backend, &[("SESSION_CACHE_TTL_SECS", "300")]).await;
    let email = unique_email("logout");
    let laptop = app.device(CHROME_WINDOWS);
    laptop.register(&email, PASSWORD).await;
    laptop.login_cookie(&email, PASSWORD).await;
    let old_cookie = laptop.cookie().unwrap();
    laptop.get("/api/me").await.expect(200);
    let reply = laptop.post_empty("/api/auth/logout").await;
    reply.expect(204);
    let cleared = reply.set_cookies().join("\n");
    assert!(
        cleared.starts_with("session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert_eq!(laptop.cookie(), None);
    laptop.set_cookie(Some(&old_cookie));
    laptop
        .get("/api/me")
        .await
        .expect_error(401, "unauthenticated");
    laptop
        .post_empty("/api/auth/logout")
        .await
        .expect_error(401, "unauthenticated");

    let phone = app.device(SAFARI_IPHONE);
    phone.login_bearer(&email, PASSWORD).await;
    let reply = phone.post_empty("/api/auth/logout").await;
    reply.expect(204);
    assert!(
        reply.set_cookies().is_empty(),
        "a bearer client gets no cookie"
    );
    phone
        .get("/api/me")
        .await
        .expect_error(401, "unauthenticated");
    app.stop().await;
}

async fn refresh_rotates_the_token_and_reuse_of_the_old_one_revokes_the_session(backend: Backend) {
    let app = TestApp::start(backend, &[("SESSION_CACHE_TTL_SECS", "300")]).await;
    let email = unique_email("rotate");
    let phone = app.device(SAFARI_IPHONE);
    phone.register(&email, PASSWORD).await;
    let signed_in = phone.login_bearer(&email, PASSWORD).await;
    let old = phone.bearer().unwrap();
    phone.get("/api/me").await.expect(200);

    let reply = phone.post_empty("/api/auth/refresh").await;
    reply.expect(200);
    let new = reply.json["token"].as_str().expect("new token").to_owned();
    assert_ne!(new, old);
    assert_eq!(reply.json["session"]["id"], signed_in["id"]);
    assert_eq!(
        reply.json["session"]["expires_at"], signed_in["expires_at"],
        "rotation does not move the absolute expiry"
    );
    assert!(reply.set_cookies().is_empty());
    phone.set_bearer(Some(&new));
    phone.get("/api/me").await.expect(200);

    // The thief presents the old token: refused, and the whole session ends.
    let thief = app.device(FIREFOX_LINUX);
    thief.set_bearer(Some(&old));
    thief
        .get("/api/sessions")
        .await
        .expect_error(401, "unauthenticated");
    phone
        .get("/api/me")
        .await
        .expect_error(401, "unauthenticated");

    // A cookie client gets its new token as a cookie.
    let laptop = app.device(CHROME_WINDOWS);
    laptop.login_cookie(&email, PASSWORD).await;
    let old_cookie = laptop.cookie().unwrap();
    let reply = laptop.post_empty("/api/auth/refresh").await;
    reply.expect(200);
    assert!(reply.json.get("token").is_none());
    assert_eq!(reply.set_cookies().len(), 1);
    let new_cookie = laptop.cookie().unwrap();
    assert_ne!(new_cookie, old_cookie);
    laptop.get("/api/me").await.expect(200);
    laptop.set_cookie(Some(&old_cookie));
    laptop
        .post_empty("/api/auth/refresh")
        .await
        .expect_error(401, "unauthenticated");
    laptop.set_cookie(Some(&new_cookie));
    laptop
        .get("/api/me")
        .await
        .expect_error(401, "unauthenticated");
    app.stop().await;
}
