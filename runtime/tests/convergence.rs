//! Keyed changes converge to stream order: random operation sequences on a small key
//! space, some carried several to one stream message (a bundle's records, `fan_out`), cut
//! into random batches, some nak'd and redelivered after newer ones, some delivered twice,
//! written by one to three concurrent workers through the worker's own write path, on
//! real PostgreSQL and SQLite. The final tables must equal a model that applies the
//! records one by one in stream order, those of one stream message at its sequence.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use diesel::{RunQueryDsl, sql_types::Text};
use nomnom_runtime::{
    change::{Change, Child, Entity, Op},
    db,
    sql::{AnyConnection, Column, ColumnType, Table, Value, WriteMode},
    status::{MessageState, StatusRecord},
    worker::write::{Pending, write_batch},
};
use nomnom_test_support::Postgres;
use proptest::prelude::*;

static NOTE: Entity = Entity {
    table: Table {
        name: "note",
        columns: &[
            Column::new("item_id", ColumnType::I64),
            Column::new("part_no", ColumnType::I32),
            Column::new("k", ColumnType::I32),
            Column::new("text", ColumnType::Text),
        ],
        key: &["item_id", "part_no", "k"],
        write: WriteMode::Upsert,
    },
    versioned: false,
    operation: true,
    children: &[],
};

static PART: Entity = Entity {
    table: Table {
        name: "part",
        columns: &[
            Column::new("item_id", ColumnType::I64),
            Column::new("no", ColumnType::I32),
            Column::new("label", ColumnType::Text),
        ],
        key: &["item_id", "no"],
        write: WriteMode::Upsert,
    },
    versioned: false,
    operation: true,
    children: &[Child {
        entity: &NOTE,
        parent_key: &[("item_id", "item_id"), ("part_no", "no")],
    }],
};

/// Creates are upserts here (`write: upsert`); children are upserted too, so a child left
/// behind by a replaced parent would survive silently.
static ITEM: Entity = Entity {
    table: Table {
        name: "item",
        columns: &[
            Column::new("id", ColumnType::I64),
            Column::new("name", ColumnType::Text),
            Column::new("n", ColumnType::I64),
            Column::new("nomnom_seq", ColumnType::I64),
        ],
        key: &["id"],
        write: WriteMode::Upsert,
    },
    versioned: false,
    operation: true,
    children: &[Child {
        entity: &PART,
        parent_key: &[("item_id", "id")],
    }],
};

/// A source with its own order: `v` is the version field.
static DOC: Entity = Entity {
    table: Table {
        name: "doc",
        columns: &[
            Column::new("id", ColumnType::I64),
            Column::new("body", ColumnType::Text),
            Column::new("v", ColumnType::I64),
            Column::new("nomnom_seq", ColumnType::I64),
            Column::new("nomnom_version", ColumnType::I64),
        ],
        key: &["id"],
        write: WriteMode::Upsert,
    },
    versioned: true,
    operation: true,
    children: &[],
};

const POSTGRES_DDL: &str = "
    CREATE TABLE item (id BIGINT PRIMARY KEY, name TEXT, n BIGINT, nomnom_seq BIGINT NOT NULL);
    CREATE TABLE part (item_id BIGINT NOT NULL, no INTEGER NOT NULL, label TEXT, PRIMARY KEY (item_id, no));
    CREATE TABLE note (item_id BIGINT NOT NULL, part_no INTEGER NOT NULL, k INTEGER NOT NULL, text TEXT,
        PRIMARY KEY (item_id, part_no, k));
    CREATE TABLE doc (id BIGINT PRIMARY KEY, body TEXT, v BIGINT NOT NULL, nomnom_seq BIGINT NOT NULL,
        nomnom_version BIGINT NOT NULL);";

