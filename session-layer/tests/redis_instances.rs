//! Several instances on one Redis server: revocations and rotations cross instances, a lost
//! pub/sub connection empties the cache, and a server crash under load fails closed, recovers,
//! and loses no revocation.

#![cfg(feature = "redis")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Outcome, outcome};
use session_layer::{NewSession, RedisStore, RevocationReason, SessionConfig, SessionManager};
use uuid::Uuid;

async fn instance(store: RedisStore) -> SessionManager {
    SessionManager::new(store, SessionConfig::default()).unwrap()
}

/// Two stores on one server and one prefix: two instances of one application.
async fn pair(url: &str) -> (RedisStore, RedisStore) {
    let a = common::redis_store_on::<Uuid>(url).await;
    let b = RedisStore::connect_with(url, a.prefix()).await.unwrap();
    (a, b)
}

fn command(url: &str) -> redis::Client {
    redis::Client::open(url).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_on_one_instance_is_refused_at_once_by_another_that_cached_it() {
    let (a, b) = pair(&test_support::redis_server().url()).await;
    let (a, b) = (instance(a).await, instance(b).await);
    let user = Uuid::now_v7();
    for reason in [
        RevocationReason::RevokedByUser,
        RevocationReason::PasswordReset,
    ] {
        let (token, session) = a.create(NewSession::new(user)).await.unwrap().into_parts();
        let token = token.expose();
        common::cached_on(&b, &token).await;
        match reason {
            RevocationReason::RevokedByUser => a.revoke(user, session.id, reason).await.unwrap(),
            _ => assert_eq!(a.revoke_all(user, reason).await.unwrap(), 1),
        }
        // The revoking call returned only once B dropped the token (or its lease ran out).
        for _ in 0..20 {
            assert!(
                b.validate(&token).await.unwrap().is_none(),
                "instance B accepted a token revoked on A after the call returned"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_on_one_instance_kills_the_old_token_on_another() {
    let (a, b) = pair(&test_support::redis_server().url()).await;
    let (a, b) = (instance(a).await, instance(b).await);
    let (token, _) = a
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    let old = token.expose();
    common::cached_on(&b, &old).await;
    let current = a.validate(&old).await.unwrap().unwrap();
    let (new, _) = a.rotate(&current).await.unwrap().into_parts();
    assert!(
        b.validate(&old).await.unwrap().is_none(),
        "instance B accepted a rotated-out token after the rotation returned"
    );
    // Presenting the old token on B was reuse: the session is gone everywhere.
    assert!(a.validate(&new.expose()).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_pubsub_connection_empties_the_cache() {
    // A server of its own: killing pub/sub clients must not disturb other tests.
    let server = test_support::dedicated_redis();
    let store = common::redis_store_on::<Uuid>(&server.url()).await;
    let prefix = store.prefix().to_owned();
    let manager = instance(store).await;
    let user = Uuid::now_v7();
    let (token, session) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    let token = token.expose();
    common::cached_on(&manager, &token).await;

    let mut admin = command(&server.url())
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Revoke behind the library's back (no PUBLISH), then cut the subscriber: the message that
    // would have told this instance is lost, so only emptying the cache saves us.
    let key = format!("{prefix}:s:{}", session.id);
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("ra")
        .arg("1")
        .arg("rr")
        .arg("admin")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(
        manager.validate(&token).await.unwrap().is_some(),
        "precondition: the cache still serves the session"
    );
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 1, "one subscriber: this instance's feed");
    common::eventually(
        Duration::from_secs(5),
        "a revoked session was served after the pub/sub connection was lost",
        async || manager.validate(&token).await.unwrap().is_none(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_crash_under_load_fails_closed_recovers_and_loses_no_revocation() {
    let server = Arc::new(test_support::dedicated_redis());
    let (a, b) = pair(&server.url()).await;
    let lease = Duration::from_millis(500);
    let (a, b) = (
        instance(a.with_lease(lease)).await,
        instance(b.with_lease(lease)).await,
    );
    let user = Uuid::now_v7();
    let (kept, _) = a.create(NewSession::new(user)).await.unwrap().into_parts();
    let (revoked, revoked_session) = a.create(NewSession::new(user)).await.unwrap().into_parts();
    let (kept, revoked) = (kept.expose(), revoked.expose());
    common::cached_on(&b, &kept).await;
    common::cached_on(&b, &revoked).await;

    let done = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (b, kept, done) = (b.clone(), kept.clone(), done.clone());
        async move {
            let mut outcomes = Vec::new();
            while !done.load(Ordering::SeqCst) {
                outcomes.push(outcome(&b, &kept).await);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            outcomes
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Revoked on A right before the crash: the call returned, so it must survive the crash
    // (the server acknowledges a write only once it is on disk).
    a.revoke(user, revoked_session.id, RevocationReason::RevokedByUser)
        .await
        .unwrap();
    let stopping = server.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap();
    // A revocation during the outage fails; it never reports success it did not have.
    assert!(
        a.revoke_all(user, RevocationReason::PasswordChange)
            .await
            .is_err()
    );
    // The revoked token is refused throughout, by both instances.
    for manager in [&a, &b] {
        assert_ne!(outcome(manager, &revoked).await, Outcome::Ok);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for manager in [&a, &b] {
        assert_ne!(outcome(manager, &revoked).await, Outcome::Ok);
    }
    let starting = server.clone();
    tokio::task::spawn_blocking(move || starting.start())
        .await
        .unwrap();
    let back = common::poll_until(Duration::from_secs(15), async || {
        outcome(&b, &kept).await == Outcome::Ok
    })
    .await
    .is_some();
    done.store(true, Ordering::SeqCst);
    let outcomes = load.await.unwrap();
    assert!(back, "the session did not come back after the server did");

    common::assert_failed_closed(&outcomes);

    // The revocation made before the crash survived it, on both instances.
    for manager in [&a, &b] {
        assert_eq!(outcome(manager, &revoked).await, Outcome::Refused);
    }
    // And the feed is back: a revocation after the restart is refused by B when it returns.
    common::cached_on(&b, &kept).await;
    let current = a.validate(&kept).await.unwrap().unwrap();
    a.revoke(user, current.session_id(), RevocationReason::Logout)
        .await
        .unwrap();
    assert_eq!(outcome(&b, &kept).await, Outcome::Refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_under_other_prefixes_never_see_each_others_sessions() {
    let url = test_support::redis_server().url();
    let one = instance(common::redis_store_on::<Uuid>(&url).await).await;
    let other = instance(common::redis_store_on::<Uuid>(&url).await).await;
    let user = Uuid::now_v7();
    let (token, _) = one
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    assert!(one.validate(&token.expose()).await.unwrap().is_some());
    assert!(other.validate(&token.expose()).await.unwrap().is_none());
    assert!(other.list(user).await.unwrap().is_empty());
    assert_eq!(
        other
            .revoke_all(user, RevocationReason::Admin)
            .await
            .unwrap(),
        0
    );
    assert!(one.validate(&token.expose()).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_that_could_reach_into_other_keys_is_refused() {
    let url = test_support::redis_server().url();
    let long = "p".repeat(65);
    for prefix in ["", "app:s", "app*", "a b", long.as_str()] {
        let refused = RedisStore::<Uuid>::connect_with(&url, prefix).await;
        assert!(refused.is_err(), "{prefix:?} was accepted");
    }
    assert!(
        RedisStore::<Uuid>::connect_with(&url, "my-app_2.sessions")
            .await
            .is_ok()
    );
}

/// A session's keys carry a TTL of its remaining lifetime plus the retention; the user's index
/// carries none (no eviction may hide a session from "sign out everywhere") and forgets a
/// session whose keys expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_with_the_session_plus_retention_and_the_index_follows() {
    use session_layer::SessionStore as _;
    use session_layer::store::{Liveness, SessionInsert};

    let url = test_support::redis_server().url();
    let store = common::redis_store_on::<Uuid>(&url)
        .await
        .with_retention(Duration::from_millis(300));
    let prefix = store.prefix().to_owned();
    let mut admin = command(&url)
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let live = Liveness {
        now,
        idle_cutoff: now - time::Duration::days(1),
    };
    let user = Uuid::now_v7();
    let insert = async |lifetime: time::Duration| {
        let session = session_layer::Session {
            id: Uuid::now_v7(),
            user_id: user,
            device: "Firefox on Linux".into(),
            device_type: session_layer::DeviceType::Desktop,
            device_name: None,
            user_agent: None,
            ip_address: None,
            created_at: now,
            last_active_at: now,
            expires_at: now + lifetime,
            revoked_at: None,
            revoked_reason: None,
        };
        let hash = session_layer::SessionToken::generate().unwrap().hash();
        store
            .insert(SessionInsert {
                session: &session,
                token_hash: &hash,
                max_active: None,
                live,
                fence: None,
                recent_activity: &[],
            })
            .await
            .unwrap();
        (session.id, hash)
    };
    let (week, week_hash) = insert(time::Duration::days(7)).await;
    let (short, short_hash) = insert(time::Duration::milliseconds(200)).await;
    let ttl = async |key: String| -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut admin.clone())
            .await
            .unwrap()
    };
    let week_ms = 7 * 24 * 3600 * 1000 + 300;
    for key in [
        format!("{prefix}:s:{week}"),
        format!("{prefix}:t:{}", week_hash.to_hex()),
    ] {
        let left = ttl(key.clone()).await;
        assert!(
            (week_ms - 60_000..=week_ms).contains(&left),
            "{key}: {left} ms"
        );
    }
    assert!(ttl(format!("{prefix}:s:{short}")).await <= 500);
    assert_eq!(ttl(format!("{prefix}:u:u{}", user.simple())).await, -1);

    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(store.find_by_token(&short_hash).await.unwrap().is_none());
    let listed = store.list_active(&user, live).await.unwrap();
    assert_eq!(listed.iter().map(|s| s.id).collect::<Vec<_>>(), [week]);
    let indexed: Option<f64> = redis::cmd("ZSCORE")
        .arg(format!("{prefix}:u:u{}", user.simple()))
        .arg(short.to_string())
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(indexed, None, "the index still names an expired session");
}
