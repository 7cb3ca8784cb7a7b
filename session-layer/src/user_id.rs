//! The application's user id type: [`Uuid`] (the default), `i64` or `String`, or a newtype of
//! one of them.

use std::borrow::Cow;
use std::fmt;
use std::hash::Hash;

use uuid::Uuid;

/// How a [`UserId`] is stored: the SQL type of the `user_id` columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UserIdKind {
    /// `UUID` on PostgreSQL, a 16-byte `BLOB` on SQLite.
    Uuid,
    /// `BIGINT` on PostgreSQL, `INTEGER` on SQLite.
    BigInt,
    /// `TEXT` on both.
    Text,
}

/// A user id as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserIdValue<'a> {
    /// For [`UserIdKind::Uuid`].
    Uuid(Uuid),
    /// For [`UserIdKind::BigInt`].
    BigInt(i64),
    /// For [`UserIdKind::Text`].
    Text(Cow<'a, str>),
}

/// The type of the application's user ids, as sessions store and return them.
///
/// Implemented for [`Uuid`] (the default everywhere), `i64` and `String`. For a newtype, delegate:
///
/// ```
/// use session_layer::{UserId, UserIdKind, UserIdValue};
///
/// #[derive(Debug, Clone, PartialEq, Eq, Hash)]
/// struct AccountId(i64);
///
/// impl std::fmt::Display for AccountId {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         self.0.fmt(f)
///     }
/// }
///
/// impl UserId for AccountId {
///     const KIND: UserIdKind = UserIdKind::BigInt;
///
///     fn to_value(&self) -> UserIdValue<'_> {
///         UserIdValue::BigInt(self.0)
///     }
///
///     fn from_value(value: UserIdValue<'_>) -> Option<Self> {
///         match value {
///             UserIdValue::BigInt(id) => Some(Self(id)),
///             _ => None,
///         }
///     }
/// }
/// ```
pub trait UserId: Clone + Eq + Hash + fmt::Debug + fmt::Display + Send + Sync + 'static {
    /// The SQL type the id is stored as.
    const KIND: UserIdKind;

    /// The id as stored; must be of [`KIND`](Self::KIND).
    fn to_value(&self) -> UserIdValue<'_>;

    /// The id back from its stored form; `None` when `value` is not of [`KIND`](Self::KIND) or
    /// not a valid id.
    fn from_value(value: UserIdValue<'_>) -> Option<Self>;
}

impl UserId for Uuid {
    const KIND: UserIdKind = UserIdKind::Uuid;

    fn to_value(&self) -> UserIdValue<'_> {
        UserIdValue::Uuid(*self)
    }

    fn from_value(value: UserIdValue<'_>) -> Option<Self> {
        match value {
            UserIdValue::Uuid(id) => Some(id),
            _ => None,
        }
    }
}

impl UserId for i64 {
    const KIND: UserIdKind = UserIdKind::BigInt;

    fn to_value(&self) -> UserIdValue<'_> {
        UserIdValue::BigInt(*self)
    }

    fn from_value(value: UserIdValue<'_>) -> Option<Self> {
        match value {
            UserIdValue::BigInt(id) => Some(id),
            _ => None,
        }
    }
}

impl UserId for String {
    const KIND: UserIdKind = UserIdKind::Text;

    fn to_value(&self) -> UserIdValue<'_> {
        UserIdValue::Text(Cow::Borrowed(self))
    }

    fn from_value(value: UserIdValue<'_>) -> Option<Self> {
        match value {
            UserIdValue::Text(id) => Some(id.into_owned()),
            _ => None,
        }
    }
}

/// A stable 64-bit digest of a user id (PostgreSQL advisory lock keys).
#[cfg(feature = "postgres")]
pub(crate) fn digest<U: UserId>(user_id: &U) -> i64 {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    match user_id.to_value() {
        UserIdValue::Uuid(id) => hasher.update(id.as_bytes()),
        UserIdValue::BigInt(id) => hasher.update(id.to_le_bytes()),
        UserIdValue::Text(id) => hasher.update(id.as_bytes()),
    }
    let bytes: [u8; 32] = hasher.finalize().into();
    let mut first = [0; 8];
    first.copy_from_slice(&bytes[..8]);
    i64::from_le_bytes(first)
}
