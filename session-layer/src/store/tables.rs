//! [`Tables`]: where a SQL store keeps its tables, how it stores user ids, and the optional
//! foreign key to the application's users.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use uuid::Uuid;

use crate::error::StoreError;
use crate::user_id::{UserId, UserIdKind};

/// Where a SQL store ([`PostgresStore`](crate::store), [`SqliteStore`](crate::store)) keeps its
/// tables, and the type of the user ids it stores.
///
/// | setting | default | tables it gives |
/// |---|---|---|
/// | [`prefix`](Self::prefix) | none | `{prefix}sessions`, `{prefix}session_retired_tokens`, `{prefix}session_user_fences`, and the migration bookkeeping `_{prefix}session_layer_migrations` |
/// | [`schema`](Self::schema) (PostgreSQL only) | none: the connection's `search_path` | all of the above in that schema, created if missing |
/// | [`user_id`](Self::user_id) | [`Uuid`] | `user_id` columns of type `UUID`, `BIGINT` or `TEXT` (SQLite: 16-byte `BLOB`, `INTEGER`, `TEXT`) |
/// | [`references`](Self::references) | none | `user_id REFERENCES {table} ({column}) ON DELETE CASCADE` |
/// | [`row_level_security`](Self::row_level_security) (PostgreSQL only) | off | policies that show a transaction only its user's rows, and three `SECURITY DEFINER` functions for the lookups without a user |
///
/// Two applications (or two configurations) on one database do not collide as long as their
/// schema or prefix differ: tables, bookkeeping and (on PostgreSQL) the notification channel all
/// follow them.
///
/// These settings shape the tables when they are created: choose them once per database.
/// Changing them later needs a migration of your own.
///
/// ```
/// use session_layer::store::Tables;
///
/// // `auth.user_sessions`, `user_id BIGINT REFERENCES auth.users (id) ON DELETE CASCADE`.
/// let tables = Tables::new()
///     .user_id::<i64>()
///     .schema("auth")
///     .prefix("user_")
///     .references("auth.users", "id");
/// ```
pub struct Tables<U = Uuid> {
    schema: Option<String>,
    prefix: String,
    references: Option<(String, String)>,
    row_level_security: Option<(String, String)>,
    user: PhantomData<fn() -> U>,
}

impl<U> Clone for Tables<U> {
    fn clone(&self) -> Self {
        Self {
            schema: self.schema.clone(),
            prefix: self.prefix.clone(),
            references: self.references.clone(),
            row_level_security: self.row_level_security.clone(),
            user: PhantomData,
        }
    }
}

impl<U> fmt::Debug for Tables<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tables")
            .field("schema", &self.schema)
            .field("prefix", &self.prefix)
            .field("references", &self.references)
            .field("row_level_security", &self.row_level_security)
            .field("user_id", &std::any::type_name::<U>())
            .finish()
    }
}

impl Tables {
    /// The defaults: tables `sessions`, `session_retired_tokens`, `session_user_fences` in the
    /// default schema, [`Uuid`] user ids, no foreign key.
    #[must_use]
    pub fn new() -> Self {
        Self {
            schema: None,
            prefix: String::new(),
            references: None,
            row_level_security: None,
            user: PhantomData,
        }
    }
}

impl Default for Tables {
    fn default() -> Self {
        Self::new()
    }
}

impl<U: UserId> Tables<U> {
    /// Stores user ids of type `V` (`Uuid`, `i64`, `String`, or a newtype implementing
    /// [`UserId`]).
    #[must_use]
    pub fn user_id<V: UserId>(self) -> Tables<V> {
        Tables {
            schema: self.schema,
            prefix: self.prefix,
            references: self.references,
            row_level_security: self.row_level_security,
            user: PhantomData,
        }
    }

    /// PostgreSQL schema for every table (created by the migrations if missing). Lowercase
    /// letters, digits and `_`.
    #[must_use]
    pub fn schema(mut self, schema: &str) -> Self {
        self.schema = Some(schema.to_owned());
        self
    }

    /// Prefix of every table name (`user_` gives `user_sessions`). Lowercase letters, digits and
    /// `_`.
    #[must_use]
    pub fn prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// A foreign key from `user_id` to the application's users, `ON DELETE CASCADE`: deleting a
    /// user deletes their sessions. `table` may be schema-qualified (`auth.users`).
    ///
    /// A session deleted that way is refused by every instance: on PostgreSQL a trigger
    /// notifies every instance's cache (within milliseconds, not before the deleting statement
    /// returns); on SQLite the one instance's cache may serve it for up to its cache TTL. For a
    /// strict cut-off, call [`SessionManager::revoke_all`](crate::SessionManager::revoke_all)
    /// before deleting the user.
    #[must_use]
    pub fn references(mut self, table: &str, column: &str) -> Self {
        self.references = Some((table.to_owned(), column.to_owned()));
        self
    }

