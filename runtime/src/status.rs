//! The status table: one row per message, written by workers in the same transaction as
//! the message's entity rows, and read by nats-api's status endpoint.
//!
//! The SQL here is the only definition of the table, written once for PostgreSQL and
//! SQLite over [`db::dialect`](crate::db::dialect), and tested against both.

use std::time::Duration;

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use diesel::{
    pg::PgConnection,
    prelude::*,
    r2d2::{ManageConnection, Pool, PoolError, R2D2Connection},
    sql_types::{BigInt, Integer, Nullable, Text},
    sqlite::SqliteConnection,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::{self, AnyConnection, DatabaseKind, DatabaseUrl, DatabaseUrlError, with_backend};

/// What a worker did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    /// Its rows are committed.
    Persisted,
    /// It was refused for good and copied to the dead-letter stream.
    DeadLettered,
    /// Reserved for recording transient failures; workers do not write it yet (a
    /// database that is down cannot record it anyway).
    Retrying,
    /// Not applied: its row already reflected a newer message (a later stream sequence,
    /// or a higher version). Final, like `persisted`.
    SkippedStale,
    /// Not applied: a patch of a row that does not exist. Final, like `persisted`.
    SkippedMissing,
}

impl MessageState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Persisted => "persisted",
            Self::DeadLettered => "dead_lettered",
            Self::Retrying => "retrying",
            Self::SkippedStale => "skipped_stale",
            Self::SkippedMissing => "skipped_missing",
        }
    }

    /// Whether the message is done with: nothing overwrites the row, and a redelivery
    /// is acknowledged without being written again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Persisted | Self::SkippedStale | Self::SkippedMissing
        )
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Persisted,
            Self::DeadLettered,
            Self::Retrying,
            Self::SkippedStale,
            Self::SkippedMissing,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// One row of the status table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub message_id: Uuid,
    pub entity: Option<String>,
    pub status: MessageState,
    pub attempts: i32,
    pub error: Option<String>,
    pub received_at: DateTime<Utc>,
    pub processed_at: DateTime<Utc>,
    pub stream_sequence: Option<i64>,
}

/// The table on PostgreSQL.
pub const POSTGRES_DDL: &str = "CREATE TABLE IF NOT EXISTS nomnom_message_status (
    message_id UUID PRIMARY KEY,
    entity TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    received_at TIMESTAMPTZ NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL,
    stream_sequence BIGINT
)";

/// The table on SQLite (ids as canonical hyphenated text, times as RFC 3339 text).
pub const SQLITE_DDL: &str = "CREATE TABLE IF NOT EXISTS nomnom_message_status (
    message_id TEXT PRIMARY KEY NOT NULL,
    entity TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    received_at TEXT NOT NULL,
    processed_at TEXT NOT NULL,
    stream_sequence BIGINT
)";

/// The status table's name.
pub const TABLE: &str = "nomnom_message_status";

const COLUMNS: &str =
    "message_id, entity, status, attempts, error, received_at, processed_at, stream_sequence";

/// A `persisted` (or skipped) row is final: nothing overwrites it (a late dead-letter of a message
/// another worker already committed, say). Everything else may be updated (a replayed
/// dead letter that now persists).
const UPSERT_SET: &str = "ON CONFLICT (message_id) DO UPDATE SET entity = excluded.entity, \
     status = excluded.status, attempts = excluded.attempts, error = excluded.error, \
     processed_at = excluded.processed_at, stream_sequence = excluded.stream_sequence \
     WHERE nomnom_message_status.status NOT IN ('persisted', 'skipped_stale', 'skipped_missing')";

/// Status rows per statement when claiming: 8 bind parameters each keeps a statement
/// far under both databases' limits.
const CLAIM_CHUNK: usize = 1_000;

/// The multi-row upsert of `rows` records; `returning` lists the ids it wrote.
fn upsert_sql(kind: DatabaseKind, rows: usize, returning: bool) -> String {
    // Text: placeholders without PostgreSQL casts (the binds carry the types).
    let types = [crate::sql::ColumnType::Text; 8];
    let mut sql = format!(
        "INSERT INTO {TABLE} ({COLUMNS}) VALUES {}",
        crate::sql::value_lists(kind, &types, rows)
    );
    sql.push(' ');
    sql.push_str(UPSERT_SET);
    if returning {
        sql.push_str(" RETURNING message_id");
    }
    sql
}

