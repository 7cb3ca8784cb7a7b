//! [`HashQuota`]: each client address's share of the password hashers (`demo-app/API.md`,
//! "Throttling and bounded hashing").
//!
//! The hashers are few (one per core) behind a short queue; without shares, one client asking
//! for hashes in a loop (registering, or signing in with a right password, which the login
//! throttle does not count) keeps them all busy and every other user gets `503 busy`. So each
//! client address (as [`Address`] counts it) gets, for each [`Share`]:
//!
//! - at most [`IN_FLIGHT_PER_ADDRESS`] hash jobs queued or running at once; beyond, `503 busy`
//!   at once. One address then holds at most 2 of the hashers' slots, whatever it sends, and
//!   everyone else's jobs wait behind at most those;
//! - a budget of [`BURST`] jobs, refilled by one every [`REFILL`] (a token bucket: at most
//!   `BURST + t / REFILL` jobs in any `t`); beyond, the wait until the next token, as
//!   `429 too_many_attempts` for sign-ins and `503 busy` for registrations (the statuses those
//!   routes already have).
//!
//! Registrations and account work (sign-in, password change, reset confirmation) have separate
//! shares, so a flood of sign-ups from an address that others share (a NAT) cannot lock its
//! users out of signing in.
//!
//! Memory is bounded: the in-flight counts exist only while jobs do (the hashers' queue is
//! bounded), and the buckets live in a `moka` cache of at most [`MAX_KEYS`] entries that forgets
//! an entry once it would be full again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use crate::error::ApiError;
use crate::throttle::Address;

/// Hash jobs of one address and share that may be queued or running at once.
pub(crate) const IN_FLIGHT_PER_ADDRESS: usize = 2;
/// Hash jobs one address may start at once, per share, before waiting for the refill.
pub(crate) const BURST: u32 = 60;
/// One more job per this long (60 per minute), per share.
pub(crate) const REFILL: Duration = Duration::from_secs(1);
/// Most buckets kept at once (about 5 MB).
const MAX_KEYS: u64 = 100_000;

/// Which share of the hashers a job draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Share {
    /// Hashing the password of a new account.
    Registration,
    /// Verifying a sign-in or a current password, hashing a changed or reset password.
    Account,
}

impl Share {
    /// The refusal once the budget is spent, with the wait until a token is back.
    fn refusal(self, wait: Duration) -> ApiError {
        match self {
            Self::Registration => ApiError::BusyFor(wait),
            Self::Account => ApiError::TooManyAttempts(wait),
        }
    }
}

/// Who asks for a hash: the client address (as `TRUSTED_PROXIES` resolves it) and the share.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Requester {
    pub(crate) ip: Option<IpAddr>,
    pub(crate) share: Share,
}

type Key = (Address, Share);

/// An address's share, as a [`Permit`] names it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShareKey(Key);

/// A token bucket: `tokens` as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The shares of one app.
#[derive(Debug)]
pub(crate) struct HashQuota {
    in_flight: Mutex<HashMap<Key, usize>>,
    buckets: Cache<Key, Bucket>,
    /// Taken for each check-and-take, so two jobs never spend the same token.
    lock: Mutex<()>,
}

/// A job's place in its address's in-flight count, released on drop (when the job is done,
/// or was never queued).
#[derive(Debug)]
pub(crate) struct Permit {
    quota: Arc<HashQuota>,
    key: Key,
}

impl HashQuota {
    pub(crate) fn new() -> Self {
        Self {
            in_flight: Mutex::new(HashMap::new()),
            buckets: Cache::builder()
                .max_capacity(MAX_KEYS)
                // An untouched bucket is full again after this long: forgetting it changes
                // nothing.
                .time_to_idle(REFILL * BURST)
                .eviction_policy(EvictionPolicy::lru())
                .build(),
            lock: Mutex::new(()),
        }
    }