    /// Row-level security on PostgreSQL for the application's role `app_role`, with the
    /// lookups that have no user owned by `definer_role`. Needs a [`schema`](Self::schema).
    ///
    /// The three tables get row-level security, enabled and forced: a statement sees and changes
    /// only the rows of the user that its transaction names in the `app.current_user_id`
    /// setting, whichever role runs it, the tables' owner included. The store runs every
    /// statement about one user in a transaction that sets it
    /// (`set_config('app.current_user_id', …, true)`). Your own SQL over these tables does the
    /// same, or sees nothing.
    ///
    /// The lookups that have no user yet (a token's session, the activity batch, the cleanup)
    /// go through three `SECURITY DEFINER` functions (`{sessions}_find`, `{sessions}_touch`,
    /// `{sessions}_cleanup`) owned by `definer_role`, the only role the policies let through,
    /// and executable only by `app_role`. They answer for one token hash, never move activity
    /// past the database's clock, and never delete a live session. So the roles must be apart,
    /// and only the definer may act as the definer:
    ///
    /// ```sql
    /// -- once, as a superuser or a role with CREATEROLE:
    /// CREATE ROLE session_definer NOLOGIN;                     -- owns the three functions
    /// CREATE ROLE session_owner LOGIN NOINHERIT PASSWORD '…';  -- migrates; owns the tables
    /// GRANT session_definer TO session_owner;  -- hands it the functions; NOINHERIT: no bypass
    /// CREATE SCHEMA auth AUTHORIZATION session_owner;          -- or GRANT CREATE ON DATABASE
    /// CREATE ROLE app LOGIN PASSWORD '…';  -- serves; never a member of the two above
    /// ```
    ///
    /// The migration grants `app_role` what it needs: `USAGE` on the schema, `SELECT`, `INSERT`,
    /// `UPDATE`, `DELETE` on the three tables, `EXECUTE` on the three functions. Run
    /// `PostgresStore::migrate` only on a store connected as the owner, and
    /// serve with a store connected as `app_role`, both with the same `Tables`.
    ///
    /// What it guards against: SQL of the application's that forgets its user filter. It is
    /// no boundary against arbitrary SQL run as `app_role`, which may name any user.
    /// Costs one more round trip per management call (the setting), none per cached request.
    /// Turning it on for existing tables applies one more migration; turning it off again needs
    /// a migration of your own. PostgreSQL only: SQLite refuses it.
    #[must_use]
    pub fn row_level_security(mut self, definer_role: &str, app_role: &str) -> Self {
        self.row_level_security = Some((definer_role.to_owned(), app_role.to_owned()));
        self
    }

    /// Checks the names, and turns them into the table names the SQL uses.
    pub(crate) fn resolve(&self, sqlite: bool) -> Result<Names, StoreError> {
        const OP: &str = "configure the session tables";
        if sqlite && self.schema.is_some() {
            return Err(StoreError::new(
                OP,
                "SQLite has no schemas: use Tables::prefix instead of Tables::schema",
            ));
        }
        if !self.prefix.is_empty() && !is_identifier(&self.prefix) {
            return Err(StoreError::new(
                OP,
                "a table prefix must be lowercase letters, digits and '_', starting with a letter or '_'",
            ));
        }
        if sqlite && self.row_level_security.is_some() {
            return Err(StoreError::new(
                OP,
                "SQLite has no row-level security: Tables::row_level_security is for PostgreSQL",
            ));
        }
        if self.row_level_security.is_some() && self.schema.is_none() {
            return Err(StoreError::new(
                OP,
                "row-level security needs its own schema: add Tables::schema (the definer \
                 functions name their tables by schema, whatever the caller's search_path)",
            ));
        }
        if let Some((definer, app)) = &self.row_level_security
            && !(is_identifier(definer) && is_identifier(app) && definer != app)
        {
            return Err(StoreError::new(
                OP,
                "the definer and application role names must differ, and be lowercase letters, \
                 digits and '_', starting with a letter or '_'",
            ));
        }
        if let Some(schema) = &self.schema
            && !is_identifier(schema)
        {
            return Err(StoreError::new(
                OP,
                "a schema name must be lowercase letters, digits and '_', starting with a letter or '_'",
            ));
        }
        if let Some((table, column)) = &self.references
            && !(table.split('.').all(is_identifier)
                && table.split('.').count() <= 2
                && is_identifier(column))
        {
            return Err(StoreError::new(
                OP,
                "the referenced table and column must be plain identifiers (a table may be schema-qualified)",
            ));
        }
        let schema_dot = self
            .schema
            .as_ref()
            .map_or_else(String::new, |s| format!("{s}."));
        let bare = |base: &str| format!("{}{base}", self.prefix);
        let channel = match (&self.schema, self.prefix.as_str()) {
            (None, "") => "session_layer_invalidate".to_owned(),
            (schema, prefix) => format!(
                "{}{prefix}session_layer_invalidate",
                schema
                    .as_ref()
                    .map_or_else(String::new, |s| format!("{s}_"))
            ),
        };
        Ok(Names {
            sessions: format!("{schema_dot}{}", bare("sessions")),
            sessions_bare: bare("sessions"),
            retired: format!("{schema_dot}{}", bare("session_retired_tokens")),
            retired_bare: bare("session_retired_tokens"),
            fences: format!("{schema_dot}{}", bare("session_user_fences")),
            fences_bare: bare("session_user_fences"),
            row_level_security: self.row_level_security.clone(),
            schema_dot,
            schema: self.schema.clone(),
            migrations: format!("_{}session_layer_migrations", self.prefix),
            channel: channel.into(),
            references: self
                .references
                .as_ref()
                .map(|(table, column)| format!(" REFERENCES {table} ({column}) ON DELETE CASCADE"))
                .unwrap_or_default(),
            user_kind: U::KIND,
        })
    }
}

