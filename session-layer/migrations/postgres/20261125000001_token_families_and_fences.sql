-- Token families: every hash a session has rotated out stays here while the session row exists,
-- so presenting any of them is detected as reuse.
CREATE TABLE {retired} (
    token_hash BYTEA       PRIMARY KEY,
    session_id UUID        NOT NULL REFERENCES {sessions} (id) ON DELETE CASCADE,
    retired_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT {retired_bare}_hash_is_sha256 CHECK (octet_length(token_hash) = 32)
);
CREATE INDEX {retired_bare}_session_idx ON {retired} (session_id);

INSERT INTO {retired} (token_hash, session_id, retired_at)
    SELECT previous_token_hash, id, last_active_at FROM {sessions}
    WHERE previous_token_hash IS NOT NULL;
DROP INDEX {schema_dot}{sessions_bare}_previous_token_hash_idx;
ALTER TABLE {sessions} DROP COLUMN previous_token_hash;

-- Fences: revoke_all advances a user's epoch; a sign-in that read an older epoch before it
-- checked the password cannot insert its session.
CREATE TABLE {fences} (
    user_id {fence_user_type} PRIMARY KEY,
    epoch   BIGINT NOT NULL CHECK (epoch >= 0)
);
