//! The shipped migrations, rendered for the configured [`Tables`](super::Tables): names, user id
//! type and foreign key. With the defaults they render to exactly the SQL of earlier releases,
//! so databases migrated before keep their checksums.

use sqlx::SqlSafeStr as _;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::tables::Names;
use crate::error::StoreError;
use crate::user_id::UserIdKind;

/// `(version, description, template)` of each migration.
type Shipped = [(i64, &'static str, &'static str)];

#[cfg(feature = "postgres")]
const POSTGRES: &Shipped = &[
    (
        20261124000001,
        "create sessions",
        include_str!("../../migrations/postgres/20261124000001_create_sessions.sql"),
    ),
    (
        20261125000001,
        "token families and fences",
        include_str!("../../migrations/postgres/20261125000001_token_families_and_fences.sql"),
    ),
];

#[cfg(feature = "postgres")]
const ROW_LEVEL_SECURITY: (i64, &str, &str) = (
    20261125000002,
    "row level security",
    include_str!("../../migrations/postgres/20261125000002_row_level_security.sql"),
);

#[cfg(feature = "sqlite")]
const SQLITE: &Shipped = &[
    (
        20261124000001,
        "create sessions",
        include_str!("../../migrations/sqlite/20261124000001_create_sessions.sql"),
    ),
    (
        20261125000001,
        "token families and fences",
        include_str!("../../migrations/sqlite/20261125000001_token_families_and_fences.sql"),
    ),
];

/// The PostgreSQL migrations for `names`.
#[cfg(feature = "postgres")]
/// `create_schema`: whether the configured schema is missing and must be created (creating it
/// needs `CREATE` on the database, which a pre-created schema spares the migrating role).
pub(crate) fn postgres(names: &Names, create_schema: bool) -> Migrator {
    // Padded so that the default renders to the historical text.
    let (user_type, fence_user_type) = match names.user_kind {
        UserIdKind::Uuid => ("UUID       ", "UUID  "),
        UserIdKind::BigInt => ("BIGINT     ", "BIGINT"),
        UserIdKind::Text => ("TEXT       ", "TEXT  "),
    };
    // A session deleted behind the library's back (the foreign key's cascade from a deleted
    // user) is announced to every instance's cache.
    let deleted_trigger = if names.references.is_empty() {
        String::new()
    } else {
        format!(
            "\n-- Sessions deleted by the cascade from a deleted user leave every cache.\n\
             CREATE FUNCTION {schema_dot}{bare}_deleted() RETURNS trigger LANGUAGE plpgsql AS $$\n\
             BEGIN\n    PERFORM pg_notify('{channel}', 'd ' || encode(OLD.token_hash, 'hex'));\n    RETURN NULL;\nEND $$;\n\
             CREATE TRIGGER {bare}_deleted AFTER DELETE ON {sessions}\n    \
             FOR EACH ROW WHEN (OLD.revoked_at IS NULL)\n    \
             EXECUTE FUNCTION {schema_dot}{bare}_deleted();\n",
            schema_dot = names.schema_dot,
            bare = names.sessions_bare,
            channel = names.channel,
            sessions = names.sessions,
        )
    };
    let user_sql_type = user_type.trim_end();
    let (definer, app_role) = names
        .row_level_security
        .as_ref()
        .map_or(("", ""), |(definer, app)| (definer.as_str(), app.as_str()));
    let schema = names.schema.as_deref().unwrap_or_default();
    // Row-level security is a migration of its own, shipped only when it is on: turning it on
    // later applies it, and the defaults keep the historical list.
    let shipped: Vec<_> = POSTGRES
        .iter()
        .chain(
            names
                .row_level_security
                .is_some()
                .then_some(&ROW_LEVEL_SECURITY),
        )
        .copied()
        .collect();
    let mut migrator = migrator(
        &shipped,
        names,
        &[
            ("{user_type}", user_type),
            ("{fence_user_type}", fence_user_type),
            ("{deleted_trigger}", &deleted_trigger),
            ("{user_sql_type}", user_sql_type),
            ("{definer}", definer),
            ("{app_role}", app_role),
            ("{schema}", schema),
        ],
    );
    migrator.dangerous_set_table_name(format!("{}{}", names.schema_dot, names.migrations));
    if let Some(schema) = names.schema.as_ref().filter(|_| create_schema) {
        migrator.create_schema(schema.clone());
    }
    migrator
}

