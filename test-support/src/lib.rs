//! Test tooling for session-layer: throwaway databases for tests.
//!
//! - [`postgres_database`] returns the URL of a fresh, empty database on a real PostgreSQL
//!   server shared by the whole test process (started on first use, stopped when the process
//!   exits, even if it panics or is killed).
//! - [`dedicated_postgres`] starts a separate server that a test may stop and start to simulate
//!   a database outage without disturbing other tests.
//! - [`redis_server`] is a real `redis-server` shared by the whole test process (tests keep
//!   apart by key prefix, [`redis_prefix`]); [`dedicated_redis`] starts one that a test may kill
//!   and restart.
//! - [`sqlite_database`] returns the URL of a fresh SQLite database file in a temporary directory.
//!
//! # Where PostgreSQL comes from
//!
//! If the environment variable `SESSION_LAYER_TEST_PG_URL` is set to a `postgres://` URL of a
//! server whose user may `CREATE DATABASE`, that server is used for [`postgres_database`] (only
//! `psql` is needed locally then). Otherwise the server binaries are looked up in
//! `SESSION_LAYER_PG_BIN` (a directory), `/usr/lib/postgresql/15/bin`, any other
//! `/usr/lib/postgresql/*/bin` and `PATH`, and a server is created with `initdb` in a temporary
//! directory. When the tests run as root, the server runs as the `postgres` OS user (PostgreSQL
//! refuses to run as root).
//!
//! A test that needs PostgreSQL fails with an explanation when none is available: it never
//! silently skips.

#![warn(missing_docs)]

mod redis;
pub use redis::{
    REDIS_BIN_ENV, RedisServer, dedicated_redis, isolated_redis, redis_prefix, redis_server,
};

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use std::{env, fs, thread};

/// Name of the environment variable that points the tests at an existing PostgreSQL server.
pub const PG_URL_ENV: &str = "SESSION_LAYER_TEST_PG_URL";

/// Name of the environment variable that names the directory holding `initdb`, `pg_ctl`, …
pub const PG_BIN_ENV: &str = "SESSION_LAYER_PG_BIN";

/// The PostgreSQL superuser of servers started by this crate (trust authentication).
const SUPERUSER: &str = "postgres";

/// The OS user that runs the server when the tests run as root.
const OS_USER: &str = "postgres";

/// How long to wait for a server to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Connection URL of a fresh, empty database on a PostgreSQL server shared by this test process.
///
/// The server is started on the first call (`initdb` into a temporary directory, a free loopback
/// port, trust authentication, `fsync` off) and stopped automatically when the test process
/// exits, even if it panics or is killed: a small watchdog process waits for this process to end,
/// then stops the server and deletes its directory. If `SESSION_LAYER_TEST_PG_URL` is set, that
/// server is used instead and nothing is started (the databases created there are not dropped).
///
/// Every call creates a new, uniquely named database and returns its URL, for example
/// `postgres://postgres@127.0.0.1:40123/test_3`. Safe to call from many tests in parallel.
///
/// # Panics
///
/// When PostgreSQL cannot be started or the database cannot be created; the message says what
/// is missing and how to fix it.
pub fn postgres_database() -> String {
    postgres_server().create_database()
}

/// The PostgreSQL server shared by this test process (the one behind [`postgres_database`]),
/// started on first use.
///
/// Stopping it breaks every other test of the process that uses [`postgres_database`]: a test
/// that simulates an outage should use [`dedicated_postgres`] instead.
///
/// # Panics
///
/// When the server cannot be started (every call panics with the same explanation).
pub fn postgres_server() -> &'static PgServer {
    static SHARED: OnceLock<Result<PgServer, String>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        let external = env::var(PG_URL_ENV)
            .ok()
            .filter(|url| !url.trim().is_empty());
        match external {
            Some(url) => PgServer::external(url.trim()),
            None => catch_panic_message(PgServer::start_local),
        }
    });
    match shared {
        Ok(server) => server,
        Err(message) => panic!("{message}"),
    }
}

