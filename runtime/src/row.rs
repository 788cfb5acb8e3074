//! Typed rows for generated workers: a row type knows its table and turns itself into
//! the values of that table's columns, so generated code writes `row::write(conn,
//! &rows.order)` and never lines values up with columns by hand. The SQL itself is in
//! [`crate::sql`].

use chrono::{DateTime, NaiveDate, NaiveTime, SecondsFormat, Utc};
use diesel::QueryResult;

use crate::sql::{self, AnyConnection, Table, Value, WriteMode};

/// A row of one table.
pub trait Row {
    /// The table the row is written to, in the table's write mode.
    const TABLE: Table;

    /// The row's values, one per column of [`Row::TABLE`], in the same order.
    fn values(&self) -> Vec<Value>;
}

/// Writes `rows` in their table's write mode (see [`sql::write_rows`]). Runs inside the
/// caller's transaction; returns the rows affected.
pub fn write<R: Row>(conn: &mut AnyConnection, rows: &[R]) -> QueryResult<usize> {
    write_to(conn, &R::TABLE, rows)
}

/// Writes `rows` as upserts, whatever their table's write mode: rows of messages that
/// ask for an upsert.
pub fn upsert<R: Row>(conn: &mut AnyConnection, rows: &[R]) -> QueryResult<usize> {
    let table = Table {
        write: WriteMode::Upsert,
        ..R::TABLE
    };
    write_to(conn, &table, rows)
}

/// Deletes the rows of `R`'s table whose keys are given, each in the order of the
/// table's key columns (see [`sql::delete_rows`]).
pub fn delete<R: Row>(conn: &mut AnyConnection, keys: &[Vec<Value>]) -> QueryResult<usize> {
    sql::delete_rows(conn, &R::TABLE, keys)
}

fn write_to<R: Row>(conn: &mut AnyConnection, table: &Table, rows: &[R]) -> QueryResult<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    let values: Vec<Vec<Value>> = rows.iter().map(Row::values).collect();
    sql::write_rows(conn, table, &values)
}

// Column values from the Rust types of generated models. Decimals are canonical text
// (`String`); dates, times, timestamps, UUIDs and JSON travel as their text form.

macro_rules! value_from {
    ($($rust:ty => $variant:ident),* $(,)?) => {
        $(impl From<$rust> for Value {
            fn from(value: $rust) -> Self {
                Value::$variant(value)
            }
        })*
    };
}

value_from! {
    bool => Bool,
    i16 => I16,
    i32 => I32,
    i64 => I64,
    f32 => F32,
    f64 => F64,
    String => Text,
}

impl From<NaiveDate> for Value {
    fn from(value: NaiveDate) -> Self {
        Value::Text(value.to_string())
    }
}

impl From<NaiveTime> for Value {
    fn from(value: NaiveTime) -> Self {
        Value::Text(value.format("%H:%M:%S%.f").to_string())
    }
}

impl From<DateTime<Utc>> for Value {
    fn from(value: DateTime<Utc>) -> Self {
        Value::Text(value.to_rfc3339_opts(SecondsFormat::Micros, true))
    }
}

impl From<uuid::Uuid> for Value {
    fn from(value: uuid::Uuid) -> Self {
        Value::Text(value.to_string())
    }
}

impl From<serde_json::Value> for Value {
    fn from(value: serde_json::Value) -> Self {
        Value::from(&value)
    }
}

/// JSON without a copy of the document: generated code converts `&self.field`.
impl From<&serde_json::Value> for Value {
    fn from(value: &serde_json::Value) -> Self {
        Value::Text(value.to_string())
    }
}

/// A nullable column: `None` is SQL `NULL`.
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Self {
        value.map_or(Value::Null, Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{Column, ColumnType};

    struct Item {
        id: i64,
        name: Option<String>,
    }

    impl Row for Item {
        const TABLE: Table = Table {
            name: "item",
            columns: &[
                Column {
                    name: "id",
                    column_type: ColumnType::I64,
                },
                Column {
                    name: "name",
                    column_type: ColumnType::Text,
                },
            ],
            key: &["id"],
            write: WriteMode::Insert,
        };

        fn values(&self) -> Vec<Value> {
            vec![self.id.into(), self.name.clone().into()]
        }
    }

    #[test]
    fn values_follow_the_columns() {
        let item = Item { id: 7, name: None };
        assert_eq!(item.values(), vec![Value::I64(7), Value::Null]);
        assert_eq!(
            Value::from(Some("x".to_owned())),
            Value::Text("x".to_owned())
        );
    }

    #[test]
    fn text_forms_match_the_sql_writer() {
        let date = NaiveDate::from_ymd_opt(1996, 1, 2).unwrap();
        assert_eq!(Value::from(date), Value::Text("1996-01-02".into()));
        let time = NaiveTime::from_hms_milli_opt(12, 30, 0, 500).unwrap();
        assert_eq!(Value::from(time), Value::Text("12:30:00.500".into()));
        let at = date.and_time(time).and_utc();
        assert_eq!(
            Value::from(at),
            Value::Text("1996-01-02T12:30:00.500000Z".into())
        );
        assert_eq!(
            Value::from(&serde_json::json!({"a": [1]})),
            Value::Text("{\"a\":[1]}".into())
        );
    }

    #[test]
    fn rows_round_trip_through_sqlite() {
        use diesel::Connection;
        let mut conn =
            AnyConnection::Sqlite(diesel::SqliteConnection::establish(":memory:").unwrap());
        sql::run_script(
            &mut conn,
            "CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)",
        )
        .unwrap();
        let rows = [
            Item { id: 1, name: None },
            Item {
                id: 2,
                name: Some("b".into()),
            },
        ];
        assert_eq!(write(&mut conn, &rows).unwrap(), 2);
        assert_eq!(write::<Item>(&mut conn, &[]).unwrap(), 0);
        assert_eq!(upsert(&mut conn, &rows[1..]).unwrap(), 1);
        assert_eq!(
            delete::<Item>(&mut conn, &[vec![Value::I64(1)]]).unwrap(),
            1
        );
    }
}
