//! Straight writes on PostgreSQL: a batch of first deliveries copies its status rows, and
//! the rows of keys the database does not hold, straight into their tables (no staging
//! table, no conflict clause). These tests show the path is taken (a statement trigger
//! records each statement that writes rows), and that whenever a row is there after all
//! (a child keyed apart from its parent, a message delivered once more as new, a
//! concurrent worker claiming the same messages) the batch is written again the safe way,
//! with nothing refused, lost or written twice.

use std::sync::{Arc, Barrier};

use diesel::{RunQueryDsl, sql_types::Text};
use nomnom_runtime::{
    change::{Change, Child, Entity, Op},
    db,
    sql::{AnyConnection, Column, ColumnType, Table, Value, WriteMode},
    status::{self, MessageState, StatusRecord},
    worker::write::{Pending, Written, write_batch},
};
use nomnom_test_support::Postgres;

/// Parts are keyed by their own number, apart from the kit that lists them: a second kit
/// listing a part takes it over (upsert).
static PART: Entity = Entity {
    table: Table {
        name: "straight_part",
        columns: &[
            Column::new("part_no", ColumnType::Text),
            Column::new("kit_id", ColumnType::I64),
            Column::new("price", ColumnType::Decimal),
        ],
        key: &["part_no"],
        write: WriteMode::Upsert,
    },
    versioned: false,
    operation: false,
    children: &[],
};

static KIT: Entity = Entity {
    table: Table {
        name: "straight_kit",
        columns: &[
            Column::new("id", ColumnType::I64),
            Column::new("name", ColumnType::Text),
            Column::new("nomnom_seq", ColumnType::I64),
        ],
        key: &["id"],
        write: WriteMode::Upsert,
    },
    versioned: false,
    operation: false,
    children: &[Child {
        entity: &PART,
        parent_key: &[("kit_id", "id")],
    }],
};

/// The tables, and a statement trigger on each that records the statement writing rows
/// into it (rolled back with the statement's transaction, like the rows).
const DDL: &str = "
    CREATE TABLE straight_kit (id BIGINT PRIMARY KEY, name TEXT NOT NULL, nomnom_seq BIGINT NOT NULL);
    CREATE TABLE straight_part (part_no TEXT PRIMARY KEY, kit_id BIGINT NOT NULL, price NUMERIC(10, 2) NOT NULL);
    CREATE TABLE statements (n BIGSERIAL PRIMARY KEY, tab TEXT NOT NULL, query TEXT NOT NULL);
    CREATE FUNCTION record_statement() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO statements (tab, query) VALUES (TG_TABLE_NAME, current_query());
        RETURN NULL;
    END $$;
    CREATE TRIGGER kit_statements AFTER INSERT ON straight_kit
        FOR EACH STATEMENT EXECUTE FUNCTION record_statement();
    CREATE TRIGGER part_statements AFTER INSERT ON straight_part
        FOR EACH STATEMENT EXECUTE FUNCTION record_statement();
    CREATE TRIGGER status_statements AFTER INSERT ON nomnom_message_status
        FOR EACH STATEMENT EXECUTE FUNCTION record_statement();";

/// A kit with `parts` (part numbers), each at price `kit.part`.
fn kit(id: i64, name: &str, parts: &[&str]) -> Change {
    let mut change = Change::row(
        &KIT,
        Op::Upsert,
        vec![Value::I64(id), Value::Text(name.into())],
    );
    for (i, part) in parts.iter().enumerate() {
        change
            .push_child(
                &PART,
                &format!("/parts/{i}"),
                vec![
                    Value::Text((*part).into()),
                    Value::I64(id),
                    Value::Text(format!("{id}.{i:02}")),
                ],
            )
            .unwrap();
    }
    change
}