    /// Admits one hash job of `requester`, or refuses it (see the [module docs](self)).
    pub(crate) fn admit(self: &Arc<Self>, requester: Requester) -> Result<Permit, ApiError> {
        let key = (Address::of(requester.ip), requester.share);
        {
            let mut in_flight = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let count = in_flight.entry(key).or_insert(0);
            if *count >= IN_FLIGHT_PER_ADDRESS {
                return Err(ApiError::Busy);
            }
            *count += 1;
        }
        // From here on, dropping the permit gives the in-flight place back.
        let permit = Permit {
            quota: Arc::clone(self),
            key,
        };
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let mut bucket = self.bucket(&key, now);
        if bucket.tokens < 1.0 {
            let wait = REFILL.mul_f64(1.0 - bucket.tokens);
            return Err(requester.share.refusal(wait.max(Duration::from_secs(1))));
        }
        bucket.tokens -= 1.0;
        self.buckets.insert(key, bucket);
        Ok(permit)
    }

    /// The bucket of `key`, refilled up to `now`.
    fn bucket(&self, key: &Key, now: Instant) -> Bucket {
        let full = f64::from(BURST);
        let bucket = self.buckets.get(key).unwrap_or(Bucket {
            tokens: full,
            at: now,
        });
        let refilled =
            now.saturating_duration_since(bucket.at).as_secs_f64() / REFILL.as_secs_f64();
        Bucket {
            tokens: (bucket.tokens + refilled).min(full),
            at: now,
        }
    }

    /// A job of `key` could not be queued (the hashers were busy): its token is given back.
    pub(crate) fn refund(&self, ShareKey(key): ShareKey) {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut bucket = self.bucket(&key, Instant::now());
        bucket.tokens = (bucket.tokens + 1.0).min(f64::from(BURST));
        self.buckets.insert(key, bucket);
    }

    fn release(&self, key: &Key) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = in_flight.get_mut(key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                in_flight.remove(key);
            }
        }
    }
}

impl Permit {
    /// Whose place this is, for [`HashQuota::refund`].
    pub(crate) fn key(&self) -> ShareKey {
        ShareKey(self.key)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.quota.release(&self.key);
    }
}

impl Default for HashQuota {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(ip: &str, share: Share) -> Requester {
        Requester {
            ip: Some(ip.parse().unwrap()),
            share,
        }
    }

    #[test]
    fn an_address_holds_at_most_two_jobs_at_once_per_share() {
        let quota = Arc::new(HashQuota::new());
        let a = quota.admit(from("192.0.2.1", Share::Registration)).unwrap();
        let _b = quota.admit(from("192.0.2.1", Share::Registration)).unwrap();
        assert!(matches!(
            quota.admit(from("192.0.2.1", Share::Registration)),
            Err(ApiError::Busy)
        ));
        // Its other share, and other addresses, are not affected.
        let _c = quota.admit(from("192.0.2.1", Share::Account)).unwrap();
        let _d = quota.admit(from("192.0.2.2", Share::Registration)).unwrap();
        drop(a);
        let _e = quota.admit(from("192.0.2.1", Share::Registration)).unwrap();
    }

    #[test]
    fn the_budget_runs_out_and_refunds_come_back() {
        let quota = Arc::new(HashQuota::new());
        for _ in 0..BURST {
            drop(quota.admit(from("192.0.2.1", Share::Account)).unwrap());
        }
        let refused = quota.admit(from("192.0.2.1", Share::Account)).unwrap_err();
        let ApiError::TooManyAttempts(wait) = refused else {
            panic!("{refused:?}")
        };
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(quota.admit(from("192.0.2.9", Share::Account)).is_ok());
        // Refunded jobs cost nothing.
        for _ in 0..BURST * 2 {
            let permit = quota.admit(from("192.0.2.1", Share::Registration)).unwrap();
            let key = permit.key();
            drop(permit);
            quota.refund(key);
        }
        for _ in 0..BURST {
            drop(quota.admit(from("192.0.2.1", Share::Registration)).unwrap());
        }
        // Registrations are refused as busy, with the wait.
        assert!(matches!(
            quota.admit(from("192.0.2.1", Share::Registration)),
            Err(ApiError::BusyFor(_))
        ));
    }
}
