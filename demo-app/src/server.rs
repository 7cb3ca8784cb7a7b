//! [`serve`]: HTTP/1.1 on a TCP listener with hyper's connection builder, hardened against slow
//! clients, and a shutdown that is graceful yet bounded (`demo-app/API.md`, "Starting it").
//!
//! - A connection that has not sent a complete request head within [`HEADER_READ_TIMEOUT`] is
//!   closed. hyper starts that clock whenever it waits for a head, so it covers a half-sent head
//!   as well as an idle keep-alive connection.
//! - On shutdown the listener closes at once. Connections with a request in flight (handler
//!   running or response being written) finish it and close; every other connection (idle, or
//!   still sending a head) is dropped at once. Whatever is left after [`SHUTDOWN_GRACE`] is
//!   dropped, so `serve` returns in bounded time even when clients hold connections open.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt as _;

/// How long a client may take to send a complete request head (also the longest a keep-alive
/// connection may sit idle).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long in-flight requests get to finish once shutdown has begun.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long to pause accepting after an accept error (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// How often a connection waiting for shutdown checks whether its request has finished.
const IDLE_POLL: Duration = Duration::from_millis(20);

/// Serves `router` on `listener` until `shutdown` resolves, then shuts down as described in the
/// [module docs](self). Handlers can extract `ConnectInfo<SocketAddr>` (the socket peer).
///
/// # Errors
///
/// Never in practice: accept errors (such as running out of file descriptors) are logged and
/// retried; the `Result` leaves room for a listener that cannot be used at all.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();

    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed; pausing");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        // Forget finished connections, so the set stays as large as the open ones.
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_connection(
            Arc::clone(&builder),
            stream,
            peer,
            router.clone(),
            stop_rx.clone(),
        ));
    }

    drop(listener);
    // No receiver left (no connection open) is fine.
    let _ = stop_tx.send(true);
    let open = connections.len();
    if open > 0 {
        tracing::info!(open, "closing connections; in-flight requests finish first");
    }
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "shutdown grace period over; closing the remaining connections"
        );
        connections.shutdown().await;
    }
    Ok(())
}

async fn serve_connection(
    builder: Arc<hyper::server::conn::http1::Builder>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let service = {
        let in_flight = Arc::clone(&in_flight);
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let guard = InFlight::enter(&in_flight);
            request.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            async move {
                let response = router.oneshot(request.map(Body::new)).await?;
                // The guard lives until hyper has written (and dropped) the whole body.
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(Tracked {
                        body,
                        _guard: guard,
                    })
                }))
            }
        })
    };
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);

    let stopping = tokio::select! {
        result = connection.as_mut() => {
            log_connection_end(result);
            return;
        }
        changed = stop.wait_for(|stop| *stop) => changed.is_ok(),
    };
    if !stopping {
        // The server is gone without saying so; nothing left to wait for.
        return;
    }
    // Finish the request in flight, if any, then close; keep-alive is off from here on.
    connection.as_mut().graceful_shutdown();
    tokio::select! {
        // The connection first: a head that has just arrived becomes a request in flight.
        biased;
        result = connection.as_mut() => log_connection_end(result),
        () = until_idle(&in_flight) => {}
    }
}

/// Resolves once no request is in flight on the connection (it may be idle, or still sending
/// a head that it will never complete).
async fn until_idle(in_flight: &AtomicUsize) {
    while in_flight.load(Ordering::Acquire) > 0 {
        tokio::time::sleep(IDLE_POLL).await;
    }
}

fn log_connection_end(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        // Timeouts, resets and malformed heads: the client's business, not an app failure.
        tracing::debug!(%error, "connection closed with an error");
    }
}

/// Counts a request as in flight from the moment hyper hands it over until its response body
/// is dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight.
struct Tracked {
    body: Body,
    /// Held, never read: dropping it ends the request's count.
    _guard: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        // `Body` is `Unpin`, and so is `Tracked`.
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
