//! Micro-benchmarks of the hot path: token parse + hash, cache-hit validation (through the
//! layer, against the same inner service without it), and the extractor.

use std::convert::Infallible;
use std::hint::black_box;

use axum::body::Body;
use axum::extract::FromRequestParts as _;
use axum::http::{Request, Response};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use session_layer::{
    CurrentSession, MemoryStore, NewSession, SessionConfig, SessionLayer, SessionManager, TokenHash,
};
use tower::{Layer as _, ServiceExt as _, service_fn};

fn request(token: &str) -> Request<Body> {
    Request::get("/")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .expect("request")
}

fn micro(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let manager =
        SessionManager::new(MemoryStore::new(), SessionConfig::default()).expect("manager");
    let (token, _) = runtime
        .block_on(manager.create(NewSession::new(uuid::Uuid::now_v7())))
        .expect("create")
        .into_parts();
    let token = token.expose();
    let session = runtime
        .block_on(manager.validate(&token))
        .expect("validate")
        .expect("a valid session");
    runtime.block_on(manager.sync_cache());

    c.bench_function("token parse + SHA-256", |b| {
        b.iter(|| TokenHash::from_encoded(black_box(&token)))
    });

    c.bench_function("SessionManager::validate, cache hit", |b| {
        b.iter(|| runtime.block_on(manager.validate(black_box(&token))))
    });

    let inner = service_fn(|request: Request<Body>| async move {
        let status = if request.extensions().get::<CurrentSession>().is_some() {
            200
        } else {
            401
        };
        Ok::<_, Infallible>(
            Response::builder()
                .status(status)
                .body(Body::empty())
                .expect("response"),
        )
    });
    let mut bare = inner;
    c.bench_function("inner service alone (baseline)", |b| {
        b.iter_batched(
            || request(&token),
            |req| runtime.block_on(serve_one(&mut bare, req)),
            BatchSize::SmallInput,
        )
    });
    let mut layered = SessionLayer::new(manager.clone()).layer(inner);
    c.bench_function("SessionLayer + inner service, cache hit", |b| {
        b.iter_batched(
            || request(&token),
            |req| {
                let response = runtime.block_on(serve_one(&mut layered, req));
                assert_eq!(response.status(), 200);
                response
            },
            BatchSize::SmallInput,
        )
    });

    c.bench_function("CurrentSession extractor", |b| {
        b.iter_batched(
            || {
                let (mut parts, ()) = Request::new(()).into_parts();
                parts.extensions.insert(session.clone());
                parts
            },
            |mut parts| runtime.block_on(<CurrentSession>::from_request_parts(&mut parts, &())),
            BatchSize::SmallInput,
        )
    });
}

/// `ready().await` then `call(request).await`, as a server does per request.
async fn serve_one<S>(service: &mut S, request: Request<Body>) -> S::Response
where
    S: tower::Service<Request<Body>, Error = Infallible>,
{
    let Ok(ready) = service.ready().await;
    let Ok(response) = ready.call(request).await;
    response
}

criterion_group!(benches, micro);
criterion_main!(benches);
