//! What a dead-lettered message says when the database refused its rows. A unique
//! violation names the table, the constraint, the key values and the JSON path of the
//! row: "duplicate key value violates unique constraint issue_label_pkey" alone does not
//! say which of a message's rows, or which key.

use diesel::{
    QueryableByName,
    result::{DatabaseErrorInformation, DatabaseErrorKind, Error},
    sql_types::BigInt,
};

use crate::change::{Change, Entity};
use crate::db::DatabaseKind;
use crate::sql::{self, AnyConnection, ColumnType, Value, quote};

/// Why the database refused the rows of a message's `changes`, for its dead letter and
/// status row. Reads the database to find the row of a unique violation (outside any
/// transaction).
pub(super) fn explain(conn: &mut AnyConnection, changes: &[Change], err: &Error) -> String {
    let Error::DatabaseError(kind, info) = err else {
        return err.to_string();
    };
    match (kind, info.details()) {
        (DatabaseErrorKind::UniqueViolation, _) => {}
        // PostgreSQL's detail names the key: `Key (a)=(1) is not present in table "t".`
        (DatabaseErrorKind::ForeignKeyViolation, Some(detail)) => {
            return format!("{err} ({detail})");
        }
        _ => return err.to_string(),
    }
    match Violation::parse(info.as_ref()) {
        Some(violation) => violation.explain(conn, changes),
        None => err.to_string(),
    }
}

/// A unique violation as the database reports it.
#[derive(Debug, PartialEq)]
struct Violation {
    table: String,
    constraint: Option<String>,
    columns: Vec<String>,
    /// The values as PostgreSQL writes them in its detail (`1, 2`); SQLite gives none.
    values: Option<String>,
}

impl Violation {
    /// PostgreSQL: the table and constraint, and `Key (a, b)=(1, 2) already exists.` as
    /// the detail. SQLite: `UNIQUE constraint failed: t.a, t.b` as the message.
    fn parse(info: &dyn DatabaseErrorInformation) -> Option<Self> {
        if let Some(detail) = info.details() {
            let (columns, values) = detail
                .strip_prefix("Key (")?
                .strip_suffix(") already exists.")?
                .split_once(")=(")?;
            return Some(Self {
                table: info.table_name()?.to_owned(),
                constraint: info.constraint_name().map(str::to_owned),
                columns: columns
                    .split(", ")
                    .map(|c| c.trim_matches('"').to_owned())
                    .collect(),
                values: Some(values.to_owned()),
            });
        }
        let columns = info.message().strip_prefix("UNIQUE constraint failed: ")?;
        let mut table = None;
        let mut names = Vec::new();
        for qualified in columns.split(", ") {
            let (t, column) = qualified.split_once('.')?;
            table.get_or_insert(t);
            names.push(column.to_owned());
        }
        Some(Self {
            table: table?.to_owned(),
            constraint: None,
            columns: names,
            values: None,
        })
    }

    fn explain(&self, conn: &mut AnyConnection, changes: &[Change]) -> String {
        let columns = self.columns.join(", ");
        let found = self.locate(conn, changes);
        let values = match (&found, &self.values) {
            (Some(found), _) => found.values.clone(),
            (None, Some(values)) => values.clone(),
            (None, None) => String::new(),
        };
        let mut text = if values.is_empty() {
            format!("duplicate key ({columns}) in table {}", self.table)
        } else {
            format!(
                "duplicate key ({columns}) = ({values}) in table {}",
                self.table
            )
        };
        if let Some(constraint) = &self.constraint {
            text.push_str(&format!(", unique constraint {constraint}"));
        }
        if let Some(found) = &found {
            text.push_str(": ");
            text.push_str(&found.place);
        }
        let is_key = entity_of(changes, &self.table).is_some_and(|e| {
            e.table.key.len() == self.columns.len()
                && (e.table.key.iter()).all(|k| self.columns.iter().any(|c| c == k))
        });
        text.push_str(if is_key {
            "; to replace or skip rows whose key exists, give the entity `write: upsert` \
             or `write: ignore_duplicates`"
        } else {
            "; these columns must be unique in the table: send rows whose values differ"
        });
        text
    }

