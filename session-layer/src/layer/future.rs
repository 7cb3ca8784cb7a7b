//! The response future: either the inner service's future (cache hit, or no credential), or a
//! store lookup followed by it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::cache::SessionEntry;
use crate::error::StoreError;
use crate::extract::{CurrentSession, SessionUnavailable, Transport};

type Lookup = Pin<Box<dyn Future<Output = Result<Option<Arc<SessionEntry>>, StoreError>> + Send>>;

pin_project! {
    /// Response future of [`SessionService`](super::SessionService).
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Lookup {
            lookup: Lookup,
            // Taken exactly once, when the lookup completes and the state moves on.
            pending: Option<(S, Request<ReqBody>)>,
            transport: Transport,
        },
        Inner {
            #[pin]
            future: S::Future,
        },
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn inner(future: S::Future) -> Self {
        Self {
            state: State::Inner { future },
        }
    }

    pub(crate) fn lookup(
        lookup: Lookup,
        service: S,
        request: Request<ReqBody>,
        transport: Transport,
    ) -> Self {
        Self {
            state: State::Lookup {
                lookup,
                pending: Some((service, request)),
                transport,
            },
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Inner { future } => return future.poll(cx),
                StateProj::Lookup {
                    lookup,
                    pending,
                    transport,
                } => {
                    let found = ready!(lookup.as_mut().poll(cx));
                    // `pending` is Some from construction until this line, and the state is
                    // replaced right below, so this arm never runs twice.
                    let (mut service, mut request) = pending
                        .take()
                        .expect("lookup state is left after one completion");
                    match found {
                        Ok(Some(entry)) => {
                            request
                                .extensions_mut()
                                .insert(CurrentSession::new(entry, *transport));
                        }
                        Ok(None) => {}
                        Err(_) => {
                            request.extensions_mut().insert(SessionUnavailable);
                        }
                    }
                    let future = service.call(request);
                    this.state.set(State::Inner { future });
                }
            }
        }
    }
}
