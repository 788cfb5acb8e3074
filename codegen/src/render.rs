//! Stage 4: renders the model into files, in memory. Rust computes every fragment that
//! depends on types (Rust types, parse expressions, SQL types); the Tera templates in
//! `templates/worker/` only lay them out. Rust output is formatted with rustfmt.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use serde::Serialize;
use tera::{Context, Tera};

use crate::model::{Entity, Field, FieldType, OperationKind, Project, WriteMode};

/// Which databases the generated crate gets migrations for.
#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn docker_context_holds_crate_and_runtime() {
        let path = |p: &str| RuntimeDependency::Path(p.into());
        assert_eq!(
            docker_context(Path::new("examples/tpch/worker"), &path("../../../runtime")),
            ("../../..".into(), "examples/tpch/worker".into())
        );
        assert_eq!(
            docker_context(Path::new("worker"), &path("../nomnom/runtime")),
            (".".into(), ".".into()),
            "a runtime beside, not above: no shared context can be derived"
        );
        assert_eq!(
            docker_context(
                Path::new("worker"),
                &RuntimeDependency::Version("0.1.0".into())
            ),
            (".".into(), ".".into())
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Databases {
    Postgres,
    Sqlite,
    Both,
}

/// How the generated Cargo.toml refers to nomnom-runtime.
#[derive(Debug, Clone)]
pub enum RuntimeDependency {
    /// `path = "…"` (relative to the generated crate).
    Path(String),
    /// `version = "…"` from crates.io.
    Version(String),
}

#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub databases: Databases,
    pub runtime: RuntimeDependency,
    /// Spec file name, for the generated header.
    pub spec_name: String,
    /// Where the crate is written, for the Docker build context of a path runtime.
    pub output: std::path::PathBuf,
}

/// The Docker build context: with a path runtime, the directory holding both the crate
/// and the runtime (the runtime's parent); else the crate itself. Returns (context as
/// seen from the crate, crate as seen from the context).
fn docker_context(output: &std::path::Path, runtime: &RuntimeDependency) -> (String, String) {
    use std::path::Component;
    let RuntimeDependency::Path(runtime_path) = runtime else {
        return (".".into(), ".".into());
    };
    let runtime_path = std::path::Path::new(runtime_path);
    if runtime_path.is_absolute() || output.is_absolute() {
        return (".".into(), ".".into());
    }
    // Lexically: the context is the runtime's parent, `up` directories above the crate;
    // the crate sits in the context under the last `up` components of its own path.
    let parts: Vec<String> = output
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let mut up = 0usize;
    let parent = runtime_path.parent().unwrap_or(std::path::Path::new(""));
    for component in parent.components() {
        match component {
            Component::ParentDir => up += 1,
            Component::CurDir => {}
            _ => return (".".into(), ".".into()),
        }
    }
    if up > parts.len() {
        return (".".into(), ".".into());
    }
    let down = parts[parts.len() - up..].to_vec();
    let context = if up == 0 {
        ".".to_owned()
    } else {
        vec![".."; up].join("/")
    };
    let crate_dir = if down.is_empty() {
        ".".to_owned()
    } else {
        down.join("/")
    };
    (context, crate_dir)
}

/// Why rendering failed (a bug in nomnom, or rustfmt missing).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {name} failed: {message}")]
    Template { name: String, message: String },
    #[error("rustfmt is not available ({0}); install it with `rustup component add rustfmt`")]
    RustfmtMissing(String),
    #[error("rustfmt rejected generated {file} (a nomnom bug, please report it): {message}")]
    Rustfmt { file: String, message: String },
}

/// Generated files: relative path → contents, in a stable order.
pub type Files = BTreeMap<String, String>;

macro_rules! templates {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../templates/worker/", $name)))),*]
    };
}

/// Every template, by name.
const TEMPLATES: &[(&str, &str)] = templates![
    "Cargo.toml.tera",
    "README.md.tera",
    "Dockerfile.tera",
    "Dockerfile.dockerignore.tera",
    "docker-compose.nats.yml.tera",
    "main.rs.tera",
    "lib.rs.tera",
    "model.rs.tera",
    "parser.rs.tera",
    "schema.rs.tera",
    "database.rs.tera",
    "up.sql.tera",
    "down.sql.tera",
];

