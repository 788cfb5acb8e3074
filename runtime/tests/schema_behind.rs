//! A worker newer than the database's schema (a rolling upgrade whose migration has not
//! run yet): the rows it writes have a column, or a table, the database lacks. That is
//! the schema's fault, not the messages': the batch is retried (never dead-lettered),
//! with an error that says so, and it is written once the migration has run. On real
//! PostgreSQL and SQLite, through the worker's write path. And a migration edited after it
//! ran is reported, not skipped.

use nomnom_runtime::{
    change::{Change, Child, Entity, Op},
    db,
    sql::{Column, ColumnType, Table, Value, WriteMode},
    status::{MessageState, StatusRecord},
    worker::write::{Pending, WriteError, write_batch},
};
use nomnom_test_support::Postgres;

static LINE: Entity = Entity {
    table: Table {
        name: "line",
        columns: &[
            Column::new("order_id", ColumnType::I64),
            Column::new("no", ColumnType::I32),
        ],
        key: &["order_id", "no"],
        write: WriteMode::Upsert,
    },
    versioned: false,
    operation: false,
    children: &[],
};

/// The new spec's order: `note` is new, and so is the `line` child.
static ORDER: Entity = Entity {
    table: Table {
        name: "orders",
        columns: &[
            Column::new("id", ColumnType::I64),
            Column::new("note", ColumnType::Text),
            Column::new("nomnom_seq", ColumnType::I64),
        ],
        key: &["id"],
        write: WriteMode::Upsert,
    },
    versioned: false,
    operation: false,
    children: &[Child {
        entity: &LINE,
        parent_key: &[("order_id", "id")],
    }],
};

fn order(id: i64) -> Pending {
    let mut change = Change::row(
        &ORDER,
        Op::Create,
        vec![Value::I64(id), Value::Text("gift".into())],
    );
    change
        .push_child(&LINE, "/lines/0", vec![Value::I64(id), Value::I32(1)])
        .unwrap();
    let now = chrono::Utc::now();
    Pending {
        index: 0,
        record: StatusRecord {
            message_id: uuid::Uuid::from_u128(id as u128),
            entity: Some("order".into()),
            status: MessageState::Persisted,
            attempts: 1,
            error: None,
            received_at: now,
            processed_at: now,
            stream_sequence: Some(id),
        },
        changes: vec![change],
    }
}

fn retried_until_the_schema_catches_up(url: &str) {
    let mut conn = db::connect(url).unwrap();
    nomnom_runtime::worker::create_runtime_tables(&mut conn).unwrap();
    // The old spec's schema: no `note`, no `line`.
    db::run_script(
        &mut conn,
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, nomnom_seq BIGINT NOT NULL)",
    )
    .unwrap();

    let err = write_batch(&mut conn, &[order(1)], 0).expect_err("retried, not refused");
    assert!(
        matches!(&err, WriteError::SchemaBehind { table: "orders", columns } if columns == &["note"]),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("run this worker's migrations"),
        "{err}"
    );

    db::run_script(&mut conn, "ALTER TABLE orders ADD COLUMN note TEXT").unwrap();
    let err = write_batch(&mut conn, &[order(1)], 0).expect_err("the child's table is missing");
    assert!(
        matches!(&err, WriteError::SchemaBehind { table: "line", columns } if columns == &["order_id", "no"]),
        "{err:?}"
    );

    db::run_script(
        &mut conn,
        "CREATE TABLE line (order_id BIGINT NOT NULL, no INTEGER NOT NULL, PRIMARY KEY (order_id, no))",
    )
    .unwrap();
    let written = write_batch(&mut conn, &[order(1)], 0).unwrap();
    assert!(written.refused.is_empty(), "{:?}", written.refused);
}

#[test]
fn a_schema_behind_the_worker_is_retried_on_postgres() {
    let postgres = Postgres::start();
    retried_until_the_schema_catches_up(&postgres.create_database("behind"));
}

#[test]
fn a_schema_behind_the_worker_is_retried_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    retried_until_the_schema_catches_up(&format!(
        "sqlite://{}",
        dir.path().join("behind.db").display()
    ));
}

/// A worker whose only migration is `up`.
struct OneMigration(&'static str);

impl nomnom_runtime::worker::EntitySchema for OneMigration {
    fn project(&self) -> &'static str {
        "old"
    }

    fn parse(
        &self,
        _: &nomnom_runtime::Envelope,
        _: &nomnom_runtime::json::Value,
    ) -> Result<nomnom_runtime::worker::Parsed, nomnom_runtime::parse::ParseError> {
        Err(nomnom_runtime::parse::ParseError::new("", "not used"))
    }

    fn migrations(&self, _: db::DatabaseKind) -> &'static [nomnom_runtime::worker::Migration] {
        Vec::leak(vec![nomnom_runtime::worker::Migration {
            version: "00000000000001",
            name: "create_old",
            up: self.0,
            down: "DROP TABLE old",
        }])
    }
}

/// Databases migrated by a nomnom that recorded no checksums: the column is added, the
/// checksum of what ran is adopted, and an edit after that is reported.
#[test]
fn migrations_recorded_before_checksums_are_adopted_then_guarded() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    let mut conn = db::connect(&url).unwrap();
    db::run_script(
        &mut conn,
        "CREATE TABLE nomnom_migrations (version TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL);
         INSERT INTO nomnom_migrations VALUES ('00000000000001', 'create_old');
         CREATE TABLE old (id INTEGER PRIMARY KEY);",
    )
    .unwrap();
    let kind = conn.kind();
    let up = "CREATE TABLE old (id INTEGER PRIMARY KEY);";
    nomnom_runtime::worker::migrate(&mut conn, &OneMigration(up), kind).unwrap();
    nomnom_runtime::worker::migrate(&mut conn, &OneMigration(up), kind).unwrap();
    let err = nomnom_runtime::worker::migrate(
        &mut conn,
        &OneMigration("CREATE TABLE old (id INTEGER PRIMARY KEY, name TEXT);"),
        kind,
    )
    .expect_err("edited after it ran");
    assert!(
        err.to_string()
            .contains("migration 00000000000001_create_old was changed after it ran"),
        "{err}"
    );
}
