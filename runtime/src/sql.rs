//! Writing entity rows: the one implementation of nomnom's INSERT, UPSERT and DELETE SQL,
//! for PostgreSQL and SQLite, used by every generated worker. Generated code describes
//! its tables ([`Table`]) and turns each row into [`Value`]s; the SQL lives here and is
//! tested here, on both databases.

use std::borrow::Cow;
use std::collections::HashMap;

use diesel::{
    connection::SimpleConnection,
    pg::{Pg, PgConnection},
    prelude::*,
    query_builder::{AstPass, BoxedSqlQuery, Query, QueryFragment, QueryId},
    sql_types::{BigInt, Bool, Double, Float, Integer, Nullable, SmallInt, Text},
    sqlite::Sqlite,
};

use crate::db::DatabaseKind;
/// Connections live in [`crate::db`]; re-exported here for generated code.
pub use crate::db::{
    AnyConnection, ConnectError, connect, is_transient, run_script, write_transaction,
};

/// Column types, as the spec names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Bool,
    I16,
    I32,
    I64,
    F32,
    F64,
    Text,
    /// Exact decimal, carried as its canonical text.
    Decimal,
    /// `YYYY-MM-DD`.
    Date,
    /// `HH:MM:SS[.ffffff]`.
    Time,
    /// RFC 3339.
    Timestamptz,
    Uuid,
    Json,
    /// An array, carried as JSON text (`["a","b"]`): in PostgreSQL an array of
    /// `element` (a PostgreSQL type name such as `text` or `bigint`), in SQLite the JSON
    /// text itself.
    Array {
        element: &'static str,
    },
}

impl ColumnType {
    /// PostgreSQL cast for a text-carried value, if the type needs one.
    fn postgres_cast(self) -> &'static str {
        match self {
            Self::Decimal => "::numeric",
            Self::Date => "::date",
            Self::Time => "::time",
            Self::Timestamptz => "::timestamptz",
            Self::Uuid => "::uuid",
            Self::Json => "::jsonb",
            _ => "",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub column_type: ColumnType,
}

impl Column {
    /// A column, for tables written out in `const` items (the status table, tests).
    pub const fn new(name: &'static str, column_type: ColumnType) -> Self {
        Self { name, column_type }
    }
}

/// How rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    Insert,
    /// Insert, or update every non-key column of the row with the same key.
    Upsert,
    /// Insert, or skip a row whose key exists.
    IgnoreDuplicates,
}

/// A table as generated code describes it.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
    /// Conflict key for upserts, ignores and deletes (column names).
    pub key: &'static [&'static str],
    pub write: WriteMode,
}

/// One value of one column.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    /// Text, and the text form of decimal, date, time, timestamptz, uuid and json.
    Text(String),
}

/// A value as error messages show it: numbers and booleans as they are, text quoted as a
/// JSON string, `null`.
impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::I16(n) => write!(f, "{n}"),
            Value::I32(n) => write!(f, "{n}"),
            Value::I64(n) => write!(f, "{n}"),
            Value::F32(n) => write!(f, "{n}"),
            Value::F64(n) => write!(f, "{n}"),
            Value::Text(text) => write!(f, "{}", serde_json::Value::from(text.as_str())),
        }
    }
}

pub(crate) fn quote(identifier: &str) -> String {
    // Identifiers are validated by the generator ([a-z_][a-z0-9_]*); quoting makes SQL
    // keywords (order, user, …) usable as names.
    format!("\"{identifier}\"")
}

/// The `index`-th placeholder, with PostgreSQL's cast for text-carried types.
pub(crate) fn placeholder(kind: DatabaseKind, index: usize, column_type: ColumnType) -> String {
    match (kind, column_type) {
        (DatabaseKind::Postgres, ColumnType::Array { element }) => {
            postgres_array(&format!("${index}"), element)
        }
        (DatabaseKind::Postgres, _) => format!("${index}{}", column_type.postgres_cast()),
        (DatabaseKind::Sqlite, _) => kind.placeholder(index),
    }
}

/// PostgreSQL's array of `element` from the JSON array text (or jsonb) `expression`,
/// in order; NULL stays NULL.
fn postgres_array(expression: &str, element: &str) -> String {
    format!(
        "(CASE WHEN {expression}::jsonb IS NULL THEN NULL ELSE ARRAY(SELECT e::{element} \
         FROM jsonb_array_elements_text({expression}::jsonb) WITH ORDINALITY AS a(e, o) \
         ORDER BY o) END)"
    )
}

/// `rows` parenthesised lists of placeholders, one per column type: `($1, $2), ($3, $4)`.
pub(crate) fn value_lists(kind: DatabaseKind, column_types: &[ColumnType], rows: usize) -> String {
    let mut index = 0;
    let lists: Vec<String> = (0..rows)
        .map(|_| {
            let values: Vec<String> = column_types
                .iter()
                .map(|column_type| {
                    index += 1;
                    placeholder(kind, index, *column_type)
                })
                .collect();
            format!("({})", values.join(", "))
        })
        .collect();
    lists.join(", ")
}