/// Why the status table could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Url(#[from] DatabaseUrlError),
    #[error(
        "cannot connect to the status database: {0}; check DATABASE_URL and that the database is up"
    )]
    Connect(#[from] PoolError),
    #[error("status database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("status row for {0} holds an unknown status {1:?}")]
    UnknownState(String, String),
    #[error("status database task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn state(id: Uuid, text: &str) -> Result<MessageState, StatusError> {
    MessageState::parse(text).ok_or_else(|| StatusError::UnknownState(id.to_string(), text.into()))
}

/// Creates the table if it does not exist (inside the caller's transaction, if any).
pub fn create_table(conn: &mut AnyConnection) -> QueryResult<()> {
    db::run_script(
        conn,
        match conn.kind() {
            DatabaseKind::Postgres => POSTGRES_DDL,
            DatabaseKind::Sqlite => SQLITE_DDL,
        },
    )
}

/// Upserts `records` (distinct ids) in one statement; with `returning`, returns the ids
/// written (those not persisted before).
fn upsert_chunk(
    conn: &mut AnyConnection,
    records: &[StatusRecord],
    returning: bool,
) -> QueryResult<Vec<Uuid>> {
    let sql = upsert_sql(conn.kind(), records.len(), returning);
    with_backend!(conn, c => {
        #[derive(QueryableByName)]
        struct Claimed {
            #[diesel(sql_type = dialect::UuidSql)]
            message_id: dialect::UuidValue,
        }
        let mut query = diesel::sql_query(sql).into_boxed::<dialect::Backend>();
        for record in records {
            query = query
                .bind::<dialect::UuidSql, _>(dialect::uuid(record.message_id))
                .bind::<Nullable<Text>, _>(record.entity.clone())
                .bind::<Text, _>(record.status.as_str())
                .bind::<Integer, _>(record.attempts)
                .bind::<Nullable<Text>, _>(record.error.clone())
                .bind::<dialect::TimeSql, _>(record.received_at)
                .bind::<dialect::TimeSql, _>(record.processed_at)
                .bind::<Nullable<BigInt>, _>(record.stream_sequence);
        }
        if !returning {
            return query.execute(c).map(|_| Vec::new());
        }
        query
            .load::<Claimed>(c)?
            .into_iter()
            .map(|row| dialect::read_uuid(row.message_id))
            .collect()
    })
}

/// Writes (or overwrites, unless persisted) one status row, in the caller's transaction.
pub fn upsert(conn: &mut AnyConnection, record: &StatusRecord) -> QueryResult<()> {
    upsert_chunk(conn, std::slice::from_ref(record), false).map(drop)
}

/// Writes `persisted` status rows for `records` (distinct ids) and returns the ids this
/// transaction claimed: those not already persisted. On PostgreSQL a concurrent
/// transaction claiming the same id (a redelivery to a second worker) makes this one wait
/// on the row and then see it persisted; SQLite serialises writers (`BEGIN IMMEDIATE`).
/// Either way only one of them writes the entity rows.
pub fn claim(conn: &mut AnyConnection, records: &[StatusRecord]) -> QueryResult<HashSet<Uuid>> {
    if conn.kind() == DatabaseKind::Sqlite {
        return claim_on_sqlite(conn, records);
    }
    let mut claimed = HashSet::with_capacity(records.len());
    for chunk in records.chunks(CLAIM_CHUNK) {
        claimed.extend(upsert_chunk(conn, chunk, true)?);
    }
    Ok(claimed)
}

/// The status table as [`crate::sql`] writes rows, for [`claim_new`] and SQLite's
/// [`claim`].
const STATUS_TABLE: crate::sql::Table = {
    use crate::sql::{Column, ColumnType};
    crate::sql::Table {
        name: TABLE,
        columns: &[
            Column::new("message_id", ColumnType::Uuid),
            Column::new("entity", ColumnType::Text),
            Column::new("status", ColumnType::Text),
            Column::new("attempts", ColumnType::I32),
            Column::new("error", ColumnType::Text),
            Column::new("received_at", ColumnType::Timestamptz),
            Column::new("processed_at", ColumnType::Timestamptz),
            Column::new("stream_sequence", ColumnType::I64),
        ],
        key: &["message_id"],
        write: crate::sql::WriteMode::Insert,
    }
};