const SQLITE_DDL: &str = "
    CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, n INTEGER, nomnom_seq INTEGER NOT NULL);
    CREATE TABLE part (item_id INTEGER NOT NULL, no INTEGER NOT NULL, label TEXT, PRIMARY KEY (item_id, no));
    CREATE TABLE note (item_id INTEGER NOT NULL, part_no INTEGER NOT NULL, k INTEGER NOT NULL, text TEXT,
        PRIMARY KEY (item_id, part_no, k));
    CREATE TABLE doc (id INTEGER PRIMARY KEY, body TEXT, v INTEGER NOT NULL, nomnom_seq INTEGER NOT NULL,
        nomnom_version INTEGER NOT NULL);";

/// A part with its notes, as a message carries it.
type Parts = BTreeMap<i32, (String, BTreeMap<i32, String>)>;

/// One message of the generated sequence.
#[derive(Debug, Clone)]
enum Message {
    Item {
        op: Op,
        id: i64,
        name: Option<String>,
        n: Option<i64>,
        parts: Parts,
    },
    Doc {
        op: Op,
        id: i64,
        body: Option<String>,
        v: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Create),
        2 => Just(Op::Upsert),
        2 => Just(Op::Patch),
        2 => Just(Op::Delete),
    ]
}

fn word() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(str::to_owned)
}

fn parts() -> impl Strategy<Value = Parts> {
    prop::collection::btree_map(
        1..4i32,
        (word(), prop::collection::btree_map(1..3i32, word(), 0..3)),
        0..3,
    )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        3 => (op(), 1..4i64, prop::option::of(word()), prop::option::of(0..9i64), parts()).prop_map(
            |(op, id, name, n, parts)| Message::Item { op, id, name, n, parts }
        ),
        1 => (op(), 1..3i64, prop::option::of(word()), 0..4i64)
            .prop_map(|(op, id, body, v)| Message::Doc { op, id, body, v }),
    ]
}

impl Message {
    /// The change a generated parser would make of this message.
    fn change(&self) -> Change {
        match self {
            Message::Item {
                op,
                id,
                name,
                n,
                parts,
            } => {
                let text = |t: &Option<String>| t.clone().map_or(Value::Null, Value::Text);
                let int = |n: &Option<i64>| n.map_or(Value::Null, Value::I64);
                let values = match op {
                    // A patch sets what the body has: `None` fields are absent.
                    Op::Patch => vec![
                        Some(Value::I64(*id)),
                        name.clone().map(Value::Text),
                        n.map(Value::I64),
                    ],
                    Op::Delete => vec![Some(Value::I64(*id)), None, None],
                    _ => vec![Some(Value::I64(*id)), Some(text(name)), Some(int(n))],
                };
                let mut change = Change {
                    entity: &ITEM,
                    op: *op,
                    values,
                    version: None,
                    children: Vec::new(),
                    path: String::new(),
                };
                if matches!(op, Op::Create | Op::Upsert) {
                    for (no, (label, notes)) in parts {
                        change
                            .push_child(
                                &PART,
                                &format!("/parts/{no}"),
                                vec![Value::I64(*id), Value::I32(*no), Value::Text(label.clone())],
                            )
                            .unwrap();
                        for (k, text) in notes {
                            change
                                .push_child(
                                    &NOTE,
                                    &format!("/parts/{no}/notes/{k}"),
                                    vec![
                                        Value::I64(*id),
                                        Value::I32(*no),
                                        Value::I32(*k),
                                        Value::Text(text.clone()),
                                    ],
                                )
                                .unwrap();
                        }
                    }
                }
                change
            }
            Message::Doc { op, id, body, v } => {
                let values = match op {
                    Op::Patch => vec![
                        Some(Value::I64(*id)),
                        body.clone().map(Value::Text),
                        Some(Value::I64(*v)),
                    ],
                    Op::Delete => vec![Some(Value::I64(*id)), None, Some(Value::I64(*v))],
                    _ => vec![
                        Some(Value::I64(*id)),
                        Some(body.clone().map_or(Value::Null, Value::Text)),
                        Some(Value::I64(*v)),
                    ],
                };
                Change {
                    entity: &DOC,
                    op: *op,
                    values,
                    version: Some(*v),
                    children: Vec::new(),
                    path: String::new(),
                }
            }
        }
    }
}

