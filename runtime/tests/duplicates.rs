//! Rows with one key: two children of one message with the same key refuse the message
//! (naming both paths) instead of one silently replacing the other; a row the database
//! refuses as a duplicate is named with its key and path; a root row skipped as a
//! duplicate (`ignore_duplicates`) takes its children with it. On real PostgreSQL and
//! SQLite, through the worker's write path.

use diesel::{RunQueryDsl, sql_types::Text};
use nomnom_runtime::{
    change::{Change, Child, Entity, Op},
    db,
    sql::{AnyConnection, Column, ColumnType, Table, Value, WriteMode},
    status::{MessageState, StatusRecord},
    worker::write::{Pending, Written, write_batch},
};
use nomnom_test_support::Postgres;

/// A claim's details, numbered within the claim.
static DETAIL: Entity = Entity {
    table: Table {
        name: "detail",
        columns: &[
            Column::new("claim_id", ColumnType::I64),
            Column::new("sequence", ColumnType::I32),
            Column::new("text", ColumnType::Text),
        ],
        key: &["claim_id", "sequence"],
        write: WriteMode::Upsert,
    },
    versioned: false,
    operation: false,
    children: &[],
};

/// Identifiers are unique across claims (`insert`: a second claim naming one is refused).
static IDENT: Entity = Entity {
    table: Table {
        name: "ident",
        columns: &[
            Column::new("claim_id", ColumnType::I64),
            Column::new("scheme", ColumnType::Text),
            Column::new("value", ColumnType::Text),
        ],
        key: &["scheme", "value"],
        write: WriteMode::Insert,
    },
    versioned: false,
    operation: false,
    children: &[],
};

/// Tags: duplicates within a message are skipped, as the write mode says.
static TAG: Entity = Entity {
    table: Table {
        name: "tag",
        columns: &[
            Column::new("claim_id", ColumnType::I64),
            Column::new("tag", ColumnType::Text),
        ],
        key: &["claim_id", "tag"],
        write: WriteMode::IgnoreDuplicates,
    },
    versioned: false,
    operation: false,
    children: &[],
};

/// The first claim with an id wins; later ones are skipped, children and all.
static CLAIM: Entity = Entity {
    table: Table {
        name: "claim",
        columns: &[
            Column::new("id", ColumnType::I64),
            Column::new("name", ColumnType::Text),
            Column::new("nomnom_seq", ColumnType::I64),
        ],
        key: &["id"],
        write: WriteMode::IgnoreDuplicates,
    },
    versioned: false,
    operation: false,
    children: &[
        Child {
            entity: &DETAIL,
            parent_key: &[("claim_id", "id")],
        },
        Child {
            entity: &IDENT,
            parent_key: &[("claim_id", "id")],
        },
        Child {
            entity: &TAG,
            parent_key: &[("claim_id", "id")],
        },
    ],
};

/// An `insert` root: a second create of an id is refused by the database.
static ACCOUNT: Entity = Entity {
    table: Table {
        name: "account",
        columns: &[
            Column::new("id", ColumnType::I64),
            Column::new("email", ColumnType::Text),
            Column::new("nomnom_seq", ColumnType::I64),
        ],
        key: &["id"],
        write: WriteMode::Insert,
    },
    versioned: false,
    operation: false,
    children: &[],
};

const POSTGRES_DDL: &str = "
    CREATE TABLE claim (id BIGINT PRIMARY KEY, name TEXT, nomnom_seq BIGINT NOT NULL);
    CREATE TABLE detail (claim_id BIGINT NOT NULL, sequence INTEGER NOT NULL, text TEXT,
        PRIMARY KEY (claim_id, sequence));
    CREATE TABLE ident (claim_id BIGINT NOT NULL, scheme TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (scheme, value));
    CREATE TABLE tag (claim_id BIGINT NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (claim_id, tag));
    CREATE TABLE account (id BIGINT PRIMARY KEY, email TEXT NOT NULL UNIQUE,
        nomnom_seq BIGINT NOT NULL);";

