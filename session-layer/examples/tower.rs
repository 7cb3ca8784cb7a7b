//! A plain Tower service, no Axum: hyper serves a `tower::service_fn` behind the session layer.
//! Without extractors, the handler reads the session from the request extensions, and
//! `SessionRejection` says whether a missing one means 401 or 503.
//!
//! ```sh
//! cargo run -p session-layer --example tower
//! TOKEN=$(curl -s -X POST localhost:3003/login)             # a bearer token
//! curl -H "authorization: Bearer $TOKEN" localhost:3003/me
//! ```

use std::convert::Infallible;

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use session_layer::anomaly::PeerAddr;
use session_layer::{
    CurrentSession, MemoryStore, NewSession, SessionConfig, SessionLayer, SessionManager,
    SessionRejection,
};
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `MemoryStore` keeps the example free of a database; use `SqliteStore` or
    // `PostgresStore` for sessions that outlive the process.
    let sessions = SessionManager::new(MemoryStore::new(), SessionConfig::default())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3003").await?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => break,
        };
        let handler = sessions.clone();
        let service = ServiceBuilder::new()
            // The peer address, for the layer's anomaly events (axum's `ConnectInfo` elsewhere).
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(PeerAddr(peer));
                request
            })
            .layer(SessionLayer::new(sessions.clone()))
            .service_fn(move |request| handle(handler.clone(), request));
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            if let Err(error) = connection.await {
                eprintln!("connection ended: {error}");
            }
        });
    }
    sessions.shutdown().await;
    Ok(())
}

async fn handle(
    sessions: SessionManager,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match (request.method(), request.uri().path()) {
        // A real app checks a password first; the example signs in a fresh user id.
        (&Method::POST, "/login") => {
            match sessions.create(NewSession::new(uuid::Uuid::now_v7())).await {
                Ok(issued) => text(StatusCode::OK, issued.token().expose()),
                Err(error) => text(StatusCode::SERVICE_UNAVAILABLE, error.to_string()),
            }
        }
        (&Method::GET, "/me") => match request.extensions().get::<CurrentSession>() {
            Some(current) => text(
                StatusCode::OK,
                format!("user {} on {}", current.user_id(), current.device()),
            ),
            None => {
                let rejection = SessionRejection::for_request(&request);
                let mut response = text(rejection.status(), rejection.code().to_owned());
                if rejection.status() == StatusCode::UNAUTHORIZED {
                    let challenge = http::HeaderValue::from_static("Bearer");
                    response
                        .headers_mut()
                        .insert(http::header::WWW_AUTHENTICATE, challenge);
                }
                response
            }
        },
        _ => text(StatusCode::NOT_FOUND, "not found".to_owned()),
    })
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body + "\n")));
    *response.status_mut() = status;
    response
}
