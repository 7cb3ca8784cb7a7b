//! Configuration: lifetimes, cache, touch batching, session limit, cookie, trusted proxies.

use std::borrow::Cow;
use std::time::Duration;

use cookie::{Cookie, SameSite};
use ipnet::IpNet;

use crate::clock::Clock;
use crate::error::ConfigError;
use crate::token::SessionToken;

/// Settings shared by [`SessionManager`](crate::SessionManager) and
/// [`SessionLayer`](crate::SessionLayer). Build one with [`SessionConfig::builder`].
///
/// | setting | default |
/// |---|---|
/// | `ttl` (absolute lifetime, counted from sign-in) | 7 days |
/// | `idle_timeout` (unused this long, the session is dead; one at or above `ttl` never fires first) | 1 day |
/// | `cache_ttl` (how long a validation is served from memory; zero disables the cache) | 30 s |
/// | `cache_capacity` (cached sessions) | 100 000 |
/// | `miss_cache_capacity` (remembered unknown, revoked or expired tokens, kept apart from sessions; zero disables) | 10 000 |
/// | `touch_interval` (how often `last_active_at` is written per session; capped at half the idle timeout) | 60 s |
/// | `touch_flush_interval` (how often batched touches are written) | 1 s |
/// | `max_sessions_per_user` (a sign-in past it revokes the least recently active session) | 10 |
/// | `revoked_retention` (how long revoked rows stay for audit before cleanup purges them) | 30 days |
/// | `cookie` | [`CookieConfig::secure`] (`__Host-session`, `Secure`) |
/// | `trusted_proxies` (peers whose `X-Forwarded-For` is believed) | none |
/// | `clock` | [`Clock::system`] |
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub(crate) ttl: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) cache_ttl: Duration,
    pub(crate) cache_capacity: u64,
    pub(crate) miss_cache_capacity: u64,
    pub(crate) touch_interval: Duration,
    pub(crate) touch_flush_interval: Duration,
    pub(crate) max_sessions_per_user: Option<u32>,
    pub(crate) revoked_retention: Duration,
    pub(crate) cookie: CookieConfig,
    pub(crate) trusted_proxies: Vec<IpNet>,
    pub(crate) clock: Clock,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(7 * 24 * 3600),
            idle_timeout: Duration::from_secs(24 * 3600),
            cache_ttl: Duration::from_secs(30),
            cache_capacity: 100_000,
            miss_cache_capacity: 10_000,
            touch_interval: Duration::from_secs(60),
            touch_flush_interval: Duration::from_secs(1),
            max_sessions_per_user: Some(10),
            revoked_retention: Duration::from_secs(30 * 24 * 3600),
            cookie: CookieConfig::secure(),
            trusted_proxies: Vec::new(),
            clock: Clock::system(),
        }
    }
}

impl SessionConfig {
    /// Starts from the defaults in the table above.
    pub fn builder() -> SessionConfigBuilder {
        SessionConfigBuilder(Self::default())
    }

    /// Absolute lifetime of a session, counted from sign-in; rotation does not extend it.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A session unused for this long is dead: the configured idle timeout, or `ttl` when that is
    /// shorter (an idle timeout at or above the lifetime never fires first).
    #[must_use]
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout.min(self.ttl)
    }

    /// How long a validated session may be served from the in-process cache.
    #[must_use]
    pub fn cache_ttl(&self) -> Duration {
        self.cache_ttl
    }

    /// The effective touch interval: the configured one, but never more than half the idle
    /// timeout, so the stored `last_active_at` can never make a used session look idle.
    #[must_use]
    pub fn touch_interval(&self) -> Duration {
        self.touch_interval.min(self.idle_timeout() / 2)
    }

    /// How many tokens that yielded no session (unknown, revoked, expired) are remembered, so
    /// that presenting them again costs no store query. Zero disables that memory.
    #[must_use]
    pub fn miss_cache_capacity(&self) -> u64 {
        self.miss_cache_capacity
    }

    /// Where the manager reads the time.
    #[must_use]
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Active sessions one user may hold, or `None` for no limit.
    #[must_use]
    pub fn max_sessions_per_user(&self) -> Option<u32> {
        self.max_sessions_per_user
    }

    /// How long revoked rows are kept before [`cleanup`](crate::SessionManager::cleanup) purges them.
    #[must_use]
    pub fn revoked_retention(&self) -> Duration {
        self.revoked_retention
    }

    /// The session cookie's name and attributes.
    #[must_use]
    pub fn cookie(&self) -> &CookieConfig {
        &self.cookie
    }

    /// Proxies whose `X-Forwarded-For` header is believed.
    #[must_use]
    pub fn trusted_proxies(&self) -> &[IpNet] {
        &self.trusted_proxies
    }
}

