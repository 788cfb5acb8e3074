//! What a message asks of the database: one operation on one keyed row of a root entity,
//! with the rows of its children. Generated parsers build a [`Change`] per message; the
//! runtime applies a batch of them in stream order (see [`crate::apply`]).

use crate::sql::{Table, Value};

/// The column of every root table holding the stream sequence of the message that last
/// wrote the row: what "newer" is measured against.
pub const SEQUENCE_COLUMN: &str = "nomnom_seq";

/// The column of a root table whose spec names a `version` field: that field as a
/// number ([`Version`]), compared before the stream sequence.
pub const VERSION_COLUMN: &str = "nomnom_version";

/// An entity as the writer sees it.
#[derive(Debug)]
pub struct Entity {
    /// The entity's table. A root entity's columns end with [`SEQUENCE_COLUMN`] and, if
    /// `versioned`, [`VERSION_COLUMN`]; the parser fills every other column.
    pub table: Table,
    /// Whether the spec names a version field.
    pub versioned: bool,
    /// Whether messages may delete or patch rows (the spec has an `operation`). Without,
    /// no key has a tombstone or logged patches, and the apply step does not look for
    /// them.
    pub operation: bool,
    /// Entities whose rows are arrays inside this entity's body.
    pub children: &'static [Child],
}

impl Entity {
    /// Columns the runtime fills (the guard), at the end of the table's columns.
    pub fn guard_columns(&self, root: bool) -> usize {
        match (root, self.versioned) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => 2,
        }
    }
}

/// A child entity and how its rows point at their parent row.
#[derive(Debug)]
pub struct Child {
    pub entity: &'static Entity,
    /// `(child column, parent column)` pairs: a child row belongs to the parent row whose
    /// `parent column`s equal its `child column`s.
    pub parent_key: &'static [(&'static str, &'static str)],
}

/// What a message does to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Writes the row in the table's write mode (insert, upsert or ignore duplicates).
    Create,
    /// Writes the row, replacing the row with the same key and its children.
    Upsert,
    /// Sets the columns the body has; the other columns and the children stay.
    Patch,
    /// Deletes the row with the key, and its children.
    Delete,
}

/// A version as the guard compares it: an integer field's value, a date's days since
/// 1970-01-01, a timestamp's microseconds since 1970-01-01T00:00:00Z.
pub type Version = i64;

/// One message's operation on one root row.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub entity: &'static Entity,
    pub op: Op,
    /// One value per column the parser fills (the table's columns but the guard's). All
    /// are `Some` for create and upsert; for patch, `None` marks a column the body does
    /// not have; for delete, only the key columns are `Some`.
    pub values: Vec<Option<Value>>,
    /// The version field's value, when the entity has one.
    pub version: Option<Version>,
    /// Rows of the descendants, grouped by entity.
    pub children: Vec<ChildRows>,
}

/// Rows of one descendant entity, in body order.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildRows {
    pub entity: &'static Entity,
    pub rows: Vec<Vec<Value>>,
}

impl Change {
    /// A create or upsert of a full row.
    pub fn row(entity: &'static Entity, op: Op, values: Vec<Value>) -> Self {
        Self {
            entity,
            op,
            values: values.into_iter().map(Some).collect(),
            version: None,
            children: Vec::new(),
        }
    }

    /// Sets the version.
    #[must_use]
    pub fn with_version(mut self, version: Version) -> Self {
        self.version = Some(version);
        self
    }

    /// Adds a row of the descendant `entity`.
    pub fn push_child(&mut self, entity: &'static Entity, row: Vec<Value>) {
        match self
            .children
            .iter_mut()
            .find(|c| c.entity.table.name == entity.table.name)
        {
            Some(group) => group.rows.push(row),
            None => self.children.push(ChildRows {
                entity,
                rows: vec![row],
            }),
        }
    }
}

impl PartialEq for Entity {
    fn eq(&self, other: &Self) -> bool {
        self.table.name == other.table.name
    }
}

/// Converts a version field's value to a [`Version`].
pub trait IntoVersion {
    fn into_version(self) -> Version;
}

impl IntoVersion for i16 {
    fn into_version(self) -> Version {
        self.into()
    }
}

impl IntoVersion for i32 {
    fn into_version(self) -> Version {
        self.into()
    }
}

impl IntoVersion for i64 {
    fn into_version(self) -> Version {
        self
    }
}

impl IntoVersion for chrono::NaiveDate {
    fn into_version(self) -> Version {
        self.signed_duration_since(chrono::NaiveDate::default())
            .num_days()
    }
}

impl IntoVersion for chrono::DateTime<chrono::Utc> {
    fn into_version(self) -> Version {
        self.timestamp_micros()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_like_their_fields() {
        let day = |d| chrono::NaiveDate::from_ymd_opt(2026, 1, d).unwrap();
        assert!(day(1).into_version() < day(2).into_version());
        assert_eq!(chrono::NaiveDate::default().into_version(), 0);
        let at = day(1).and_hms_opt(0, 0, 1).unwrap().and_utc();
        assert!(
            at.into_version()
                > day(1)
                    .and_hms_opt(0, 0, 0)
                    .unwrap()
                    .and_utc()
                    .into_version()
        );
        assert_eq!(7i16.into_version(), 7);
    }
}