/// The INSERT statement for `rows` rows.
fn insert_sql(kind: DatabaseKind, table: &Table, rows: usize) -> String {
    let columns: Vec<String> = table.columns.iter().map(|c| quote(c.name)).collect();
    let mut sql = format!(
        "INSERT INTO {} ({}) VALUES ",
        quote(table.name),
        columns.join(", ")
    );
    let types: Vec<ColumnType> = table.columns.iter().map(|c| c.column_type).collect();
    sql.push_str(&value_lists(kind, &types, rows));
    sql.push_str(&conflict_clause(table));
    sql
}

/// What an INSERT does about an existing key, per the table's write mode.
fn conflict_clause(table: &Table) -> String {
    let key: Vec<String> = table.key.iter().map(|k| quote(k)).collect();
    match table.write {
        WriteMode::Insert => String::new(),
        WriteMode::IgnoreDuplicates => format!(" ON CONFLICT ({}) DO NOTHING", key.join(", ")),
        WriteMode::Upsert => {
            let updates: Vec<String> = table
                .columns
                .iter()
                .filter(|c| !table.key.contains(&c.name))
                .map(|c| format!("{0} = excluded.{0}", quote(c.name)))
                .collect();
            if updates.is_empty() {
                format!(" ON CONFLICT ({}) DO NOTHING", key.join(", "))
            } else {
                format!(
                    " ON CONFLICT ({}) DO UPDATE SET {}",
                    key.join(", "),
                    updates.join(", ")
                )
            }
        }
    }
}

/// Rows from which PostgreSQL writes go through COPY: below it, one multi-row statement
/// beats the four statements COPY takes. Measured: see docs/benchmarks.md.
pub const COPY_MIN_ROWS: usize = 64;

/// The staging table COPY fills; a temporary table, private to the connection.
const STAGE_TABLE: &str = "nomnom_stage";

diesel::table! {
    /// Stands for the staging table in diesel's COPY API, which wants a table type; the
    /// real column list comes from [`StageTarget`].
    nomnom_stage (id) {
        id -> Integer,
    }
}

/// The target of the COPY: the staging table, all its columns.
struct StageTarget;

impl diesel::pg::CopyTarget for StageTarget {
    type Table = nomnom_stage::table;
    type SqlType = Integer;

    fn walk_target(mut pass: AstPass<'_, '_, Pg>) -> QueryResult<()> {
        pass.push_identifier(STAGE_TABLE)
    }
}

/// Appends one row in COPY's text format: tab-separated, `\N` for NULL, backslash
/// escapes for backslash, tab, newline and carriage return.
pub fn copy_text_row(out: &mut Vec<u8>, row: &[Value]) {
    use std::io::Write as _;
    for (i, value) in row.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        // Writing into a Vec cannot fail.
        let _ = match value {
            Value::Null => out.write_all(b"\\N"),
            Value::Bool(b) => out.write_all(if *b { b"t" } else { b"f" }),
            Value::I16(n) => write!(out, "{n}"),
            Value::I32(n) => write!(out, "{n}"),
            Value::I64(n) => write!(out, "{n}"),
            Value::F32(n) => write!(out, "{n}"),
            Value::F64(n) => write!(out, "{n}"),
            Value::Text(text) => {
                for byte in text.bytes() {
                    match byte {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        other => out.push(other),
                    }
                }
                Ok(())
            }
        };
    }
    out.push(b'\n');
}

thread_local! {
    /// The target of the straight COPY running on this thread (`"table" ("a", "b")`):
    /// diesel's [`CopyTarget`](diesel::pg::CopyTarget) names its target in a function
    /// without `self`, so the name a call chooses at run time is handed over here.
    static STRAIGHT_TARGET: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The target of a straight COPY: the table and columns in [`STRAIGHT_TARGET`].
struct StraightTarget;

impl diesel::pg::CopyTarget for StraightTarget {
    type Table = nomnom_stage::table;
    type SqlType = Integer;

    fn walk_target(mut pass: AstPass<'_, '_, Pg>) -> QueryResult<()> {
        STRAIGHT_TARGET.with_borrow(|target| pass.push_sql(target));
        Ok(())
    }
}

/// COPY of `rows` straight into `table`: no staging table, no second pass, no conflict
/// clause. In COPY's binary format, which spares PostgreSQL parsing numbers, decimals,
/// dates and times from text (measured: docs/benchmarks.md); in text if a value is not
/// what its column's binary form can carry (a text that is not the decimal, date or time
/// its column says), so that the database judges it as it would on any other path.
fn copy_straight(pg: &mut PgConnection, table: &Table, rows: &[&Vec<Value>]) -> QueryResult<usize> {
    let columns: Vec<String> = table.columns.iter().map(|c| quote(c.name)).collect();
    let target = format!("{} ({})", quote(table.name), columns.join(", "));
    let mut data = Vec::with_capacity(rows.len() * 24 * table.columns.len().max(1) + 32);
    data.extend_from_slice(COPY_BINARY_HEADER);
    let mut format = diesel::pg::CopyFormat::Binary;
    for row in rows {
        if let Err(why) = copy_binary_row(&mut data, table.columns, row) {
            tracing::debug!(table = table.name, %why, "copied as text");
            format = diesel::pg::CopyFormat::Text;
            break;
        }
    }
    match format {
        diesel::pg::CopyFormat::Binary => data.extend_from_slice(&(-1_i16).to_be_bytes()),
        _ => {
            data.clear();
            for row in rows {
                copy_text_row(&mut data, row);
            }
        }
    }
    STRAIGHT_TARGET.set(target);
    let copied = diesel::copy_from(nomnom_stage::table)
        .from_raw_data(StraightTarget, |sink| {
            sink.write_all(&data)
                .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))
        })
        .with_format(format)
        .execute(pg);
    STRAIGHT_TARGET.set(String::new());
    copied
}

