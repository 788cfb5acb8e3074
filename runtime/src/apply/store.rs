//! What the apply step reads and writes: key locks, row guards, tombstones, the patch
//! log, and the net effect of a folded batch.

use std::collections::HashMap;

use diesel::{
    QueryResult, QueryableByName, RunQueryDsl,
    sql_types::{BigInt, Bool, Nullable, Text},
};

use super::Keyed;
use super::fold::{Guard, KeyState, Logged, Reset};
use crate::change::{Entity, SEQUENCE_COLUMN, VERSION_COLUMN};
use crate::db::DatabaseKind;
use crate::sql::{
    self, AnyConnection, Column, ColumnType, Table, Value, WriteMode, key_types, quote,
};

/// The table of tombstones: keys whose last change was a delete, so an older create or
/// upsert arriving later (a redelivery, another replica) cannot bring the row back.
pub const TOMBSTONES: &str = "nomnom_tombstones";

/// The tombstone table (both databases). `deleted_at` is in seconds since 1970, for
/// pruning after the retention.
pub const TOMBSTONES_DDL: &str = "CREATE TABLE IF NOT EXISTS nomnom_tombstones (
    entity TEXT NOT NULL,
    key TEXT NOT NULL,
    seq BIGINT NOT NULL,
    version BIGINT,
    deleted_at BIGINT NOT NULL,
    PRIMARY KEY (entity, key)
)";

/// The text form of a key: a JSON array of its values. Stable across builds (tombstones
/// and lock ids outlive a worker version).
pub(super) fn key_text(key: &[Value]) -> String {
    let values: Vec<serde_json::Value> = key
        .iter()
        .map(|value| match value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::I16(n) => (*n).into(),
            Value::I32(n) => (*n).into(),
            Value::I64(n) => (*n).into(),
            Value::F32(n) => n.to_string().into(),
            Value::F64(n) => n.to_string().into(),
            Value::Text(text) => text.as_str().into(),
        })
        .collect();
    serde_json::Value::Array(values).to_string()
}

/// FNV-1a: a lock id that every build and every replica computes alike.
fn lock_id(table: &str, key_text: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in table.bytes().chain([0]).chain(key_text.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// Takes a transaction-scoped advisory lock per key (PostgreSQL), in ascending order so
/// two replicas locking overlapping keys cannot deadlock. Released at commit.
pub(super) fn lock_keys(
    conn: &mut AnyConnection,
    keyed: &[(&'static Entity, Vec<Keyed<'_>>)],
) -> QueryResult<()> {
    let AnyConnection::Postgresql(pg) = conn else {
        return Ok(());
    };
    let mut ids: Vec<i64> = keyed
        .iter()
        .flat_map(|(entity, items)| {
            items
                .iter()
                .map(|i| lock_id(entity.table.name, &i.key_text))
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(());
    }
    diesel::sql_query("SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k")
        .bind::<diesel::sql_types::Array<BigInt>, _>(ids)
        .execute(pg)?;
    Ok(())
}

#[derive(QueryableByName)]
struct GuardRow {
    #[diesel(sql_type = BigInt)]
    nomnom_i: i64,
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    version: Option<i64>,
}

#[derive(QueryableByName)]
struct TombstoneRow {
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    version: Option<i64>,
}

/// The patch log: patches newer than their key's latest create, upsert or delete, kept
/// so that an older create or upsert arriving later gets them on top (see `fold.rs`).
pub const PATCHES: &str = "nomnom_patches";

/// The patch log table (both databases). `patch` holds the patched columns (JSON, see
/// [`encode_patch`]); `applied` whether the row existed; `logged_at` seconds since 1970.
pub const PATCHES_DDL: &str = "CREATE TABLE IF NOT EXISTS nomnom_patches (
    entity TEXT NOT NULL,
    key TEXT NOT NULL,
    seq BIGINT NOT NULL,
    version BIGINT,
    message_id TEXT NOT NULL,
    patch TEXT NOT NULL,
    applied BOOLEAN NOT NULL,
    logged_at BIGINT NOT NULL,
    PRIMARY KEY (entity, key, seq)
)";

/// The incarnations of the stream the workers have consumed, by creation time (a stream
/// deleted and created again restarts its sequences at 1).
pub const STREAMS: &str = "nomnom_streams";

/// The incarnation table (both databases); `created` in microseconds since 1970.
pub const STREAMS_DDL: &str = "CREATE TABLE IF NOT EXISTS nomnom_streams (
    created BIGINT PRIMARY KEY NOT NULL,
    stream TEXT NOT NULL
)";

/// Sequences of one stream incarnation: the `n`-th incarnation (from 0) guards with
/// `n × SEQUENCES_PER_STREAM + stream sequence`, so a stream created again (the same
/// name, or another) orders after everything before it.
pub const SEQUENCES_PER_STREAM: i64 = 10_000_000_000_000;

/// The guard sequence of message 0 of the stream `stream` created at `created` (µs
/// since 1970): records the incarnation, then counts the older ones. Its own
/// transaction.
pub fn sequence_base(conn: &mut AnyConnection, stream: &str, created: i64) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let created = Value::I64(created);
    let stream = Value::Text(stream.to_owned());
    let older = crate::db::write_transaction(conn, |conn| {
        sql::execute(
            conn,
            |kind| {
                format!(
                    "INSERT INTO {STREAMS} (created, stream) VALUES ({}, {}) ON CONFLICT (created) DO NOTHING",
                    kind.placeholder(1),
                    kind.placeholder(2)
                )
            },
            &[(ColumnType::I64, &created), (ColumnType::Text, &stream)],
        )?;
        sql::load::<Count>(
            conn,
            |kind| {
                format!(
                    "SELECT count(*) AS n FROM {STREAMS} WHERE created < {}",
                    kind.placeholder(1)
                )
            },
            &[(ColumnType::I64, &created)],
        )
    })?;
    Ok(older.first().map_or(0, |c| c.n) * SEQUENCES_PER_STREAM)
}