/// The SQLite migrations for `names`.
#[cfg(feature = "sqlite")]
pub(crate) fn sqlite(names: &Names) -> Migrator {
    let (user_type, fence_user_type) = match names.user_kind {
        UserIdKind::Uuid => (
            "BLOB    NOT NULL CHECK (length(user_id) = 16)",
            "BLOB    PRIMARY KEY NOT NULL CHECK (length(user_id) = 16)",
        ),
        UserIdKind::BigInt => ("INTEGER NOT NULL", "INTEGER PRIMARY KEY NOT NULL"),
        UserIdKind::Text => ("TEXT    NOT NULL", "TEXT    PRIMARY KEY NOT NULL"),
    };
    let mut migrator = migrator(
        SQLITE,
        names,
        &[
            ("{user_type}", user_type),
            ("{fence_user_type}", fence_user_type),
        ],
    );
    migrator.dangerous_set_table_name(names.migrations.clone());
    migrator
}

/// A failed migration run, with the likely cause when a recorded checksum differs: the
/// `Tables` settings changed since the tables were created.
pub(crate) fn failed(database: &'static str, error: sqlx::migrate::MigrateError) -> StoreError {
    let operation = match (database, &error) {
        ("postgres", sqlx::migrate::MigrateError::VersionMismatch(_)) => {
            "run the session-layer PostgreSQL migrations (a migration recorded as applied \
             differs from this one: the Tables settings differ from those the tables were \
             created with)"
        }
        ("postgres", _) => "run the session-layer PostgreSQL migrations",
        (_, sqlx::migrate::MigrateError::VersionMismatch(_)) => {
            "run the session-layer SQLite migrations (a migration recorded as applied differs \
             from this one: the Tables settings differ from those the tables were created with)"
        }
        _ => "run the session-layer SQLite migrations",
    };
    StoreError::new(operation, error)
}

fn migrator(shipped: &Shipped, names: &Names, vars: &[(&str, &str)]) -> Migrator {
    let migrations = shipped
        .iter()
        .map(|(version, description, template)| {
            let mut sql = names.render(template);
            for (placeholder, value) in vars {
                sql = sql.replace(placeholder, value);
            }
            Migration::new(
                *version,
                (*description).into(),
                MigrationType::Simple,
                sqlx::AssertSqlSafe(sql).into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Tables;

    /// Databases migrated by earlier releases keep their checksums.
    #[test]
    fn default_tables_render_the_historical_sql() {
        let names = Tables::new().resolve(false).unwrap();
        #[cfg(feature = "postgres")]
        {
            let rendered = postgres(&names, true);
            let historical = [
                include_str!("../../tests/data/historical/postgres_1.sql"),
                include_str!("../../tests/data/historical/postgres_2.sql"),
            ];
            for (migration, old) in rendered.iter().zip(historical) {
                assert_eq!(migration.sql.as_str(), old);
            }
        }
        #[cfg(feature = "sqlite")]
        {
            let names = Tables::new().resolve(true).unwrap();
            let rendered = sqlite(&names);
            let historical = [
                include_str!("../../tests/data/historical/sqlite_1.sql"),
                include_str!("../../tests/data/historical/sqlite_2.sql"),
            ];
            for (migration, old) in rendered.iter().zip(historical) {
                assert_eq!(migration.sql.as_str(), old);
            }
        }
        let _ = names;
    }
}