/// Identifiers that need no quoting in either database, and cannot smuggle SQL.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 40
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Resolved, validated names, ready to be put into SQL.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// Qualified name of the sessions table.
    pub(crate) sessions: String,
    /// Unqualified, for index and constraint names.
    pub(crate) sessions_bare: String,
    pub(crate) retired: String,
    pub(crate) retired_bare: String,
    pub(crate) fences: String,
    pub(crate) fences_bare: String,
    /// The definer and application roles of row-level security, when it is on.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) row_level_security: Option<(String, String)>,
    /// `schema.` or nothing.
    pub(crate) schema_dot: String,
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) schema: Option<String>,
    /// The migration bookkeeping table, unqualified.
    pub(crate) migrations: String,
    /// PostgreSQL notification channel.
    pub(crate) channel: Arc<str>,
    /// ` REFERENCES … ON DELETE CASCADE`, or nothing.
    pub(crate) references: String,
    pub(crate) user_kind: UserIdKind,
}

impl Names {
    /// Replaces the `{name}` placeholders of a migration or statement template.
    pub(crate) fn render(&self, template: &str) -> String {
        template
            .replace("{sessions}", &self.sessions)
            .replace("{sessions_bare}", &self.sessions_bare)
            .replace("{retired}", &self.retired)
            .replace("{retired_bare}", &self.retired_bare)
            .replace("{fences}", &self.fences)
            .replace("{fences_bare}", &self.fences_bare)
            .replace("{schema_dot}", &self.schema_dot)
            .replace("{channel}", &self.channel)
            .replace("{references}", &self.references)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_keep_the_historical_names() {
        let names = Tables::new().resolve(false).unwrap();
        assert_eq!(names.sessions, "sessions");
        assert_eq!(names.retired, "session_retired_tokens");
        assert_eq!(names.fences, "session_user_fences");
        assert_eq!(names.migrations, "_session_layer_migrations");
        assert_eq!(&*names.channel, "session_layer_invalidate");
    }

    #[test]
    fn schema_and_prefix_follow_every_name() {
        let names = Tables::new()
            .user_id::<i64>()
            .schema("auth")
            .prefix("user_")
            .references("auth.users", "id")
            .resolve(false)
            .unwrap();
        assert_eq!(names.sessions, "auth.user_sessions");
        assert_eq!(names.fences, "auth.user_session_user_fences");
        assert_eq!(names.migrations, "_user_session_layer_migrations");
        assert_eq!(&*names.channel, "auth_user_session_layer_invalidate");
        assert_eq!(
            names.references,
            " REFERENCES auth.users (id) ON DELETE CASCADE"
        );
        assert_eq!(names.user_kind, UserIdKind::BigInt);
    }

    #[test]
    fn names_that_could_smuggle_sql_are_refused() {
        for bad in ["Users", "a-b", "x; DROP TABLE users", "", "1abc", "a\"b"] {
            assert!(Tables::new().schema(bad).resolve(false).is_err(), "{bad:?}");
        }
        assert!(Tables::new().prefix("x y").resolve(true).is_err());
        assert!(Tables::new().schema("auth").resolve(true).is_err());
        assert!(
            Tables::new()
                .schema("auth")
                .row_level_security("definer; DROP ROLE app", "app")
                .resolve(false)
                .is_err()
        );
        assert!(
            Tables::new()
                .row_level_security("definer", "app")
                .resolve(false)
                .is_err(),
            "row-level security needs a schema"
        );
        assert!(
            Tables::new()
                .row_level_security("definer", "app")
                .resolve(true)
                .is_err(),
            "SQLite has no row-level security"
        );
        assert!(
            Tables::new()
                .references("a.b.c", "id")
                .resolve(false)
                .is_err()
        );
        assert!(
            Tables::new()
                .references("users", "id) ON DELETE SET NULL --")
                .resolve(false)
                .is_err()
        );
    }
}
