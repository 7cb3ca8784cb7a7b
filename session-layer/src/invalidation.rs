//! Cross-instance invalidation: applies what a store's notification feed reports (another
//! instance revoked or rotated out these tokens; the feed holds a lease; it was lost; it is back)
//! to this instance's cache, and reports when the cache stops and starts being trusted.

use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::cache::SessionCache;
use crate::clock::{Clock, duration_us};
use crate::metrics;
use crate::store::Invalidation;
use crate::user_id::UserId;

/// Starts relaying `feed` into `cache` on the current runtime; it stops when the returned
/// sender is dropped, the cache is gone, or the feed ends.
pub(crate) fn spawn_relay<U: UserId>(
    cache: &Arc<SessionCache<U>>,
    clock: Clock,
    feed: mpsc::UnboundedReceiver<Invalidation>,
) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(relay(Arc::downgrade(cache), clock, feed, stopped));
    stop
}

async fn relay<U: UserId>(
    cache: Weak<SessionCache<U>>,
    clock: Clock,
    mut feed: mpsc::UnboundedReceiver<Invalidation>,
    mut stop: oneshot::Receiver<()>,
) {
    let lapses = ::metrics::counter!(metrics::CACHE_LEASE_LAPSES);
    // The end of the current lease, while the cache is trusted.
    let mut lease: Option<Instant> = None;
    loop {
        let lapse = async {
            match lease {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        };
        let invalidation = tokio::select! {
            _ = &mut stop => return,
            () = lapse => {
                lease = None;
                lapses.increment(1);
                tracing::warn!("session invalidation lease lapsed; every request asks the store until the feed is heard again");
                continue;
            }
            invalidation = feed.recv() => invalidation,
        };
        let Some(cache) = cache.upgrade() else { return };
        match invalidation {
            Some(Invalidation::Tokens { hashes, ack }) => {
                for hash in hashes {
                    cache.invalidate(hash).await;
                }
                ack.done();
            }
            Some(Invalidation::Lease { until }) => {
                let remaining = until.saturating_duration_since(Instant::now());
                cache.trust_until(clock.monotonic_us().saturating_add(duration_us(remaining)));
                if lease.is_none() {
                    tracing::info!("session invalidation feed heard; the cache serves hits again");
                }
                lease = Some(until);
            }
            Some(Invalidation::FeedRestored) => cache.clear(),
            Some(Invalidation::FeedLost) => {
                cache.clear();
                if lease.take().is_some() {
                    tracing::warn!(
                        "session invalidation feed lost; every request asks the store until it is back"
                    );
                }
            }
            None => {
                cache.clear();
                tracing::error!("session invalidation feed ended; the cache stays bypassed");
                return;
            }
        }
    }
}
