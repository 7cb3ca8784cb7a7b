-- Row-level security (applied only with Tables::row_level_security): a statement sees and
-- changes only the rows of the user its transaction names in `app.current_user_id`, whatever
-- role runs it, the tables' owner included. The three lookups that have no user yet go through
-- SECURITY DEFINER functions owned by {definer}, the one role the policies let through.
CREATE FUNCTION {schema_dot}{sessions_bare}_current_user() RETURNS {user_sql_type}
    LANGUAGE sql STABLE
    AS $$ SELECT NULLIF(current_setting('app.current_user_id', true), '')::{user_sql_type} $$;

ALTER TABLE {sessions} ENABLE ROW LEVEL SECURITY;
ALTER TABLE {sessions} FORCE ROW LEVEL SECURITY;
CREATE POLICY {sessions_bare}_own_rows ON {sessions}
    USING (user_id = {schema_dot}{sessions_bare}_current_user())
    WITH CHECK (user_id = {schema_dot}{sessions_bare}_current_user());
CREATE POLICY {sessions_bare}_definer ON {sessions} TO {definer} USING (true);

ALTER TABLE {fences} ENABLE ROW LEVEL SECURITY;
ALTER TABLE {fences} FORCE ROW LEVEL SECURITY;
CREATE POLICY {fences_bare}_own_rows ON {fences}
    USING (user_id = {schema_dot}{sessions_bare}_current_user())
    WITH CHECK (user_id = {schema_dot}{sessions_bare}_current_user());

-- A retired hash belongs to whoever may see its session.
ALTER TABLE {retired} ENABLE ROW LEVEL SECURITY;
ALTER TABLE {retired} FORCE ROW LEVEL SECURITY;
CREATE POLICY {retired_bare}_own_rows ON {retired}
    USING (EXISTS (SELECT 1 FROM {sessions} s WHERE s.id = session_id))
    WITH CHECK (EXISTS (SELECT 1 FROM {sessions} s WHERE s.id = session_id));
CREATE POLICY {retired_bare}_definer ON {retired} TO {definer} USING (true);

-- Validation: the session (current or retired hash) of one token hash, nothing else.
CREATE FUNCTION {schema_dot}{sessions_bare}_find(hash BYTEA)
    RETURNS TABLE (id UUID, user_id {user_sql_type}, device TEXT, device_type TEXT,
                   device_name TEXT, user_agent TEXT, ip_address INET,
                   created_at TIMESTAMPTZ, last_active_at TIMESTAMPTZ, expires_at TIMESTAMPTZ,
                   revoked_at TIMESTAMPTZ, revoked_reason TEXT, is_current BOOLEAN)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT s.id, s.user_id, s.device, s.device_type, s.device_name, s.user_agent,
               s.ip_address, s.created_at, s.last_active_at, s.expires_at, s.revoked_at,
               s.revoked_reason, TRUE
        FROM {sessions} s WHERE s.token_hash = hash
        UNION ALL
        SELECT s.id, s.user_id, s.device, s.device_type, s.device_name, s.user_agent,
               s.ip_address, s.created_at, s.last_active_at, s.expires_at, s.revoked_at,
               s.revoked_reason, FALSE
        FROM {retired} r JOIN {sessions} s ON s.id = r.session_id WHERE r.token_hash = hash
        LIMIT 1
    $$;

-- Activity: moves last_active_at forward (never back, never past the database's clock) for
-- live sessions, skipping rows locked by others, as the store's own statement does.
CREATE FUNCTION {schema_dot}{sessions_bare}_touch(ids UUID[], times TIMESTAMPTZ[])
    RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
        WITH t AS (SELECT u.id, least(max(u.at), now()) AS at
                   FROM UNNEST(ids, times) AS u(id, at) GROUP BY u.id),
             locked AS (SELECT s.id, t.at FROM {sessions} s JOIN t ON s.id = t.id
                        WHERE s.revoked_at IS NULL AND s.last_active_at < t.at
                        ORDER BY s.id FOR UPDATE OF s SKIP LOCKED)
        UPDATE {sessions} AS s SET last_active_at = locked.at FROM locked
        WHERE s.id = locked.id AND s.last_active_at < locked.at
    $$;

-- Cleanup: deletes expired sessions and sessions revoked before the cutoff; no cutoff reaches
-- past the database's clock, so no caller can delete a live session.
CREATE FUNCTION {schema_dot}{sessions_bare}_cleanup(expired_before TIMESTAMPTZ, revoked_before TIMESTAMPTZ)
    RETURNS BIGINT
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
        WITH deleted AS (DELETE FROM {sessions}
                         WHERE expires_at < least(expired_before, now())
                            OR revoked_at < least(revoked_before, now())
                         RETURNING 1)
        SELECT count(*) FROM deleted
    $$;

-- Only the application's role may call the functions, and it reaches the tables only as the
-- policies allow.
REVOKE EXECUTE ON FUNCTION {schema_dot}{sessions_bare}_find(BYTEA),
    {schema_dot}{sessions_bare}_touch(UUID[], TIMESTAMPTZ[]),
    {schema_dot}{sessions_bare}_cleanup(TIMESTAMPTZ, TIMESTAMPTZ) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION {schema_dot}{sessions_bare}_find(BYTEA),
    {schema_dot}{sessions_bare}_touch(UUID[], TIMESTAMPTZ[]),
    {schema_dot}{sessions_bare}_cleanup(TIMESTAMPTZ, TIMESTAMPTZ) TO {app_role};
GRANT USAGE ON SCHEMA {schema} TO {app_role};
GRANT SELECT, INSERT, UPDATE, DELETE ON {sessions}, {retired}, {fences} TO {app_role};

-- The definer reads the tables through the schema; handing it the functions needs CREATE on
-- the schema for a moment, which is taken back once they are its own.
GRANT USAGE, CREATE ON SCHEMA {schema} TO {definer};
GRANT SELECT, UPDATE, DELETE ON {sessions} TO {definer};
GRANT SELECT ON {retired} TO {definer};
ALTER FUNCTION {schema_dot}{sessions_bare}_find(BYTEA) OWNER TO {definer};
ALTER FUNCTION {schema_dot}{sessions_bare}_touch(UUID[], TIMESTAMPTZ[]) OWNER TO {definer};
ALTER FUNCTION {schema_dot}{sessions_bare}_cleanup(TIMESTAMPTZ, TIMESTAMPTZ) OWNER TO {definer};
REVOKE CREATE ON SCHEMA {schema} FROM {definer};
