//! Migrations: the status, tombstone and patch log tables and the schema's own, applied once across replicas.

use diesel::{Connection, RunQueryDsl};

use super::{EntitySchema, Migration, WorkerError};
use crate::{
    db::{self, AnyConnection, DatabaseKind, with_backend},
    status,
};

const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS nomnom_migrations (version TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL)";

/// Serialises replicas that start at once (PostgreSQL; SQLite has one writer anyway).
fn lock_migrations(conn: &mut AnyConnection) -> diesel::QueryResult<()> {
    if let AnyConnection::Postgresql(pg) = conn {
        diesel::sql_query("SELECT pg_advisory_xact_lock(7236423147236412)").execute(pg)?;
    }
    Ok(())
}

/// Creates the status table and applies the schema's migrations not applied yet. On
/// PostgreSQL an advisory lock serialises replicas that start at once.
pub fn migrate<S: EntitySchema>(
    conn: &mut AnyConnection,
    schema: &S,
    kind: DatabaseKind,
) -> Result<(), WorkerError> {
    let fail = |version: &str| {
        let version = version.to_owned();
        move |source| WorkerError::Migration { version, source }
    };
    conn.transaction(|conn| {
        lock_migrations(conn)?;
        create_runtime_tables(conn)
    })
    .map_err(fail("status"))?;
    for migration in schema.migrations(kind) {
        apply(conn, migration).map_err(fail(migration.version))?;
    }
    Ok(())
}

/// Whether `migration` is recorded as applied.
fn is_applied(conn: &mut AnyConnection, migration: &Migration) -> diesel::QueryResult<bool> {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let sql = format!(
        "SELECT count(*) AS n FROM nomnom_migrations WHERE version = {}",
        conn.kind().placeholder(1)
    );
    let count = with_backend!(conn, c => diesel::sql_query(sql)
        .bind::<diesel::sql_types::Text, _>(migration.version)
        .get_result::<Count>(c))?;
    Ok(count.n > 0)
}

fn apply(conn: &mut AnyConnection, migration: &Migration) -> diesel::QueryResult<()> {
    conn.transaction(|conn| {
        lock_migrations(conn)?;
        if is_applied(conn, migration)? {
            return Ok(());
        }
        db::run_script(conn, migration.up)?;
        let record = format!(
            "INSERT INTO nomnom_migrations (version, name) VALUES ('{}', '{}')",
            migration.version.replace('\'', "''"),
            migration.name.replace('\'', "''")
        );
        db::run_script(conn, &record)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
        Ok(())
    })
}

/// Exactly-once rests on acknowledging only durable commits: with PostgreSQL's
/// `synchronous_commit` off, a database crash can lose commits the worker has acked.
pub(super) fn warn_if_commits_are_asynchronous(conn: &mut AnyConnection) {
    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        synchronous_commit: String,
    }
    if let AnyConnection::Postgresql(pg) = conn
        && let Ok(setting) = diesel::sql_query("SHOW synchronous_commit").get_result::<Setting>(pg)
        && setting.synchronous_commit == "off"
    {
        tracing::warn!(
            "PostgreSQL has synchronous_commit=off: a database crash can lose rows of messages already acknowledged; set synchronous_commit=on (the default) for exactly-once"
        );
    }
}

/// Creates nomnom's own tables if they do not exist: migrations, status, tombstones, the
/// patch log and stream incarnations (inside the caller's transaction, if any).
pub fn create_runtime_tables(conn: &mut AnyConnection) -> diesel::QueryResult<()> {
    db::run_script(conn, MIGRATIONS_TABLE)?;
    db::run_script(conn, crate::apply::TOMBSTONES_DDL)?;
    db::run_script(conn, crate::apply::PATCHES_DDL)?;
    db::run_script(conn, crate::apply::STREAMS_DDL)?;
    status::create_table(conn)
}