/// [`claim`] for messages that have no status row yet, as a first delivery usually has
/// not: on PostgreSQL their rows are copied straight into the table (no conflict
/// clause, nothing returned) and all of them are claimed. A message that has a row
/// after all (replayed from the dead letters, say), or one a concurrent transaction is
/// claiming, makes PostgreSQL refuse the copy with a unique violation (the concurrent
/// one once it commits): the caller then claims again with [`claim`], in a new
/// transaction. On SQLite this is [`claim`].
pub fn claim_new(conn: &mut AnyConnection, records: &[StatusRecord]) -> QueryResult<HashSet<Uuid>> {
    if conn.kind() != DatabaseKind::Postgres {
        return claim(conn, records);
    }
    let rows: Vec<Vec<crate::sql::Value>> = (records.iter())
        .map(|record| values(DatabaseKind::Postgres, record))
        .collect();
    crate::sql::write_absent_rows(conn, &STATUS_TABLE, &rows)?;
    Ok(records.iter().map(|r| r.message_id).collect())
}

/// [`claim`] on SQLite: upserts of a few sizes, each prepared once per connection
/// ([`crate::sql::in_chunks`]); a record is claimed when the upsert returns its id.
fn claim_on_sqlite(
    conn: &mut AnyConnection,
    records: &[StatusRecord],
) -> QueryResult<HashSet<Uuid>> {
    use crate::sql::{ColumnType, Value};
    #[derive(QueryableByName)]
    struct Claimed {
        #[diesel(sql_type = Text)]
        message_id: String,
    }
    let rows: Vec<Vec<Value>> = (records.iter())
        .map(|record| values(DatabaseKind::Sqlite, record))
        .collect();
    let types: Vec<ColumnType> = STATUS_TABLE.columns.iter().map(|c| c.column_type).collect();
    let mut claimed = HashSet::with_capacity(records.len());
    let mut binds: Vec<(ColumnType, &Value)> = Vec::new();
    let sql_for = |kind, rows| upsert_sql(kind, rows, true);
    crate::sql::in_chunks(
        conn.kind(),
        &rows,
        types.len(),
        sql_for,
        |sql, _, chunk, prepare| {
            crate::sql::bind_rows(&mut binds, &types, chunk);
            for row in crate::sql::load_as::<Claimed>(conn, sql, &binds, prepare)? {
                claimed.insert(db::dialect::sqlite::read_uuid(row.message_id)?);
            }
            Ok(())
        },
    )?;
    Ok(claimed)
}

/// A status row as [`crate::sql`] binds it, in the text `kind` stores: on PostgreSQL
/// times in RFC 3339 with microseconds, as diesel binds them on the typed path; on SQLite
/// ids and times as diesel's `Text` and `TimestamptzSqlite` write them.
fn values(kind: DatabaseKind, record: &StatusRecord) -> Vec<crate::sql::Value> {
    use crate::sql::Value;
    let time = |time: &DateTime<Utc>| {
        Value::Text(match kind {
            DatabaseKind::Postgres => time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            DatabaseKind::Sqlite => time.format("%F %T%.f%:z").to_string(),
        })
    };
    vec![
        Value::Text(record.message_id.as_hyphenated().to_string()),
        record.entity.clone().map_or(Value::Null, Value::Text),
        Value::Text(record.status.as_str().to_owned()),
        Value::I32(record.attempts),
        record.error.clone().map_or(Value::Null, Value::Text),
        time(&record.received_at),
        time(&record.processed_at),
        record.stream_sequence.map_or(Value::Null, Value::I64),
    ]
}

/// Sets the state (and error) of claimed messages, in the caller's transaction: skipped
/// ones, and earlier patches whose outcome a later batch revised.
pub fn mark(
    conn: &mut AnyConnection,
    marks: &[(Uuid, MessageState, Option<String>)],
) -> QueryResult<()> {
    let kind = conn.kind();
    let sql = format!(
        "UPDATE {TABLE} SET status = {}, error = {} WHERE message_id = {}",
        kind.placeholder(1),
        kind.placeholder(2),
        kind.placeholder(3)
    );
    for (id, state, why) in marks {
        with_backend!(&mut *conn, c => diesel::sql_query(sql.as_str())
            .bind::<Text, _>(state.as_str())
            .bind::<Nullable<Text>, _>(why.as_deref())
            .bind::<dialect::UuidSql, _>(dialect::uuid(*id))
            .execute(c))?;
    }
    Ok(())
}

