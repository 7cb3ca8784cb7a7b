//! End-to-end harness: the demo app on a real TCP listener, "devices" that talk to it over real
//! HTTP, captured logs, and a tiny WebDriver client for the browser test.
//!
//! Every scenario runs against SQLite, PostgreSQL, and sessions in Redis (accounts in SQLite)
//! through [`Backend`].

#![warn(missing_docs)]

pub mod webdriver;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use demo_app::{AppConfig, AppHandle, build_app};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;

/// Which database the app runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A fresh SQLite file.
    Sqlite,
    /// A fresh database on the test process's PostgreSQL server.
    Postgres,
    /// Accounts in a fresh SQLite file, sessions in a Redis server of the app's own
    /// (`SESSION_STORE_URL`).
    RedisSessions,
}

impl Backend {
    /// A fresh, empty database of this kind.
    pub fn fresh_database(self) -> String {
        match self {
            Self::Sqlite | Self::RedisSessions => test_support::sqlite_database("demo"),
            Self::Postgres => test_support::postgres_database(),
        }
    }
}

/// The demo app serving on `127.0.0.1:<ephemeral>`.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The database it uses (shared by a second instance in multi-instance tests).
    pub database_url: String,
    /// The Redis server its sessions live on, for [`Backend::RedisSessions`].
    pub redis: Option<Arc<test_support::RedisServer>>,
    handle: Option<AppHandle>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    /// Starts the app on a fresh database of `backend`, with these environment variables (as
    /// `main` would read them) on top of the defaults.
    pub async fn start(backend: Backend, env: &[(&str, &str)]) -> Self {
        let redis =
            (backend == Backend::RedisSessions).then(|| Arc::new(test_support::isolated_redis()));
        Self::start_with(backend.fresh_database(), redis, env).await
    }

    /// Another instance of the same deployment: the same database and session store.
    pub async fn another_instance(&self, env: &[(&str, &str)]) -> Self {
        Self::start_with(self.database_url.clone(), self.redis.clone(), env).await
    }

    /// Starts the app on `database_url`.
    pub async fn start_on(database_url: String, env: &[(&str, &str)]) -> Self {
        Self::start_with(database_url, None, env).await
    }

    async fn start_with(
        database_url: String,
        redis: Option<Arc<test_support::RedisServer>>,
        env: &[(&str, &str)],
    ) -> Self {
        test_support::capture_logs(tracing::Level::INFO);
        let mut vars: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        vars.insert("DATABASE_URL".into(), database_url.clone());
        if let Some(redis) = &redis {
            vars.insert("SESSION_STORE_URL".into(), redis.url());
        }
        let config = AppConfig::from_lookup(|name| vars.get(name).cloned())
            .unwrap_or_else(|e| panic!("test configuration rejected: {e}"));
        let (router, handle) = build_app(config)
            .await
            .unwrap_or_else(|e| panic!("the app did not start on {database_url}: {e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            demo_app::serve(listener, router, async {
                let _ = stopped.await;
            })
            .await
            .expect("server failed");
        });
        Self {
            base: format!("http://{addr}"),
            database_url,
            redis,
            handle: Some(handle),
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// A client with its own `User-Agent` and its own cookie.
    pub fn device(&self, user_agent: &str) -> Device {
        Device::new(&self.base, user_agent)
    }

    /// Stops accepting requests, lets in-flight ones finish and flushes pending touches.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await;
        }
    }
}

/// A desktop Chrome on Windows.
pub const CHROME_WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
     (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
/// Safari on an iPhone.
pub const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) \
     AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
/// Firefox on Ubuntu.
pub const FIREFOX_LINUX: &str =
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";

/// One HTTP answer, body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body parsed as JSON, or `Value::Null` for an empty body.
    pub json: Value,
    /// The raw body.
    pub text: String,
}

impl Reply {
    /// The `error` code of an error body.
    pub fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("<no error field>")
    }

    /// Asserts the status, with the body in the message.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Asserts an error answer: the status, the contract's error code, and a message.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> &Self {
        self.expect(status);
        assert_eq!(self.error(), code, "body: {}", self.text);
        assert!(
            self.json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error without message: {}",
            self.text
        );
        self
    }

    /// All `Set-Cookie` headers.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }
}

/// A client device: a `User-Agent`, and the credential it holds (cookie or bearer token).
pub struct Device {
    base: String,
    client: reqwest::Client,
    cookie: Mutex<Option<String>>,
    bearer: Mutex<Option<String>>,
}

impl Device {
    fn new(base: &str, user_agent: &str) -> Self {
        let client = reqwest::Client::builder()
            .user_agent(user_agent)
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        Self {
            base: base.to_owned(),
            client,
            cookie: Mutex::new(None),
            bearer: Mutex::new(None),
        }
    }

