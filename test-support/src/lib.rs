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
//! - [`eventually`] waits for something that happens in the background; [`capture_logs`]
//!   captures the `tracing` output of the test process, [`captured_logs`] reads it.
//! - [`for_each_backend!`] runs each test scenario against each backend, one test per pair.
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
//!
//! # How it is built
//!
//! - `postgres`: [`PgServer`], the shared and dedicated servers, fresh databases; a server is
//!   either `local` (this process runs `initdb` and `pg_ctl`) or `external`
//!   (`SESSION_LAYER_TEST_PG_URL`).
//! - `run_as`: running the server as the `postgres` OS user when the tests run as root.
//! - `watchdog`: the `sh` process that stops the servers and deletes their files when the test
//!   process dies, however it dies.
//! - `redis`: the same for `redis-server`; `sqlite`: database files in a temporary directory.
//! - `url`: URL helpers (split, swap the database, port, redact, encode); `process`: running
//!   commands, free ports, temporary directories.

#![warn(missing_docs)]

mod backends;
mod eventually;
mod external;
mod local;
mod logs;
mod postgres;
mod process;
mod redis;
mod run_as;
mod sqlite;
mod url;
mod watchdog;

pub use eventually::{Check, eventually, poll_until};
pub use external::PG_URL_ENV;
pub use local::PG_BIN_ENV;
pub use logs::{capture_logs, captured_lines_with, captured_logs};
pub use postgres::{PgServer, dedicated_postgres, postgres_database, postgres_server};
pub use redis::{
    REDIS_BIN_ENV, RedisServer, dedicated_redis, isolated_redis, redis_prefix, redis_server,
};
pub use sqlite::sqlite_database;
