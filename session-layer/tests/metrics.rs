//! The counters an application exports: hits, misses, store queries, revocations, store errors.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use session_layer::metrics as names;
use session_layer::{NewSession, RevocationReason, SessionConfig, SessionManager};
use uuid::Uuid;

/// Keeps one atomic per counter key (name plus labels).
#[derive(Default)]
struct Counting(Mutex<HashMap<String, Arc<AtomicU64>>>);

impl Counting {
    fn get(&self, key: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(key)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }
}

impl Recorder for Counting {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut name = key.name().to_owned();
        for label in key.labels() {
            name.push_str(&format!("{{{}={}}}", label.key(), label.value()));
        }
        let counter = self.0.lock().unwrap().entry(name).or_default().clone();
        Counter::from_arc(counter)
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_report_hits_misses_queries_revocations_and_errors() {
    let recorder: &'static Counting = Box::leak(Box::default());
    metrics::set_global_recorder(recorder).unwrap();
    let probe = common::ProbeStore::new(common::memory());
    let manager = SessionManager::from_arc(probe.clone(), SessionConfig::default()).unwrap();
    let user = Uuid::now_v7();
    let (token, session) = manager
        .create(NewSession::new(user))
        .await
        .unwrap()
        .into_parts();
    let token = token.expose();

    for _ in 0..3 {
        assert!(manager.validate(&token).await.unwrap().is_some());
    }
    assert_eq!(recorder.get(names::CACHE_MISSES), 1);
    assert_eq!(recorder.get(names::CACHE_HITS), 2);
    assert_eq!(recorder.get(names::STORE_QUERIES), 1);

    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(|_: session_layer::CurrentSession| async { "ok" }),
        )
        .layer(session_layer::SessionLayer::new(manager.clone()));
    let request = http::Request::get("/")
        .header("authorization", format!("Bearer {token}"))
        .body(axum::body::Body::empty())
        .unwrap();
    tower::ServiceExt::oneshot(app, request).await.unwrap();
    assert_eq!(
        recorder.get(names::CACHE_HITS),
        3,
        "the layer's hit path counts too"
    );

    manager
        .revoke(user, session.id, RevocationReason::Logout)
        .await
        .unwrap();
    assert_eq!(
        recorder.get(&format!("{}{{reason=logout}}", names::REVOCATIONS)),
        1
    );

    // Write the revoked session's last use now, so that only the failing create counts below.
    manager.shutdown().await;
    probe.fail(true);
    let other = manager.create(NewSession::new(user)).await;
    assert!(other.is_err());
    assert_eq!(recorder.get(names::STORE_ERRORS), 1);
}