/// The status row of `message_id`, if any.
pub fn fetch(
    conn: &mut AnyConnection,
    message_id: Uuid,
) -> Result<Option<StatusRecord>, StatusError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM {TABLE} WHERE message_id = {}",
        conn.kind().placeholder(1)
    );
    let row = with_backend!(conn, c => {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            status: String,
            #[diesel(sql_type = Nullable<Text>)]
            entity: Option<String>,
            #[diesel(sql_type = Integer)]
            attempts: i32,
            #[diesel(sql_type = Nullable<Text>)]
            error: Option<String>,
            #[diesel(sql_type = dialect::TimeSql)]
            received_at: DateTime<Utc>,
            #[diesel(sql_type = dialect::TimeSql)]
            processed_at: DateTime<Utc>,
            #[diesel(sql_type = Nullable<BigInt>)]
            stream_sequence: Option<i64>,
        }
        diesel::sql_query(sql)
            .bind::<dialect::UuidSql, _>(dialect::uuid(message_id))
            .get_result::<Row>(c)
            .optional()?
            .map(|r| (r.status, StatusRecord {
                message_id,
                entity: r.entity,
                status: MessageState::Persisted,
                attempts: r.attempts,
                error: r.error,
                received_at: r.received_at,
                processed_at: r.processed_at,
                stream_sequence: r.stream_sequence,
            }))
    });
    row.map(|(text, record)| {
        Ok(StatusRecord {
            status: state(message_id, &text)?,
            ..record
        })
    })
    .transpose()
}

/// Whether the status table exists (asked of the catalog).
pub fn table_exists(conn: &mut AnyConnection) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let sql = conn.kind().table_exists_sql(TABLE);
    let count = with_backend!(conn, c => diesel::sql_query(sql).get_result::<Count>(c))?;
    Ok(count.n > 0)
}

/// Opens pool connections without the worker's SQLite pragmas: readers only.
#[derive(Debug)]
struct Manager(DatabaseUrl);

impl ManageConnection for Manager {
    type Connection = AnyConnection;
    type Error = ConnectionError;

    fn connect(&self) -> Result<AnyConnection, Self::Error> {
        let url = &self.0.connection_string;
        Ok(match self.0.kind {
            DatabaseKind::Postgres => AnyConnection::Postgresql(PgConnection::establish(url)?),
            DatabaseKind::Sqlite => AnyConnection::Sqlite(SqliteConnection::establish(url)?),
        })
    }

    fn is_valid(&self, conn: &mut AnyConnection) -> Result<(), Self::Error> {
        conn.ping()
            .map_err(ConnectionError::CouldntSetupConfiguration)
    }

    fn has_broken(&self, conn: &mut AnyConnection) -> bool {
        conn.is_broken()
    }
}

/// A small connection pool over the status table, for services that only read it (and
/// for tests that write it the way a worker does). Blocking work runs off the async runtime.
#[derive(Clone)]
pub struct StatusStore {
    kind: DatabaseKind,
    pool: Pool<Manager>,
}

impl std::fmt::Debug for StatusStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StatusStore::{:?}", self.kind)
    }
}

impl StatusStore {
    /// Builds a pool. Connections are opened lazily, so a database that is down at start
    /// only makes lookups fail (503), not the service.
    pub fn open(url: &str, max_connections: u32) -> Result<Self, StatusError> {
        let url = DatabaseUrl::parse(url)?;
        Ok(Self {
            kind: url.kind,
            pool: Pool::builder()
                .max_size(max_connections)
                .min_idle(Some(0))
                .connection_timeout(Duration::from_secs(2))
                .build_unchecked(Manager(url)),
        })
    }

    /// Runs `work` on a pooled connection, off the async runtime.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut AnyConnection) -> Result<T, StatusError> + Send + 'static,
    ) -> Result<T, StatusError> {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || work(&mut *pool.get()?)).await?
    }

    /// Creates the table if it does not exist.
    pub async fn create_table(&self) -> Result<(), StatusError> {
        self.run(|conn| Ok(create_table(conn)?)).await
    }

    /// The recorded outcome of a message, if a worker recorded one. A missing table (no
    /// worker has started yet) means nothing is recorded.
    pub async fn fetch(&self, message_id: Uuid) -> Result<Option<StatusRecord>, StatusError> {
        self.run(move |conn| match fetch(conn, message_id) {
            Err(StatusError::Query(err)) if !table_exists(conn)? => {
                tracing::debug!(error = %err, "no status table yet");
                Ok(None)
            }
            other => other,
        })
        .await
    }

    /// Writes (or overwrites) one status row in its own transaction.
    pub async fn upsert(&self, record: StatusRecord) -> Result<(), StatusError> {
        self.run(move |conn| Ok(upsert(conn, &record)?)).await
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), StatusError> {
        self.run(|conn| Ok(db::ping(conn)?)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claim by statement and the straight claim write the same columns, in the
    /// order `claim_new` builds its rows.
    #[test]
    fn both_claims_name_the_same_columns() {
        let straight: Vec<&str> = STATUS_TABLE.columns.iter().map(|c| c.name).collect();
        assert_eq!(straight.join(", "), COLUMNS);
    }
}