/// The signature, flags and header extension length that open COPY's binary format.
const COPY_BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Microseconds and days from 1970 to 2000-01-01, PostgreSQL's epoch.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const PG_EPOCH_DAYS: i32 = 10_957;

/// Appends one row in COPY's binary format: the field count, then each field's length
/// (-1 for NULL) and its value as PostgreSQL's `*_send` functions write it, typed by
/// its column. Arrays are not carried (they go through the staging table).
pub fn copy_binary_row(out: &mut Vec<u8>, columns: &[Column], row: &[Value]) -> Result<(), String> {
    let count = i16::try_from(row.len()).map_err(|_| "too many columns".to_owned())?;
    out.extend_from_slice(&count.to_be_bytes());
    for (column, value) in columns.iter().zip(row) {
        let field = |out: &mut Vec<u8>, bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
            out.extend_from_slice(bytes);
        };
        let bad = || {
            format!(
                "{value} is not a {:?} for column {}",
                column.column_type, column.name
            )
        };
        match (column.column_type, value) {
            (_, Value::Null) => out.extend_from_slice(&(-1_i32).to_be_bytes()),
            (ColumnType::Bool, Value::Bool(b)) => field(out, &[u8::from(*b)]),
            (ColumnType::I16, Value::I16(n)) => field(out, &n.to_be_bytes()),
            (ColumnType::I32, Value::I32(n)) => field(out, &n.to_be_bytes()),
            (ColumnType::I64, Value::I64(n)) => field(out, &n.to_be_bytes()),
            (ColumnType::F32, Value::F32(n)) => field(out, &n.to_be_bytes()),
            (ColumnType::F64, Value::F64(n)) => field(out, &n.to_be_bytes()),
            (ColumnType::Text, Value::Text(text)) => field(out, text.as_bytes()),
            (ColumnType::Json, Value::Text(text)) => {
                // jsonb: a version byte, then the text.
                out.extend_from_slice(&(text.len() as i32 + 1).to_be_bytes());
                out.push(1);
                out.extend_from_slice(text.as_bytes());
            }
            (ColumnType::Decimal, Value::Text(text)) => {
                let at = out.len();
                out.extend_from_slice(&[0; 4]);
                if !put_numeric(out, text) {
                    out.truncate(at);
                    return Err(bad());
                }
                let length = (out.len() - at - 4) as i32;
                out[at..at + 4].copy_from_slice(&length.to_be_bytes());
            }
            (ColumnType::Date, Value::Text(text)) => {
                let date = crate::calendar::date(text).ok_or_else(bad)?;
                let days = date.to_epoch_days() - PG_EPOCH_DAYS;
                field(out, &days.to_be_bytes())
            }
            (ColumnType::Time, Value::Text(text)) => {
                use chrono::Timelike as _;
                let time = crate::calendar::time(text).ok_or_else(bad)?;
                let micros = i64::from(time.num_seconds_from_midnight()) * 1_000_000
                    + i64::from(time.nanosecond() / 1_000);
                field(out, &micros.to_be_bytes())
            }
            (ColumnType::Timestamptz, Value::Text(text)) => {
                let at = chrono::DateTime::parse_from_rfc3339(text).map_err(|_| bad())?;
                if at.timestamp_subsec_nanos() % 1_000 != 0 {
                    // PostgreSQL rounds nanoseconds from text; leave that to it.
                    return Err(bad());
                }
                field(
                    out,
                    &(at.timestamp_micros() - PG_EPOCH_MICROS).to_be_bytes(),
                )
            }
            (ColumnType::Uuid, Value::Text(text)) => field(
                out,
                uuid::Uuid::parse_str(text).map_err(|_| bad())?.as_bytes(),
            ),
            _ => return Err(bad()),
        }
    }
    Ok(())
}

/// Appends a decimal's text (`-123.4500`, as the parsers write it: no exponent) as
/// PostgreSQL's binary `numeric`: digit count, weight, sign and display scale, then
/// base-10000 digits. False, with nothing appended, for any other text. Written straight
/// into the COPY buffer, with no vectors of digits on the way: a TPC-H message has
/// seventeen decimals.
fn put_numeric(out: &mut Vec<u8>, text: &str) -> bool {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !all_digits(whole) || !all_digits(fraction) {
        return false;
    }
    let Ok(scale) = i16::try_from(fraction.len()) else {
        return false;
    };
    let whole = whole.trim_start_matches('0').as_bytes();
    let fraction = fraction.as_bytes();
    // Groups of four digits around the point: the whole part padded on the left, the
    // fraction on the right.
    let lead = (4 - whole.len() % 4) % 4;
    let tail = (4 - fraction.len() % 4) % 4;
    let count = (lead + whole.len() + fraction.len() + tail) / 4;
    let digit = |at: usize| -> i16 {
        let Some(at) = at.checked_sub(lead) else {
            return 0;
        };
        match whole.get(at) {
            Some(d) => i16::from(d - b'0'),
            None => fraction
                .get(at - whole.len())
                .map_or(0, |d| i16::from(d - b'0')),
        }
    };
    let group = |g: usize| (0..4).fold(0_i16, |n, k| n * 10 + digit(4 * g + k));
    // Zero groups at either end are left out; the weight counts the groups before the
    // point, less those left out at the start.
    let first = (0..count).find(|g| group(*g) != 0);
    let last = first.and_then(|first| (first..count).rev().find(|g| group(*g) != 0));
    let (Ok(whole_groups), Ok(digits)) = (
        i16::try_from((lead + whole.len()) / 4),
        i16::try_from(last.map_or(0, |last| last + 1) - first.unwrap_or(0)),
    ) else {
        return false;
    };
    let weight = match first {
        Some(first) => match i16::try_from(first) {
            Ok(first) => whole_groups - 1 - first,
            Err(_) => return false,
        },
        None => 0,
    };
    let sign: u16 = if negative && digits > 0 { 0x4000 } else { 0 };
    out.extend_from_slice(&digits.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&scale.to_be_bytes());
    if let (Some(first), Some(last)) = (first, last) {
        for g in first..=last {
            out.extend_from_slice(&group(g).to_be_bytes());
        }
    }
    true
}

