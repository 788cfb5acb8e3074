//! What each field type of the spec becomes, in one table: the Rust type of the model
//! field, the runtime function that reads it from a message, the column types of
//! PostgreSQL, SQLite, Diesel and the runtime's SQL writer. Only the types with
//! parameters (`string` with `max_length`, `decimal`) add anything outside the table.

use crate::model::FieldType;

/// How a parser reads a value of one type (functions of `nomnom_runtime::parse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// A function of `(value, path)` with no rules of its own, such as `date`.
    Plain(&'static str),
    /// `integer` of the Rust type, or `integer_in` with the spec's `min` and `max` in it.
    Integer,
    /// `float` or `float32`, or the same with `_in` and the spec's `min` and `max`.
    Float(&'static str),
    /// `decimal(…, precision, scale)`, or `decimal_in` with the spec's `min` and `max`;
    /// `numeric` or `numeric_in` without precision and scale.
    Decimal,
    /// `text`, or `text_with` and the spec's string rules.
    Text,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct TypeInfo {
    /// The Rust type of a non-null value.
    pub rust: &'static str,
    /// Whether that Rust type is `Copy` (no `.clone()` to read it from a `&self`).
    pub copy: bool,
    pub reader: Reader,
    /// The variant of `nomnom_runtime::sql::ColumnType`.
    pub column_type: &'static str,
    /// PostgreSQL column type (the parameters of `VARCHAR` and `NUMERIC` are added).
    pub postgres: &'static str,
    pub sqlite: &'static str,
    /// Diesel SQL type in the generated `schema.rs`.
    pub diesel: &'static str,
}

const STRING: TypeInfo = TypeInfo {
    rust: "String",
    copy: false,
    reader: Reader::Text,
    column_type: "Text",
    postgres: "TEXT",
    sqlite: "TEXT",
    diesel: "Text",
};

const VARCHAR: TypeInfo = TypeInfo {
    postgres: "VARCHAR",
    diesel: "Varchar",
    ..STRING
};

const BOOL: TypeInfo = TypeInfo {
    rust: "bool",
    copy: true,
    reader: Reader::Plain("p::boolean"),
    column_type: "Bool",
    postgres: "BOOLEAN",
    sqlite: "BOOLEAN",
    diesel: "Bool",
};

const I16: TypeInfo = TypeInfo {
    rust: "i16",
    copy: true,
    reader: Reader::Integer,
    column_type: "I16",
    postgres: "SMALLINT",
    sqlite: "INTEGER",
    diesel: "Int2",
};

const I32: TypeInfo = TypeInfo {
    rust: "i32",
    column_type: "I32",
    postgres: "INTEGER",
    diesel: "Int4",
    ..I16
};

const I64: TypeInfo = TypeInfo {
    rust: "i64",
    column_type: "I64",
    postgres: "BIGINT",
    diesel: "Int8",
    ..I16
};

const F32: TypeInfo = TypeInfo {
    rust: "f32",
    copy: true,
    reader: Reader::Float("p::float32"),
    column_type: "F32",
    postgres: "REAL",
    sqlite: "REAL",
    diesel: "Float4",
};

const F64: TypeInfo = TypeInfo {
    rust: "f64",
    reader: Reader::Float("p::float"),
    column_type: "F64",
    postgres: "DOUBLE PRECISION",
    diesel: "Float8",
    ..F32
};

/// Canonical text with exactly `scale` digits after the point.
const DECIMAL: TypeInfo = TypeInfo {
    rust: "String",
    copy: false,
    reader: Reader::Decimal,
    column_type: "Decimal",
    postgres: "NUMERIC",
    sqlite: "TEXT",
    diesel: "Numeric",
};

/// Dates, times, timestamps, UUIDs and JSON are text in SQLite.
const DATE: TypeInfo = TypeInfo {
    rust: "chrono::NaiveDate",
    copy: true,
    reader: Reader::Plain("p::date"),
    column_type: "Date",
    postgres: "DATE",
    sqlite: "TEXT",
    diesel: "Date",
};

const TIME: TypeInfo = TypeInfo {
    rust: "chrono::NaiveTime",
    reader: Reader::Plain("p::time"),
    column_type: "Time",
    postgres: "TIME",
    diesel: "Time",
    ..DATE
};

const TIMESTAMPTZ: TypeInfo = TypeInfo {
    rust: "chrono::DateTime<chrono::Utc>",
    reader: Reader::Plain("p::timestamp"),
    column_type: "Timestamptz",
    postgres: "TIMESTAMPTZ",
    diesel: "Timestamptz",
    ..DATE
};

/// The text as sent; its bounds are timestamps of their own.
const PARTIAL: TypeInfo = TypeInfo {
    rust: "String",
    copy: false,
    reader: Reader::Plain("p::partial_timestamp"),
    column_type: "Text",
    postgres: "TEXT",
    sqlite: "TEXT",
    diesel: "Text",
};

const PARTIAL_START: TypeInfo = TypeInfo {
    reader: Reader::Plain("p::partial_timestamp_start"),
    ..TIMESTAMPTZ
};

const PARTIAL_END: TypeInfo = TypeInfo {
    reader: Reader::Plain("p::partial_timestamp_end"),
    ..TIMESTAMPTZ
};

const UUID: TypeInfo = TypeInfo {
    rust: "uuid::Uuid",
    reader: Reader::Plain("p::uuid"),
    column_type: "Uuid",
    postgres: "UUID",
    diesel: "Uuid",
    ..DATE
};

const JSON: TypeInfo = TypeInfo {
    rust: "nomnom_runtime::json::Value<'static>",
    copy: false,
    reader: Reader::Plain("p::json"),
    column_type: "Json",
    postgres: "JSONB",
    diesel: "Jsonb",
    ..DATE
};

impl FieldType {
    /// The type's row of the table.
    pub fn info(self) -> TypeInfo {
        match self {
            Self::String {
                max_length: Some(_),
            } => VARCHAR,
            Self::String { max_length: None } | Self::Text => STRING,
            Self::Bool => BOOL,
            Self::I16 => I16,
            Self::I32 => I32,
            Self::I64 => I64,
            Self::F32 => F32,
            Self::F64 => F64,
            Self::Decimal { .. } | Self::Numeric => DECIMAL,
            Self::Date => DATE,
            Self::Time => TIME,
            Self::Timestamptz => TIMESTAMPTZ,
            Self::PartialTimestamp => PARTIAL,
            Self::PartialStart => PARTIAL_START,
            Self::PartialEnd => PARTIAL_END,
            Self::Uuid => UUID,
            Self::Json => JSON,
        }
    }

    /// The PostgreSQL column type, with its parameters.
    pub fn postgres_type(self) -> String {
        match self {
            Self::String {
                max_length: Some(n),
            } => format!("VARCHAR({n})"),
            Self::Decimal { precision, scale } => format!("NUMERIC({precision}, {scale})"),
            other => other.info().postgres.to_owned(),
        }
    }

    /// The inclusive range of an integer type's values.
    pub fn integer_range(self) -> Option<(i128, i128)> {
        match self {
            Self::I16 => Some((i16::MIN.into(), i16::MAX.into())),
            Self::I32 => Some((i32::MIN.into(), i32::MAX.into())),
            Self::I64 => Some((i64::MIN.into(), i64::MAX.into())),
            _ => None,
        }
    }
}
