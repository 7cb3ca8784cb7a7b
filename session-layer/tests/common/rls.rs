//! PostgreSQL databases with row-level security, as `Tables::row_level_security` documents.

use std::sync::Arc;

use session_layer::{PostgresStore, SessionStore, UserId};
use uuid::Uuid;

/// A database with row-level security set up as `Tables::row_level_security` documents: a
/// definer role, an owner role that migrates, and the application's role that serves.
pub struct RlsDatabase<U: UserId> {
    /// The store as the application's role.
    pub app: PostgresStore<U>,
    /// The application's role's URL, for raw SQL.
    pub app_url: String,
    /// The tables' owner's URL.
    pub owner_url: String,
    /// The superuser's URL of the database.
    pub admin_url: String,
    /// The definer role's name.
    pub definer: String,
    /// The application role's name.
    pub app_role: String,
}

/// `url` with `user:password` as its credentials.
pub fn url_as(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}:{password}@{host}")
}

/// Sessions in schema `auth` with row-level security, for user ids `U`.
pub async fn postgres_rls<U: UserId>() -> RlsDatabase<U> {
    postgres_rls_with(Some("auth"), None)
        .await
        .expect("migrate as the owner")
}

/// Row-level security in `schema` (none: refused by `Tables`), with a foreign key to
/// `public.app_users (id)` (created here, UUID ids) when `references` is set. Fails with the
/// migration's error.
pub async fn postgres_rls_with<U: UserId>(
    schema: Option<&str>,
    references: Option<()>,
) -> Result<RlsDatabase<U>, String> {
    postgres_rls_on(test_support::postgres_database(), schema, references).await
}

/// [`postgres_rls_with`] in the database of `admin_url` (a superuser's URL).
pub async fn postgres_rls_on<U: UserId>(
    admin_url: String,
    schema: Option<&str>,
    references: Option<()>,
) -> Result<RlsDatabase<U>, String> {
    let suffix = &Uuid::now_v7().simple().to_string()[20..];
    let (definer, owner, app) = (
        format!("definer_{suffix}"),
        format!("owner_{suffix}"),
        format!("app_{suffix}"),
    );
    let database = admin_url.rsplit('/').next().expect("a database name");
    let admin = sqlx::PgPool::connect(&admin_url).await.expect("connect");
    let mut setup = vec![
        format!("CREATE ROLE {definer} NOLOGIN"),
        format!("CREATE ROLE {owner} LOGIN NOINHERIT PASSWORD 'owner-pw'"),
        format!("GRANT {definer} TO {owner}"),
        format!("CREATE ROLE {app} LOGIN PASSWORD 'app-pw'"),
        format!("REVOKE CREATE ON DATABASE {database} FROM PUBLIC"),
    ];
    if let Some(schema) = schema {
        // A schema made for the owner: it needs no CREATE on the database.
        setup.push(format!("CREATE SCHEMA {schema} AUTHORIZATION {owner}"));
    }
    if references.is_some() {
        setup.extend([
            "CREATE TABLE public.app_users (id UUID PRIMARY KEY)".to_owned(),
            format!("GRANT REFERENCES ON public.app_users TO {owner}"),
            format!("GRANT SELECT, INSERT, DELETE ON public.app_users TO {app}"),
        ]);
    }
    for statement in setup {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&admin)
            .await
            .expect("set up roles");
    }
    admin.close().await;
    let tables = || {
        let tables = session_layer::store::Tables::new()
            .user_id::<U>()
            .row_level_security(&definer, &app);
        let tables = match references {
            Some(()) => tables.references("public.app_users", "id"),
            None => tables,
        };
        match schema {
            Some(schema) => tables.schema(schema),
            None => tables,
        }
    };
    let owner_url = url_as(&admin_url, &owner, "owner-pw");
    let owner_store = PostgresStore::connect_with(&owner_url, tables())
        .await
        .map_err(|e| e.to_string())?;
    let migrated = owner_store.migrate().await.map_err(|e| e.to_string());
    owner_store.pool().close().await;
    migrated?;
    let app_url = url_as(&admin_url, &app, "app-pw");
    let app_store = PostgresStore::connect_with(&app_url, tables())
        .await
        .expect("connect as the app");
    Ok(RlsDatabase {
        app: app_store,
        app_url,
        owner_url,
        admin_url,
        definer,
        app_role: app,
    })
}

/// The application's role's store over [`postgres_rls`].
pub async fn postgres_rls_as<U: UserId>() -> Arc<dyn SessionStore<U>> {
    Arc::new(postgres_rls::<U>().await.app)
}
