//! Attack, PostgreSQL specifics: row-lock order of the batched statements. Two instances write
//! their touch batches (one UPDATE over many rows each), a sign-in applies `recent_activity` and
//! evicts, a password reset runs `revoke_all`: each locks the same rows in its own order.

#![cfg(feature = "postgres")]

#[macro_use]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use session_layer::{NewSession, RevocationReason, SessionConfig, SessionManager, SessionStore};
use time::OffsetDateTime;
use uuid::Uuid;

/// Concurrent touch batches (two instances' writers) over one user's sessions, in different
/// orders, racing a `revoke_all`: PostgreSQL detects a deadlock and aborts one statement. An
/// aborted `revoke_all` is a password reset whose revocation failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn batched_updates_do_not_deadlock_each_other_or_revoke_all() {
    let store: Arc<dyn SessionStore> = common::postgres().await;
    let config = SessionConfig::builder()
        .max_sessions_per_user(None)
        .build()
        .unwrap();
    let manager = SessionManager::from_arc(store.clone(), config).unwrap();
    let deadlocks = Arc::new(AtomicUsize::new(0));
    let mut failed_revocations = 0;
    for round in 0..15 {
        let user = Uuid::now_v7();
        let mut ids = Vec::new();
        for _ in 0..150 {
            ids.push(
                manager
                    .create(NewSession::new(user))
                    .await
                    .unwrap()
                    .into_parts()
                    .1
                    .id,
            );
        }
        let mut writers = Vec::new();
        for w in 0..4usize {
            let store = store.clone();
            let deadlocks = deadlocks.clone();
            let mut order = ids.clone();
            // Different instances see different sessions first.
            let shift = w * 37 % order.len();
            order.rotate_left(shift);
            if w % 2 == 1 {
                order.reverse();
            }
            writers.push(tokio::spawn(async move {
                for i in 0..5 {
                    let at = OffsetDateTime::now_utc() + Duration::from_millis(i);
                    let batch: Vec<_> = order.iter().map(|id| (*id, at)).collect();
                    if let Err(e) = store.touch(&batch).await {
                        let text = format!("{e:?} {e}");
                        if text.contains("deadlock") {
                            deadlocks.fetch_add(1, Ordering::SeqCst);
                        } else {
                            panic!("touch: {text}");
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        match manager
            .revoke_all(user, RevocationReason::PasswordReset)
            .await
        {
            Ok(_) => {}
            Err(e) => {
                eprintln!("round {round}: revoke_all failed: {e:?}");
                failed_revocations += 1;
            }
        }
        for w in writers {
            w.await.unwrap();
        }
    }
    let deadlocks = deadlocks.load(Ordering::SeqCst);
    eprintln!("touch deadlocks: {deadlocks}; failed revoke_all: {failed_revocations}");
    assert_eq!(
        failed_revocations, 0,
        "revoke_all aborted (deadlock) {failed_revocations} times"
    );
    assert_eq!(deadlocks, 0, "touch batches deadlocked {deadlocks} times");
}