/// A first delivery (attempts 1) of message `id` at stream sequence `seq`.
fn pending(id: u128, seq: i64, change: Change) -> Pending {
    let now = chrono::Utc::now();
    Pending {
        index: 0,
        record: StatusRecord {
            message_id: uuid::Uuid::from_u128(id),
            entity: Some("kit".into()),
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

/// `count` kits from `first`, each with two parts of its own (`p<id>a`, `p<id>b`).
fn kits(first: i64, count: i64) -> Vec<Pending> {
    (first..first + count)
        .enumerate()
        .map(|(index, id)| {
            let (a, b) = (format!("p{id}a"), format!("p{id}b"));
            Pending {
                index,
                ..pending(id as u128, id, kit(id, &format!("kit {id}"), &[&a, &b]))
            }
        })
        .collect()
}

#[derive(diesel::QueryableByName)]
struct Line {
    #[diesel(sql_type = Text)]
    line: String,
}

fn lines(conn: &mut AnyConnection, sql: &str) -> Vec<String> {
    let AnyConnection::Postgresql(pg) = conn else {
        unreachable!("PostgreSQL only")
    };
    let rows: Vec<Line> = diesel::sql_query(sql).load(pg).unwrap();
    rows.into_iter().map(|l| l.line).collect()
}

/// How each table's rows were written since the last call, a word per statement:
/// `copy` (straight, binary), `text copy`, `insert` (straight, a VALUES list), `staged` (from the staging
/// table, with a conflict clause), `upsert` (a VALUES list with a conflict clause).
fn paths(conn: &mut AnyConnection) -> Vec<String> {
    let recorded = lines(
        conn,
        "SELECT tab || ': ' || CASE WHEN query LIKE 'COPY%FORMAT binary%' THEN 'copy' \
         WHEN query LIKE 'COPY%' THEN 'text copy' \
         WHEN query LIKE '%FROM nomnom_stage%' THEN 'staged' \
         WHEN query LIKE '%ON CONFLICT%' THEN 'upsert' ELSE 'insert' END AS line \
         FROM statements ORDER BY n",
    );
    lines(conn, "DELETE FROM statements RETURNING 'x' AS line");
    recorded
}

fn connect(url: &str) -> AnyConnection {
    let mut conn = db::connect(url).unwrap();
    nomnom_runtime::worker::create_runtime_tables(&mut conn).unwrap();
    db::run_script(&mut conn, DDL).unwrap();
    conn
}

fn write(conn: &mut AnyConnection, batch: &[Pending]) -> Written {
    let written = write_batch(conn, batch, 0).unwrap();
    assert!(written.refused.is_empty(), "{:?}", written.refused);
    written
}

fn count(conn: &mut AnyConnection, sql: &str) -> String {
    lines(conn, &format!("SELECT CAST(({sql}) AS TEXT) AS line")).remove(0)
}

#[test]
fn new_rows_go_straight_and_rows_there_already_are_upserted() {
    let postgres = Postgres::start();
    let mut conn = connect(&postgres.create_database("straight"));

    // 40 new kits, 80 parts: everything straight (COPY from 64 rows, else a plain VALUES
    // list).
    let written = write(&mut conn, &kits(1, 40));
    assert_eq!((written.skipped, written.stale), (0, 0));
    assert_eq!(
        paths(&mut conn),
        [
            "nomnom_message_status: insert",
            "straight_kit: insert",
            "straight_part: copy",
        ]
    );
    assert_eq!(count(&mut conn, "SELECT count(*) FROM straight_part"), "80");

    // A kit that lists a part of kit 1 (keyed apart from its parent: the straight copy
    // meets it), with 39 new kits: written again the safe way, nothing refused.
    let mut batch = kits(41, 39);
    batch.push(Pending {
        index: 39,
        ..pending(1_000, 1_000, kit(1_000, "takes p1a", &["p1a", "new"]))
    });
    write(&mut conn, &batch);
    assert_eq!(
        paths(&mut conn),
        [
            "nomnom_message_status: upsert",
            "straight_kit: upsert",
            "straight_part: staged",
        ],
        "the straight attempt is rolled back, then every row upserted"
    );
    assert_eq!(
        lines(
            &mut conn,
            "SELECT part_no || '|' || kit_id || '|' || price AS line FROM straight_part \
             WHERE part_no IN ('p1a', 'p1b', 'new') ORDER BY 1"
        ),
        ["new|1000|1000.01", "p1a|1000|1000.00", "p1b|1|1.01"]
    );
    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM straight_part"),
        "159"
    );
    assert_eq!(count(&mut conn, "SELECT count(*) FROM straight_kit"), "80");
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) FROM nomnom_message_status WHERE status = 'persisted'"
        ),
        "80"
    );

    // From then on this process upserts parts; status rows and new kits stay straight.
    write(&mut conn, &kits(2_000, 40));
    assert_eq!(
        paths(&mut conn),
        [
            "nomnom_message_status: insert",
            "straight_kit: insert",
            "straight_part: staged",
        ]
    );
    // Kits there already are upserted, their parts replaced.
    let again: Vec<Pending> = (1..=70)
        .map(|id| Pending {
            index: id as usize - 1,
            ..pending(
                5_000 + id as u128,
                5_000 + id,
                kit(id, "renamed", &[&format!("q{id}")]),
            )
        })
        .collect();
    write(&mut conn, &again);
    assert_eq!(
        paths(&mut conn),
        [
            "nomnom_message_status: copy",
            "straight_kit: staged",
            "straight_part: staged",
        ]
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) FROM straight_kit WHERE name = 'renamed'"
        ),
        "70"
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) FROM straight_part WHERE kit_id <= 70"
        ),
        "70",
        "each renamed kit has only its new part"
    );
}