const SQLITE_DDL: &str = "
    CREATE TABLE claim (id INTEGER PRIMARY KEY, name TEXT, nomnom_seq INTEGER NOT NULL);
    CREATE TABLE detail (claim_id INTEGER NOT NULL, sequence INTEGER NOT NULL, text TEXT,
        PRIMARY KEY (claim_id, sequence));
    CREATE TABLE ident (claim_id INTEGER NOT NULL, scheme TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (scheme, value));
    CREATE TABLE tag (claim_id INTEGER NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (claim_id, tag));
    CREATE TABLE account (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE,
        nomnom_seq INTEGER NOT NULL);";

/// A claim as a generated parser builds it: details at `/details/<i>`, identifiers at
/// `/identifiers/<i>`.
fn claim(id: i64, name: &str, details: &[(i32, &str)], idents: &[&str]) -> Change {
    let mut change = Change::row(
        &CLAIM,
        Op::Create,
        vec![Value::I64(id), Value::Text(name.into())],
    );
    for (i, (sequence, text)) in details.iter().enumerate() {
        change
            .push_child(
                &DETAIL,
                &format!("/details/{i}"),
                vec![
                    Value::I64(id),
                    Value::I32(*sequence),
                    Value::Text((*text).into()),
                ],
            )
            .unwrap();
    }
    for (i, value) in idents.iter().enumerate() {
        change
            .push_child(
                &IDENT,
                &format!("/identifiers/{i}"),
                vec![
                    Value::I64(id),
                    Value::Text("npi".into()),
                    Value::Text((*value).into()),
                ],
            )
            .unwrap();
    }
    change
}

fn account(id: i64, email: &str) -> Change {
    Change::row(
        &ACCOUNT,
        Op::Create,
        vec![Value::I64(id), Value::Text(email.into())],
    )
}

fn pending(seq: i64, change: Change) -> Pending {
    let now = chrono::Utc::now();
    Pending {
        index: seq as usize,
        record: StatusRecord {
            message_id: uuid::Uuid::from_u128(seq as u128),
            entity: Some(change.entity.table.name.into()),
            status: MessageState::Persisted,
            attempts: 1,
            error: None,
            received_at: now,
            processed_at: now,
            stream_sequence: Some(seq),
        },
        changes: vec![change],
    }
}

fn write(conn: &mut AnyConnection, batch: Vec<Pending>) -> Written {
    write_batch(conn, &batch, 0).unwrap()
}

#[derive(diesel::QueryableByName)]
struct Line {
    #[diesel(sql_type = Text)]
    line: String,
}

/// The rows of a table as `a|b|c` lines, sorted.
fn rows(conn: &mut AnyConnection, table: &str, columns: &[&str]) -> Vec<String> {
    let parts: Vec<String> = columns
        .iter()
        .map(|c| format!("COALESCE(CAST({c} AS TEXT), 'NULL')"))
        .collect();
    let sql = format!(
        "SELECT {} AS line FROM {table} ORDER BY 1",
        parts.join(" || '|' || ")
    );
    let lines: Vec<Line> = match conn {
        AnyConnection::Postgresql(pg) => diesel::sql_query(sql).load(pg),
        AnyConnection::Sqlite(lite) => diesel::sql_query(sql).load(lite),
    }
    .unwrap();
    lines.into_iter().map(|l| l.line).collect()
}

fn connect(url: &str, ddl: &str) -> AnyConnection {
    let mut conn = db::connect(url).unwrap();
    db::run_script(&mut conn, ddl).unwrap();
    nomnom_runtime::worker::create_runtime_tables(&mut conn).unwrap();
    conn
}

