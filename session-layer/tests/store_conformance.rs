//! One suite, every store: the SQL and Redis stores must behave exactly like the in-memory
//! reference.

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use common::TestUser;
use session_layer::store::{Inserted, Liveness, SessionInsert, TokenMatch};
use session_layer::{
    DeviceType, Fence, RevocationReason, Session, SessionStore, SessionToken, StoreError,
    TokenHash, UserId,
};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// A fixed "now" at microsecond precision (what the stores keep).
fn base() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_000).unwrap()
}

fn live(now: OffsetDateTime) -> Liveness {
    Liveness {
        now,
        idle_cutoff: now - Duration::days(1),
    }
}

fn session<U: UserId>(user_id: &U, created_at: OffsetDateTime) -> Session<U> {
    Session {
        id: Uuid::now_v7(),
        user_id: user_id.clone(),
        device: "Chrome on Windows".into(),
        device_type: DeviceType::Desktop,
        device_name: Some("Work laptop".into()),
        user_agent: Some("Mozilla/5.0 (Windows NT 10.0) Chrome/120".into()),
        ip_address: Some("203.0.113.7".parse().unwrap()),
        created_at,
        last_active_at: created_at,
        expires_at: created_at + Duration::days(7),
        revoked_at: None,
        revoked_reason: None,
    }
}

fn hash() -> TokenHash {
    SessionToken::generate().unwrap().hash()
}

/// The stored session behind a hash that must exist.
async fn stored<U: UserId>(store: &dyn SessionStore<U>, hash: &TokenHash) -> Session<U> {
    store
        .find_by_token(hash)
        .await
        .unwrap()
        .expect("stored session")
        .session
}

/// Inserts `s` under `h` with no checks beyond the optional limit and fence.
async fn insert_as<U: UserId>(
    store: &dyn SessionStore<U>,
    s: &Session<U>,
    h: &TokenHash,
    max_active: Option<u32>,
    fence: Option<Fence>,
    recent_activity: &[(Uuid, OffsetDateTime)],
) -> Result<Inserted, StoreError> {
    store
        .insert(SessionInsert {
            session: s,
            token_hash: h,
            max_active,
            live: live(s.created_at),
            fence,
            recent_activity,
        })
        .await
}

/// Inserts `s` with a limit; returns the evicted hashes.
async fn insert_limited<U: UserId>(
    store: &dyn SessionStore<U>,
    s: &Session<U>,
    max: u32,
    recent: &[(Uuid, OffsetDateTime)],
) -> Vec<TokenHash> {
    match insert_as(store, s, &hash(), Some(max), None, recent)
        .await
        .unwrap()
    {
        Inserted::Created { evicted } => evicted,
        Inserted::Fenced => panic!("no fence was given"),
    }
}

async fn insert<U: UserId>(store: &dyn SessionStore<U>, s: &Session<U>) -> TokenHash {
    let h = hash();
    let inserted = insert_as(store, s, &h, None, None, &[]).await.unwrap();
    assert_eq!(inserted, Inserted::Created { evicted: vec![] });
    h
}

async fn inserted_session_is_found_by_its_hash_with_every_field<U: TestUser>(
    store: Arc<dyn SessionStore<U>>,
) {
    let mut s = session(&U::fresh(), base());
    s.ip_address = Some("2001:db8::1".parse::<IpAddr>().unwrap());
    let h = insert(&*store, &s).await;
    let found = store.find_by_token(&h).await.unwrap().unwrap();
    assert_eq!(found.matched, TokenMatch::Current);
    assert_eq!(found.session, s);

    let mut bare = session(&U::fresh(), base());
    bare.device_name = None;
    bare.user_agent = None;
    bare.ip_address = None;
    bare.device_type = DeviceType::Unknown;
    let h = insert(&*store, &bare).await;
    assert_eq!(stored(&*store, &h).await, bare);

    assert!(store.find_by_token(&hash()).await.unwrap().is_none());
}