/// PostgreSQL bulk path: COPY the rows into a temporary staging table shaped like the
/// target's columns, then one `INSERT … SELECT` with the write mode's conflict clause.
/// Same result as the multi-row statements, at several times the speed (the server
/// parses no VALUES list and COPY's input path is its fastest).
fn copy_write(pg: &mut PgConnection, table: &Table, rows: &[&Vec<Value>]) -> QueryResult<usize> {
    let columns: Vec<String> = table.columns.iter().map(|c| quote(c.name)).collect();
    let columns = columns.join(", ");
    // Arrays travel as JSON text: staged as jsonb, made arrays by the INSERT.
    let (staged, selected): (Vec<String>, Vec<String>) = (table.columns.iter())
        .map(|c| match c.column_type {
            ColumnType::Array { element } => (
                format!("to_jsonb({0}) AS {0}", quote(c.name)),
                postgres_array(&quote(c.name), element),
            ),
            _ => (quote(c.name), quote(c.name)),
        })
        .unzip();
    pg.batch_execute(&format!(
        "DROP TABLE IF EXISTS {STAGE_TABLE}; \
         CREATE TEMPORARY TABLE {STAGE_TABLE} AS SELECT {} FROM {} WITH NO DATA",
        staged.join(", "),
        quote(table.name)
    ))?;
    let mut data = Vec::with_capacity(rows.len() * 32 * table.columns.len().max(1));
    for row in rows {
        copy_text_row(&mut data, row);
    }
    diesel::copy_from(nomnom_stage::table)
        .from_raw_data(StageTarget, |sink| {
            sink.write_all(&data)
                .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))
        })
        .with_format(diesel::pg::CopyFormat::Text)
        .execute(pg)?;
    let affected = diesel::sql_query(format!(
        "INSERT INTO {} ({columns}) SELECT {} FROM {STAGE_TABLE}{}",
        quote(table.name),
        selected.join(", "),
        conflict_clause(table)
    ))
    .execute(pg)?;
    pg.batch_execute(&format!("DROP TABLE {STAGE_TABLE}"))?;
    Ok(affected)
}

/// The DELETE statement for `rows` keys.
fn delete_sql(kind: DatabaseKind, table: &Table, rows: usize) -> String {
    let key_types = key_types(table);
    let key: Vec<String> = table.key.iter().map(|k| quote(k)).collect();
    let mut sql = format!(
        "DELETE FROM {} WHERE ({}) IN (",
        quote(table.name),
        key.join(", ")
    );
    sql.push_str(&value_lists(kind, &key_types, rows));
    sql.push(')');
    sql
}

/// Whether a statement is kept prepared on its connection (SQLite).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prepare {
    /// Prepared for this run only: statements whose text varies with their number of
    /// rows, which would fill the cache with one entry per row count. Every statement
    /// on PostgreSQL, where the server prepares them.
    EachTime,
    /// SQLite: prepared on first use and kept in diesel's statement cache (keyed by the
    /// text), for statements of a few sizes only ([`in_chunks`]).
    Once,
}

/// A statement's text, and where its `?` placeholders (SQLite's) are: found once, since
/// diesel walks a statement several times each time it runs it. nomnom's SQL has no `?`
/// but its placeholders (identifiers are validated, literals are its own).
pub(crate) struct Sql {
    text: String,
    holes: Vec<usize>,
}

impl Sql {
    pub(crate) fn new(text: String) -> Self {
        let holes = (text.bytes().enumerate())
            .filter(|(_, b)| *b == b'?')
            .map(|(i, _)| i)
            .collect();
        Self { text, holes }
    }
}

/// A SQLite statement and its typed binds, which diesel may keep prepared (diesel's own
/// `sql_query` never is). Each value is bound, as the SQL type of its column type (NULL
/// of that type for [`Value::Null`]), at the placeholders of the text in turn; text is
/// borrowed.
struct SqliteStatement<'a> {
    sql: &'a Sql,
    binds: &'a [(ColumnType, &'a Value)],
    prepare: Prepare,
}

