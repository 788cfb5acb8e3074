//! The status table: one row per message, written by workers in the same transaction as
//! the message's entity rows, and read by nats-api's status endpoint.
//!
//! The SQL here is the only definition of the table, for both PostgreSQL and SQLite, and
//! is tested against both.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::{
    pg::PgConnection,
    prelude::*,
    r2d2::{ConnectionManager, Pool},
    sql_types::{BigInt, Integer, Nullable, Text, Timestamptz, TimestamptzSqlite},
    sqlite::SqliteConnection,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::{DatabaseKind, DatabaseUrl, DatabaseUrlError};

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
}

impl MessageState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Persisted => "persisted",
            Self::DeadLettered => "dead_lettered",
            Self::Retrying => "retrying",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Persisted, Self::DeadLettered, Self::Retrying]
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

/// A `persisted` row is final: nothing overwrites it (a late dead-letter of a message
/// another worker already committed, say). Everything else may be updated (a replayed
/// dead letter that now persists).
const UPSERT_SET: &str = "ON CONFLICT (message_id) DO UPDATE SET entity = excluded.entity, \
     status = excluded.status, attempts = excluded.attempts, error = excluded.error, \
     processed_at = excluded.processed_at, stream_sequence = excluded.stream_sequence \
     WHERE nomnom_message_status.status <> 'persisted'";

/// Status rows per statement when claiming: 8 bind parameters each keeps a statement
/// far under both databases' limits.
const CLAIM_CHUNK: usize = 1_000;

/// The multi-row claim statement for `rows` records, with numbered (`$n`) or plain (`?`)
/// placeholders.
fn claim_sql(rows: usize, numbered: bool) -> String {
    let mut sql = format!("INSERT INTO nomnom_message_status ({COLUMNS}) VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..8 {
            if column > 0 {
                sql.push_str(", ");
            }
            if numbered {
                sql.push_str(&format!("${}", row * 8 + column + 1));
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql.push(' ');
    sql.push_str(UPSERT_SET);
    sql.push_str(" RETURNING message_id");
    sql
}

const COLUMNS: &str =
    "message_id, entity, status, attempts, error, received_at, processed_at, stream_sequence";

/// Why the status table could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Url(#[from] DatabaseUrlError),
    #[error(
        "cannot connect to the status database: {0}; check DATABASE_URL and that the database is up"
    )]
    Connect(String),
    #[error("status database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("status row for {0} holds an unknown status {1:?}")]
    UnknownState(String, String),
    #[error("status database task failed: {0}")]
    Task(String),
}

/// Whether `err` says the status table does not exist (PostgreSQL or SQLite wording).
fn is_missing_table(err: &diesel::result::Error) -> bool {
    let text = err.to_string();
    text.contains("nomnom_message_status")
        && (text.contains("does not exist") || text.contains("no such table"))
}

fn state(id: &str, text: &str) -> Result<MessageState, StatusError> {
    MessageState::parse(text).ok_or_else(|| StatusError::UnknownState(id.into(), text.into()))
}