async fn duplicate_token_hash_is_rejected<U: TestUser>(store: Arc<dyn SessionStore<U>>) {
    let user = U::fresh();
    let h = insert(&*store, &session(&user, base())).await;
    let again = insert_as(&*store, &session(&user, base()), &h, None, None, &[]).await;
    assert!(again.is_err());
}

/// Finding 1 at the store level: every hash a session rotated out stays known as retired, not
/// only the last one.
async fn every_rotated_out_hash_stays_in_the_family<U: TestUser>(store: Arc<dyn SessionStore<U>>) {
    let s = session(&U::fresh(), base());
    let mut family = vec![insert(&*store, &s).await];
    for _ in 0..3 {
        let new = hash();
        let current = *family.last().unwrap();
        assert!(
            store
                .rotate(&s.user_id, s.id, &current, &new, live(base()))
                .await
                .unwrap()
                .is_some()
        );
        family.push(new);
    }
    let (current, retired) = family.split_last().unwrap();
    assert_eq!(
        store.find_by_token(current).await.unwrap().unwrap().matched,
        TokenMatch::Current
    );
    for old in retired {
        let found = store.find_by_token(old).await.unwrap().unwrap();
        assert_eq!(found.matched, TokenMatch::Retired);
        assert_eq!(found.session.id, s.id);
    }
}

async fn fence_moves_with_revoke_all_and_a_stale_fence_inserts_nothing<U: TestUser>(
    store: Arc<dyn SessionStore<U>>,
) {
    let user = U::fresh();
    let initial = store.fence(&user).await.unwrap();
    assert_eq!(initial, Fence::INITIAL);
    let first = session(&user, base());
    let h = hash();
    let inserted = insert_as(&*store, &first, &h, Some(10), Some(initial), &[])
        .await
        .unwrap();
    assert_eq!(inserted, Inserted::Created { evicted: vec![] });
    // "Sign out everywhere else" advances the fence too.
    store
        .revoke_all(
            &user,
            Some(first.id),
            RevocationReason::PasswordChange,
            base(),
        )
        .await
        .unwrap();
    let advanced = store.fence(&user).await.unwrap();
    assert!(advanced > initial);
    assert_eq!(
        store.fence(&U::fresh()).await.unwrap(),
        Fence::INITIAL,
        "fences are per user"
    );
    let late = session(&user, base());
    let late_hash = hash();
    let refused = insert_as(&*store, &late, &late_hash, Some(10), Some(initial), &[])
        .await
        .unwrap();
    assert_eq!(refused, Inserted::Fenced);
    assert!(store.find_by_token(&late_hash).await.unwrap().is_none());
    let current = insert_as(&*store, &late, &late_hash, None, Some(advanced), &[])
        .await
        .unwrap();
    assert_eq!(current, Inserted::Created { evicted: vec![] });
}

