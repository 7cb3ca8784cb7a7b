//! The environment variables of the contract (`demo-app/API.md`, "Starting it").

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use session_layer::{CookieConfig, SessionConfig};

/// The database the demo keeps its accounts and sessions in when `DATABASE_URL` is unset: an
/// SQLite file in the working directory, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://demo.db";

/// The listen address when `BIND_ADDR` is unset.
pub const DEFAULT_BIND_ADDR: &str = "127.0.0.1:3000";

/// How often the background task purges expired and long-revoked sessions.
pub const DEFAULT_CLEANUP_PERIOD: Duration = Duration::from_secs(3600);

/// Which database `DATABASE_URL` names, read once from its scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    /// `sqlite:…`.
    Sqlite,
    /// `postgres://…` or `postgresql://…`.
    Postgres,
}

impl Database {
    /// The kind of `url`, if it is one of the two.
    #[must_use]
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }

    /// "SQLite" or "PostgreSQL".
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        }
    }
}

/// Everything the app needs to start.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// `sqlite://…` or `postgres://…`: the accounts, and the sessions unless
    /// `session_store_url` is set.
    pub database_url: String,
    /// Which of the two `database_url` is.
    pub database: Database,
    /// `redis://…` or `redis+unix://…`: where the sessions live instead of `database_url`.
    pub session_store_url: Option<String>,
    /// Where `main` listens (the tests bind their own listener instead).
    pub bind_addr: SocketAddr,
    /// Session lifetimes, cache, limit, cookie and trusted proxies.
    pub session: SessionConfig,
    /// Period of the session cleanup task.
    pub cleanup_period: Duration,
}

/// An environment variable has a value the app cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The variable is set but does not parse.
    #[error("{name}={value:?} is invalid: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What it was set to.
        value: String,
        /// What is expected.
        reason: String,
    },
    /// The values parse but the session settings refuse them (e.g. a lifetime over 100 years).
    #[error("invalid session settings: {0}")]
    Session(#[from] session_layer::ConfigError),
}

impl AppConfig {
    /// Reads the configuration from the process environment.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the variable whose value is unusable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (the environment, or a map in tests). Unset and
    /// empty variables take their defaults.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the variable whose value is unusable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        let database_url = get("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        let database = Database::of_url(&database_url).ok_or_else(|| {
            invalid(
                "DATABASE_URL",
                &database_url,
                "expected sqlite://… or postgres://…",
            )
        })?;
        let session_store_url = get("SESSION_STORE_URL");
        if let Some(url) = &session_store_url
            && !(url.starts_with("redis://") || url.starts_with("redis+unix://"))
        {
            return Err(invalid(
                "SESSION_STORE_URL",
                url,
                "expected redis://… or redis+unix://… (TLS, rediss://, is not supported), or \
                 unset: sessions in DATABASE_URL",
            ));
        }
        let bind = get("BIND_ADDR").unwrap_or_else(|| DEFAULT_BIND_ADDR.to_owned());
        let bind_addr = bind.parse().map_err(|_| {
            invalid(
                "BIND_ADDR",
                &bind,
                "expected host:port, e.g. 127.0.0.1:3000",
            )
        })?;

        let secs = |name: &'static str, default: u64| -> Result<Duration, ConfigError> {
            match get(name) {
                None => Ok(Duration::from_secs(default)),
                Some(v) => v
                    .parse::<u64>()
                    .map(Duration::from_secs)
                    .map_err(|_| invalid(name, &v, "expected a whole number of seconds")),
            }
        };
        let ttl = secs("SESSION_TTL_SECS", 604_800)?;
        let idle = secs("SESSION_IDLE_TIMEOUT_SECS", 86_400)?;
        let cache_ttl = secs("SESSION_CACHE_TTL_SECS", 30)?;

        let max_sessions = match get("MAX_SESSIONS_PER_USER") {
            None => 10,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid("MAX_SESSIONS_PER_USER", &v, "expected a number ≥ 1"))?,
        };
        let secure = match get("COOKIE_SECURE").as_deref() {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => true,
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => false,
            Some(v) => return Err(invalid("COOKIE_SECURE", v, "expected true or false")),
        };
        let trusted_proxies = match get("TRUSTED_PROXIES") {
            None => Vec::new(),
            Some(v) => parse_proxies(&v)?,
        };

        let session = SessionConfig::builder()
            .ttl(ttl)
            .idle_timeout(idle)
            .cache_ttl(cache_ttl)
            .max_sessions_per_user(Some(max_sessions))
            .cookie(CookieConfig::from_secure_flag(secure))
            .trusted_proxies(trusted_proxies)
            .build()?;
        Ok(Self {
            database_url,
            database,
            session_store_url,
            bind_addr,
            session,
            cleanup_period: DEFAULT_CLEANUP_PERIOD,
        })
    }
}

