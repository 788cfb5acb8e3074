//! What a message asks of the database: one operation on one keyed row of a root entity,
//! with the rows of its children. Generated parsers build a [`Change`] per message; the
//! runtime applies a batch of them in stream order (see [`crate::apply`]).

use std::collections::{HashMap, hash_map::Entry};

use crate::parse::ParseError;
use crate::sql::{KeyPart, Table, Value, WriteMode};

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
    /// Where the root row is in the message body: `""` for the body itself, a record's
    /// JSON pointer for a record fanned out of it (`/entry/2/resource`).
    pub path: String,
}

/// Rows of one descendant entity, in body order.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildRows {
    pub entity: &'static Entity,
    pub rows: Vec<Vec<Value>>,
    /// The JSON path of each row in the message body, in the order of `rows`.
    pub paths: Vec<String>,
    /// The row of each key so far (keys with a NULL, which never collide, left out),
    /// once there are more rows than [`ChildRows::SCANNED_UP_TO`]: fewer are compared
    /// one by one, which costs less than hashing and copying their keys.
    keys: HashMap<Vec<KeyPart<'static>>, usize>,
    /// Where the key columns are in a row, once per table rather than per row; empty
    /// when duplicates are not refused (`ignore_duplicates`, or no key).
    key_positions: Vec<usize>,
}

impl ChildRows {
    /// Up to this many rows, a new row's key is compared with each earlier row's.
    const SCANNED_UP_TO: usize = 16;

    /// The earlier row with the same key as `row`, if any; none for a row whose key has
    /// a NULL, or when duplicates are not refused.
    fn earlier_with_key(&mut self, row: &[Value]) -> Option<usize> {
        let Self {
            rows,
            keys,
            key_positions,
            ..
        } = self;
        if key_positions.is_empty() {
            return None;
        }
        fn key_parts<'r>(
            positions: &'r [usize],
            row: &'r [Value],
        ) -> impl Iterator<Item = KeyPart<'r>> + 'r {
            positions
                .iter()
                .filter_map(|p| row.get(*p))
                .map(KeyPart::of)
        }
        let positions: &[usize] = key_positions;
        let has_null = |row: &[Value]| key_parts(positions, row).any(|part| part == KeyPart::Null);
        if has_null(row) {
            return None;
        }
        if rows.len() < Self::SCANNED_UP_TO {
            return rows
                .iter()
                .position(|other| key_parts(positions, other).eq(key_parts(positions, row)));
        }
        if keys.is_empty() {
            for (index, other) in rows.iter().enumerate() {
                if !has_null(other) {
                    keys.insert(
                        key_parts(positions, other)
                            .map(KeyPart::into_owned)
                            .collect(),
                        index,
                    );
                }
            }
        }
        match keys.entry(key_parts(positions, row).map(KeyPart::into_owned).collect()) {
            Entry::Occupied(seen) => Some(*seen.get()),
            Entry::Vacant(slot) => {
                slot.insert(rows.len());
                None
            }
        }
    }

    pub(crate) fn new(entity: &'static Entity) -> Self {
        let table = &entity.table;
        let refuses_duplicates = table.write != WriteMode::IgnoreDuplicates;
        Self {
            entity,
            rows: Vec::new(),
            paths: Vec::new(),
            keys: HashMap::new(),
            key_positions: if refuses_duplicates {
                crate::sql::key_positions(table)
            } else {
                Vec::new()
            },
        }
    }
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
            path: String::new(),
        }
    }

    /// The change of a record found at `path` in the message: its paths, and its
    /// children's, become paths in the message.
    #[must_use]
    pub fn within(mut self, path: &str) -> Self {
        if path.is_empty() {
            return self;
        }
        self.path.insert_str(0, path);
        for group in &mut self.children {
            for row_path in &mut group.paths {
                row_path.insert_str(0, path);
            }
        }
        self
    }

    /// The root row's key, or `None` if a key column is missing or NULL (such keys never
    /// collide).
    fn key(&self) -> Option<Vec<KeyPart<'static>>> {
        crate::sql::key_positions(&self.entity.table)
            .iter()
            .map(|p| match self.values.get(*p) {
                Some(Some(Value::Null)) | Some(None) | None => None,
                Some(Some(value)) => Some(KeyPart::of(value).into_owned()),
            })
            .collect()
    }

    /// Feeds the root row's table and key to `state`: what tells two writes of one row
    /// apart from writes of different rows (see the worker's batches in flight). False,
    /// feeding nothing, when a key column is missing or NULL (such keys never collide).
    pub(crate) fn hash_key(&self, state: &mut impl std::hash::Hasher) -> bool {
        use std::hash::Hash;
        let positions = crate::sql::key_positions(&self.entity.table);
        let mut parts = Vec::with_capacity(positions.len());
        for p in positions {
            match self.values.get(p) {
                Some(Some(Value::Null)) | Some(None) | None => return false,
                Some(Some(value)) => parts.push(KeyPart::of(value)),
            }
        }
        self.entity.table.name.hash(state);
        parts.hash(state);
        true
    }

    /// Sets the version.
    #[must_use]
    pub fn with_version(mut self, version: Version) -> Self {
        self.version = Some(version);
        self
    }

    /// Adds the row of the descendant `entity` found at `path` in the body.
    ///
    /// Two rows of one table with the same key in one message would be one row in the
    /// database, the last silently replacing the first (or refused, in an `insert`
    /// table): the message is refused instead, naming both paths. Tables in
    /// `ignore_duplicates` mode keep the first row, as they do for a key that exists.
    pub fn push_child(
        &mut self,
        entity: &'static Entity,
        path: &str,
        row: Vec<Value>,
    ) -> Result<(), ParseError> {
        let at = match self
            .children
            .iter()
            .position(|c| c.entity.table.name == entity.table.name)
        {
            Some(at) => at,
            None => {
                self.children.push(ChildRows::new(entity));
                self.children.len() - 1
            }
        };
        let table = &entity.table;
        let group = &mut self.children[at];
        if let Some(earlier) = group.earlier_with_key(&row) {
            let first = group.paths[earlier].clone();
            return Err(ParseError::new(
                common_parent(&first, path),
                format!(
                    "{first} and {path} have the same key ({}): one message can hold \
                     one row per key of table {}; remove or merge the duplicates",
                    self.describe_key(entity, &row),
                    table.name
                ),
            ));
        }
        let group = &mut self.children[at];
        group.rows.push(row);
        group.paths.push(path.to_owned());
        Ok(())
    }

    /// `column = value` for the key columns of a row of the descendant `entity`, but
    /// those copied from its parent (all of them if nothing else is left).
    fn describe_key(&self, entity: &'static Entity, row: &[Value]) -> String {
        let inherited: Vec<&str> = link(self.entity, entity)
            .map(|child| child.parent_key.iter().map(|(c, _)| *c).collect())
            .unwrap_or_default();
        let table = &entity.table;
        let mut shown: Vec<&str> = (table.key.iter().copied())
            .filter(|k| !inherited.contains(k))
            .collect();
        if shown.is_empty() {
            shown = table.key.to_vec();
        }
        let parts: Vec<String> = shown
            .iter()
            .filter_map(|name| {
                let index = table.columns.iter().position(|c| c.name == *name)?;
                Some(format!("{name} = {}", row.get(index)?))
            })
            .collect();
        parts.join(", ")
    }
}