impl QueryFragment<Sqlite> for SqliteStatement<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        if self.prepare == Prepare::EachTime {
            out.unsafe_to_cache_prepared();
        }
        if self.sql.holes.len() != self.binds.len() {
            return Err(placeholders_mismatch(self));
        }
        // diesel writes each bind's `?` itself: the text goes in between.
        let text = &self.sql.text;
        let mut start = 0;
        for (hole, (column_type, value)) in self.sql.holes.iter().zip(self.binds) {
            out.push_sql(&text[start..*hole]);
            start = hole + 1;
            match (column_type, *value) {
                (ColumnType::Bool, Value::Bool(v)) => out.push_bind_param::<Bool, _>(v)?,
                (ColumnType::Bool, _) => out.push_bind_param::<Nullable<Bool>, _>(&None::<bool>)?,
                (ColumnType::I16, Value::I16(v)) => out.push_bind_param::<SmallInt, _>(v)?,
                (ColumnType::I16, _) => {
                    out.push_bind_param::<Nullable<SmallInt>, _>(&None::<i16>)?;
                }
                (ColumnType::I32, Value::I32(v)) => out.push_bind_param::<Integer, _>(v)?,
                (ColumnType::I32, _) => {
                    out.push_bind_param::<Nullable<Integer>, _>(&None::<i32>)?;
                }
                (ColumnType::I64, Value::I64(v)) => out.push_bind_param::<BigInt, _>(v)?,
                (ColumnType::I64, _) => out.push_bind_param::<Nullable<BigInt>, _>(&None::<i64>)?,
                (ColumnType::F32, Value::F32(v)) => out.push_bind_param::<Float, _>(v)?,
                (ColumnType::F32, _) => out.push_bind_param::<Nullable<Float>, _>(&None::<f32>)?,
                (ColumnType::F64, Value::F64(v)) => out.push_bind_param::<Double, _>(v)?,
                (ColumnType::F64, _) => out.push_bind_param::<Nullable<Double>, _>(&None::<f64>)?,
                (_, Value::Text(v)) => out.push_bind_param::<Text, _>(v)?,
                (_, _) => out.push_bind_param::<Nullable<Text>, _>(&None::<String>)?,
            }
        }
        out.push_sql(&text[start..]);
        Ok(())
    }
}

fn placeholders_mismatch(statement: &SqliteStatement<'_>) -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(
        format!(
            "{} binds for the {} placeholders of {:?}",
            statement.binds.len(),
            statement.sql.holes.len(),
            statement.sql.text
        )
        .into(),
    )
}

impl QueryId for SqliteStatement<'_> {
    type QueryId = ();
    // No type of its own: diesel's cache keys it by its text and bind types.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for SqliteStatement<'_> {
    type SqlType = diesel::sql_types::Untyped;
}

impl<Conn> RunQueryDsl<Conn> for SqliteStatement<'_> {}

/// A PostgreSQL statement with typed binds (its placeholders written in the text).
fn postgres_statement<'a>(
    sql: &str,
    binds: &[(ColumnType, &Value)],
) -> BoxedSqlQuery<'a, Pg, diesel::query_builder::SqlQuery> {
    let mut query = diesel::sql_query(sql).into_boxed();
    for (column_type, value) in binds {
        query = match (column_type, *value) {
            (ColumnType::Bool, Value::Bool(v)) => query.bind::<Bool, _>(*v),
            (ColumnType::Bool, _) => query.bind::<Nullable<Bool>, _>(None::<bool>),
            (ColumnType::I16, Value::I16(v)) => query.bind::<SmallInt, _>(*v),
            (ColumnType::I16, _) => query.bind::<Nullable<SmallInt>, _>(None::<i16>),
            (ColumnType::I32, Value::I32(v)) => query.bind::<Integer, _>(*v),
            (ColumnType::I32, _) => query.bind::<Nullable<Integer>, _>(None::<i32>),
            (ColumnType::I64, Value::I64(v)) => query.bind::<BigInt, _>(*v),
            (ColumnType::I64, _) => query.bind::<Nullable<BigInt>, _>(None::<i64>),
            (ColumnType::F32, Value::F32(v)) => query.bind::<Float, _>(*v),
            (ColumnType::F32, _) => query.bind::<Nullable<Float>, _>(None::<f32>),
            (ColumnType::F64, Value::F64(v)) => query.bind::<Double, _>(*v),
            (ColumnType::F64, _) => query.bind::<Nullable<Double>, _>(None::<f64>),
            (_, Value::Text(v)) => query.bind::<Text, _>(v.clone()),
            (_, _) => query.bind::<Nullable<Text>, _>(None::<String>),
        };
    }
    query
}

/// Runs one statement with typed binds, on either backend.
pub(crate) fn execute(
    conn: &mut AnyConnection,
    sql_for: impl Fn(DatabaseKind) -> String,
    binds: &[(ColumnType, &Value)],
) -> QueryResult<usize> {
    let sql = Sql::new(sql_for(conn.kind()));
    execute_as(conn, &sql, binds, Prepare::EachTime)
}

/// Runs one statement with typed binds, prepared as `prepare` says.
pub(crate) fn execute_as(
    conn: &mut AnyConnection,
    sql: &Sql,
    binds: &[(ColumnType, &Value)],
    prepare: Prepare,
) -> QueryResult<usize> {
    match conn {
        AnyConnection::Postgresql(pg) => postgres_statement(&sql.text, binds).execute(pg),
        AnyConnection::Sqlite(lite) => SqliteStatement {
            sql,
            binds,
            prepare,
        }
        .execute(lite),
    }
}

