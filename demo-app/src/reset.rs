//! Password-reset requests, answered before they are worked on (`demo-app/API.md`,
//! `POST /api/auth/password-reset/request`).
//!
//! The handler does the same thing for every well-formed body, account or not: it puts the
//! email on a bounded queue and answers `202`. One background task does the real work in
//! order: look the account up, issue a token unless [`TOKENS_PER_HOUR`] were issued to it in the
//! last hour, and log the stand-in for the email. So the answer's timing cannot tell whether an
//! account exists, and flooding requests cannot make the app do more than one database round of
//! work at a time.
//!
//! The queue is shared, so it is rationed before anything enters it:
//!
//! - a request for an email that is already waiting is answered and not queued again (the
//!   waiting one does the same work);
//! - each client address (as the throttle counts it) may have at most
//!   [`WAITING_PER_ADDRESS`] requests waiting; beyond, `429 too_many_attempts`. So one client
//!   cannot fill the queue and crowd out everyone else's requests;
//! - when the queue is full all the same (many addresses at once), a request is answered `202`
//!   and dropped; drops are logged at most once per [`DROP_REPORT_EVERY`], with their count.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::accounts::{Db, is_valid_email};
use crate::error::ApiError;
use crate::throttle::Address;

/// Reset tokens issued per account per hour; further requests are answered and ignored.
pub(crate) const TOKENS_PER_HOUR: i64 = 3;

/// Requests waiting for the background task.
const QUEUE: usize = 1024;

/// Requests one client address may have waiting at once.
pub(crate) const WAITING_PER_ADDRESS: usize = 4;

/// Dropped requests are logged at most this often.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(10);

/// What is waiting, by email and by address (both at most [`QUEUE`] entries).
#[derive(Debug, Default)]
struct Waiting {
    emails: HashSet<String>,
    by_address: HashMap<Address, usize>,
    /// Requests dropped since the last report, and when that was.
    dropped: u64,
    reported: Option<Instant>,
}

impl Waiting {
    /// The worker took `email`, queued by `address`.
    fn taken(&mut self, email: &str, address: Address) {
        self.emails.remove(email);
        if let Some(count) = self.by_address.get_mut(&address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.by_address.remove(&address);
            }
        }
    }
}

/// The sending side of the queue; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct ResetQueue {
    sender: mpsc::Sender<(String, Address)>,
    waiting: Arc<Mutex<Waiting>>,
}

impl ResetQueue {
    /// The queue, and the task that works it off (it ends when every sender is gone).
    pub(crate) fn start(db: Db) -> (Self, JoinHandle<()>) {
        let (sender, mut receiver) = mpsc::channel::<(String, Address)>(QUEUE);
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let worker = {
            let waiting = Arc::clone(&waiting);
            tokio::spawn(async move {
                while let Some((email, address)) = receiver.recv().await {
                    // No longer waiting: a new request for it from now on is queued again.
                    waiting
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .taken(&email, address);
                    if let Err(error) = issue(&db, &email).await {
                        // Already logged with its cause; the client got its 202 long ago.
                        tracing::debug!(%error, "a password reset request was not served");
                    }
                }
            })
        };
        (Self { sender, waiting }, worker)
    }

    /// Queues a request for `email` (normalised) from `client`; never waits. `Err` (`429`)
    /// when `client` has [`WAITING_PER_ADDRESS`] requests waiting already.
    pub(crate) fn push(&self, email: String, client: Option<IpAddr>) -> Result<(), ApiError> {
        if !is_valid_email(&email) {
            return Ok(());
        }
        let address = Address::of(client);
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting.emails.contains(&email) {
            return Ok(());
        }
        let count = waiting.by_address.get(&address).copied().unwrap_or(0);
        if count >= WAITING_PER_ADDRESS {
            return Err(ApiError::TooManyAttempts(Duration::from_secs(1)));
        }
        // Under the lock: the worker cannot take it before it is counted as waiting.
        match self.sender.try_send((email.clone(), address)) {
            Ok(()) => {
                waiting.emails.insert(email);
                waiting.by_address.insert(address, count + 1);
            }
            Err(_) => {
                // Full (or the worker is gone): answered all the same, and reported in bulk so
                // that a flood cannot fill the logs.
                waiting.dropped += 1;
                let now = Instant::now();
                if waiting
                    .reported
                    .is_none_or(|at| now.duration_since(at) >= DROP_REPORT_EVERY)
                {
                    tracing::warn!(
                        dropped = waiting.dropped,
                        "password reset queue full; requests were dropped"
                    );
                    waiting.dropped = 0;
                    waiting.reported = Some(now);
                }
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue nobody works off, to look at what enters it.
    fn idle_queue() -> (ResetQueue, mpsc::Receiver<(String, Address)>) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let queue = ResetQueue {
            sender,
            waiting: Arc::new(Mutex::new(Waiting::default())),
        };
        (queue, receiver)
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_waiting_email_is_not_queued_twice_and_an_address_waits_for_four_at_most() {
        let (queue, mut receiver) = idle_queue();
        for _ in 0..100 {
            queue
                .push("flood@example.com".to_owned(), ip("192.0.2.1"))
                .unwrap();
        }
        for n in 1..WAITING_PER_ADDRESS {
            queue
                .push(format!("user{n}@example.com"), ip("192.0.2.1"))
                .unwrap();
        }
        assert!(matches!(
            queue.push("one-more@example.com".to_owned(), ip("192.0.2.1")),
            Err(ApiError::TooManyAttempts(_))
        ));
        // Another address is not affected; nor is a request for an email that waits already.
        queue
            .push("victim@example.com".to_owned(), ip("198.51.100.1"))
            .unwrap();
        queue
            .push("flood@example.com".to_owned(), ip("192.0.2.1"))
            .unwrap();
        assert_eq!(receiver.len(), WAITING_PER_ADDRESS + 1);
        // Once the worker has taken one, the address may queue one more.
        let (email, address) = receiver.try_recv().unwrap();
        assert_eq!(email, "flood@example.com");
        queue.waiting.lock().unwrap().taken(&email, address);
        queue
            .push("flood@example.com".to_owned(), ip("192.0.2.1"))
            .unwrap();
        assert_eq!(receiver.len(), WAITING_PER_ADDRESS + 1);
    }
}