/// The changes one message asks for: its own row's, then those of the records fanned out
/// of it (`fan_out` in the spec), in body order, applied in one transaction.
#[derive(Debug, Default)]
pub struct Records {
    changes: Vec<Change>,
    /// The change of each root key so far, by table and key.
    keys: HashMap<(&'static str, Vec<KeyPart<'static>>), usize>,
}

impl Records {
    /// Adds `change`. Two records with the same key of one table in one message would
    /// be one row, the last silently replacing the first: the message is refused instead,
    /// naming both paths, as for children. Creates in an `ignore_duplicates` table keep
    /// the first, as they do for a key that exists.
    pub fn push(&mut self, change: Change) -> Result<(), ParseError> {
        // Most messages hold one change: keys are only compared once a second comes.
        if self.changes.len() == 1
            && let Some(key) = self.changes[0].key()
        {
            self.keys
                .insert((self.changes[0].entity.table.name, key), 0);
        }
        if !self.changes.is_empty()
            && let Some(key) = change.key()
        {
            let table = &change.entity.table;
            let next = self.changes.len();
            match self.keys.entry((table.name, key)) {
                Entry::Vacant(slot) => {
                    slot.insert(next);
                }
                Entry::Occupied(seen) => {
                    let first = &self.changes[*seen.get()];
                    if table.write == WriteMode::IgnoreDuplicates
                        && first.op == Op::Create
                        && change.op == Op::Create
                    {
                        return Ok(());
                    }
                    let shown: Vec<String> = (crate::sql::key_positions(table).iter())
                        .filter_map(|p| {
                            let value = change.values.get(*p)?.as_ref()?;
                            Some(format!("{} = {value}", table.columns[*p].name))
                        })
                        .collect();
                    let (a, b) = (place(&first.path), place(&change.path));
                    return Err(ParseError::new(
                        common_parent(&first.path, &change.path),
                        format!(
                            "{a} and {b} have the same key ({}): one message can hold one \
                             row per key of table {}; remove or merge the duplicates",
                            shown.join(", "),
                            table.name
                        ),
                    ));
                }
            }
        }
        self.changes.push(change);
        Ok(())
    }

    /// The changes, in the order they were added.
    pub fn into_changes(self) -> Vec<Change> {
        self.changes
    }
}

/// A root row by its path: the message's own, or a record's.
fn place(path: &str) -> String {
    if path.is_empty() {
        "the message's root row".to_owned()
    } else {
        path.to_owned()
    }
}