/// Reads and writes on PostgreSQL connections (the caller owns the transaction).
pub mod postgres {
    use super::*;

    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        message_id: Uuid,
        #[diesel(sql_type = Nullable<Text>)]
        entity: Option<String>,
        #[diesel(sql_type = Text)]
        status: String,
        #[diesel(sql_type = Integer)]
        attempts: i32,
        #[diesel(sql_type = Nullable<Text>)]
        error: Option<String>,
        #[diesel(sql_type = Timestamptz)]
        received_at: DateTime<Utc>,
        #[diesel(sql_type = Timestamptz)]
        processed_at: DateTime<Utc>,
        #[diesel(sql_type = Nullable<BigInt>)]
        stream_sequence: Option<i64>,
    }

    pub fn create_table(conn: &mut PgConnection) -> QueryResult<()> {
        diesel::sql_query(POSTGRES_DDL).execute(conn).map(drop)
    }

    pub fn upsert(conn: &mut PgConnection, record: &StatusRecord) -> QueryResult<()> {
        diesel::sql_query(format!(
            "INSERT INTO nomnom_message_status ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) {UPSERT_SET}"
        ))
        .bind::<diesel::sql_types::Uuid, _>(record.message_id)
        .bind::<Nullable<Text>, _>(record.entity.as_deref())
        .bind::<Text, _>(record.status.as_str())
        .bind::<Integer, _>(record.attempts)
        .bind::<Nullable<Text>, _>(record.error.as_deref())
        .bind::<Timestamptz, _>(record.received_at)
        .bind::<Timestamptz, _>(record.processed_at)
        .bind::<Nullable<BigInt>, _>(record.stream_sequence)
        .execute(conn)
        .map(drop)
    }

    /// Writes `persisted` status rows for `records` (distinct ids) and returns the ids
    /// this transaction claimed: those not already persisted. A concurrent transaction
    /// claiming the same id (a redelivery to a second worker) makes this one wait on the
    /// row and then see it persisted, so only one of them writes the entity rows.
    pub fn claim(
        conn: &mut PgConnection,
        records: &[StatusRecord],
    ) -> QueryResult<std::collections::HashSet<Uuid>> {
        #[derive(QueryableByName)]
        struct Claimed {
            #[diesel(sql_type = diesel::sql_types::Uuid)]
            message_id: Uuid,
        }
        let mut claimed = std::collections::HashSet::with_capacity(records.len());
        for chunk in records.chunks(CLAIM_CHUNK) {
            let mut query =
                diesel::sql_query(claim_sql(chunk.len(), true)).into_boxed::<diesel::pg::Pg>();
            for record in chunk {
                query = query
                    .bind::<diesel::sql_types::Uuid, _>(record.message_id)
                    .bind::<Nullable<Text>, _>(record.entity.clone())
                    .bind::<Text, _>(record.status.as_str())
                    .bind::<Integer, _>(record.attempts)
                    .bind::<Nullable<Text>, _>(record.error.clone())
                    .bind::<Timestamptz, _>(record.received_at)
                    .bind::<Timestamptz, _>(record.processed_at)
                    .bind::<Nullable<BigInt>, _>(record.stream_sequence);
            }
            claimed.extend(
                query
                    .load::<Claimed>(conn)?
                    .into_iter()
                    .map(|c| c.message_id),
            );
        }
        Ok(claimed)
    }

    pub fn fetch(
        conn: &mut PgConnection,
        message_id: Uuid,
    ) -> Result<Option<StatusRecord>, StatusError> {
        let row: Option<Row> = diesel::sql_query(format!(
            "SELECT {COLUMNS} FROM nomnom_message_status WHERE message_id = $1"
        ))
        .bind::<diesel::sql_types::Uuid, _>(message_id)
        .get_result(conn)
        .optional()?;
        row.map(|r| {
            Ok(StatusRecord {
                status: state(&r.message_id.to_string(), &r.status)?,
                message_id: r.message_id,
                entity: r.entity,
                attempts: r.attempts,
                error: r.error,
                received_at: r.received_at,
                processed_at: r.processed_at,
                stream_sequence: r.stream_sequence,
            })
        })
        .transpose()
    }
}

/// Reads and writes on SQLite connections (the caller owns the transaction).
pub mod sqlite {
    use super::*;

    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        message_id: String,
        #[diesel(sql_type = Nullable<Text>)]
        entity: Option<String>,
        #[diesel(sql_type = Text)]
        status: String,
        #[diesel(sql_type = Integer)]
        attempts: i32,
        #[diesel(sql_type = Nullable<Text>)]
        error: Option<String>,
        #[diesel(sql_type = TimestamptzSqlite)]
        received_at: DateTime<Utc>,
        #[diesel(sql_type = TimestamptzSqlite)]
        processed_at: DateTime<Utc>,
        #[diesel(sql_type = Nullable<BigInt>)]
        stream_sequence: Option<i64>,
    }

    pub fn create_table(conn: &mut SqliteConnection) -> QueryResult<()> {
        diesel::sql_query(SQLITE_DDL).execute(conn).map(drop)
    }

    pub fn upsert(conn: &mut SqliteConnection, record: &StatusRecord) -> QueryResult<()> {
        diesel::sql_query(format!(
            "INSERT INTO nomnom_message_status ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) {UPSERT_SET}"
        ))
        .bind::<Text, _>(record.message_id.as_hyphenated().to_string())
        .bind::<Nullable<Text>, _>(record.entity.as_deref())
        .bind::<Text, _>(record.status.as_str())
        .bind::<Integer, _>(record.attempts)
        .bind::<Nullable<Text>, _>(record.error.as_deref())
        .bind::<TimestamptzSqlite, _>(record.received_at)
        .bind::<TimestamptzSqlite, _>(record.processed_at)
        .bind::<Nullable<BigInt>, _>(record.stream_sequence)
        .execute(conn)
        .map(drop)
    }

    /// Writes `persisted` status rows for `records` (distinct ids) and returns the ids
    /// this transaction claimed: those not already persisted. SQLite serialises writers
    /// (`BEGIN IMMEDIATE`), so no other transaction can claim one meanwhile.
    pub fn claim(
        conn: &mut SqliteConnection,
        records: &[StatusRecord],
    ) -> QueryResult<std::collections::HashSet<Uuid>> {
        #[derive(QueryableByName)]
        struct Claimed {
            #[diesel(sql_type = Text)]
            message_id: String,
        }
        let mut claimed = std::collections::HashSet::with_capacity(records.len());
        for chunk in records.chunks(CLAIM_CHUNK) {
            let mut query = diesel::sql_query(claim_sql(chunk.len(), false))
                .into_boxed::<diesel::sqlite::Sqlite>();
            for record in chunk {
                query = query
                    .bind::<Text, _>(record.message_id.as_hyphenated().to_string())
                    .bind::<Nullable<Text>, _>(record.entity.clone())
                    .bind::<Text, _>(record.status.as_str())
                    .bind::<Integer, _>(record.attempts)
                    .bind::<Nullable<Text>, _>(record.error.clone())
                    .bind::<TimestamptzSqlite, _>(record.received_at)
                    .bind::<TimestamptzSqlite, _>(record.processed_at)
                    .bind::<Nullable<BigInt>, _>(record.stream_sequence);
            }
            for row in query.load::<Claimed>(conn)? {
                let id = Uuid::parse_str(&row.message_id)
                    .map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))?;
                claimed.insert(id);
            }
        }
        Ok(claimed)
    }

    pub fn fetch(
        conn: &mut SqliteConnection,
        message_id: Uuid,
    ) -> Result<Option<StatusRecord>, StatusError> {
        let row: Option<Row> = diesel::sql_query(format!(
            "SELECT {COLUMNS} FROM nomnom_message_status WHERE message_id = ?"
        ))
        .bind::<Text, _>(message_id.as_hyphenated().to_string())
        .get_result(conn)
        .optional()?;
        row.map(|r| {
            Ok(StatusRecord {
                status: state(&r.message_id, &r.status)?,
                message_id,
                entity: r.entity,
                attempts: r.attempts,
                error: r.error,
                received_at: r.received_at,
                processed_at: r.processed_at,
                stream_sequence: r.stream_sequence,
            })
        })
        .transpose()
    }
}

