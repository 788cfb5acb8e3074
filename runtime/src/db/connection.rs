//! Connections of either backend, and transactions on them.

use diesel::{
    connection::SimpleConnection, pg::PgConnection, prelude::*, sqlite::SqliteConnection,
};

use super::{DatabaseKind, DatabaseUrl, DatabaseUrlError};

/// A database connection of either backend.
#[derive(diesel::MultiConnection)]
pub enum AnyConnection {
    Postgresql(PgConnection),
    Sqlite(SqliteConnection),
}

impl AnyConnection {
    /// Which database this is.
    pub fn kind(&self) -> DatabaseKind {
        match self {
            Self::Postgresql(_) => DatabaseKind::Postgres,
            Self::Sqlite(_) => DatabaseKind::Sqlite,
        }
    }
}

impl std::fmt::Debug for AnyConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Postgresql(_) => "AnyConnection::Postgresql",
            Self::Sqlite(_) => "AnyConnection::Sqlite",
        })
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Url(#[from] DatabaseUrlError),
    #[error("cannot connect to {url}: {source}; check DATABASE_URL and that the database is up")]
    Connection {
        url: String,
        source: ConnectionError,
    },
}

/// Opens a connection for a `DATABASE_URL`. SQLite gets WAL mode and a busy timeout, so a
/// reader (the API's status lookups) does not block the writer.
pub fn connect(url: &str) -> Result<AnyConnection, ConnectError> {
    let parsed = DatabaseUrl::parse(url)?;
    let fail = |source| ConnectError::Connection {
        url: parsed.redacted(),
        source,
    };
    Ok(match parsed.kind {
        DatabaseKind::Postgres => AnyConnection::Postgresql(
            PgConnection::establish(&parsed.connection_string).map_err(fail)?,
        ),
        DatabaseKind::Sqlite => {
            let mut conn = SqliteConnection::establish(&parsed.connection_string).map_err(fail)?;
            // busy_timeout first: even switching to WAL waits for other connections' locks.
            conn.batch_execute("PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
                .map_err(|e| fail(ConnectionError::CouldntSetupConfiguration(e)))?;
            AnyConnection::Sqlite(conn)
        }
    })
}

/// Runs SQL text (several statements, no binds): migrations, transaction control.
pub fn run_script(conn: &mut AnyConnection, sql: &str) -> QueryResult<()> {
    super::with_backend!(conn, c => c.batch_execute(sql))
}

/// Whether the database answers a trivial query.
pub fn ping(conn: &mut AnyConnection) -> QueryResult<()> {
    run_script(conn, "SELECT 1")
}

/// Whether the database would take a write now: an empty write transaction. Unlike
/// [`ping`], this waits for (and fails on) SQLite's writer lock held by someone else.
pub fn probe(conn: &mut AnyConnection) -> QueryResult<()> {
    write_transaction(conn, ping)
}

/// Runs `work` in a write transaction. On SQLite it begins with `BEGIN IMMEDIATE`, so the
/// writer lock is taken up front (waiting on `busy_timeout`) instead of failing with
/// "database is locked" when a deferred transaction tries to upgrade.
pub fn write_transaction<T, E>(
    conn: &mut AnyConnection,
    work: impl FnOnce(&mut AnyConnection) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<diesel::result::Error>,
{
    if conn.kind() == DatabaseKind::Postgres {
        return conn.transaction(work);
    }
    run_script(conn, "BEGIN IMMEDIATE")?;
    let result = work(conn).and_then(|value| match run_script(conn, "COMMIT") {
        Ok(()) => Ok(value),
        Err(err) => Err(err.into()),
    });
    if result.is_err() {
        let _ = run_script(conn, "ROLLBACK");
    }
    result
}
