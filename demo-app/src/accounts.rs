//! The demo's own accounts: users with argon2id password hashes, and password-reset tokens.
//! One statement text serves both databases.

use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use session_layer::{SessionToken, TokenHash};
use sqlx::{PgPool, SqlitePool};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::error::ApiError;
use crate::hashing::Hasher;
use crate::quota::{HashQuota, Permit, Requester};

/// How long a password-reset token is valid.
pub(crate) const RESET_TOKEN_LIFETIME: time::Duration = time::Duration::hours(1);

/// Minimum password length, in characters.
pub(crate) const MIN_PASSWORD_CHARS: usize = 8;

/// The app's database: the pool that the session store also uses.
#[derive(Debug, Clone)]
pub(crate) enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$pool` bound to the database's pool: one expression, and one statement
/// text, for both databases (sqlx binds `$N` on SQLite too).
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            Db::Postgres($pool) => $body,
            Db::Sqlite($pool) => $body,
        }
    };
}

/// The reset confirmation, in transaction `$tx` of either database.
macro_rules! reset_in {
    ($tx:expr, $token:expr, $now:expr, $password_hash:expr) => {
        async {
            let mut tx = $tx;
            let user = sqlx::query_scalar::<_, Uuid>(
                "UPDATE password_reset_tokens SET used_at = $2 \
                 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 \
                 RETURNING user_id",
            )
            .bind($token)
            .bind($now)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(user_id) = user else {
                return Ok(None);
            };
            sqlx::query(
                "UPDATE password_reset_tokens SET used_at = $2 \
                 WHERE user_id = $1 AND used_at IS NULL",
            )
            .bind(user_id)
            .bind($now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
                .bind(user_id)
                .bind($password_hash)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(user_id))
        }
    };
}

impl Db {
    /// Runs the app's migrations (table `_sqlx_migrations`, apart from the library's).
    pub(crate) async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match self {
            Self::Postgres(pool) => sqlx::migrate!("migrations/postgres").run(pool).await,
            Self::Sqlite(pool) => sqlx::migrate!("migrations/sqlite").run(pool).await,
        }
    }

    /// Inserts a user; `None` when the email is taken.
    pub(crate) async fn insert_user(
        &self,
        email: &str,
        password_hash: &str,
    ) -> Result<Option<Uuid>, ApiError> {
        let id = Uuid::now_v7();
        let now = OffsetDateTime::now_utc();
        on_pool!(self, |pool| sqlx::query_scalar::<_, Uuid>(
            "INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (email) DO NOTHING RETURNING id",
        )
        .bind(id)
        .bind(email)
        .bind(password_hash)
        .bind(now)
        .fetch_optional(pool)
        .await)
        .map_err(|e| ApiError::database(&e))
    }

    /// The id of the user with this (normalised) email.
    pub(crate) async fn user_id_by_email(&self, email: &str) -> Result<Option<Uuid>, ApiError> {
        on_pool!(self, |pool| sqlx::query_scalar::<_, Uuid>(
            "SELECT id FROM users WHERE email = $1"
        )
        .bind(email)
        .fetch_optional(pool)
        .await)
        .map_err(|e| ApiError::database(&e))
    }

    /// Email and password hash of a user.
    pub(crate) async fn user_by_id(&self, id: Uuid) -> Result<Option<(String, String)>, ApiError> {
        on_pool!(self, |pool| sqlx::query_as::<_, (String, String)>(
            "SELECT email, password_hash FROM users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await)
        .map_err(|e| ApiError::database(&e))
    }

    /// Replaces a user's password hash.
    pub(crate) async fn set_password(&self, id: Uuid, password_hash: &str) -> Result<(), ApiError> {
        on_pool!(self, |pool| sqlx::query(
            "UPDATE users SET password_hash = $2 WHERE id = $1"
        )
        .bind(id)
        .bind(password_hash)
        .execute(pool)
        .await
        .map(drop))
        .map_err(|e| ApiError::database(&e))
    }

    /// Stores a new reset token for `user_id` (its hash only) and returns the token.
    pub(crate) async fn create_reset_token(&self, user_id: Uuid) -> Result<SessionToken, ApiError> {
        // Same shape as a session token: 256 random bits, 43 characters of base64url.
        let token = SessionToken::generate().map_err(|error| {
            tracing::error!(%error, "could not generate a reset token");
            ApiError::Unavailable
        })?;
        let hash = token.hash().to_hex();
        let expires = (OffsetDateTime::now_utc() + RESET_TOKEN_LIFETIME).unix_timestamp();
        on_pool!(self, |pool| sqlx::query(
            "INSERT INTO password_reset_tokens (token_hash, user_id, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(&hash)
        .bind(user_id)
        .bind(expires)
        .execute(pool)
        .await
        .map(drop))
        .map_err(|e| ApiError::database(&e))?;
        Ok(token)
    }

    /// How many reset tokens were issued to the user within the last hour (used ones included):
    /// a token expires one hour after it is issued, so these are the unexpired ones.
    pub(crate) async fn reset_tokens_issued_last_hour(
        &self,
        user_id: Uuid,
    ) -> Result<i64, ApiError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        on_pool!(self, |pool| sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM password_reset_tokens WHERE user_id = $1 AND expires_at > $2",
        )
        .bind(user_id)
        .bind(now)
        .fetch_one(pool)
        .await)
        .map_err(|e| ApiError::database(&e))
    }

    /// The user of an unused, unexpired reset token, without using it up.
    pub(crate) async fn reset_token_user(
        &self,
        hash: &TokenHash,
    ) -> Result<Option<Uuid>, ApiError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        on_pool!(self, |pool| sqlx::query_scalar::<_, Uuid>(
            "SELECT user_id FROM password_reset_tokens \
             WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(hash.to_hex())
        .bind(now)
        .fetch_optional(pool)
        .await)
        .map_err(|e| ApiError::database(&e))
    }

    /// Uses up a reset token and every other open token of its user, and sets the user's
    /// password, in one transaction: both happen or neither does. `None` when the token was not
    /// (or no longer) usable; then nothing changed. The token's row is claimed by its `UPDATE`,
    /// so of two concurrent confirmations exactly one wins.
    pub(crate) async fn reset_password(
        &self,
        token: &TokenHash,
        password_hash: &str,
    ) -> Result<Option<Uuid>, ApiError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let token = token.to_hex();
        let done: Result<Option<Uuid>, sqlx::Error> = match self {
            Self::Postgres(pool) => {
                reset_in!(pool.begin().await?, &token, now, password_hash).await
            }
            // `BEGIN IMMEDIATE` takes the write lock up front, so this transaction cannot fail
            // to upgrade from reader to writer and deadlock another writer.
            Self::Sqlite(pool) => {
                reset_in!(
                    pool.begin_with("BEGIN IMMEDIATE").await?,
                    &token,
                    now,
                    password_hash
                )
                .await
            }
        };
        done.map_err(|e| ApiError::database(&e))
    }
}

/// Argon2id hashing, off the async threads (a hash takes tens of milliseconds of CPU and
/// 19 MiB of memory), at most one per core at a time.
///
/// Hashes run on a pool of dedicated threads, one per core, fed by a bounded queue
/// ([`QUEUE_PER_CORE`] waiting jobs per core); a request that finds the queue full is refused at
/// once with `503 busy` (`demo-app/API.md`, "Throttling and bounded hashing"). So at most one
/// hash per core exists at a time, even when the requests that asked for them have gone away.
/// Each of these threads keeps one argon2 memory area for good ([`crate::hashing`]), so the
/// hashing memory of the process is one area per core whatever the load.
///
/// Every job is admitted by the requester's share first ([`crate::quota`]), so no client
/// address can hold more than its share of the hashers and the queue.
#[derive(Debug, Clone)]
pub(crate) struct Passwords {
    /// A hash of a random password, verified against when the email is unknown so that the
    /// answer takes as long as for a wrong password.
    dummy_hash: Arc<str>,
    jobs: SyncSender<Job>,
    quota: Arc<HashQuota>,
}

/// Jobs that may wait for a hasher, per core.
pub(crate) const QUEUE_PER_CORE: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

impl Passwords {
    pub(crate) async fn new() -> Result<Self, ApiError> {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let jobs = start_hashers(cores, cores * QUEUE_PER_CORE).map_err(|error| {
            tracing::error!(%error, "could not start the password hashing threads");
            ApiError::Unavailable
        })?;
        let mut passwords = Self {
            dummy_hash: Arc::from(""),
            jobs,
            quota: Arc::new(HashQuota::new()),
        };
        let random = SessionToken::generate().map_err(|error| {
            tracing::error!(%error, "could not generate the dummy password");
            ApiError::Unavailable
        })?;
        let password = random.expose().to_owned();
        passwords.dummy_hash = passwords
            .run(None, move || Hasher::hash(password.as_bytes()))
            .await?
            .map_err(|error| {
                tracing::error!(%error, "password hashing failed");
                ApiError::Unavailable
            })?
            .into();
        Ok(passwords)
    }

    /// Hashes a password to a PHC string (`$argon2id$v=19$…`), on `requester`'s share.
    pub(crate) async fn hash(
        &self,
        password: String,
        requester: Requester,
    ) -> Result<String, ApiError> {
        let permit = self.quota.admit(requester)?;
        self.run(Some(permit), move || Hasher::hash(password.as_bytes()))
            .await?
            .map_err(|error| {
                tracing::error!(%error, "password hashing failed");
                ApiError::Unavailable
            })
    }

    /// Whether `password` matches `stored`, on `requester`'s share; with `None` (unknown email)
    /// the dummy hash is verified and the answer is `false`, in the same time. `Err` only when
    /// busy or over the share.
    pub(crate) async fn verify(
        &self,
        password: String,
        stored: Option<String>,
        requester: Requester,
    ) -> Result<bool, ApiError> {
        let permit = self.quota.admit(requester)?;
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let matches = self
            .run(Some(permit), move || {
                Hasher::verify(password.as_bytes(), &stored)
            })
            .await?;
        Ok(known && matches)
    }

    /// Runs `work` on a hashing thread; `503 busy` when the queue is full. `permit` (the
    /// requester's place in its share) is held until the job is done, even when the requester
    /// goes away; it is refunded when the job could not be queued.
    async fn run<T: Send + 'static>(
        &self,
        permit: Option<Permit>,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (done, result) = oneshot::channel();
        let share = permit.as_ref().map(Permit::key);
        let job: Job = Box::new(move || {
            let _permit = permit;
            // The requester may be gone; the work is done either way.
            let _ = done.send(work());
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                // One line per refusal would let a flood fill the logs; the request line says
                // 503 already.
                tracing::debug!("password hashers busy and their queue full; refusing");
                // Gives the in-flight place back, then the token: no work was done.
                drop(job);
                if let Some(key) = share {
                    self.quota.refund(key);
                }
                return Err(ApiError::Busy);
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!("the password hashing threads are gone");
                return Err(ApiError::Unavailable);
            }
        }
        result.await.map_err(|_| {
            tracing::error!("a password hashing job ended without a result");
            ApiError::Unavailable
        })
    }
}

/// Starts `threads` hashing threads behind a queue of `queue` jobs. They end when every sender
/// is dropped.
fn start_hashers(threads: usize, queue: usize) -> std::io::Result<SyncSender<Job>> {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Job>(queue);
    let receiver = Arc::new(Mutex::new(receiver));
    for n in 0..threads {
        let receiver = Arc::clone(&receiver);
        std::thread::Builder::new()
            .name(format!("argon2-{n}"))
            .spawn(move || {
                loop {
                    // The lock is held only while waiting for the next job, not while running it.
                    let next = match receiver.lock() {
                        Ok(receiver) => receiver.recv(),
                        Err(poisoned) => poisoned.into_inner().recv(),
                    };
                    let Ok(job) = next else { break };
                    // A panicking job (none is expected) must not take the thread with it; its
                    // requester sees the dropped result and answers 503.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })?;
    }
    Ok(sender)
}

/// Whether the text holds a control character (NUL, newline, escape, DEL, C1…), which no email
/// or device name has and PostgreSQL refuses (NUL) in text columns, or an invisible format or
/// separator character (see [`is_format_or_separator`]).
pub(crate) fn has_control(text: &str) -> bool {
    text.chars()
        .any(|c| c.is_control() || is_format_or_separator(c))
}

/// Unicode general categories Cf (format: bidirectional overrides such as U+202E, zero-width
/// characters such as U+200B, the byte order mark U+FEFF, …), Zl (U+2028) and Zp (U+2029).
/// They are invisible or reorder what is shown, so they let two different emails or device
/// names look alike. Written out (Unicode 15) rather than taken from a crate: the list is short
/// and changes rarely.
pub(crate) fn is_format_or_separator(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

/// Longest device name, in characters.
pub(crate) const MAX_DEVICE_NAME_CHARS: usize = 100;

/// The zero-width joiner and non-joiner: format characters, yet part of ordinary text in a
/// device name (emoji sequences such as 👩‍💻, Persian and Indic scripts).
const JOINERS: [char; 2] = ['\u{200C}', '\u{200D}'];

/// A device name is at most [`MAX_DEVICE_NAME_CHARS`] characters, without control, format or
/// separator characters (the two joiners aside).
pub(crate) fn is_valid_device_name(name: &str) -> bool {
    !name
        .chars()
        .any(|c| c.is_control() || (is_format_or_separator(c) && !JOINERS.contains(&c)))
        && name.chars().count() <= MAX_DEVICE_NAME_CHARS
}

/// Trims and lower-cases an email, the form it is stored and compared in.
pub(crate) fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// A sane, simple address check: one `@`, a non-empty local part, a domain with a dot that
/// neither starts nor ends with it, no whitespace, control, format or separator character.
pub(crate) fn is_valid_email(email: &str) -> bool {
    if email.len() > 254 || email.chars().any(char::is_whitespace) || has_control(email) {
        return false;
    }
    let mut parts = email.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

/// At least [`MIN_PASSWORD_CHARS`] characters (not bytes).
pub(crate) fn is_strong_enough(password: &str) -> bool {
    password.chars().count() >= MIN_PASSWORD_CHARS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_sanely() {
        for ok in ["a@b.co", "first.last+tag@example.org", "ÉLODIE@exämple.fr"] {
            assert!(is_valid_email(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "a@b",
            "@b.co",
            "a@@b.co",
            "a b@c.de",
            "a@b.co@d.ef",
            "a@.co",
            "a@b.",
            "a\u{0}b@example.com",
            "ab@exa\u{7}mple.com",
            "ab@example.com\u{1b}",
            "ab\u{202e}moc.elpmaxe@x.co",
            "a\u{200b}b@example.com",
            "\u{feff}ab@example.com",
            "ab@exam\u{2028}ple.com",
            "ab@exam\u{2029}ple.com",
            "ab@exam\u{ad}ple.com",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
        assert_eq!(normalize_email("  Alice@Example.COM "), "alice@example.com");
    }

    #[test]
    fn device_names_have_no_control_characters() {
        assert!(is_valid_device_name("Work laptop \u{e9}"));
        assert!(!is_valid_device_name("laptop\u{0}"));
        assert!(!is_valid_device_name("line\nbreak"));
        assert!(!is_valid_device_name(&"x".repeat(101)));
        for bad in [
            "\u{202e}potpal",
            "lap\u{200b}top",
            "\u{feff}x",
            "a\u{2028}b",
            "a\u{2029}b",
        ] {
            assert!(!is_valid_device_name(bad), "{bad:?}");
        }
        // Emoji sequences hold the zero-width joiner.
        assert!(is_valid_device_name("Mum's \u{1f469}\u{200d}\u{1f4bb}"));
    }

    #[test]
    fn the_format_list_holds_the_known_ones() {
        for c in [
            '\u{ad}',
            '\u{200b}',
            '\u{200e}',
            '\u{202a}',
            '\u{202e}',
            '\u{2066}',
            '\u{feff}',
            '\u{e0041}',
        ] {
            assert!(is_format_or_separator(c), "{c:?}");
        }
        for c in [
            'a',
            ' ',
            '\u{e9}',
            '\u{fe0f}',
            '\u{1f469}',
            '\u{2027}',
            '\u{2030}',
        ] {
            assert!(!is_format_or_separator(c), "{c:?}");
        }
    }

    #[test]
    fn passwords_need_eight_characters() {
        assert!(!is_strong_enough("1234567"));
        assert!(is_strong_enough("12345678"));
        assert!(is_strong_enough("éééééééé"));
    }

    fn client(n: u8) -> Requester {
        Requester {
            ip: Some(std::net::IpAddr::from([192, 0, 2, n])),
            share: crate::quota::Share::Account,
        }
    }

    #[tokio::test]
    async fn hashes_verify_and_unknown_users_never_match() {
        let passwords = Passwords::new().await.unwrap();
        let hash = passwords
            .hash("correct horse".to_owned(), client(1))
            .await
            .unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(
            passwords
                .verify("correct horse".to_owned(), Some(hash.clone()), client(1))
                .await
                .unwrap()
        );
        assert!(
            !passwords
                .verify("wrong horse".to_owned(), Some(hash), client(1))
                .await
                .unwrap()
        );
        assert!(
            !passwords
                .verify("anything".to_owned(), None, client(1))
                .await
                .unwrap()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_beyond_the_queue_is_refused_as_busy() {
        let passwords = Passwords::new().await.unwrap();
        let burst = 64;
        let tasks: Vec<_> = (0..burst)
            .map(|n| {
                let passwords = passwords.clone();
                // Each from its own address: this is about the shared queue, not the shares.
                tokio::spawn(
                    async move { passwords.hash("correct horse".to_owned(), client(n)).await },
                )
            })
            .collect();
        let (mut done, mut busy) = (0, 0);
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => done += 1,
                Err(ApiError::Busy) => busy += 1,
                Err(other) => panic!("{other:?}"),
            }
        }
        assert!(done >= 1 && busy >= 1, "done {done}, busy {busy}");
        // Served again once the burst is over.
        passwords
            .hash("correct horse".to_owned(), client(200))
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_address_holds_at_most_its_share_of_the_hashers() {
        let passwords = Passwords::new().await.unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let passwords = passwords.clone();
                tokio::spawn(
                    async move { passwords.hash("correct horse".to_owned(), client(7)).await },
                )
            })
            .collect();
        // Meanwhile another address is served, not refused.
        passwords
            .verify("x".to_owned(), None, client(8))
            .await
            .unwrap();
        let mut done = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => done += 1,
                Err(ApiError::Busy) => {}
                Err(other) => panic!("{other:?}"),
            }
        }
        assert!((1..16).contains(&done), "{done}");
    }
}