/// The link from `entity`'s descendants to the one whose table is `descendant`'s.
fn link(entity: &'static Entity, descendant: &Entity) -> Option<&'static Child> {
    entity.children.iter().find_map(|child| {
        if child.entity.table.name == descendant.table.name {
            Some(child)
        } else {
            link(child.entity, descendant)
        }
    })
}

/// The deepest JSON pointer above both `a` and `b` (`""`: the body).
fn common_parent(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.split('/').collect();
    let b: Vec<&str> = b.split('/').collect();
    let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    // Never a row's own path: its parent at most.
    let shared = shared.min(a.len().min(b.len()).saturating_sub(1));
    a[..shared].join("/")
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
    use crate::sql::{Column, ColumnType};

    const fn entity(name: &'static str, write: WriteMode) -> Entity {
        Entity {
            table: Table {
                name,
                columns: &[
                    Column {
                        name: "id",
                        column_type: ColumnType::I64,
                    },
                    Column {
                        name: "nomnom_seq",
                        column_type: ColumnType::I64,
                    },
                ],
                key: &["id"],
                write,
            },
            versioned: false,
            operation: false,
            children: &[],
        }
    }

    static SEEN: Entity = entity("seen", WriteMode::IgnoreDuplicates);
    static KEPT: Entity = entity("kept", WriteMode::Upsert);

    fn record(entity: &'static Entity, id: i64, path: &str) -> Change {
        Change::row(entity, Op::Create, vec![Value::I64(id)]).within(path)
    }

    #[test]
    fn records_with_one_key_keep_the_first_only_where_duplicates_are_skipped() {
        let mut records = Records::default();
        records.push(record(&KEPT, 1, "")).unwrap();
        records.push(record(&SEEN, 1, "/e/0")).unwrap();
        records.push(record(&SEEN, 1, "/e/1")).unwrap();
        records.push(record(&SEEN, 2, "/e/2")).unwrap();
        let paths: Vec<String> = records.into_changes().into_iter().map(|c| c.path).collect();
        assert_eq!(
            paths,
            ["", "/e/0", "/e/2"],
            "the second `seen` 1 is skipped"
        );

        let mut records = Records::default();
        records.push(record(&KEPT, 1, "/e/0")).unwrap();
        let err = records.push(record(&KEPT, 1, "/e/3")).unwrap_err();
        assert_eq!(err.path, "/e");
        assert!(
            err.message
                .starts_with("/e/0 and /e/3 have the same key (id = 1)"),
            "{err}"
        );
    }

    #[test]
    fn child_rows_with_one_key_are_refused_among_few_rows_and_many() {
        // Few rows are compared one by one, more through a map built on the way: both
        // find the same duplicates.
        for rows in [
            2,
            ChildRows::SCANNED_UP_TO - 1,
            ChildRows::SCANNED_UP_TO + 20,
        ] {
            let mut change = record(&KEPT, 0, "");
            for id in 0..rows as i64 {
                change
                    .push_child(&KEPT, &format!("/c/{id}"), vec![Value::I64(id)])
                    .unwrap();
                // A NULL key names no row, so it never collides.
                change
                    .push_child(&KEPT, &format!("/n/{id}"), vec![Value::Null])
                    .unwrap();
            }
            let err = (change.push_child(&KEPT, "/c/x", vec![Value::I64(1)])).unwrap_err();
            assert!(
                err.message.starts_with("/c/1 and /c/x have the same key"),
                "{rows} rows: {err}"
            );
            let last = rows as i64 - 1;
            let err = (change.push_child(&KEPT, "/c/y", vec![Value::I64(last)])).unwrap_err();
            assert!(
                err.message
                    .starts_with(&format!("/c/{last} and /c/y have the same key")),
                "{rows} rows: {err}"
            );
            change
                .push_child(&KEPT, "/c/z", vec![Value::I64(rows as i64)])
                .unwrap();
            assert_eq!(change.children[0].rows.len(), 2 * rows + 1, "{rows} rows");
        }
        let mut change = record(&KEPT, 0, "");
        for path in ["/s/0", "/s/1"] {
            change.push_child(&SEEN, path, vec![Value::I64(1)]).unwrap();
        }
    }

    #[test]
    fn a_root_row_is_hashed_by_its_table_and_key() {
        use std::hash::{DefaultHasher, Hasher};
        let hash = |change: &Change| {
            let mut hasher = DefaultHasher::new();
            change.hash_key(&mut hasher).then(|| hasher.finish())
        };
        let one = hash(&record(&KEPT, 1, "")).unwrap();
        let same_row = Change::row(&KEPT, Op::Delete, vec![Value::I64(1)]);
        assert_eq!(
            hash(&same_row),
            Some(one),
            "another operation on the same row"
        );
        assert_ne!(hash(&record(&KEPT, 2, "")), Some(one), "another key");
        assert_ne!(hash(&record(&SEEN, 1, "")), Some(one), "another table");
        let no_key = Change::row(&KEPT, Op::Create, vec![Value::Null]);
        assert_eq!(hash(&no_key), None, "a NULL key names no row");
    }

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
