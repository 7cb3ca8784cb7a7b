//! Waiting for something that happens in the background (a notification delivered, a cache
//! filled, a log line written): poll a check until it holds or a deadline passes.

use std::time::Duration;

/// How often [`eventually`] and [`poll_until`] run their check.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `check` until it holds and returns what it found; panics with
/// `timed out after …: <what>` if it does not hold within `within`.
///
/// `check` returns either a `bool` (`eventually` then returns `()`) or an `Option<T>`
/// (`Some(value)` holds, and `eventually` returns `value`):
///
/// ```no_run
/// # async fn demo(cache: &std::sync::atomic::AtomicUsize, logs: impl Fn() -> String) {
/// use std::sync::atomic::Ordering;
/// use std::time::Duration;
/// use test_support::eventually;
///
/// eventually(Duration::from_secs(5), "the session reached the cache", async || {
///     cache.load(Ordering::SeqCst) > 0
/// })
/// .await;
/// let line = eventually(Duration::from_secs(5), "the reset token log line", async || {
///     logs().lines().find(|l| l.contains("reset token")).map(str::to_owned)
/// })
/// .await;
/// # }
/// ```
///
/// The check runs at once, then every 20 ms, also after the deadline has passed once (so a
/// slow check gets a last chance). Time is tokio's: a test with a paused clock advances it.
///
/// # Panics
///
/// When the check has not held by `within`, or when the check panics.
pub async fn eventually<C: Check>(
    within: Duration,
    what: &str,
    check: impl AsyncFnMut() -> C,
) -> C::Output {
    match poll_until(within, check).await {
        Some(value) => value,
        None => panic!("timed out after {within:?}: {what}"),
    }
}

/// Like [`eventually`], but returns `None` instead of panicking when `check` has not held within
/// `within`: for a test that looks at more than the check before it decides.
pub async fn poll_until<C: Check>(
    within: Duration,
    mut check: impl AsyncFnMut() -> C,
) -> Option<C::Output> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await.holds() {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// What the check of [`eventually`] returns: `bool`, or `Option<T>` to hand back a value.
pub trait Check {
    /// What [`eventually`] returns once the check holds.
    type Output;

    /// `Some` once the check holds.
    fn holds(self) -> Option<Self::Output>;
}

impl Check for bool {
    type Output = ();

    fn holds(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Check for Option<T> {
    type Output = T;

    fn holds(self) -> Option<T> {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn returns_what_the_check_found() {
        let calls = AtomicUsize::new(0);
        let found = eventually(Duration::from_secs(1), "the third call", async || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            (n == 3).then_some(n * 10)
        })
        .await;
        assert_eq!(found, 30);
        eventually(Duration::from_secs(1), "a bool check", async || true).await;
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline() {
        let start = tokio::time::Instant::now();
        assert_eq!(
            poll_until(Duration::from_secs(1), async || false).await,
            None
        );
        assert!(start.elapsed() >= Duration::from_secs(1));
        let timed_out = tokio::spawn(async {
            eventually(Duration::from_millis(100), "never", async || None::<()>).await;
        })
        .await
        .expect_err("eventually panics at the deadline")
        .into_panic();
        let message = timed_out.downcast_ref::<String>().expect("a message");
        assert_eq!(message, "timed out after 100ms: never");
    }
}
