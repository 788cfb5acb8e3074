//! Applying a batch of changes so that every key ends as if its messages had been applied
//! one by one in stream order, whatever the batching, redeliveries and replicas.
//!
//! Per root entity, in the caller's transaction:
//!
//! 1. **Lock** the batch's keys (PostgreSQL: transaction-scoped advisory locks, taken in
//!    one sorted order; SQLite has a single writer already), so no other replica changes
//!    them until this transaction ends.
//! 2. **Read the guards**: for each key, the sequence (and version) that last wrote its
//!    row, or its tombstone if a delete was the last word.
//! 3. **Fold** each key's changes in stream order against that state in memory: a change
//!    not newer than the guard is [`Outcome::Stale`], a patch of a missing row
//!    [`Outcome::Missing`]; the rest are applied to the key's state.
//! 4. **Write** the net effect with set-based statements: children of replaced or deleted
//!    rows first, then deleted rows, tombstones, full rows with their children, patches.

use std::collections::HashMap;

use diesel::{
    QueryResult, QueryableByName, RunQueryDsl,
    query_builder::BoxedSqlQuery,
    sql_types::{BigInt, Nullable, Text},
};

use crate::change::{Change, ChildRows, Entity, Op, SEQUENCE_COLUMN, VERSION_COLUMN, Version};
use crate::db::{DatabaseKind, with_backend};
use crate::sql::{self, AnyConnection, ColumnType, Table, Value, WriteMode};

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

/// Deletes tombstones older than `retention`; returns how many.
pub fn prune_tombstones(
    conn: &mut AnyConnection,
    retention: std::time::Duration,
) -> QueryResult<usize> {
    let retention = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    let before = Value::I64(chrono::Utc::now().timestamp().saturating_sub(retention));
    sql::execute(
        conn,
        |kind| {
            format!(
                "DELETE FROM {TOMBSTONES} WHERE deleted_at < {}",
                kind.placeholder(1)
            )
        },
        &[(ColumnType::I64, &before)],
    )
}

/// What became of one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied (a create of a key that exists in an `ignore_duplicates` table included).
    Applied,
    /// Not newer than what its row already reflects: skipped.
    Stale,
    /// A patch of a row that does not exist: skipped.
    Missing,
}

/// Applies `changes`, each with its stream sequence, inside the caller's transaction.
/// Returns one outcome per change, in the same order.
pub fn apply(conn: &mut AnyConnection, changes: &[(i64, &Change)]) -> QueryResult<Vec<Outcome>> {
    let mut outcomes = vec![Outcome::Applied; changes.len()];
    let mut groups: Vec<(&'static Entity, Vec<usize>)> = Vec::new();
    for (index, (_, change)) in changes.iter().enumerate() {
        match groups
            .iter_mut()
            .find(|(e, _)| e.table.name == change.entity.table.name)
        {
            Some((_, members)) => members.push(index),
            None => groups.push((change.entity, vec![index])),
        }
    }
    let mut keyed: Vec<(&'static Entity, Vec<Keyed<'_>>)> = Vec::with_capacity(groups.len());
    for (entity, members) in groups {
        let mut items: Vec<Keyed<'_>> = members
            .into_iter()
            .map(|index| Keyed::new(index, changes[index].0, changes[index].1))
            .collect();
        // Stream order; the sort is stable, so a batch's own order breaks (absent) ties.
        items.sort_by_key(|item| item.seq);
        keyed.push((entity, items));
    }
    lock_keys(conn, &keyed)?;
    for (entity, items) in &keyed {
        apply_entity(conn, entity, items, &mut outcomes)?;
    }
    Ok(outcomes)
}

/// A change with its key.
struct Keyed<'a> {
    index: usize,
    seq: i64,
    change: &'a Change,
    key: Vec<Value>,
    /// The key's text form: tombstones, lock ids and grouping.
    key_text: String,
}

