//! Throwaway SQLite database files in a temporary directory.

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::process::unique_temp_dir;
use crate::url::url_encode_path;
use crate::watchdog::{sh_quote, spawn_watchdog};

/// URL of a fresh SQLite database file, `sqlite://<fresh temp dir>/<name>.db?mode=rwc`.
///
/// Every call creates a new directory (the file itself is created by the first connection,
/// `mode=rwc`). The directories are deleted when the test process exits.
///
/// # Panics
///
/// When the temporary directory cannot be created.
pub fn sqlite_database(name: &str) -> String {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let root = ROOT.get_or_init(|| {
        let root = unique_temp_dir("session-layer-sqlite");
        // Best effort: without the watchdog the directory stays in the temp dir.
        let script = format!("rm -rf {}", sh_quote(root.as_os_str()));
        let _ = spawn_watchdog(&script);
        root
    });
    let dir = root.join(NEXT.fetch_add(1, Ordering::Relaxed).to_string());
    fs::create_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot create SQLite test directory {}: {e}", dir.display()));
    let path = dir.join(format!("{name}.db"));
    format!(
        "sqlite://{}?mode=rwc",
        url_encode_path(&path.to_string_lossy())
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn sqlite_databases_are_unique_fresh_files() {
        let a = sqlite_database("sessions");
        let b = sqlite_database("sessions");
        assert_ne!(a, b);
        for url in [&a, &b] {
            let path = url
                .strip_prefix("sqlite://")
                .and_then(|rest| rest.strip_suffix("?mode=rwc"))
                .unwrap_or_else(|| panic!("unexpected URL {url}"));
            assert!(path.ends_with("/sessions.db"), "{url}");
            let path = Path::new(path);
            assert!(path.is_absolute(), "{url}");
            assert!(path.parent().is_some_and(Path::is_dir), "{url}");
            assert!(!path.exists(), "{url}");
        }
    }
}