/// Runs a query with typed binds and loads its rows, on either backend.
pub(crate) fn load<T>(
    conn: &mut AnyConnection,
    sql_for: impl Fn(DatabaseKind) -> String,
    binds: &[(ColumnType, &Value)],
) -> QueryResult<Vec<T>>
where
    T: QueryableByName<Pg> + QueryableByName<Sqlite> + 'static,
{
    let sql = Sql::new(sql_for(conn.kind()));
    load_as(conn, &sql, binds, Prepare::EachTime)
}

/// Runs a query with typed binds, prepared as `prepare` says, and loads its rows.
pub(crate) fn load_as<T>(
    conn: &mut AnyConnection,
    sql: &Sql,
    binds: &[(ColumnType, &Value)],
    prepare: Prepare,
) -> QueryResult<Vec<T>>
where
    T: QueryableByName<Pg> + QueryableByName<Sqlite> + 'static,
{
    match conn {
        AnyConnection::Postgresql(pg) => postgres_statement(&sql.text, binds).load::<T>(pg),
        AnyConnection::Sqlite(lite) => SqliteStatement {
            sql,
            binds,
            prepare,
        }
        .load::<T>(lite),
    }
}

/// Most items in one SQLite statement (a power of two, see [`in_chunks`]).
const SQLITE_ITEMS_PER_STATEMENT: usize = 16;

/// Makes `binds` the binds of `rows` (one statement's chunk): each row's values, typed by
/// `types` in turn.
pub(crate) fn bind_rows<'v, R: AsRef<[Value]>>(
    binds: &mut Vec<(ColumnType, &'v Value)>,
    types: &[ColumnType],
    rows: &'v [R],
) {
    binds.clear();
    for row in rows {
        binds.extend(types.iter().copied().zip(row.as_ref()));
    }
}

/// Runs statements over `items`, `width` binds per item, with as many items per
/// statement as the database does best. On PostgreSQL, as many as its bind limit allows:
/// one round trip for them all, the server prepares each. On SQLite, which runs in the
/// worker's process, compiling a statement cost more than running it (for many rows, more
/// than the rows did), so statements hold up to [`SQLITE_ITEMS_PER_STATEMENT`] items, in
/// chunks of powers of two (16, 16, …, then 4 and 1 for 21 items, say): few distinct
/// texts, each prepared once per connection and kept (docs/benchmarks.md, sixth lever).
/// `sql_for(kind, n)` is the text for `n` items; `run(text, offset, chunk, prepare)` runs
/// one chunk, the first at `offset` in `items`.
pub(crate) fn in_chunks<'a, I>(
    kind: DatabaseKind,
    items: &'a [I],
    width: usize,
    sql_for: impl Fn(DatabaseKind, usize) -> String,
    mut run: impl FnMut(&Sql, usize, &'a [I], Prepare) -> QueryResult<()>,
) -> QueryResult<()> {
    let fit = (kind.max_binds() / width.max(1)).max(1);
    let (most, prepare) = match kind {
        DatabaseKind::Postgres => (fit, Prepare::EachTime),
        DatabaseKind::Sqlite => (SQLITE_ITEMS_PER_STATEMENT.min(fit), Prepare::Once),
    };
    let mut text: Option<(usize, Sql)> = None;
    let mut offset = 0;
    while offset < items.len() {
        let left = items.len() - offset;
        let rows = match prepare {
            Prepare::EachTime => most.min(left),
            // The largest power of two that fits.
            Prepare::Once => 1 << most.min(left).ilog2(),
        };
        if text.as_ref().is_none_or(|(n, _)| *n != rows) {
            text = Some((rows, Sql::new(sql_for(kind, rows))));
        }
        let (_, sql) = text.as_ref().expect("built above");
        run(sql, offset, &items[offset..offset + rows], prepare)?;
        offset += rows;
    }
    Ok(())
}

/// Indexes of the key columns of `table`.
pub(crate) fn key_positions(table: &Table) -> Vec<usize> {
    table
        .key
        .iter()
        .filter_map(|k| table.columns.iter().position(|c| c.name == *k))
        .collect()
}

/// The type of each key column of `table`, in key order.
pub(crate) fn key_types(table: &Table) -> Vec<ColumnType> {
    key_positions(table)
        .iter()
        .map(|p| table.columns[*p].column_type)
        .collect()
}

/// One value of a key, as a hash map key: equal exactly when the values are (floats by
/// their bits, so `-0.0` is not `0.0`). How rows and records of one key are told apart
/// in memory (a batch's writes, a message's children and records); what outlives the
/// process (locks, tombstones) uses `apply::store::key_text`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum KeyPart<'a> {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
    Text(Cow<'a, str>),
}

