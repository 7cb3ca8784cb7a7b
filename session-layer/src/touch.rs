//! `last_active_at` bookkeeping: uses are queued in memory and written in batches, off the
//! request path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::clock::from_us;
use crate::metrics;
use crate::store::SessionStore;
use crate::user_id::UserId;

/// Pending touches beyond which a batch is written before the next tick.
const BATCH_LIMIT: usize = 1_000;
/// Pending touches kept across failed writes; past it the oldest news is dropped (a touch is
/// an optimisation of idle tracking, not a record that must survive an outage).
const PENDING_LIMIT: usize = 100_000;

enum Message {
    Touch(Uuid, i64),
    Flush(oneshot::Sender<()>),
}

/// Cheap handle that queues touches for the writer task.
#[derive(Clone)]
pub(crate) struct TouchSender(mpsc::UnboundedSender<Message>);

impl TouchSender {
    /// Queues "session `id` was used at `at_us`". Never blocks.
    pub(crate) fn touch(&self, id: Uuid, at_us: i64) {
        // The writer only stops when every sender is gone, so a send cannot fail while `self`
        // exists; if it ever did, losing one touch is harmless.
        let _ = self.0.send(Message::Touch(id, at_us));
    }

    /// Writes everything queued so far and waits for it.
    pub(crate) async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.0.send(Message::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// Starts the writer task on the current Tokio runtime.
pub(crate) fn spawn_writer<U: UserId>(
    store: Arc<dyn SessionStore<U>>,
    every: Duration,
) -> TouchSender {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(store, rx, every));
    TouchSender(tx)
}

async fn run<U: UserId>(
    store: Arc<dyn SessionStore<U>>,
    mut rx: mpsc::UnboundedReceiver<Message>,
    every: Duration,
) {
    let mut pending: HashMap<Uuid, i64> = HashMap::new();
    let mut failing = 0_u64;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = rx.recv() => match message {
                Some(Message::Touch(id, at)) => {
                    let slot = pending.entry(id).or_insert(at);
                    *slot = (*slot).max(at);
                    if pending.len() >= BATCH_LIMIT {
                        write(&*store, &mut pending, &mut failing).await;
                    }
                }
                Some(Message::Flush(done)) => {
                    write(&*store, &mut pending, &mut failing).await;
                    let _ = done.send(());
                }
                None => {
                    // Every sender is gone: the manager was dropped. Write what is left.
                    write(&*store, &mut pending, &mut failing).await;
                    return;
                }
            },
            _ = tick.tick() => write(&*store, &mut pending, &mut failing).await,
        }
    }
}

/// One warning per outage (`failing` counts the failed writes in a row), not one per tick.
async fn write<U: UserId>(
    store: &dyn SessionStore<U>,
    pending: &mut HashMap<Uuid, i64>,
    failing: &mut u64,
) {
    if pending.is_empty() {
        return;
    }
    let batch: Vec<(Uuid, OffsetDateTime)> =
        pending.iter().map(|(id, at)| (*id, from_us(*at))).collect();
    match store.touch(&batch).await {
        Ok(()) => {
            pending.clear();
            if *failing > 0 {
                tracing::info!(failed_writes = *failing, "recording session activity again");
                *failing = 0;
            }
        }
        Err(error) => {
            ::metrics::counter!(metrics::STORE_ERRORS).increment(1);
            if *failing == 0 {
                tracing::warn!(%error, sessions = batch.len(), "could not record session activity; will retry quietly until it works");
            } else {
                tracing::debug!(%error, sessions = batch.len(), "could not record session activity");
            }
            *failing += 1;
            if pending.len() > PENDING_LIMIT {
                pending.clear();
            }
        }
    }
}
