//! Every route of the contract (`demo-app/API.md`) over real HTTP, as two or three devices,
//! on SQLite and on PostgreSQL (and with the sessions in Redis).
//!
//! One test binary, one module per area; each area's `route_tests!` runs its tests on every
//! backend (`<area>::sqlite::…`, `<area>::postgres::…`, `<area>::redis_sessions::…`).

mod auth;
mod lifetime;
mod multi_instance;
mod passwords;
mod requests;
mod sessions;

use serde_json::Value;

const PASSWORD: &str = "correct horse battery";

#[track_caller]
fn assert_client_error_json(reply: &e2e_tests::Reply, what: &str) {
    assert!(
        reply.status.is_client_error(),
        "{what}: expected a 4xx, got {} {}",
        reply.status,
        reply.text
    );
    assert!(
        reply.json["error"].as_str().is_some_and(|e| !e.is_empty())
            && reply.json["message"].is_string(),
        "{what}: expected a JSON error body, got {:?}",
        reply.text
    );
}

#[track_caller]
fn assert_rfc3339_utc(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"));
    assert!(text.ends_with('Z'), "not UTC: {text}");
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("not RFC 3339: {text}: {e}"));
}