/// A small connection pool over the status table, for services that only read it (and
/// for tests that write it the way a worker does). Blocking work runs off the async runtime.
#[derive(Clone)]
pub enum StatusStore {
    Postgres(Pool<ConnectionManager<PgConnection>>),
    Sqlite(Pool<ConnectionManager<SqliteConnection>>),
}

impl std::fmt::Debug for StatusStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Postgres(_) => f.write_str("StatusStore::Postgres"),
            Self::Sqlite(_) => f.write_str("StatusStore::Sqlite"),
        }
    }
}

impl StatusStore {
    /// Builds a pool. Connections are opened lazily, so a database that is down at start
    /// only makes lookups fail (503), not the service.
    pub fn open(url: &str, max_connections: u32) -> Result<Self, StatusError> {
        let url = DatabaseUrl::parse(url)?;
        let timeout = Duration::from_secs(2);
        Ok(match url.kind {
            DatabaseKind::Postgres => Self::Postgres(
                Pool::builder()
                    .max_size(max_connections)
                    .min_idle(Some(0))
                    .connection_timeout(timeout)
                    .build_unchecked(ConnectionManager::new(url.connection_string)),
            ),
            DatabaseKind::Sqlite => Self::Sqlite(
                Pool::builder()
                    .max_size(max_connections)
                    .min_idle(Some(0))
                    .connection_timeout(timeout)
                    .build_unchecked(ConnectionManager::new(url.connection_string)),
            ),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Self) -> Result<T, StatusError> + Send + 'static,
    ) -> Result<T, StatusError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| StatusError::Task(e.to_string()))?
    }

    fn connect_error(e: diesel::r2d2::PoolError) -> StatusError {
        StatusError::Connect(e.to_string())
    }

    /// Creates the table if it does not exist.
    pub async fn create_table(&self) -> Result<(), StatusError> {
        self.run(|store| match store {
            Self::Postgres(pool) => Ok(postgres::create_table(
                &mut *pool.get().map_err(Self::connect_error)?,
            )?),
            Self::Sqlite(pool) => Ok(sqlite::create_table(
                &mut *pool.get().map_err(Self::connect_error)?,
            )?),
        })
        .await
    }

    /// The recorded outcome of a message, if a worker recorded one. A missing table (no
    /// worker has started yet) means nothing is recorded.
    pub async fn fetch(&self, message_id: Uuid) -> Result<Option<StatusRecord>, StatusError> {
        let result = self
            .run(move |store| match store {
                Self::Postgres(pool) => {
                    postgres::fetch(&mut *pool.get().map_err(Self::connect_error)?, message_id)
                }
                Self::Sqlite(pool) => {
                    sqlite::fetch(&mut *pool.get().map_err(Self::connect_error)?, message_id)
                }
            })
            .await;
        match result {
            Err(StatusError::Query(err)) if is_missing_table(&err) => Ok(None),
            other => other,
        }
    }

    /// Writes (or overwrites) one status row in its own transaction.
    pub async fn upsert(&self, record: StatusRecord) -> Result<(), StatusError> {
        self.run(move |store| match store {
            Self::Postgres(pool) => Ok(postgres::upsert(
                &mut *pool.get().map_err(Self::connect_error)?,
                &record,
            )?),
            Self::Sqlite(pool) => Ok(sqlite::upsert(
                &mut *pool.get().map_err(Self::connect_error)?,
                &record,
            )?),
        })
        .await
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), StatusError> {
        self.run(|store| {
            match store {
                Self::Postgres(pool) => diesel::sql_query("SELECT 1")
                    .execute(&mut *pool.get().map_err(Self::connect_error)?)?,
                Self::Sqlite(pool) => diesel::sql_query("SELECT 1")
                    .execute(&mut *pool.get().map_err(Self::connect_error)?)?,
            };
            Ok(())
        })
        .await
    }
}
