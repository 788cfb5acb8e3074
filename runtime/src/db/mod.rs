//! The databases nomnom writes to: which one a `DATABASE_URL` names, connecting, the
//! PostgreSQL/SQLite dispatch, transactions, and what a failed statement means.
//!
//! [`DatabaseKind`] is the one "which database" type; an [`AnyConnection`] says its own
//! with [`AnyConnection::kind`]. Code that must run on both backends is written once with
//! [`with_backend!`] and the [`dialect`] of the connection in hand.

mod connection;
pub mod dialect;
mod error;
mod url;

pub use connection::{
    AnyConnection, ConnectError, connect, ping, probe, run_script, write_transaction,
};
pub use error::{ErrorClass, classify, is_transient};
pub use url::{DatabaseUrl, DatabaseUrlError, redact_password};

/// The columns of `table` the database does not have (all of them when the table is
/// missing), asked of the catalog: a worker newer than the database's schema.
pub fn missing_columns(
    conn: &mut AnyConnection,
    table: &crate::sql::Table,
) -> diesel::QueryResult<Vec<&'static str>> {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Column {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    let sql = conn.kind().columns_sql(table.name);
    let found: Vec<Column> = with_backend!(conn, c => diesel::sql_query(sql).load(c))?;
    Ok((table.columns.iter())
        .map(|c| c.name)
        .filter(|name| !found.iter().any(|f| f.name == *name))
        .collect())
}

/// The database backends nomnom writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    Postgres,
    Sqlite,
}

/// Runs `$body` once per backend with `$c` bound to the backend's own connection and
/// `dialect` to its module in [`dialect`], so SQL for both databases is written once.
macro_rules! with_backend {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::db::AnyConnection::Postgresql($c) => {
                #[allow(unused_imports)]
                use $crate::db::dialect::postgres as dialect;
                $body
            }
            $crate::db::AnyConnection::Sqlite($c) => {
                #[allow(unused_imports)]
                use $crate::db::dialect::sqlite as dialect;
                $body
            }
        }
    };
}
pub(crate) use with_backend;
