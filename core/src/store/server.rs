//! What a shard's server and schema say about themselves: the migrations it recorded and the
//! settings the deployment checks read (prepared transactions, the default collation).

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

use super::table_exists;

/// The migrations sea-orm recorded on this shard, oldest first (none before the first run).
pub async fn applied_migrations(conn: &impl ConnectionTrait) -> Result<Vec<String>, DbErr> {
    if !table_exists(conn, "seaql_migrations").await? {
        return Ok(Vec::new());
    }
    conn.query_all_raw(Statement::from_string(
        DbBackend::Postgres,
        "SELECT version FROM seaql_migrations ORDER BY version",
    ))
    .await?
    .iter()
    .map(|row| row.try_get::<String>("", "version"))
    .collect()
}

/// The server's `max_prepared_transactions`: two-phase orders need it above zero.
pub async fn max_prepared_transactions(conn: &impl ConnectionTrait) -> Result<i32, DbErr> {
    let row = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT current_setting('max_prepared_transactions')::int AS setting",
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("current_setting returned no row".into()))?;
    row.try_get("", "setting")
}

/// How a database sorts and classifies text by default: what every shard must share, since
/// the bucket mover ranges and compares rows as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collation {
    /// `libc`, `icu` or `builtin` (PostgreSQL 17).
    pub provider: String,
    /// The ICU or builtin locale; `None` for libc.
    pub locale: Option<String>,
    /// `datcollate`: the libc collation (ignored for sorting by the other providers).
    pub collate: String,
    /// `datctype`: the libc character classification.
    pub ctype: String,
}

impl std::fmt::Display for Collation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let libc = format!("LC_COLLATE={} LC_CTYPE={}", self.collate, self.ctype);
        match (&*self.provider, &self.locale) {
            ("libc", _) | (_, None) => f.write_str(&libc),
            ("icu", Some(locale)) => write!(f, "ICU {locale} ({libc})"),
            (provider, Some(locale)) => write!(f, "{provider} {locale} ({libc})"),
        }
    }
}

/// The current database's default collation. Read through `to_jsonb` so that it works
/// whether the server calls the locale `daticulocale` (15, 16) or `datlocale` (17).
pub async fn collation(conn: &impl ConnectionTrait) -> Result<Collation, DbErr> {
    let row = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT datcollate::text AS datcollate, datctype::text AS datctype,
                    CASE to_jsonb(d) ->> 'datlocprovider'
                         WHEN 'i' THEN 'icu' WHEN 'b' THEN 'builtin' ELSE 'libc' END AS provider,
                    nullif(coalesce(to_jsonb(d) ->> 'datlocale',
                                    to_jsonb(d) ->> 'daticulocale'), '') AS locale
             FROM pg_database d
             WHERE datname = current_database()",
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("pg_database has no row for this database".into()))?;
    Ok(Collation {
        provider: row.try_get("", "provider")?,
        locale: row.try_get("", "locale")?,
        collate: row.try_get("", "datcollate")?,
        ctype: row.try_get("", "datctype")?,
    })
}