async fn rotation_keeps_the_old_hash_as_previous<U: TestUser>(store: Arc<dyn SessionStore<U>>) {
    let s = session(&U::fresh(), base());
    let old = insert(&*store, &s).await;
    let new = hash();
    let rotated = store
        .rotate(&s.user_id, s.id, &old, &new, live(base()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rotated.id, s.id);
    assert_eq!(
        rotated.expires_at, s.expires_at,
        "rotation must not extend the lifetime"
    );
    let found = store.find_by_token(&new).await.unwrap().unwrap();
    assert_eq!(found.matched, TokenMatch::Current);
    let found = store.find_by_token(&old).await.unwrap().unwrap();
    assert_eq!(found.matched, TokenMatch::Retired);
    assert_eq!(found.session.id, s.id);
    // The stale hash cannot rotate again.
    assert!(
        store
            .rotate(&s.user_id, s.id, &old, &hash(), live(base()))
            .await
            .unwrap()
            .is_none()
    );
}

async fn concurrent_rotations_of_one_token_have_exactly_one_winner<U: TestUser>(
    store: Arc<dyn SessionStore<U>>,
) {
    let s = session(&U::fresh(), base());
    let old = insert(&*store, &s).await;
    let attempts = (0..8).map(|_| {
        let store = Arc::clone(&store);
        let s = s.clone();
        tokio::spawn(async move {
            store
                .rotate(&s.user_id, s.id, &old, &hash(), live(base()))
                .await
                .unwrap()
                .is_some()
        })
    });
    let mut winners = 0;
    for attempt in attempts.collect::<Vec<_>>() {
        winners += usize::from(attempt.await.unwrap());
    }
    assert_eq!(winners, 1);
}

async fn rotation_checks_owner_and_liveness<U: TestUser>(store: Arc<dyn SessionStore<U>>) {
    let s = session(&U::fresh(), base());
    let h = insert(&*store, &s).await;
    let stranger = U::fresh();
    assert!(
        store
            .rotate(&stranger, s.id, &h, &hash(), live(base()))
            .await
            .unwrap()
            .is_none()
    );
    let after_expiry = s.expires_at + Duration::seconds(1);
    assert!(
        store
            .rotate(&s.user_id, s.id, &h, &hash(), live(after_expiry))
            .await
            .unwrap()
            .is_none()
    );
    store
        .revoke(&s.user_id, s.id, RevocationReason::Logout, base())
        .await
        .unwrap();
    assert!(
        store
            .rotate(&s.user_id, s.id, &h, &hash(), live(base()))
            .await
            .unwrap()
            .is_none()
    );
}

async fn list_shows_only_the_users_live_sessions_most_recent_first<U: TestUser>(
    store: Arc<dyn SessionStore<U>>,
) {
    let user = U::fresh();
    let now = base();
    let older = session(&user, now - Duration::hours(3));
    let mut recent = session(&user, now - Duration::hours(2));
    recent.last_active_at = now - Duration::minutes(1);
    let middle = session(&user, now - Duration::hours(1));
    for s in [&older, &recent, &middle] {
        insert(&*store, s).await;
    }
    let mut revoked = session(&user, now - Duration::hours(1));
    revoked.last_active_at = now;
    insert(&*store, &revoked).await;
    store
        .revoke(&user, revoked.id, RevocationReason::Logout, now)
        .await
        .unwrap();
    let mut expired = session(&user, now - Duration::days(8));
    expired.last_active_at = now - Duration::hours(20);
    insert(&*store, &expired).await;
    let mut idle = session(&user, now - Duration::days(3));
    idle.last_active_at = now - Duration::days(2);
    insert(&*store, &idle).await;
    insert(&*store, &session(&U::fresh(), now)).await;

    let ids: Vec<Uuid> = store
        .list_active(&user, live(now))
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, [recent.id, middle.id, older.id]);
}

async fn revoke_is_scoped_to_the_owner_and_happens_once<U: TestUser>(
    store: Arc<dyn SessionStore<U>>,
) {
    let s = session(&U::fresh(), base());
    let h = insert(&*store, &s).await;
    let stranger = U::fresh();
    assert_eq!(
        store
            .revoke(&stranger, s.id, RevocationReason::RevokedByUser, base())
            .await
            .unwrap(),
        None
    );
    assert!(stored(&*store, &h).await.revoked_at.is_none());
    let later = base() + Duration::seconds(5);
    assert_eq!(
        store
            .revoke(&s.user_id, s.id, RevocationReason::RevokedByUser, later)
            .await
            .unwrap(),
        Some(h)
    );
    let found = stored(&*store, &h).await;
    assert_eq!(found.revoked_at, Some(later));
    assert_eq!(found.revoked_reason, Some(RevocationReason::RevokedByUser));
    assert_eq!(
        store
            .revoke(&s.user_id, s.id, RevocationReason::Logout, later)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        stored(&*store, &h).await.revoked_reason,
        Some(RevocationReason::RevokedByUser),
        "a second revocation must not overwrite the first reason"
    );
}

