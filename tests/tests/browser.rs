//! The web page in headless Chromium: sign in, see two sessions, revoke the other one after
//! confirming (the other client is refused on its next request), see a new sign-in appear by
//! itself, and be told when this device is signed out from elsewhere.

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

    // Revoking asks first; "Cancel" leaves the session alone.
    let revoke = browser
        .wait_for("#sessions li.session:not(.current) button.revoke", WAIT)
        .await;
    browser.click(&revoke).await;
    let question = browser.wait_for_alert(WAIT).await;
    assert!(
        question.contains("Sign out") && question.contains("Safari on iPhone"),
        "{question}"
    );
    browser.dismiss_alert().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(browser.find_all("#sessions li.session").await.len(), 2);
    phone.get("/api/me").await.expect(200);
    // "OK" revokes it.
    let revoke = browser
        .wait_for("#sessions li.session:not(.current) button.revoke", WAIT)
        .await;
    browser.click(&revoke).await;
    browser.wait_for_alert(WAIT).await;
    browser.accept_alert().await;
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

    // A new sign-in elsewhere shows up in the list by itself (no click, no reload).
    let tablet = app.device(SAFARI_IPHONE);
    tablet.login_bearer(&email, PASSWORD).await;
    let start = Instant::now();
    while browser.find_all("#sessions li.session").await.len() != 2 {
        assert!(
            start.elapsed() < WAIT,
            "the new session did not appear by itself"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // That device signs this one out: the page says so and offers the sign-in form.
    let listed = tablet.get("/api/sessions").await;
    let browser_session = listed.json["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["device_name"] == "Test browser")
        .expect("the browser's session is listed")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    tablet
        .delete(&format!("/api/sessions/{browser_session}"))
        .await
        .expect(204);
    let notice = browser
        .wait_for(
            "#signed-out:not([hidden]) #signed-out-notice:not([hidden])",
            WAIT,
        )
        .await;
    let notice_text = browser.text(&notice).await;
    assert!(
        notice_text.contains("This device was signed out"),
        "{notice_text}"
    );
    assert!(browser.find("#signed-in:not([hidden])").await.is_none());
    browser
        .wait_for("#signed-out:not([hidden]) #email", WAIT)
        .await;
    browser
        .screenshot(&screenshots.join("signed-out-elsewhere.png"))
        .await;

    browser.quit().await;
    drop(driver);
    let _ = std::fs::remove_dir_all(&profile);
    app.stop().await;
}
