//! A tiny W3C WebDriver client over reqwest, for headless Chromium through `chromedriver`.
//! Just what the browser test needs: navigate, find, type, click, read text, answer prompts,
//! screenshot.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// The W3C key for a web element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// `chromedriver` running on a free port; killed on drop.
pub struct ChromeDriver {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl ChromeDriver {
    /// Starts `/usr/bin/chromedriver` (or `$CHROMEDRIVER`) and waits until it answers.
    ///
    /// # Panics
    ///
    /// With installation instructions when Chromium or chromedriver is missing: the browser
    /// test must fail, never skip.
    pub async fn start() -> Self {
        let driver = std::env::var_os("CHROMEDRIVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"));
        let browser = chromium_binary();
        assert!(
            driver.exists() && browser.exists(),
            "the browser test needs Chromium and chromedriver ({} and {}): install them with \
             `apt-get install -y chromium chromium-driver`, or set CHROMIUM / CHROMEDRIVER",
            browser.display(),
            driver.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let this = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("HTTP client"),
        };
        let start = Instant::now();
        loop {
            let status = this.http.get(format!("{}/status", this.base)).send().await;
            if status.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        this
    }

    /// Opens a headless browser session with a fresh profile in `profile_dir`.
    pub async fn new_session(&self, profile_dir: &Path) -> Browser {
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1000,900".to_owned(),
            format!("--user-data-dir={}", profile_dir.display()),
        ];
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium_binary(),
                        "args": args,
                    }
                }
            }
        });
        let reply = call(
            &self.http,
            reqwest::Method::POST,
            &format!("{}/session", self.base),
            Some(capabilities),
        )
        .await;
        let id = reply["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id from chromedriver: {reply}"))
            .to_owned();
        Browser {
            http: self.http.clone(),
            base: format!("{}/session/{id}", self.base),
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium_binary() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// One browser session (one window).
pub struct Browser {
    http: reqwest::Client,
    base: String,
}

/// A found element.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        call(&self.http, method, &format!("{}{path}", self.base), body).await
    }

    /// Navigates to `url` and waits for the page load.
    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// The first element matching `css`, if any.
    pub async fn find(&self, css: &str) -> Option<Element> {
        self.try_find(css).await.ok()
    }

    async fn try_find(&self, css: &str) -> Result<Element, String> {
        let reply = try_call(
            &self.http,
            reqwest::Method::POST,
            &format!("{}/element", self.base),
            Some(json!({"using": "css selector", "value": css})),
        )
        .await?;
        reply[ELEMENT_KEY]
            .as_str()
            .map(|id| Element(id.to_owned()))
            .ok_or_else(|| format!("unexpected answer {reply}"))
    }

    /// Every element matching `css`.
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        let reply = self
            .cmd(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        reply
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|e| e[ELEMENT_KEY].as_str().map(|id| Element(id.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits (up to `timeout`) for an element matching `css`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Element {
        let start = Instant::now();
        loop {
            let error = match self.try_find(css).await {
                Ok(element) => return element,
                Err(error) => error,
            };
            if start.elapsed() > timeout {
                let source = self.cmd(reqwest::Method::GET, "/source", None).await;
                let source = source.as_str().unwrap_or_default();
                let body = source.find("<body").map_or(source, |i| &source[i..]);
                panic!(
                    "no element {css:?} after {timeout:?} ({error:.300}); the page is:\n{body:.2500}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` into the element.
    pub async fn send_keys(&self, element: &Element, text: &str) {
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{}/value", element.0),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Clicks the element.
    pub async fn click(&self, element: &Element) {
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{}/click", element.0),
            Some(json!({})),
        )
        .await;
    }

    /// The element's visible text.
    pub async fn text(&self, element: &Element) -> String {
        self.cmd(
            reqwest::Method::GET,
            &format!("/element/{}/text", element.0),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// An attribute of the element.
    pub async fn attribute(&self, element: &Element, name: &str) -> Option<String> {
        self.cmd(
            reqwest::Method::GET,
            &format!("/element/{}/attribute/{name}", element.0),
            None,
        )
        .await
        .as_str()
        .map(str::to_owned)
    }

    /// Saves a PNG screenshot of the window to `path` (creating its directory).
    pub async fn screenshot(&self, path: &Path) {
        let encoded = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("screenshot data"))
            .expect("screenshot base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot directory");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Runs `script` (a function body) in the page and returns its result.
    pub async fn execute(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Waits (up to `timeout`) for a user prompt (`alert`, `confirm`) and returns its text.
    pub async fn wait_for_alert(&self, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            match try_call(
                &self.http,
                reqwest::Method::GET,
                &format!("{}/alert/text", self.base),
                None,
            )
            .await
            {
                Ok(text) => return text.as_str().unwrap_or_default().to_owned(),
                Err(error) => assert!(
                    start.elapsed() < timeout,
                    "no prompt after {timeout:?}: {error:.300}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Accepts the open prompt ("OK").
    pub async fn accept_alert(&self) {
        self.cmd(reqwest::Method::POST, "/alert/accept", Some(json!({})))
            .await;
    }

    /// Dismisses the open prompt ("Cancel").
    pub async fn dismiss_alert(&self) {
        self.cmd(reqwest::Method::POST, "/alert/dismiss", Some(json!({})))
            .await;
    }

    /// Ends the browser session.
    pub async fn quit(self) {
        let _ = try_call(&self.http, reqwest::Method::DELETE, &self.base, None).await;
    }
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Value {
    try_call(http, method.clone(), url, body)
        .await
        .unwrap_or_else(|e| panic!("WebDriver {method} {url} failed: {e}"))
}

/// A WebDriver command; `Err` with the driver's error for a non-2xx answer.
async fn try_call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let text = response.text().await.map_err(|e| e.to_string())?;
    let value: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    if status.is_success() {
        Ok(value["value"].clone())
    } else {
        Err(format!("{status}: {}", value["value"]))
    }
}
