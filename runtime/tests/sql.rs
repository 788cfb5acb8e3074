//! The shared SQL writer on real PostgreSQL and SQLite.

use diesel::{RunQueryDsl, sql_types::Text};
use nomnom_runtime::sql::{
    self, AnyConnection, Column, ColumnType, Table, Value, WriteMode, delete_rows, write_rows,
};
use nomnom_test_support::Postgres;

const COLUMNS: &[Column] = &[
    Column {
        name: "id",
        column_type: ColumnType::I64,
    },
    Column {
        name: "part",
        column_type: ColumnType::I16,
    },
    Column {
        name: "order",
        column_type: ColumnType::Text,
    },
    Column {
        name: "n32",
        column_type: ColumnType::I32,
    },
    Column {
        name: "flag",
        column_type: ColumnType::Bool,
    },
    Column {
        name: "ratio",
        column_type: ColumnType::F32,
    },
    Column {
        name: "score",
        column_type: ColumnType::F64,
    },
    Column {
        name: "price",
        column_type: ColumnType::Decimal,
    },
    Column {
        name: "day",
        column_type: ColumnType::Date,
    },
    Column {
        name: "at",
        column_type: ColumnType::Time,
    },
    Column {
        name: "seen",
        column_type: ColumnType::Timestamptz,
    },
    Column {
        name: "ref",
        column_type: ColumnType::Uuid,
    },
    Column {
        name: "extra",
        column_type: ColumnType::Json,
    },
    Column {
        name: "tags",
        column_type: ColumnType::Array { element: "text" },
    },
    Column {
        name: "nums",
        column_type: ColumnType::Array { element: "bigint" },
    },
];

fn table(write: WriteMode) -> Table {
    Table {
        name: "things",
        columns: COLUMNS,
        key: &["id", "part"],
        write,
    }
}

const POSTGRES_DDL: &str = r#"CREATE TABLE things (
    "id" BIGINT NOT NULL, "part" SMALLINT NOT NULL, "order" TEXT, "n32" INTEGER, "flag" BOOLEAN,
    "ratio" REAL, "score" DOUBLE PRECISION, "price" NUMERIC(10, 2), "day" DATE, "at" TIME,
    "seen" TIMESTAMPTZ, "ref" UUID, "extra" JSONB, "tags" TEXT[], "nums" BIGINT[],
    PRIMARY KEY ("id", "part"))"#;

const SQLITE_DDL: &str = r#"CREATE TABLE things (
    "id" INTEGER NOT NULL, "part" INTEGER NOT NULL, "order" TEXT, "n32" INTEGER, "flag" BOOLEAN,
    "ratio" REAL, "score" REAL, "price" TEXT, "day" TEXT, "at" TEXT, "seen" TEXT, "ref" TEXT,
    "extra" TEXT, "tags" TEXT, "nums" TEXT, PRIMARY KEY ("id", "part"))"#;