async fn revoke_all_spares_the_excepted_session_and_other_users<U: TestUser>(
    store: Arc<dyn SessionStore<U>>,
) {
    let user = U::fresh();
    let keep = session(&user, base());
    let keep_hash = insert(&*store, &keep).await;
    let a = insert(&*store, &session(&user, base())).await;
    let b = insert(&*store, &session(&user, base())).await;
    let other = insert(&*store, &session(&U::fresh(), base())).await;
    let mut revoked = store
        .revoke_all(
            &user,
            Some(keep.id),
            RevocationReason::PasswordChange,
            base(),
        )
        .await
        .unwrap();
    revoked.sort_by_key(|h| *h.as_bytes());
    let mut expected = vec![a, b];
    expected.sort_by_key(|h| *h.as_bytes());
    assert_eq!(revoked, expected);
    for h in [keep_hash, other] {
        assert!(stored(&*store, &h).await.revoked_at.is_none());
    }
    let all = store
        .revoke_all(&user, None, RevocationReason::PasswordReset, base())
        .await
        .unwrap();
    assert_eq!(all, vec![keep_hash]);
}

async fn session_limit_revokes_the_least_recently_active<U: TestUser>(
    store: Arc<dyn SessionStore<U>>,
) {
    let user = U::fresh();
    let now = base();
    let mut first = session(&user, now - Duration::hours(3));
    first.last_active_at = now - Duration::minutes(1);
    // Ties on last_active_at: the older session counts as less recently active.
    let second = session(&user, now - Duration::hours(2));
    let mut tied_newer = session(&user, now - Duration::hours(1));
    tied_newer.last_active_at = second.last_active_at;
    let h_first = insert(&*store, &first).await;
    let h_second = insert(&*store, &second).await;
    let h_tied = insert(&*store, &tied_newer).await;

    let newest = session(&user, now);
    let evicted = insert_limited(&*store, &newest, 3, &[]).await;
    assert_eq!(evicted, vec![h_second]);
    let gone = stored(&*store, &h_second).await;
    assert_eq!(gone.revoked_reason, Some(RevocationReason::SessionLimit));
    for h in [h_first, h_tied] {
        assert!(stored(&*store, &h).await.revoked_at.is_none());
    }
    let evicted = insert_limited(&*store, &session(&user, now), 1, &[]).await;
    assert_eq!(evicted.len(), 3);
    assert_eq!(store.list_active(&user, live(now)).await.unwrap().len(), 1);
}

/// Finding 5 at the store level: uses seen only in memory decide the eviction.
async fn session_limit_counts_activity_not_yet_written<U: TestUser>(
    store: Arc<dyn SessionStore<U>>,
) {
    let user = U::fresh();
    let now = base();
    let used = session(&user, now - Duration::hours(2));
    let idle = session(&user, now - Duration::hours(1));
    let h_used = insert(&*store, &used).await;
    let h_idle = insert(&*store, &idle).await;
    let recent = [(used.id, now - Duration::seconds(5))];
    let evicted = insert_limited(&*store, &session(&user, now), 2, &recent).await;
    assert_eq!(evicted, vec![h_idle]);
    assert!(stored(&*store, &h_used).await.revoked_at.is_none());
    assert_eq!(
        stored(&*store, &h_used).await.last_active_at,
        now - Duration::seconds(5)
    );
}

async fn touch_only_moves_last_active_forward_on_live_sessions<U: TestUser>(
    store: Arc<dyn SessionStore<U>>,
) {
    let s = session(&U::fresh(), base());
    let h = insert(&*store, &s).await;
    let later = base() + Duration::seconds(90);
    store
        .touch(&[
            (s.id, later),
            (s.id, base() + Duration::seconds(30)),
            (Uuid::now_v7(), later),
        ])
        .await
        .unwrap();
    assert_eq!(stored(&*store, &h).await.last_active_at, later);
    store.touch(&[(s.id, base())]).await.unwrap();
    assert_eq!(stored(&*store, &h).await.last_active_at, later);
    store
        .revoke(&s.user_id, s.id, RevocationReason::Logout, later)
        .await
        .unwrap();
    store
        .touch(&[(s.id, later + Duration::hours(1))])
        .await
        .unwrap();
    assert_eq!(stored(&*store, &h).await.last_active_at, later);
    store.touch(&[]).await.unwrap();
}

