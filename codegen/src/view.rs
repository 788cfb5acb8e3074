//! What the templates see: the model as views whose fragments of Rust and SQL are
//! computed here, from the table of field types ([`crate::types`]), so that the
//! templates in `templates/worker/` only lay them out.

use std::fmt::Display;

use serde::Serialize;

use crate::model::{
    Entity, Field, FieldType, Operation, OperationKind, Pointer, Project, Source, TimeFormat,
    WriteMode,
};
use crate::types::Reader;

/// One field, with everything the templates need.
#[derive(Debug, Clone, Serialize)]
pub struct FieldView {
    pub name: String,
    /// The column's SQL name.
    pub column: String,
    pub doc: Option<String>,
    /// Type of the model's field (`Option<…>` when nullable).
    pub rust_type: String,
    /// Expression (in parser scope: `body`, `path`, `parent`) producing the value.
    pub parse: String,
    /// Expression producing the column's `sql::Value` from `self.<name>`, moved out
    /// (`Row::into_values`).
    pub value: String,
    /// Variant of `nomnom_runtime::sql::ColumnType`, as Rust.
    pub column_type: String,
    pub postgres_type: String,
    pub sqlite_type: &'static str,
    pub diesel_type: String,
    /// The column's Rust name in the Diesel schema (see [`diesel_names`]).
    pub diesel_name: String,
    pub nullable: bool,
    /// Statics the parse expression uses (regexes, defaults).
    pub statics: Vec<String>,
    /// Expression (in parser scope) producing the column's `Option<sql::Value>` in a
    /// patch: `None` when the body lacks the field, else the value read as `parse` does
    /// without the default (a JSON null is a value: SQL `NULL`, or an error for a
    /// non-nullable field).
    pub patch: String,
}

/// A child entity, as its parent's parser reads it.
#[derive(Debug, Serialize)]
pub struct ChildView {
    pub name: String,
    pub type_name: String,
    /// Name of its `Entity` static.
    pub const_name: String,
    /// (child column, parent column) pairs.
    pub parent_key: Vec<(String, String)>,
    /// Rust string literals of the JSON pointer tokens of its rows (an array or an
    /// object).
    pub tokens: Vec<String>,
    pub source: String,
}

/// An index of a table.
#[derive(Debug, Serialize)]
pub struct IndexView {
    pub name: String,
    pub columns: Vec<String>,
}

/// How a root entity reads the operation of a message (values as Rust literals).
#[derive(Debug, Serialize)]
pub struct OperationView {
    pub tokens: Vec<String>,
    pub create: Vec<String>,
    pub upsert: Vec<String>,
    pub patch: Vec<String>,
    pub delete: Vec<String>,
    /// Every value, for the error naming them.
    pub all: Vec<String>,
    /// The variant of `nomnom_runtime::change::Op` when the body has no operation.
    pub default: &'static str,
}

/// A column nomnom fills itself: its name and the `nomnom_runtime::change` constant
/// naming it.
#[derive(Debug, Serialize)]
pub struct GuardView {
    pub name: &'static str,
    pub constant: &'static str,
}

