//! [`Throttle`]: limits password guessing (`demo-app/API.md`, "Throttling").
//!
//! Two sliding windows of [`WINDOW`], counted per client address: failed attempts on one
//! account ([`ACCOUNT_LIMIT`]) and failed attempts on any account ([`ADDRESS_LIMIT`]). Once
//! either is full, attempts from that address are refused before the password is looked at,
//! until the oldest counted failure leaves the window. A success clears the account's window for
//! that address (not the address's window: one's own account must not reset the count of
//! guesses at others). Every key holds the address, so failures from elsewhere never lock a user
//! out of their own address.
//!
//! Why not `governor`: its keyed limiter is GCRA, a rate that refills continuously, which
//! cannot say "5 failures within 15 minutes, forgotten on a success": it counts every check
//! (not only failures), has no way to reset one key, and refills a slot every 3 minutes rather
//! than when a failure is 15 minutes old. The counter here is small and exact.
//!
//! An attempt is counted when it *starts* ([`Throttle::begin`]) and taken back on success or
//! when it could not be judged (busy, database down). So a burst of concurrent guesses cannot
//! all slip in before the first one is counted, and a client that hangs up while its password
//! is being checked has used its attempt.
//!
//! Memory is bounded: the windows live in a `moka` cache of at most [`MAX_KEYS`] entries (least
//! recently used evicted first), each of at most 20 timestamps, and an entry expires
//! [`WINDOW`] after its last change, when nothing in it counts any more.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::policy::EvictionPolicy;
use tokio::sync::Mutex;

use crate::error::ApiError;

/// Failed attempts on one account from one address within [`WINDOW`] before refusing.
pub(crate) const ACCOUNT_LIMIT: usize = 5;
/// Failed attempts from one address (any accounts) within [`WINDOW`] before refusing.
pub(crate) const ADDRESS_LIMIT: usize = 20;
/// The sliding window.
pub(crate) const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Most windows kept at once: about 30 MB at worst (20 timestamps and a key each).
pub(crate) const MAX_KEYS: u64 = 100_000;

/// A client address as the throttle (and every other per-address limit) counts it: an IPv6
/// client is its /64 (one household or host usually holds a whole /64, so counting single
/// addresses would let it rotate freely), except where the IPv6 address stands for an IPv4 one:
///
/// - NAT64/SIIT, `64:ff9b::/96` (RFC 6052) and `64:ff9b:1::/48` (RFC 8215, taken with the usual
///   /96 layout: the IPv4 address in the last 32 bits): every IPv4 client behind the translator
///   shares the translator's /64, so the embedded IPv4 address is counted instead;
/// - 6to4, `2002::/16` (RFC 3056): the IPv4 address is bits 16 to 47, and its owner holds the
///   whole /48 (65 536 /64s), so the IPv4 address is counted.
///
/// IPv4-mapped addresses (`::ffff:a.b.c.d`) count as the IPv4 address too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Address {
    V4(u32),
    V6Prefix(u64),
    /// No peer address (not served by `serve`): all such requests share one window.
    Unknown,
}

/// `64:ff9b::/96`, the NAT64 well-known prefix.
const NAT64_WELL_KNOWN: u128 = 0x0064_ff9b_0000_0000_0000_0000_0000_0000;
/// `64:ff9b:1::/48`, the NAT64 local-use prefix.
const NAT64_LOCAL_USE: u128 = 0x0064_ff9b_0001_0000_0000_0000_0000_0000;
/// `2002::/16`, 6to4.
const SIX_TO_FOUR: u128 = 0x2002_0000_0000_0000_0000_0000_0000_0000;

/// Whether `addr` lies in `prefix/len`.
fn within(addr: u128, prefix: u128, len: u32) -> bool {
    (addr ^ prefix) >> (128 - len) == 0
}