/// Deletes tombstones and logged patches older than `retention`; returns how many.
pub fn prune(conn: &mut AnyConnection, retention: std::time::Duration) -> QueryResult<usize> {
    let retention = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    let before = Value::I64(chrono::Utc::now().timestamp().saturating_sub(retention));
    let mut pruned = 0;
    for (table, column) in [(TOMBSTONES, "deleted_at"), (PATCHES, "logged_at")] {
        pruned += sql::execute(
            conn,
            |kind| {
                format!(
                    "DELETE FROM {table} WHERE {column} < {}",
                    kind.placeholder(1)
                )
            },
            &[(ColumnType::I64, &before)],
        )?;
    }
    Ok(pruned)
}

/// What the database holds for each key: the guard of its row, else its tombstone; and
/// its logged patches.
pub(super) fn read<'a>(
    conn: &mut AnyConnection,
    entity: &Entity,
    keys: &[&Keyed<'_>],
) -> QueryResult<Vec<KeyState<'a>>> {
    let mut stored = read_rows(conn, entity, keys)?;
    if !entity.operation {
        // Only creates and upserts: no tombstones, no logged patches.
        return Ok(stored
            .into_iter()
            .map(|s| KeyState::new(s, Vec::new()))
            .collect());
    }
    let texts: Vec<&str> = keys.iter().map(|k| k.key_text.as_str()).collect();
    let slots: HashMap<&str, usize> = texts.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    for row in read_by_key::<TombstoneRow>(conn, entity, "seq, version", TOMBSTONES, &texts)? {
        if let Some(i) = slots.get(row.key.as_str())
            && stored[*i].is_none()
        {
            stored[*i] = Some(Reset {
                guard: (row.version, row.seq),
                live: false,
            });
        }
    }
    let mut logs: Vec<Vec<Logged>> = vec![Vec::new(); keys.len()];
    let columns = "seq, version, message_id, patch, applied";
    for row in read_by_key::<PatchRow>(conn, entity, columns, PATCHES, &texts)? {
        if let Some(i) = slots.get(row.key.as_str()) {
            logs[*i].push(Logged {
                guard: (row.version, row.seq),
                message_id: uuid::Uuid::parse_str(&row.message_id)
                    .map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))?,
                values: decode_patch(&entity.table, &row.patch)?,
                applied: row.applied,
                new: false,
                stored_applied: Some(row.applied),
            });
        }
    }
    Ok(stored
        .into_iter()
        .zip(logs)
        .map(|(stored, mut log)| {
            log.sort_by_key(|p| p.guard);
            KeyState::new(stored, log)
        })
        .collect())
}

