//! Stage 2: checks what the spec means and builds the model. Every problem is collected,
//! so one run reports them all.

use std::collections::{HashMap, HashSet};

use serde_saphyr::Spanned;

use crate::diagnostics::{Problem, did_you_mean};
use crate::model::{
    Checks, Entity, Field, FieldType, Operation, OperationKind, ParentLink, Pointer, Project,
    WriteMode,
};
use crate::spec::{EntitySpec, FieldSpec, SpecFile};

/// PostgreSQL truncates longer identifiers silently.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// PostgreSQL's largest `VARCHAR(n)`.
pub const MAX_VARCHAR: u32 = 10_485_760;

/// Fields of one entity at most: the generated Diesel schema's table size.
pub const MAX_FIELDS: usize = 32;

/// Rust keywords (strict and reserved): not usable as field or entity names.
const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut",
    "pub", "ref", "return", "self", "static", "struct", "super", "trait", "true", "type", "unsafe",
    "use", "where", "while", "abstract", "become", "box", "do", "final", "macro", "override",
    "priv", "try", "typeof", "unsized", "virtual", "yield",
];

/// Type names the generated code defines or relies on.
const RESERVED_TYPE_NAMES: &[&str] = &[
    "Record",
    "Records",
    "ParseError",
    "Operation",
    "Entity",
    "Error",
    "Result",
    "Option",
    "Some",
    "None",
    "Ok",
    "Err",
    "Vec",
    "String",
    "Box",
    "Value",
    "Batch",
    "Worker",
];

/// Identifier check: `^[a-z_][a-z0-9_]*$`, at most 63 bytes, not a Rust keyword.
fn identifier_problem(name: &Spanned<String>, what: &str) -> Option<Problem> {
    let text = name.value.as_str();
    let valid_chars = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !text.as_bytes()[0].is_ascii_digit();
    if !valid_chars {
        let suggestion = to_snake(text);
        let mut problem = Problem::new(
            "invalid_identifier",
            format!("{what} {text:?} is not a valid identifier"),
        )
        .at(name, "not of the form [a-z_][a-z0-9_]*");
        problem = if suggestion.is_empty() || suggestion == text {
            problem.help("use lower-case ASCII letters, digits and underscores, starting with a letter or underscore")
        } else {
            problem.help(format!(
                "use lower-case ASCII letters, digits and underscores, for example {suggestion:?}"
            ))
        };
        return Some(problem);
    }
    // `_` alone is Rust's wildcard, not an identifier: a field named `_` gave
    // `pub _: T`, which does not parse (found by tests/fuzz.rs).
    if text == "_" {
        return Some(
            Problem::new(
                "invalid_identifier",
                format!("{what} \"_\" is not a valid identifier"),
            )
            .at(name, "a wildcard in Rust")
            .help("add a letter or digit, for example \"_1\" or \"value\""),
        );
    }
    if text.len() > MAX_IDENTIFIER_BYTES {
        return Some(
            Problem::new(
                "identifier_too_long",
                format!("{what} {text:?} is longer than {MAX_IDENTIFIER_BYTES} bytes"),
            )
            .at(name, format!("{} bytes", text.len()))
            .help("PostgreSQL would silently truncate it; choose a shorter name"),
        );
    }
    if RUST_KEYWORDS.contains(&text) {
        return Some(
            Problem::new("reserved_identifier", format!("{what} {text:?} is a Rust keyword"))
                .at(name, "reserved in Rust")
                .help(format!(
                    "choose another name, for example \"{text}_value\"; a field can still read the body's \"{text}\" with `source: /{text}`"
                )),
        );
    }
    None
}

/// Best-effort snake_case of arbitrary text, for suggestions.
fn to_snake(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_matches('_').to_owned()
}