#[test]
fn children_with_one_key_in_one_message_refuse_it_naming_both_paths() {
    let mut change = claim(1, "c", &[(1, "a"), (2, "b")], &[]);
    let third = vec![Value::I64(1), Value::I32(2), Value::Text("c".into())];
    let err = change
        .push_child(&DETAIL, "/details/2", third.clone())
        .unwrap_err();
    assert_eq!(err.path, "/details");
    assert!(
        err.message
            .starts_with("/details/1 and /details/2 have the same key (sequence = 2)"),
        "{err}"
    );
    assert!(err.message.contains("table detail"), "{err}");
    // The same key under another claim is another row.
    let mut other = claim(2, "d", &[(2, "b")], &[]);
    other.push_child(&DETAIL, "/x/0", third).unwrap();

    // A key without parent columns: all of it is shown.
    let mut change = claim(1, "c", &[], &["x", "y"]);
    let err = change
        .push_child(
            &IDENT,
            "/identifiers/2",
            vec![
                Value::I64(1),
                Value::Text("npi".into()),
                Value::Text("x".into()),
            ],
        )
        .unwrap_err();
    assert!(
        err.message.starts_with(
            "/identifiers/0 and /identifiers/2 have the same key (scheme = \"npi\", value = \"x\")"
        ),
        "{err}"
    );

    // ignore_duplicates: the second tag is skipped, as a tag that exists would be.
    let mut change = claim(1, "c", &[], &[]);
    for (i, tag) in ["red", "red"].iter().enumerate() {
        change
            .push_child(
                &TAG,
                &format!("/tags/{i}"),
                vec![Value::I64(1), Value::Text((*tag).into())],
            )
            .unwrap();
    }
}

/// A claim skipped as a duplicate writes none of its children: not its details (which
/// would be added to the first claim's), not its identifiers (which the database would
/// refuse, dead-lettering a message that should have been skipped).
fn skipped_parents_skip_their_children(url: &str, ddl: &str) {
    let mut conn = connect(url, ddl);
    let first = claim(1, "first", &[(1, "a")], &["x"]);
    let written = write(&mut conn, vec![pending(1, first)]);
    assert!(written.refused.is_empty(), "{:?}", written.refused);
    // Another batch: the stored row decides.
    let again = claim(1, "again", &[(1, "b"), (2, "c")], &["x", "y"]);
    let written = write(&mut conn, vec![pending(2, again)]);
    assert!(written.refused.is_empty(), "{:?}", written.refused);
    // One batch: the first create of claim 2 wins.
    let batch = vec![
        pending(3, claim(2, "first", &[(1, "d")], &["z"])),
        pending(4, claim(2, "again", &[(1, "e"), (3, "f")], &["z", "w"])),
    ];
    let written = write(&mut conn, batch);
    assert!(written.refused.is_empty(), "{:?}", written.refused);
    assert_eq!(
        rows(&mut conn, "claim", &["id", "name"]),
        ["1|first", "2|first"]
    );
    assert_eq!(
        rows(&mut conn, "detail", &["claim_id", "sequence", "text"]),
        ["1|1|a", "2|1|d"]
    );
    assert_eq!(
        rows(&mut conn, "ident", &["claim_id", "value"]),
        ["1|x", "2|z"]
    );
}

