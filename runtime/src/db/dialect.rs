//! What differs between PostgreSQL and SQLite, for SQL written once over both (see
//! [`with_backend!`](super::with_backend)): placeholders, how uuids and timestamps are
//! stored and bound, bind-parameter limits, and the catalog.

use super::DatabaseKind;

impl DatabaseKind {
    /// The `n`-th (1-based) bind placeholder: `$n` on PostgreSQL, `?` on SQLite.
    pub fn placeholder(self, n: usize) -> String {
        match self {
            Self::Postgres => format!("${n}"),
            Self::Sqlite => "?".to_owned(),
        }
    }

    /// Most bind parameters in one statement.
    pub fn max_binds(self) -> usize {
        match self {
            Self::Postgres => postgres::MAX_BINDS,
            Self::Sqlite => sqlite::MAX_BINDS,
        }
    }

    /// A query returning the names of table `name`'s columns, as `name` (Text); no rows if
    /// the table does not exist.
    pub fn columns_sql(self, name: &str) -> String {
        let name = name.replace('\'', "''");
        match self {
            Self::Postgres => format!(
                "SELECT CAST(column_name AS TEXT) AS name FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = '{name}'"
            ),
            Self::Sqlite => format!("SELECT name FROM pragma_table_info('{name}')"),
        }
    }

    /// A query returning one row with column `n` (BigInt): 1 if table `name` exists, else 0.
    pub fn table_exists_sql(self, name: &str) -> String {
        let name = name.replace('\'', "''");
        match self {
            Self::Postgres => {
                format!(
                    "SELECT count(*) AS n FROM pg_catalog.pg_class WHERE oid = to_regclass('{name}')"
                )
            }
            Self::Sqlite => format!(
                "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = '{name}'"
            ),
        }
    }
}

/// PostgreSQL: native `UUID` and `TIMESTAMPTZ` columns.
pub mod postgres {
    use uuid::Uuid;

    pub type Backend = diesel::pg::Pg;
    pub const KIND: super::DatabaseKind = super::DatabaseKind::Postgres;
    pub const MAX_BINDS: usize = 65_535;
    /// SQL type of a uuid column, and the Rust value bound to it.
    pub type UuidSql = diesel::sql_types::Uuid;
    pub type UuidValue = Uuid;
    pub type TimeSql = diesel::sql_types::Timestamptz;

    pub fn uuid(id: Uuid) -> UuidValue {
        id
    }

    pub fn read_uuid(value: UuidValue) -> diesel::QueryResult<Uuid> {
        Ok(value)
    }
}

/// SQLite: uuids as canonical hyphenated text, times as diesel's RFC 3339-like text.
pub mod sqlite {
    use uuid::Uuid;

    pub type Backend = diesel::sqlite::Sqlite;
    pub const KIND: super::DatabaseKind = super::DatabaseKind::Sqlite;
    pub const MAX_BINDS: usize = 32_766;
    pub type UuidSql = diesel::sql_types::Text;
    pub type UuidValue = String;
    pub type TimeSql = diesel::sql_types::TimestamptzSqlite;

    pub fn uuid(id: Uuid) -> UuidValue {
        id.as_hyphenated().to_string()
    }

    pub fn read_uuid(value: UuidValue) -> diesel::QueryResult<Uuid> {
        Uuid::parse_str(&value)
            .map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))
    }
}
