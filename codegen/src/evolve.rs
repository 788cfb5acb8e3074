//! Migrations from the spec's history. A generated crate keeps the schema it was
//! generated for in `migrations/schema.toml`, with the list of its migrations. When the
//! spec changes, `nomnom generate` compares that schema with the spec's and writes one new
//! migration with the difference, for PostgreSQL and SQLite; the migrations already there
//! are never rewritten, so a database that ran them stays in step.
//!
//! Only changes that keep every stored row and every message already in the stream valid
//! are written on their own: new tables, new columns that are nullable or have a default,
//! indexes and unique keys added or dropped, strings widened, `nullable` relaxed.
//! The others (dropping, retyping, narrowing, changing a key) are refused with what to do,
//! and dropping can be forced with `--allow-destructive`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::model::{Entity, Project};
use crate::view::EntityView;

/// Where a generated crate keeps its schema and migration list.
pub const SNAPSHOT: &str = "migrations/schema.toml";

/// The snapshot's own format version.
const FORMAT: u32 = 1;

/// The schema a crate was generated for, and the migrations that build it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub format: u32,
    /// Oldest first.
    pub migrations: Vec<MigrationId>,
    pub tables: Vec<TableSchema>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationId {
    /// 14 digits, sortable: `00000000000002`.
    pub version: String,
    pub name: String,
}

