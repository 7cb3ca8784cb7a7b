//! [`SessionLayer`]: the Tower middleware that turns a session token into a
//! [`CurrentSession`](crate::CurrentSession).
//!
//! For each request the layer reads the token from `Authorization: Bearer` (which wins when
//! both are sent; another scheme is ignored) or else from the session cookie, hashes it, and
//! looks the hash up in the in-process cache; on a miss it asks the store (one query, shared by
//! concurrent misses of the same token). A usable session goes into the request extensions.
//!
//! A missing or bad credential is not the layer's decision: the request goes on without a
//! session, and the [`CurrentSession`](crate::CurrentSession) extractor answers 401. When the
//! store cannot be reached the request goes on marked as such, and the extractor answers 503: it
//! is never treated as authenticated.
//!
//! ```
//! use axum::{Router, routing::get};
//! use session_layer::{CurrentSession, MemoryStore, SessionConfig, SessionLayer, SessionManager};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = SessionManager::new(MemoryStore::new(), SessionConfig::default())?;
//! let app: Router = Router::new()
//!     .route("/me", get(|s: CurrentSession| async move { s.user_id().to_string() }))
//!     .layer(SessionLayer::new(manager));
//! # Ok(()) }
//! ```

mod future;
mod service;

pub use future::ResponseFuture;
pub use service::{SessionLayer, SessionService};

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};

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
