//! The web page in headless Chromium: sign in, see two sessions, revoke the other one, and the
//! other client is refused on its next request.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e_tests::webdriver::ChromeDriver;
use e2e_tests::{Backend, SAFARI_IPHONE, TestApp, unique_email};

const PASSWORD: &str = "browser passphrase";
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_signs_in_lists_two_sessions_and_revokes_the_other_device() {
    let app = TestApp::start(Backend::Sqlite, &[("SESSION_CACHE_TTL_SECS", "300")]).await;
    let email = unique_email("browser");
    // The "other device": a phone app with a bearer token, signed in first.
    let phone = app.device(SAFARI_IPHONE);
    phone.register(&email, PASSWORD).await;
    phone.login_bearer(&email, PASSWORD).await;
    phone.get("/api/me").await.expect(200); // cached

    let driver = ChromeDriver::start().await;
    let profile = std::env::temp_dir().join(format!("e2e-chromium-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let browser = driver.new_session(&profile).await;
    browser.goto(&format!("{}/", app.base)).await;

    let email_input = browser
        .wait_for("#signed-out:not([hidden]) #email", WAIT)
        .await;
    browser.send_keys(&email_input, &email).await;
    let password = browser.wait_for("#password", WAIT).await;
    browser.send_keys(&password, PASSWORD).await;
    let name = browser.wait_for("#device-name", WAIT).await;
    browser.send_keys(&name, "Test browser").await;
    let sign_in = browser.wait_for("#sign-in", WAIT).await;
    browser.click(&sign_in).await;

    browser
        .wait_for("#signed-in:not([hidden]) li.session", WAIT)
        .await;
    let start = Instant::now();
    let sessions = loop {
        let sessions = browser.find_all("#sessions li.session").await;
        if sessions.len() == 2 || start.elapsed() > WAIT {
            break sessions;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        sessions.len(),
        2,
        "the page lists the browser and the phone"
    );
    let mut texts = Vec::new();
    for session in &sessions {
        texts.push(browser.text(session).await);
    }
    let current = browser.wait_for("#sessions li.session.current", WAIT).await;
    let current_text = browser.text(&current).await;
    assert!(current_text.contains("this device"), "{current_text}");
    assert!(current_text.contains("Test browser"), "{current_text}");
    assert!(current_text.contains("127.0.0.1"), "{current_text}");
    assert!(
        texts
            .iter()
            .any(|t| t.contains("Safari on iPhone") && !t.contains("this device")),
        "{texts:?}"
    );
    let screenshots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    browser.screenshot(&screenshots.join("sessions.png")).await;

    let revoke = browser
        .wait_for("#sessions li.session:not(.current) button.revoke", WAIT)
        .await;
    browser.click(&revoke).await;
    let start = Instant::now();
    while browser.find_all("#sessions li.session").await.len() != 1 {
        assert!(
            start.elapsed() < WAIT,
            "the revoked session is still listed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = browser.wait_for("#status.ok", WAIT).await;
    assert!(browser.text(&status).await.contains("signed out"));
    browser
        .screenshot(&screenshots.join("sessions-after-revoke.png"))
        .await;

    // The phone is refused on its very next request, although its session was cached.
    phone
        .get("/api/me")
        .await
        .expect_error(401, "unauthenticated");

    browser.quit().await;
    drop(driver);
    let _ = std::fs::remove_dir_all(&profile);
    app.stop().await;
}
