//! The fold: one key's changes against what the database holds for it, in memory.
//!
//! A key's state is its latest **reset** (a create or upsert, which sets the whole row,
//! or a delete) and the **patches** newer than that reset. Changes are ordered by their
//! guard, `(version, stream sequence)`: the final row is the reset's row with the newer
//! patches applied in guard order, so it does not matter in which order or batches the
//! changes arrive. Patches are logged (see `store.rs`) until a newer reset supersedes
//! them, so an older create or upsert arriving after a patch still gets it on top.

use uuid::Uuid;

use crate::change::{Change, Op, Version};
use crate::sql::{Value, WriteMode};

use super::Outcome;

/// What "newer" compares: `(version, sequence)`. Without a version field, versions are
/// all `None` and the stream sequence decides.
pub(super) type Guard = (Option<Version>, i64);

/// A logged patch.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Logged {
    pub guard: Guard,
    pub message_id: Uuid,
    /// One per column the parser fills; `None`: not in the patch.
    pub values: Vec<Option<Value>>,
    /// Whether its row existed when it took effect (its status: applied or missing).
    pub applied: bool,
    /// Logged by this batch (not in the database yet).
    pub new: bool,
    /// `applied` as the database has it, for entries read from it.
    pub stored_applied: Option<bool>,
}

/// The latest reset of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reset {
    pub guard: Guard,
    /// A create or upsert (the row exists), not a delete.
    pub live: bool,
}

/// One key while its changes are folded.
#[derive(Debug, Default)]
pub(super) struct KeyState<'a> {
    /// What the database had before the batch.
    pub stored: Option<Reset>,
    /// The latest reset so far.
    pub reset: Option<Reset>,
    /// The create or upsert of this batch whose row (before patches) and children are
    /// written: borrowed, the rows are copied once, when written.
    pub base: Option<&'a Change>,
    /// Patches newer than `reset`, in guard order.
    pub log: Vec<Logged>,
    /// Entries read from the database that a newer reset superseded.
    pub dropped: Vec<Logged>,
    /// A create in an `insert` table of a key that exists: the database refuses it.
    pub conflict: Option<&'a Change>,
}

impl<'a> KeyState<'a> {
    /// The state of a key the database holds as `stored`, with its logged patches.
    pub fn new(stored: Option<Reset>, log: Vec<Logged>) -> Self {
        Self {
            stored,
            reset: stored,
            log,
            ..Self::default()
        }
    }

    pub fn live(&self) -> bool {
        self.reset.is_some_and(|r| r.live)
    }

    /// Whether a reset of this batch replaced the stored one.
    pub fn reset_changed(&self) -> bool {
        self.reset != self.stored
    }

    /// Folds in one change; changes must come in guard order. Returns its outcome.
    pub fn fold(
        &mut self,
        write: WriteMode,
        guard: Guard,
        message_id: Uuid,
        change: &'a Change,
    ) -> Outcome {
        if self.reset.is_some_and(|r| guard <= r.guard) {
            return Outcome::Stale;
        }
        match (change.op, write) {
            (Op::Create, WriteMode::Insert) if self.live() => {
                self.conflict = Some(change);
                Outcome::Applied
            }
            // ignore_duplicates: the row stays as it is.
            (Op::Create, WriteMode::IgnoreDuplicates) if self.live() => Outcome::Applied,
            (Op::Create | Op::Upsert, _) => {
                self.base = Some(change);
                self.new_reset(Reset { guard, live: true });
                Outcome::Applied
            }
            (Op::Delete, _) => {
                self.base = None;
                self.new_reset(Reset { guard, live: false });
                Outcome::Applied
            }
            (Op::Patch, _) => {
                let applied = self.live();
                let at = self.log.partition_point(|p| p.guard < guard);
                self.log.insert(
                    at,
                    Logged {
                        guard,
                        message_id,
                        values: change.values.clone(),
                        applied,
                        new: true,
                        stored_applied: None,
                    },
                );
                if applied {
                    Outcome::Applied
                } else {
                    Outcome::Missing
                }
            }
        }
    }

    /// A newer reset: older patches are superseded, newer ones now apply to a row or
    /// to none.
    fn new_reset(&mut self, reset: Reset) {
        self.reset = Some(reset);
        let (older, newer): (Vec<Logged>, Vec<Logged>) = std::mem::take(&mut self.log)
            .into_iter()
            .partition(|p| p.guard < reset.guard);
        self.dropped.extend(older.into_iter().filter(|p| !p.new));
        self.log = newer;
        for patch in &mut self.log {
            patch.applied = reset.live;
        }
    }

    /// Patches read from the database whose outcome this batch changed (a late create
    /// under a logged patch, a late delete under an applied one).
    pub fn revised(&self) -> impl Iterator<Item = (Uuid, Outcome)> + '_ {
        self.log
            .iter()
            .chain(&self.dropped)
            .filter(|p| p.stored_applied.is_some_and(|was| was != p.applied))
            .map(|p| {
                let outcome = if p.applied {
                    Outcome::Applied
                } else {
                    Outcome::Missing
                };
                (p.message_id, outcome)
            })
    }

    /// The full row to write: the batch's reset row with the newer patches on top.
    pub fn row(&self) -> Option<Vec<Value>> {
        let mut row = full(&self.base?.values);
        for patch in &self.log {
            merge(&mut row, &patch.values);
        }
        Some(row)
    }

    /// Without a new reset: the columns this batch's patches set on the stored row, with
    /// their values (a column an older logged patch already set more recently stays).
    pub fn patched_columns(&self) -> Vec<(usize, Value)> {
        let mut columns: Vec<(usize, Value, bool)> = Vec::new();
        for patch in &self.log {
            for (index, value) in patch.values.iter().enumerate() {
                let Some(value) = value else { continue };
                match columns.iter_mut().find(|(i, _, _)| *i == index) {
                    Some(slot) => *slot = (index, value.clone(), patch.new),
                    None => columns.push((index, value.clone(), patch.new)),
                }
            }
        }
        columns
            .into_iter()
            .filter(|(_, _, new)| *new)
            .map(|(index, value, _)| (index, value))
            .collect()
    }
}

pub(super) fn full(values: &[Option<Value>]) -> Vec<Value> {
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
