-- Token families: every hash a session has rotated out stays here while the session row exists,
-- so presenting any of them is detected as reuse.
CREATE TABLE session_retired_tokens (
    token_hash BLOB    PRIMARY KEY NOT NULL CHECK (length(token_hash) = 32),
    session_id BLOB    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    retired_at INTEGER NOT NULL
) STRICT;
CREATE INDEX session_retired_tokens_session_idx ON session_retired_tokens (session_id);

INSERT INTO session_retired_tokens (token_hash, session_id, retired_at)
    SELECT previous_token_hash, id, last_active_at FROM sessions
    WHERE previous_token_hash IS NOT NULL;
DROP INDEX sessions_previous_token_hash_idx;
ALTER TABLE sessions DROP COLUMN previous_token_hash;

-- Fences: revoke_all advances a user's epoch; a sign-in that read an older epoch before it
-- checked the password cannot insert its session.
CREATE TABLE session_user_fences (
    user_id BLOB    PRIMARY KEY NOT NULL CHECK (length(user_id) = 16),
    epoch   INTEGER NOT NULL CHECK (epoch >= 0)
) STRICT;