/// `10.0.0.0/8, 192.168.1.1` → networks; a bare address is a single-host network.
fn parse_proxies(value: &str) -> Result<Vec<IpNet>, ConfigError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    invalid(
                        "TRUSTED_PROXIES",
                        value,
                        "expected comma-separated CIDRs, e.g. 10.0.0.0/8,::1/128",
                    )
                })
        })
        .collect()
}

fn invalid(name: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: without_credentials(value),
        reason: reason.to_owned(),
    }
}

/// `value` with the `user:password@` of a URL replaced by `…@`, for error messages.
fn without_credentials(value: &str) -> String {
    match value.split_once("://") {
        Some((scheme, rest)) => match rest
            .split_once('/')
            .map_or(rest, |(authority, _)| authority)
            .rfind('@')
        {
            Some(at) => format!("{scheme}://…{}", &rest[at..]),
            None => value.to_owned(),
        },
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<AppConfig, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        AppConfig::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = config(&[]).unwrap();
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(c.bind_addr.to_string(), "127.0.0.1:3000");
        assert_eq!(c.session.ttl(), Duration::from_secs(604_800));
        assert_eq!(c.session.idle_timeout(), Duration::from_secs(86_400));
        assert_eq!(c.session.cache_ttl(), Duration::from_secs(30));
        assert_eq!(c.session.max_sessions_per_user(), Some(10));
        assert_eq!(c.session.cookie().name(), "session");
        assert!(!c.session.cookie().is_secure());
        assert!(c.session.trusted_proxies().is_empty());
        assert_eq!(c.session_store_url, None);
    }

    #[test]
    fn values_are_read_from_the_environment() {
        let c = config(&[
            ("COOKIE_SECURE", "true"),
            ("TRUSTED_PROXIES", "10.0.0.0/8, ::1/128,192.168.1.1"),
            ("SESSION_TTL_SECS", "3"),
            ("SESSION_IDLE_TIMEOUT_SECS", "2"),
            ("SESSION_STORE_URL", "redis://127.0.0.1:6379/0"),
        ])
        .unwrap();
        assert_eq!(
            c.session_store_url.as_deref(),
            Some("redis://127.0.0.1:6379/0")
        );
        assert_eq!(c.session.cookie().name(), "__Host-session");
        assert_eq!(c.session.trusted_proxies().len(), 3);
        assert_eq!(c.session.ttl(), Duration::from_secs(3));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("SESSION_TTL_SECS", "seven days"),
            ("MAX_SESSIONS_PER_USER", "0"),
            ("COOKIE_SECURE", "yes please"),
            ("TRUSTED_PROXIES", "10.0.0.0/99"),
            ("BIND_ADDR", "localhost"),
            ("DATABASE_URL", "mysql://x"),
            ("SESSION_STORE_URL", "postgres://sessions"),
        ] {
            let err = config(&[(name, value)]).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn a_bad_url_is_reported_without_its_password_and_tls_is_refused_at_once() {
        let err = config(&[("SESSION_STORE_URL", "rediss://app:hunter2@cache:6380/0")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SESSION_STORE_URL") && err.contains("rediss"),
            "{err}"
        );
        assert!(
            err.contains("…@cache:6380/0") && !err.contains("hunter2"),
            "{err}"
        );
        let err = config(&[("DATABASE_URL", "mysql://root:hunter2@db/app")])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(config(&[("SESSION_STORE_URL", "redis+unix:///run/redis.sock")]).is_ok());
    }

    #[test]
    fn idle_timeout_above_the_lifetime_starts_and_never_fires_first() {
        let c = config(&[("SESSION_TTL_SECS", "3600")]).unwrap();
        assert_eq!(c.session.idle_timeout(), Duration::from_secs(3600));
        let c = config(&[
            ("SESSION_TTL_SECS", "10"),
            ("SESSION_IDLE_TIMEOUT_SECS", "20"),
        ])
        .unwrap();
        assert_eq!(c.session.idle_timeout(), Duration::from_secs(10));
    }
}