/// The tables as text lines, sorted: what the model and the database must agree on.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tables {
    items: Vec<String>,
    parts: Vec<String>,
    notes: Vec<String>,
    docs: Vec<String>,
}

/// Applies the messages one by one: items in stream order (sequence = position + 1),
/// docs in version order, the sequence breaking ties. A patch of a missing row does
/// nothing.
/// `seqs`: each message's stream sequence (those carried together share one).
fn model(messages: &[Message], seqs: &[i64]) -> Tables {
    #[derive(Clone)]
    struct ItemRow {
        name: Option<String>,
        n: Option<i64>,
        parts: Parts,
        /// The sequence of the create or upsert that wrote the row (`nomnom_seq`).
        seq: i64,
    }
    #[derive(Clone)]
    struct DocRow {
        body: Option<String>,
        v: i64,
        reset: (i64, i64),
    }
    let mut items: BTreeMap<i64, ItemRow> = BTreeMap::new();
    let mut docs: BTreeMap<i64, DocRow> = BTreeMap::new();
    let mut doc_messages = Vec::new();
    for (message, seq) in messages.iter().zip(seqs) {
        let seq = *seq;
        match message.clone() {
            Message::Item {
                op,
                id,
                name,
                n,
                parts,
            } => match op {
                Op::Create | Op::Upsert => {
                    items.insert(
                        id,
                        ItemRow {
                            name,
                            n,
                            parts,
                            seq,
                        },
                    );
                }
                Op::Patch => {
                    if let Some(row) = items.get_mut(&id) {
                        if name.is_some() {
                            row.name = name;
                        }
                        if n.is_some() {
                            row.n = n;
                        }
                    }
                }
                Op::Delete => {
                    items.remove(&id);
                }
            },
            Message::Doc { op, id, body, v } => doc_messages.push(((v, seq), op, id, body)),
        }
    }
    doc_messages.sort_by_key(|m| m.0);
    for ((v, seq), op, id, body) in doc_messages {
        match op {
            Op::Create | Op::Upsert => {
                docs.insert(
                    id,
                    DocRow {
                        body,
                        v,
                        reset: (v, seq),
                    },
                );
            }
            Op::Patch => {
                if let Some(row) = docs.get_mut(&id) {
                    if body.is_some() {
                        row.body = body;
                    }
                    row.v = v;
                }
            }
            Op::Delete => {
                docs.remove(&id);
            }
        }
    }
    let mut tables = Tables::default();
    for (id, row) in &items {
        tables.items.push(format!(
            "{id}|{}|{}|{}",
            opt(&row.name),
            opt(&row.n),
            row.seq
        ));
        for (no, (label, notes)) in &row.parts {
            tables.parts.push(format!("{id}|{no}|{label}"));
            for (k, text) in notes {
                tables.notes.push(format!("{id}|{no}|{k}|{text}"));
            }
        }
    }
    for (id, row) in &docs {
        let (version, seq) = row.reset;
        tables
            .docs
            .push(format!("{id}|{}|{}|{seq}|{version}", opt(&row.body), row.v));
    }
    tables.sort();
    tables
}

fn opt<T: std::fmt::Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or("NULL".to_owned(), ToString::to_string)
}

impl Tables {
    fn sort(&mut self) {
        self.items.sort();
        self.parts.sort();
        self.notes.sort();
        self.docs.sort();
    }

    fn read(conn: &mut AnyConnection) -> Self {
        let text = |column: &str| format!("COALESCE(CAST({column} AS TEXT), 'NULL')");
        let mut tables = Tables {
            items: lines(
                conn,
                &format!(
                    "SELECT {} || '|' || {} || '|' || {} || '|' || {} AS line FROM item",
                    text("id"),
                    text("name"),
                    text("n"),
                    text("nomnom_seq")
                ),
            ),
            parts: lines(
                conn,
                &format!(
                    "SELECT {} || '|' || {} || '|' || {} AS line FROM part",
                    text("item_id"),
                    text("no"),
                    text("label")
                ),
            ),
            notes: lines(
                conn,
                &format!(
                    "SELECT {} || '|' || {} || '|' || {} || '|' || {} AS line FROM note",
                    text("item_id"),
                    text("part_no"),
                    text("k"),
                    text("text")
                ),
            ),
            docs: lines(
                conn,
                &format!(
                    "SELECT {} || '|' || {} || '|' || {} || '|' || {} || '|' || {} AS line FROM doc",
                    text("id"),
                    text("body"),
                    text("v"),
                    text("nomnom_seq"),
                    text("nomnom_version")
                ),
            ),
        };
        tables.sort();
        tables
    }
}