/// Builder for [`SessionConfig`]; [`build`](Self::build) checks the values.
#[derive(Debug, Clone)]
#[must_use]
pub struct SessionConfigBuilder(SessionConfig);

impl SessionConfigBuilder {
    /// Absolute lifetime of a session (default 7 days).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.0.ttl = ttl;
        self
    }

    /// Idle timeout (default 1 day). One at or above `ttl` simply never fires before the
    /// absolute lifetime ends.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.0.idle_timeout = idle;
        self
    }

    /// Cache lifetime of a validation (default 30 s). `Duration::ZERO` disables the cache, so
    /// every request reads the store.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.0.cache_ttl = ttl;
        self
    }

    /// Maximum number of cached sessions (default 100 000).
    pub fn cache_capacity(mut self, capacity: u64) -> Self {
        self.0.cache_capacity = capacity;
        self
    }

    /// How many tokens that yielded no session are remembered (default 10 000; zero disables).
    /// They are kept apart from the sessions, so a flood of random tokens never evicts a real
    /// session, and for no longer than the cache TTL.
    pub fn miss_cache_capacity(mut self, capacity: u64) -> Self {
        self.0.miss_cache_capacity = capacity;
        self
    }

    /// Where the manager reads the time (default [`Clock::system`]); tests use [`Clock::tokio`]
    /// or [`Clock::manual`].
    pub fn clock(mut self, clock: Clock) -> Self {
        self.0.clock = clock;
        self
    }

    /// How often `last_active_at` is written per session (default 60 s, capped at half the idle
    /// timeout).
    pub fn touch_interval(mut self, interval: Duration) -> Self {
        self.0.touch_interval = interval;
        self
    }

    /// How often pending touches are written in one batch (default 1 s).
    pub fn touch_flush_interval(mut self, interval: Duration) -> Self {
        self.0.touch_flush_interval = interval;
        self
    }

    /// Active sessions per user (default `Some(10)`); `None` for no limit.
    pub fn max_sessions_per_user(mut self, max: Option<u32>) -> Self {
        self.0.max_sessions_per_user = max;
        self
    }

    /// How long revoked rows are kept for audit (default 30 days).
    pub fn revoked_retention(mut self, retention: Duration) -> Self {
        self.0.revoked_retention = retention;
        self
    }

    /// The session cookie (default [`CookieConfig::secure`]).
    pub fn cookie(mut self, cookie: CookieConfig) -> Self {
        self.0.cookie = cookie;
        self
    }

    /// Proxies whose `X-Forwarded-For` is believed (default none).
    pub fn trusted_proxies(mut self, proxies: impl IntoIterator<Item = IpNet>) -> Self {
        self.0.trusted_proxies = proxies.into_iter().collect();
        self
    }

    /// Checks the values and returns the configuration.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting that is out of range.
    pub fn build(self) -> Result<SessionConfig, ConfigError> {
        let c = self.0;
        for (name, value) in [
            ("ttl", c.ttl),
            ("idle_timeout", c.idle_timeout),
            ("touch_interval", c.touch_interval),
            ("touch_flush_interval", c.touch_flush_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Zero(name));
            }
        }
        // Keeps every timestamp arithmetic on `time::OffsetDateTime` far from overflow.
        const HUNDRED_YEARS: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        for (name, value) in [
            ("ttl", c.ttl),
            ("cache_ttl", c.cache_ttl),
            ("revoked_retention", c.revoked_retention),
        ] {
            if value > HUNDRED_YEARS {
                return Err(ConfigError::TooLarge(name));
            }
        }
        if c.max_sessions_per_user == Some(0) {
            return Err(ConfigError::NoSessionsAllowed);
        }
        c.cookie.check()?;
        Ok(c)
    }
}

/// Name and attributes of the session cookie. Always `HttpOnly`, `SameSite=Lax`, `Path=/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieConfig {
    name: Cow<'static, str>,
    secure: bool,
}

impl CookieConfig {
    /// `__Host-session` with `Secure`: the browser only sends it over HTTPS, to this exact host.
    #[must_use]
    pub fn secure() -> Self {
        Self {
            name: Cow::Borrowed("__Host-session"),
            secure: true,
        }
    }