    /// The session cookie value it holds.
    pub fn cookie(&self) -> Option<String> {
        self.cookie.lock().unwrap().clone()
    }

    /// Replaces the session cookie value it sends.
    pub fn set_cookie(&self, value: Option<&str>) {
        *self.cookie.lock().unwrap() = value.map(str::to_owned);
    }

    /// The bearer token it holds.
    pub fn bearer(&self) -> Option<String> {
        self.bearer.lock().unwrap().clone()
    }

    /// Replaces the bearer token it sends.
    pub fn set_bearer(&self, token: Option<&str>) {
        *self.bearer.lock().unwrap() = token.map(str::to_owned);
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None, &[]).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Some(body.to_string()), &[])
            .await
    }

    /// `POST path` without a body.
    pub async fn post_empty(&self, path: &str) -> Reply {
        self.send(Method::POST, path, None, &[]).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None, &[]).await
    }

    /// Any request: a raw body (sent as `application/json` unless `headers` say otherwise) and
    /// extra headers, on top of the device's credential.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let headers: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(name, value)| (*name, value.as_bytes()))
            .collect();
        self.send_bytes(method, path, body, &headers).await
    }

    /// Like [`send`](Self::send), with header values as raw bytes (obs-text such as `\xff`
    /// included, as a misbehaving client or proxy may send).
    pub async fn send_bytes(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        headers: &[(&str, &[u8])],
    ) -> Reply {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(cookie) = self.cookie() {
            request = request.header("cookie", format!("session={cookie}"));
        }
        if let Some(token) = self.bearer() {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("header name");
            let value = HeaderValue::from_bytes(value).expect("header value");
            request = request.header(name, value);
        }
        let response = request.send().await.expect("request failed");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("response body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        let reply = Reply {
            status,
            headers,
            json,
            text,
        };
        for set_cookie in reply.set_cookies() {
            if let Some(rest) = set_cookie.strip_prefix("session=") {
                let value = rest.split(';').next().unwrap_or_default();
                self.set_cookie((!value.is_empty()).then_some(value));
            }
        }
        reply
    }

    /// Registers an account (expects 201) and returns its user id.
    pub async fn register(&self, email: &str, password: &str) -> String {
        let reply = self
            .post(
                "/api/auth/register",
                serde_json::json!({"email": email, "password": password}),
            )
            .await;
        reply.expect(201);
        reply.json["user_id"].as_str().expect("user_id").to_owned()
    }

    /// Signs in with the cookie transport (expects 200); returns the SessionView.
    pub async fn login_cookie(&self, email: &str, password: &str) -> Value {
        let reply = self
            .post(
                "/api/auth/login",
                serde_json::json!({"email": email, "password": password}),
            )
            .await;
        reply.expect(200);
        assert!(self.cookie().is_some(), "no session cookie was set");
        reply.json["session"].clone()
    }

    /// Signs in with the bearer transport (expects 200) and keeps the token; returns the
    /// SessionView.
    pub async fn login_bearer(&self, email: &str, password: &str) -> Value {
        let reply = self
            .post(
                "/api/auth/login",
                serde_json::json!({"email": email, "password": password, "transport": "bearer"}),
            )
            .await;
        reply.expect(200);
        let token = reply.json["token"].as_str().expect("token").to_owned();
        self.set_bearer(Some(&token));
        reply.json["session"].clone()
    }
}

/// A unique email address for one test.
pub fn unique_email(tag: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{tag}-{}-{n}@example.com", std::process::id())
}

pub use test_support::eventually;

/// Everything logged so far by this test process, at INFO and above (captured from the first
/// [`TestApp`] on), so tests can read the reset-token line and scan for secrets.
pub use test_support::captured_logs;

/// The reset token that the app logged for `email` (the demo's stand-in for the email).
pub async fn reset_token_from_logs(email: &str) -> String {
    let prefix = format!("password reset token for {email}: ");
    eventually(Duration::from_secs(5), "the reset token log line", || {
        let logs = captured_logs();
        let token = logs.lines().rev().find_map(|line| {
            line.split_once(&prefix)
                .map(|(_, rest)| rest.chars().take(43).collect::<String>())
        });
        async move { token }
    })
    .await
}

/// Runs each scenario (an `async fn(Backend)`) against every backend, like tower-sessions'
/// `route_tests!`: the tests `<scenario>::sqlite`, `::postgres` and `::redis_sessions` (see
/// [`test_support::for_each_backend!`]).
#[macro_export]
macro_rules! route_tests {
    ($($name:ident),* $(,)?) => {
        $crate::__test_support::for_each_backend! {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            backends {
                sqlite => $crate::Backend::Sqlite,
                postgres => $crate::Backend::Postgres,
                redis_sessions => $crate::Backend::RedisSessions,
            }
            scenarios { $($name),* }
        }
    };
}

#[doc(hidden)]
pub use test_support as __test_support;