/// The guard of each key's row, where it has one.
fn read_rows(
    conn: &mut AnyConnection,
    entity: &Entity,
    keys: &[&Keyed<'_>],
) -> QueryResult<Vec<Option<Reset>>> {
    let mut stored = vec![None; keys.len()];
    let table = &entity.table;
    let key_types = key_types(table);
    let version = if entity.versioned {
        format!("t.{}", quote(VERSION_COLUMN))
    } else {
        "CAST(NULL AS BIGINT)".to_owned()
    };
    let mut types = vec![ColumnType::I64];
    types.extend(&key_types);
    let names: Vec<String> = (0..key_types.len())
        .map(|i| format!("nomnom_k{i}"))
        .collect();
    let on: Vec<String> = table
        .key
        .iter()
        .zip(&names)
        .map(|(k, n)| format!("t.{} = v.{n}", quote(k)))
        .collect();
    let sql_for = |kind: DatabaseKind, rows: usize| {
        format!(
            "WITH v(nomnom_i, {}) AS (VALUES {}) SELECT v.nomnom_i, t.{} AS seq, {version} AS version \
             FROM v JOIN {} t ON {}",
            names.join(", "),
            sql::value_lists(kind, &types, rows),
            quote(SEQUENCE_COLUMN),
            quote(table.name),
            on.join(" AND ")
        )
    };
    // Each key's index in `keys`, bound beside it, says which key a row read is for.
    let indexes: Vec<Value> = (0..keys.len()).map(|i| Value::I64(i as i64)).collect();
    let mut binds: Vec<(ColumnType, &Value)> = Vec::new();
    let kind = conn.kind();
    sql::in_chunks(
        kind,
        keys,
        types.len(),
        sql_for,
        |sql, offset, chunk, prepare| {
            binds.clear();
            for (index, item) in indexes[offset..].iter().zip(chunk) {
                binds.push((ColumnType::I64, index));
                binds.extend(key_types.iter().copied().zip(item.key.iter()));
            }
            for row in sql::load_as::<GuardRow>(conn, sql, &binds, prepare)? {
                stored[row.nomnom_i as usize] = Some(Reset {
                    guard: (row.version, row.seq),
                    live: true,
                });
            }
            Ok(())
        },
    )?;
    Ok(stored)
}

/// Rows of `table` (tombstones, patches) for `entity` and the keys `texts`.
fn read_by_key<T>(
    conn: &mut AnyConnection,
    entity: &Entity,
    columns: &str,
    table: &str,
    texts: &[&str],
) -> QueryResult<Vec<T>>
where
    T: QueryableByName<diesel::pg::Pg> + QueryableByName<diesel::sqlite::Sqlite> + 'static,
{
    let name = Value::Text(entity.table.name.to_owned());
    let texts: Vec<Value> = texts.iter().map(|t| Value::Text((*t).to_owned())).collect();
    let sql_for = |kind: DatabaseKind, keys: usize| {
        let placeholders: Vec<String> = (0..keys).map(|i| kind.placeholder(i + 2)).collect();
        format!(
            "SELECT key, {columns} FROM {table} WHERE entity = {} AND key IN ({})",
            kind.placeholder(1),
            placeholders.join(", ")
        )
    };
    let mut rows = Vec::new();
    let mut binds: Vec<(ColumnType, &Value)> = Vec::new();
    let kind = conn.kind();
    // One bind per key, plus the entity's: two per key keeps a statement under the limit.
    sql::in_chunks(kind, &texts, 2, sql_for, |sql, _, chunk, prepare| {
        binds.clear();
        binds.push((ColumnType::Text, &name));
        binds.extend(chunk.iter().map(|t| (ColumnType::Text, t)));
        rows.extend(sql::load_as::<T>(conn, sql, &binds, prepare)?);
        Ok(())
    })?;
    Ok(rows)
}

#[derive(QueryableByName)]
struct PatchRow {
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    version: Option<i64>,
    #[diesel(sql_type = Text)]
    message_id: String,
    #[diesel(sql_type = Text)]
    patch: String,
    #[diesel(sql_type = Bool)]
    applied: bool,
}

/// A patch as JSON: one element per column the parser fills, `null` for a column not
/// in the patch, else `[value]` (so a patch to SQL NULL is `[null]`).
pub(super) fn encode_patch(values: &[Option<Value>]) -> String {
    let elements: Vec<serde_json::Value> = values
        .iter()
        .map(|value| match value {
            None => serde_json::Value::Null,
            Some(value) => serde_json::Value::Array(vec![match value {
                Value::Null => serde_json::Value::Null,
                Value::Bool(b) => (*b).into(),
                Value::I16(n) => (*n).into(),
                Value::I32(n) => (*n).into(),
                Value::I64(n) => (*n).into(),
                Value::F32(n) => f64::from(*n).into(),
                Value::F64(n) => (*n).into(),
                Value::Text(text) => text.as_str().into(),
            }]),
        })
        .collect();
    serde_json::Value::Array(elements).to_string()
}

/// Reads back [`encode_patch`], typed by `table`'s columns.
pub(super) fn decode_patch(table: &Table, text: &str) -> QueryResult<Vec<Option<Value>>> {
    let bad = |what: String| diesel::result::Error::DeserializationError(what.into());
    let elements: Vec<serde_json::Value> =
        serde_json::from_str(text).map_err(|e| bad(format!("patch log entry: {e}")))?;
    elements
        .into_iter()
        .zip(table.columns)
        .map(|(element, column)| {
            let value = match element {
                serde_json::Value::Null => return Ok(None),
                serde_json::Value::Array(mut one) if one.len() == 1 => one.remove(0),
                other => return Err(bad(format!("patch log entry: unexpected {other}"))),
            };
            let mismatch = || {
                bad(format!(
                    "patch log entry: {value} for column {}",
                    column.name
                ))
            };
            Ok(Some(match (column.column_type, &value) {
                (_, serde_json::Value::Null) => Value::Null,
                (ColumnType::Bool, v) => Value::Bool(v.as_bool().ok_or_else(mismatch)?),
                (ColumnType::I16, v) => Value::I16(
                    v.as_i64()
                        .and_then(|n| i16::try_from(n).ok())
                        .ok_or_else(mismatch)?,
                ),
                (ColumnType::I32, v) => Value::I32(
                    v.as_i64()
                        .and_then(|n| i32::try_from(n).ok())
                        .ok_or_else(mismatch)?,
                ),
                (ColumnType::I64, v) => Value::I64(v.as_i64().ok_or_else(mismatch)?),
                (ColumnType::F32, v) => Value::F32(v.as_f64().ok_or_else(mismatch)? as f32),
                (ColumnType::F64, v) => Value::F64(v.as_f64().ok_or_else(mismatch)?),
                (_, serde_json::Value::String(text)) => Value::Text(text.clone()),
                _ => return Err(mismatch()),
            }))
        })
        .collect()
}

/// Tables in which a straight write met a row that was there after all, and the same
/// batch then passed upserted: this process upserts into them from then on.
static UPSERT_ONLY: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Records that a straight write into `table` was refused by a row that was there after
/// all (see [`super::Absent::Straight`]).
pub fn straight_refused(table: &str) {
    let mut tables = UPSERT_ONLY.lock().unwrap_or_else(|e| e.into_inner());
    if !tables.iter().any(|t| t == table) {
        tracing::info!(
            table,
            "rows of this table will be upserted, not copied straight: a straight copy met a row that was there already"
        );
        tables.push(table.to_owned());
    }
}

fn straight(absent: super::Absent, table: &Table) -> bool {
    absent == super::Absent::Straight
        && !(UPSERT_ONLY.lock().unwrap_or_else(|e| e.into_inner()))
            .iter()
            .any(|t| t == table.name)
}

/// `rows` of keys the database does not hold, written as `absent` says.
fn write_absent(
    conn: &mut AnyConnection,
    table: &Table,
    rows: &[Vec<Value>],
    absent: super::Absent,
) -> QueryResult<usize> {
    if straight(absent, table) {
        sql::write_absent_rows(conn, table, rows)
    } else {
        sql::write_rows(conn, table, rows)
    }
}

/// Writes the net effect of the folded keys.
pub(super) fn write(
    conn: &mut AnyConnection,
    entity: &'static Entity,
    keys: &[&Keyed<'_>],
    states: &[KeyState<'_>],
    absent: super::Absent,
) -> QueryResult<()> {
    let table = &entity.table;
    let stored_live = |s: &KeyState<'_>| s.stored.is_some_and(|r| r.live);
    let changed = |s: &KeyState<'_>| s.reset_changed();
    let keys_where = |keep: &dyn Fn(&KeyState<'_>) -> bool| -> Vec<Vec<Value>> {
        keys.iter()
            .zip(states)
            .filter(|(_, s)| keep(s))
            .map(|(k, _)| k.key.clone())
            .collect()
    };
    // Stored rows replaced or deleted: their children go first, deepest first.
    delete_descendants(conn, entity, &keys_where(&|s| changed(s) && stored_live(s)))?;
    sql::delete_rows(
        conn,
        table,
        &keys_where(&|s| changed(s) && stored_live(s) && !s.live()),
    )?;
    write_tombstones(conn, entity, keys, states)?;
    // Final rows, then their children, each child table in its own write mode. Rows are
    // upserted (the fold has decided which row wins), or, for keys the database does
    // not hold, written as `absent` says; so are all children, since the stored children
    // of the rows replaced were deleted above.
    let mut rows = Vec::new();
    let mut new_rows = Vec::new();
    let mut children: Vec<(&'static Entity, Vec<Vec<Value>>)> = Vec::new();
    for state in states.iter().filter(|s| changed(s) && s.live()) {
        let (Some(row), Some(reset), Some(base)) = (state.row(), state.reset, state.base) else {
            continue;
        };
        let row = with_guard(entity, row, reset.guard);
        if stored_live(state) {
            rows.push(row);
        } else {
            new_rows.push(row);
        }
        for group in &base.children {
            let rows = group.rows.iter().cloned();
            match children
                .iter_mut()
                .find(|(e, _)| e.table.name == group.entity.table.name)
            {
                Some((_, all)) => all.extend(rows),
                None => children.push((group.entity, rows.collect())),
            }
        }
    }
    let upsert = Table {
        write: WriteMode::Upsert,
        ..*table
    };
    sql::write_rows(conn, &upsert, &rows)?;
    write_absent(conn, &upsert, &new_rows, absent)?;
    for (child, rows) in &children {
        write_absent(conn, &child.table, rows, absent)?;
    }
    // Creates of keys that exist, in an `insert` table: the database refuses them (after
    // the rows above, so a key created earlier in this batch exists too).
    let conflicts: Vec<Vec<Value>> = states
        .iter()
        .filter_map(|s| {
            s.conflict
                .map(|change| with_guard(entity, super::fold::full(&change.values), (None, 0)))
        })
        .collect();
    let insert = Table {
        write: WriteMode::Insert,
        ..*table
    };
    sql::write_rows(conn, &insert, &conflicts)?;
    for (key, state) in keys.iter().zip(states) {
        if !changed(state) && state.live() {
            patch_row(conn, table, &key.key, &state.patched_columns())?;
        }
    }
    write_log(conn, entity, keys, states)
}

/// Tombstones for keys whose latest reset of this batch is a delete; none for keys that
/// a create or upsert of this batch brought back.
fn write_tombstones(
    conn: &mut AnyConnection,
    entity: &Entity,
    keys: &[&Keyed<'_>],
    states: &[KeyState<'_>],
) -> QueryResult<()> {
    let now = chrono::Utc::now().timestamp();
    let name = entity.table.name;
    let mut graves: Vec<Vec<Value>> = Vec::new();
    let mut revived: Vec<Vec<Value>> = Vec::new();
    for (key, state) in keys.iter().zip(states) {
        let Some(reset) = state.reset.filter(|_| state.reset_changed()) else {
            continue;
        };
        let id = || {
            vec![
                Value::Text(name.to_owned()),
                Value::Text(key.key_text.clone()),
            ]
        };
        if !reset.live {
            let mut grave = id();
            grave.push(Value::I64(reset.guard.1));
            grave.push(reset.guard.0.map_or(Value::Null, Value::I64));
            grave.push(Value::I64(now));
            graves.push(grave);
        } else if state.stored.is_some_and(|r| !r.live) {
            revived.push(id());
        }
    }
    const COLUMNS: &[Column] = &[
        Column {
            name: "entity",
            column_type: ColumnType::Text,
        },
        Column {
            name: "key",
            column_type: ColumnType::Text,
        },
        Column {
            name: "seq",
            column_type: ColumnType::I64,
        },
        Column {
            name: "version",
            column_type: ColumnType::I64,
        },
        Column {
            name: "deleted_at",
            column_type: ColumnType::I64,
        },
    ];
    let tombstones = Table {
        name: TOMBSTONES,
        columns: COLUMNS,
        key: &["entity", "key"],
        write: WriteMode::Upsert,
    };
    sql::write_rows(conn, &tombstones, &graves)?;
    sql::delete_rows(conn, &tombstones, &revived)?;
    Ok(())
}

/// Rewrites the log of every key whose log this batch changed.
fn write_log(
    conn: &mut AnyConnection,
    entity: &Entity,
    keys: &[&Keyed<'_>],
    states: &[KeyState<'_>],
) -> QueryResult<()> {
    let now = chrono::Utc::now().timestamp();
    let name = Value::Text(entity.table.name.to_owned());
    let mut cleared: Vec<Vec<Value>> = Vec::new();
    let mut entries: Vec<Vec<Value>> = Vec::new();
    for (key, state) in keys.iter().zip(states) {
        let touched = !state.dropped.is_empty()
            || state
                .log
                .iter()
                .any(|p| p.new || p.stored_applied != Some(p.applied));
        if !touched {
            continue;
        }
        cleared.push(vec![name.clone(), Value::Text(key.key_text.clone())]);
        for patch in &state.log {
            entries.push(vec![
                name.clone(),
                Value::Text(key.key_text.clone()),
                Value::I64(patch.guard.1),
                patch.guard.0.map_or(Value::Null, Value::I64),
                Value::Text(patch.message_id.to_string()),
                Value::Text(encode_patch(&patch.values)),
                Value::Bool(patch.applied),
                Value::I64(now),
            ]);
        }
    }
    const COLUMNS: &[Column] = &[
        Column {
            name: "entity",
            column_type: ColumnType::Text,
        },
        Column {
            name: "key",
            column_type: ColumnType::Text,
        },
        Column {
            name: "seq",
            column_type: ColumnType::I64,
        },
        Column {
            name: "version",
            column_type: ColumnType::I64,
        },
        Column {
            name: "message_id",
            column_type: ColumnType::Text,
        },
        Column {
            name: "patch",
            column_type: ColumnType::Text,
        },
        Column {
            name: "applied",
            column_type: ColumnType::Bool,
        },
        Column {
            name: "logged_at",
            column_type: ColumnType::I64,
        },
    ];
    let log = Table {
        name: PATCHES,
        columns: COLUMNS,
        key: &["entity", "key"],
        write: WriteMode::Insert,
    };
    sql::delete_rows(conn, &log, &cleared)?;
    sql::write_rows(conn, &log, &entries)?;
    Ok(())
}

/// Sets `columns` (by position) of one stored row; key columns are left alone.
fn patch_row(
    conn: &mut AnyConnection,
    table: &Table,
    key: &[Value],
    columns: &[(usize, Value)],
) -> QueryResult<()> {
    let sets: Vec<(&Column, &Value)> = columns
        .iter()
        .map(|(index, value)| (&table.columns[*index], value))
        .filter(|(column, _)| !table.key.contains(&column.name))
        .collect();
    if sets.is_empty() {
        return Ok(());
    }
    let key_types = key_types(table);
    let sql = |kind: DatabaseKind| {
        let mut n = 0;
        let mut next = |column_type| {
            n += 1;
            sql::placeholder(kind, n, column_type)
        };
        let assignments: Vec<String> = sets
            .iter()
            .map(|(column, _)| format!("{} = {}", quote(column.name), next(column.column_type)))
            .collect();
        let conditions: Vec<String> = table
            .key
            .iter()
            .zip(&key_types)
            .map(|(name, column_type)| format!("{} = {}", quote(name), next(*column_type)))
            .collect();
        format!(
            "UPDATE {} SET {} WHERE {}",
            quote(table.name),
            assignments.join(", "),
            conditions.join(" AND ")
        )
    };
    let mut binds: Vec<(ColumnType, &Value)> =
        sets.iter().map(|(c, v)| (c.column_type, *v)).collect();
    binds.extend(key_types.iter().copied().zip(key));
    sql::execute(conn, sql, &binds)?;
    Ok(())
}

/// `row` with the guard columns appended.
fn with_guard(entity: &Entity, mut row: Vec<Value>, (version, seq): Guard) -> Vec<Value> {
    row.push(Value::I64(seq));
    if entity.versioned {
        row.push(Value::I64(version.unwrap_or(0)));
    }
    row
}

/// Deletes the descendants of the rows of `entity` with `keys`, deepest first.
fn delete_descendants(
    conn: &mut AnyConnection,
    entity: &'static Entity,
    keys: &[Vec<Value>],
) -> QueryResult<()> {
    if keys.is_empty() || entity.children.is_empty() {
        return Ok(());
    }
    let key_types = key_types(&entity.table);
    let mut binds: Vec<(ColumnType, &Value)> = Vec::new();
    let kind = conn.kind();
    // The text of the parents' selection is built in `delete_below`, per child table.
    let no_text = |_, _| String::new();
    sql::in_chunks(
        kind,
        keys,
        key_types.len(),
        no_text,
        |_, _, chunk, prepare| {
            sql::bind_rows(&mut binds, &key_types, chunk);
            let roots = |kind: DatabaseKind, columns: &[&str]| {
                let columns: Vec<String> = columns.iter().map(|c| quote(c)).collect();
                let key: Vec<String> = entity.table.key.iter().map(|k| quote(k)).collect();
                format!(
                    "SELECT {} FROM {} WHERE ({}) IN ({})",
                    columns.join(", "),
                    quote(entity.table.name),
                    key.join(", "),
                    sql::value_lists(kind, &key_types, chunk.len())
                )
            };
            delete_below(conn, entity, &roots, &binds, prepare)
        },
    )
}

/// Deletes, for each child of `parent`, its descendants and then its rows, where
/// `parents(kind, columns)` selects `columns` of the parent rows concerned.
fn delete_below(
    conn: &mut AnyConnection,
    parent: &'static Entity,
    parents: &dyn Fn(DatabaseKind, &[&str]) -> String,
    binds: &[(ColumnType, &Value)],
    prepare: sql::Prepare,
) -> QueryResult<()> {
    for child in parent.children {
        let child_columns: Vec<&str> = child.parent_key.iter().map(|(c, _)| *c).collect();
        let parent_columns: Vec<&str> = child.parent_key.iter().map(|(_, p)| *p).collect();
        if child_columns.is_empty() {
            continue;
        }
        let rows = |kind: DatabaseKind, columns: &[&str]| {
            let selected: Vec<String> = columns.iter().map(|c| quote(c)).collect();
            let linked: Vec<String> = child_columns.iter().map(|c| quote(c)).collect();
            format!(
                "SELECT {} FROM {} WHERE ({}) IN ({})",
                selected.join(", "),
                quote(child.entity.table.name),
                linked.join(", "),
                parents(kind, &parent_columns)
            )
        };
        delete_below(conn, child.entity, &rows, binds, prepare)?;
        let sql = |kind: DatabaseKind| {
            let linked: Vec<String> = child_columns.iter().map(|c| quote(c)).collect();
            format!(
                "DELETE FROM {} WHERE ({}) IN ({})",
                quote(child.entity.table.name),
                linked.join(", "),
                parents(kind, &parent_columns)
            )
        };
        sql::execute_as(conn, &sql::Sql::new(sql(conn.kind())), binds, prepare)?;
    }
    Ok(())
}