impl Address {
    pub(crate) fn of(ip: Option<IpAddr>) -> Self {
        match ip.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => Self::V4(u32::from(v4)),
            Some(IpAddr::V6(v6)) => {
                let bits = u128::from(v6);
                // The `as` casts keep the low 32 (or 64) bits on purpose: the shifts put the
                // embedded IPv4 address (or the /64) there.
                if within(bits, NAT64_WELL_KNOWN, 96) || within(bits, NAT64_LOCAL_USE, 48) {
                    Self::V4(bits as u32)
                } else if within(bits, SIX_TO_FOUR, 16) {
                    Self::V4((bits >> 80) as u32)
                } else {
                    Self::V6Prefix((bits >> 64) as u64)
                }
            }
            None => Self::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Address(Address),
    /// The account is the normalised email, hashed with a per-process random key (bounded key
    /// size; unknown emails are counted like known ones, so the throttle tells nothing about
    /// which accounts exist).
    Account(Address, u64),
}

/// The login and password-check throttle of one app.
#[derive(Debug)]
pub(crate) struct Throttle {
    windows: Cache<Key, Vec<Instant>>,
    /// Taken for each check-and-count, so the two windows of an attempt change together.
    lock: Mutex<()>,
    hasher: RandomState,
}

/// A counted attempt; report its outcome with [`Throttle::succeeded`] or [`Throttle::undo`].
/// Dropping it leaves it counted as a failure.
#[derive(Debug)]
#[must_use = "an attempt is a failure unless reported otherwise"]
pub(crate) struct Attempt {
    address: Key,
    account: Key,
    at: Instant,
}

impl Throttle {
    pub(crate) fn new() -> Self {
        Self {
            windows: Cache::builder()
                .max_capacity(MAX_KEYS)
                .time_to_live(WINDOW)
                .eviction_policy(EvictionPolicy::lru())
                .build(),
            lock: Mutex::new(()),
            hasher: RandomState::new(),
        }
    }

    /// Counts an attempt on `account` (a normalised email) from `ip`, or refuses it with
    /// `429 too_many_attempts` and the time until the window lets one through.
    pub(crate) async fn begin(
        &self,
        ip: Option<IpAddr>,
        account: &str,
    ) -> Result<Attempt, ApiError> {
        let address = Address::of(ip);
        let account = Key::Account(address, self.hasher.hash_one(account));
        let _guard = self.lock.lock().await;
        // Taken under the lock: every window stays in time order.
        let now = Instant::now();
        let attempt = Attempt {
            address: Key::Address(address),
            account,
            at: now,
        };
        let mut by_address = self.window(&attempt.address, now).await;
        let mut by_account = self.window(&attempt.account, now).await;
        let wait = [
            retry_after(&by_account, ACCOUNT_LIMIT, now),
            retry_after(&by_address, ADDRESS_LIMIT, now),
        ]
        .into_iter()
        .flatten()
        .max();
        if let Some(wait) = wait {
            return Err(ApiError::TooManyAttempts(wait));
        }
        by_address.push(attempt.at);
        by_account.push(attempt.at);
        self.windows.insert(attempt.address, by_address).await;
        self.windows.insert(attempt.account, by_account).await;
        Ok(attempt)
    }

    /// The password was right: the account's failures from this address are forgotten, and
    /// this attempt no longer counts against the address.
    pub(crate) async fn succeeded(&self, attempt: Attempt) {
        let _guard = self.lock.lock().await;
        self.windows.invalidate(&attempt.account).await;
        self.forget(&attempt.address, attempt.at).await;
    }

    /// The attempt could not be judged (busy, database unreachable): it does not count.
    pub(crate) async fn undo(&self, attempt: Attempt) {
        let _guard = self.lock.lock().await;
        self.forget(&attempt.account, attempt.at).await;
        self.forget(&attempt.address, attempt.at).await;
    }

    /// The window of `key` without the failures older than [`WINDOW`].
    async fn window(&self, key: &Key, now: Instant) -> Vec<Instant> {
        let mut window = self.windows.get(key).await.unwrap_or_default();
        window.retain(|at| now.saturating_duration_since(*at) < WINDOW);
        window
    }