fn row(id: i64, part: i16, label: &str) -> Vec<Value> {
    vec![
        Value::I64(id),
        Value::I16(part),
        Value::Text(label.into()),
        Value::I32(-7),
        Value::Bool(true),
        Value::F32(0.5),
        Value::F64(2.25),
        Value::Text("172799.49".into()),
        Value::Text("1996-01-02".into()),
        Value::Text("12:30:00.5".into()),
        Value::Text("2026-11-22T13:30:00.123456Z".into()),
        Value::Text("0190d6f2-4c1e-7a3b-8f00-123456789abc".into()),
        Value::Text(r#"{"k": [1, 2]}"#.into()),
        // Arrays: the label (tabs, backslashes, quotes…) as an element, and numbers.
        Value::from(vec![label.to_owned(), "{\"b\"}".to_owned()]),
        Value::from(if label.is_empty() {
            Vec::new()
        } else {
            vec![1_i64, -2]
        }),
    ]
}

fn nulls(id: i64, part: i16) -> Vec<Value> {
    let mut values = vec![Value::I64(id), Value::I16(part)];
    values.extend(std::iter::repeat_n(Value::Null, COLUMNS.len() - 2));
    values
}

#[derive(diesel::QueryableByName, Debug)]
struct Line {
    #[diesel(sql_type = Text)]
    line: String,
}

/// Every row as one text line, ordered by key.
fn dump(conn: &mut AnyConnection, columns: &str) -> Vec<String> {
    let query = format!(r#"SELECT {columns} AS line FROM things ORDER BY "id", "part""#);
    let rows: Vec<Line> = match conn {
        AnyConnection::Postgresql(pg) => diesel::sql_query(query).load(pg),
        AnyConnection::Sqlite(lite) => diesel::sql_query(query).load(lite),
    }
    .unwrap();
    rows.into_iter().map(|r| r.line).collect()
}

fn exercise(mut conn: AnyConnection, ddl: &str) {
    sql::run_script(&mut conn, ddl).unwrap();

    // Insert: every type and NULLs; a repeated key is a constraint error.
    write_rows(
        &mut conn,
        &table(WriteMode::Insert),
        &[row(1, 1, "a"), nulls(2, 1)],
    )
    .unwrap();
    let err = write_rows(&mut conn, &table(WriteMode::Insert), &[row(1, 1, "again")]).unwrap_err();
    assert!(
        !sql::is_transient(&err),
        "a constraint error is about the data: {err}"
    );
    assert_eq!(dump(&mut conn, r#"CAST("id" AS TEXT)"#).len(), 2);

    // Upsert: the same key twice in one batch is fine, and the last row wins.
    write_rows(
        &mut conn,
        &table(WriteMode::Upsert),
        &[row(1, 1, "first"), row(3, 1, "new"), row(1, 1, "last")],
    )
    .unwrap();
    // Ignore: existing keys are left alone, the first of duplicates is kept.
    write_rows(
        &mut conn,
        &table(WriteMode::IgnoreDuplicates),
        &[
            row(1, 1, "ignored"),
            row(4, 2, "kept"),
            row(4, 2, "dropped"),
        ],
    )
    .unwrap();
    let labels = dump(&mut conn, r#"COALESCE("order", 'NULL')"#);
    assert_eq!(labels, ["last", "NULL", "new", "kept"]);

    // Delete by the composite key.
    let deleted = delete_rows(
        &mut conn,
        &table(WriteMode::Upsert),
        &[
            vec![Value::I64(3), Value::I16(1)],
            vec![Value::I64(9), Value::I16(9)],
        ],
    )
    .unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(dump(&mut conn, r#"CAST("id" AS TEXT)"#), ["1", "2", "4"]);

    // More rows than one statement can bind: written in several statements.
    let many: Vec<Vec<Value>> = (0..6_000).map(|i| row(1_000 + i, 0, "bulk")).collect();
    assert_eq!(
        write_rows(&mut conn, &table(WriteMode::Insert), &many).unwrap(),
        6_000
    );
    assert_eq!(dump(&mut conn, r#"CAST("id" AS TEXT)"#).len(), 6_003);
}

#[test]
fn the_writer_on_postgres() {
    let pg = Postgres::start();
    let url = pg.create_database("writer");
    exercise(sql::connect(&url).unwrap(), POSTGRES_DDL);
    // Values landed in their real types.
    let typed = pg.psql(
        "writer",
        r#"SELECT price, day, at, seen AT TIME ZONE 'UTC', ref, extra->'k'->>1, flag, ratio FROM things WHERE id = 1"#,
    );
    assert_eq!(
        typed,
        "172799.49|1996-01-02|12:30:00.5|2026-11-22 13:30:00.123456|0190d6f2-4c1e-7a3b-8f00-123456789abc|2|t|0.5"
    );
    // Arrays are PostgreSQL arrays of their element type, in order.
    let arrays = pg.psql(
        "writer",
        r#"SELECT array_length(tags, 1), tags[2], nums[2] + 1, pg_typeof(nums) FROM things WHERE id = 1"#,
    );
    assert_eq!(arrays, r#"2|{"b"}|-1|bigint[]"#);
}

#[test]
fn the_writer_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("writer.db").display());
    exercise(sql::connect(&url).unwrap(), SQLITE_DDL);
    let mut conn = sql::connect(&url).unwrap();
    let exact = dump(
        &mut conn,
        r#"COALESCE(price || '|' || day || '|' || "ref", 'NULL')"#,
    );
    assert_eq!(
        exact[0], "172799.49|1996-01-02|0190d6f2-4c1e-7a3b-8f00-123456789abc",
        "decimals stay exact text"
    );
    // Arrays are their JSON text, readable with SQLite's JSON functions.
    let arrays = dump(
        &mut conn,
        r#"COALESCE(json_extract(tags, '$[1]') || '|' || json_extract(nums, '$[1]'), 'NULL')"#,
    );
    assert_eq!(arrays[0], r#"{"b"}|-2"#);
}

/// On SQLite, rows go in statements of 16, 8, 4, 2 or 1 rows, each text prepared once per
/// connection: compiling a statement cost more than running it.
#[test]
fn sqlite_prepares_each_statement_once() {
    use diesel::connection::{Connection, InstrumentationEvent};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("prepared.db").display());
    let mut conn = sql::connect(&url).unwrap();
    sql::run_script(&mut conn, SQLITE_DDL).unwrap();
    let cached: Arc<Mutex<Vec<String>>> = Arc::default();
    let started = Arc::new(Mutex::new(0));
    let AnyConnection::Sqlite(lite) = &mut conn else {
        unreachable!("a sqlite:// url")
    };
    let (log, count) = (Arc::clone(&cached), Arc::clone(&started));
    lite.set_instrumentation(move |event: InstrumentationEvent<'_>| match event {
        InstrumentationEvent::CacheQuery { sql, .. } => log.lock().unwrap().push(sql.to_owned()),
        InstrumentationEvent::StartQuery { .. } => *count.lock().unwrap() += 1,
        _ => {}
    });
    let rows =
        |from: i64| -> Vec<Vec<Value>> { (from..from + 100).map(|i| row(i, 0, "x")).collect() };
    // 100 rows: six statements of 16 and one of 4, twice over.
    assert_eq!(
        write_rows(&mut conn, &table(WriteMode::Upsert), &rows(0)).unwrap(),
        100
    );
    assert_eq!(
        write_rows(&mut conn, &table(WriteMode::Upsert), &rows(50)).unwrap(),
        100
    );
    // 30 keys: 16, 8, 4 and 2.
    let keys: Vec<Vec<Value>> = (0..30)
        .map(|i| vec![Value::I64(i), Value::I16(0)])
        .collect();
    assert_eq!(
        delete_rows(&mut conn, &table(WriteMode::Upsert), &keys).unwrap(),
        30
    );
    let cached = cached.lock().unwrap();
    assert_eq!(*started.lock().unwrap(), 7 + 7 + 4);
    let placeholders = |sql: &String| sql.matches('?').count();
    let inserts: Vec<usize> = (cached.iter())
        .filter(|sql| sql.starts_with("INSERT INTO \"things\""))
        .map(placeholders)
        .collect();
    let deletes: Vec<usize> = (cached.iter())
        .filter(|sql| sql.starts_with("DELETE FROM \"things\""))
        .map(placeholders)
        .collect();
    let width = COLUMNS.len();
    assert_eq!(inserts, [16 * width, 4 * width], "each text prepared once");
    assert_eq!(
        deletes,
        [16 * 2, 8 * 2, 4 * 2, 2 * 2],
        "each text prepared once"
    );
    assert_eq!(cached.len(), 6);
    assert_eq!(dump(&mut conn, r#"CAST("id" AS TEXT)"#).len(), 120);
}

/// Rows with every type, NULLs and text COPY must escape, and repeated keys.
fn tricky_rows(count: i64) -> Vec<Vec<Value>> {
    let mut rows = Vec::new();
    for id in 0..count {
        let label = match id % 5 {
            0 => "tab\there, newline\nthere".to_owned(),
            1 => r"back\slash \N not null".to_owned(),
            2 => "carriage\rreturn, ünïcödé, emoji 🦀".to_owned(),
            3 => String::new(),
            _ => format!("plain {id}"),
        };
        if id % 7 == 0 {
            rows.push(nulls(id, 0));
        } else {
            rows.push(row(id, 0, &label));
        }
    }
    // A key repeated later in the batch: the last (upsert) or first (ignore) wins.
    rows.push(row(1, 0, "repeated"));
    rows
}

/// PostgreSQL writes large batches through COPY and a staging table, small ones as
/// multi-row statements: both paths must leave exactly the same rows, in every mode.
#[test]
fn copy_and_statements_write_the_same_rows_on_postgres() {
    let pg = Postgres::start();
    let url = pg.create_database("copy");
    let mut conn = sql::connect(&url).unwrap();
    let everything = r#"concat_ws('|', "id", "part", "order", "n32", "flag", "ratio", "score", "price", "day", "at", "seen", "ref", "extra", "tags", "nums")"#;
    let rows = tricky_rows(sql::COPY_MIN_ROWS as i64 * 3);
    for mode in [
        WriteMode::Upsert,
        WriteMode::IgnoreDuplicates,
        WriteMode::Insert,
    ] {
        let mut dumps = Vec::new();
        for bulk in [true, false] {
            sql::run_script(
                &mut conn,
                &format!("DROP TABLE IF EXISTS things; {POSTGRES_DDL}"),
            )
            .unwrap();
            // Rows already there, so upserts update and ignores skip.
            write_rows(
                &mut conn,
                &table(WriteMode::Insert),
                &[row(2, 0, "old"), row(3, 0, "old")],
            )
            .unwrap();
            let batch: Vec<Vec<Value>> = if mode == WriteMode::Insert {
                // Plain inserts of new keys only (a repeat is a constraint error).
                rows.iter()
                    .filter(|r| !matches!(r[0], Value::I64(1..=3)))
                    .cloned()
                    .collect()
            } else {
                rows.clone()
            };
            let written = if bulk {
                assert!(batch.len() >= sql::COPY_MIN_ROWS);
                write_rows(&mut conn, &table(mode), &batch).unwrap()
            } else {
                batch
                    .chunks(sql::COPY_MIN_ROWS / 2)
                    .map(|chunk| write_rows(&mut conn, &table(mode), chunk).unwrap())
                    .sum()
            };
            dumps.push((written, dump(&mut conn, everything)));
        }
        if mode == WriteMode::Upsert {
            // Chunked, the repeated key is written twice; in one batch, once.
            dumps[1].0 = dumps[0].0;
        }
        assert_eq!(dumps[0], dumps[1], "{mode:?}: COPY and statements differ");
        let text = dumps[0].1.join("\n");
        assert!(text.contains("tab\there, newline\nthere"), "{mode:?}");
        assert!(text.contains(r"back\slash \N not null"), "{mode:?}");
        assert!(text.contains("🦀"), "{mode:?}");
    }
    // A constraint error on the COPY path is an error about the data, as on the other.
    let duplicate: Vec<Vec<Value>> = (0..sql::COPY_MIN_ROWS as i64)
        .map(|i| row(i, 0, "again"))
        .collect();
    let err = write_rows(&mut conn, &table(WriteMode::Insert), &duplicate).unwrap_err();
    assert!(!sql::is_transient(&err), "{err}");
}

/// Rows of keys known to be absent go straight into the table, in COPY's binary format:
/// every type, NULLs and odd text leave exactly the rows the staging path leaves. A value
/// the binary form cannot carry (a date that is not one) goes as text, and PostgreSQL
/// refuses it as it would on the staging path.
#[test]
fn straight_binary_copy_writes_what_the_staging_path_writes() {
    let pg = Postgres::start();
    let url = pg.create_database("straight");
    let mut conn = sql::connect(&url).unwrap();
    // The columns without the arrays (which always go through the staging table).
    let scalar = Table {
        columns: &COLUMNS[..COLUMNS.len() - 2],
        ..table(WriteMode::Upsert)
    };
    let everything = r#"concat_ws('|', "id", "part", "order", "n32", "flag", "ratio", "score", "price", "day", "at", "seen", "ref", "extra")"#;
    let decimals = [
        "0",
        "-0.50",
        "0.00001234",
        "10000",
        "-99999999.99",
        "12345678.9",
    ];
    let times = ["00:00:00", "23:59:59.999999", "12:30:00.5"];
    let seen = [
        "1999-12-31T23:59:59.999999Z",
        "2000-01-01T00:00:00+02:00",
        "1969-07-20T20:17:40Z",
    ];
    let days = ["1999-12-31", "2000-01-01", "1900-02-28", "2400-02-29"];
    let rows: Vec<Vec<Value>> = tricky_rows(sql::COPY_MIN_ROWS as i64 * 2)
        .into_iter()
        .filter(|r| r[0] != Value::I64(1) || r[2] != Value::Text("repeated".into()))
        .enumerate()
        .map(|(i, mut row)| {
            row.truncate(scalar.columns.len());
            if row[7] != Value::Null {
                row[7] = Value::Text(decimals[i % decimals.len()].into());
                row[8] = Value::Text(days[i % days.len()].into());
                row[9] = Value::Text(times[i % times.len()].into());
                row[10] = Value::Text(seen[i % seen.len()].into());
                row[5] = Value::F32(-1.5e-3 * i as f32);
                row[6] = Value::F64(f64::MAX / (i + 1) as f64);
            }
            row
        })
        .collect();
    let mut dumps = Vec::new();
    for straight in [true, false] {
        let ddl = POSTGRES_DDL.replace(r#", "tags" TEXT[], "nums" BIGINT[]"#, "");
        sql::run_script(&mut conn, &format!("DROP TABLE IF EXISTS things; {ddl}")).unwrap();
        let written = if straight {
            sql::write_absent_rows(&mut conn, &scalar, &rows).unwrap()
        } else {
            write_rows(&mut conn, &scalar, &rows).unwrap()
        };
        assert_eq!(written, rows.len());
        dumps.push(dump(&mut conn, everything));
    }
    assert_eq!(
        dumps[0], dumps[1],
        "binary COPY and the staging path differ"
    );
    let text = dumps[0].join("\n");
    assert!(
        text.contains("|-0.50|2000-01-01|23:59:59.999999|"),
        "{text}"
    );
    assert!(text.contains("🦀"), "{text}");

    // Not a date: copied as text, refused by PostgreSQL as a data error.
    let mut odd = rows.clone();
    odd[3][8] = Value::Text("not a date".into());
    sql::run_script(&mut conn, "TRUNCATE things").unwrap();
    let err = sql::write_absent_rows(&mut conn, &scalar, &odd).unwrap_err();
    assert!(err.to_string().contains("not a date"), "{err}");
    assert!(!sql::is_transient(&err), "{err}");
    // A key that is there already: a unique violation.
    write_rows(&mut conn, &scalar, &rows[..1]).unwrap();
    let err = sql::write_absent_rows(&mut conn, &scalar, &rows).unwrap_err();
    assert!(
        matches!(
            err,
            diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _
            )
        ),
        "{err}"
    );
}