#[derive(diesel::QueryableByName)]
struct Line {
    #[diesel(sql_type = Text)]
    line: String,
}

fn lines(conn: &mut AnyConnection, sql: &str) -> Vec<String> {
    let rows: Vec<Line> = match conn {
        AnyConnection::Postgresql(pg) => diesel::sql_query(sql).load(pg),
        AnyConnection::Sqlite(lite) => diesel::sql_query(sql).load(lite),
    }
    .unwrap();
    rows.into_iter().map(|r| r.line).collect()
}

/// What happens to one delivery of a batch.
#[derive(Debug, Clone, Copy)]
enum Fate {
    /// Written and acknowledged.
    Ack,
    /// Nak'd before writing (a transient failure): redelivered after what is queued.
    Nak,
    /// Written, but the ack is lost: redelivered after what is queued.
    LostAck,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![4 => Just(Fate::Ack), 2 => Just(Fate::Nak), 1 => Just(Fate::LostAck)]
}

/// A generated scenario: the records, which ride together in one stream message, where
/// batches end, what befalls each delivery.
#[derive(Debug, Clone)]
struct Scenario {
    messages: Vec<Message>,
    /// Whether a record rides in the stream message of the one before it (unless that
    /// message holds its key already: the parser refuses such a message).
    carried: Vec<bool>,
    cuts: Vec<bool>,
    fates: Vec<Fate>,
    workers: usize,
}

impl Message {
    /// The table and key of its root row.
    fn key(&self) -> (&'static str, i64) {
        match self {
            Message::Item { id, .. } => ("item", *id),
            Message::Doc { id, .. } => ("doc", *id),
        }
    }
}

impl Scenario {
    /// The stream messages: the indexes of the records each carries, in order.
    fn stream(&self) -> Vec<Vec<usize>> {
        let mut stream: Vec<Vec<usize>> = Vec::new();
        for (index, message) in self.messages.iter().enumerate() {
            match stream.last_mut() {
                Some(current)
                    if self.carried[index]
                        && !current
                            .iter()
                            .any(|i| self.messages[*i].key() == message.key()) =>
                {
                    current.push(index);
                }
                _ => stream.push(vec![index]),
            }
        }
        stream
    }

    /// Each record's stream sequence: its stream message's.
    fn seqs(&self) -> Vec<i64> {
        let mut seqs = vec![0; self.messages.len()];
        for (n, records) in self.stream().iter().enumerate() {
            for index in records {
                seqs[*index] = n as i64 + 1;
            }
        }
        seqs
    }
}

fn scenario() -> impl Strategy<Value = Scenario> {
    prop::collection::vec(message(), 1..28).prop_flat_map(|messages| {
        let len = messages.len();
        (
            Just(messages),
            prop::collection::vec(prop::bool::weighted(0.25), len),
            prop::collection::vec(prop::bool::weighted(0.3), len),
            prop::collection::vec(fate(), 3 * len),
            1..=3usize,
        )
            .prop_map(|(messages, carried, cuts, fates, workers)| Scenario {
                messages,
                carried,
                cuts,
                fates,
                workers,
            })
    })
}