    async fn forget(&self, key: &Key, at: Instant) {
        if let Some(mut window) = self.windows.get(key).await {
            if let Some(i) = window.iter().position(|t| *t == at) {
                window.remove(i);
            }
            if window.is_empty() {
                self.windows.invalidate(key).await;
            } else {
                self.windows.insert(*key, window).await;
            }
        }
    }
}

/// `Some(wait)` when `window` (oldest first, all within [`WINDOW`]) holds `limit` failures:
/// the wait until the oldest of the last `limit` leaves the window (at least one second).
fn retry_after(window: &[Instant], limit: usize, now: Instant) -> Option<Duration> {
    let len = window.len();
    if len < limit {
        return None;
    }
    let oldest_counted = window[len - limit];
    let passes = oldest_counted + WINDOW;
    Some(
        passes
            .saturating_duration_since(now)
            .max(Duration::from_secs(1)),
    )
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn same_address(a: &str, b: &str) -> bool {
        Address::of(ip(a)) == Address::of(ip(b))
    }

    #[tokio::test]
    async fn five_failures_on_an_account_lock_that_address_only() {
        let throttle = Throttle::new();
        for _ in 0..ACCOUNT_LIMIT {
            let _failed = throttle.begin(ip("192.0.2.1"), "a@x.co").await.unwrap();
        }
        let refused = throttle.begin(ip("192.0.2.1"), "a@x.co").await.unwrap_err();
        let ApiError::TooManyAttempts(wait) = refused else {
            panic!("{refused:?}")
        };
        assert!(wait > WINDOW - Duration::from_secs(5) && wait <= WINDOW);
        // Another address, and another account from the same address, still get through.
        let ok = throttle.begin(ip("198.51.100.2"), "a@x.co").await.unwrap();
        throttle.succeeded(ok).await;
        let other = throttle.begin(ip("192.0.2.1"), "b@x.co").await.unwrap();
        throttle.succeeded(other).await;
    }

    #[tokio::test]
    async fn a_success_clears_the_account_but_not_the_address() {
        let throttle = Throttle::new();
        for _ in 0..3 {
            for _ in 0..ACCOUNT_LIMIT - 1 {
                let _failed = throttle.begin(ip("192.0.2.1"), "a@x.co").await.unwrap();
            }
            let ok = throttle.begin(ip("192.0.2.1"), "a@x.co").await.unwrap();
            throttle.succeeded(ok).await;
        }
        // 12 failures so far from this address; 8 more fill its window.
        for n in 0..8 {
            let _failed = throttle
                .begin(ip("192.0.2.1"), &format!("user{n}@x.co"))
                .await
                .unwrap();
        }
        assert!(matches!(
            throttle.begin(ip("192.0.2.1"), "a@x.co").await,
            Err(ApiError::TooManyAttempts(_))
        ));
    }

    #[tokio::test]
    async fn undone_attempts_do_not_count() {
        let throttle = Throttle::new();
        for _ in 0..ACCOUNT_LIMIT * 3 {
            let attempt = throttle.begin(ip("192.0.2.1"), "a@x.co").await.unwrap();
            throttle.undo(attempt).await;
        }
        let _still_fine = throttle.begin(ip("192.0.2.1"), "a@x.co").await.unwrap();
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        assert!(same_address("2001:db8:1:2::1", "2001:db8:1:2:ffff::9"));
        assert!(!same_address("2001:db8:1:2::1", "2001:db8:1:3::1"));
        assert!(same_address("::ffff:192.0.2.1", "192.0.2.1"));
        assert!(!same_address("192.0.2.1", "192.0.2.2"));
    }

    #[test]
    fn ipv4_clients_behind_nat64_and_6to4_count_as_their_ipv4_address() {
        // NAT64/SIIT: one /64 holds every translated IPv4 client.
        assert!(!same_address(
            "64:ff9b::198.51.100.1",
            "64:ff9b::198.51.100.2"
        ));
        assert!(same_address("64:ff9b::198.51.100.1", "198.51.100.1"));
        assert!(!same_address(
            "64:ff9b:1::c633:6401",
            "64:ff9b:1::c633:6402"
        ));
        assert!(same_address("64:ff9b:1:2::c633:6401", "198.51.100.1"));
        // 6to4: the /48 2002:c633:6401::/48 belongs to 198.51.100.1, all its /64s included.
        assert!(same_address(
            "2002:c633:6401:1::1",
            "2002:c633:6401:ffff::9"
        ));
        assert!(same_address("2002:c633:6401::1", "198.51.100.1"));
        assert!(!same_address("2002:c633:6401::1", "2002:c633:6402::1"));
        // Just outside the prefixes: ordinary /64s.
        assert!(same_address("64:ff9b:0:1::1", "64:ff9b:0:1::2"));
        assert!(same_address("2003::1", "2003::2"));
    }
}