impl KeyPart<'_> {
    /// The key part of `value`, borrowing its text.
    pub(crate) fn of(value: &Value) -> KeyPart<'_> {
        match value {
            Value::Null => KeyPart::Null,
            Value::Bool(b) => KeyPart::Bool(*b),
            Value::I16(n) => KeyPart::I16(*n),
            Value::I32(n) => KeyPart::I32(*n),
            Value::I64(n) => KeyPart::I64(*n),
            Value::F32(n) => KeyPart::F32(n.to_bits()),
            Value::F64(n) => KeyPart::F64(n.to_bits()),
            Value::Text(text) => KeyPart::Text(Cow::Borrowed(text)),
        }
    }

    /// The same part, owning its text (a key kept while its row moves).
    pub(crate) fn into_owned(self) -> KeyPart<'static> {
        match self {
            KeyPart::Null => KeyPart::Null,
            KeyPart::Bool(b) => KeyPart::Bool(b),
            KeyPart::I16(n) => KeyPart::I16(n),
            KeyPart::I32(n) => KeyPart::I32(n),
            KeyPart::I64(n) => KeyPart::I64(n),
            KeyPart::F32(n) => KeyPart::F32(n),
            KeyPart::F64(n) => KeyPart::F64(n),
            KeyPart::Text(text) => KeyPart::Text(Cow::Owned(text.into_owned())),
        }
    }
}

/// Rows with distinct keys: for upserts the last row of each key wins, for ignores the
/// first (a statement may not touch the same row twice).
fn dedupe<'a>(table: &Table, rows: &'a [Vec<Value>]) -> Vec<&'a Vec<Value>> {
    if table.write == WriteMode::Insert || table.key.is_empty() {
        return rows.iter().collect();
    }
    let positions = key_positions(table);
    let mut chosen: HashMap<Vec<KeyPart<'_>>, usize> = HashMap::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        let key: Vec<KeyPart<'_>> = positions.iter().map(|p| KeyPart::of(&row[*p])).collect();
        match chosen.get_mut(&key) {
            Some(slot) if table.write == WriteMode::Upsert => *slot = index,
            Some(_) => {}
            None => {
                chosen.insert(key, index);
            }
        }
    }
    let mut keep: Vec<usize> = chosen.into_values().collect();
    keep.sort_unstable();
    keep.into_iter().map(|i| &rows[i]).collect()
}

/// Writes rows in the table's write mode, in as few statements as the bind-parameter
/// limit allows. Runs inside the caller's transaction. Returns rows affected.
pub fn write_rows(
    conn: &mut AnyConnection,
    table: &Table,
    rows: &[Vec<Value>],
) -> QueryResult<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    let rows = dedupe(table, rows);
    if rows.len() >= COPY_MIN_ROWS
        && let AnyConnection::Postgresql(pg) = conn
    {
        return copy_write(pg, table, &rows);
    }
    write_statements(conn, table, &rows)
}

/// Writes rows whose keys the caller knows are not in the table (it read them under the
/// keys' locks), on PostgreSQL: plain COPY straight into the table from
/// [`COPY_MIN_ROWS`] rows (tables without array columns), else statements without a
/// conflict clause. Duplicate keys among `rows` are collapsed as the table's write mode
/// says. A key that is there after all (a child keyed apart from its parent, a row
/// written by something else) makes PostgreSQL refuse the statement with a unique
/// violation: the caller then writes the rows again with [`write_rows`]. On SQLite this
/// is [`write_rows`].
pub fn write_absent_rows(
    conn: &mut AnyConnection,
    table: &Table,
    rows: &[Vec<Value>],
) -> QueryResult<usize> {
    let AnyConnection::Postgresql(pg) = conn else {
        return write_rows(conn, table, rows);
    };
    if rows.is_empty() {
        return Ok(0);
    }
    let rows = dedupe(table, rows);
    let arrays = (table.columns.iter()).any(|c| matches!(c.column_type, ColumnType::Array { .. }));
    if rows.len() >= COPY_MIN_ROWS && !arrays {
        return copy_straight(pg, table, &rows);
    }
    let insert = Table {
        write: WriteMode::Insert,
        ..*table
    };
    write_statements(conn, &insert, &rows)
}

/// Statements in the table's write mode, as [`in_chunks`] batches them.
fn write_statements(
    conn: &mut AnyConnection,
    table: &Table,
    rows: &[&Vec<Value>],
) -> QueryResult<usize> {
    let types: Vec<ColumnType> = table.columns.iter().map(|c| c.column_type).collect();
    execute_rows(conn, &types, rows, |kind, n| insert_sql(kind, table, n))
}

/// Deletes the rows whose key values are given (each inner vector in key order).
pub fn delete_rows(
    conn: &mut AnyConnection,
    table: &Table,
    keys: &[Vec<Value>],
) -> QueryResult<usize> {
    if keys.is_empty() || table.key.is_empty() {
        return Ok(0);
    }
    execute_rows(conn, &key_types(table), keys, |kind, n| {
        delete_sql(kind, table, n)
    })
}