impl MigrationId {
    /// Its directory under `migrations/<dialect>/`.
    pub fn dir(&self) -> String {
        format!("{}_{}", self.version, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSchema {
    pub name: String,
    pub columns: Vec<ColumnSchema>,
    pub primary_key: Vec<String>,
    #[serde(default)]
    pub unique: Vec<Vec<String>>,
    #[serde(default)]
    pub indexes: Vec<IndexSchema>,
    /// The spec's `renamed_from`: the table's old name, for the diff (not kept).
    #[serde(skip)]
    pub renamed_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSchema {
    pub name: String,
    pub postgres: String,
    pub sqlite: String,
    pub nullable: bool,
    /// The spec's `default` as JSON text (TOML has no null, which a `json` default may
    /// hold): what rows stored before the column existed get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// The spec's `renamed_from`: the column's old name, for the diff (not kept).
    #[serde(skip)]
    pub renamed_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexSchema {
    pub name: String,
    pub columns: Vec<String>,
}

/// The tables a project's entities need, from their views (which hold the SQL types).
pub fn tables(project: &Project, views: &[EntityView]) -> Vec<TableSchema> {
    project
        .entities
        .iter()
        .zip(views)
        .map(|(entity, view)| table(entity, view))
        .collect()
}

fn table(entity: &Entity, view: &EntityView) -> TableSchema {
    let mut columns: Vec<ColumnSchema> = (entity.fields.iter())
        .zip(&view.fields)
        .map(|(field, column)| ColumnSchema {
            name: column.column.clone(),
            postgres: column.postgres_type.clone(),
            sqlite: column.sqlite_type.to_owned(),
            nullable: column.nullable,
            default: (field.default.as_ref())
                .filter(|d| !d.is_null())
                .map(ToString::to_string),
            renamed_from: field.renamed_from.clone(),
        })
        .collect();
    columns.extend(view.guard.iter().map(|guard| ColumnSchema {
        name: guard.name.to_owned(),
        postgres: "BIGINT".into(),
        sqlite: "BIGINT".into(),
        nullable: false,
        default: None,
        renamed_from: None,
    }));
    TableSchema {
        renamed_from: entity.renamed_from.clone(),
        name: view.table.clone(),
        columns,
        primary_key: view.primary_key.clone(),
        unique: view.unique.clone(),
        indexes: (view.indexes.iter())
            .map(|ix| IndexSchema {
                name: ix.name.clone(),
                columns: ix.columns.clone(),
            })
            .collect(),
    }
}

/// The SQL dialects migrations are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        }
    }
}

/// One change of the schema.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    CreateTable(TableSchema),
    DropTable(TableSchema),
    /// A table renamed (`renamed_from`), its rows kept.
    RenameTable {
        from: String,
        to: String,
    },
    AddColumn {
        table: String,
        column: ColumnSchema,
    },
    DropColumn {
        table: String,
        column: ColumnSchema,
    },
    /// A column renamed (`renamed_from`), its values kept.
    RenameColumn {
        table: String,
        from: String,
        to: String,
    },
    /// A `string` column given a larger (or no) `max_length`.
    WidenColumn {
        table: String,
        from: ColumnSchema,
        to: ColumnSchema,
    },
    /// A column made nullable (SQLite rebuilds the table to get there).
    RelaxNullable {
        from: TableSchema,
        to: TableSchema,
        column: String,
    },
    CreateIndex {
        table: String,
        index: IndexSchema,
    },
    DropIndex {
        table: String,
        index: IndexSchema,
    },
    AddUnique {
        table: String,
        columns: Vec<String>,
    },
    /// Unique keys removed from a table. `from` and `to` are the table as the step finds
    /// it and leaves it, for SQLite, which rebuilds the table to drop a constraint.
    DropUnique {
        from: TableSchema,
        to: TableSchema,
        keys: Vec<Vec<String>>,
    },
}

impl Step {
    fn destructive(&self) -> bool {
        matches!(self, Step::DropTable(_) | Step::DropColumn { .. })
    }

    /// A few words for the migration's name.
    fn slug(&self) -> String {
        match self {
            Step::CreateTable(t) => format!("create_{}", t.name),
            Step::DropTable(t) => format!("drop_{}", t.name),
            Step::RenameTable { to, .. } => format!("rename_{to}"),
            Step::AddColumn { table, column } => format!("add_{table}_{}", column.name),
            Step::DropColumn { table, column } => format!("drop_{table}_{}", column.name),
            Step::RenameColumn { table, to, .. } => format!("rename_{table}_{to}"),
            Step::WidenColumn { table, to, .. } => format!("widen_{table}_{}", to.name),
            Step::RelaxNullable { to, column, .. } => format!("relax_{}_{column}", to.name),
            Step::CreateIndex { index, .. } => format!("add_{}", index.name),
            Step::DropIndex { index, .. } => format!("drop_{}", index.name),
            Step::AddUnique { table, columns } => format!("unique_{table}_{}", columns.join("_")),
            Step::DropUnique { to, keys, .. } => {
                format!("drop_unique_{}_{}", to.name, keys[0].join("_"))
            }
        }
    }
}

/// A change the schema cannot take without losing rows or breaking messages already in
/// the stream: what it is, and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub change: String,
    pub help: String,
    /// A drop, which `--allow-destructive` writes anyway.
    pub droppable: bool,
}

/// The difference between the schema a crate was generated for and the spec's.
#[derive(Debug, Default)]
pub struct Diff {
    pub steps: Vec<Step>,
    pub refused: Vec<Refusal>,
}

/// Compares `old` with `new`, table by table (in `new`'s order) and column by column.
pub fn diff(old: &[TableSchema], new: &[TableSchema]) -> Diff {
    let mut diff = Diff::default();
    let mut renamed: Vec<&str> = Vec::new();
    for table in new {
        let was = (table.renamed_from.as_deref())
            .filter(|from| !new.iter().any(|t| t.name == *from))
            .and_then(|from| old.iter().find(|t| t.name == from));
        match (old.iter().find(|t| t.name == table.name), was) {
            (Some(before), _) => diff_table(before, table, &mut diff),
            (None, Some(before)) => {
                diff.steps.push(Step::RenameTable {
                    from: before.name.clone(),
                    to: table.name.clone(),
                });
                renamed.push(&before.name);
                let before = TableSchema {
                    name: table.name.clone(),
                    ..before.clone()
                };
                diff_table(&before, table, &mut diff);
            }
            (None, None) => diff.steps.push(Step::CreateTable(table.clone())),
        }
    }
    for table in old.iter().rev() {
        if !new.iter().any(|t| t.name == table.name) && !renamed.contains(&table.name.as_str()) {
            diff.refused.push(Refusal {
                change: format!("entity table {} is gone from the spec", table.name),
                help: "its rows would be dropped: put the entity back, or pass \
                       --allow-destructive to drop the table"
                    .into(),
                droppable: true,
            });
            diff.steps.push(Step::DropTable(table.clone()));
        }
    }
    diff
}

fn diff_table(old: &TableSchema, new: &TableSchema, diff: &mut Diff) {
    let name = &new.name;
    if old.primary_key != new.primary_key {
        diff.refused.push(Refusal {
            change: format!(
                "the primary key of {name} changes from ({}) to ({})",
                old.primary_key.join(", "),
                new.primary_key.join(", ")
            ),
            help: "a key identifies stored rows and orders their messages: keep it, or \
                   create a new entity (a new table) with the new key"
                .into(),
            droppable: false,
        });
    }
    let mut relaxed = None;
    // Renames first: the later steps, and the old workers' rows, see the new name.
    let mut renamed: Vec<&str> = Vec::new();
    for column in &new.columns {
        let Some(from) = &column.renamed_from else {
            continue;
        };
        let was = old.columns.iter().any(|c| c.name == *from);
        let is = old.columns.iter().any(|c| c.name == column.name);
        if was && !is && !new.columns.iter().any(|c| c.name == *from) {
            diff.steps.push(Step::RenameColumn {
                table: name.clone(),
                from: from.clone(),
                to: column.name.clone(),
            });
            renamed.push(from);
        }
    }
    let old_column = |name: &str| {
        old.columns.iter().find(|c| c.name == name).or_else(|| {
            let from = new
                .columns
                .iter()
                .find(|c| c.name == name)?
                .renamed_from
                .as_deref()?;
            renamed
                .contains(&from)
                .then(|| old.columns.iter().find(|c| c.name == from))
                .flatten()
        })
    };
    for column in &new.columns {
        let Some(before) = old_column(&column.name) else {
            if !column.nullable && column.default.is_none() {
                diff.refused.push(Refusal {
                    change: format!(
                        "new field {name}.{} is required and has no default",
                        column.name
                    ),
                    help: "rows already stored and messages already in the stream have no \
                           value for it: make it `nullable: true` or give it a `default`"
                        .into(),
                    droppable: false,
                });
            }
            diff.steps.push(Step::AddColumn {
                table: name.clone(),
                column: column.clone(),
            });
            continue;
        };
        if before.postgres != column.postgres || before.sqlite != column.sqlite {
            if widens(&before.postgres, &column.postgres) && before.sqlite == column.sqlite {
                diff.steps.push(Step::WidenColumn {
                    table: name.clone(),
                    from: before.clone(),
                    to: column.clone(),
                });
            } else {
                diff.refused.push(Refusal {
                    change: format!(
                        "{name}.{} changes type from {} to {}",
                        column.name, before.postgres, column.postgres
                    ),
                    help: "stored values may not fit the new type: add a new field with the \
                           new type (and stop filling the old one) instead"
                        .into(),
                    droppable: false,
                });
            }
        }
        if before.nullable && !column.nullable {
            diff.refused.push(Refusal {
                change: format!("{name}.{} is no longer nullable", column.name),
                help: "rows already stored may hold NULL, and messages already in the stream \
                       may lack it: keep `nullable: true`"
                    .into(),
                droppable: false,
            });
        } else if !before.nullable && column.nullable && relaxed.is_none() {
            relaxed = Some(column.name.clone());
        }
    }
    if let Some(column) = relaxed {
        // The table as this step finds it: the old columns (the dropped ones included:
        // they go after), then the ones added before it; the old indexes and keys (the new
        // ones come after). `to` relaxes what the spec relaxes; `from` is for down.
        let mut to = old.clone();
        for c in &mut to.columns {
            // Renamed before this step.
            if let Some(now) = (new.columns.iter())
                .find(|n| n.renamed_from.as_deref() == Some(c.name.as_str()))
                .filter(|_| renamed.contains(&c.name.as_str()))
            {
                c.name = now.name.clone();
            }
            if let Some(now) = new.columns.iter().find(|n| n.name == c.name) {
                c.nullable = c.nullable || now.nullable;
            }
        }
        to.columns.extend(
            (new.columns.iter())
                .filter(|c| old_column(&c.name).is_none())
                .cloned(),
        );
        let mut from = to.clone();
        for c in &mut from.columns {
            if let Some(before) = old_column(&c.name) {
                c.nullable = before.nullable;
            }
        }
        diff.steps.push(Step::RelaxNullable { from, to, column });
    }
    for column in &old.columns {
        if !new.columns.iter().any(|c| c.name == column.name)
            && !renamed.contains(&column.name.as_str())
        {
            diff.refused.push(Refusal {
                change: format!("field {name}.{} is gone from the spec", column.name),
                help: "its values would be dropped: put the field back (it can be nullable \
                       and left empty), or pass --allow-destructive to drop the column"
                    .into(),
                droppable: true,
            });
            diff.steps.push(Step::DropColumn {
                table: name.clone(),
                column: column.clone(),
            });
        }
    }
    for index in &new.indexes {
        if !old.indexes.contains(index) {
            diff.steps.push(Step::CreateIndex {
                table: name.clone(),
                index: index.clone(),
            });
        }
    }
    for index in &old.indexes {
        if !new.indexes.contains(index) {
            diff.steps.push(Step::DropIndex {
                table: name.clone(),
                index: index.clone(),
            });
        }
    }
    for columns in &new.unique {
        if !old.unique.contains(columns) {
            diff.steps.push(Step::AddUnique {
                table: name.clone(),
                columns: columns.clone(),
            });
        }
    }
    let dropped: Vec<Vec<String>> = (old.unique.iter())
        .filter(|key| !new.unique.contains(key))
        .cloned()
        .collect();
    if !dropped.is_empty() {
        // The table as its other steps leave it: the old columns (renamed as the spec now
        // names them, the dropped ones gone) in their order, then the added ones.
        let mut columns: Vec<ColumnSchema> = Vec::new();
        for column in &old.columns {
            let now = (new.columns.iter())
                .find(|n| {
                    n.renamed_from.as_deref() == Some(column.name.as_str())
                        && renamed.contains(&column.name.as_str())
                })
                .or_else(|| new.columns.iter().find(|n| n.name == column.name));
            columns.extend(now.cloned());
        }
        for column in &new.columns {
            if !columns.iter().any(|c| c.name == column.name) {
                columns.push(column.clone());
            }
        }
        let to = TableSchema {
            columns,
            ..new.clone()
        };
        let mut from = to.clone();
        from.unique.extend(dropped.iter().cloned());
        diff.steps.push(Step::DropUnique {
            from,
            to,
            keys: dropped,
        });
    }
}

/// Whether PostgreSQL type `to` holds every value of `from` as it is: a longer
/// `VARCHAR`, or `TEXT` for a `VARCHAR`.
fn widens(from: &str, to: &str) -> bool {
    let length = |t: &str| {
        t.strip_prefix("VARCHAR(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|n| n.parse::<u32>().ok())
    };
    match (length(from), length(to), to) {
        (Some(a), Some(b), _) => b > a,
        (Some(_), None, "TEXT") => true,
        _ => false,
    }
}

/// A migration's SQL, up and down, for one dialect.
#[derive(Debug)]
pub struct MigrationSql {
    pub up: String,
    pub down: String,
}

/// The first migration of a crate: every table.
pub fn create_all(project: &str, tables: &[TableSchema], dialect: Dialect) -> MigrationSql {
    let mut up = format!(
        "-- Tables of the {project} entities ({}).\n",
        dialect.name()
    );
    for table in tables {
        up.push('\n');
        up.push_str(&create_table(table, &table.name, dialect));
        up.push_str(&create_indexes(table, &table.name));
    }
    up.push('\n');
    let mut down = String::new();
    for table in tables.iter().rev() {
        let _ = writeln!(down, "DROP TABLE IF EXISTS \"{}\";", table.name);
    }
    down.push('\n');
    MigrationSql { up, down }
}

/// A later migration: `steps`, in order; down undoes them in reverse.
pub fn steps_sql(steps: &[Step], dialect: Dialect) -> MigrationSql {
    let mut up = String::new();
    let mut down = Vec::new();
    for step in steps {
        if step.destructive() {
            up.push_str(
                "-- DESTRUCTIVE (written with --allow-destructive): the next statement drops \
                 stored data for good.\n",
            );
        }
        let (forward, backward) = step_sql(step, dialect);
        up.push_str(&forward);
        down.push(backward);
    }
    down.reverse();
    MigrationSql {
        up,
        down: down.concat(),
    }
}

fn step_sql(step: &Step, dialect: Dialect) -> (String, String) {
    match step {
        Step::CreateTable(table) => (
            create_table(table, &table.name, dialect) + &create_indexes(table, &table.name),
            format!("DROP TABLE IF EXISTS \"{}\";\n", table.name),
        ),
        Step::DropTable(table) => (
            format!("DROP TABLE IF EXISTS \"{}\";\n", table.name),
            create_table(table, &table.name, dialect) + &create_indexes(table, &table.name),
        ),
        Step::RenameTable { from, to } => (
            format!("ALTER TABLE \"{from}\" RENAME TO \"{to}\";\n"),
            format!("ALTER TABLE \"{to}\" RENAME TO \"{from}\";\n"),
        ),
        Step::AddColumn { table, column } => (
            format!(
                "ALTER TABLE \"{table}\" ADD COLUMN {};\n",
                column_sql(column, dialect, true)
            ),
            format!("ALTER TABLE \"{table}\" DROP COLUMN \"{}\";\n", column.name),
        ),
        Step::DropColumn { table, column } => (
            format!("ALTER TABLE \"{table}\" DROP COLUMN \"{}\";\n", column.name),
            format!(
                "ALTER TABLE \"{table}\" ADD COLUMN {};\n",
                column_sql(
                    &ColumnSchema {
                        nullable: true,
                        ..column.clone()
                    },
                    dialect,
                    false
                )
            ),
        ),
        Step::RenameColumn { table, from, to } => (
            format!("ALTER TABLE \"{table}\" RENAME COLUMN \"{from}\" TO \"{to}\";\n"),
            format!("ALTER TABLE \"{table}\" RENAME COLUMN \"{to}\" TO \"{from}\";\n"),
        ),
        Step::WidenColumn { table, from, to } => match dialect {
            Dialect::Postgres => (
                format!(
                    "ALTER TABLE \"{table}\" ALTER COLUMN \"{}\" TYPE {};\n",
                    to.name, to.postgres
                ),
                format!(
                    "ALTER TABLE \"{table}\" ALTER COLUMN \"{}\" TYPE {};\n",
                    from.name, from.postgres
                ),
            ),
            // SQLite stores any length in TEXT: the parser checks `max_length`.
            Dialect::Sqlite => (
                format!(
                    "-- {table}.{}: {} in SQLite, nothing to change.\n",
                    to.name, to.sqlite
                ),
                String::new(),
            ),
        },
        Step::RelaxNullable { from, to, column } => match dialect {
            Dialect::Postgres => (
                format!(
                    "ALTER TABLE \"{}\" ALTER COLUMN \"{column}\" DROP NOT NULL;\n",
                    to.name
                ),
                format!(
                    "ALTER TABLE \"{}\" ALTER COLUMN \"{column}\" SET NOT NULL;\n",
                    to.name
                ),
            ),
            Dialect::Sqlite => (rebuild(to), rebuild(from)),
        },
        Step::CreateIndex { table, index } => (
            create_index(table, index),
            format!("DROP INDEX IF EXISTS \"{}\";\n", index.name),
        ),
        Step::DropIndex { table, index } => (
            format!("DROP INDEX IF EXISTS \"{}\";\n", index.name),
            create_index(table, index),
        ),
        Step::DropUnique { from, to, keys } => match dialect {
            Dialect::Postgres => {
                let mut up = String::new();
                let mut down = String::new();
                for key in keys {
                    up.push_str(&drop_unique_postgres(&to.name, key));
                    down.push_str(&create_unique_index(&to.name, key));
                }
                (up, down)
            }
            Dialect::Sqlite => (rebuild(to), rebuild(from)),
        },
        Step::AddUnique { table, columns } => (
            create_unique_index(table, columns),
            format!(
                "DROP INDEX IF EXISTS \"{}\";\n",
                unique_index_name(table, columns)
            ),
        ),
    }
}

/// SQLite cannot change a column in place: its documented procedure builds the new table
/// beside the old, copies the rows, drops the old and renames the new (in the migration's
/// transaction), then recreates the indexes.
fn rebuild(table: &TableSchema) -> String {
    let name = &table.name;
    let temporary = format!("{name}__nomnom_rebuild");
    let columns = quoted(
        &table
            .columns
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>(),
    );
    let mut sql = format!("-- {name}: SQLite rebuilds the table to change a column.\n");
    sql.push_str(&create_table(table, &temporary, Dialect::Sqlite));
    let _ = writeln!(
        sql,
        "INSERT INTO \"{temporary}\" ({columns}) SELECT {columns} FROM \"{name}\";"
    );
    let _ = writeln!(sql, "DROP TABLE \"{name}\";");
    let _ = writeln!(sql, "ALTER TABLE \"{temporary}\" RENAME TO \"{name}\";");
    sql.push_str(&create_indexes(table, name));
    sql
}

fn quoted(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    quoted.join(", ")
}

/// A column's definition; with its default only where rows exist already (`ADD COLUMN`):
/// the parser fills defaults of new rows.
fn column_sql(column: &ColumnSchema, dialect: Dialect, with_default: bool) -> String {
    let ty = match dialect {
        Dialect::Postgres => &column.postgres,
        Dialect::Sqlite => &column.sqlite,
    };
    let mut sql = format!("\"{}\" {ty}", column.name);
    if !column.nullable {
        sql.push_str(" NOT NULL");
    }
    if let Some(default) = column.default.as_ref().filter(|_| with_default) {
        let _ = write!(sql, " DEFAULT {}", default_sql(default, column, dialect));
    }
    sql
}

/// The spec's default as an SQL literal of the column's type.
fn default_sql(json: &str, column: &ColumnSchema, dialect: Dialect) -> String {
    let text = |s: &str| format!("'{}'", s.replace('\'', "''"));
    if column.postgres == "JSONB" {
        return text(json);
    }
    match serde_json::from_str(json) {
        Ok(serde_json::Value::Bool(b)) => match dialect {
            Dialect::Postgres => if b { "TRUE" } else { "FALSE" }.to_owned(),
            Dialect::Sqlite => if b { "1" } else { "0" }.to_owned(),
        },
        Ok(serde_json::Value::Number(n)) => n.to_string(),
        Ok(serde_json::Value::String(s)) => text(&s),
        _ => text(json),
    }
}

/// `CREATE TABLE` of `table` under `name`, as the first migration writes it.
fn create_table(table: &TableSchema, name: &str, dialect: Dialect) -> String {
    let mut sql = format!("CREATE TABLE IF NOT EXISTS \"{name}\" (\n");
    for column in &table.columns {
        let _ = writeln!(sql, "    {},", column_sql(column, dialect, false));
    }
    let _ = write!(sql, "    PRIMARY KEY ({})", quoted(&table.primary_key));
    for unique in &table.unique {
        let _ = write!(sql, ",\n    UNIQUE ({})", quoted(unique));
    }
    sql.push_str("\n);\n");
    sql
}

fn create_indexes(table: &TableSchema, name: &str) -> String {
    table
        .indexes
        .iter()
        .map(|index| create_index(name, index))
        .collect()
}

fn create_index(table: &str, index: &IndexSchema) -> String {
    format!(
        "CREATE INDEX IF NOT EXISTS \"{}\" ON \"{table}\" ({});\n",
        index.name,
        quoted(&index.columns)
    )
}

/// PostgreSQL: drops the unique key on `key`'s columns, whether a table's first migration
/// made it (a constraint PostgreSQL named) or a later one (a unique index, which keeps its
/// old table's name when the table is renamed): both are found by their columns.
fn drop_unique_postgres(table: &str, key: &[String]) -> String {
    let literal = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let relation = literal(&format!("\"{table}\""));
    let columns: Vec<String> = key.iter().map(|c| literal(c)).collect();
    let columns = columns.join(", ");
    let table = literal(table);
    format!(
        "DO $$
DECLARE
    key SMALLINT[] := ARRAY(
        SELECT a.attnum FROM unnest(ARRAY[{columns}]) WITH ORDINALITY AS k(name, position)
        JOIN pg_attribute a ON a.attrelid = {relation}::regclass AND a.attname = k.name
        ORDER BY k.position);
    found TEXT;
BEGIN
    FOR found IN SELECT conname FROM pg_constraint
                 WHERE conrelid = {relation}::regclass AND contype = 'u' AND conkey = key LOOP
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', {table}, found);
    END LOOP;
    FOR found IN SELECT indexrelid::regclass::TEXT FROM pg_index
                 WHERE indrelid = {relation}::regclass AND indisunique AND NOT indisprimary
                   AND indkey::TEXT = array_to_string(key, ' ') LOOP
        EXECUTE 'DROP INDEX ' || found;
    END LOOP;
END $$;
"
    )
}

fn create_unique_index(table: &str, key: &[String]) -> String {
    format!(
        "CREATE UNIQUE INDEX IF NOT EXISTS \"{}\" ON \"{table}\" ({});\n",
        unique_index_name(table, key),
        quoted(key)
    )
}

/// The name of a unique index added after the table was created.
fn unique_index_name(table: &str, columns: &[String]) -> String {
    crate::view::index_name("ux", table, columns)
}

/// The next migration after `previous`: its version and a name from its steps.
pub fn next_migration(previous: &[MigrationId], steps: &[Step]) -> MigrationId {
    let last = previous
        .last()
        .and_then(|m| m.version.parse::<u64>().ok())
        .unwrap_or(0);
    let mut name = steps
        .first()
        .map_or_else(|| "change".to_owned(), Step::slug);
    if steps.len() > 1 {
        let _ = write!(name, "_and_{}_more", steps.len() - 1);
    }
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    MigrationId {
        version: format!("{:014}", last + 1),
        name,
    }
}

impl Snapshot {
    pub fn new(migrations: Vec<MigrationId>, tables: Vec<TableSchema>) -> Self {
        Self {
            format: FORMAT,
            migrations,
            tables,
        }
    }

    /// The snapshot's text, as `migrations/schema.toml` holds it (after its header).
    pub fn to_text(&self) -> String {
        toml::to_string_pretty(self).expect("a snapshot serializes")
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let snapshot: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        if snapshot.format != FORMAT {
            return Err(format!(
                "format {} is not one this nomnom reads ({FORMAT})",
                snapshot.format
            ));
        }
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_defaults_with_nulls_round_trip_through_the_snapshot() {
        let column = ColumnSchema {
            name: "extra".into(),
            postgres: "JSONB".into(),
            sqlite: "TEXT".into(),
            nullable: false,
            default: Some(r#"{"a":null,"b":[1,null]}"#.into()),
            renamed_from: None,
        };
        let table = TableSchema {
            name: "t".into(),
            columns: vec![column.clone()],
            primary_key: vec!["extra".into()],
            unique: Vec::new(),
            indexes: Vec::new(),
            renamed_from: None,
        };
        let snapshot = Snapshot::new(Vec::new(), vec![table]);
        assert_eq!(Snapshot::parse(&snapshot.to_text()), Ok(snapshot));
        assert_eq!(
            default_sql(
                column.default.as_deref().unwrap(),
                &column,
                Dialect::Postgres
            ),
            r#"'{"a":null,"b":[1,null]}'"#
        );
        let flag = ColumnSchema {
            postgres: "BOOLEAN".into(),
            default: Some("false".into()),
            ..column.clone()
        };
        assert_eq!(default_sql("false", &flag, Dialect::Sqlite), "0");
        let text = ColumnSchema {
            postgres: "TEXT".into(),
            ..column
        };
        assert_eq!(
            default_sql(r#""it's""#, &text, Dialect::Postgres),
            "'it''s'"
        );
    }

    #[test]
    fn varchar_widens_to_longer_or_text_only() {
        assert!(widens("VARCHAR(15)", "VARCHAR(40)"));
        assert!(widens("VARCHAR(15)", "TEXT"));
        assert!(!widens("VARCHAR(40)", "VARCHAR(15)"));
        assert!(!widens("TEXT", "VARCHAR(15)"));
        assert!(!widens("INTEGER", "BIGINT"));
    }
}
