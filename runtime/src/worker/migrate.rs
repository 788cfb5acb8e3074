//! Migrations: the status, tombstone and patch log tables and the schema's own, applied once across replicas.

use std::time::{Duration, Instant};

use diesel::{Connection, RunQueryDsl};

use super::{EntitySchema, Migration, WorkerError};
use crate::{
    db::{self, AnyConnection, DatabaseKind, with_backend},
    status,
};

const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS nomnom_migrations (version TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, checksum TEXT)";

/// The SHA-256 of a migration's `up` SQL, as `nomnom_migrations.checksum` records it.
fn checksum(migration: &Migration) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(migration.up.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The advisory lock that serialises migrations across replicas (PostgreSQL).
const MIGRATION_LOCK: i64 = 7236423147236412;

/// Longest pause between two attempts at the migration lock.
const LOCK_POLL_MAX: Duration = Duration::from_millis(500);

/// Why a migration step did not happen.
enum Interrupt {
    Database(diesel::result::Error),
    /// Shutdown was requested while another process held the migration lock.
    Stopped,
}

impl From<diesel::result::Error> for Interrupt {
    fn from(err: diesel::result::Error) -> Self {
        Self::Database(err)
    }
}

/// Whether the migrations ran, or shutdown came first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrated {
    Done,
    /// Shutdown was requested while another process was running the migrations (it
    /// held their lock); this one changed nothing.
    Stopped,
}

/// Serialises replicas that start at once (PostgreSQL; SQLite has one writer anyway).
/// The lock is tried, not waited for inside the database (`pg_advisory_xact_lock` would
/// park the connection where nothing can interrupt it): while another process holds it,
/// it is tried again after a growing pause, and `stop()` ends the wait.
fn lock_migrations(conn: &mut AnyConnection, stop: &dyn Fn() -> bool) -> Result<(), Interrupt> {
    #[derive(diesel::QueryableByName)]
    struct Locked {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        locked: bool,
    }
    let AnyConnection::Postgresql(pg) = conn else {
        return Ok(());
    };
    let mut pause = Duration::from_millis(20);
    let mut waited = false;
    loop {
        let locked = diesel::sql_query(format!(
            "SELECT pg_try_advisory_xact_lock({MIGRATION_LOCK}) AS locked"
        ))
        .get_result::<Locked>(pg)?
        .locked;
        if locked {
            if waited {
                tracing::info!("migration lock acquired");
            }
            return Ok(());
        }
        if !waited {
            tracing::warn!(
                "another process is running the migrations (it holds their lock); waiting for it"
            );
            waited = true;
        }
        let until = Instant::now() + pause;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if stop() {
                return Err(Interrupt::Stopped);
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
        if stop() {
            return Err(Interrupt::Stopped);
        }
        pause = (pause * 2).min(LOCK_POLL_MAX);
    }
}

/// Creates the status table and applies the schema's migrations not applied yet. On
/// PostgreSQL an advisory lock serialises replicas that start at once.
pub fn migrate<S: EntitySchema>(
    conn: &mut AnyConnection,
    schema: &S,
    kind: DatabaseKind,
) -> Result<(), WorkerError> {
    migrate_unless(conn, schema, kind, &|| false).map(|_| ())
}

/// Like [`migrate`], giving up (with [`Migrated::Stopped`]) when `stop()` says so while
/// another process holds the migration lock.
pub fn migrate_unless<S: EntitySchema>(
    conn: &mut AnyConnection,
    schema: &S,
    kind: DatabaseKind,
    stop: &dyn Fn() -> bool,
) -> Result<Migrated, WorkerError> {
    let fail = |version: &str, interrupt| match interrupt {
        Interrupt::Database(source) => Err(WorkerError::Migration {
            version: version.to_owned(),
            source,
        }),
        Interrupt::Stopped => Ok(Migrated::Stopped),
    };
    if let Err(interrupt) = conn.transaction(|conn| {
        lock_migrations(conn, stop)?;
        create_runtime_tables(conn).map_err(Interrupt::from)
    }) {
        return fail("status", interrupt);
    }
    for migration in schema.migrations(kind) {
        match apply(conn, migration, stop) {
            Err(interrupt) => return fail(migration.version, interrupt),
            Ok(Applied::Now | Applied::Before) => {}
            Ok(Applied::Edited { recorded }) => {
                return Err(WorkerError::MigrationEdited {
                    version: migration.version.to_owned(),
                    name: migration.name.to_owned(),
                    recorded,
                    now: checksum(migration),
                });
            }
        }
    }
    Ok(Migrated::Done)
}

/// What became of one migration.
enum Applied {
    Now,
    /// Applied before, with the same SQL (or before checksums were recorded).
    Before,
    /// Applied before, but its SQL is not what ran: it was edited since.
    Edited {
        recorded: String,
    },
}

/// The checksum recorded for `migration` if it was applied (`Some(None)`: applied before
/// checksums were recorded); `None` if it was not.
fn recorded(
    conn: &mut AnyConnection,
    migration: &Migration,
) -> diesel::QueryResult<Option<Option<String>>> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        checksum: Option<String>,
    }
    let sql = format!(
        "SELECT checksum FROM nomnom_migrations WHERE version = {}",
        conn.kind().placeholder(1)
    );
    let rows = with_backend!(conn, c => diesel::sql_query(sql)
        .bind::<diesel::sql_types::Text, _>(migration.version)
        .load::<Row>(c))?;
    Ok(rows.into_iter().next().map(|r| r.checksum))
}

fn apply(
    conn: &mut AnyConnection,
    migration: &Migration,
    stop: &dyn Fn() -> bool,
) -> Result<Applied, Interrupt> {
    let sum = checksum(migration);
    let quote = |text: &str| text.replace('\'', "''");
    conn.transaction(|conn| {
        lock_migrations(conn, stop)?;
        match recorded(conn, migration)? {
            Some(Some(recorded)) if recorded == sum => return Ok(Applied::Before),
            Some(Some(recorded)) => return Ok(Applied::Edited { recorded }),
            Some(None) => {
                // Recorded by a nomnom without checksums: adopt this one.
                let adopt = format!(
                    "UPDATE nomnom_migrations SET checksum = '{sum}' WHERE version = '{}'",
                    quote(migration.version)
                );
                db::run_script(conn, &adopt)?;
                return Ok(Applied::Before);
            }
            None => {}
        }
        db::run_script(conn, migration.up)?;
        let record = format!(
            "INSERT INTO nomnom_migrations (version, name, checksum) VALUES ('{}', '{}', '{sum}')",
            quote(migration.version),
            quote(migration.name)
        );
        db::run_script(conn, &record)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
        Ok(Applied::Now)
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
    // A migrations table made before checksums were recorded gains the column.
    let migrations = crate::sql::Table {
        name: "nomnom_migrations",
        columns: &[crate::sql::Column {
            name: "checksum",
            column_type: crate::sql::ColumnType::Text,
        }],
        key: &[],
        write: crate::sql::WriteMode::Insert,
    };
    if !db::missing_columns(conn, &migrations)?.is_empty() {
        db::run_script(
            conn,
            "ALTER TABLE nomnom_migrations ADD COLUMN checksum TEXT",
        )?;
    }
    db::run_script(conn, crate::apply::TOMBSTONES_DDL)?;
    db::run_script(conn, crate::apply::PATCHES_DDL)?;
    db::run_script(conn, crate::apply::STREAMS_DDL)?;
    status::create_table(conn)
}