/// The database's duplicate-key refusal names the key's values and the row's path.
fn duplicate_keys_name_key_and_path(url: &str, ddl: &str, postgres: bool) {
    let mut conn = connect(url, ddl);
    let written = write(
        &mut conn,
        vec![
            pending(1, claim(1, "a", &[], &["x"])),
            pending(2, account(5, "a@example.com")),
        ],
    );
    assert!(written.refused.is_empty(), "{:?}", written.refused);

    // A child whose key another claim's child has: /identifiers/1.
    let written = write(
        &mut conn,
        vec![
            pending(3, claim(2, "b", &[], &["y", "x"])),
            pending(4, claim(3, "c", &[], &["w"])),
        ],
    );
    assert_eq!(written.refused.len(), 1, "{:?}", written.refused);
    let (index, why) = &written.refused[0];
    assert_eq!(*index, 3);
    assert!(
        why.contains("duplicate key (scheme, value) = (\"npi\", \"x\") in table ident"),
        "{why}"
    );
    assert!(
        why.contains("the row at /identifiers/1 has the key of a stored row"),
        "{why}"
    );
    assert!(why.contains("write: upsert"), "{why}");
    assert_eq!(
        postgres,
        why.contains("unique constraint ident_pkey"),
        "{why}"
    );
    // The other message of the batch is written.
    assert_eq!(
        rows(&mut conn, "ident", &["claim_id", "value"]),
        ["1|x", "3|w"]
    );

    // An `insert` root created twice: the root row.
    let written = write(&mut conn, vec![pending(5, account(5, "b@example.com"))]);
    let (_, why) = &written.refused[0];
    assert!(
        why.starts_with("duplicate key (id) = (5) in table account"),
        "{why}"
    );
    assert!(
        why.contains("the message's root row has the key of a stored row"),
        "{why}"
    );

    // A unique constraint other than the key.
    let written = write(&mut conn, vec![pending(6, account(6, "a@example.com"))]);
    let (_, why) = &written.refused[0];
    assert!(
        why.starts_with("duplicate key (email) = (\"a@example.com\") in table account"),
        "{why}"
    );
    assert!(why.contains("must be unique in the table"), "{why}");
}

#[test]
fn skipped_parents_skip_their_children_on_postgres() {
    let postgres = Postgres::start();
    skipped_parents_skip_their_children(&postgres.create_database("skipped"), POSTGRES_DDL);
}

#[test]
fn skipped_parents_skip_their_children_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("skipped.db").display());
    skipped_parents_skip_their_children(&url, SQLITE_DDL);
}

#[test]
fn duplicate_keys_name_key_and_path_on_postgres() {
    let postgres = Postgres::start();
    duplicate_keys_name_key_and_path(&postgres.create_database("dupes"), POSTGRES_DDL, true);
}

#[test]
fn duplicate_keys_name_key_and_path_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("dupes.db").display());
    duplicate_keys_name_key_and_path(&url, SQLITE_DDL, false);
}

/// Any list of child keys: every row is either stored or the message refused, naming the
/// first path and the path that repeats its key; never one row silently replacing another.
#[test]
fn colliding_child_keys_are_never_dropped_silently() {
    use proptest::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("collisions.db").display());
    let conn = std::cell::RefCell::new(connect(&url, SQLITE_DDL));
    let claims = std::cell::Cell::new(0i64);
    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(sequences in proptest::collection::vec(0i32..6, 0..10))| {
        let id = claims.get() + 1;
        claims.set(id);
        let mut change = Change::row(&CLAIM, Op::Create, vec![Value::I64(id), Value::Text("c".into())]);
        let mut first_path = std::collections::HashMap::new();
        let mut refused = None;
        for (i, sequence) in sequences.iter().enumerate() {
            let path = format!("/details/{i}");
            let row = vec![Value::I64(id), Value::I32(*sequence), Value::Text(path.clone())];
            match (change.push_child(&DETAIL, &path, row), first_path.get(sequence)) {
                (Ok(()), None) => {
                    first_path.insert(*sequence, path);
                }
                (Err(err), Some(first)) => {
                    prop_assert!(
                        err.message.starts_with(&format!(
                            "{first} and {path} have the same key (sequence = {sequence})"
                        )),
                        "{}", err
                    );
                    refused = Some(err);
                    break;
                }
                (outcome, first) => {
                    prop_assert!(false, "{path} (key {sequence}, first at {first:?}): {outcome:?}");
                }
            }
        }
        if refused.is_none() {
            // Every distinct key is a row of its own, each with its own text.
            let conn = &mut *conn.borrow_mut();
            write(conn, vec![pending(id, change)]);
            let stored = rows(conn, "detail", &["claim_id", "text"])
                .into_iter()
                .filter(|line| line.starts_with(&format!("{id}|")))
                .count();
            prop_assert_eq!(stored, sequences.len());
        }
    });
}
