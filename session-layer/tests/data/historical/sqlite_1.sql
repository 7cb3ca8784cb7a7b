-- session-layer: one row per sign-in. Only the SHA-256 of a token is stored.
-- Timestamps are integer microseconds since the Unix epoch (UTC), so they compare exactly.
CREATE TABLE sessions (
    id                  BLOB    PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    user_id             BLOB    NOT NULL CHECK (length(user_id) = 16),
    token_hash          BLOB    NOT NULL CHECK (length(token_hash) = 32),
    previous_token_hash BLOB    CHECK (length(previous_token_hash) = 32),
    device              TEXT    NOT NULL,
    device_type         TEXT    NOT NULL
        CHECK (device_type IN ('desktop', 'mobile', 'tablet', 'bot', 'unknown')),
    device_name         TEXT,
    user_agent          TEXT,
    ip_address          TEXT,
    created_at          INTEGER NOT NULL,
    last_active_at      INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    revoked_at          INTEGER,
    revoked_reason      TEXT    CHECK (revoked_reason IN (
        'logout', 'revoked_by_user', 'password_change', 'password_reset',
        'token_reuse', 'session_limit', 'admin')),
    CHECK (expires_at > created_at),
    CHECK (revoked_at >= created_at),
    CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL))
) STRICT;

CREATE UNIQUE INDEX sessions_token_hash_key ON sessions (token_hash);
CREATE INDEX sessions_previous_token_hash_idx ON sessions (previous_token_hash)
    WHERE previous_token_hash IS NOT NULL;
CREATE INDEX sessions_user_active_idx ON sessions (user_id, last_active_at DESC)
    WHERE revoked_at IS NULL;
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);
CREATE INDEX sessions_revoked_at_idx ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;