/// The stream message at `index` carrying `records`.
fn pending(index: usize, records: &[&Message]) -> Pending {
    let seq = index as i64 + 1;
    let now = chrono::Utc::now();
    Pending {
        index,
        record: StatusRecord {
            message_id: uuid::Uuid::from_u128(seq as u128),
            entity: Some("item".into()),
            status: MessageState::Persisted,
            attempts: 1,
            error: None,
            received_at: now,
            processed_at: now,
            stream_sequence: Some(seq),
        },
        changes: records.iter().map(|m| m.change()).collect(),
    }
}

/// Runs a scenario through `workers` concurrent writers; returns the final tables.
fn run(scenario: &Scenario, connect: &(dyn Fn() -> AnyConnection + Sync)) -> Tables {
    let stream = scenario.stream();
    let mut batches: VecDeque<Vec<usize>> = VecDeque::new();
    let mut current = Vec::new();
    for (index, cut) in scenario.cuts.iter().take(stream.len()).enumerate() {
        current.push(index);
        if *cut {
            batches.push_back(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        batches.push_back(current);
    }
    let queue = Mutex::new(batches);
    let in_flight = AtomicUsize::new(0);
    let deliveries = AtomicUsize::new(0);
    let stream: Arc<Vec<Vec<&Message>>> = Arc::new(
        (stream.iter())
            .map(|records| records.iter().map(|i| &scenario.messages[*i]).collect())
            .collect(),
    );
    std::thread::scope(|scope| {
        for _ in 0..scenario.workers {
            scope.spawn(|| {
                let mut conn = connect();
                loop {
                    let batch = {
                        let mut queue = queue.lock().unwrap();
                        let batch = queue.pop_front();
                        if batch.is_some() {
                            in_flight.fetch_add(1, Ordering::SeqCst);
                        }
                        batch
                    };
                    let Some(batch) = batch else {
                        if in_flight.load(Ordering::SeqCst) == 0 {
                            return;
                        }
                        std::thread::yield_now();
                        continue;
                    };
                    let delivery = deliveries.fetch_add(1, Ordering::SeqCst);
                    // Past the generated fates, every delivery succeeds: the run ends.
                    let fate = scenario.fates.get(delivery).copied().unwrap_or(Fate::Ack);
                    let redeliver = match fate {
                        Fate::Nak => true,
                        Fate::Ack | Fate::LostAck => {
                            let pending: Vec<Pending> =
                                batch.iter().map(|i| pending(*i, &stream[*i])).collect();
                            let written = write_batch(&mut conn, &pending, 0)
                                .unwrap_or_else(|e| panic!("write failed: {e}"));
                            assert!(written.refused.is_empty(), "refused: {:?}", written.refused);
                            matches!(fate, Fate::LostAck)
                        }
                    };
                    if redeliver {
                        queue.lock().unwrap().push_back(batch);
                    }
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                }
            });
        }
    });
    let mut conn = connect();
    // Every stream message has a final status row, whatever became of it.
    let statuses = lines(
        &mut conn,
        "SELECT status AS line FROM nomnom_message_status \
         WHERE status IN ('persisted', 'skipped_stale', 'skipped_missing')",
    );
    assert_eq!(statuses.len(), stream.len(), "{statuses:?}");
    Tables::read(&mut conn)
}

/// Cases per property: `PROPTEST_CASES` if set, else 40 (a few seconds per database).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40)
}

fn reset(conn: &mut AnyConnection) {
    db::run_script(
        conn,
        "DELETE FROM note; DELETE FROM part; DELETE FROM item; DELETE FROM doc; \
         DELETE FROM nomnom_tombstones; DELETE FROM nomnom_patches; \
         DELETE FROM nomnom_message_status;",
    )
    .unwrap();
}

fn setup(conn: &mut AnyConnection, ddl: &str) {
    db::run_script(conn, ddl).unwrap();
    nomnom_runtime::worker::create_runtime_tables(conn).unwrap();
}

/// The property, on the database at `url` whose entity tables `ddl` creates.
fn converges(url: &str, ddl: &str) {
    let connect = || db::connect(url).unwrap();
    setup(&mut connect(), ddl);
    let config = ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(scenario in scenario())| {
        reset(&mut connect());
        prop_assert_eq!(run(&scenario, &connect), model(&scenario.messages, &scenario.seqs()));
    });
}

