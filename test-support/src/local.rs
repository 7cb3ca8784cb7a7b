//! A PostgreSQL server this process starts: `initdb` into a temporary directory, a free loopback
//! port, trust authentication, `fsync` off; stopped with `pg_ctl` when dropped, or by the
//! watchdog when the test process dies.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use std::{env, fs, thread};

use crate::PG_URL_ENV;
use crate::process::{READY_TIMEOUT, free_port, lock, log_tail, run, unique_temp_dir};
use crate::run_as::RunAs;
use crate::watchdog::{sh_quote, spawn_watchdog};

/// Name of the environment variable that names the directory holding `initdb`, `pg_ctl`, …
pub const PG_BIN_ENV: &str = "SESSION_LAYER_PG_BIN";

/// The PostgreSQL superuser of servers started by this crate (trust authentication).
pub(crate) const SUPERUSER: &str = "postgres";

/// A server started by this process, and what it needs to control it.
#[derive(Debug)]
pub(crate) struct Local {
    pub(crate) bin: PathBuf,
    pub(crate) root: PathBuf,
    data: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) port: u16,
    run_as: RunAs,
    pub(crate) running: Mutex<bool>,
    watchdog: Mutex<Option<Child>>,
    /// Major version of the server, from `PG_VERSION` (0 if unknown).
    pub(crate) major_version: u32,
}

impl Local {
    /// Creates and starts a server: `initdb` into a fresh temporary directory, a free loopback
    /// port, the test settings; a watchdog cleans up if this process ends.
    pub(crate) fn start() -> Local {
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
                    return local;
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

    /// Stops the server at once (`pg_ctl stop -m immediate`), deletes its directory and ends
    /// its watchdog: the cleanup of a dropped `PgServer`.
    pub(crate) fn shutdown(&self) {
        let running = *lock(&self.running);
        if running {
            let pg_ctl = self.bin.join("pg_ctl");
            let mut cmd = self.command(&pg_ctl);
            cmd.arg("-D")
                .arg(&self.data)
                .args(["stop", "-m", "immediate", "-w", "-t", "30"]);
            let _ = run(&mut cmd);
        }
        let _ = fs::remove_dir_all(&self.root);
        if let Some(mut watchdog) = lock(&self.watchdog).take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }

    pub(crate) fn url(&self, database: &str) -> String {
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

    pub(crate) fn pg_ctl_start(&self) -> Result<(), String> {
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

    pub(crate) fn pg_ctl_stop(&self, mode: &str) {
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

    pub(crate) fn failure(&self, what: &str, error: &str) -> String {
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

/// The directory with the PostgreSQL server binaries.
pub(crate) fn find_bin_dir() -> PathBuf {
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
