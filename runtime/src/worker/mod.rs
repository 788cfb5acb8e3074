//! The contract between a generated worker crate and the shared worker runtime.
//!
//! Generated code implements [`EntitySchema`]: how to turn a message body into rows, how
//! to write rows, and which migrations create the tables. Everything else (consuming,
//! batching, transactions with the status table, acks, dead-lettering) is the runtime's.

use diesel::QueryResult;
use serde_json::Value;

use crate::{Envelope, db::DatabaseKind, parse::ParseError, sql::AnyConnection};

/// One migration of the generated schema.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Sortable version, e.g. `00000000000001`.
    pub version: &'static str,
    pub name: &'static str,
    pub up: &'static str,
    pub down: &'static str,
}

/// What a generated worker knows about its entities.
pub trait EntitySchema: Send + Sync + 'static {
    /// Rows of every entity, accumulated over messages and written together.
    type Rows: Default + Clone + Send + 'static;

    /// The project name from the spec.
    fn project(&self) -> &'static str;

    /// Routes and parses one message body. Errors are permanent (dead-letter).
    fn parse(&self, envelope: &Envelope, body: &Value) -> Result<Parsed<Self::Rows>, ParseError>;

    /// Adds `more` to `rows`, so a batch is written with one statement per table.
    fn merge(&self, rows: &mut Self::Rows, more: Self::Rows);

    /// Writes rows (deletes first, children after parents) inside the caller's transaction.
    fn write(&self, conn: &mut AnyConnection, rows: &Self::Rows) -> QueryResult<()>;

    /// Migrations creating the entity tables on `kind`, oldest first.
    fn migrations(&self, kind: DatabaseKind) -> &'static [Migration];
}

/// A parsed message.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<R> {
    /// The entity the message was routed to.
    pub entity: &'static str,
    pub rows: R,
}

mod run;
pub use run::{WorkerArgs, WorkerConfig, WorkerError, main, migrate, run};