/// Starts a PostgreSQL server of its own (own data directory and port), for tests that stop and
/// start the server to simulate an outage.
///
/// The server is stopped and its directory deleted when the returned value is dropped, or by a
/// watchdog when the test process ends. [`PgServer::stop`] and [`PgServer::start`] keep the
/// port and the data. This always starts a local server, even when `SESSION_LAYER_TEST_PG_URL`
/// is set.
///
/// # Panics
///
/// When the server cannot be started; the message says what is missing and how to fix it.
pub fn dedicated_postgres() -> PgServer {
    PgServer::start_local()
}

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

/// A PostgreSQL server used by tests: either one this crate started (a local server) or the
/// external one named by `SESSION_LAYER_TEST_PG_URL`.
///
/// A local server is reachable on `127.0.0.1` as the superuser `postgres` with trust
/// authentication. Dropping a local `PgServer` stops the server and deletes its files.
#[derive(Debug)]
pub struct PgServer {
    kind: Kind,
    next_db: AtomicU64,
}

#[derive(Debug)]
enum Kind {
    Local(Local),
    External { admin_url: String, nonce: String },
}

#[derive(Debug)]
struct Local {
    bin: PathBuf,
    root: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    run_as: RunAs,
    running: Mutex<bool>,
    watchdog: Mutex<Option<Child>>,
    /// Major version of the server, from `PG_VERSION` (0 if unknown).
    major_version: u32,
}

impl PgServer {
    /// Stops the server (`pg_ctl stop -m fast`): open connections are closed and new ones are
    /// refused until [`PgServer::start`]. Does nothing if it is already stopped.
    ///
    /// # Panics
    ///
    /// When the server does not stop, or for the external server of `SESSION_LAYER_TEST_PG_URL`,
    /// which this crate does not control.
    pub fn stop(&self) {
        let local = self.local("stop");
        let mut running = lock(&local.running);
        if !*running {
            return;
        }
        local.pg_ctl_stop("fast");
        *running = false;
    }

    /// Starts the server again after [`PgServer::stop`], on the same port and with the same
    /// data, and waits until it accepts connections. Does nothing if it is already running.
    ///
    /// # Panics
    ///
    /// When the server does not start within 30 s (the message includes the server log), or for
    /// the external server of `SESSION_LAYER_TEST_PG_URL`.
    pub fn start(&self) {
        let local = self.local("start");
        let mut running = lock(&local.running);
        if *running {
            return;
        }
        if let Err(error) = local.pg_ctl_start() {
            panic!("{}", local.failure("could not restart PostgreSQL", &error));
        }
        *running = true;
    }

    /// Whether the server is running (always `true` for an external server).
    pub fn is_running(&self) -> bool {
        match &self.kind {
            Kind::Local(local) => *lock(&local.running),
            Kind::External { .. } => true,
        }
    }

    /// The TCP port the server listens on (on `127.0.0.1` for a local server).
    pub fn port(&self) -> u16 {
        match &self.kind {
            Kind::Local(local) => local.port,
            Kind::External { admin_url, .. } => url_port(admin_url).unwrap_or(5432),
        }
    }

    /// URL of the administration database (`postgres`) as the superuser, for example
    /// `postgres://postgres@127.0.0.1:40123/postgres`; for an external server, the URL of
    /// `SESSION_LAYER_TEST_PG_URL`.
    pub fn admin_url(&self) -> String {
        match &self.kind {
            Kind::Local(local) => local.url("postgres"),
            Kind::External { admin_url, .. } => admin_url.clone(),
        }
    }

    /// URL of an existing database of this server that tests may use freely (the `postgres`
    /// database of a local server; for an external server, its configured URL).
    pub fn database_url(&self) -> String {
        self.admin_url()
    }

