//! Reading the presented credential: `Authorization: Bearer` or the session cookie, parsed
//! without allocation, down to the token hash.

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};

use crate::extract::Transport;
use crate::token::{TokenHash, decode};

/// The presented credential as a hash, and how it arrived; `None` when there is none or it is
/// malformed. A malformed bearer token does not fall back to the cookie: the client chose a
/// credential.
pub(crate) fn credential(headers: &HeaderMap, cookie_name: &str) -> Option<(TokenHash, Transport)> {
    let (raw, transport) = match bearer_token(headers) {
        Some(token) => (token, Transport::Bearer),
        None => (cookie_value(headers, cookie_name)?, Transport::Cookie),
    };
    let bytes = decode(raw).ok()?;
    Some((TokenHash::of_bytes(&bytes), transport))
}

/// The bearer token of `Authorization: Bearer <token>`, if that is the scheme (matched without
/// regard to case, as RFC 9110 asks). No allocation.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    Some(rest.trim_ascii())
}

/// The value of the first cookie named `name` across all `Cookie` headers. No allocation.
pub(crate) fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers.get_all(COOKIE).iter().find_map(|header| {
        header.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let rest = pair.trim_ascii().strip_prefix(name.as_bytes())?;
            let value = rest.strip_prefix(b"=")?.trim_ascii();
            // RFC 6265 allows a quoted value.
            Some(
                value
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(value),
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_other_schemes_are_ignored() {
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Bearer abc")])),
            Some(&b"abc"[..])
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "bEaReR  abc ")])),
            Some(&b"abc"[..])
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Basic abc")])),
            None
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Bearerabc")])),
            None
        );
        assert_eq!(bearer_token(&headers(&[("authorization", "Bear")])), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn cookie_is_found_among_others_and_across_headers() {
        let h = headers(&[
            ("cookie", "a=1; sessionx=2"),
            ("cookie", "b=3;session=tok; c=4"),
        ]);
        assert_eq!(cookie_value(&h, "session"), Some(&b"tok"[..]));
        assert_eq!(
            cookie_value(&headers(&[("cookie", "session=\"q\"")]), "session"),
            Some(&b"q"[..])
        );
        assert_eq!(
            cookie_value(&headers(&[("cookie", "session")]), "session"),
            None
        );
        assert_eq!(
            cookie_value(&headers(&[("cookie", "other=1")]), "session"),
            None
        );
    }
}