/// Runs `sql_for(kind, n)` over `rows` (values typed by `types`), as [`in_chunks`]
/// batches them; returns the rows affected.
fn execute_rows<R: AsRef<[Value]>>(
    conn: &mut AnyConnection,
    types: &[ColumnType],
    rows: &[R],
    sql_for: impl Fn(DatabaseKind, usize) -> String,
) -> QueryResult<usize> {
    let mut affected = 0;
    let mut binds: Vec<(ColumnType, &Value)> = Vec::new();
    let kind = conn.kind();
    in_chunks(
        kind,
        rows,
        types.len(),
        sql_for,
        |sql, _, chunk, prepare| {
            bind_rows(&mut binds, types, chunk);
            affected += execute_as(conn, sql, &binds, prepare)?;
            Ok(())
        },
    )?;
    Ok(affected)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: &[Column] = &[
        Column {
            name: "id",
            column_type: ColumnType::I64,
        },
        Column {
            name: "price",
            column_type: ColumnType::Decimal,
        },
        Column {
            name: "order",
            column_type: ColumnType::Text,
        },
    ];

    fn numeric_binary(text: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        put_numeric(&mut out, text).then_some(out)
    }

    #[test]
    fn decimals_become_base_10000_digits() {
        // (digits, weight, sign, scale, groups)
        let parts = |text: &str| {
            let bytes = numeric_binary(text).unwrap();
            let words: Vec<i16> = bytes
                .chunks(2)
                .map(|w| i16::from_be_bytes([w[0], w[1]]))
                .collect();
            (
                words[0],
                words[1],
                words[2] as u16,
                words[3],
                words[4..].to_vec(),
            )
        };
        assert_eq!(parts("172799.49"), (3, 1, 0, 2, vec![17, 2799, 4900]));
        assert_eq!(parts("-0.50"), (1, -1, 0x4000, 2, vec![5000]));
        assert_eq!(parts("0.00001234"), (1, -2, 0, 8, vec![1234]));
        assert_eq!(parts("10000"), (1, 1, 0, 0, vec![1]));
        assert_eq!(parts("0"), (0, 0, 0, 0, vec![]));
        assert_eq!(parts("-0.00"), (0, 0, 0, 2, vec![]));
        assert_eq!(parts("12."), (1, 0, 0, 0, vec![12]));
        assert_eq!(parts("00012"), (1, 0, 0, 0, vec![12]));
        assert_eq!(
            parts("-123456789.000100"),
            (4, 2, 0x4000, 6, vec![1, 2345, 6789, 1])
        );
        assert_eq!(
            parts("1000000000000.5"),
            (5, 3, 0, 1, vec![1, 0, 0, 0, 5000])
        );
        for bad in ["", ".", "1e5", "1.2.3", "--1", "NaN", "1 "] {
            assert_eq!(numeric_binary(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn upsert_sql_quotes_names_and_casts_on_postgres() {
        let table = Table {
            name: "orders",
            columns: COLUMNS,
            key: &["id"],
            write: WriteMode::Upsert,
        };
        assert_eq!(
            insert_sql(DatabaseKind::Postgres, &table, 2),
            "INSERT INTO \"orders\" (\"id\", \"price\", \"order\") VALUES ($1, $2::numeric, $3), ($4, $5::numeric, $6) \
             ON CONFLICT (\"id\") DO UPDATE SET \"price\" = excluded.\"price\", \"order\" = excluded.\"order\""
        );
        assert_eq!(
            delete_sql(DatabaseKind::Sqlite, &table, 2),
            "DELETE FROM \"orders\" WHERE (\"id\") IN ((?), (?))"
        );
    }

    #[test]
    fn duplicate_keys_in_one_batch_keep_the_last_row_for_upserts() {
        let table = Table {
            name: "t",
            columns: COLUMNS,
            key: &["id"],
            write: WriteMode::Upsert,
        };
        let rows = vec![
            vec![
                Value::I64(1),
                Value::Text("1.00".into()),
                Value::Text("a".into()),
            ],
            vec![
                Value::I64(2),
                Value::Text("2.00".into()),
                Value::Text("b".into()),
            ],
            vec![
                Value::I64(1),
                Value::Text("9.00".into()),
                Value::Text("c".into()),
            ],
        ];
        let kept = dedupe(&table, &rows);
        assert_eq!(kept.len(), 2);
        assert_eq!(
            kept.iter().find(|r| r[0] == Value::I64(1)).unwrap()[2],
            Value::Text("c".into())
        );
        let ignore = Table {
            write: WriteMode::IgnoreDuplicates,
            ..table
        };
        let kept = dedupe(&ignore, &rows);
        assert_eq!(
            kept.iter().find(|r| r[0] == Value::I64(1)).unwrap()[2],
            Value::Text("a".into())
        );
    }

    #[test]
    fn sqlite_statements_bind_one_value_per_placeholder() {
        use diesel::sqlite::SqliteConnection;
        let mut conn = AnyConnection::Sqlite(SqliteConnection::establish(":memory:").unwrap());
        let (one, two) = (Value::I64(1), Value::Text("two".into()));
        let binds = [(ColumnType::I64, &one), (ColumnType::Text, &two)];
        #[derive(QueryableByName)]
        struct Pair {
            #[diesel(sql_type = Text)]
            pair: String,
        }
        let sql = Sql::new("SELECT ? || ',' || ? AS pair".to_owned());
        for prepare in [Prepare::EachTime, Prepare::Once, Prepare::Once] {
            let rows = load_as::<Pair>(&mut conn, &sql, &binds, prepare).unwrap();
            assert_eq!(rows[0].pair, "1,two");
        }
        for binds in [&binds[..1], &[binds[0], binds[1], binds[1]][..]] {
            let err = execute_as(&mut conn, &sql, binds, Prepare::Once).unwrap_err();
            assert!(
                err.to_string().contains("binds for the 2 placeholders"),
                "{err}"
            );
        }
    }
}
