//! Malformed input, cross-site (CSRF) cookie requests, and what the logs never hold.

use e2e_tests::{
    Backend, CHROME_WINDOWS, FIREFOX_LINUX, SAFARI_IPHONE, TestApp, captured_logs, unique_email,
};
use reqwest::Method;
use serde_json::json;

use super::{PASSWORD, assert_client_error_json};

e2e_tests::route_tests!(
    malformed_bodies_cookies_and_headers_get_4xx_json_never_500,
    cross_site_cookie_request_is_refused_but_same_origin_and_curl_pass,
    logs_never_contain_tokens_or_passwords,
);

async fn malformed_bodies_cookies_and_headers_get_4xx_json_never_500(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let email = unique_email("fuzz");
    let d = app.device(CHROME_WINDOWS);
    d.register(&email, PASSWORD).await;
    let long = "x".repeat(10_000);
    let bodies: [&str; 10] = [
        "",
        "{",
        "null",
        "[]",
        "\"text\"",
        "{\"email\": 1, \"password\": 2}",
        "{\"email\": \"a@b.co\", \"password\": \"x\", \"transport\": \"carrier-pigeon\"}",
        "{\"email\": \"a@b.co\", \"password\": null}",
        "\u{0}\u{1}",
        "{\"email\": \"\\ud800\", \"password\": \"12345678\"}",
    ];
    for path in [
        "/api/auth/register",
        "/api/auth/login",
        "/api/auth/password-reset/request",
        "/api/auth/password-reset/confirm",
    ] {
        for body in bodies {
            let reply = d.send(Method::POST, path, Some(body.to_owned()), &[]).await;
            // `{"email": "a@b.co", …}` is a well-formed reset request (extra fields are ignored).
            if path.ends_with("/request") && body.contains("\"a@b.co\"") {
                reply.expect(202);
                continue;
            }
            assert_client_error_json(&reply, &format!("POST {path} {body:?}"));
        }
        let reply = d
            .send(
                Method::POST,
                path,
                Some("{}".into()),
                &[("content-type", "text/plain")],
            )
            .await;
        assert_client_error_json(&reply, &format!("POST {path} text/plain"));
    }
    let cookies = [
        "session=".to_owned(),
        "session=short".to_owned(),
        format!("session={}", "A".repeat(43)),
        format!("session={}", "=".repeat(43)),
        format!("session={long}"),
        "session=a; session=b; session".to_owned(),
        ";;;==;".to_owned(),
        "session=%00%FF".to_owned(),
    ];
    let authorizations = [
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        "Bearer  spaced out".to_owned(),
        format!("Bearer {long}"),
        format!("bearer {}", "A".repeat(43)),
        "Token abc".to_owned(),
        "Basic".to_owned(),
    ];
    let anonymous = app.device(FIREFOX_LINUX);
    for cookie in &cookies {
        for path in ["/api/me", "/api/sessions"] {
            let reply = anonymous
                .send(Method::GET, path, None, &[("cookie", cookie)])
                .await;
            assert_client_error_json(&reply, &format!("GET {path} cookie {cookie:.40}"));
        }
    }
    for authorization in &authorizations {
        let reply = anonymous
            .send(
                Method::GET,
                "/api/me",
                None,
                &[("authorization", authorization)],
            )
            .await;
        assert_client_error_json(&reply, &format!("authorization {authorization:.40}"));
    }
    let raw = anonymous
        .send(
            Method::GET,
            "/api/me",
            None,
            &[("cookie", "session=\u{e9}t\u{e9}")],
        )
        .await;
    assert_client_error_json(&raw, "non-ASCII cookie");
    // Unknown routes and methods answer JSON too.
    assert_client_error_json(&anonymous.get("/api/nothing-here").await, "unknown route");
    assert_client_error_json(
        &anonymous.send(Method::PUT, "/api/me", None, &[]).await,
        "wrong method",
    );
    d.login_cookie(&email, PASSWORD).await;
    for path in [
        "/api/sessions/%ZZ",
        "/api/sessions/..%2F..",
        &format!("/api/sessions/{long}"),
    ] {
        assert_client_error_json(&d.delete(path).await, path);
    }
    for body in bodies {
        let reply = d
            .send(
                Method::POST,
                "/api/auth/password",
                Some(body.to_owned()),
                &[],
            )
            .await;
        assert_client_error_json(&reply, &format!("password {body:?}"));
    }
    d.get("/api/me").await.expect(200);
    app.stop().await;
}

async fn cross_site_cookie_request_is_refused_but_same_origin_and_curl_pass(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let email = unique_email("csrf");
    let victim = app.device(CHROME_WINDOWS);
    victim.register(&email, PASSWORD).await;
    victim.login_cookie(&email, PASSWORD).await;
    let other = app.device(SAFARI_IPHONE);
    other.login_bearer(&email, PASSWORD).await;

    for headers in [
        [
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
        [("origin", "https://evil.example"), ("x-nothing", "")],
        [("sec-fetch-site", "cross-site"), ("x-nothing", "")],
    ] {
        let reply = victim
            .send(Method::POST, "/api/sessions/revoke-others", None, &headers)
            .await;
        reply.expect_error(403, "forbidden_origin");
    }
    other.get("/api/me").await.expect(200);
    let host = app.base.trim_start_matches("http://").to_owned();
    let origin = app.base.clone();
    let same = victim
        .send(
            Method::POST,
            "/api/sessions/revoke-others",
            None,
            &[
                ("origin", &origin),
                ("sec-fetch-site", "same-origin"),
                ("host", &host),
            ],
        )
        .await;
    same.expect(200);
    assert_eq!(same.json["revoked"], 1);
    app.stop().await;
}

async fn logs_never_contain_tokens_or_passwords(backend: Backend) {
    let app = TestApp::start(backend, &[]).await;
    let email = unique_email("secrets");
    let password = "unmistakable-secret-passphrase";
    let laptop = app.device(CHROME_WINDOWS);
    laptop.register(&email, password).await;
    laptop.login_cookie(&email, password).await;
    let phone = app.device(SAFARI_IPHONE);
    phone.login_bearer(&email, password).await;
    let first = phone.bearer().unwrap();
    let refreshed = phone.post_empty("/api/auth/refresh").await;
    let second = refreshed.json["token"].as_str().unwrap().to_owned();
    phone.set_bearer(Some(&second));
    phone.get("/api/sessions").await.expect(200);
    laptop
        .post(
            "/api/auth/password",
            json!({"current_password": password, "new_password": "another-secret-passphrase"}),
        )
        .await
        .expect(204);
    let cookie = laptop.cookie().unwrap();
    laptop.post_empty("/api/auth/logout").await.expect(204);
    app.stop().await;
    let logs = captured_logs();
    assert!(
        logs.lines().any(
            |line| line.contains(r#"request{method=POST path="/api/auth/login"}"#)
                && line.contains("status=200")
                && line.contains("latency_ms=")
        ),
        "one line per request: method, path, status, latency"
    );
    for secret in [
        password,
        "another-secret-passphrase",
        &first,
        &second,
        &cookie,
    ] {
        assert!(!logs.contains(secret), "a secret was logged");
    }
}
