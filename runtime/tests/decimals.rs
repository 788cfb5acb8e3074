//! Decimals are exact from the body's text to the database, on PostgreSQL and SQLite:
//! random digit strings (JSON numbers, exponents included, and numeric strings) go
//! through the worker's JSON reader, `parse::numeric` / `parse::decimal` and the SQL
//! writer, and come back with not one digit lost or invented. PostgreSQL's own reading of
//! the text sent is the oracle: it must store exactly what we store.

use diesel::{RunQueryDsl, sql_types::Text};
use nomnom_runtime::json;
use nomnom_runtime::parse;
use nomnom_runtime::sql::{self, AnyConnection, Column, ColumnType, Table, Value, WriteMode};
use nomnom_test_support::Postgres;
use proptest::prelude::*;

const PRECISION: u32 = 40;
const SCALE: u32 = 20;

const COLUMNS: &[Column] = &[
    Column {
        name: "id",
        column_type: ColumnType::I64,
    },
    Column {
        name: "sent",
        column_type: ColumnType::Text,
    },
    Column {
        name: "exact",
        column_type: ColumnType::Decimal,
    },
    Column {
        name: "fixed",
        column_type: ColumnType::Decimal,
    },
];

const TABLE: Table = Table {
    name: "numbers",
    columns: COLUMNS,
    key: &["id"],
    write: WriteMode::Insert,
};

/// A number as a sender writes it: JSON number syntax, sometimes with an exponent;
/// sometimes sent as a string instead.
fn number() -> impl Strategy<Value = (String, bool)> {
    let whole = prop_oneof![Just("0".to_owned()), "[1-9][0-9]{0,24}"];
    let fraction = proptest::option::of("[0-9]{1,30}");
    let exponent = proptest::option::of("[eE][+-]?[0-9]{1,2}");
    (any::<bool>(), whole, fraction, exponent, any::<bool>()).prop_map(
        |(negative, whole, fraction, exponent, as_string)| {
            let mut text = String::new();
            if negative {
                text.push('-');
            }
            text.push_str(&whole);
            if let Some(fraction) = fraction {
                text.push('.');
                text.push_str(&fraction);
            }
            text.push_str(&exponent.unwrap_or_default());
            (text, as_string)
        },
    )
}

#[derive(diesel::QueryableByName)]
struct Line {
    #[diesel(sql_type = Text)]
    line: String,
}

fn lines(conn: &mut AnyConnection, query: &str) -> Vec<String> {
    let rows: Vec<Line> = match conn {
        AnyConnection::Postgresql(pg) => diesel::sql_query(query).load(pg),
        AnyConnection::Sqlite(lite) => diesel::sql_query(query).load(lite),
    }
    .unwrap();
    rows.into_iter().map(|r| r.line).collect()
}