/// `line_item` → `LineItem`.
pub fn to_pascal(snake: &str) -> String {
    snake
        .split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Parses an RFC 6901 JSON pointer (`/a/b~1c`).
fn parse_pointer(text: &Spanned<String>) -> Result<Pointer, Problem> {
    let raw = text.value.as_str();
    if raw.is_empty() || !raw.starts_with('/') {
        return Err(
            Problem::new("invalid_pointer", format!("{raw:?} is not a JSON pointer"))
                .at(text, "must start with '/'")
                .help("write the path of the value in the message body, for example /order/id"),
        );
    }
    let mut tokens = Vec::new();
    for token in raw[1..].split('/') {
        let mut decoded = String::new();
        let mut chars = token.chars();
        while let Some(c) = chars.next() {
            if c == '~' {
                match chars.next() {
                    Some('0') => decoded.push('~'),
                    Some('1') => decoded.push('/'),
                    _ => {
                        return Err(Problem::new(
                            "invalid_pointer",
                            format!("{raw:?} has a '~' not followed by 0 or 1"),
                        )
                        .at(text, "bad escape")
                        .help("write ~0 for '~' and ~1 for '/'"));
                    }
                }
            } else {
                decoded.push(c);
            }
        }
        tokens.push(decoded);
    }
    Ok(Pointer {
        text: raw.to_owned(),
        tokens,
    })
}

struct Validator {
    problems: Vec<Problem>,
    entities: Vec<Entity>,
    tables: HashMap<String, ()>,
    type_names: HashSet<String>,
}

/// Checks `spec` and builds the model, or returns every problem found.
pub fn validate(spec: &SpecFile) -> Result<Project, Vec<Problem>> {
    let mut v = Validator {
        problems: Vec::new(),
        entities: Vec::new(),
        tables: HashMap::new(),
        type_names: HashSet::new(),
    };
    if spec.version.value != 1 {
        v.problems.push(
            Problem::new(
                "unsupported_version",
                format!("spec version {} is not supported", spec.version.value),
            )
            .at(&spec.version, "unknown version")
            .help("this nomnom reads `version: 1`"),
        );
    }
    let project = &spec.project;
    let project_ok = !project.value.is_empty()
        && project.value.as_bytes()[0].is_ascii_lowercase()
        && project
            .value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && project.value.len() <= 50
        // One separator at a time and none last: the crate's Rust name is the project's
        // with `-` → `_`, plus `_worker`, and `a--b` or `a-` gave `a__b_worker` or
        // `a__worker`, which rustc's non_snake_case lint refuses under -D warnings
        // (found by tests/fuzz.rs).
        && !project
            .value
            .as_bytes()
            .windows(2)
            .any(|w| matches!(w[0], b'_' | b'-') && matches!(w[1], b'_' | b'-'))
        && !project.value.ends_with(['_', '-']);
    if !project_ok {
        v.problems.push(
            Problem::new("invalid_project", format!("project name {:?} cannot name a crate", project.value))
                .at(project, "not of the form [a-z][a-z0-9]*([_-][a-z0-9]+)*")
                .help("use lower-case ASCII letters and digits, separated by single '-' or '_', starting with a letter, at most 50 characters"),
        );
    }
    if spec.entities.is_empty() {
        v.problems.push(
            Problem::new("no_entities", "the spec has no entities")
                .help("add at least one entity under `entities:`"),
        );
    }
    for entity in &spec.entities {
        v.entity(entity, None);
    }
    v.check_routing(spec);
    v.check_operation_names(spec);
    if v.problems.is_empty() {
        let discriminator = spec
            .routing
            .as_ref()
            .and_then(|r| r.discriminator.as_ref())
            .and_then(|d| parse_pointer(d).ok());
        Ok(Project {
            name: project.value.clone(),
            crate_name: format!("{}-worker", project.value),
            crate_ident: format!("{}_worker", project.value.replace('-', "_")),
            description: spec.description.clone(),
            discriminator,
            entities: v.entities,
        })
    } else {
        Err(v.problems)
    }
}

impl Validator {
    fn entity(&mut self, spec: &EntitySpec, parent: Option<&str>) {
        let problems_before = self.problems.len();
        if let Some(problem) = identifier_problem(&spec.name, "entity name") {
            self.problems.push(problem);
        }
        let name = spec.name.value.clone();
        if self.entities.iter().any(|e| e.name == name) {
            self.problems.push(
                Problem::new(
                    "duplicate_entity",
                    format!("entity {name:?} is defined twice"),
                )
                .at(&spec.name, "second definition")
                .help("entity names must be unique across the spec, children included"),
            );
        }
        let type_name = to_pascal(&name);
        // The Rust type name drops underscores: `__` gave no name at all and `_1` gave
        // `1`, neither an identifier, and the generated crate did not parse (found by
        // tests/fuzz.rs).
        let type_name_ok = type_name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic());
        if !type_name_ok && !name.is_empty() && identifier_problem(&spec.name, "").is_none() {
            self.problems.push(
                Problem::new(
                    "invalid_identifier",
                    format!("entity {name:?} would be the Rust type {type_name:?}, which is not an identifier"),
                )
                .at(&spec.name, "no letter after the underscores")
                .help("start the entity name with a letter, for example \"e_1\""),
            );
        } else if RESERVED_TYPE_NAMES.contains(&type_name.as_str()) {
            self.problems.push(
                Problem::new("reserved_identifier", format!("entity {name:?} would be the Rust type {type_name}, which the generated code uses itself"))
                    .at(&spec.name, "reserved type name")
                    .help("choose another entity name; its table can keep any name with `table:`"),
            );
        } else if !self.type_names.insert(type_name.clone()) && !name.is_empty() {
            self.problems.push(
                Problem::new(
                    "identifier_collision",
                    format!(
                        "entity {name:?} becomes the Rust type {type_name}, like another entity"
                    ),
                )
                .at(&spec.name, "collides after case conversion")
                .help("rename one of them so that their PascalCase forms differ"),
            );
        }
        let table = spec
            .table
            .as_ref()
            .map_or(name.clone(), |t| t.value.clone());
        if let Some(t) = &spec.table
            && let Some(problem) = identifier_problem(t, "table name")
        {
            self.problems.push(problem);
        }
        if table.starts_with("nomnom_") {
            let problem = Problem::new(
                "reserved_identifier",
                format!("table {table:?} uses the reserved prefix nomnom_"),
            );
            self.problems.push(
                match &spec.table {
                    Some(t) => problem.at(t, "reserved prefix"),
                    None => problem.at(&spec.name, "reserved prefix"),
                }
                .help("nomnom's own tables start with nomnom_; pick another table name"),
            );
        } else if table.starts_with("sqlite_") {
            // SQLite reserves these names ("object name reserved for internal use"): the
            // SQLite migration failed (found by tests/fuzz.rs).
            let problem = Problem::new(
                "reserved_identifier",
                format!("table {table:?} uses the prefix sqlite_, which SQLite reserves"),
            );
            self.problems.push(
                match &spec.table {
                    Some(t) => problem.at(t, "reserved prefix"),
                    None => problem.at(&spec.name, "reserved prefix"),
                }
                .help("pick another table name, with `table:` if the entity keeps its name"),
            );
        } else if self.tables.insert(table.clone(), ()).is_some() {
            let problem = Problem::new(
                "duplicate_table",
                format!("table {table:?} is used by two entities"),
            );
            self.problems.push(
                match &spec.table {
                    Some(t) => problem.at(t, "already used"),
                    None => problem.at(&spec.name, "already used"),
                }
                .help("give one of them another `table:`"),
            );
        }

        // Fields.
        let mut fields = Vec::new();
        let mut seen = HashSet::new();
        for field in &spec.fields {
            if !seen.insert(field.name.value.clone()) {
                self.problems.push(
                    Problem::new(
                        "duplicate_field",
                        format!("field {:?} is defined twice in {name:?}", field.name.value),
                    )
                    .at(&field.name, "second definition"),
                );
                continue;
            }
            if let Some(f) = self.field(field) {
                fields.push(f);
            }
        }
        if spec.fields.is_empty() {
            self.problems.push(
                Problem::new("no_fields", format!("entity {name:?} has no fields"))
                    .at(&spec.name, "no fields")
                    .help("add fields under `fields:`"),
            );
        }
        // The generated Diesel schema is built with Diesel's `32-column-tables`: a wider
        // table did not compile (found by tests/fuzz.rs).
        if spec.fields.len() > MAX_FIELDS {
            self.problems.push(
                Problem::new(
                    "too_many_fields",
                    format!(
                        "entity {name:?} has {} fields, more than {MAX_FIELDS}",
                        spec.fields.len()
                    ),
                )
                .at(&spec.name, "too many fields")
                .help("split the entity, for example into a child entity, or keep rarely used values in a json field"),
            );
        }
        let field_names: Vec<&str> = spec.fields.iter().map(|f| f.name.value.as_str()).collect();

        // Keys.
        let key = |v: &mut Self,
                   list: &[Spanned<String>],
                   what: &str,
                   need_non_null: bool|
         -> Vec<String> {
            for item in list {
                match fields.iter().find(|f: &&Field| f.name == item.value) {
                    None => {
                        let mut p = Problem::new(
                            "unknown_field",
                            format!(
                                "{what} names {:?}, which is not a field of {name:?}",
                                item.value
                            ),
                        )
                        .at(item, "no such field");
                        if let Some(s) = did_you_mean(&item.value, field_names.iter().copied()) {
                            p = p.help(format!("did you mean {s:?}?"));
                        }
                        v.problems.push(p);
                    }
                    Some(f) if need_non_null && f.nullable => {
                        v.problems.push(
                            Problem::new(
                                "nullable_key",
                                format!("{what} field {:?} is nullable", item.value),
                            )
                            .at(item, "nullable")
                            .help("key fields must be `nullable: false`"),
                        );
                    }
                    Some(f)
                        if matches!(
                            f.field_type,
                            FieldType::Json | FieldType::F32 | FieldType::F64
                        ) =>
                    {
                        v.problems.push(
                            Problem::new("unsuitable_key", format!("{what} field {:?} cannot be a key (its type compares inexactly)", item.value))
                                .at(item, "not a key type")
                                .help("use an integer, string, uuid, date or decimal field"),
                        );
                    }
                    Some(_) => {}
                }
            }
            list.iter().map(|s| s.value.clone()).collect()
        };
        let primary_key = key(self, &spec.primary_key, "primary_key", true);
        if spec.primary_key.is_empty() && !spec.fields.is_empty() {
            self.problems.push(
                Problem::new("missing_primary_key", format!("entity {name:?} has no primary_key"))
                    .at(&spec.name, "no primary key")
                    .help("name the fields that identify a row, e.g. `primary_key: [id]`; for append-only events add an id field (uuid) to the payload"),
            );
        }
        let upsert_key = if spec.upsert_key.is_empty() {
            primary_key.clone()
        } else {
            key(self, &spec.upsert_key, "upsert_key", true)
        };
        let unique: Vec<Vec<String>> = spec
            .unique
            .iter()
            .map(|u| key(self, u, "unique", false))
            .collect();
        let indexes: Vec<Vec<String>> = spec
            .indexes
            .iter()
            .map(|i| key(self, i, "indexes", false))
            .collect();

        // An empty list gave `UNIQUE ()` or `CREATE INDEX … ()`, and a column named twice
        // `PRIMARY KEY ("a", "a")`: SQL that the databases refuse, so migrations failed
        // (found by tests/fuzz.rs).
        let lists = std::iter::once(("primary_key", &spec.primary_key))
            .chain(std::iter::once(("upsert_key", &spec.upsert_key)))
            .chain(spec.unique.iter().map(|u| ("unique", u)))
            .chain(spec.indexes.iter().map(|i| ("indexes", i)));
        for (what, list) in lists {
            if list.is_empty() && matches!(what, "unique" | "indexes") {
                self.problems.push(
                    Problem::new(
                        "empty_key",
                        format!("an empty list in `{what}` of {name:?}"),
                    )
                    .at(&spec.name, "in this entity")
                    .help("name at least one field, or remove the empty list"),
                );
            }
            let mut seen = HashSet::new();
            for item in list {
                if !seen.insert(item.value.as_str()) {
                    self.problems.push(
                        Problem::new(
                            "duplicate_key_field",
                            format!("`{what}` names {:?} twice", item.value),
                        )
                        .at(item, "named twice")
                        .help("name each field once"),
                    );
                }
            }
        }

        let write = match spec.write.as_ref().map(|w| w.value.as_str()) {
            None | Some("insert") => WriteMode::Insert,
            Some("upsert") => WriteMode::Upsert,
            Some("ignore_duplicates") => WriteMode::IgnoreDuplicates,
            Some(other) => {
                let mut p = Problem::new(
                    "invalid_write_mode",
                    format!("write mode {other:?} is unknown"),
                )
                .at(spec.write.as_ref().expect("matched Some"), "unknown mode");
                p = p.help(
                    match did_you_mean(other, ["insert", "upsert", "ignore_duplicates"]) {
                        Some(s) => {
                            format!("did you mean {s:?}? modes: insert, upsert, ignore_duplicates")
                        }
                        None => "modes: insert, upsert, ignore_duplicates".to_owned(),
                    },
                );
                self.problems.push(p);
                WriteMode::Insert
            }
        };
        if matches!(write, WriteMode::Upsert | WriteMode::IgnoreDuplicates) && upsert_key.is_empty()
        {
            let p = Problem::new(
                "missing_key",
                format!(
                    "entity {name:?} uses write mode {:?} without a key",
                    spec.write
                        .as_ref()
                        .map(|w| w.value.as_str())
                        .unwrap_or_default()
                ),
            );
            self.problems.push(
                match &spec.write { Some(w) => p.at(w, "needs primary_key or upsert_key"), None => p }
                    .help("add `primary_key: [..]` (or `upsert_key: [..]`) naming the fields that identify a row"),
            );
        }

        // Operation.
        let operation = spec.operation.as_ref().and_then(|op| {
            let field = match parse_pointer(&op.field) {
                Ok(p) => p,
                Err(p) => {
                    self.problems.push(p);
                    return None;
                }
            };
            let values = |list: &[Spanned<String>], default: &[&str]| -> Vec<String> {
                if list.is_empty() {
                    default.iter().map(|s| (*s).to_owned()).collect()
                } else {
                    list.iter().map(|s| s.value.clone()).collect()
                }
            };
            let default = match op.default.as_ref().map(|d| d.value.as_str()) {
                None | Some("create") => OperationKind::Create,
                Some("upsert") => OperationKind::Upsert,
                Some("delete") => OperationKind::Delete,
                Some(other) => {
                    self.problems.push(
                        Problem::new(
                            "invalid_operation",
                            format!("default operation {other:?} is unknown"),
                        )
                        .at(
                            op.default.as_ref().expect("matched Some"),
                            "unknown operation",
                        )
                        .help("use create, upsert or delete"),
                    );
                    OperationKind::Create
                }
            };
            if upsert_key.is_empty() {
                self.problems.push(
                    Problem::new(
                        "missing_key",
                        format!(
                            "entity {name:?} reads operations but has no key to upsert or delete by"
                        ),
                    )
                    .at(&op.field, "operations need a key")
                    .help("add `primary_key: [..]` naming the fields that identify a row"),
                );
            }
            let operation = Operation {
                field,
                create: values(&op.create, &["create", "c", "insert"]),
                upsert: values(&op.upsert, &["upsert", "u", "update"]),
                delete: values(&op.delete, &["delete", "d"]),
                default,
            };
            let mut all = HashSet::new();
            for value in operation
                .create
                .iter()
                .chain(&operation.upsert)
                .chain(&operation.delete)
            {
                if !all.insert(value.clone()) {
                    self.problems.push(
                        Problem::new(
                            "ambiguous_operation",
                            format!("operation value {value:?} means two operations"),
                        )
                        .at(&op.field, "ambiguous values")
                        .help("each value may appear in only one of create, upsert, delete"),
                    );
                }
            }
            Some(operation)
        });

        // Parent link (children) or route (roots).
        let parent_link = match parent {
            None => {
                if let Some(source) = &spec.source {
                    self.problems.push(
                        Problem::new("misplaced_key", "`source` is only for child entities")
                            .at(source, "on a root entity")
                            .help("move this entity under its parent's `children:`, or remove `source`"),
                    );
                }
                if let Some(pk) = spec.parent_key.first() {
                    self.problems.push(
                        Problem::new("misplaced_key", "`parent_key` is only for child entities")
                            .at(&pk.field, "on a root entity")
                            .help("move this entity under its parent's `children:`"),
                    );
                }
                None
            }
            Some(parent_name) => {
                // Only a root's parser reads the operation; on a child it was ignored, and
                // its delete-key parser referred to a parent it does not have, so the
                // crate did not compile (found by tests/fuzz.rs).
                if let Some(op) = &spec.operation {
                    self.problems.push(
                        Problem::new("misplaced_key", "`operation` is only for root entities")
                            .at(&op.field, "on a child entity")
                            .help("children are written with their parent's message; give the root entity the operation"),
                    );
                }
                if let Some(route) = &spec.route {
                    self.problems.push(
                        Problem::new("misplaced_key", "`route` is only for root entities")
                            .at(route, "on a child entity")
                            .help("children arrive inside their parent's message"),
                    );
                }
                let source = match &spec.source {
                    Some(s) => parse_pointer(s).map_err(|p| self.problems.push(p)).ok(),
                    None => {
                        self.problems.push(
                            Problem::new("missing_source", format!("child entity {name:?} has no `source`"))
                                .at(&spec.name, "where are its rows?")
                                .help("add `source: /<array field>` naming the array in the parent's body"),
                        );
                        None
                    }
                };
                if spec.parent_key.is_empty() {
                    self.problems.push(
                        Problem::new(
                            "missing_parent_key",
                            format!("child entity {name:?} has no `parent_key`"),
                        )
                        .at(&spec.name, "not linked to its parent")
                        .help("add `parent_key: [{field: <child field>, from: <parent field>}]`"),
                    );
                }
                let parent_entity = self
                    .entities
                    .iter()
                    .find(|e| e.name == parent_name)
                    .cloned();
                let mut keys = Vec::new();
                for link in &spec.parent_key {
                    let child_field = fields.iter_mut().find(|f| f.name == link.field.value);
                    let parent_field = parent_entity
                        .as_ref()
                        .and_then(|p| p.field(&link.from.value));
                    match (child_field, parent_field) {
                        (None, _) => self.problems.push(
                            Problem::new("unknown_field", format!("parent_key field {:?} is not a field of {name:?}", link.field.value))
                                .at(&link.field, "no such field"),
                        ),
                        (_, None) => self.problems.push(
                            Problem::new("unknown_field", format!("parent_key from {:?} is not a field of the parent {parent_name:?}", link.from.value))
                                .at(&link.from, "no such parent field"),
                        ),
                        (Some(child), Some(parent)) => {
                            if child.field_type != parent.field_type {
                                self.problems.push(
                                    Problem::new("type_mismatch", format!("parent_key links {:?} to {:?}, which have different types", link.field.value, link.from.value))
                                        .at(&link.field, "types differ")
                                        .help("give the child field the same type as the parent field"),
                                );
                            } else if child.nullable != parent.nullable {
                                // The child's value is the parent's: `Option<T>` and `T`
                                // do not mix, and the crate did not compile (found by
                                // tests/fuzz.rs).
                                self.problems.push(
                                    Problem::new("type_mismatch", format!("parent_key links {:?} to {:?}, but only one of them is nullable", link.field.value, link.from.value))
                                        .at(&link.field, "nullability differs")
                                        .help(format!("make the child field `nullable: {}` like the parent field", parent.nullable)),
                                );
                            }
                            child.from_parent = true;
                            keys.push((link.field.value.clone(), link.from.value.clone()));
                        }
                    }
                }
                source.map(|source| ParentLink {
                    entity: parent_name.to_owned(),
                    source,
                    keys,
                })
            }
        };
        let route = parent.is_none().then(|| {
            spec.route
                .as_ref()
                .map_or(name.clone(), |r| r.value.clone())
        });
        if let (Some(route), Some(spanned)) = (&route, &spec.route) {
            let ok = !route.is_empty()
                && route.len() <= 64
                && route != "_"
                && route
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                self.problems.push(
                    Problem::new("invalid_route", format!("route {route:?} cannot be sent as an entity hint"))
                        .at(spanned, "not of the form [A-Za-z0-9_-]{1,64}")
                        .help("the API's entity hint allows letters, digits, '_' and '-'; \"_\" alone is reserved"),
                );
            }
        }
        if self.problems.len() > problems_before && spec.name.value.is_empty() {
            return;
        }
        self.entities.push(Entity {
            name: name.clone(),
            type_name,
            table,
            description: spec.description.clone(),
            route,
            write,
            primary_key,
            upsert_key,
            unique,
            indexes,
            operation,
            fields,
            parent: parent_link,
            children: spec.children.iter().map(|c| c.name.value.clone()).collect(),
        });
        for child in &spec.children {
            self.entity(child, Some(&name));
        }
    }

    fn field(&mut self, spec: &FieldSpec) -> Option<Field> {
        let mut ok = true;
        if let Some(problem) = identifier_problem(&spec.name, "field name") {
            self.problems.push(problem);
            ok = false;
        }
        let type_name = spec.field_type.value.as_str();
        let only =
            |v: &mut Self, present: bool, key: &str, at: Option<&Spanned<u32>>, types: &str| {
                if present {
                    let p = Problem::new(
                        "misplaced_key",
                        format!("`{key}` does not apply to type {type_name}"),
                    );
                    v.problems.push(
                        match at {
                            Some(s) => p.at(s, "not for this type"),
                            None => p.at(&spec.field_type, "this type"),
                        }
                        .help(format!("`{key}` is for {types}")),
                    );
                }
            };
        let field_type = match type_name {
            "string" => FieldType::String {
                max_length: spec.max_length.as_ref().map(|m| m.value),
            },
            "text" => FieldType::Text,
            "bool" => FieldType::Bool,
            "i16" => FieldType::I16,
            "i32" => FieldType::I32,
            "i64" => FieldType::I64,
            "f32" => FieldType::F32,
            "f64" => FieldType::F64,
            "decimal" => {
                let (precision, scale) = match (&spec.precision, &spec.scale) {
                    (Some(p), Some(s)) => (p.value, s.value),
                    _ => {
                        self.problems.push(
                            Problem::new(
                                "missing_precision",
                                format!(
                                    "decimal field {:?} needs `precision` and `scale`",
                                    spec.name.value
                                ),
                            )
                            .at(&spec.field_type, "decimal without precision")
                            .help("for example `precision: 15` and `scale: 2` for money"),
                        );
                        (1, 0)
                    }
                };
                if !(1..=1000).contains(&precision) || scale > precision {
                    let p = Problem::new(
                        "invalid_precision",
                        format!("decimal({precision}, {scale}) is not a valid decimal type"),
                    );
                    self.problems.push(
                        match &spec.precision {
                            Some(at) => p.at(at, "out of range"),
                            None => p.at(&spec.field_type, "out of range"),
                        }
                        .help("precision must be 1 to 1000 and scale at most precision"),
                    );
                }
                FieldType::Decimal { precision, scale }
            }
            "date" => FieldType::Date,
            "time" => FieldType::Time,
            "timestamptz" | "timestamp" => FieldType::Timestamptz,
            "uuid" => FieldType::Uuid,
            "json" => FieldType::Json,
            other => {
                let mut p = Problem::new("unknown_type", format!("type {other:?} is unknown"))
                    .at(&spec.field_type, "unknown type");
                p = p.help(
                    match did_you_mean(other, FieldType::NAMES.iter().copied()) {
                        Some(s) => {
                            format!("did you mean {s:?}? types: {}", FieldType::NAMES.join(", "))
                        }
                        None => format!("types: {}", FieldType::NAMES.join(", ")),
                    },
                );
                self.problems.push(p);
                return None;
            }
        };
        // `max_length` of a string is its column's size, `VARCHAR(n)`, which PostgreSQL
        // takes only for 1 <= n <= 10485760: other sizes made a migration it refuses
        // (found by tests/fuzz.rs).
        if let (FieldType::String { .. }, Some(max)) = (field_type, &spec.max_length)
            && !(1..=MAX_VARCHAR).contains(&max.value)
        {
            self.problems.push(
                Problem::new(
                    "invalid_length",
                    format!("max_length {} is not a column size", max.value),
                )
                .at(max, "out of range")
                .help(format!(
                    "a string's max_length is 1 to {MAX_VARCHAR}; use type text for longer values"
                )),
            );
        }
        only(
            self,
            spec.precision.is_some() && !matches!(field_type, FieldType::Decimal { .. }),
            "precision",
            spec.precision.as_ref(),
            "decimal",
        );
        only(
            self,
            spec.scale.is_some() && !matches!(field_type, FieldType::Decimal { .. }),
            "scale",
            spec.scale.as_ref(),
            "decimal",
        );
        only(
            self,
            spec.max_length.is_some() && !field_type.is_textual(),
            "max_length",
            spec.max_length.as_ref(),
            "string and text",
        );
        only(
            self,
            spec.min_length.is_some() && !field_type.is_textual(),
            "min_length",
            spec.min_length.as_ref(),
            "string and text",
        );
        for (key, value) in [("min", &spec.min), ("max", &spec.max)] {
            if let Some(v) = value
                && !field_type.is_numeric()
            {
                self.problems.push(
                    Problem::new(
                        "misplaced_key",
                        format!("`{key}` does not apply to type {type_name}"),
                    )
                    .at(v, "not for this type")
                    .help("`min` and `max` are for numeric types"),
                );
            }
        }
        // `.nan` and `.inf` are YAML numbers, but the bounds become Rust float literals
        // (`Some(NaN)` did not compile) and a NaN bound compares false with everything
        // (found by tests/fuzz.rs).
        for (key, value) in [("min", &spec.min), ("max", &spec.max)] {
            if let Some(v) = value
                && !v.value.is_finite()
            {
                self.problems.push(
                    Problem::new(
                        "invalid_bound",
                        format!("`{key}` {} is not a finite number", v.value),
                    )
                    .at(v, "not finite")
                    .help(format!("remove `{key}` to leave that side unbounded")),
                );
            }
        }
        if let (Some(min), Some(max)) = (&spec.min, &spec.max)
            && min.value > max.value
        {
            self.problems.push(
                Problem::new(
                    "empty_range",
                    format!("min {} is greater than max {}", min.value, max.value),
                )
                .at(min, "min")
                .help("no value could pass; swap them"),
            );
        }
        if let Some(pattern) = &spec.pattern {
            if !field_type.is_textual() {
                self.problems.push(
                    Problem::new(
                        "misplaced_key",
                        format!("`pattern` does not apply to type {type_name}"),
                    )
                    .at(pattern, "not for this type")
                    .help("`pattern` is for string and text"),
                );
            } else if let Err(e) = regex::Regex::new(&pattern.value) {
                // Compiled, not only parsed, with the crate and limits the generated worker
                // uses: a pattern too big to compile would panic the worker on its first
                // message instead of failing here.
                self.problems.push(
                    Problem::new(
                        "invalid_pattern",
                        format!(
                            "pattern {:?} is not a valid regular expression",
                            pattern.value
                        ),
                    )
                    .at(pattern, "invalid regex")
                    .help(
                        e.to_string()
                            .lines()
                            .last()
                            .unwrap_or("check the syntax")
                            .to_owned(),
                    ),
                );
            }
        }
        if let Some(first) = spec.allowed.first()
            && !field_type.is_textual()
        {
            self.problems.push(
                Problem::new(
                    "misplaced_key",
                    format!("`enum` does not apply to type {type_name}"),
                )
                .at(first, "not for this type")
                .help("`enum` is for string and text"),
            );
        }
        let source = match &spec.source {
            Some(s) => match parse_pointer(s) {
                Ok(p) => p,
                Err(p) => {
                    self.problems.push(p);
                    ok = false;
                    Pointer {
                        text: String::new(),
                        tokens: Vec::new(),
                    }
                }
            },
            None => Pointer {
                text: format!("/{}", spec.name.value.replace('~', "~0").replace('/', "~1")),
                tokens: vec![spec.name.value.clone()],
            },
        };
        let nullable = spec.nullable.as_ref().is_some_and(|n| n.value);
        if let Some(default) = &spec.default
            && !default_fits(&default.value, field_type)
        {
            self.problems.push(
                Problem::new("invalid_default", format!("default {} does not fit type {type_name}", default.value))
                    .at(default, "wrong type")
                    .help("write a default of the field's type (decimals, dates, times and uuids as strings)"),
            );
        }
        ok.then(|| Field {
            name: spec.name.value.clone(),
            field_type,
            nullable,
            source,
            default: spec.default.as_ref().map(|d| d.value.clone()),
            checks: Checks {
                min: spec.min.as_ref().map(|m| m.value),
                max: spec.max.as_ref().map(|m| m.value),
                min_length: spec.min_length.as_ref().map(|m| m.value),
                max_length: spec.max_length.as_ref().map(|m| m.value),
                pattern: spec.pattern.as_ref().map(|p| p.value.clone()),
                allowed: spec.allowed.iter().map(|a| a.value.clone()).collect(),
            },
            description: spec.description.clone(),
            from_parent: false,
        })
    }

    /// An entity `x` with an operation also gets the Rust names `x_upserts`,
    /// `x_deletes` and `X_UPSERT`; an entity of one of those names made them twice and the
    /// crate did not compile (found by tests/fuzz.rs).
    fn check_operation_names(&mut self, spec: &SpecFile) {
        fn find<'a>(entities: &'a [EntitySpec], name: &str) -> Option<&'a EntitySpec> {
            entities.iter().find_map(|e| {
                (e.name.value == name)
                    .then_some(e)
                    .or_else(|| find(&e.children, name))
            })
        }
        let names: HashSet<&str> = self.entities.iter().map(|e| e.name.as_str()).collect();
        let mut problems = Vec::new();
        for entity in self.entities.iter().filter(|e| e.operation.is_some()) {
            for suffix in ["_upserts", "_deletes", "_upsert"] {
                let taken = format!("{}{suffix}", entity.name);
                if !names.contains(taken.as_str()) {
                    continue;
                }
                let mut problem = Problem::new(
                    "identifier_collision",
                    format!(
                        "entity {taken:?} has a name the generated code uses for the operations of entity {:?}",
                        entity.name
                    ),
                )
                .help("rename this entity; its table can keep any name with `table:`");
                if let Some(at) = find(&spec.entities, &taken) {
                    problem = problem.at(&at.name, "collides with generated names");
                }
                problems.push(problem);
            }
        }
        self.problems.extend(problems);
    }

    fn check_routing(&mut self, spec: &SpecFile) {
        let discriminator = spec.routing.as_ref().and_then(|r| r.discriminator.as_ref());
        if let Some(d) = discriminator
            && let Err(p) = parse_pointer(d)
        {
            self.problems.push(p);
        }
        let mut routes: HashMap<String, &Spanned<String>> = HashMap::new();
        for root in &spec.entities {
            let route = root
                .route
                .as_ref()
                .map_or(root.name.value.clone(), |r| r.value.clone());
            let at = root.route.as_ref().unwrap_or(&root.name);
            if routes.insert(route.clone(), at).is_some() {
                self.problems.push(
                    Problem::new(
                        "ambiguous_route",
                        format!("route {route:?} selects two entities"),
                    )
                    .at(at, "second entity with this route")
                    .help("give each root entity its own `route`"),
                );
            }
        }
    }
}

fn default_fits(value: &serde_json::Value, field_type: FieldType) -> bool {
    use serde_json::Value;
    match (field_type, value) {
        (_, Value::Null) => true,
        (FieldType::Bool, Value::Bool(_)) => true,
        (FieldType::I16 | FieldType::I32 | FieldType::I64, Value::Number(n)) => {
            n.is_i64() || n.is_u64()
        }
        (FieldType::F32 | FieldType::F64, Value::Number(_)) => true,
        (FieldType::Decimal { .. }, Value::Number(_) | Value::String(_)) => true,
        (FieldType::String { .. } | FieldType::Text, Value::String(_)) => true,
        (
            FieldType::Date | FieldType::Time | FieldType::Timestamptz | FieldType::Uuid,
            Value::String(_),
        ) => true,
        (FieldType::Json, _) => true,
        _ => false,
    }
}