    /// The row of `changes` the database refused: two of its rows with the same values,
    /// else the first whose values a stored row has, else the only candidate.
    fn locate(&self, conn: &mut AnyConnection, changes: &[Change]) -> Option<Found> {
        let entity = entity_of(changes, &self.table)?;
        let positions: Vec<usize> = (self.columns.iter())
            .map(|c| entity.table.columns.iter().position(|col| col.name == c))
            .collect::<Option<_>>()?;
        let mut candidates: Vec<(&str, Vec<Value>)> = Vec::new();
        for change in changes {
            if change.entity.table.name == self.table
                && let Some(values) = positions
                    .iter()
                    .map(|p| change.values.get(*p).cloned().flatten())
                    .collect::<Option<Vec<Value>>>()
            {
                candidates.push((change.path.as_str(), values));
            }
            for group in &change.children {
                if group.entity.table.name != self.table {
                    continue;
                }
                for (row, path) in group.rows.iter().zip(&group.paths) {
                    let values = positions.iter().map(|p| row[*p].clone()).collect();
                    candidates.push((path.as_str(), values));
                }
            }
        }
        let show = |values: &[Value]| {
            let shown: Vec<String> = values.iter().map(ToString::to_string).collect();
            shown.join(", ")
        };
        for (i, (first, values)) in candidates.iter().enumerate() {
            if let Some((second, _)) = candidates[i + 1..].iter().find(|(_, v)| v == values) {
                return Some(Found {
                    values: show(values),
                    place: format!(
                        "{} and {} have the same values",
                        place(first),
                        place(second)
                    ),
                });
            }
        }
        let types: Vec<ColumnType> = (positions.iter())
            .map(|p| entity.table.columns[*p].column_type)
            .collect();
        for (path, values) in &candidates {
            if stored(conn, &self.table, &self.columns, &types, values) {
                return Some(Found {
                    values: show(values),
                    place: format!("{} has the key of a stored row", place(path)),
                });
            }
        }
        match candidates.as_slice() {
            [(path, values)] => Some(Found {
                values: show(values),
                place: place(path),
            }),
            _ => None,
        }
    }
}

/// The entity of `changes` (a root's, or a child's with rows) whose table is `table`.
fn entity_of(changes: &[Change], table: &str) -> Option<&'static Entity> {
    changes
        .iter()
        .flat_map(|change| {
            std::iter::once(change.entity).chain(change.children.iter().map(|c| c.entity))
        })
        .find(|e| e.table.name == table)
}

/// The refused row of a message.
struct Found {
    values: String,
    /// Where it is in the body, and why it collides.
    place: String,
}

/// A row by its JSON path.
fn place(path: &str) -> String {
    if path.is_empty() {
        "the message's root row".to_owned()
    } else {
        format!("the row at {path}")
    }
}

/// Whether `table` has a row with `values` in `columns`. False if the query fails: it
/// only adds to an error message.
fn stored(
    conn: &mut AnyConnection,
    table: &str,
    columns: &[String],
    types: &[ColumnType],
    values: &[Value],
) -> bool {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let sql = |kind: DatabaseKind| {
        let conditions: Vec<String> = (columns.iter().zip(types).enumerate())
            .map(|(i, (c, t))| format!("{} = {}", quote(c), sql::placeholder(kind, i + 1, *t)))
            .collect();
        format!(
            "SELECT count(*) AS n FROM {} WHERE {}",
            quote(table),
            conditions.join(" AND ")
        )
    };
    let binds: Vec<(ColumnType, &Value)> = types.iter().copied().zip(values).collect();
    sql::load::<Count>(conn, sql, &binds).is_ok_and(|rows| rows.first().is_some_and(|c| c.n > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Info {
        message: &'static str,
        details: Option<&'static str>,
        table: Option<&'static str>,
        constraint: Option<&'static str>,
    }

    impl DatabaseErrorInformation for Info {
        fn message(&self) -> &str {
            self.message
        }
        fn details(&self) -> Option<&str> {
            self.details
        }
        fn hint(&self) -> Option<&str> {
            None
        }
        fn table_name(&self) -> Option<&str> {
            self.table
        }
        fn column_name(&self) -> Option<&str> {
            None
        }
        fn constraint_name(&self) -> Option<&str> {
            self.constraint
        }
        fn statement_position(&self) -> Option<i32> {
            None
        }
    }

    #[test]
    fn violations_are_read_from_both_databases_reports() {
        let postgres = Info {
            message: "duplicate key value violates unique constraint \"issue_label_pkey\"",
            details: Some("Key (issue_id, \"order\")=(1, 2) already exists."),
            table: Some("issue_label"),
            constraint: Some("issue_label_pkey"),
        };
        assert_eq!(
            Violation::parse(&postgres),
            Some(Violation {
                table: "issue_label".into(),
                constraint: Some("issue_label_pkey".into()),
                columns: vec!["issue_id".into(), "order".into()],
                values: Some("1, 2".into()),
            })
        );
        let sqlite = Info {
            message: "UNIQUE constraint failed: issue_label.issue_id, issue_label.label",
            details: None,
            table: None,
            constraint: None,
        };
        assert_eq!(
            Violation::parse(&sqlite),
            Some(Violation {
                table: "issue_label".into(),
                constraint: None,
                columns: vec!["issue_id".into(), "label".into()],
                values: None,
            })
        );
        let index = Info {
            message: "UNIQUE constraint failed: index 'by_lower_name'",
            ..sqlite
        };
        assert_eq!(Violation::parse(&index), None);
    }
}
