//! The layer and its service.

use std::task::{Context, Poll};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::future::ResponseFuture;
use crate::credential::credential;
use uuid::Uuid;

use crate::anomaly::Origin;
use crate::extract::authenticated;
use crate::manager::SessionManager;
use crate::user_id::UserId;
use crate::validate::Cached;

/// Applies [`SessionService`] to a service. Build it from the application's
/// [`SessionManager`]; see the [module docs](crate::layer) for what it does per request.
#[derive(Debug, Clone)]
#[must_use]
pub struct SessionLayer<U: UserId = Uuid> {
    manager: SessionManager<U>,
}

impl<U: UserId> SessionLayer<U> {
    /// A layer that authenticates requests against `manager`.
    pub fn new(manager: SessionManager<U>) -> Self {
        Self { manager }
    }
}

impl<S, U: UserId> Layer<S> for SessionLayer<U> {
    type Service = SessionService<S, U>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            manager: self.manager.clone(),
        }
    }
}

/// Middleware that puts a [`CurrentSession`](crate::CurrentSession) into the request extensions when the request
/// carries a valid session token.
#[derive(Debug, Clone)]
pub struct SessionService<S, U: UserId = Uuid> {
    inner: S,
    manager: SessionManager<U>,
}

impl<S, U: UserId> SessionService<S, U> {
    /// Wraps `inner`.
    pub fn new(inner: S, manager: SessionManager<U>) -> Self {
        Self { inner, manager }
    }

    /// A [`SessionLayer`] for `manager`.
    pub fn layer(manager: SessionManager<U>) -> SessionLayer<U> {
        SessionLayer::new(manager)
    }
}

impl<S: Clone, U: UserId> SessionService<S, U> {
    /// The ready inner service, for a future that calls it later; a clone takes its place. See
    /// https://docs.rs/tower/latest/tower/trait.Service.html#be-careful-when-cloning-inner-services
    fn take_inner(&mut self) -> S {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

impl<S, ReqBody, ResBody, U: UserId> Service<Request<ReqBody>> for SessionService<S, U>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, U>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let Some((hash, transport)) =
            credential(request.headers(), self.manager.config().cookie().name())
        else {
            return ResponseFuture::inner(self.inner.call(request));
        };
        let manager = &self.manager;
        let origin = || {
            Origin::of_request(
                request.headers(),
                request.extensions(),
                manager.config().trusted_proxies(),
            )
        };
        match manager.authenticate_cached(&hash) {
            Cached::Hit(entry) => {
                if let Some(reason) = manager.observe(&entry, origin()) {
                    // The hook wants the session gone before this request is served.
                    let manager = manager.clone();
                    let lookup = Box::pin(async move {
                        manager.revoke_anomalous(&entry.session, reason).await?;
                        Ok(None)
                    });
                    return ResponseFuture::lookup(lookup, self.take_inner(), request, transport);
                }
                authenticated(&mut request, entry, transport);
                ResponseFuture::inner(self.inner.call(request))
            }
            Cached::Refused => ResponseFuture::inner(self.inner.call(request)),
            Cached::Unknown => {
                let origin = origin().to_owned();
                let manager = manager.clone();
                let lookup = Box::pin(async move {
                    let found = manager.authenticate(hash).await?;
                    if let Some(entry) = &found
                        && let Some(reason) = manager.observe(entry, origin.as_origin())
                    {
                        manager.revoke_anomalous(&entry.session, reason).await?;
                        return Ok(None);
                    }
                    Ok(found)
                });
                ResponseFuture::lookup(lookup, self.take_inner(), request, transport)
            }
        }
    }
}