impl<'a> Keyed<'a> {
    fn new(index: usize, seq: i64, change: &'a Change) -> Self {
        let key: Vec<Value> = key_positions(&change.entity.table)
            .iter()
            .map(|p| {
                change
                    .values
                    .get(*p)
                    .cloned()
                    .flatten()
                    .unwrap_or(Value::Null)
            })
            .collect();
        let key_text = key_text(&key);
        Self {
            index,
            seq,
            change,
            key,
            key_text,
        }
    }
}

/// The text form of a key: a JSON array of its values. Stable across builds (tombstones
/// and lock ids outlive a worker version).
fn key_text(key: &[Value]) -> String {
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

fn key_positions(table: &Table) -> Vec<usize> {
    table
        .key
        .iter()
        .filter_map(|k| table.columns.iter().position(|c| c.name == *k))
        .collect()
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
fn lock_keys(
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

/// What a key's row looked like before the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    Absent,
    Live,
    Deleted,
}

/// `(version, sequence)`: what "newer" compares. Without a version field, versions are
/// all `None` and the sequence decides.
type Guard = (Option<Version>, i64);

/// A key's state while its changes are folded.
struct KeyState {
    stored: Stored,
    guard: Option<Guard>,
    live: bool,
    /// The full row to write (with its children), from a create or upsert in the batch.
    row: Option<(Vec<Value>, Vec<ChildRows>)>,
    /// Columns to set on the stored row (patches with no full row in the batch).
    patch: Option<Vec<Option<Value>>>,
    /// The stored row's children (and, with `live` false, the row) must go.
    replace_stored: bool,
    /// A create in an `insert` table of a key that exists: the database refuses it.
    conflict: Option<Vec<Value>>,
    /// Whether a change of the batch moved the guard.
    applied: bool,
}

impl KeyState {
    fn new(stored: Stored, guard: Option<Guard>) -> Self {
        Self {
            stored,
            guard,
            live: stored == Stored::Live,
            row: None,
            patch: None,
            replace_stored: false,
            conflict: None,
            applied: false,
        }
    }

    /// Folds one change in; returns its outcome.
    fn fold(&mut self, entity: &Entity, seq: i64, change: &Change) -> Outcome {
        let guard = (change.version, seq);
        if self.guard.is_some_and(|current| guard <= current) {
            return Outcome::Stale;
        }
        let op = match (change.op, entity.table.write) {
            (Op::Create, WriteMode::Upsert) => Op::Upsert,
            (op, _) => op,
        };
        match op {
            Op::Create if self.live => {
                if entity.table.write == WriteMode::Insert {
                    self.conflict = Some(full(&change.values));
                }
                // ignore_duplicates: the row stays as it is.
                return Outcome::Applied;
            }
            Op::Create | Op::Upsert => {
                self.replace_stored |= self.stored == Stored::Live;
                self.row = Some((full(&change.values), change.children.clone()));
                self.patch = None;
                self.live = true;
            }
            Op::Patch => {
                if !self.live {
                    return Outcome::Missing;
                }
                match (&mut self.row, &mut self.patch) {
                    (Some((row, _)), _) => merge(row, &change.values),
                    (None, Some(patch)) => {
                        for (slot, value) in patch.iter_mut().zip(&change.values) {
                            if value.is_some() {
                                slot.clone_from(value);
                            }
                        }
                    }
                    (None, None) => self.patch = Some(change.values.clone()),
                }
            }
            Op::Delete => {
                self.replace_stored |= self.stored == Stored::Live;
                self.row = None;
                self.patch = None;
                self.live = false;
            }
        }
        self.guard = Some(guard);
        self.applied = true;
        Outcome::Applied
    }
}

fn full(values: &[Option<Value>]) -> Vec<Value> {
    values
        .iter()
        .map(|v| v.clone().unwrap_or(Value::Null))
        .collect()
}

fn merge(row: &mut [Value], patch: &[Option<Value>]) {
    for (slot, value) in row.iter_mut().zip(patch) {
        if let Some(value) = value {
            slot.clone_from(value);
        }
    }
}

fn apply_entity(
    conn: &mut AnyConnection,
    entity: &'static Entity,
    items: &[Keyed<'_>],
    outcomes: &mut [Outcome],
) -> QueryResult<()> {
    // Distinct keys, in first-seen order.
    let mut slots: HashMap<&str, usize> = HashMap::with_capacity(items.len());
    let mut keys: Vec<&Keyed<'_>> = Vec::with_capacity(items.len());
    for item in items {
        slots.entry(item.key_text.as_str()).or_insert_with(|| {
            keys.push(item);
            keys.len() - 1
        });
    }
    let stored = read_guards(conn, entity, &keys)?;
    let mut states: Vec<KeyState> = stored
        .into_iter()
        .map(|(stored, guard)| KeyState::new(stored, guard))
        .collect();
    for item in items {
        let state = &mut states[slots[item.key_text.as_str()]];
        outcomes[item.index] = state.fold(entity, item.seq, item.change);
    }
    write_plan(conn, entity, &keys, &states)
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

fn quote(identifier: &str) -> String {
    format!("\"{identifier}\"")
}

/// The type of each key column.
fn key_types(table: &Table) -> Vec<ColumnType> {
    key_positions(table)
        .iter()
        .map(|p| table.columns[*p].column_type)
        .collect()
}

/// The stored state of each key: its row's guard, else its tombstone, else absent.
fn read_guards(
    conn: &mut AnyConnection,
    entity: &Entity,
    keys: &[&Keyed<'_>],
) -> QueryResult<Vec<(Stored, Option<Guard>)>> {
    let mut stored = vec![(Stored::Absent, None); keys.len()];
    let table = &entity.table;
    let key_types = key_types(table);
    let version = if entity.versioned {
        format!("t.{}", quote(VERSION_COLUMN))
    } else {
        "CAST(NULL AS BIGINT)".to_owned()
    };
    let per_statement = (conn.kind().max_binds() / (key_types.len() + 1)).max(1);
    for (chunk_index, chunk) in keys.chunks(per_statement).enumerate() {
        let offset = chunk_index * per_statement;
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
        let sql = |kind: DatabaseKind| {
            format!(
                "WITH v(nomnom_i, {}) AS (VALUES {}) SELECT v.nomnom_i, t.{} AS seq, {version} AS version \
                 FROM v JOIN {} t ON {}",
                names.join(", "),
                sql::value_lists(kind, &types, chunk.len()),
                quote(SEQUENCE_COLUMN),
                quote(table.name),
                on.join(" AND ")
            )
        };
        let indexes: Vec<Value> = (0..chunk.len())
            .map(|i| Value::I64((offset + i) as i64))
            .collect();
        let mut binds: Vec<(ColumnType, &Value)> = Vec::with_capacity(chunk.len() * types.len());
        for (i, item) in chunk.iter().enumerate() {
            binds.push((ColumnType::I64, &indexes[i]));
            binds.extend(key_types.iter().copied().zip(item.key.iter()));
        }
        let rows: Vec<GuardRow> = load(conn, sql, &binds)?;
        for row in rows {
            stored[row.nomnom_i as usize] = (Stored::Live, Some((row.version, row.seq)));
        }
    }
    // Tombstones only matter for keys without a row.
    let absent: Vec<usize> = (0..keys.len())
        .filter(|i| stored[*i].0 == Stored::Absent)
        .collect();
    let by_text: HashMap<&str, usize> = absent
        .iter()
        .map(|i| (keys[*i].key_text.as_str(), *i))
        .collect();
    let name = Value::Text(table.name.to_owned());
    let texts: Vec<Value> = absent
        .iter()
        .map(|i| Value::Text(keys[*i].key_text.clone()))
        .collect();
    for chunk in texts.chunks(conn.kind().max_binds() - 1) {
        let sql = |kind: DatabaseKind| {
            let placeholders: Vec<String> =
                (0..chunk.len()).map(|i| kind.placeholder(i + 2)).collect();
            format!(
                "SELECT key, seq, version FROM {TOMBSTONES} WHERE entity = {} AND key IN ({})",
                kind.placeholder(1),
                placeholders.join(", ")
            )
        };
        let mut binds = vec![(ColumnType::Text, &name)];
        binds.extend(chunk.iter().map(|t| (ColumnType::Text, t)));
        let rows: Vec<TombstoneRow> = load(conn, sql, &binds)?;
        for row in rows {
            if let Some(i) = by_text.get(row.key.as_str()) {
                stored[*i] = (Stored::Deleted, Some((row.version, row.seq)));
            }
        }
    }
    Ok(stored)
}

/// Runs a query with typed binds and loads its rows, on either backend.
fn load<T>(
    conn: &mut AnyConnection,
    sql_for: impl Fn(DatabaseKind) -> String,
    binds: &[(ColumnType, &Value)],
) -> QueryResult<Vec<T>>
where
    T: QueryableByName<diesel::pg::Pg> + QueryableByName<diesel::sqlite::Sqlite> + 'static,
{
    with_backend!(conn, c => {
        let mut query: BoxedSqlQuery<'_, dialect::Backend, _> =
            diesel::sql_query(sql_for(dialect::KIND)).into_boxed();
        for (column_type, value) in binds {
            query = sql::bind_value!(query, *column_type, *value);
        }
        query.load::<T>(c)
    })
}

/// Writes the net effect of the folded keys.
fn write_plan(
    conn: &mut AnyConnection,
    entity: &'static Entity,
    keys: &[&Keyed<'_>],
    states: &[KeyState],
) -> QueryResult<()> {
    let table = &entity.table;
    // Stored rows whose children go: replaced or deleted.
    let replaced: Vec<Vec<Value>> = keys
        .iter()
        .zip(states)
        .filter(|(_, s)| s.replace_stored)
        .map(|(k, _)| k.key.clone())
        .collect();
    delete_descendants(conn, entity, &replaced)?;
    let deleted: Vec<Vec<Value>> = keys
        .iter()
        .zip(states)
        .filter(|(_, s)| s.replace_stored && !s.live)
        .map(|(k, _)| k.key.clone())
        .collect();
    sql::delete_rows(conn, table, &deleted)?;
    write_tombstones(conn, entity, keys, states)?;
    // Full rows, then their children, each table in its own write mode.
    let mut rows = Vec::new();
    let mut children: Vec<ChildRows> = Vec::new();
    for (state, guard) in states.iter().filter_map(|s| s.row.as_ref().zip(s.guard)) {
        rows.push(with_guard(entity, &state.0, guard));
        for group in &state.1 {
            match children
                .iter_mut()
                .find(|c| c.entity.table.name == group.entity.table.name)
            {
                Some(all) => all.rows.extend(group.rows.iter().cloned()),
                None => children.push(group.clone()),
            }
        }
    }
    // Upsert: the fold has decided which row wins; a key that exists takes it whole.
    sql::write_rows(
        conn,
        &Table {
            write: WriteMode::Upsert,
            ..*table
        },
        &rows,
    )?;
    for group in &children {
        sql::write_rows(conn, &group.entity.table, &group.rows)?;
    }
    // Creates of keys that exist, in an `insert` table: the database refuses them (after
    // the rows above, so a key created earlier in this batch exists too).
    let conflicts: Vec<Vec<Value>> = states
        .iter()
        .filter_map(|s| {
            s.conflict
                .as_ref()
                .map(|row| with_guard(entity, row, (None, 0)))
        })
        .collect();
    if !conflicts.is_empty() {
        sql::write_rows(
            conn,
            &Table {
                write: WriteMode::Insert,
                ..*table
            },
            &conflicts,
        )?;
    }
    for (key, state) in keys.iter().zip(states) {
        if let (Some(patch), Some(guard), true) = (&state.patch, state.guard, state.live) {
            patch_row(conn, entity, &key.key, patch, guard)?;
        }
    }
    Ok(())
}

/// `row` with the guard columns appended.
fn with_guard(entity: &Entity, row: &[Value], (version, seq): Guard) -> Vec<Value> {
    let mut values = Vec::with_capacity(row.len() + 2);
    values.extend_from_slice(row);
    values.push(Value::I64(seq));
    if entity.versioned {
        values.push(Value::I64(version.unwrap_or(0)));
    }
    values
}

/// Tombstones for keys whose last change is a delete; none for keys that live again.
fn write_tombstones(
    conn: &mut AnyConnection,
    entity: &Entity,
    keys: &[&Keyed<'_>],
    states: &[KeyState],
) -> QueryResult<()> {
    let now = chrono::Utc::now().timestamp();
    let name = entity.table.name;
    let mut graves: Vec<Vec<Value>> = Vec::new();
    let mut revived: Vec<Vec<Value>> = Vec::new();
    for (key, state) in keys.iter().zip(states) {
        let Some((version, seq)) = state.guard else {
            continue;
        };
        if state.applied && !state.live {
            graves.push(vec![
                Value::Text(name.to_owned()),
                Value::Text(key.key_text.clone()),
                Value::I64(seq),
                version.map_or(Value::Null, Value::I64),
                Value::I64(now),
            ]);
        } else if state.live && state.stored == Stored::Deleted {
            revived.push(vec![
                Value::Text(name.to_owned()),
                Value::Text(key.key_text.clone()),
            ]);
        }
    }
    const COLUMNS: &[sql::Column] = &[
        sql::Column {
            name: "entity",
            column_type: ColumnType::Text,
        },
        sql::Column {
            name: "key",
            column_type: ColumnType::Text,
        },
        sql::Column {
            name: "seq",
            column_type: ColumnType::I64,
        },
        sql::Column {
            name: "version",
            column_type: ColumnType::I64,
        },
        sql::Column {
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

/// Sets the patched columns of one stored row, and its guard.
fn patch_row(
    conn: &mut AnyConnection,
    entity: &Entity,
    key: &[Value],
    patch: &[Option<Value>],
    (version, seq): Guard,
) -> QueryResult<()> {
    let table = &entity.table;
    let mut sets: Vec<(&str, ColumnType, Value)> = table
        .columns
        .iter()
        .zip(patch)
        .filter(|(column, value)| value.is_some() && !table.key.contains(&column.name))
        .map(|(column, value)| {
            (
                column.name,
                column.column_type,
                value.clone().unwrap_or(Value::Null),
            )
        })
        .collect();
    sets.push((SEQUENCE_COLUMN, ColumnType::I64, Value::I64(seq)));
    if entity.versioned {
        sets.push((
            VERSION_COLUMN,
            ColumnType::I64,
            Value::I64(version.unwrap_or(0)),
        ));
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
            .map(|(name, column_type, _)| format!("{} = {}", quote(name), next(*column_type)))
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
    let mut binds: Vec<(ColumnType, &Value)> = sets.iter().map(|(_, t, v)| (*t, v)).collect();
    binds.extend(key_types.iter().copied().zip(key));
    sql::execute(conn, sql, &binds)?;
    Ok(())
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
    let per_statement = (conn.kind().max_binds() / key_types.len().max(1)).max(1);
    for chunk in keys.chunks(per_statement) {
        let binds: Vec<(ColumnType, &Value)> = chunk
            .iter()
            .flat_map(|key| key_types.iter().copied().zip(key.iter()))
            .collect();
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
        delete_below(conn, entity, &roots, &binds)?;
    }
    Ok(())
}

/// Deletes, for each child of `parent`, its descendants and then its rows, where
/// `parents(kind, columns)` selects `columns` of the parent rows concerned.
fn delete_below(
    conn: &mut AnyConnection,
    parent: &'static Entity,
    parents: &dyn Fn(DatabaseKind, &[&str]) -> String,
    binds: &[(ColumnType, &Value)],
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
        delete_below(conn, child.entity, &rows, binds)?;
        let sql = |kind: DatabaseKind| {
            let linked: Vec<String> = child_columns.iter().map(|c| quote(c)).collect();
            format!(
                "DELETE FROM {} WHERE ({}) IN ({})",
                quote(child.entity.table.name),
                linked.join(", "),
                parents(kind, &parent_columns)
            )
        };
        sql::execute(conn, sql, binds)?;
    }
    Ok(())
}