async fn cleanup_deletes_expired_and_long_revoked_rows_only<U: TestUser>(
    store: Arc<dyn SessionStore<U>>,
) {
    let user = U::fresh();
    let now = base();
    let live_one = insert(&*store, &session(&user, now)).await;
    let expired = insert(&*store, &session(&user, now - Duration::days(8))).await;
    let old_revoked = session(&user, now - Duration::days(5));
    let h_old = insert(&*store, &old_revoked).await;
    store
        .revoke(
            &user,
            old_revoked.id,
            RevocationReason::Logout,
            now - Duration::days(4),
        )
        .await
        .unwrap();
    let fresh_revoked = session(&user, now - Duration::hours(1));
    let h_fresh = insert(&*store, &fresh_revoked).await;
    store
        .revoke(&user, fresh_revoked.id, RevocationReason::Logout, now)
        .await
        .unwrap();

    // A rotated-out hash of a purged session goes with it.
    let expired_session = stored(&*store, &expired).await;
    let expired_new = hash();
    store
        .rotate(
            &user,
            expired_session.id,
            &expired,
            &expired_new,
            live(expired_session.created_at),
        )
        .await
        .unwrap()
        .unwrap();

    let deleted = store.cleanup(now, now - Duration::days(1)).await.unwrap();
    assert_eq!(deleted, 2);
    assert!(store.find_by_token(&expired).await.unwrap().is_none());
    assert!(store.find_by_token(&expired_new).await.unwrap().is_none());
    assert!(store.find_by_token(&h_old).await.unwrap().is_none());
    assert!(store.find_by_token(&live_one).await.unwrap().is_some());
    assert!(store.find_by_token(&h_fresh).await.unwrap().is_some());
}

test_support::for_each_backend! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    backends {
        memory => common::memory(),
        #[cfg(feature = "sqlite")]
        sqlite => common::sqlite().await,
        #[cfg(feature = "postgres")]
        postgres => common::postgres().await,
        // The application's own id types, in columns of the matching SQL type.
        memory_i64 => common::memory_as::<i64>(),
        #[cfg(feature = "sqlite")]
        sqlite_i64 => common::sqlite_as::<i64>().await,
        #[cfg(feature = "postgres")]
        postgres_i64 => common::postgres_as::<i64>().await,
        memory_text => common::memory_as::<String>(),
        #[cfg(feature = "sqlite")]
        sqlite_text => common::sqlite_as::<String>().await,
        #[cfg(feature = "postgres")]
        postgres_text => common::postgres_as::<String>().await,
        // Row-level security: the store as the application's role, which sees one user per
        // transaction.
        #[cfg(feature = "postgres")]
        postgres_rls => common::postgres_rls_as::<Uuid>().await,
        #[cfg(feature = "postgres")]
        postgres_rls_i64 => common::postgres_rls_as::<i64>().await,
        #[cfg(feature = "postgres")]
        postgres_rls_text => common::postgres_rls_as::<String>().await,
        #[cfg(feature = "redis")]
        redis => common::redis().await,
        #[cfg(feature = "redis")]
        redis_i64 => common::redis_as::<i64>().await,
        #[cfg(feature = "redis")]
        redis_text => common::redis_as::<String>().await,
    }
    scenarios {
        inserted_session_is_found_by_its_hash_with_every_field,
        duplicate_token_hash_is_rejected,
        rotation_keeps_the_old_hash_as_previous,
        every_rotated_out_hash_stays_in_the_family,
        fence_moves_with_revoke_all_and_a_stale_fence_inserts_nothing,
        session_limit_counts_activity_not_yet_written,
        concurrent_rotations_of_one_token_have_exactly_one_winner,
        rotation_checks_owner_and_liveness,
        list_shows_only_the_users_live_sessions_most_recent_first,
        revoke_is_scoped_to_the_owner_and_happens_once,
        revoke_all_spares_the_excepted_session_and_other_users,
        session_limit_revokes_the_least_recently_active,
        touch_only_moves_last_active_forward_on_live_sessions,
        cleanup_deletes_expired_and_long_revoked_rows_only,
    }
}