    /// `session` without `Secure`, for plain-HTTP local development.
    #[must_use]
    pub fn insecure() -> Self {
        Self {
            name: Cow::Borrowed("session"),
            secure: false,
        }
    }

    /// [`secure`](Self::secure) when `secure` is true, else [`insecure`](Self::insecure).
    #[must_use]
    pub fn from_secure_flag(secure: bool) -> Self {
        if secure {
            Self::secure()
        } else {
            Self::insecure()
        }
    }

    /// Overrides the cookie name. With `Secure`, keep the `__Host-` prefix. The name must be an
    /// RFC 6265 token, and a `__Host-`/`__Secure-` name needs `Secure`:
    /// [`SessionConfigBuilder::build`] refuses anything else.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The cookie name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the cookie carries `Secure`.
    #[must_use]
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The `Set-Cookie` for a freshly issued token, living until `expires_at`.
    #[must_use]
    pub fn session_cookie(
        &self,
        token: &SessionToken,
        expires_at: time::OffsetDateTime,
    ) -> Cookie<'static> {
        let mut cookie = self.base(token.expose());
        cookie.set_expires(expires_at);
        cookie
    }

    /// The `Set-Cookie` that removes the session cookie (for logout).
    #[must_use]
    pub fn removal_cookie(&self) -> Cookie<'static> {
        let mut cookie = self.base(String::new());
        cookie.make_removal();
        cookie
    }

    /// A name that is an RFC 6265 token, and `Secure` wherever the name's prefix demands it.
    fn check(&self) -> Result<(), ConfigError> {
        let token = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(ConfigError::CookieName);
        }
        let prefixed = ["__Host-", "__Secure-"].iter().any(|prefix| {
            self.name.len() >= prefix.len()
                && self.name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        });
        if prefixed && !self.secure {
            return Err(ConfigError::PrefixedCookieNotSecure);
        }
        Ok(())
    }

    fn base(&self, value: String) -> Cookie<'static> {
        Cookie::build((self.name.to_string(), value))
            .http_only(true)
            .secure(self.secure)
            .same_site(SameSite::Lax)
            .path("/")
            .build()
    }
}

impl Default for CookieConfig {
    fn default() -> Self {
        Self::secure()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_build() {
        let config = SessionConfig::builder().build().unwrap();
        assert_eq!(config.ttl(), Duration::from_secs(604_800));
        assert_eq!(config.touch_interval(), Duration::from_secs(60));
        assert_eq!(config.max_sessions_per_user(), Some(10));
    }

    #[test]
    fn touch_interval_is_capped_at_half_the_idle_timeout() {
        let config = SessionConfig::builder()
            .idle_timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        assert_eq!(config.touch_interval(), Duration::from_secs(5));
    }

    #[test]
    fn out_of_range_values_are_rejected_with_their_name() {
        let err = SessionConfig::builder()
            .ttl(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(err, ConfigError::Zero("ttl"));
        assert!(err.to_string().contains("ttl"));
        assert_eq!(
            SessionConfig::builder()
                .max_sessions_per_user(Some(0))
                .build()
                .unwrap_err(),
            ConfigError::NoSessionsAllowed
        );
    }

    /// Finding 7: `ttl(1 hour)` alone failed, because the default idle timeout is a day.
    #[test]
    fn an_idle_timeout_beyond_the_lifetime_is_accepted_and_never_fires_first() {
        let config = SessionConfig::builder()
            .ttl(Duration::from_secs(3600))
            .build()
            .unwrap();
        assert_eq!(config.idle_timeout(), Duration::from_secs(3600));
        assert_eq!(config.touch_interval(), Duration::from_secs(60));
        let short = SessionConfig::builder()
            .ttl(Duration::from_secs(10))
            .idle_timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        assert_eq!(short.idle_timeout(), Duration::from_secs(10));
        assert_eq!(short.touch_interval(), Duration::from_secs(5));
    }

    #[test]
    fn cookies_carry_the_required_attributes() {
        let token = SessionToken::generate().unwrap();
        let expires = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(30_000);
        let secure = CookieConfig::secure()
            .session_cookie(&token, expires)
            .to_string();
        assert!(secure.starts_with("__Host-session="));
        for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Secure", "Expires="] {
            assert!(secure.contains(attr), "{secure} lacks {attr}");
        }
        let plain = CookieConfig::insecure().removal_cookie().to_string();
        assert!(plain.starts_with("session=;"));
        assert!(!plain.contains("Secure"));
        assert!(plain.contains("Max-Age=0"));
    }
}
