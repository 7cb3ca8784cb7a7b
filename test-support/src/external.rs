//! An external PostgreSQL server, named by `SESSION_LAYER_TEST_PG_URL`: this crate only creates
//! databases on it (with `psql`), it never starts or stops it.

use std::env;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::PG_BIN_ENV;
use crate::url::{redact, with_database};

/// Name of the environment variable that points the tests at an existing PostgreSQL server.
pub const PG_URL_ENV: &str = "SESSION_LAYER_TEST_PG_URL";

/// The server of `SESSION_LAYER_TEST_PG_URL`.
#[derive(Debug)]
pub(crate) struct External {
    /// The configured URL, used to create databases.
    pub(crate) admin_url: String,
    /// Makes this process's database names unique on a server that outlives it.
    nonce: String,
}

impl External {
    /// The external server at `url`, or why `url` is not usable.
    pub(crate) fn new(url: &str) -> Result<External, String> {
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
        Ok(External {
            admin_url: url.to_owned(),
            nonce,
        })
    }

    /// The name of the `n`th test database of this process.
    pub(crate) fn database_name(&self, n: u64) -> String {
        format!("test_{}_{n}", self.nonce)
    }

    /// The URL of database `name`, with the configured credentials and query string.
    pub(crate) fn url(&self, name: &str) -> String {
        with_database(&self.admin_url, name)
    }

    /// The configured URL without its password, for messages.
    pub(crate) fn redacted_url(&self) -> String {
        redact(&self.admin_url)
    }
}

/// `psql` for an external server: from the server binaries if present, else from `PATH`.
pub(crate) fn psql_binary() -> PathBuf {
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
