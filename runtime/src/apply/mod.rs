//! Applying a batch of changes so that every key ends as if its messages had been applied
//! one by one in order, whatever the batching, redeliveries and replicas. The order is
//! the stream's, or with a spec `version` field the version's (the stream sequence
//! breaking ties).
//!
//! Per root entity, in the caller's transaction:
//!
//! 1. **Lock** the batch's keys (PostgreSQL: transaction-scoped advisory locks, taken in
//!    one sorted order; SQLite has a single writer already), so no other replica changes
//!    them until this transaction ends.
//! 2. **Read** what the database holds for each key: the guard of its row
//!    (`nomnom_seq`, `nomnom_version`), or its tombstone, and its logged patches.
//! 3. **Fold** each key's changes in guard order against that state, in memory
//!    (`fold.rs`): a change older than the key's latest create, upsert or delete is
//!    [`Outcome::Stale`]; a patch of a missing row [`Outcome::Missing`] (and logged, in
//!    case an older create arrives later).
//! 4. **Write** the net effect (`store.rs`): children of replaced or deleted rows first,
//!    then deleted rows, tombstones, final rows with their children, patched columns,
//!    and the patch log.

mod fold;
mod store;

use std::collections::HashMap;

use diesel::QueryResult;
use uuid::Uuid;

use crate::change::{Change, Entity};
use crate::sql::{AnyConnection, Value};

pub use store::{
    PATCHES, PATCHES_DDL, SEQUENCES_PER_STREAM, STREAMS, STREAMS_DDL, TOMBSTONES, TOMBSTONES_DDL,
    prune, sequence_base,
};

use fold::KeyState;

/// What became of one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied (a create of a key that exists in an `ignore_duplicates` table included).
    Applied,
    /// Older than the latest create, upsert or delete of its key: skipped.
    Stale,
    /// A patch of a row that does not exist: no effect (unless an older create of the
    /// row arrives later; it is then revised to applied).
    Missing,
}

/// One change to apply.
#[derive(Debug, Clone, Copy)]
pub struct Sequenced<'a> {
    /// The message's guard sequence: its stream sequence, plus the base of its stream's
    /// incarnation ([`sequence_base`]).
    pub seq: i64,
    pub message_id: Uuid,
    pub change: &'a Change,
}

/// What a batch did.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    /// One per change, in input order.
    pub outcomes: Vec<Outcome>,
    /// Earlier patches whose outcome this batch changed.
    pub revised: Vec<(Uuid, Outcome)>,
}

/// How the rows of keys the database does not hold are written (new rows, and the
/// children of every row this batch writes, whose stored children it deleted first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absent {
    /// Straight into their tables ([`crate::sql::write_absent_rows`]; on PostgreSQL a
    /// plain COPY): the keys were read under their locks, so no conflict is expected.
    /// If a row is there after all (a child keyed apart from its parent, a row written
    /// by something else), PostgreSQL refuses with a unique violation: apply the batch
    /// again, in a new transaction, with [`Absent::Upsert`], and tell
    /// [`straight_refused`] if that passes.
    Straight,
    /// Upserted, like the rows that exist.
    Upsert,
}

pub use store::straight_refused;

/// Applies `changes` inside the caller's transaction.
pub fn apply(
    conn: &mut AnyConnection,
    changes: &[Sequenced<'_>],
    absent: Absent,
) -> QueryResult<Applied> {
    let mut applied = Applied {
        outcomes: vec![Outcome::Applied; changes.len()],
        revised: Vec::new(),
    };
    let mut groups: Vec<(&'static Entity, Vec<Keyed<'_>>)> = Vec::new();
    for (index, item) in changes.iter().enumerate() {
        let keyed = Keyed::new(index, item);
        let entity = item.change.entity;
        match groups
            .iter_mut()
            .find(|(e, _)| e.table.name == entity.table.name)
        {
            Some((_, members)) => members.push(keyed),
            None => groups.push((entity, vec![keyed])),
        }
    }
    for (_, items) in &mut groups {
        // Guard order; the sort is stable, so equal guards keep the batch's order.
        items.sort_by_key(|item| item.guard);
    }
    store::lock_keys(conn, &groups)?;
    for (entity, items) in &groups {
        apply_entity(conn, entity, items, absent, &mut applied)?;
    }
    Ok(applied)
}

/// A change with its key and guard.
struct Keyed<'a> {
    index: usize,
    guard: fold::Guard,
    message_id: Uuid,
    change: &'a Change,
    key: Vec<Value>,
    /// The key's text form: tombstones, the patch log, lock ids and grouping.
    key_text: String,
}

impl<'a> Keyed<'a> {
    fn new(index: usize, item: &Sequenced<'a>) -> Self {
        let change = item.change;
        let key: Vec<Value> = crate::sql::key_positions(&change.entity.table)
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
        let key_text = store::key_text(&key);
        Self {
            index,
            guard: (change.version, item.seq),
            message_id: item.message_id,
            change,
            key,
            key_text,
        }
    }
}

fn apply_entity(
    conn: &mut AnyConnection,
    entity: &'static Entity,
    items: &[Keyed<'_>],
    absent: Absent,
    applied: &mut Applied,
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
    let mut states: Vec<KeyState> = store::read(conn, entity, &keys)?;
    for item in items {
        let state = &mut states[slots[item.key_text.as_str()]];
        applied.outcomes[item.index] =
            state.fold(entity.table.write, item.guard, item.message_id, item.change);
    }
    for state in &states {
        applied.revised.extend(state.revised());
    }
    store::write(conn, entity, &keys, &states, absent)
}
