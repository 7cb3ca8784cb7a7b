//! Throwaway `redis-server` processes on loopback ports.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use std::{env, fs, thread};

use crate::process::unique_temp_dir;
use crate::process::{READY_TIMEOUT, catch_panic_message, free_port, lock, log_tail};
use crate::watchdog::{sh_quote, spawn_watchdog};

/// Name of the environment variable that names the `redis-server` binary to run.
pub const REDIS_BIN_ENV: &str = "SESSION_LAYER_REDIS_SERVER";

/// The Redis server shared by this test process, started on first use and stopped (by a
/// watchdog) when the process ends.
///
/// Tests share it by giving each store a key prefix of its own ([`redis_prefix`]); a test that
/// stops the server must use [`dedicated_redis`] instead.
///
/// # Panics
///
/// When `redis-server` cannot be found or started; the message says how to fix it.
pub fn redis_server() -> &'static RedisServer {
    static SHARED: OnceLock<Result<RedisServer, String>> = OnceLock::new();
    let shared =
        SHARED.get_or_init(|| catch_panic_message(|| RedisServer::start_new(Durability::None)));
    match shared {
        Ok(server) => server,
        Err(message) => panic!("{message}"),
    }
}

/// A key prefix no other call of this process returns, so that tests sharing
/// [`redis_server`] never see each other's keys.
pub fn redis_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "t{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Starts a Redis server of its own, without persistence, for a test (or an app under test)
/// that must not share keys or pub/sub channels with any other.
///
/// # Panics
///
/// When `redis-server` cannot be found or started.
pub fn isolated_redis() -> RedisServer {
    RedisServer::start_new(Durability::None)
}

/// Starts a Redis server of its own that a test may kill ([`RedisServer::stop`], `SIGKILL`) and
/// start again on the same port. Every write is on disk before it is acknowledged
/// (`appendfsync always`), so a restart keeps every write that a client saw succeed.
///
/// # Panics
///
/// When `redis-server` cannot be found or started.
pub fn dedicated_redis() -> RedisServer {
    RedisServer::start_new(Durability::EveryWrite)
}

#[derive(Debug, Clone, Copy)]
enum Durability {
    /// Nothing on disk: such a server is never restarted.
    None,
    /// Append-only file, fsynced on every write.
    EveryWrite,
}

/// A `redis-server` process on `127.0.0.1`, without a password. Dropping it kills the server
/// and deletes its directory.
#[derive(Debug)]
pub struct RedisServer {
    bin: PathBuf,
    root: PathBuf,
    port: u16,
    durability: Durability,
    child: Mutex<Option<Child>>,
    watchdog: Mutex<Option<Child>>,
}

impl RedisServer {
    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server with `SIGKILL` (a crash, not a clean shutdown); open connections break
    /// and new ones are refused until [`start`](Self::start). Does nothing if it is stopped.
    pub fn stop(&self) {
        if let Some(mut child) = lock(&self.child).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (replaying its append-only file)
    /// and waits until it answers `PING`. Does nothing if it is running.
    ///
    /// # Panics
    ///
    /// When it does not answer within 30 s.
    pub fn start(&self) {
        let mut child = lock(&self.child);
        if child.is_some() {
            return;
        }
        match self.spawn() {
            Ok(started) => *child = Some(started),
            Err(error) => panic!("{}", self.failure("could not restart redis-server", &error)),
        }
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        lock(&self.child).is_some()
    }

    fn start_new(durability: Durability) -> RedisServer {
        let bin = find_redis_server();
        let root = unique_temp_dir("session-layer-redis");
        let mut server = RedisServer {
            bin,
            root,
            port: 0,
            durability,
            child: Mutex::new(None),
            watchdog: Mutex::new(None),
        };
        server.start_watchdog();
        let mut last_error = String::new();
        // A free port may be taken by someone else before the server binds it: retry.
        for _ in 0..5 {
            server.port = free_port();
            match server.spawn() {
                Ok(child) => {
                    *lock(&server.child) = Some(child);
                    return server;
                }
                Err(error) => last_error = error,
            }
        }
        panic!(
            "{}",
            server.failure("could not start redis-server", &last_error)
        );
    }

    fn log(&self) -> PathBuf {
        self.root.join("redis.log")
    }

    fn spawn(&self) -> Result<Child, String> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--daemonize", "no", "--save", ""])
            .arg("--dir")
            .arg(&self.root)
            .arg("--pidfile")
            .arg(self.root.join("redis.pid"))
            .arg("--logfile")
            .arg(self.log());
        match self.durability {
            Durability::None => cmd.args(["--appendonly", "no"]),
            Durability::EveryWrite => cmd.args(["--appendonly", "yes", "--appendfsync", "always"]),
        };
        let mut child = cmd
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if ping(self.port) {
                return Ok(child);
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("redis-server exited ({status})"));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server did not answer PING on 127.0.0.1:{} within {} s",
                    self.port,
                    READY_TIMEOUT.as_secs()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the process that kills the server and deletes its directory once this test
    /// process has ended.
    fn start_watchdog(&self) {
        let pidfile = sh_quote(self.root.join("redis.pid").as_os_str());
        let script = format!(
            "cd / && [ -f {pidfile} ] && kill -9 \"$(cat {pidfile})\" 2>/dev/null; rm -rf {root}",
            root = sh_quote(self.root.as_os_str()),
        );
        match spawn_watchdog(&script) {
            Ok(child) => *lock(&self.watchdog) = Some(child),
            Err(e) => {
                let _ = fs::remove_dir_all(&self.root);
                panic!("cannot start the watchdog process that cleans up redis-server (sh): {e}");
            }
        }
    }

    fn failure(&self, what: &str, error: &str) -> String {
        format!(
            "{what} ({}, directory {}, port {}).\n{error}\n--- server log ---\n{}\nHint: the \
             Redis tests need a real server: install it (Debian: apt-get install redis-server), \
             or set {REDIS_BIN_ENV}=/path/to/redis-server.",
            self.bin.display(),
            self.root.display(),
            self.port,
            log_tail(&self.log()),
        )
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.root);
        if let Some(mut watchdog) = lock(&self.watchdog).take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// Whether a server on `port` answers `PING`.
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

fn find_redis_server() -> PathBuf {
    if let Some(bin) = env::var_os(REDIS_BIN_ENV) {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return bin;
        }
        panic!("{REDIS_BIN_ENV}={} is not a file", bin.display());
    }
    env::var_os("PATH")
        .iter()
        .flat_map(env::split_paths)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("redis-server"))
        .find(|path| Path::is_file(path))
        .unwrap_or_else(|| {
            panic!(
                "redis-server not found in PATH, /usr/bin or /usr/local/bin. The Redis tests \
                 need a real server: install it (Debian: apt-get install redis-server), or set \
                 {REDIS_BIN_ENV}=/path/to/redis-server."
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedicated_server_keeps_port_and_data_across_a_kill_and_restart() {
        let server = dedicated_redis();
        let command = |args: &[&str]| {
            let out = Command::new("redis-cli")
                .args(["-p", &server.port().to_string()])
                .args(args)
                .output()
                .expect("redis-cli");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        assert_eq!(command(&["SET", "kept", "yes"]), "OK");
        server.stop();
        assert!(!ping(server.port()));
        server.start();
        assert_eq!(command(&["GET", "kept"]), "yes");
    }

    #[test]
    fn prefixes_are_unique() {
        assert_ne!(redis_prefix(), redis_prefix());
        assert!(ping(redis_server().port()));
    }
}
