//! Time: wall time for what is stored and compared with stored rows, a monotonic clock for
//! in-process bookkeeping, and a seam so that tests control both.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

/// Where a [`SessionManager`](crate::SessionManager) reads the time.
///
/// Two readings are kept apart:
/// - **wall time** (microseconds since the Unix epoch) for everything stored and for judging
///   stored values (`expires_at`, idle timeout);
/// - **monotonic time** for in-process bookkeeping (how old a cache entry is, whether a failed
///   lookup happened after a request started), so that a step of the system clock never blocks
///   or admits requests through that bookkeeping.
///
/// [`Clock::system`] is the default. [`Clock::tokio`] follows Tokio's clock, so tests can use
/// `tokio::time::pause()` and `advance()`: with [`MemoryStore`](crate::MemoryStore) only, since
/// paused time also runs out the SQL pools' timeouts while they wait on real I/O.
/// [`Clock::manual`] is moved by hand, including steps of the wall clock alone, and works with
/// every store.
#[derive(Clone, Default)]
pub struct Clock(Kind);

#[derive(Clone, Default)]
enum Kind {
    #[default]
    System,
    Tokio {
        wall_at_start_us: i64,
        start: tokio::time::Instant,
    },
    Manual(Arc<ManualState>),
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Kind::System => "Clock::system",
            Kind::Tokio { .. } => "Clock::tokio",
            Kind::Manual(_) => "Clock::manual",
        })
    }
}

/// The process-wide origin of monotonic readings of [`Clock::system`].
fn process_start() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

impl Clock {
    /// The operating system's clocks: `SystemTime` for wall time, `Instant` for monotonic time.
    #[must_use]
    pub fn system() -> Self {
        process_start();
        Self(Kind::System)
    }

    /// Tokio's clock: wall time is the system time at this call plus the Tokio time elapsed
    /// since, so `tokio::time::pause()` and `advance()` move both readings. For tests.
    #[must_use]
    pub fn tokio() -> Self {
        Self(Kind::Tokio {
            wall_at_start_us: system_wall_us(),
            start: tokio::time::Instant::now(),
        })
    }

    /// A clock moved only by the returned handle; it starts at the current system time.
    #[must_use]
    pub fn manual() -> (Self, ManualClock) {
        let state = Arc::new(ManualState {
            wall_us: AtomicI64::new(system_wall_us()),
            mono_us: AtomicI64::new(0),
        });
        (Self(Kind::Manual(Arc::clone(&state))), ManualClock(state))
    }

    /// Microseconds since the Unix epoch.
    #[must_use]
    pub fn wall_us(&self) -> i64 {
        match &self.0 {
            Kind::System => system_wall_us(),
            Kind::Tokio {
                wall_at_start_us,
                start,
            } => wall_at_start_us.saturating_add(duration_us(start.elapsed())),
            Kind::Manual(state) => state.wall_us.load(Ordering::Acquire),
        }
    }

    /// The wall time as a timestamp, at the microsecond precision both SQL stores keep.
    #[must_use]
    pub fn now(&self) -> OffsetDateTime {
        from_us(self.wall_us())
    }

    /// Microseconds on a clock that never goes back; only differences mean anything.
    #[must_use]
    pub fn monotonic_us(&self) -> i64 {
        match &self.0 {
            Kind::System => duration_us(process_start().elapsed()),
            Kind::Tokio { start, .. } => duration_us(start.elapsed()),
            Kind::Manual(state) => state.mono_us.load(Ordering::Acquire),
        }
    }
}

struct ManualState {
    wall_us: AtomicI64,
    mono_us: AtomicI64,
}

/// Moves a clock made by [`Clock::manual`].
#[derive(Clone)]
pub struct ManualClock(Arc<ManualState>);

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualClock")
            .field("wall_us", &self.0.wall_us.load(Ordering::Relaxed))
            .field("monotonic_us", &self.0.mono_us.load(Ordering::Relaxed))
            .finish()
    }
}

impl ManualClock {
    /// Time passes: both readings move forward by `by`.
    pub fn advance(&self, by: Duration) {
        let us = duration_us(by);
        self.0.mono_us.fetch_add(us, Ordering::AcqRel);
        self.0.wall_us.fetch_add(us, Ordering::AcqRel);
    }

    /// The wall clock is stepped (NTP, an operator) by `by_us` microseconds, forward or back;
    /// monotonic time does not move.
    pub fn step_wall(&self, by_us: i64) {
        self.0.wall_us.fetch_add(by_us, Ordering::AcqRel);
    }
}

fn system_wall_us() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    duration_us(since)
}

/// A duration in whole microseconds, saturating.
pub(crate) fn duration_us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A timestamp in microseconds since the epoch, saturating.
pub(crate) fn to_us(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// Microseconds since the epoch as a timestamp (the epoch itself when out of range).
pub(crate) fn from_us(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_wall_steps_leave_monotonic_time_alone() {
        let (clock, hand) = Clock::manual();
        let (wall, mono) = (clock.wall_us(), clock.monotonic_us());
        hand.step_wall(-120_000_000);
        assert_eq!(clock.wall_us(), wall - 120_000_000);
        assert_eq!(clock.monotonic_us(), mono);
        hand.advance(Duration::from_secs(1));
        assert_eq!(clock.monotonic_us(), mono + 1_000_000);
        assert_eq!(clock.wall_us(), wall - 119_000_000);
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = Clock::tokio();
        let (wall, mono) = (clock.wall_us(), clock.monotonic_us());
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(clock.monotonic_us() - mono, 7_000_000);
        assert_eq!(clock.wall_us() - wall, 7_000_000);
    }
}
