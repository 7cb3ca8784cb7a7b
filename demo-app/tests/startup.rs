//! The binary itself: default SQLite file, graceful shutdown on SIGTERM, clear start-up errors.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn fresh_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("demo-app-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

#[test]
fn starts_on_a_fresh_sqlite_file_and_stops_gracefully_on_sigterm() {
    let dir = fresh_dir("start");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_demo-app"))
        .current_dir(&dir)
        .env_remove("DATABASE_URL")
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let start = Instant::now();
    let response = loop {
        if let Some(response) = get(port, "/api/me") {
            break response;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the server did not start listening");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    assert!(
        response.contains("\"error\":\"unauthenticated\""),
        "{response}"
    );
    let page = get(port, "/").unwrap();
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("Your sessions"));
    assert!(
        dir.join("demo.db").exists(),
        "the default SQLite file is created"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}; logs:\n{logs}",
        output.status
    );
    assert!(
        logs.contains(&format!("listening on http://127.0.0.1:{port}")),
        "{logs}"
    );
    // One line per request: method, path, status, latency.
    assert!(
        logs.lines().any(
            |line| line.contains(r#"request{method=GET path="/api/me"}"#)
                && line.contains("status=401")
                && line.contains("latency_ms=")
        ),
        "{logs}"
    );
    assert!(logs.contains("stopped"), "{logs}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_environment_value_stops_the_start_with_a_clear_message() {
    let dir = fresh_dir("bad-env");
    for (name, value) in [
        ("SESSION_TTL_SECS", "a week"),
        ("TRUSTED_PROXIES", "10.0.0.0/40"),
        ("COOKIE_SECURE", "maybe"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_demo-app"))
            .current_dir(&dir)
            .env(name, value)
            .env("BIND_ADDR", "127.0.0.1:0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}={value} was accepted");
        assert!(stderr.contains(name), "the message names {name}: {stderr}");
    }
    assert!(
        !dir.join("demo.db").exists(),
        "nothing is created on a bad start"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
