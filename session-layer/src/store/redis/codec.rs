//! How sessions and user ids are written into Redis keys and hash fields, and read back.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::session::Session;
use crate::token::TokenHash;
use crate::user_id::{UserId, UserIdKind, UserIdValue};

/// A stored value that does not decode: the keys were written by something else.
#[derive(Debug, thiserror::Error)]
#[error("unexpected session data in Redis: {0}")]
pub(super) struct Corrupt(pub(super) &'static str);

/// A user id as it appears in keys and in the `u` field: a kind letter, then the id in a form
/// without separators (hex for text), so that no id can reach into another key.
pub(super) fn user_key<U: UserId>(user: &U) -> String {
    match user.to_value() {
        UserIdValue::Uuid(id) => format!("u{}", id.simple()),
        UserIdValue::BigInt(id) => format!("i{id}"),
        UserIdValue::Text(id) => {
            let mut key = String::with_capacity(1 + 2 * id.len());
            key.push('t');
            for byte in id.as_bytes() {
                // Writing to a String cannot fail.
                let _ = write!(key, "{byte:02x}");
            }
            key
        }
    }
}

fn user_from_key<U: UserId>(key: &str) -> Option<U> {
    let (kind, rest) = (key.get(..1)?, key.get(1..)?);
    let value = match (U::KIND, kind) {
        (UserIdKind::Uuid, "u") => UserIdValue::Uuid(Uuid::try_parse(rest).ok()?),
        (UserIdKind::BigInt, "i") => UserIdValue::BigInt(rest.parse().ok()?),
        (UserIdKind::Text, "t") => {
            if rest.len() % 2 != 0 {
                return None;
            }
            let bytes = (0..rest.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(rest.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            UserIdValue::Text(Cow::Owned(String::from_utf8(bytes).ok()?))
        }
        _ => return None,
    };
    U::from_value(value)
}

/// Unix microseconds (what the SQL stores keep), as the decimal string the scripts compare.
pub(super) fn micros(at: OffsetDateTime) -> String {
    (at.unix_timestamp_nanos().div_euclid(1000)).to_string()
}

fn from_micros(text: &str) -> Option<OffsetDateTime> {
    let us: i128 = text.parse().ok()?;
    OffsetDateTime::from_unix_timestamp_nanos(us.checked_mul(1000)?).ok()
}

/// Milliseconds for a key TTL: at least 1 (a zero TTL is an error in Redis).
pub(super) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The fields of a new session besides user, hash, last activity and expiry (which the insert
/// script writes itself): absent options are absent fields.
pub(super) fn session_fields<U>(session: &Session<U>) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("c", micros(session.created_at)),
        ("d", session.device.clone()),
        ("dt", session.device_type.as_str().to_owned()),
    ];
    if let Some(name) = &session.device_name {
        fields.push(("dn", name.clone()));
    }
    if let Some(agent) = &session.user_agent {
        fields.push(("ua", agent.clone()));
    }
    if let Some(ip) = session.ip_address {
        fields.push(("ip", ip.to_string()));
    }
    fields
}

/// A session from its id and its hash's `field, value, …` list (as `HGETALL` returns it).
pub(super) fn session_from_fields<U: UserId>(
    id: &str,
    flat: &[String],
) -> Result<Session<U>, Corrupt> {
    let fields: HashMap<&str, &str> = flat
        .chunks_exact(2)
        .map(|pair| (pair[0].as_str(), pair[1].as_str()))
        .collect();
    let get = |name: &'static str| fields.get(name).copied();
    let time = |name: &'static str| -> Result<OffsetDateTime, Corrupt> {
        get(name).and_then(from_micros).ok_or(Corrupt(name))
    };
    Ok(Session {
        id: Uuid::try_parse(id).map_err(|_| Corrupt("session id"))?,
        user_id: get("u")
            .and_then(user_from_key)
            .ok_or(Corrupt("user id of another type"))?,
        device: get("d").ok_or(Corrupt("d"))?.to_owned(),
        device_type: get("dt").and_then(|t| t.parse().ok()).unwrap_or_default(),
        device_name: get("dn").map(str::to_owned),
        user_agent: get("ua").map(str::to_owned),
        ip_address: get("ip")
            .map(|ip| ip.parse().map_err(|_| Corrupt("ip")))
            .transpose()?,
        created_at: time("c")?,
        last_active_at: time("a")?,
        expires_at: time("e")?,
        revoked_at: get("ra").map(|_| time("ra")).transpose()?,
        revoked_reason: get("rr")
            .map(|r| r.parse().map_err(|_| Corrupt("rr")))
            .transpose()?,
    })
}

pub(super) fn hash_from_hex(hex: &str) -> Result<TokenHash, Corrupt> {
    TokenHash::from_hex(hex).ok_or(Corrupt("token hash"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_keys_round_trip_and_cannot_reach_into_other_keys() {
        let text = "evil:u:victim\r\n*".to_owned();
        let key = user_key(&text);
        assert!(key.chars().all(|c| c.is_ascii_alphanumeric()), "{key}");
        assert_eq!(user_from_key::<String>(&key), Some(text));
        assert_eq!(user_from_key::<i64>(&user_key(&-42_i64)), Some(-42));
        let id = Uuid::now_v7();
        assert_eq!(user_from_key::<Uuid>(&user_key(&id)), Some(id));
        assert_eq!(
            user_from_key::<i64>(&user_key(&id)),
            None,
            "kinds do not mix"
        );
        assert_eq!(user_from_key::<String>("t6"), None);
    }

    #[test]
    fn times_keep_microseconds() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_789).unwrap();
        let back = from_micros(&micros(at)).unwrap();
        assert_eq!(back.unix_timestamp_nanos(), 1_795_000_000_123_456_000);
    }
}
