-- session-layer: one row per sign-in. Only the SHA-256 of a token is stored.
CREATE TABLE sessions (
    id                  UUID        PRIMARY KEY,
    user_id             UUID        NOT NULL,
    token_hash          BYTEA       NOT NULL,
    previous_token_hash BYTEA,
    device              TEXT        NOT NULL,
    device_type         TEXT        NOT NULL,
    device_name         TEXT,
    user_agent          TEXT,
    ip_address          INET,
    created_at          TIMESTAMPTZ NOT NULL,
    last_active_at      TIMESTAMPTZ NOT NULL,
    expires_at          TIMESTAMPTZ NOT NULL,
    revoked_at          TIMESTAMPTZ,
    revoked_reason      TEXT,
    CONSTRAINT sessions_expires_after_creation CHECK (expires_at > created_at),
    CONSTRAINT sessions_revoked_after_creation CHECK (revoked_at >= created_at),
    CONSTRAINT sessions_revocation_has_reason CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL)),
    CONSTRAINT sessions_token_hash_is_sha256 CHECK (octet_length(token_hash) = 32),
    CONSTRAINT sessions_previous_hash_is_sha256 CHECK (octet_length(previous_token_hash) = 32),
    CONSTRAINT sessions_device_type_known
        CHECK (device_type IN ('desktop', 'mobile', 'tablet', 'bot', 'unknown')),
    CONSTRAINT sessions_revoked_reason_known CHECK (revoked_reason IN (
        'logout', 'revoked_by_user', 'password_change', 'password_reset',
        'token_reuse', 'session_limit', 'admin'))
);

-- Validation: one indexed lookup by hash.
CREATE UNIQUE INDEX sessions_token_hash_key ON sessions (token_hash);
-- Reuse detection: a rotated-out token is looked up by its hash too.
CREATE INDEX sessions_previous_token_hash_idx ON sessions (previous_token_hash)
    WHERE previous_token_hash IS NOT NULL;
-- "Your devices": the active sessions of one user, most recent first.
CREATE INDEX sessions_user_active_idx ON sessions (user_id, last_active_at DESC)
    WHERE revoked_at IS NULL;
-- Cleanup.
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);
CREATE INDEX sessions_revoked_at_idx ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;
