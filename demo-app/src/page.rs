//! `GET /`, `GET /app.js`, `GET /app.css`: the sign-in and "Your sessions" page, plain HTML with
//! its script and styles in files of their own, so that its Content-Security-Policy allows no
//! inline script or style at all.

use axum::http::header;
use axum::response::IntoResponse;

/// The page, compiled into the binary: no build step, no static directory to deploy.
const INDEX_HTML: &str = include_str!("../static/index.html");
/// The page's script.
const APP_JS: &str = include_str!("../static/app.js");
/// The page's styles.
const APP_CSS: &str = include_str!("../static/app.css");

/// The page's policy: its own script, styles and API only; no inline code, no framing, no
/// form posts anywhere (the script sends JSON with `fetch`).
pub(crate) const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; \
     base-uri 'none'";

/// `GET /`.
pub(crate) async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        INDEX_HTML,
    )
}

/// `GET /app.js`.
pub(crate) async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
}

/// `GET /app.css`.
pub(crate) async fn styles() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS)
}
