//! The layer and its service.

use std::task::{Context, Poll};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::future::ResponseFuture;
use crate::credential::credential;
use crate::extract::CurrentSession;
use crate::manager::SessionManager;
use crate::validate::Cached;

/// Applies [`SessionService`] to a service. Build it from the application's
/// [`SessionManager`]; see the [module docs](crate::layer) for what it does per request.
#[derive(Debug, Clone)]
#[must_use]
pub struct SessionLayer {
    manager: SessionManager,
}

impl SessionLayer {
    /// A layer that authenticates requests against `manager`.
    pub fn new(manager: SessionManager) -> Self {
        Self { manager }
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            manager: self.manager.clone(),
        }
    }
}

/// Middleware that puts a [`CurrentSession`] into the request extensions when the request
/// carries a valid session token.
#[derive(Debug, Clone)]
pub struct SessionService<S> {
    inner: S,
    manager: SessionManager,
}

impl<S> SessionService<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, manager: SessionManager) -> Self {
        Self { inner, manager }
    }

    /// A [`SessionLayer`] for `manager`.
    pub fn layer(manager: SessionManager) -> SessionLayer {
        SessionLayer::new(manager)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let Some((hash, transport)) =
            credential(request.headers(), self.manager.config().cookie().name())
        else {
            return ResponseFuture::inner(self.inner.call(request));
        };
        match self.manager.authenticate_cached(&hash) {
            Cached::Hit(entry) => {
                request
                    .extensions_mut()
                    .insert(CurrentSession::new(entry, transport));
                ResponseFuture::inner(self.inner.call(request))
            }
            Cached::Refused => ResponseFuture::inner(self.inner.call(request)),
            Cached::Unknown => {
                // The store must be asked, so the ready service moves into the future; see
                // https://docs.rs/tower/latest/tower/trait.Service.html#be-careful-when-cloning-inner-services
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let manager = self.manager.clone();
                let lookup = Box::pin(async move { manager.authenticate(hash).await });
                ResponseFuture::lookup(lookup, inner, request, transport)
            }
        }
    }
}
