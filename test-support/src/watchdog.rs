//! The watchdog: a small `sh` process that waits for the test process to end, however it ends
//! (panic, Ctrl-C, `kill -9`), and then cleans up after it: stops its servers and deletes their
//! directories.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};

/// Spawns `sh -c '<wait for this process to end>; <script>'` in its own process group, so that
/// a Ctrl-C or a timeout that kills the test's process group does not kill it too.
pub(crate) fn spawn_watchdog(script: &str) -> std::io::Result<Child> {
    let full = format!(
        "trap '' HUP INT TERM; while kill -0 {pid} 2>/dev/null; do sleep 1; done; {script}",
        pid = std::process::id()
    );
    Command::new("/bin/sh")
        .args(["-c", &full])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
}

/// Single-quotes a word for `sh`.
pub(crate) fn sh_quote(word: &OsStr) -> String {
    format!("'{}'", word.to_string_lossy().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sh_quote_quotes_one_word() {
        assert_eq!(sh_quote(OsStr::new("it's")), r"'it'\''s'");
    }
}
