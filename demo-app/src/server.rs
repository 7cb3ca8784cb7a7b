//! [`serve`]: HTTP/1.1 on a TCP listener with hyper's connection builder, hardened against slow
//! clients, and a shutdown that is graceful yet bounded (`demo-app/API.md`, "Starting it").
//!
//! - A connection that has not sent a complete request head within [`HEADER_READ_TIMEOUT`] is
//!   closed. hyper starts that clock whenever it waits for a head, so it covers a half-sent head
//!   as well as an idle keep-alive connection.
//! - A connection whose writes make no progress for [`WRITE_STALL_TIMEOUT`] (a client that sends
//!   requests and never reads the answers) is closed.
//! - At most [`ConnectionLimits::max_connections`] connections are open at once, and at most
//!   [`ConnectionLimits::max_per_address`] from one client address (counted like the throttle
//!   counts addresses; peers within `TRUSTED_PROXIES` are exempt, they carry many clients).
//!   Beyond, a new connection is closed as soon as it is accepted, so clients cannot exhaust the
//!   process's file descriptors.
//! - Request bodies and overall request time are bounded by the router (`crate::build_app`).
//! - On shutdown the listener closes at once. Connections with a request in flight (handler
//!   running or response being written) finish it and close; every other connection (idle, or
//!   still sending a head) is dropped at once. Whatever is left after [`SHUTDOWN_GRACE`] is
//!   dropped, so `serve` returns in bounded time even when clients hold connections open.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

use crate::throttle::Address;

/// How long a client may take to send a complete request head (also the longest a keep-alive
/// connection may sit idle).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may go without any write making progress while it has something to
/// write (the client does not read its answers).
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections open at once, by default: well below the usual limit of 1024 file descriptors,
/// which the database pool and the process need too.
pub const MAX_CONNECTIONS: usize = 512;

/// Connections open at once from one client address, by default.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 64;

/// How long in-flight requests get to finish once shutdown has begun.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long to pause accepting after an accept error (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// How often a connection waiting for shutdown checks whether its request has finished.
const IDLE_POLL: Duration = Duration::from_millis(20);

/// How many connections [`serve_with`] keeps open, overall and per client address.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one address (an IPv6 client is its /64).
    pub max_per_address: usize,
    /// Peers exempt from `max_per_address`: the trusted proxies, which carry many clients.
    pub exempt: Vec<IpNet>,
}

impl Default for ConnectionLimits {
    /// [`MAX_CONNECTIONS`] and [`MAX_CONNECTIONS_PER_ADDRESS`], nobody exempt.
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            max_per_address: MAX_CONNECTIONS_PER_ADDRESS,
            exempt: Vec::new(),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then shuts down as described in the
/// [module docs](self). Handlers can extract `ConnectInfo<SocketAddr>` (the socket peer).
/// Uses the default [`ConnectionLimits`]; see [`serve_with`].
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
    serve_with(listener, router, shutdown, ConnectionLimits::default()).await
}

/// [`serve`] with these connection limits (e.g. with the trusted proxies exempt, see
/// [`crate::AppHandle::connection_limits`]).
///
/// # Errors
///
/// As [`serve`].
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
    limits: ConnectionLimits,
) -> io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let open = Arc::new(OpenConnections::default());
    let mut refused: u64 = 0;

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
        let Some(slot) = open.take(peer.ip(), &limits) else {
            // Over a limit: closed at once (dropping the stream). Logged in bulk, so that a
            // flood of connections cannot flood the logs.
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(refused, "connection limit reached; closing new connections");
            }
            continue;
        };
        connections.spawn(serve_connection(
            Arc::clone(&builder),
            stream,
            peer,
            router.clone(),
            stop_rx.clone(),
            slot,
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
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    mut stop: watch::Receiver<bool>,
    // Held while the connection is open.
    _slot: Slot,
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
    let io = StallGuard::new(stream, WRITE_STALL_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(io), service);
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

/// The open connections, overall and per address.
#[derive(Debug, Default)]
struct OpenConnections {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// At most `max_connections` entries: one is removed when its count reaches zero.
    by_address: HashMap<Address, usize>,
}

impl OpenConnections {
    /// A place for a connection from `ip`, or `None` when a limit is reached.
    fn take(self: &Arc<Self>, ip: IpAddr, limits: &ConnectionLimits) -> Option<Slot> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= limits.max_connections {
            return None;
        }
        let address = if limits.exempt.iter().any(|net| net.contains(&ip)) {
            None
        } else {
            let address = Address::of(Some(ip));
            let count = counts.by_address.entry(address).or_insert(0);
            if *count >= limits.max_per_address {
                return None;
            }
            *count += 1;
            Some(address)
        };
        counts.total += 1;
        Some(Slot {
            open: Arc::clone(self),
            address,
        })
    }
}

/// A connection's place in [`OpenConnections`], given back on drop.
#[derive(Debug)]
struct Slot {
    open: Arc<OpenConnections>,
    /// `None` for an exempt peer.
    address: Option<Address>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .open
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(address) = self.address
            && let Some(count) = counts.by_address.get_mut(&address)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.by_address.remove(&address);
            }
        }
    }
}

/// A stream whose writes fail with `TimedOut` once they have made no progress for `limit`:
/// hyper then closes the connection. The clock runs only while a write waits (pending), and
/// starts over whenever one goes through, so a slow but reading client is never cut off, and
/// an idle connection is left to the head timeout.
struct StallGuard<S> {
    inner: S,
    limit: Duration,
    /// Armed when a write first returns `Pending`; cleared by any write that goes through.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> StallGuard<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    /// After a write attempt: progress clears the clock; `Pending` starts it (or checks it).
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + limit)));
        // Registers the waker, so the task is woken when the limit passes.
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client has not read for too long",
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, poll)
    }
}
