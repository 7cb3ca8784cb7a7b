//! `GET /`: the sign-in and "Your sessions" page, plain HTML and a little JavaScript.

use axum::http::header;
use axum::response::IntoResponse;

/// The page, compiled into the binary: no build step, no static directory to deploy.
const INDEX_HTML: &str = include_str!("../static/index.html");

/// `GET /`.
pub(crate) async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        INDEX_HTML,
    )
}
