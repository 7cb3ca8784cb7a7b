//! Cross-instance invalidation: applies what a store's notification feed reports (another
//! instance revoked or rotated out these tokens; the feed was lost; it is back) to this
//! instance's cache.

use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};

use crate::cache::SessionCache;
use crate::store::Invalidation;

/// Starts relaying `feed` into `cache` on the current runtime; it stops when the returned
/// sender is dropped, the cache is gone, or the feed ends.
pub(crate) fn spawn_relay(
    cache: &Arc<SessionCache>,
    feed: mpsc::UnboundedReceiver<Invalidation>,
) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(relay(Arc::downgrade(cache), feed, stopped));
    stop
}

async fn relay(
    cache: Weak<SessionCache>,
    mut feed: mpsc::UnboundedReceiver<Invalidation>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let invalidation = tokio::select! {
            _ = &mut stop => return,
            invalidation = feed.recv() => invalidation,
        };
        let Some(cache) = cache.upgrade() else { return };
        match invalidation {
            Some(Invalidation::Tokens(hashes)) => {
                for hash in hashes {
                    cache.invalidate(hash).await;
                }
            }
            Some(Invalidation::FeedRestored) => cache.clear(true),
            Some(Invalidation::FeedLost) => cache.clear(false),
            None => {
                cache.clear(false);
                tracing::error!("session invalidation feed ended; the cache stays bypassed");
                return;
            }
        }
    }
}