#[test]
fn keyed_changes_converge_to_stream_order_on_postgres() {
    let postgres = Postgres::start();
    converges(&postgres.create_database("convergence"), POSTGRES_DDL);
}

#[test]
fn keyed_changes_converge_to_stream_order_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    converges(
        &format!("sqlite://{}", dir.path().join("convergence.db").display()),
        SQLITE_DDL,
    );
}

/// The bug that started it: star, star, unstar of one key in one batch left the star
/// (deletes were applied before upserts). And a stale upsert redelivered after the
/// unstar must not bring it back.
#[test]
fn star_star_unstar_in_one_batch_leaves_no_star() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("stars.db").display());
    let mut conn = db::connect(&url).unwrap();
    setup(&mut conn, SQLITE_DDL);
    let star = |op| Message::Item {
        op,
        id: 7,
        name: Some("octocat".into()),
        n: None,
        parts: Parts::new(),
    };
    let messages = [star(Op::Upsert), star(Op::Upsert), star(Op::Delete)];
    let batch: Vec<Pending> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| pending(i, &[m]))
        .collect();
    write_batch(&mut conn, &batch, 0).unwrap();
    assert_eq!(Tables::read(&mut conn), Tables::default());
    // The first star again, as a new message with its old sequence (a replica that
    // held it): older than the tombstone, so skipped.
    let mut late = pending(0, &[&messages[0]]);
    late.record.message_id = uuid::Uuid::from_u128(99);
    let written = write_batch(&mut conn, &[late], 0).unwrap();
    assert_eq!(written.stale, 1);
    assert_eq!(Tables::read(&mut conn), Tables::default());
}

#[test]
fn tombstones_past_their_retention_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = db::connect(&format!(
        "sqlite://{}",
        dir.path().join("prune.db").display()
    ))
    .unwrap();
    setup(&mut conn, SQLITE_DDL);
    let day = 24 * 3600;
    let now = chrono::Utc::now().timestamp();
    db::run_script(
        &mut conn,
        &format!(
            "INSERT INTO nomnom_tombstones VALUES ('item', '[1]', 5, NULL, {}), ('item', '[2]', 6, NULL, {})",
            now - 8 * day,
            now - day
        ),
    )
    .unwrap();
    let week = std::time::Duration::from_secs(7 * day as u64);
    assert_eq!(nomnom_runtime::apply::prune(&mut conn, week).unwrap(), 1);
    assert_eq!(nomnom_runtime::apply::prune(&mut conn, week).unwrap(), 0);
}

/// A stream deleted and created again restarts at sequence 1: its messages still order
/// after everything the old one delivered.
#[test]
fn a_recreated_stream_orders_after_the_old_one() {
    use nomnom_runtime::apply::{SEQUENCES_PER_STREAM, sequence_base};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("streams.db").display());
    let mut conn = db::connect(&url).unwrap();
    setup(&mut conn, SQLITE_DDL);
    let old = sequence_base(&mut conn, "MESSAGES", 1_000).unwrap();
    let new = sequence_base(&mut conn, "MESSAGES", 2_000).unwrap();
    assert_eq!((old, new), (0, SEQUENCES_PER_STREAM));
    assert_eq!(
        sequence_base(&mut conn, "MESSAGES", 2_000).unwrap(),
        new,
        "stable"
    );

    let item = |op| Message::Item {
        op,
        id: 1,
        name: Some("x".into()),
        n: None,
        parts: Parts::new(),
    };
    // Sequence 5 of the old stream, then sequence 1 (index 0) of the new one.
    let mut created = pending(4, &[&item(Op::Upsert)]);
    created.record.message_id = uuid::Uuid::from_u128(1_000);
    write_batch(&mut conn, &[created], old).unwrap();
    let written = write_batch(&mut conn, &[pending(0, &[&item(Op::Delete)])], new).unwrap();
    assert_eq!(written.stale, 0);
    assert_eq!(Tables::read(&mut conn), Tables::default());
}