    /// Creates a new, empty, uniquely named database on this server and returns its URL.
    ///
    /// # Panics
    ///
    /// When `CREATE DATABASE` fails (for example because the server is stopped).
    pub fn create_database(&self) -> String {
        let mut last_error = String::new();
        for attempt in 0..50 {
            let n = self.next_db.fetch_add(1, Ordering::Relaxed);
            let name = match &self.kind {
                Kind::Local(_) => format!("test_{n}"),
                Kind::External { nonce, .. } => format!("test_{nonce}_{n}"),
            };
            // FILE_COPY (PostgreSQL 15+) copies the template's files: with fsync off it is
            // several times faster than the default, which writes the whole template to WAL.
            let sql = match &self.kind {
                Kind::Local(local) if local.major_version >= 15 => {
                    format!("CREATE DATABASE {name} STRATEGY = FILE_COPY")
                }
                _ => format!("CREATE DATABASE {name}"),
            };
            match self.psql(&self.admin_url(), &sql) {
                Ok(_) => {
                    return match &self.kind {
                        Kind::Local(local) => local.url(&name),
                        Kind::External { admin_url, .. } => with_database(admin_url, &name),
                    };
                }
                // A leftover of an earlier run (external server): try the next name.
                Err(e) if e.contains("already exists") => last_error = e,
                // Concurrent CREATE DATABASE on the same template: retry shortly.
                Err(e) if e.contains("being accessed by other users") && attempt < 49 => {
                    last_error = e;
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    last_error = e;
                    break;
                }
            }
        }
        if let Kind::External { admin_url, .. } = &self.kind {
            last_error = last_error.replace(admin_url.as_str(), &redact(admin_url));
        }
        let hint = match &self.kind {
            Kind::Local(local) if !*lock(&local.running) => {
                " (the server is stopped: call start() first)".to_owned()
            }
            Kind::Local(local) => format!("\n{}", log_tail(&local.log)),
            Kind::External { admin_url, .. } => format!(
                " on {} from {PG_URL_ENV}: is that server running, and may its user \
                 CREATE DATABASE (ALTER ROLE ... CREATEDB)?",
                redact(admin_url)
            ),
        };
        panic!("could not create a test database{hint}\n{last_error}");
    }

    /// Runs `psql` with one SQL command against `url` and returns its standard output
    /// (unaligned, tuples only), or the error message.
    fn psql(&self, url: &str, sql: &str) -> Result<String, String> {
        let psql = match &self.kind {
            Kind::Local(local) => local.bin.join("psql"),
            Kind::External { .. } => psql_binary(),
        };
        run_psql(&psql, url, sql)
    }

    fn local(&self, what: &str) -> &Local {
        match &self.kind {
            Kind::Local(local) => local,
            Kind::External { admin_url, .. } => panic!(
                "cannot {what} the external PostgreSQL server {} named by {PG_URL_ENV}: \
                 use test_support::dedicated_postgres() for tests that stop and start a server",
                redact(admin_url)
            ),
        }
    }

