//! [`CrossSiteGuard`]: refuses state-changing browser requests sent from another site.
//!
//! # The threat
//!
//! A browser attaches the session cookie to requests that another site makes it send (a form
//! posted from `evil.example` to your app): cross-site request forgery. `SameSite=Lax` keeps the
//! cookie off cross-site POSTs in current browsers, but not off requests from a *same-site*
//! origin (another subdomain, which may be less trusted), not off old browsers, and it does
//! nothing against login CSRF (signing the victim into the attacker's account), which needs no
//! cookie at all.
//!
//! The guard refuses (403) every request with an unsafe method (anything but GET, HEAD, OPTIONS
//! and TRACE) that a browser reports as coming from another site:
//! - by Fetch Metadata: `Sec-Fetch-Site: cross-site` or `same-site`;
//! - without Fetch Metadata (older browsers): an `Origin` that is not this app's own (the
//!   request's `Host`, or one of the origins allowed with [`allow_origin`](CrossSiteGuard::allow_origin)),
//!   `Origin: null` included.
//!
//! Requests that carry neither header are not from a browser (curl, mobile apps) and pass. A
//! request that [`SessionLayer`](crate::SessionLayer) authenticated by a **bearer token** passes
//! too: a page cannot make a browser attach one. Any other `Authorization` header (Basic,
//! Negotiate, which browsers add by themselves) exempts nothing. So place the guard *inside* the
//! session layer, where it sees the session the layer found:
//!
//! ```
//! use axum::{Router, routing::post};
//! use session_layer::{CrossSiteGuard, MemoryStore, SessionConfig, SessionLayer, SessionManager};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = SessionManager::new(MemoryStore::new(), SessionConfig::default())?;
//! let app: Router = Router::new()
//!     .route("/api/sessions/revoke-others", post(|| async { "ok" }))
//!     .layer(CrossSiteGuard::new())       // runs second: sees the session
//!     .layer(SessionLayer::new(manager)); // runs first
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::extract::{Authenticated, Transport};

const FORBIDDEN_BODY: &str = r#"{"error":"forbidden_origin","message":"this request came from another site; send it from the app's own pages"}"#;

/// Layer that applies [`CrossSiteGuardService`]; see the [module docs](self) for the threat it
/// covers and where to place it.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct CrossSiteGuard {
    allowed: Arc<[HeaderValue]>,
}

impl CrossSiteGuard {
    /// A guard that accepts the app's own origin only (the one the request's `Host` names).
    pub fn new() -> Self {
        Self::default()
    }

    /// Also accepts requests from `origin` (`https://app.example.com`: scheme, host and port,
    /// no path), for a front end served from another origin.
    pub fn allow_origin(self, origin: HeaderValue) -> Self {
        let mut allowed = self.allowed.to_vec();
        allowed.push(origin);
        Self {
            allowed: allowed.into(),
        }
    }
}

impl<S> Layer<S> for CrossSiteGuard {
    type Service = CrossSiteGuardService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CrossSiteGuardService {
            inner,
            allowed: Arc::clone(&self.allowed),
        }
    }
}

/// Refuses cross-site writes with `403` and a JSON body
/// `{"error": "forbidden_origin", "message": "..."}`; see [`CrossSiteGuard`].
#[derive(Debug, Clone)]
pub struct CrossSiteGuardService<S> {
    inner: S,
    allowed: Arc<[HeaderValue]>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CrossSiteGuardService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<&'static str>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = GuardFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if is_forged(&request, &self.allowed) {
            tracing::info!(
                method = %request.method(),
                path = request.uri().path(),
                "cross-site request refused"
            );
            return GuardFuture {
                state: State::Refused {
                    response: Some(forbidden()),
                },
            };
        }
        GuardFuture {
            state: State::Inner {
                future: self.inner.call(request),
            },
        }
    }
}

pin_project! {
    /// Response future of [`CrossSiteGuardService`].
    pub struct GuardFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Inner {
            #[pin]
            future: F,
        },
        // The 403, handed out once.
        Refused {
            response: Option<Response<B>>,
        },
    }
}

impl<F, B, E> Future for GuardFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future } => future.poll(cx),
            StateProj::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polled again after it completed: a contract breach by the caller.
                None => Poll::Pending,
            },
        }
    }
}

fn is_forged<B>(request: &Request<B>, allowed: &[HeaderValue]) -> bool {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    let bearer = request
        .extensions()
        .get::<Authenticated>()
        .is_some_and(|Authenticated(transport)| *transport == Transport::Bearer);
    !safe && !bearer && from_another_site(request.headers(), allowed)
}

/// Whether a browser says this request came from another site.
fn from_another_site(headers: &HeaderMap, allowed: &[HeaderValue]) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.as_bytes();
        return site.eq_ignore_ascii_case(b"cross-site") || site.eq_ignore_ascii_case(b"same-site");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    if allowed.contains(origin) {
        return false;
    }
    // `scheme://host[:port]` against the Host header; `Origin: null` (sandboxed frames, some
    // redirects) or no Host can never be the app's own.
    let authority = origin
        .as_bytes()
        .split_at_checked(
            origin
                .as_bytes()
                .iter()
                .position(|&b| b == b':')
                .unwrap_or(0),
        )
        .and_then(|(_, rest)| rest.strip_prefix(b"://"));
    match (authority, headers.get(header::HOST)) {
        (Some(authority), Some(host)) => !authority.eq_ignore_ascii_case(host.as_bytes()),
        _ => true,
    }
}

fn forbidden<B: From<&'static str>>() -> Response<B> {
    let mut response = Response::new(B::from(FORBIDDEN_BODY));
    *response.status_mut() = StatusCode::FORBIDDEN;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn same_origin_and_non_browsers_pass() {
        let none: &[HeaderValue] = &[];
        assert!(!from_another_site(&headers(&[]), none));
        assert!(!from_another_site(
            &headers(&[("host", "127.0.0.1:3000")]),
            none
        ));
        assert!(!from_another_site(
            &headers(&[
                ("host", "127.0.0.1:3000"),
                ("origin", "http://127.0.0.1:3000")
            ]),
            none
        ));
        assert!(!from_another_site(
            &headers(&[("sec-fetch-site", "same-origin")]),
            none
        ));
        assert!(!from_another_site(
            &headers(&[("sec-fetch-site", "none")]),
            none
        ));
        let allowed = [HeaderValue::from_static("https://app.example")];
        assert!(!from_another_site(
            &headers(&[("host", "api.example"), ("origin", "https://app.example")]),
            &allowed
        ));
    }

    #[test]
    fn other_sites_are_refused() {
        let none: &[HeaderValue] = &[];
        for site in ["cross-site", "same-site", "Cross-Site"] {
            assert!(from_another_site(
                &headers(&[("sec-fetch-site", site)]),
                none
            ));
        }
        for origin in [
            "https://evil.example",
            "null",
            "http://127.0.0.1:3001",
            "garbage",
        ] {
            let h = [("host", "127.0.0.1:3000"), ("origin", origin)];
            assert!(from_another_site(&headers(&h), none), "{origin}");
        }
        assert!(from_another_site(&headers(&[("origin", "http://x")]), none));
    }
}
