//! Password-reset requests, answered before they are worked on (`demo-app/API.md`,
//! `POST /api/auth/password-reset/request`).
//!
//! The handler does the same thing for every well-formed body, account or not: it puts the
//! email on a bounded queue and answers `202`. One background task does the real work in
//! order: look the account up, issue a token unless [`TOKENS_PER_HOUR`] were issued to it in the
//! last hour, and log the stand-in for the email. So the answer's timing cannot tell whether an
//! account exists, and flooding requests cannot make the app do more than one database round of
//! work at a time (beyond the queue, requests are dropped, still with `202`).

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::accounts::{Db, is_valid_email};
use crate::error::ApiError;

/// Reset tokens issued per account per hour; further requests are answered and ignored.
pub(crate) const TOKENS_PER_HOUR: i64 = 3;

/// Requests waiting for the background task.
const QUEUE: usize = 1024;

/// The sending side of the queue; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct ResetQueue {
    sender: mpsc::Sender<String>,
}

impl ResetQueue {
    /// The queue, and the task that works it off (it ends when every sender is gone).
    pub(crate) fn start(db: Db) -> (Self, JoinHandle<()>) {
        let (sender, mut receiver) = mpsc::channel::<String>(QUEUE);
        let worker = tokio::spawn(async move {
            while let Some(email) = receiver.recv().await {
                if let Err(error) = issue(&db, &email).await {
                    // Already logged with its cause; the client got its 202 long ago.
                    tracing::debug!(%error, "a password reset request was not served");
                }
            }
        });
        (Self { sender }, worker)
    }

    /// Queues a request for `email` (normalised); never waits.
    pub(crate) fn push(&self, email: String) {
        if !is_valid_email(&email) {
            return;
        }
        if self.sender.try_send(email).is_err() {
            tracing::warn!("password reset queue full; a request was dropped");
        }
    }
}

async fn issue(db: &Db, email: &str) -> Result<(), ApiError> {
    let Some(user_id) = db.user_id_by_email(email).await? else {
        return Ok(());
    };
    if db.reset_tokens_issued_last_hour(user_id).await? >= TOKENS_PER_HOUR {
        return Ok(());
    }
    let token = db.create_reset_token(user_id).await?;
    // The demo has no mailer: this line stands in for the email (the one secret the demo ever
    // logs, see `demo-app/API.md`).
    tracing::info!("password reset token for {email}: {}", token.expose());
    Ok(())
}