    fn external(url: &str) -> Result<PgServer, String> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(format!(
                "{PG_URL_ENV} must be a postgres:// URL, got {:?}",
                redact(url)
            ));
        }
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let nonce = format!(
            "{}_{}",
            std::process::id(),
            since_epoch.as_millis() % 1_000_000_000
        );
        Ok(PgServer {
            kind: Kind::External {
                admin_url: url.to_owned(),
                nonce,
            },
            next_db: AtomicU64::new(1),
        })
    }

    fn start_local() -> PgServer {
        let bin = find_bin_dir();
        let run_as = RunAs::detect();
        let root = unique_temp_dir("session-layer-pg");
        let data = root.join("data");
        let log = root.join("server.log");
        run_as.prepare_dir(&root);

        let mut local = Local {
            bin,
            root,
            data,
            log,
            port: 0,
            run_as,
            running: Mutex::new(false),
            watchdog: Mutex::new(None),
            major_version: 0,
        };
        // From here on the watchdog cleans up, even if this function panics.
        local.start_watchdog();

        let initdb = local.bin.join("initdb");
        let mut cmd = local.command(&initdb);
        cmd.arg("-D")
            .arg(&local.data)
            .args(["-U", SUPERUSER, "--auth=trust", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync", "--no-instructions"]);
        if let Err(error) = run(&mut cmd) {
            panic!(
                "{}",
                local.failure("could not initialise a PostgreSQL data directory", &error)
            );
        }

        local.major_version = fs::read_to_string(local.data.join("PG_VERSION"))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);

        // A free port may be taken by someone else before the server binds it: retry.
        let mut last_error = String::new();
        for _ in 0..5 {
            local.port = free_port();
            local.write_config();
            match local.pg_ctl_start() {
                Ok(()) => {
                    *lock(&local.running) = true;
                    return PgServer {
                        kind: Kind::Local(local),
                        next_db: AtomicU64::new(1),
                    };
                }
                Err(error) => {
                    last_error = error;
                    if !log_tail(&local.log).contains("could not bind") {
                        break;
                    }
                }
            }
        }
        panic!(
            "{}",
            local.failure("could not start PostgreSQL", &last_error)
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let Kind::Local(local) = &self.kind else {
            return;
        };
        let running = *lock(&local.running);
        if running {
            let pg_ctl = local.bin.join("pg_ctl");
            let mut cmd = local.command(&pg_ctl);
            cmd.arg("-D")
                .arg(&local.data)
                .args(["stop", "-m", "immediate", "-w", "-t", "30"]);
            let _ = run(&mut cmd);
        }
        let _ = fs::remove_dir_all(&local.root);
        if let Some(mut watchdog) = lock(&local.watchdog).take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

impl Local {
    fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// A command that runs `program` as the server's OS user, in the server's directory.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = self.run_as.command(program);
        cmd.current_dir(&self.root);
        cmd
    }

    /// Appends the settings to `postgresql.conf` (the last occurrence of a setting wins).
    fn write_config(&self) {
        let path = self.data.join("postgresql.conf");
        let socket_dir = self.root.to_string_lossy().replace('\'', "''");
        let settings = format!(
            "\n# test-support\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{socket_dir}'\n\
             max_connections = 200\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             shared_buffers = 32MB\n\
             log_min_messages = warning\n",
            port = self.port,
        );
        let mut conf = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        conf.push_str(&settings);
        fs::write(&path, conf).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let pg_ctl = self.bin.join("pg_ctl");
        let mut cmd = self.command(&pg_ctl);
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", &READY_TIMEOUT.as_secs().to_string(), "start"]);
        run(&mut cmd)?;
        self.wait_ready()
    }

    fn pg_ctl_stop(&self, mode: &str) {
        let pg_ctl = self.bin.join("pg_ctl");
        let mut cmd = self.command(&pg_ctl);
        cmd.arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", mode, "-w", "-t", "30"]);
        if let Err(error) = run(&mut cmd) {
            panic!("{}", self.failure("could not stop PostgreSQL", &error));
        }
    }

    /// Polls `pg_isready` until the server accepts connections.
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let port = self.port.to_string();
        loop {
            let status = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port, "-U", SUPERUSER])
                .args(["-d", "postgres", "-t", "2"])
                .stdin(Stdio::null())
                .status();
            match status {
                Ok(status) if status.success() => return Ok(()),
                Err(e) => return Err(format!("cannot run pg_isready: {e}")),
                Ok(_) if Instant::now() >= deadline => {
                    return Err(format!(
                        "PostgreSQL did not accept connections on 127.0.0.1:{port} within {} s",
                        READY_TIMEOUT.as_secs()
                    ));
                }
                Ok(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Starts the process that stops the server and deletes its directory once this test
    /// process has ended.
    fn start_watchdog(&self) {
        let stop = self
            .run_as
            .shell_prefix()
            .into_iter()
            .chain([
                sh_quote(self.bin.join("pg_ctl").as_os_str()),
                "-D".to_owned(),
                sh_quote(self.data.as_os_str()),
                "stop -m immediate -w -t 30".to_owned(),
            ])
            .collect::<Vec<_>>()
            .join(" ");
        let script = format!(
            "cd / && {stop} >/dev/null 2>&1; rm -rf {root}",
            root = sh_quote(self.root.as_os_str()),
        );
        match spawn_watchdog(&script) {
            Ok(child) => *lock(&self.watchdog) = Some(child),
            Err(e) => {
                let _ = fs::remove_dir_all(&self.root);
                panic!("cannot start the watchdog process that cleans up PostgreSQL (sh): {e}");
            }
        }
    }

    fn failure(&self, what: &str, error: &str) -> String {
        let mut message = format!(
            "{what} (binaries: {}, directory: {}, port: {}).\n{error}\n",
            self.bin.display(),
            self.root.display(),
            self.port
        );
        let log = log_tail(&self.log);
        if !log.is_empty() {
            let _ = write!(
                message,
                "--- server log ({}) ---\n{log}\n",
                self.log.display()
            );
        }
        message.push_str(
            "Hint: the tests need PostgreSQL server binaries (Debian: apt-get install \
             postgresql-15); when running as root they run as the `postgres` OS user \
             (useradd --system postgres). Alternatively set ",
        );
        message.push_str(PG_URL_ENV);
        message
            .push_str("=postgres://user@host:port/db to a server whose user can CREATE DATABASE.");
        message
    }
}

/// How server commands are run: directly, or as the `postgres` OS user when we are root.
#[derive(Debug, Clone)]
enum RunAs {
    CurrentUser,
    Runuser {
        runuser: PathBuf,
        uid: u32,
        gid: u32,
    },
    Su {
        su: PathBuf,
        uid: u32,
        gid: u32,
    },
}

impl RunAs {
    fn detect() -> RunAs {
        if current_uid() != Some(0) {
            return RunAs::CurrentUser;
        }
        let id = |flag: &str| -> Option<u32> {
            let out = Command::new("id").args([flag, OS_USER]).output().ok()?;
            if !out.status.success() {
                return None;
            }
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        };
        let (Some(uid), Some(gid)) = (id("-u"), id("-g")) else {
            panic!(
                "the tests run as root, but PostgreSQL refuses to run as root and there is no \
                 `{OS_USER}` OS user to run it as. Create it (useradd --system {OS_USER}), run the \
                 tests as an ordinary user, or set {PG_URL_ENV}=postgres://user@host:port/db to \
                 a server whose user can CREATE DATABASE."
            )
        };
        if let Some(runuser) = find_program("runuser", &["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        {
            return RunAs::Runuser { runuser, uid, gid };
        }
        if let Some(su) = find_program("su", &["/usr/bin", "/bin"]) {
            return RunAs::Su { su, uid, gid };
        }
        panic!(
            "the tests run as root and must start PostgreSQL as the `{OS_USER}` OS user, but \
             neither `runuser` nor `su` was found (Debian: apt-get install util-linux login)"
        )
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = match self {
            RunAs::CurrentUser => Command::new(program),
            RunAs::Runuser { runuser, .. } => {
                let mut cmd = Command::new(runuser);
                cmd.args(["-u", OS_USER, "--"]).arg(program);
                cmd
            }
            RunAs::Su { su, .. } => {
                let mut cmd = Command::new(su);
                cmd.args(["-s", "/bin/sh", "-c", "exec \"$0\" \"$@\"", "--", OS_USER])
                    .arg(program);
                cmd
            }
        };
        cmd.env("LC_ALL", "C")
            .env_remove("PGDATA")
            .stdin(Stdio::null());
        cmd
    }

    /// Shell words to put in front of a command in a shell script, to run it as the server user.
    fn shell_prefix(&self) -> Vec<String> {
        match self {
            RunAs::CurrentUser => Vec::new(),
            RunAs::Runuser { runuser, .. } => vec![
                sh_quote(runuser.as_os_str()),
                "-u".to_owned(),
                OS_USER.to_owned(),
                "--".to_owned(),
            ],
            RunAs::Su { su, .. } => vec![
                sh_quote(su.as_os_str()),
                "-s /bin/sh -c".to_owned(),
                sh_quote(OsStr::new("exec \"$0\" \"$@\"")),
                "--".to_owned(),
                OS_USER.to_owned(),
            ],
        }
    }

    /// Makes `dir` usable by the server user.
    fn prepare_dir(&self, dir: &Path) {
        if let RunAs::Runuser { uid, gid, .. } | RunAs::Su { uid, gid, .. } = self {
            std::os::unix::fs::chown(dir, Some(*uid), Some(*gid)).unwrap_or_else(|e| {
                panic!("cannot give {} to the {OS_USER} user: {e}", dir.display())
            });
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", dir.display()));
            // The server user must be able to reach the directory.
            let mut ancestor = dir.parent();
            while let Some(a) = ancestor {
                let mode = fs::metadata(a).map(|m| m.permissions().mode()).unwrap_or(0);
                if mode & 0o001 == 0 {
                    panic!(
                        "the {OS_USER} OS user cannot reach {} because {} is not searchable by \
                         others (mode {mode:o}): point TMPDIR at a directory such as /tmp",
                        dir.display(),
                        a.display()
                    );
                }
                ancestor = a.parent();
            }
        }
    }
}

/// Runs `psql` with one SQL command and returns its output or an error message.
fn run_psql(psql: &Path, url: &str, sql: &str) -> Result<String, String> {
    let mut cmd = Command::new(psql);
    cmd.args(["-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1"])
        .args(["-d", url, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
    run(&mut cmd).map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command to completion; on failure returns a message with its output.
fn run(cmd: &mut Command) -> Result<Output, String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if out.status.success() {
        return Ok(out);
    }
    Err(format!(
        "{shown} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Spawns `sh -c '<wait for this process to end>; <script>'` in its own process group, so that
/// a Ctrl-C or a timeout that kills the test's process group does not kill it too.
fn spawn_watchdog(script: &str) -> std::io::Result<Child> {
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

/// The directory with the PostgreSQL server binaries.
fn find_bin_dir() -> PathBuf {
    let has_server = |dir: &Path| {
        ["initdb", "pg_ctl", "pg_isready", "psql"]
            .iter()
            .all(|tool| dir.join(tool).is_file())
    };
    if let Some(dir) = env::var_os(PG_BIN_ENV) {
        let dir = PathBuf::from(dir);
        if has_server(&dir) {
            return dir;
        }
        panic!(
            "{PG_BIN_ENV}={} does not contain the PostgreSQL binaries initdb, pg_ctl, \
             pg_isready and psql",
            dir.display()
        );
    }
    let mut candidates = vec![PathBuf::from("/usr/lib/postgresql/15/bin")];
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    candidates.extend(versions.into_iter().map(|(_, dir)| dir));
    candidates.extend(env::var_os("PATH").iter().flat_map(env::split_paths));
    candidates.push(PathBuf::from("/usr/local/pgsql/bin"));
    if let Some(dir) = candidates.into_iter().find(|dir| has_server(dir)) {
        return dir;
    }
    panic!(
        "PostgreSQL server binaries (initdb, pg_ctl, pg_isready, psql) not found in \
         /usr/lib/postgresql/15/bin, /usr/lib/postgresql/*/bin or PATH. The PostgreSQL tests \
         need a real server: install it (Debian: apt-get install postgresql-15), or set \
         {PG_BIN_ENV}=/path/to/postgresql/bin, or set {PG_URL_ENV}=postgres://user@host:port/db \
         to a running server whose user can CREATE DATABASE."
    )
}

/// `psql` for an external server: from the server binaries if present, else from `PATH`.
fn psql_binary() -> PathBuf {
    let mut dirs = vec![PathBuf::from("/usr/lib/postgresql/15/bin")];
    if let Some(dir) = env::var_os(PG_BIN_ENV) {
        dirs.insert(0, PathBuf::from(dir));
    }
    dirs.extend(env::var_os("PATH").iter().flat_map(env::split_paths));
    dirs.into_iter()
        .map(|dir| dir.join("psql"))
        .find(|psql| psql.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{PG_URL_ENV} is set, but the PostgreSQL client `psql` (used to create test \
                 databases) is not installed: apt-get install postgresql-client"
            )
        })
}

fn find_program(name: &str, extra_dirs: &[&str]) -> Option<PathBuf> {
    env::var_os("PATH")
        .iter()
        .flat_map(env::split_paths)
        .chain(extra_dirs.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

fn current_uid() -> Option<u32> {
    let out = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// A loopback port that is free right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("cannot find a free TCP port on 127.0.0.1")
}

/// Creates a new directory `<temp dir>/<prefix>-<pid>-<n>-<time>`, world-searchable.
fn unique_temp_dir(prefix: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let base = env::temp_dir();
    for _ in 0..100 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let dir = base.join(format!(
            "{prefix}-{}-{}-{nanos:x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        match fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create a directory in {}: {e}", base.display()),
        }
    }
    panic!("cannot create a unique directory in {}", base.display())
}

/// The last lines of the server log (empty if there is none).
fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `f`; a panic becomes `Err(message)` so that it can be reported again on later calls.
fn catch_panic_message<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "PostgreSQL could not be started".to_owned())
    })
}

/// Single-quotes a word for `sh`.
fn sh_quote(word: &OsStr) -> String {
    format!("'{}'", word.to_string_lossy().replace('\'', r"'\''"))
}

/// Percent-encodes the characters of a file path that would end it early in a URL.
fn url_encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            ' ' => out.push_str("%20"),
            c => out.push(c),
        }
    }
    out
}

/// Splits `scheme://authority/path?query` into (`scheme://authority`, `?query` or "").
fn split_url(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after_scheme + i);
    let query_start = url[authority_end..]
        .find('?')
        .map_or(url.len(), |i| authority_end + i);
    (&url[..authority_end], &url[query_start..])
}

/// `url` with its database (path) replaced by `database`, keeping the query string.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = split_url(url);
    format!("{base}/{database}{query}")
}

