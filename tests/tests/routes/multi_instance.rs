//! Several instances sharing one store (PostgreSQL, Redis): a revocation on one reaches the
//! cache of the other.

use e2e_tests::{Backend, CHROME_WINDOWS, SAFARI_IPHONE, TestApp, unique_email};

use super::PASSWORD;

/// A multi-instance deployment on one PostgreSQL: a revocation on one instance reaches the
/// cache of the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_revocation_on_one_instance_reaches_the_other_instances_cache() {
    revocation_on_one_instance_reaches_the_other_instances_cache(Backend::Postgres).await;
}

/// The same with the sessions of both instances in one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_revocation_on_one_instance_reaches_the_other_instances_cache() {
    revocation_on_one_instance_reaches_the_other_instances_cache(Backend::RedisSessions).await;
}

async fn revocation_on_one_instance_reaches_the_other_instances_cache(backend: Backend) {
    let one = TestApp::start(backend, &[("SESSION_CACHE_TTL_SECS", "300")]).await;
    let two = one
        .another_instance(&[("SESSION_CACHE_TTL_SECS", "300")])
        .await;
    let email = unique_email("instances");
    let laptop = one.device(CHROME_WINDOWS);
    laptop.register(&email, PASSWORD).await;
    laptop.login_cookie(&email, PASSWORD).await;
    let phone_on_two = two.device(SAFARI_IPHONE);
    // Strict, not eventual: once the 204 is sent by one instance, the other refuses the very
    // next request (its revoking call waited for the other's acknowledgement or lease).
    for _ in 0..20 {
        let phone = phone_on_two.login_bearer(&email, PASSWORD).await;
        for _ in 0..3 {
            phone_on_two.get("/api/me").await.expect(200); // cached on instance two
        }
        let id = phone["id"].as_str().unwrap();
        laptop
            .delete(&format!("/api/sessions/{id}"))
            .await
            .expect(204);
        phone_on_two
            .get("/api/me")
            .await
            .expect_error(401, "unauthenticated");
    }
    two.stop().await;
    one.stop().await;
}
