//! PostgreSQL for tests: the server shared by the test process, dedicated servers, and fresh
//! databases on them. A [`PgServer`] is either [local](crate::local) (started by this process) or
//! [external](crate::external) (given by `SESSION_LAYER_TEST_PG_URL`).

use std::env;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use crate::PG_URL_ENV;
use crate::external::{External, psql_binary};
use crate::local::Local;
use crate::process::{catch_panic_message, lock, log_tail, run};
use crate::url::url_port;

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

/// Where the server comes from.
#[derive(Debug)]
enum Kind {
    /// Started (and stopped) by this process.
    Local(Local),
    /// The server of `SESSION_LAYER_TEST_PG_URL`.
    External(External),
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
            Kind::External(_) => true,
        }
    }

    /// The TCP port the server listens on (on `127.0.0.1` for a local server).
    pub fn port(&self) -> u16 {
        match &self.kind {
            Kind::Local(local) => local.port,
            Kind::External(external) => url_port(&external.admin_url).unwrap_or(5432),
        }
    }

    /// URL of the administration database (`postgres`) as the superuser, for example
    /// `postgres://postgres@127.0.0.1:40123/postgres`; for an external server, the URL of
    /// `SESSION_LAYER_TEST_PG_URL`.
    pub fn admin_url(&self) -> String {
        match &self.kind {
            Kind::Local(local) => local.url("postgres"),
            Kind::External(external) => external.admin_url.clone(),
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
                Kind::External(external) => external.database_name(n),
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
                        Kind::External(external) => external.url(&name),
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
        if let Kind::External(external) = &self.kind {
            last_error = last_error.replace(external.admin_url.as_str(), &external.redacted_url());
        }
        let hint = match &self.kind {
            Kind::Local(local) if !*lock(&local.running) => {
                " (the server is stopped: call start() first)".to_owned()
            }
            Kind::Local(local) => format!("\n{}", log_tail(&local.log)),
            Kind::External(external) => format!(
                " on {} from {PG_URL_ENV}: is that server running, and may its user \
                 CREATE DATABASE (ALTER ROLE ... CREATEDB)?",
                external.redacted_url()
            ),
        };
        panic!("could not create a test database{hint}\n{last_error}");
    }

    /// Runs `psql` with one SQL command against `url` and returns its standard output
    /// (unaligned, tuples only), or the error message.
    fn psql(&self, url: &str, sql: &str) -> Result<String, String> {
        let psql = match &self.kind {
            Kind::Local(local) => local.bin.join("psql"),
            Kind::External(_) => psql_binary(),
        };
        run_psql(&psql, url, sql)
    }

    fn local(&self, what: &str) -> &Local {
        match &self.kind {
            Kind::Local(local) => local,
            Kind::External(external) => panic!(
                "cannot {what} the external PostgreSQL server {} named by {PG_URL_ENV}: \
                 use test_support::dedicated_postgres() for tests that stop and start a server",
                external.redacted_url()
            ),
        }
    }

    /// The external server at `url` (see [`PG_URL_ENV`]).
    fn external(url: &str) -> Result<PgServer, String> {
        Ok(PgServer::new(Kind::External(External::new(url)?)))
    }

    /// A server this process starts.
    fn start_local() -> PgServer {
        PgServer::new(Kind::Local(Local::start()))
    }

    fn new(kind: Kind) -> PgServer {
        PgServer {
            kind,
            next_db: AtomicU64::new(1),
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Kind::Local(local) = &self.kind {
            local.shutdown();
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

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::thread;

    use super::*;
    use crate::local::find_bin_dir;

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
}
