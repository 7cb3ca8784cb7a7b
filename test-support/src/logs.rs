//! One log capture per test process: a global `tracing` subscriber that writes every event, as
//! plain text (no colours), into a buffer that tests read back, for example to find a line the
//! code under test logged, or to check that no secret was ever logged.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use tracing::Level;

use crate::process::lock;

/// The captured text, and the level it was captured at.
struct Capture {
    level: Level,
    text: Mutex<Vec<u8>>,
}

static CAPTURE: OnceLock<Capture> = OnceLock::new();

/// Captures, from now on, every event of every crate at `level` and above (the global
/// subscriber of this process, installed on the first call; later calls do nothing).
///
/// Call it at the start of every test that reads [`captured_logs`]: tests run in any order.
///
/// # Panics
///
/// When a later call asks for another level than the first (each test binary captures at one
/// level), or when another global subscriber was installed first.
pub fn capture_logs(level: Level) {
    let capture = CAPTURE.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(|| Writer)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("another global tracing subscriber is installed: cannot capture logs");
        Capture {
            level,
            text: Mutex::new(Vec::new()),
        }
    });
    assert_eq!(
        capture.level, level,
        "the logs of this process are captured at {}, not {level}",
        capture.level
    );
}

/// Everything logged since [`capture_logs`] (empty if it was never called).
pub fn captured_logs() -> String {
    CAPTURE.get().map_or_else(String::new, |capture| {
        String::from_utf8_lossy(&lock(&capture.text)).into_owned()
    })
}

/// The captured lines that contain `needle`.
pub fn captured_lines_with(needle: &str) -> Vec<String> {
    captured_logs()
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Appends to the capture buffer.
struct Writer;

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(capture) = CAPTURE.get() {
            lock(&capture.text).extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_events_at_the_level_and_above() {
        capture_logs(Level::INFO);
        capture_logs(Level::INFO);
        tracing::info!(target: "anywhere", "kept 4711");
        tracing::debug!("dropped 4711");
        let lines = captured_lines_with("4711");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("INFO anywhere: kept 4711"), "{lines:?}");
        assert!(std::panic::catch_unwind(|| capture_logs(Level::TRACE)).is_err());
    }
}