/// One field, with everything the templates need.
#[derive(Debug, Clone, Serialize)]
struct FieldView {
    name: String,
    doc: Option<String>,
    rust_type: String,
    /// Expression (in parser scope: `body`, `path`, `parent`) producing the value.
    parse: String,
    /// Expression producing `nomnom_runtime::sql::Value` from `self.<name>`.
    to_value: String,
    /// The same from a reference `x` to a non-null value.
    value_of_x: String,
    column_type: &'static str,
    postgres_type: String,
    sqlite_type: String,
    diesel_type: String,
    /// The column's Rust name in the Diesel schema (see [`diesel_names`]).
    diesel_name: String,
    nullable: bool,
    /// Statics the parse expression uses (regexes, defaults).
    statics: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ChildView {
    name: String,
    type_name: String,
    tokens: Vec<String>,
    source: String,
}

#[derive(Debug, Serialize)]
struct EntityView {
    name: String,
    type_name: String,
    const_name: String,
    table: String,
    doc: Option<String>,
    route: Option<String>,
    fields: Vec<FieldView>,
    /// The key fields, in key order (what a delete reads).
    key_fields: Vec<FieldView>,
    key: Vec<String>,
    primary_key: Vec<String>,
    /// The table's Rust name in the Diesel schema, and its primary key there.
    diesel_table: String,
    diesel_primary_key: Vec<String>,
    unique: Vec<Vec<String>>,
    indexes: Vec<(String, Vec<String>)>,
    write_mode: &'static str,
    children: Vec<ChildView>,
    /// Child fields filled from the parent: (child field, parent field).
    parent_keys: Vec<(String, String)>,
    parent: Option<String>,
    parent_type: Option<String>,
    has_operation: bool,
    /// Whether a description becomes a doc attribute of the model.
    has_docs: bool,
    /// Whether any field is read from the body (not all from the parent).
    reads_body: bool,
    operation_tokens: Vec<String>,
    operation_create: Vec<String>,
    operation_upsert: Vec<String>,
    operation_delete: Vec<String>,
    operation_default: &'static str,
}

/// A Rust string literal for arbitrary text.
fn rust_string(text: &str) -> String {
    format!("{text:?}")
}

/// Doc text that can neither break out of its attribute nor become a doctest.
fn doc_text(text: &Option<String>) -> Option<String> {
    text.as_ref()
        // A blank description made `#[doc = " "]`, which clippy's empty_docs refuses
        // under -D warnings (found by tests/fuzz.rs): no doc at all instead.
        .filter(|t| !t.trim().is_empty())
        .map(|t| rust_string(&format!(" {}", t.replace("```", "'''"))))
}

/// A TOML basic string for arbitrary text. Not JSON's encoding (which the template
/// used): JSON leaves DEL (U+007F) raw, and TOML forbids it in strings, so a description
/// holding one made a Cargo.toml that cargo refuses (found by tests/fuzz.rs).
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn tokens_literal(tokens: &[String]) -> String {
    let parts: Vec<String> = tokens.iter().map(|t| rust_string(t)).collect();
    format!("&[{}]", parts.join(", "))
}

fn bounds(field: &Field) -> String {
    let f = |v: Option<f64>| v.map_or("None".to_owned(), |v| format!("Some({v:?})"));
    format!(
        "p::Bounds {{ min: {}, max: {} }}",
        f(field.checks.min),
        f(field.checks.max)
    )
}

fn field_view(entity: &Entity, field: &Field) -> FieldView {
    let mut statics = Vec::new();
    let static_prefix = format!(
        "{}_{}",
        entity.name.to_uppercase(),
        field.name.to_uppercase()
    );
    let (base_type, convert, to_value, column_type, pg, lite, diesel): (
        &str,
        String,
        String,
        &str,
        String,
        &str,
        &str,
    ) = match field.field_type {
        FieldType::String { .. } | FieldType::Text => {
            let pattern = field.checks.pattern.as_ref().map(|pattern| {
                    let name = format!("{static_prefix}_PATTERN");
                    statics.push(format!(
                        "static {name}: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| regex::Regex::new({}).expect(\"validated by nomnom\"));",
                        rust_string(pattern)
                    ));
                    format!("Some(&{name})")
                });
            let allowed: Vec<String> = field
                .checks
                .allowed
                .iter()
                .map(|a| rust_string(a))
                .collect();
            let opt = |v: Option<u32>| v.map_or("None".to_owned(), |v| format!("Some({v})"));
            let max = match field.field_type {
                FieldType::String { max_length } => max_length.or(field.checks.max_length),
                _ => field.checks.max_length,
            };
            (
                "String",
                format!(
                    "p::text(v, at, p::TextRules {{ min_length: {}, max_length: {}, pattern: {}, allowed: &[{}] }})",
                    opt(field.checks.min_length),
                    opt(max),
                    pattern.unwrap_or_else(|| "None".into()),
                    allowed.join(", ")
                ),
                "Value::Text(x.clone())".into(),
                "Text",
                match field.field_type {
                    FieldType::String {
                        max_length: Some(n),
                    } => format!("VARCHAR({n})"),
                    _ => "TEXT".into(),
                },
                "TEXT",
                match field.field_type {
                    FieldType::String {
                        max_length: Some(_),
                    } => "Varchar",
                    _ => "Text",
                },
            )
        }
        FieldType::Bool => (
            "bool",
            "p::boolean(v, at)".into(),
            "Value::Bool(*x)".into(),
            "Bool",
            "BOOLEAN".into(),
            "BOOLEAN",
            "Bool",
        ),
        FieldType::I16 => (
            "i16",
            format!("p::integer::<i16>(v, at, {})", bounds(field)),
            "Value::I16(*x)".into(),
            "I16",
            "SMALLINT".into(),
            "INTEGER",
            "Int2",
        ),
        FieldType::I32 => (
            "i32",
            format!("p::integer::<i32>(v, at, {})", bounds(field)),
            "Value::I32(*x)".into(),
            "I32",
            "INTEGER".into(),
            "INTEGER",
            "Int4",
        ),
        FieldType::I64 => (
            "i64",
            format!("p::integer::<i64>(v, at, {})", bounds(field)),
            "Value::I64(*x)".into(),
            "I64",
            "BIGINT".into(),
            "INTEGER",
            "Int8",
        ),
        FieldType::F32 => (
            "f32",
            format!("p::float32(v, at, {})", bounds(field)),
            "Value::F32(*x)".into(),
            "F32",
            "REAL".into(),
            "REAL",
            "Float4",
        ),
        FieldType::F64 => (
            "f64",
            format!("p::float(v, at, {})", bounds(field)),
            "Value::F64(*x)".into(),
            "F64",
            "DOUBLE PRECISION".into(),
            "REAL",
            "Float8",
        ),
        FieldType::Decimal { precision, scale } => (
            "String",
            format!("p::decimal(v, at, {precision}, {scale}, {})", bounds(field)),
            "Value::Text(x.clone())".into(),
            "Decimal",
            format!("NUMERIC({precision}, {scale})"),
            "TEXT",
            "Numeric",
        ),
        FieldType::Date => (
            "chrono::NaiveDate",
            "p::date(v, at)".into(),
            "Value::Text(x.to_string())".into(),
            "Date",
            "DATE".into(),
            "TEXT",
            "Date",
        ),
        FieldType::Time => (
            "chrono::NaiveTime",
            "p::time(v, at)".into(),
            "Value::Text(x.format(\"%H:%M:%S%.f\").to_string())".into(),
            "Time",
            "TIME".into(),
            "TEXT",
            "Time",
        ),
        FieldType::Timestamptz => (
            "chrono::DateTime<chrono::Utc>",
            "p::timestamp(v, at)".into(),
            "Value::Text(x.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))".into(),
            "Timestamptz",
            "TIMESTAMPTZ".into(),
            "TEXT",
            "Timestamptz",
        ),
        FieldType::Uuid => (
            "uuid::Uuid",
            "p::uuid(v, at)".into(),
            "Value::Text(x.to_string())".into(),
            "Uuid",
            "UUID".into(),
            "TEXT",
            "Uuid",
        ),
        FieldType::Json => (
            "serde_json::Value",
            "p::json(v, at)".into(),
            "Value::Text(x.to_string())".into(),
            "Json",
            "JSONB".into(),
            "TEXT",
            "Jsonb",
        ),
    };
    let tokens = tokens_literal(&field.source.tokens);
    // Defaults live in statics; the JSON path is only built when a value is refused.
    let default = field.default.as_ref().map(|default| {
        let name = format!("{static_prefix}_DEFAULT");
        statics.push(format!(
            "static {name}: std::sync::LazyLock<serde_json::Value> = std::sync::LazyLock::new(|| serde_json::from_str({}).expect(\"validated by nomnom\"));",
            rust_string(&default.to_string())
        ));
        name
    });
    // A conversion with no arguments of its own is passed as the function itself.
    let closure = match convert.strip_suffix("(v, at)") {
        Some(function) if !function.contains('(') => function.to_owned(),
        _ => format!("|v, at| {convert}"),
    };
    let parent_key = entity
        .parent
        .as_ref()
        .and_then(|link| link.keys.iter().find(|(child, _)| *child == field.name))
        .map(|(_, parent)| parent.clone());
    // A field filled from the parent reads nothing from the body: its pattern and default
    // statics were never used, which rustc's dead_code lint refuses under -D warnings
    // (found by tests/fuzz.rs). The parent's value was checked when the parent was read.
    if parent_key.is_some() {
        statics.clear();
    }
    let is_copy = !matches!(
        field.field_type,
        FieldType::String { .. } | FieldType::Text | FieldType::Decimal { .. } | FieldType::Json
    );
    let parse = if let Some(parent_field) = parent_key {
        if is_copy {
            format!("parent.{parent_field}")
        } else {
            format!("parent.{parent_field}.clone()")
        }
    } else if field.nullable && default.is_none() {
        format!("p::optional_field(body, path, {tokens}, {closure})?")
    } else if let Some(default) = &default {
        let value = format!("p::field_or(body, path, {tokens}, &{default}, {closure})?");
        if field.nullable {
            format!("Some({value})")
        } else {
            value
        }
    } else {
        format!("p::field(body, path, {tokens}, {closure})?")
    };
    let to_value = to_value.replace("Value::", "SqlValue::");
    let value_of_x = to_value.clone();
    let to_value = if field.nullable {
        format!(
            "self.{}.as_ref().map_or(SqlValue::Null, |x| {to_value})",
            field.name
        )
    } else {
        format!("{{ let x = &self.{}; {to_value} }}", field.name)
    };
    FieldView {
        name: field.name.clone(),
        doc: doc_text(&field.description),
        rust_type: if field.nullable {
            format!("Option<{base_type}>")
        } else {
            base_type.to_owned()
        },
        parse,
        to_value,
        value_of_x,
        column_type,
        postgres_type: pg,
        sqlite_type: lite.to_owned(),
        diesel_type: if field.nullable {
            format!("Nullable<{diesel}>")
        } else {
            diesel.to_owned()
        },
        diesel_name: field.name.clone(),
        nullable: field.nullable,
        statics,
    }
}

fn index_name(table: &str, columns: &[String]) -> String {
    let name = format!("ix_{table}_{}", columns.join("_"));
    if name.len() <= 63 {
        return name;
    }
    // Stay under PostgreSQL's identifier limit, deterministically.
    let hash = name
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    format!("{}_{hash:08x}", &name[..54])
}

/// Column names that Diesel's `table!` defines itself in a table's module.
const DIESEL_COLUMN_NAMES: &[&str] = &[
    "table",
    "star",
    "columns",
    "dsl",
    "all_columns",
    "is_nullable",
    "diesel",
    // A `let q` inside the macro's expansion becomes a pattern matching the column.
    "q",
];

/// Whether Diesel's `table!` needs the column under another Rust name.
fn diesel_reserved(column: &str, table: &str) -> bool {
    // The expansion's own parameters are named `__diesel_internal_…`.
    column == table
        || DIESEL_COLUMN_NAMES.contains(&column)
        || column.starts_with("__diesel_internal")
}

/// Rust names for a table and its columns in the Diesel schema, the SQL names kept with
/// `#[sql_name]` where they differ. Diesel's `table!` refuses a column named like its
/// table, its own items (`star`, `table`, `columns`, …) clash with columns of those
/// names, and a table or column named `diesel` hides the `diesel` crate from the macro:
/// each made the generated crate fail to compile (found by tests/fuzz.rs).
fn diesel_names(project: &Project, entity: &Entity, fields: &mut [FieldView]) -> String {
    let taken_tables: Vec<&str> = project.entities.iter().map(|e| e.table.as_str()).collect();
    let mut table = entity.table.clone();
    if table == "diesel" {
        while taken_tables.contains(&table.as_str()) {
            table.push('_');
        }
    }
    let mut used: Vec<String> = fields.iter().map(|f| f.name.clone()).collect();
    for field in fields.iter_mut() {
        if diesel_reserved(&field.name, &table) {
            let mut name = field.name.clone();
            while diesel_reserved(&name, &table) || used.contains(&name) {
                if name.starts_with("__diesel_internal") {
                    name.insert(0, 'c');
                }
                name.push('_');
            }
            used.push(name.clone());
            field.diesel_name = name;
        }
    }
    table
}

fn entity_view(project: &Project, entity: &Entity) -> EntityView {
    let operation = entity.operation.as_ref();
    let mut fields: Vec<FieldView> = entity
        .fields
        .iter()
        .map(|f| field_view(entity, f))
        .collect();
    let diesel_table = diesel_names(project, entity, &mut fields);
    let diesel_primary_key = entity
        .primary_key
        .iter()
        .map(|k| {
            fields
                .iter()
                .find(|f| f.name == *k)
                .map_or_else(|| k.clone(), |f| f.diesel_name.clone())
        })
        .collect();
    let key_fields = entity
        .upsert_key
        .iter()
        .filter_map(|k| fields.iter().find(|f| f.name == *k).cloned())
        .collect();
    EntityView {
        name: entity.name.clone(),
        type_name: entity.type_name.clone(),
        const_name: entity.name.to_uppercase(),
        table: entity.table.clone(),
        doc: doc_text(&entity.description),
        route: entity.route.clone(),
        fields,
        key_fields,
        key: entity.upsert_key.clone(),
        primary_key: entity.primary_key.clone(),
        diesel_table,
        diesel_primary_key,
        unique: {
            let mut unique = entity.unique.clone();
            if entity.upsert_key != entity.primary_key && !entity.upsert_key.is_empty() {
                unique.push(entity.upsert_key.clone());
            }
            unique
        },
        indexes: entity
            .indexes
            .iter()
            .map(|cols| (index_name(&entity.table, cols), cols.clone()))
            .collect(),
        write_mode: match entity.write {
            WriteMode::Insert => "Insert",
            WriteMode::Upsert => "Upsert",
            WriteMode::IgnoreDuplicates => "IgnoreDuplicates",
        },
        children: entity
            .children
            .iter()
            .filter_map(|name| project.entity(name))
            .map(|child| {
                let link = child.parent.as_ref().expect("children have a parent link");
                ChildView {
                    name: child.name.clone(),
                    type_name: child.type_name.clone(),
                    tokens: link.source.tokens.iter().map(|t| rust_string(t)).collect(),
                    source: link.source.text.clone(),
                }
            })
            .collect(),
        parent_keys: entity
            .parent
            .as_ref()
            .map(|l| l.keys.clone())
            .unwrap_or_default(),
        parent: entity.parent.as_ref().map(|l| l.entity.clone()),
        parent_type: entity
            .parent
            .as_ref()
            .and_then(|l| project.entity(&l.entity))
            .map(|p| p.type_name.clone()),
        has_operation: operation.is_some(),
        // Markdown in descriptions tripped clippy's doc lints (`- [a]: b` is
        // doc_nested_refdefs) under -D warnings (found by tests/fuzz.rs): models with
        // docs allow those lint groups.
        has_docs: doc_text(&entity.description).is_some()
            || entity
                .fields
                .iter()
                .any(|f| doc_text(&f.description).is_some()),
        // A child whose fields all come from its parent read neither `body` nor `path`,
        // and the unused parameters failed the build under -D warnings (found by
        // tests/fuzz.rs).
        reads_body: entity.fields.iter().any(|f| !f.from_parent),
        operation_tokens: operation
            .map(|o| o.field.tokens.iter().map(|t| rust_string(t)).collect())
            .unwrap_or_default(),
        operation_create: operation
            .map(|o| o.create.iter().map(|t| rust_string(t)).collect())
            .unwrap_or_default(),
        operation_upsert: operation
            .map(|o| o.upsert.iter().map(|t| rust_string(t)).collect())
            .unwrap_or_default(),
        operation_delete: operation
            .map(|o| o.delete.iter().map(|t| rust_string(t)).collect())
            .unwrap_or_default(),
        operation_default: match operation.map(|o| o.default) {
            Some(OperationKind::Upsert) => "Upsert",
            Some(OperationKind::Delete) => "Delete",
            _ => "Create",
        },
    }
}

fn tera() -> Result<Tera, RenderError> {
    let mut tera = Tera::default();
    tera.autoescape_on(vec![]);
    for (name, text) in TEMPLATES {
        tera.add_raw_template(name, text)
            .map_err(|e| RenderError::Template {
                name: (*name).to_owned(),
                message: format!("{e:?}"),
            })?;
    }
    Ok(tera)
}

fn render_one(tera: &Tera, name: &str, context: &Context) -> Result<String, RenderError> {
    tera.render(name, context).map_err(|e| {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        RenderError::Template {
            name: name.to_owned(),
            message,
        }
    })
}

/// Formats Rust sources with one rustfmt process (edition 2024), as `cargo fmt` would:
/// starting rustfmt costs more than formatting a file, so all files go to one run.
pub fn rustfmt_all(sources: &mut [(String, String)]) -> Result<(), RenderError> {
    if sources.is_empty() {
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!(
        "nomnom-fmt-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let io = |e: std::io::Error| RenderError::RustfmtMissing(e.to_string());
    std::fs::create_dir_all(&dir).map_err(io)?;
    let result = (|| {
        // The crate's own layout: rustfmt resolves `mod` declarations from it.
        let mut paths = Vec::new();
        for (relative, source) in sources.iter() {
            let path = dir.join(relative);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            std::fs::write(&path, source).map_err(io)?;
            paths.push(path);
        }
        // Roots only (files no other file declares as a module): rustfmt formats the
        // modules they declare itself, and naming those too would format them twice.
        let roots: Vec<&std::path::PathBuf> = paths
            .iter()
            .zip(sources.iter())
            .filter(|(_, (relative, _))| {
                !relative.contains("/models/")
                    && !relative.contains("/parsers/")
                    && !relative.ends_with("database.rs")
                    && !relative.ends_with("schema.rs")
            })
            .map(|(path, _)| path)
            .collect();
        let output = Command::new(std::env::var("RUSTFMT").unwrap_or_else(|_| "rustfmt".into()))
            .args(["--edition", "2024", "--quiet"])
            .args(&roots)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| RenderError::RustfmtMissing(e.to_string()))?;
        if !output.status.success() {
            let message = String::from_utf8_lossy(&output.stderr).into_owned();
            // rustfmt names the file it rejects; a failure naming none is rustfmt itself
            // not running (rustup's proxy without the component or a default toolchain).
            let Some(i) = paths
                .iter()
                .position(|p| message.contains(&p.display().to_string()))
            else {
                let first = message.lines().find(|l| !l.trim().is_empty());
                return Err(RenderError::RustfmtMissing(
                    first
                        .unwrap_or("it exited without a word")
                        .trim()
                        .to_owned(),
                ));
            };
            return Err(RenderError::Rustfmt {
                file: sources[i].0.clone(),
                message,
            });
        }
        for ((_, source), path) in sources.iter_mut().zip(&paths) {
            *source = std::fs::read_to_string(path).map_err(io)?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The first line of every generated file (in the file's comment syntax).
pub fn header(comment: &str, spec_name: &str) -> String {
    format!(
        "{comment} @generated by nomnom from {spec_name}. DO NOT EDIT: change the spec and run `nomnom generate`.\n"
    )
}

/// Renders every file of the worker crate.
pub fn render(project: &Project, options: &RenderOptions) -> Result<Files, RenderError> {
    let tera = tera()?;
    let entities: Vec<EntityView> = project
        .entities
        .iter()
        .map(|e| entity_view(project, e))
        .collect();
    let roots: Vec<&EntityView> = entities.iter().filter(|e| e.parent.is_none()).collect();
    let mut context = Context::new();
    context.insert("project", project);
    context.insert("entities", &entities);
    context.insert("roots", &roots);
    // rustc's non_snake_case lint refuses `a__b` (an inner double underscore), which the
    // spec's identifiers allow: modules and fields of such names made the crate fail
    // under `-D warnings` (found by tests/fuzz.rs). Only such specs get the `allow`.
    context.insert(
        "allow_non_snake_case",
        &project.entities.iter().any(|e| {
            std::iter::once(&e.name)
                .chain(e.fields.iter().map(|f| &f.name))
                .any(|n| n.trim_matches('_').contains("__"))
        }),
    );
    context.insert("spec_name", &options.spec_name);
    context.insert(
        "cargo_description",
        &project
            .description
            .as_deref()
            .filter(|d| !d.is_empty())
            .map(toml_string),
    );
    context.insert(
        "discriminator",
        &project.discriminator.as_ref().map(|d| {
            (
                d.text.clone(),
                d.tokens.iter().map(|t| rust_string(t)).collect::<Vec<_>>(),
            )
        }),
    );
    context.insert(
        "runtime_dependency",
        &match &options.runtime {
            RuntimeDependency::Path(path) => format!("path = {}", rust_string(path)),
            RuntimeDependency::Version(version) => format!("version = {}", rust_string(version)),
        },
    );
    let (docker_context, crate_in_context) = docker_context(&options.output, &options.runtime);
    context.insert("docker_context", &docker_context);
    context.insert("crate_in_context", &crate_in_context);
    let postgres = matches!(options.databases, Databases::Postgres | Databases::Both);
    let sqlite = matches!(options.databases, Databases::Sqlite | Databases::Both);
    context.insert("postgres", &postgres);
    context.insert("sqlite", &sqlite);

    let mut files = Files::new();
    let mut rust: Vec<(String, String)> = Vec::new();
    for (path, template) in [
        ("src/main.rs", "main.rs.tera"),
        ("src/lib.rs", "lib.rs.tera"),
        ("src/schema.rs", "schema.rs.tera"),
        ("src/database.rs", "database.rs.tera"),
    ] {
        rust.push((path.to_owned(), render_one(&tera, template, &context)?));
    }
    for entity in &entities {
        // Only what the per-entity templates use: cloning the whole context (every
        // entity) for each of them made a 100-entity spec take a second.
        let mut per_entity = Context::new();
        per_entity.insert("entity", entity);
        for (dir, template) in [("models", "model.rs.tera"), ("parsers", "parser.rs.tera")] {
            rust.push((
                format!("src/{dir}/{}.rs", entity.name),
                render_one(&tera, template, &per_entity)?,
            ));
        }
    }
    rustfmt_all(&mut rust)?;
    for (path, source) in rust {
        files.insert(path, header("//", &options.spec_name) + &source);
    }
    let text = |files: &mut Files,
                path: &str,
                template: &str,
                comment: &str,
                context: &Context|
     -> Result<(), RenderError> {
        let body = render_one(&tera, template, context)?;
        files.insert(path.to_owned(), header(comment, &options.spec_name) + &body);
        Ok(())
    };
    text(&mut files, "Cargo.toml", "Cargo.toml.tera", "#", &context)?;
    text(&mut files, "Dockerfile", "Dockerfile.tera", "#", &context)?;
    text(
        &mut files,
        "Dockerfile.dockerignore",
        "Dockerfile.dockerignore.tera",
        "#",
        &context,
    )?;
    text(
        &mut files,
        "docker-compose.nats.yml",
        "docker-compose.nats.yml.tera",
        "#",
        &context,
    )?;
    text(&mut files, "README.md", "README.md.tera", "<!--", &context)?;
    for (enabled, dialect) in [(postgres, "postgres"), (sqlite, "sqlite")] {
        if !enabled {
            continue;
        }
        let mut sql = context.clone();
        sql.insert("dialect", dialect);
        let dir = format!(
            "migrations/{dialect}/00000000000001_create_{}",
            project.name.replace('-', "_")
        );
        text(
            &mut files,
            &format!("{dir}/up.sql"),
            "up.sql.tera",
            "--",
            &sql,
        )?;
        text(
            &mut files,
            &format!("{dir}/down.sql"),
            "down.sql.tera",
            "--",
            &sql,
        )?;
    }
    // The README header is an HTML comment: close it.
    if let Some(readme) = files.get_mut("README.md") {
        *readme = readme.replacen(" `nomnom generate`.\n", " `nomnom generate`. -->\n", 1);
    }
    Ok(files)
}
