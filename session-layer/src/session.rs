//! The session record and the values that describe it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::device::DeviceType;

/// One sign-in of one user on one device: a row of the "your devices" page.
///
/// It never holds the token or its hash; the raw user agent is kept for audit but is not meant for
/// display (use [`device`](Self::device)).
///
/// With the `serde` feature it is `Serialize`: timestamps as RFC 3339 strings, `device_type`
/// and `revoked_reason` as their snake_case names, and without the raw user agent
/// (serialize `Session::with_user_agent()` to include it).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Session<U = Uuid> {
    /// Session id (UUID v7, so ids sort by creation time).
    pub id: Uuid,
    /// The owner.
    pub user_id: U,
    /// "Chrome on Windows".
    pub device: String,
    /// Desktop, mobile, tablet, bot or unknown.
    pub device_type: DeviceType,
    /// A name the user gave the device at sign-in, if any.
    pub device_name: Option<String>,
    /// The raw `User-Agent` header, truncated to 512 bytes.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub user_agent: Option<String>,
    /// Client address at sign-in.
    pub ip_address: Option<IpAddr>,
    /// Sign-in time.
    #[cfg_attr(feature = "serde", serde(serialize_with = "rfc3339::serialize"))]
    pub created_at: OffsetDateTime,
    /// Most recent recorded use (coarse: written at most once per touch interval).
    #[cfg_attr(feature = "serde", serde(serialize_with = "rfc3339::serialize"))]
    pub last_active_at: OffsetDateTime,
    /// End of the absolute lifetime.
    #[cfg_attr(feature = "serde", serde(serialize_with = "rfc3339::serialize"))]
    pub expires_at: OffsetDateTime,
    /// When it was revoked, if it was.
    #[cfg_attr(feature = "serde", serde(serialize_with = "rfc3339::serialize_option"))]
    pub revoked_at: Option<OffsetDateTime>,
    /// Why it was revoked, if it was.
    pub revoked_reason: Option<RevocationReason>,
}

/// A session in a user's list ([`SessionManager::list_for`](crate::SessionManager::list_for)),
/// marked when it is the one the request came with.
///
/// With the `serde` feature it serializes as the [`Session`] fields and `"current"`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ListedSession<U = Uuid> {
    /// The session, with `last_active_at` the most recent use known.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub session: Session<U>,
    /// Whether this is the session of the request that asked ("this device").
    pub current: bool,
}

/// Serializes a [`Session`] with its raw user agent: for an audit log or an administrator,
/// never for the user's own device list. See [`Session::with_user_agent`].
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct WithUserAgent<'a, U> {
    #[serde(flatten)]
    session: &'a Session<U>,
    user_agent: Option<&'a str>,
}

#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl<U> Session<U> {
    /// The session serialized with its raw `user_agent` as well.
    ///
    /// ```
    /// # fn show(session: &session_layer::Session) -> serde_json::Result<String> {
    /// serde_json::to_string(&session.with_user_agent())
    /// # }
    /// ```
    #[must_use]
    pub fn with_user_agent(&self) -> WithUserAgent<'_, U> {
        WithUserAgent {
            session: self,
            user_agent: self.user_agent.as_deref(),
        }
    }
}

#[cfg(feature = "serde")]
mod rfc3339 {
    use serde::Serializer;
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub(super) fn serialize<S: Serializer>(at: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        let text = at.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub(super) fn serialize_option<S: Serializer>(
        at: &Option<OffsetDateTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => serialize(at, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl serde::Serialize for RevocationReason {
    /// As [`as_str`](Self::as_str).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Why a session was revoked. Stored as the snake_case string of [`as_str`](Self::as_str).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RevocationReason {
    /// The user signed out on this device.
    Logout,
    /// The user signed this session out from another device.
    RevokedByUser,
    /// The user changed their password; other sessions end.
    PasswordChange,
    /// The password was reset; every session ends.
    PasswordReset,
    /// A rotated-out token was presented again: treated as theft.
    TokenReuse,
    /// A newer sign-in pushed the user past `max_sessions_per_user`.
    SessionLimit,
    /// An administrator ended it.
    Admin,
}

impl RevocationReason {
    /// Every reason, in declaration order.
    pub const ALL: [Self; 7] = [
        Self::Logout,
        Self::RevokedByUser,
        Self::PasswordChange,
        Self::PasswordReset,
        Self::TokenReuse,
        Self::SessionLimit,
        Self::Admin,
    ];

    /// The stored form: `logout`, `revoked_by_user`, `password_change`, `password_reset`,
    /// `token_reuse`, `session_limit` or `admin`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::RevokedByUser => "revoked_by_user",
            Self::PasswordChange => "password_change",
            Self::PasswordReset => "password_reset",
            Self::TokenReuse => "token_reuse",
            Self::SessionLimit => "session_limit",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string is not one of the [`RevocationReason`] names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown revocation reason {0:?}")]
pub struct UnknownReason(pub String);

impl FromStr for RevocationReason {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|reason| reason.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_through_their_stored_form() {
        for reason in RevocationReason::ALL {
            assert_eq!(reason.as_str().parse::<RevocationReason>(), Ok(reason));
        }
        assert!("stolen".parse::<RevocationReason>().is_err());
    }
}