/// The routing field of the body: its pointer as written, and its tokens as literals.
#[derive(Debug, Serialize)]
pub struct DiscriminatorView {
    pub text: String,
    pub tokens: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct EntityView {
    pub name: String,
    pub type_name: String,
    /// Name of the `Entity` static.
    pub const_name: String,
    pub table: String,
    pub doc: Option<String>,
    /// Rust string literals of the routes of a root entity.
    pub routes: Vec<String>,
    pub fields: Vec<FieldView>,
    /// The key fields, in key order (what a delete reads).
    pub key_fields: Vec<FieldView>,
    /// Column names of the upsert key, the primary key, unique keys.
    pub key: Vec<String>,
    pub primary_key: Vec<String>,
    /// The table's Rust name in the Diesel schema, and its primary key there.
    pub diesel_table: String,
    pub diesel_primary_key: Vec<String>,
    pub unique: Vec<Vec<String>>,
    pub indexes: Vec<IndexView>,
    /// Variant of `nomnom_runtime::sql::WriteMode`.
    pub write_mode: &'static str,
    pub children: Vec<ChildView>,
    pub parent: Option<String>,
    pub parent_type: Option<String>,
    pub operation: Option<OperationView>,
    /// The version field, of a root entity that has one.
    pub version: Option<FieldView>,
    /// The columns nomnom adds after the fields (a root's guard).
    pub guard: Vec<GuardView>,
    /// Per field, the expression of its `Option<sql::Value>` in a patch: the key and
    /// the version read as in a full parse, the other fields only if the body has them.
    pub patch_values: Vec<String>,
    /// Per field, its `Option<sql::Value>` in a delete: the key's values, `None` else.
    pub delete_values: Vec<String>,
    /// Whether a description becomes a doc attribute of the model.
    pub has_docs: bool,
    /// Whether any field is read from the body (not all from the parent).
    pub reads_body: bool,
    /// Whether any field is the row's position in its array (`$index`).
    pub reads_index: bool,
    /// Whether any field is read from the message's metadata.
    pub reads_metadata: bool,
    /// Whether a key or version field is (what a delete reads).
    pub delete_reads_metadata: bool,
    /// A root entity's records of other root entities.
    pub fan_out: Option<FanOutView>,
}

/// `nomnom_runtime::parse::FanOut`'s pointers, as Rust string literals of their tokens.
#[derive(Debug, Serialize)]
pub struct FanOutView {
    pub array: Vec<String>,
    pub record: Vec<String>,
    pub discriminators: Vec<Vec<String>>,
    pub ignore_unrouted: bool,
}

/// A Rust string literal for arbitrary text.
pub fn rust_string(text: &str) -> String {
    format!("{text:?}")
}

/// Rust string literals of each text.
fn literals(texts: &[String]) -> Vec<String> {
    texts.iter().map(|t| rust_string(t)).collect()
}

/// Doc text that can neither break out of its attribute nor become a doctest.
fn doc_text(text: &Option<String>) -> Option<String> {
    text.as_ref()
        // A blank description made `#[doc = " "]`, which clippy's empty_docs refuses
        // under -D warnings (found by tests/fuzz.rs): no doc at all instead.
        .filter(|t| !t.trim().is_empty())
        .map(|t| rust_string(&format!(" {}", t.replace("```", "'''"))))
}

pub fn discriminator_view(pointer: &Pointer) -> DiscriminatorView {
    DiscriminatorView {
        text: pointer.text.clone(),
        tokens: literals(&pointer.tokens),
    }
}

/// `min..`, `..=max` or `min..=max`; `None` when neither bound is set.
fn range<T: Display>(min: Option<T>, max: Option<T>) -> Option<String> {
    match (min, max) {
        (None, None) => None,
        (Some(min), None) => Some(format!("{min}..")),
        (None, Some(max)) => Some(format!("..={max}")),
        (Some(min), Some(max)) => Some(format!("{min}..={max}")),
    }
}

/// The spec's `min` and `max` as a range of the integer type: fractions rounded inwards
/// and bounds that every value of the type meets left out. A range no value of the type
/// is in becomes one that refuses every value.
fn integer_range(field: &Field, rust: &str) -> Option<String> {
    let (lowest, highest) = field.field_type.integer_range()?;
    // `as` saturates: 1e300 becomes i128::MAX, beyond every integer type.
    let min = field.checks.min.map(|m| m.ceil() as i128);
    let max = field.checks.max.map(|m| m.floor() as i128);
    let empty = min.is_some_and(|min| min > highest || max.is_some_and(|max| min > max))
        || max.is_some_and(|max| max < lowest);
    if empty {
        return Some(format!(
            "(std::ops::Bound::Excluded({rust}::MAX), std::ops::Bound::Unbounded)"
        ));
    }
    range(
        min.filter(|min| *min > lowest),
        max.filter(|max| *max < highest),
    )
}

/// Float literals of the spec's `min` and `max` (finite: the validator checked).
fn float_range(field: &Field) -> Option<String> {
    let literal = |v: f64| format!("{v:?}");
    range(field.checks.min.map(literal), field.checks.max.map(literal))
}

/// The string rules of a field, as `p::TextRules` fields (only those set).
fn text_rules(field: &Field, pattern: Option<&str>) -> Vec<String> {
    let checks = &field.checks;
    let max_length = match field.field_type {
        FieldType::String { max_length } => max_length.or(checks.max_length),
        _ => checks.max_length,
    };
    let mut rules = Vec::new();
    if let Some(n) = checks.min_length {
        rules.push(format!("min_length: Some({n})"));
    }
    if let Some(n) = max_length {
        rules.push(format!("max_length: Some({n})"));
    }
    if let Some(name) = pattern {
        rules.push(format!("pattern: Some(&{name})"));
    }
    if !checks.allowed.is_empty() {
        rules.push(format!(
            "allowed: &[{}]",
            literals(&checks.allowed).join(", ")
        ));
    }
    rules
}

/// Statics of one field's parser, named after the entity and the field.
struct Statics {
    prefix: String,
    items: Vec<String>,
}

impl Statics {
    /// Declares a static built at compile time and returns its name.
    fn constant(&mut self, suffix: &str, rust_type: &str, init: String) -> String {
        let name = format!("{}_{suffix}", self.prefix);
        self.items
            .push(format!("static {name}: {rust_type} = {init};"));
        name
    }

