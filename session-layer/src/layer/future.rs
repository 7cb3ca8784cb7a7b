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
use uuid::Uuid;

use crate::extract::{SessionUnavailable, Transport, authenticated};

type Lookup<U> =
    Pin<Box<dyn Future<Output = Result<Option<Arc<SessionEntry<U>>>, StoreError>> + Send>>;

pin_project! {
    /// Response future of [`SessionService`](super::SessionService).
    pub struct ResponseFuture<S, ReqBody, U = Uuid>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody, U>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, U>
    where
        S: Service<Request<ReqBody>>,
    {
        Lookup {
            lookup: Lookup<U>,
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

impl<S, ReqBody, U> ResponseFuture<S, ReqBody, U>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn inner(future: S::Future) -> Self {
        Self {
            state: State::Inner { future },
        }
    }

    pub(crate) fn lookup(
        lookup: Lookup<U>,
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

impl<S, ReqBody, ResBody, U> Future for ResponseFuture<S, ReqBody, U>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    U: crate::UserId,
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
                            authenticated(&mut request, entry, *transport);
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
