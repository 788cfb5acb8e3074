//! Typed rows for generated workers: a model turns itself into the values of its
//! table's columns (the columns the parser fills, in table order), so generated code
//! never lines values up with columns by hand. What is written where is the
//! [`crate::change::Entity`]'s; the SQL itself is in [`crate::sql`].

use chrono::{DateTime, NaiveDate, NaiveTime, SecondsFormat, Utc};

use crate::sql::Value;

/// A row of one table.
pub trait Row: Clone {
    /// The row's values, one per column of its table that the parser fills, in the
    /// table's order, moved out of the row: what the parsers hand on once they need the
    /// row no more (its text is not copied).
    fn into_values(self) -> Vec<Value>;

    /// The same values from a row still needed (a parent, which its children read).
    fn values(&self) -> Vec<Value> {
        self.clone().into_values()
    }
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
        Value::Text(crate::calendar::date_text(value))
    }
}

impl From<NaiveTime> for Value {
    fn from(value: NaiveTime) -> Self {
        Value::Text(crate::calendar::time_text(value))
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

impl From<crate::json::Value<'_>> for Value {
    fn from(value: crate::json::Value<'_>) -> Self {
        Value::from(&value)
    }
}

/// JSON without a copy of the document: generated code converts `&self.field`.
impl From<&crate::json::Value<'_>> for Value {
    fn from(value: &crate::json::Value<'_>) -> Self {
        Value::Text(value.to_string())
    }
}

/// An array column: JSON text of the elements' values (numbers and booleans as JSON
/// numbers and booleans, everything else as strings in their text forms), which
/// PostgreSQL makes an array of the column's element type and SQLite keeps as it is.
impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(items: Vec<T>) -> Self {
        let items: Vec<serde_json::Value> = items
            .into_iter()
            .map(|item| match item.into() {
                Value::Null => serde_json::Value::Null,
                Value::Bool(b) => b.into(),
                Value::I16(n) => n.into(),
                Value::I32(n) => n.into(),
                Value::I64(n) => n.into(),
                Value::F32(n) => f64::from(n).into(),
                Value::F64(n) => n.into(),
                Value::Text(text) => text.into(),
            })
            .collect();
        Value::Text(serde_json::Value::Array(items).to_string())
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

    #[derive(Clone)]
    struct Item {
        id: i64,
        name: Option<String>,
    }

    impl Row for Item {
        fn into_values(self) -> Vec<Value> {
            vec![self.id.into(), self.name.into()]
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
            Value::from(&crate::json::json!({"a": [1]})),
            Value::Text("{\"a\":[1]}".into())
        );
        assert_eq!(
            Value::from(vec![date, date]),
            Value::Text("[\"1996-01-02\",\"1996-01-02\"]".into())
        );
        assert_eq!(Value::from(vec![1_i64, -2]), Value::Text("[1,-2]".into()));
        assert_eq!(
            Value::from(Some(vec!["a\"b".to_owned()])),
            Value::Text("[\"a\\\"b\"]".into())
        );
        assert_eq!(Value::from(Vec::<bool>::new()), Value::Text("[]".into()));
    }
}