    /// Declares a lazily built static and returns its name.
    fn lazy(&mut self, suffix: &str, rust_type: &str, init: String) -> String {
        let name = format!("{}_{suffix}", self.prefix);
        self.items.push(format!(
            "static {name}: std::sync::LazyLock<{rust_type}> = std::sync::LazyLock::new(|| {init}.expect(\"validated by nomnom\"));"
        ));
        name
    }
}

/// What a parser passes to `p::field` to convert the value: a runtime function, or a
/// closure calling one with the field's rules; for an array, a closure converting each
/// element so.
fn reader(field: &Field, statics: &mut Statics) -> String {
    let element = element_reader(field, statics);
    if field.array {
        format!("|v, at| p::array_of(v, at, {element})")
    } else {
        element
    }
}

/// The reader of one value of the field's type.
fn element_reader(field: &Field, statics: &mut Statics) -> String {
    let info = field.field_type.info();
    let with = |function: &str, arguments: Option<String>| match arguments {
        None => function.to_owned(),
        Some(arguments) => format!("|v, at| {function}(v, at, {arguments})"),
    };
    if !field.formats.is_empty() {
        let formats: Vec<String> = field
            .formats
            .iter()
            .map(|format| match format {
                TimeFormat::Rfc3339 => "p::TimeFormat::Rfc3339".to_owned(),
                TimeFormat::UnixSeconds => "p::TimeFormat::UnixSeconds".to_owned(),
                TimeFormat::UnixMillis => "p::TimeFormat::UnixMillis".to_owned(),
                TimeFormat::Pattern(pattern) => {
                    format!("p::TimeFormat::Pattern({})", rust_string(pattern))
                }
            })
            .collect();
        let function = if field.field_type == FieldType::Date {
            "p::date_as"
        } else {
            "p::timestamp_as"
        };
        return format!("|v, at| {function}(v, at, &[{}])", formats.join(", "));
    }
    match info.reader {
        Reader::Plain(function) => function.to_owned(),
        Reader::Integer => match integer_range(field, info.rust) {
            None => format!("p::integer::<{}>", info.rust),
            Some(range) => format!("|v, at| p::integer_in::<{}>(v, at, {range})", info.rust),
        },
        Reader::Float(function) => match float_range(field) {
            None => function.to_owned(),
            Some(range) => with(&format!("{function}_in"), Some(range)),
        },
        Reader::Decimal => match (field.field_type, float_range(field)) {
            (FieldType::Decimal { precision, scale }, None) => {
                with("p::decimal", Some(format!("{precision}, {scale}")))
            }
            (FieldType::Decimal { precision, scale }, Some(range)) => with(
                "p::decimal_in",
                Some(format!("{precision}, {scale}, {range}")),
            ),
            (_, None) => "p::numeric".to_owned(),
            (_, Some(range)) => with("p::numeric_in", Some(range)),
        },
        Reader::Text => {
            let pattern = field.checks.pattern.as_ref().map(|pattern| {
                statics.lazy(
                    "PATTERN",
                    "regex::Regex",
                    format!("regex::Regex::new({})", rust_string(pattern)),
                )
            });
            let rules = text_rules(field, pattern.as_deref());
            // All four rules set: `..Default::default()` would be needless (clippy).
            let rest = if rules.len() < 4 {
                ", ..Default::default()"
            } else {
                ""
            };
            let rules = (!rules.is_empty())
                .then(|| format!("p::TextRules {{ {}{rest} }}", rules.join(", ")));
            with(
                if rules.is_some() {
                    "p::text_with"
                } else {
                    "p::text"
                },
                rules,
            )
        }
    }
}

/// The JSON pointer tokens of a body source as a Rust slice expression.
fn tokens(pointer: &Pointer) -> String {
    format!("&[{}]", literals(&pointer.tokens).join(", "))
}

/// Whether a field is read through a `p::Found`: its source picks an element by its
/// members' values, or it keeps a capture group of its source's text.
fn reads_found(field: &Field) -> bool {
    matches!(field.source, Source::Select(_)) || field.capture.is_some()
}

/// The `p::Found` of a field that [`reads_found`], before any capture: a selected element's
/// value, a body value, or a metadata item.
fn found_expression(field: &Field, statics: &mut Statics) -> String {
    match &field.source {
        Source::Body(pointer) => format!("p::found(body, path, {})", tokens(pointer)),
        Source::Select(selection) => {
            let matching: Vec<String> = (selection.matching.iter())
                .map(|(member, value)| format!("({}, {})", rust_string(member), rust_string(value)))
                .collect();
            let name = statics.constant(
                "SELECTION",
                "p::Selection",
                format!(
                    "p::Selection {{ array: {}, matching: &[{}], then: {} }}",
                    tokens(&selection.array),
                    matching.join(", "),
                    tokens(&selection.then)
                ),
            );
            format!("p::selected(body, path, &{name})")
        }
        Source::Metadata { item } => format!("p::found_meta(meta, {})", rust_string(item.name())),
        Source::Header { name } => format!(
            "p::found_meta(meta, {})",
            rust_string(&format!("header.{name}"))
        ),
        Source::Index => unreachable!("validated: $index has no capture"),
    }
}

/// `.capture(…)?` of a field with a `capture`, else nothing. The captured text is read as
/// a JSON number or boolean by fields that read those.
fn capture_call(field: &Field, statics: &mut Statics) -> String {
    let Some(capture) = &field.capture else {
        return String::new();
    };
    let regex = statics.lazy(
        "CAPTURE",
        "regex::Regex",
        format!("regex::Regex::new({})", rust_string(&capture.pattern)),
    );
    let literal = field.field_type.is_numeric()
        || field.field_type == FieldType::Bool
        || (field.formats.iter())
            .any(|f| matches!(f, TimeFormat::UnixSeconds | TimeFormat::UnixMillis));
    format!(".capture(&{regex}, {}, {literal})?", capture.group)
}

/// The expression reading a field of a patch: only when the body has it (JSON null
/// included), and then without the default. Metadata is always part of a patch.
fn patch_expression(field: &Field, reader: &str, statics: &mut Statics) -> String {
    if reads_found(field) && !field.source.is_metadata() {
        let found = found_expression(field, statics);
        let capture = capture_call(field, statics);
        let read = if field.nullable {
            "optional"
        } else {
            "required"
        };
        let value = format!("Some(sql::Value::from(found{capture}.{read}({reader})?))");
        return match &field.source {
            Source::Body(pointer) => format!(
                "match body.pointer({}) {{ None => None, Some(_) => {{ let found = {found}; {value} }} }}",
                rust_string(&pointer.text)
            ),
            _ => format!(
                "{{ let found = {found}; if found.is_present() {{ {value} }} else {{ None }} }}"
            ),
        };
    }
    let Source::Body(pointer) = &field.source else {
        return format!(
            "Some(sql::Value::from({}))",
            parse_expression(field, reader, statics)
        );
    };
    let tokens = tokens(pointer);
    let read = if field.nullable {
        format!("p::optional_field(body, path, {tokens}, {reader})?")
    } else {
        format!("p::field(body, path, {tokens}, {reader})?")
    };
    format!(
        "match body.pointer({}) {{ None => None, Some(_) => Some(sql::Value::from({read})) }}",
        rust_string(&pointer.text)
    )
}

/// The expression reading a field from the body or the metadata: required, nullable or
/// defaulted.
fn parse_expression(field: &Field, reader: &str, statics: &mut Statics) -> String {
    if field.source == Source::Index {
        // Every row has a position: no default applies.
        let read = format!("p::position(index, path, {reader})?");
        return if field.nullable {
            format!("Some({read})")
        } else {
            read
        };
    }
    if reads_found(field) {
        return found_parse_expression(field, reader, statics);
    }
    let (from, tokens) = match &field.source {
        Source::Body(pointer) => ("field", format!("body, path, {}", tokens(pointer))),
        Source::Metadata { item } => ("meta", format!("meta, {}", rust_string(item.name()))),
        Source::Header { name } => (
            "meta",
            format!("meta, {}", rust_string(&format!("header.{name}"))),
        ),
        Source::Index => unreachable!("read above"),
        Source::Select(_) => unreachable!("read by found_parse_expression"),
    };
    // Defaults live in statics; the JSON path is only built when a value is refused.
    let default = field
        .default
        .as_ref()
        .map(|default| default_static(default, statics));
    match default {
        None if field.nullable => format!("p::optional_{from}({tokens}, {reader})?"),
        None => format!("p::{from}({tokens}, {reader})?"),
        Some(default) if field.nullable => {
            format!("Some(p::{from}_or({tokens}, &{default}, {reader})?)")
        }
        Some(default) => format!("p::{from}_or({tokens}, &{default}, {reader})?"),
    }
}

/// [`parse_expression`] of a field that [`reads_found`].
fn found_parse_expression(field: &Field, reader: &str, statics: &mut Statics) -> String {
    let found = found_expression(field, statics);
    let found = found + &capture_call(field, statics);
    let default = field
        .default
        .as_ref()
        .map(|default| default_static(default, statics));
    match default {
        None if field.nullable => format!("{found}.optional({reader})?"),
        None => format!("{found}.required({reader})?"),
        Some(default) if field.nullable => format!("Some({found}.or(&{default}, {reader})?)"),
        Some(default) => format!("{found}.or(&{default}, {reader})?"),
    }
}

/// The static holding a field's default, as a JSON value.
fn default_static(default: &serde_json::Value, statics: &mut Statics) -> String {
    statics.lazy(
        "DEFAULT",
        "nomnom_runtime::json::Value<'static>",
        format!(
            "nomnom_runtime::json::from_str({})",
            rust_string(&default.to_string())
        ),
    )
}

fn field_view(entity: &Entity, field: &Field) -> FieldView {
    let info = field.field_type.info();
    let mut statics = Statics {
        prefix: format!(
            "{}_{}",
            entity.name.to_uppercase(),
            field.name.to_uppercase()
        ),
        items: Vec::new(),
    };
    let clone = if info.copy && !field.array {
        ""
    } else {
        ".clone()"
    };
    let parent_field = entity
        .parent
        .as_ref()
        .and_then(|link| link.keys.iter().find(|(child, _)| *child == field.name))
        .map(|(_, parent)| parent);
    // A field filled from the parent reads nothing from the body, so it has no statics
    // (unused, they failed rustc's dead_code lint under -D warnings; found by
    // tests/fuzz.rs). The parent's value was checked when the parent was read.
    let (parse, patch) = match parent_field {
        Some(parent_field) => (format!("parent.{parent_field}{clone}"), String::new()),
        None => {
            let reader = reader(field, &mut statics);
            let parse = parse_expression(field, &reader, &mut statics);
            let mut patch_statics = Statics {
                prefix: statics.prefix.clone(),
                items: Vec::new(),
            };
            (parse, patch_expression(field, &reader, &mut patch_statics))
        }
    };
    let optional = |t: &str| {
        if field.nullable {
            format!("Option<{t}>")
        } else {
            t.to_owned()
        }
    };
    FieldView {
        name: field.name.clone(),
        column: field.column.clone(),
        doc: doc_text(&field.description),
        rust_type: optional(&if field.array {
            format!("Vec<{}>", info.rust)
        } else {
            info.rust.to_owned()
        }),
        parse,
        value: format!("self.{}.into()", field.name),
        column_type: if field.array {
            format!(
                "Array {{ element: {} }}",
                rust_string(&field.field_type.postgres_type().to_lowercase())
            )
        } else {
            info.column_type.to_owned()
        },
        postgres_type: if field.array {
            format!("{}[]", field.field_type.postgres_type())
        } else {
            field.field_type.postgres_type()
        },
        // An array is its JSON text in SQLite.
        sqlite_type: if field.array { "TEXT" } else { info.sqlite },
        diesel_type: {
            let diesel = if field.array {
                format!("Array<{}>", info.diesel)
            } else {
                info.diesel.to_owned()
            };
            if field.nullable {
                format!("Nullable<{diesel}>")
            } else {
                diesel
            }
        },
        diesel_name: field.name.clone(),
        nullable: field.nullable,
        statics: statics.items,
        patch,
    }
}

/// `<prefix>_<table>_<columns>`, within PostgreSQL's 63-byte identifiers.
pub fn index_name(prefix: &str, table: &str, columns: &[String]) -> String {
    let name = format!("{prefix}_{table}_{}", columns.join("_"));
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

fn operation_view(operation: &Operation) -> OperationView {
    let all: Vec<String> = [
        &operation.create,
        &operation.upsert,
        &operation.patch,
        &operation.delete,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect();
    OperationView {
        tokens: literals(&operation.field.tokens),
        create: literals(&operation.create),
        upsert: literals(&operation.upsert),
        patch: literals(&operation.patch),
        delete: literals(&operation.delete),
        all: literals(&all),
        default: match operation.default {
            OperationKind::Create => "Create",
            OperationKind::Upsert => "Upsert",
            OperationKind::Patch => "Patch",
            OperationKind::Delete => "Delete",
        },
    }
}

fn guard_views(entity: &Entity) -> Vec<GuardView> {
    entity
        .guard_columns()
        .iter()
        .map(|&name| GuardView {
            name,
            constant: if name == nomnom_runtime::change::SEQUENCE_COLUMN {
                "SEQUENCE_COLUMN"
            } else {
                "VERSION_COLUMN"
            },
        })
        .collect()
}

/// The values of a patch and of a delete (see [`EntityView::patch_values`]).
fn operation_values(entity: &Entity, fields: &[FieldView]) -> (Vec<String>, Vec<String>) {
    fields
        .iter()
        .map(|f| {
            if entity.upsert_key.contains(&f.name) {
                let key = format!("Some(sql::Value::from({}))", f.parse);
                (key.clone(), key)
            } else if entity.version.as_ref() == Some(&f.name) {
                (
                    "Some(sql::Value::from(version))".to_owned(),
                    "None".to_owned(),
                )
            } else {
                (f.patch.clone(), "None".to_owned())
            }
        })
        .unzip()
}

fn child_views(project: &Project, entity: &Entity) -> Vec<ChildView> {
    entity
        .children
        .iter()
        .filter_map(|name| project.entity(name))
        .map(|child| {
            let link = child.parent.as_ref().expect("children have a parent link");
            ChildView {
                name: child.name.clone(),
                type_name: child.type_name.clone(),
                const_name: child.name.to_uppercase(),
                parent_key: (link.keys.iter())
                    .map(|(field, from)| {
                        let column = |entity: &Entity, name: &str| {
                            entity
                                .field(name)
                                .map_or_else(|| name.to_owned(), |f| f.column.clone())
                        };
                        (column(child, field), column(entity, from))
                    })
                    .collect(),
                tokens: literals(&link.source.tokens),
                source: link.source.text.clone(),
            }
        })
        .collect()
}

/// The views of `names`' fields, in that order.
fn fields_named(fields: &[FieldView], names: &[String], diesel: bool) -> Vec<FieldView> {
    names
        .iter()
        .filter_map(|k| fields.iter().find(|f| f.name == *k))
        .map(|f| {
            let mut f = f.clone();
            if diesel {
                f.name = f.diesel_name.clone();
            }
            f
        })
        .collect()
}

pub fn entity_view(project: &Project, entity: &Entity) -> EntityView {
    let mut fields: Vec<FieldView> = entity
        .fields
        .iter()
        .map(|f| field_view(entity, f))
        .collect();
    let diesel_table = diesel_names(project, entity, &mut fields);
    let (patch_values, delete_values) = operation_values(entity, &fields);
    let version = (entity.version.as_ref())
        .and_then(|v| fields.iter().find(|f| f.name == *v))
        .cloned();
    let mut unique = entity.unique.clone();
    if entity.upsert_key != entity.primary_key && !entity.upsert_key.is_empty() {
        unique.push(entity.upsert_key.clone());
    }
    EntityView {
        name: entity.name.clone(),
        type_name: entity.type_name.clone(),
        const_name: entity.name.to_uppercase(),
        table: entity.table.clone(),
        doc: doc_text(&entity.description),
        routes: literals(&entity.routes),
        fan_out: entity.fan_out.as_ref().map(|f| FanOutView {
            array: literals(&f.array.tokens),
            record: literals(&f.record.tokens),
            discriminators: (f.discriminators.iter())
                .map(|d| literals(&d.tokens))
                .collect(),
            ignore_unrouted: f.ignore_unrouted,
        }),
        key_fields: fields_named(&fields, &entity.upsert_key, false),
        diesel_primary_key: fields_named(&fields, &entity.primary_key, true)
            .into_iter()
            .map(|f| f.name)
            .collect(),
        fields,
        key: entity.columns(&entity.upsert_key),
        primary_key: entity.columns(&entity.primary_key),
        diesel_table,
        unique: unique.iter().map(|u| entity.columns(u)).collect(),
        indexes: entity
            .indexes
            .iter()
            .map(|fields| {
                let columns = entity.columns(fields);
                IndexView {
                    name: index_name("ix", &entity.table, &columns),
                    columns,
                }
            })
            .collect(),
        write_mode: match entity.write {
            WriteMode::Insert => "Insert",
            WriteMode::Upsert => "Upsert",
            WriteMode::IgnoreDuplicates => "IgnoreDuplicates",
        },
        children: child_views(project, entity),
        parent: entity.parent.as_ref().map(|l| l.entity.clone()),
        parent_type: entity
            .parent
            .as_ref()
            .and_then(|l| project.entity(&l.entity))
            .map(|p| p.type_name.clone()),
        operation: entity.operation.as_ref().map(operation_view),
        version,
        guard: guard_views(entity),
        patch_values,
        delete_values,
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
        reads_body: entity
            .fields
            .iter()
            .any(|f| !f.from_parent && matches!(f.source, Source::Body(_) | Source::Select(_))),
        reads_index: (entity.fields.iter()).any(|f| !f.from_parent && f.source == Source::Index),
        reads_metadata: entity.reads_metadata(),
        delete_reads_metadata: entity.fields.iter().any(|f| {
            (entity.upsert_key.contains(&f.name) || entity.version.as_ref() == Some(&f.name))
                && f.source.is_metadata()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Checks, Pointer};

    fn field(field_type: FieldType, min: Option<f64>, max: Option<f64>) -> Field {
        Field {
            name: "n".into(),
            column: "n".into(),
            field_type,
            array: false,
            nullable: false,
            source: Source::Body(Pointer {
                text: "/n".into(),
                tokens: vec!["n".into()],
            }),
            capture: None,
            formats: Vec::new(),
            default: None,
            checks: Checks {
                min,
                max,
                ..Checks::default()
            },
            description: None,
            from_parent: false,
            renamed_from: None,
        }
    }

    #[test]
    fn integer_bounds_are_ranges_of_the_integer_type() {
        let range = |t, min, max| integer_range(&field(t, min, max), "i16");
        assert_eq!(range(FieldType::I64, Some(1.0), None).unwrap(), "1..");
        assert_eq!(
            range(FieldType::I16, Some(-5.0), Some(5.0)).unwrap(),
            "-5..=5"
        );
        // Fractions are rounded inwards; bounds every value meets are left out.
        assert_eq!(
            range(FieldType::I32, Some(-0.25), Some(7.9)).unwrap(),
            "0..=7"
        );
        assert_eq!(range(FieldType::I16, Some(-1e300), Some(1e300)), None);
        assert_eq!(range(FieldType::I16, None, None), None);
        // No value of the type passes: every value is refused.
        let none = "(std::ops::Bound::Excluded(i16::MAX), std::ops::Bound::Unbounded)";
        assert_eq!(range(FieldType::I16, Some(32768.0), None).unwrap(), none);
        assert_eq!(range(FieldType::I16, None, Some(-1e300)).unwrap(), none);
        assert_eq!(range(FieldType::I16, Some(1.2), Some(1.8)).unwrap(), none);
    }

    #[test]
    fn readers_without_rules_are_plain_functions() {
        let mut statics = Statics {
            prefix: "E_N".into(),
            items: Vec::new(),
        };
        let reader = |t, min, max, statics: &mut Statics| reader(&field(t, min, max), statics);
        assert_eq!(
            reader(FieldType::I32, None, None, &mut statics),
            "p::integer::<i32>"
        );
        assert_eq!(reader(FieldType::Text, None, None, &mut statics), "p::text");
        assert_eq!(
            reader(FieldType::F32, None, Some(1.0), &mut statics),
            "|v, at| p::float32_in(v, at, ..=1.0)"
        );
        assert_eq!(
            reader(
                FieldType::String {
                    max_length: Some(3)
                },
                None,
                None,
                &mut statics
            ),
            "|v, at| p::text_with(v, at, p::TextRules { max_length: Some(3), ..Default::default() })"
        );
        assert!(statics.items.is_empty());
    }
}