#[test]
fn a_message_with_a_status_row_already_is_claimed_as_before() {
    let postgres = Postgres::start();
    let mut conn = connect(&postgres.create_database("claims"));
    write(&mut conn, &kits(1, 70));
    assert_eq!(paths(&mut conn)[0], "nomnom_message_status: copy");

    // Message 5 again as a first delivery (published twice, outside the duplicate
    // window), with other content, and message 100, dead-lettered before and replayed.
    let now = chrono::Utc::now();
    status::upsert(
        &mut conn,
        &StatusRecord {
            message_id: uuid::Uuid::from_u128(100),
            entity: Some("kit".into()),
            status: MessageState::DeadLettered,
            attempts: 3,
            error: Some("refused before".into()),
            received_at: now,
            processed_at: now,
            stream_sequence: Some(100),
        },
    )
    .unwrap();
    paths(&mut conn);
    let mut batch = kits(200, 70);
    batch.push(Pending {
        index: 70,
        ..pending(5, 300, kit(5, "twice", &["p5a"]))
    });
    batch.push(Pending {
        index: 71,
        ..pending(100, 301, kit(100, "replayed", &["p100a"]))
    });
    let written = write(&mut conn, &batch);
    assert_eq!(written.skipped, 1, "message 5 is persisted already");
    assert_eq!(
        paths(&mut conn)[0],
        "nomnom_message_status: upsert",
        "claimed by upsert after the straight copy met rows"
    );
    assert_eq!(
        lines(
            &mut conn,
            "SELECT id || '|' || name AS line FROM straight_kit WHERE id IN (5, 100) ORDER BY id"
        ),
        ["5|kit 5", "100|replayed"]
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT status FROM nomnom_message_status WHERE message_id = '00000000-0000-0000-0000-000000000064'"
        ),
        "persisted"
    );
    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM nomnom_message_status"),
        "141"
    );
}

/// Two workers given the same first deliveries at once (a redelivery racing the first
/// worker's commit): one claims each message, the other skips it; every row once.
#[test]
fn two_writers_of_the_same_new_messages_write_each_once() {
    let postgres = Postgres::start();
    let url = postgres.create_database("race");
    connect(&url);
    for round in 0..5 {
        let first = 1 + round * 1_000;
        let barrier = Arc::new(Barrier::new(2));
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let (url, barrier) = (url.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut conn = db::connect(&url).unwrap();
                    let batch = kits(first, 100);
                    barrier.wait();
                    write(&mut conn, &batch)
                })
            })
            .collect();
        let skipped: usize = writers.into_iter().map(|w| w.join().unwrap().skipped).sum();
        assert_eq!(
            skipped, 100,
            "round {round}: each message claimed by one writer"
        );
    }
    let mut conn = db::connect(&url).unwrap();
    assert_eq!(count(&mut conn, "SELECT count(*) FROM straight_kit"), "500");
    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM straight_part"),
        "1000"
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) FROM nomnom_message_status WHERE status = 'persisted'"
        ),
        "500"
    );
}