/// Parses each number as the worker does and writes it; returns what was expected per row
/// (`exact|fixed`, `-` where the fixed column refused the value).
fn write(conn: &mut AnyConnection, numbers: &[(String, bool)], first_id: i64) -> Vec<String> {
    let body = numbers
        .iter()
        .map(|(text, as_string)| {
            if *as_string {
                format!("{text:?}")
            } else {
                text.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!("[{body}]");
    let body = json::from_str(&text).expect("valid JSON");
    let mut rows = Vec::new();
    let mut expected = Vec::new();
    for (i, (text, _)) in numbers.iter().enumerate() {
        let value = &body[i];
        let exact = parse::numeric(value, "/v").expect("any number fits an unconstrained decimal");
        let fixed = parse::decimal(value, "/v", PRECISION, SCALE);
        expected.push(format!("{exact}|{}", fixed.as_deref().unwrap_or("-")));
        if let Err(refused) = &fixed {
            // Refusals echo the value as it was sent.
            assert!(refused.message.starts_with(text.as_str()), "{refused}");
        }
        rows.push(vec![
            Value::I64(first_id + i as i64),
            Value::Text(text.clone()),
            Value::Text(exact),
            fixed.map_or(Value::Null, Value::Text),
        ]);
    }
    sql::write_rows(conn, &TABLE, &rows).unwrap();
    expected
}

fn select(conn: &mut AnyConnection, first_id: i64, count: usize) -> Vec<String> {
    lines(
        conn,
        &format!(
            r#"SELECT CAST("exact" AS TEXT) || '|' || COALESCE(CAST("fixed" AS TEXT), '-') AS line
               FROM numbers WHERE "id" >= {first_id} AND "id" < {} ORDER BY "id""#,
            first_id + count as i64
        ),
    )
}

#[test]
fn decimals_round_trip_exactly_on_postgres_and_sqlite() {
    let pg = Postgres::start();
    let mut postgres = sql::connect(&pg.create_database("decimals")).unwrap();
    sql::run_script(
        &mut postgres,
        &format!(
            r#"CREATE TABLE numbers ("id" BIGINT PRIMARY KEY, "sent" TEXT NOT NULL,
                "exact" NUMERIC NOT NULL, "fixed" NUMERIC({PRECISION}, {SCALE}));"#
        ),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sqlite = sql::connect(&format!(
        "sqlite://{}",
        dir.path().join("decimals.db").display()
    ))
    .unwrap();
    sql::run_script(
        &mut sqlite,
        r#"CREATE TABLE numbers ("id" BIGINT PRIMARY KEY, "sent" TEXT NOT NULL,
            "exact" TEXT NOT NULL, "fixed" TEXT);"#,
    )
    .unwrap();

    // proptest! takes an `Fn` closure.
    let (postgres, sqlite, next_id) = (
        std::cell::RefCell::new(postgres),
        std::cell::RefCell::new(sqlite),
        std::cell::Cell::new(0),
    );
    let config = ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(numbers in proptest::collection::vec(number(), 1..64))| {
        let first_id = next_id.get();
        next_id.set(first_id + numbers.len() as i64);
        let (postgres, sqlite) = (&mut *postgres.borrow_mut(), &mut *sqlite.borrow_mut());
        let expected = write(postgres, &numbers, first_id);
        prop_assert_eq!(&write(sqlite, &numbers, first_id), &expected);
        // Both databases give back exactly the text that was parsed.
        prop_assert_eq!(&select(postgres, first_id, numbers.len()), &expected);
        prop_assert_eq!(&select(sqlite, first_id, numbers.len()), &expected);
    });

    // PostgreSQL reading the text as sent agrees with every stored value, and where the
    // fixed column refused, NUMERIC(40, 20) would have rounded or overflowed it.
    let disagreements = pg.psql(
        "decimals",
        &format!(
            r#"SELECT count(*) FROM numbers WHERE "exact" <> "sent"::numeric
                 OR CAST("exact" AS TEXT) <> CAST("sent"::numeric AS TEXT)
                 OR ("fixed" IS NOT NULL AND "fixed" <> "sent"::numeric)
                 OR ("fixed" IS NULL AND round("sent"::numeric, {SCALE}) = "sent"::numeric
                     AND abs("sent"::numeric) < 1e{})"#,
            PRECISION - SCALE
        ),
    );
    assert_eq!(disagreements, "0");
    let refused = pg.psql(
        "decimals",
        r#"SELECT count(*) > 0 FROM numbers WHERE "fixed" IS NULL"#,
    );
    assert_eq!(
        refused, "t",
        "the generator never made a number the fixed column refuses"
    );
}

/// The published examples that lost digits through a float.
#[test]
fn published_high_precision_values_keep_every_digit() {
    let body = json::from_str(
        r#"{"a": 66.899999999999991, "b": 0.1234567890123456789, "c": 1E-22,
            "d": -1.000000000000000000E+245}"#,
    )
    .unwrap();
    assert_eq!(
        parse::numeric(&body["a"], "/a").unwrap(),
        "66.899999999999991"
    );
    assert_eq!(
        parse::numeric(&body["b"], "/b").unwrap(),
        "0.1234567890123456789"
    );
    assert_eq!(
        parse::decimal(&body["b"], "/b", 20, 19).unwrap(),
        "0.1234567890123456789"
    );
    assert_eq!(
        parse::decimal(&body["c"], "/c", 23, 22).unwrap(),
        "0.0000000000000000000001"
    );
    assert_eq!(
        parse::decimal(&body["c"], "/c", 15, 2).unwrap_err().message,
        "1E-22 has more than 2 digits after the point"
    );
    assert_eq!(
        parse::numeric(&body["d"], "/d").unwrap(),
        format!("-1{}", "0".repeat(245))
    );
}
