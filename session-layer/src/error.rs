//! Error types.

/// A token could not be produced or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The input is not exactly 43 characters of unpadded base64url.
    #[error("malformed session token: expected 43 characters of unpadded base64url")]
    Malformed,
    /// The operating system's random source failed.
    #[error("the operating system's random number generator failed; no token was issued")]
    Entropy,
}

/// A store (database) operation failed.
///
/// The message names the operation; the underlying driver error is the `source`. Neither ever
/// contains a token or a token hash.
#[derive(Debug, thiserror::Error)]
#[error("session store failed to {operation}: {source}")]
pub struct StoreError {
    operation: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl StoreError {
    /// Wraps a driver error with the operation that was attempted.
    pub fn new(
        operation: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            operation,
            source: source.into(),
        }
    }

    /// The operation that failed, e.g. `"look up a session"`.
    #[must_use]
    pub fn operation(&self) -> &'static str {
        self.operation
    }
}

/// A [`SessionConfig`](crate::SessionConfig) value is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A duration that must be positive is zero.
    #[error("`{0}` must be greater than zero")]
    Zero(&'static str),
    /// `max_sessions_per_user` is zero: nobody could sign in.
    #[error("max_sessions_per_user must be at least 1 (or None for no limit)")]
    NoSessionsAllowed,
    /// A duration does not fit the store's timestamp range.
    #[error("`{0}` is too large")]
    TooLarge(&'static str),
    /// The cookie name is not an RFC 6265 token (letters, digits and ``!#$%&'*+-.^_`|~``): a
    /// `;` or `=` in it would inject attributes into every `Set-Cookie`.
    #[error("the cookie name is empty or holds a character that a cookie name cannot")]
    CookieName,
    /// A `__Host-` or `__Secure-` cookie name without `Secure`: browsers drop such a cookie,
    /// so no sign-in would stick. Use `CookieConfig::secure()`, or another name over plain HTTP.
    #[error("a __Host- or __Secure- cookie name needs CookieConfig::secure()")]
    PrefixedCookieNotSecure,
}

/// What went wrong in a [`SessionManager`](crate::SessionManager) call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed; the operation did not take effect (or its effect is unknown).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No active session of this user has that id (unknown, another user's, revoked or expired).
    #[error("no active session with that id belongs to this user")]
    SessionNotFound,
    /// The token presented for rotation is no longer the session's current token: another
    /// rotation won, or the session was revoked or expired meanwhile. Sign in again.
    #[error("the session token was already rotated or the session ended; sign in again")]
    RotationConflict,
    /// A token could not be generated.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The manager was built outside a Tokio runtime, which it needs for its background tasks.
    #[error("SessionManager::new must be called from within a Tokio runtime")]
    NoRuntime,
    /// The user's sessions were all revoked (a password change or reset) after the
    /// [`Fence`](crate::Fence) was read: the credential this sign-in proved may be the old one.
    /// No session was created; check the credential again.
    #[error(
        "the user's sessions were revoked after this sign-in began; no session was created, sign in again"
    )]
    Fenced,
    /// The task that carried out the call ended before finishing (a panic, or the runtime
    /// shutting down): its effect is unknown. Retry the call.
    #[error(
        "the session operation was interrupted before it finished; its effect is unknown, retry it"
    )]
    Interrupted,
}