/// The port of a `postgres://` URL, if it names one.
fn url_port(url: &str) -> Option<u16> {
    let (base, _) = split_url(url);
    let authority = base.rsplit("://").next()?;
    let host_port = authority.rsplit('@').next()?;
    let (_, port) = host_port.rsplit_once(':')?;
    port.parse().ok()
}

/// `url` with any password replaced by `***`, for messages.
fn redact(url: &str) -> String {
    let (base, _) = split_url(url);
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let authority = &base[after_scheme..];
    if let Some(at) = authority.rfind('@')
        && let Some(colon) = authority[..at].find(':')
    {
        let start = after_scheme + colon + 1;
        let end = after_scheme + at;
        return format!("{}***{}", &url[..start], &url[end..]);
    }
    url.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(url: &str, sql: &str) -> String {
        let psql = postgres_server_bin().join("psql");
        run_psql(&psql, url, sql)
            .unwrap_or_else(|e| panic!("query {sql:?} on {url} failed: {e}"))
            .trim()
            .to_owned()
    }

    fn postgres_server_bin() -> PathBuf {
        find_bin_dir()
    }

    #[test]
    fn shared_server_gives_distinct_empty_databases() {
        let a = postgres_database();
        let b = postgres_database();
        assert_ne!(a, b);
        let port = postgres_server().port();
        assert!(
            a.starts_with(&format!("postgres://postgres@127.0.0.1:{port}/test_")),
            "{a}"
        );

        let name_a = query(&a, "select current_database()");
        let name_b = query(&b, "select current_database()");
        assert_ne!(name_a, name_b);
        assert!(a.ends_with(&format!("/{name_a}")));

        query(
            &a,
            "create table only_in_a (id int); insert into only_in_a values (7)",
        );
        assert_eq!(query(&a, "select id from only_in_a"), "7");
        let tables_b = query(
            &b,
            "select count(*) from pg_tables where schemaname = 'public'",
        );
        assert_eq!(tables_b, "0");

        if !matches!(postgres_server().kind, Kind::Local(_)) {
            return; // SESSION_LAYER_TEST_PG_URL: not our settings.
        }
        assert_eq!(query(&a, "show fsync"), "off");
        assert_eq!(query(&a, "show max_connections"), "200");
        assert_eq!(query(&a, "show listen_addresses"), "127.0.0.1");
    }

    #[test]
    fn databases_can_be_created_in_parallel() {
        let urls: Vec<String> = (0..8)
            .map(|_| thread::spawn(postgres_database))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .expect("a thread creating a database panicked")
            })
            .collect();
        let mut unique = urls.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), urls.len(), "{urls:?}");
        for url in &urls {
            assert_eq!(query(url, "select 1"), "1");
        }
    }

    #[test]
    fn dedicated_server_keeps_port_and_data_across_stop_and_start() {
        let server = dedicated_postgres();
        let shared_port = postgres_server().port();
        assert_ne!(server.port(), shared_port);
        let url = server.database_url();
        query(
            &url,
            "create table t (v text); insert into t values ('kept')",
        );
        let port = server.port();
        let Kind::Local(local) = &server.kind else {
            panic!("dedicated server is local");
        };
        let root = local.root.clone();

        server.stop();
        assert!(!server.is_running());
        server.stop(); // idempotent
        let psql = postgres_server_bin().join("psql");
        let down = run_psql(&psql, &url, "select 1").expect_err("server should be down");
        assert!(down.contains("Connection refused"), "{down}");

        server.start();
        assert!(server.is_running());
        assert_eq!(server.port(), port);
        assert_eq!(query(&url, "select v from t"), "kept");

        let fresh = server.create_database();
        assert_eq!(query(&fresh, "select current_database()"), "test_1");

        drop(server);
        assert!(!root.exists(), "{} should be deleted", root.display());
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} still in use"
        );
        // The shared server is unaffected.
        assert_eq!(query(&postgres_database(), "select 1"), "1");
    }

    #[test]
    fn external_server_gets_databases_with_the_same_credentials() {
        let server = dedicated_postgres();
        let url = format!(
            "postgresql://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            server.port()
        );
        let external = PgServer::external(&url).expect("valid URL");
        assert_eq!(external.port(), server.port());
        assert_eq!(external.admin_url(), url);
        let db = external.create_database();
        let name = query(&db, "select current_database()");
        assert!(name.starts_with("test_"), "{name}");
        assert!(db.ends_with(&format!("/{name}?sslmode=disable")), "{db}");

        let stop = std::panic::catch_unwind(|| external.stop()).expect_err("cannot stop");
        let message = stop.downcast_ref::<String>().expect("panic message");
        assert!(message.contains("dedicated_postgres"), "{message}");
        assert!(PgServer::external("mysql://x").is_err());
    }

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

    #[test]
    fn server_commands_run_as_the_postgres_user_when_root() {
        let expected = if current_uid() == Some(0) {
            OS_USER.to_owned()
        } else {
            let out = Command::new("id").arg("-un").output().expect("run id -un");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let detected = RunAs::detect();
        let mut variants = vec![detected.clone()];
        if let RunAs::Runuser { uid, gid, .. } = detected
            && let Some(su) = find_program("su", &["/usr/bin", "/bin"])
        {
            variants.push(RunAs::Su { su, uid, gid });
        }
        for run_as in variants {
            let out = run(run_as.command(Path::new("/bin/sh")).args([
                "-c",
                r#"id -un; printf '%s\n' "$1""#,
                "sh",
                "-x 'y'",
            ]))
            .unwrap_or_else(|e| panic!("{run_as:?}: {e}"));
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(stdout, format!("{expected}\n-x 'y'\n"), "{run_as:?}");

            let script = run_as
                .shell_prefix()
                .into_iter()
                .chain(["/bin/sh -c 'id -un'".to_owned()])
                .collect::<Vec<_>>()
                .join(" ");
            let out = run(Command::new("/bin/sh").args(["-c", &script]))
                .unwrap_or_else(|e| panic!("{run_as:?}: {e}"));
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(stdout.trim(), expected, "{run_as:?}");
        }
    }

    #[test]
    fn url_helpers() {
        assert_eq!(
            with_database("postgres://u:p@h:5433/db?sslmode=disable", "test_1"),
            "postgres://u:p@h:5433/test_1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(with_database("postgres://h?a=b", "x"), "postgres://h/x?a=b");
        assert_eq!(url_port("postgres://u:p@h:5433/db"), Some(5433));
        assert_eq!(url_port("postgres://u@h/db"), None);
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(url_encode_path("/tmp/a b?#%.db"), "/tmp/a%20b%3F%23%25.db");
        assert_eq!(sh_quote(OsStr::new("it's")), r"'it'\''s'");
    }
}
