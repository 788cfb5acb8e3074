//! Stage 2: checks what the spec means and builds the model. Every problem is collected,
//! so one run reports them all. One function per rule; the problems themselves are the
//! typed enums of [`problem`], which say their code, message, label and help.

mod field;
mod names;
pub mod problem;

use std::collections::HashSet;

use serde_saphyr::Spanned;

use crate::diagnostics::{Problem, did_you_mean};
use crate::model::{
    Entity, FanOut, Field, FieldType, Operation, OperationKind, ParentLink, Pointer, Project,
    WriteMode,
};
use crate::spec::{EntitySpec, FieldSpec, OneOrMany, OperationSpec, ParentKeySpec, SpecFile};
pub use names::to_pascal;
use names::{RESERVED_TYPE_NAMES, identifier_problem, is_project_name, is_route, parse_pointer};
use problem::{Keys, Links, Naming, Rule};

/// PostgreSQL truncates longer identifiers silently.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// PostgreSQL's largest `VARCHAR(n)`.
pub const MAX_VARCHAR: u32 = 10_485_760;

/// Columns of one table at most (fields, and a root's guard columns): the widest table
/// Diesel's `table!` takes (its `128-column-tables` feature).
pub const MAX_FIELDS: usize = 128;

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
    entities: Vec<Entity>,
    tables: HashSet<String>,
    type_names: HashSet<String>,
}

/// Checks `spec` and builds the model, or returns every problem found.
pub fn validate(spec: &SpecFile) -> Result<Project, Vec<Problem>> {
    let mut v = Validator::default();
    v.check_header(spec);
    for entity in &spec.entities {
        v.entity(entity, None);
    }
    v.check_routing(spec);
    v.fan_outs(spec);
    if !v.problems.is_empty() {
        return Err(v.problems);
    }
    let discriminators = spec
        .routing
        .as_ref()
        .and_then(|r| r.discriminator.as_ref())
        .map(|d| {
            (items(d).iter())
                .filter_map(|d| parse_pointer(d).ok())
                .collect()
        })
        .unwrap_or_default();
    let project = &spec.project.value;
    Ok(Project {
        name: project.clone(),
        crate_name: format!("{project}-worker"),
        crate_ident: format!("{}_worker", project.replace('-', "_")),
        description: spec.description.clone(),
        discriminators,
        entities: v.entities,
    })
}

/// The items of a one-or-many value, each placed where the value was written.
fn items(value: &Spanned<OneOrMany>) -> Vec<Spanned<String>> {
    (value.value.0.iter())
        .map(|item| Spanned {
            value: item.clone(),
            referenced: value.referenced,
            defined: value.defined,
        })
        .collect()
}

/// Whether the spec has a field of this name (which may have failed its own checks, and
/// then is not reported again where it is named).
fn written_field(spec: &EntitySpec, name: &str) -> bool {
    spec.fields.iter().any(|f| f.name.value == name)
}

/// Field names of an entity's spec, for "did you mean".
fn field_names(spec: &EntitySpec) -> Vec<&str> {
    spec.fields.iter().map(|f| f.name.value.as_str()).collect()
}

/// The place to point at for a problem of the entity's table: `table:`, or its name.
fn table_place(spec: &EntitySpec) -> &Spanned<String> {
    spec.table.as_ref().unwrap_or(&spec.name)
}

impl Validator {
    fn report(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    /// The version, the project name, and at least one entity.
    fn check_header(&mut self, spec: &SpecFile) {
        if spec.version.value != 1 {
            let version = spec.version.value.to_string();
            self.report(Naming::UnsupportedVersion { version }.at(&spec.version));
        }
        if !is_project_name(&spec.project.value) {
            let name = spec.project.value.clone();
            self.report(Naming::InvalidProject { name }.at(&spec.project));
        }
        if spec.entities.is_empty() {
            self.report(Naming::NoEntities.unplaced());
        }
    }

    fn entity(&mut self, spec: &EntitySpec, parent: Option<&str>) {
        let problems_before = self.problems.len();
        let name = spec.name.value.clone();
        let type_name = self.check_entity_name(spec);
        let table = self.check_table(spec);
        if let Some(problem) =
            (spec.renamed_from.as_ref()).and_then(|old| identifier_problem(old, "table name"))
        {
            self.report(problem);
        }
        let guard = match (parent, &spec.version) {
            (Some(_), _) => 0,
            (None, None) => 1,
            (None, Some(_)) => 2,
        };
        let mut fields = self.fields(spec, guard);
        let keys = self.keys(spec, &fields);
        let write = self.write_mode(spec, &keys.upsert_key);
        let operation = spec
            .operation
            .as_ref()
            .and_then(|op| self.operation(&name, op, &keys.upsert_key));
        let version = self.version(spec, &fields, parent.is_none());
        let parent_link = match parent {
            None => {
                self.check_root(spec);
                None
            }
            Some(parent) => self.parent_link(spec, parent, &mut fields),
        };
        let routes = match parent {
            None => self.routes(spec),
            Some(_) => Vec::new(),
        };
        if self.problems.len() > problems_before && name.is_empty() {
            return;
        }
        self.entities.push(Entity {
            name: name.clone(),
            type_name,
            table,
            renamed_from: spec.renamed_from.as_ref().map(|r| r.value.clone()),
            description: spec.description.clone(),
            routes,
            write,
            primary_key: keys.primary_key,
            upsert_key: keys.upsert_key,
            unique: keys.unique,
            indexes: keys.indexes,
            operation,
            version,
            fields,
            parent: parent_link,
            children: spec.children.iter().map(|c| c.name.value.clone()).collect(),
            // Set by `fan_outs`, which knows the spec's routing.
            fan_out: None,
        });
        for child in &spec.children {
            self.entity(child, Some(&name));
        }
    }

    /// The entity's name, and the Rust type it becomes; returns the type name.
    fn check_entity_name(&mut self, spec: &EntitySpec) -> String {
        let name = spec.name.value.clone();
        if let Some(problem) = identifier_problem(&spec.name, "entity name") {
            self.report(problem);
        }
        if self.entities.iter().any(|e| e.name == name) {
            self.report(Naming::DuplicateEntity { name: name.clone() }.at(&spec.name));
        }
        let type_name = to_pascal(&name);
        // The Rust type name drops underscores: `__` gave no name at all and `_1` gave
        // `1`, neither an identifier, and the generated crate did not parse (found by
        // tests/fuzz.rs).
        let type_name_ok = type_name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic());
        let rule =
            if !type_name_ok && !name.is_empty() && identifier_problem(&spec.name, "").is_none() {
                Some(Naming::TypeNotIdentifier {
                    name,
                    type_name: type_name.clone(),
                })
            } else if RESERVED_TYPE_NAMES.contains(&type_name.as_str()) {
                Some(Naming::ReservedTypeName {
                    name,
                    type_name: type_name.clone(),
                })
            } else if !self.type_names.insert(type_name.clone()) && !name.is_empty() {
                Some(Naming::TypeNameCollision {
                    name,
                    type_name: type_name.clone(),
                })
            } else {
                None
            };
        if let Some(rule) = rule {
            self.report(rule.at(&spec.name));
        }
        type_name
    }

    /// The table's name: an identifier, no reserved prefix, one entity per table.
    fn check_table(&mut self, spec: &EntitySpec) -> String {
        let table = spec
            .table
            .as_ref()
            .map_or(spec.name.value.clone(), |t| t.value.clone());
        if let Some(problem) = spec
            .table
            .as_ref()
            .and_then(|t| identifier_problem(t, "table name"))
        {
            self.report(problem);
        }
        let rule = if table.starts_with("nomnom_") {
            Some(Naming::NomnomTablePrefix {
                table: table.clone(),
            })
        } else if table.starts_with("sqlite_") {
            // SQLite reserves these names ("object name reserved for internal use"): the
            // SQLite migration failed (found by tests/fuzz.rs).
            Some(Naming::SqliteTablePrefix {
                table: table.clone(),
            })
        } else if !self.tables.insert(table.clone()) {
            Some(Naming::DuplicateTable {
                table: table.clone(),
            })
        } else {
            None
        };
        if let Some(rule) = rule {
            self.report(rule.at(table_place(spec)));
        }
        table
    }

    /// The entity's fields: each checked, none twice, at least one, and with the
    /// columns nomnom adds to a root's table (`guard` of them), at most [`MAX_FIELDS`].
    fn fields(&mut self, spec: &EntitySpec, guard: usize) -> Vec<Field> {
        let name = &spec.name.value;
        let mut fields = Vec::new();
        let mut seen = HashSet::new();
        for field in &spec.fields {
            if !seen.insert(field.name.value.clone()) {
                let rule = Keys::DuplicateField {
                    field: field.name.value.clone(),
                    entity: name.clone(),
                };
                self.report(rule.at(&field.name));
                continue;
            }
            let Some(valid) = field::field(field, &mut self.problems) else {
                continue;
            };
            let mut bounds = if valid.field_type == FieldType::PartialTimestamp {
                self.partial_bounds(field, &valid)
            } else {
                Vec::new()
            };
            // A bound named like a field of the spec would be a second struct field.
            bounds.retain(|bound| {
                let taken = spec.fields.iter().any(|f| f.name.value == bound.name);
                if taken {
                    let rule = Keys::BoundTaken {
                        field: field.name.value.clone(),
                        bound: bound.name.clone(),
                    };
                    self.report(rule.at(&field.name));
                }
                !taken
            });
            fields.push((valid, field));
            fields.extend(bounds.into_iter().map(|bound| (bound, field)));
        }
        let mut columns = HashSet::new();
        for (field, spec_field) in &fields {
            if !columns.insert(field.column.clone()) {
                let rule = problem::FieldRule::DuplicateColumn {
                    column: field.column.clone(),
                    entity: name.clone(),
                };
                self.report(rule.at(spec_field.column.as_ref().unwrap_or(&spec_field.name)));
            }
        }
        if spec.fields.is_empty() {
            let rule = Keys::NoFields {
                entity: name.clone(),
            };
            self.report(rule.at(&spec.name));
        }
        // Diesel's `table!` takes at most 128 columns (with its widest feature; the
        // generated crate asks for the narrowest that fits). A root's table also holds
        // the guard columns, and a partial timestamp two bounds.
        let bounds = fields.len() - fields.iter().filter(|(f, _)| !is_bound(f)).count();
        let count = spec.fields.len() + bounds;
        if count + guard > MAX_FIELDS {
            let rule = Keys::TooManyFields {
                entity: name.clone(),
                count,
                guard,
            };
            self.report(rule.at(&spec.name));
        }
        fields.into_iter().map(|(field, _)| field).collect()
    }

    /// The fields a `partial_timestamp` adds: `<name>_start` and `<name>_end`, read from
    /// the same source, with their columns `<column>_start` and `<column>_end`.
    fn partial_bounds(&mut self, spec: &FieldSpec, field: &Field) -> Vec<Field> {
        [
            ("start", FieldType::PartialStart, "the first instant"),
            ("end", FieldType::PartialEnd, "the first instant after"),
        ]
        .into_iter()
        .filter_map(|(suffix, field_type, what)| {
            let mut name = spec.name.clone();
            name.value = format!("{}_{suffix}", field.name);
            let mut column = spec.column.clone().unwrap_or_else(|| spec.name.clone());
            column.value = format!("{}_{suffix}", field.column);
            let problems: Vec<Problem> = identifier_problem(&name, "field name")
                .into_iter()
                .chain(names::column_problem(&column))
                .collect();
            let valid = problems.is_empty();
            problems.into_iter().for_each(|p| self.report(p));
            valid.then(|| Field {
                name: name.value,
                column: column.value,
                field_type,
                formats: Vec::new(),
                checks: Default::default(),
                description: Some(format!("{what} `{}` covers.", field.name)),
                renamed_from: None,
                ..field.clone()
            })
        })
        .collect()
    }
}

/// The keys of an entity, as field names.
struct EntityKeys {
    primary_key: Vec<String>,
    upsert_key: Vec<String>,
    unique: Vec<Vec<String>>,
    indexes: Vec<Vec<String>>,
}

impl Validator {
    fn keys(&mut self, spec: &EntitySpec, fields: &[Field]) -> EntityKeys {
        let primary_key = self.key(spec, fields, &spec.primary_key, "primary_key", true);
        if spec.primary_key.is_empty() && !spec.fields.is_empty() {
            let rule = Keys::MissingPrimaryKey {
                entity: spec.name.value.clone(),
            };
            self.report(rule.at(&spec.name));
        }
        let upsert_key = if spec.upsert_key.is_empty() {
            primary_key.clone()
        } else {
            self.key(spec, fields, &spec.upsert_key, "upsert_key", true)
        };
        let unique = (spec.unique.iter())
            .map(|u| self.key(spec, fields, u, "unique", false))
            .collect();
        let indexes = (spec.indexes.iter())
            .map(|i| self.key(spec, fields, i, "indexes", false))
            .collect();
        self.check_key_lists(spec);
        EntityKeys {
            primary_key,
            upsert_key,
            unique,
            indexes,
        }
    }

    /// One key (`what`: its spec key): fields of the entity, of types that compare
    /// exactly, and not nullable when `need_non_null`.
    fn key(
        &mut self,
        spec: &EntitySpec,
        fields: &[Field],
        list: &[Spanned<String>],
        what: &str,
        need_non_null: bool,
    ) -> Vec<String> {
        for item in list {
            let field = item.value.clone();
            let what = what.to_owned();
            let rule = match fields.iter().find(|f| f.name == item.value) {
                None if written_field(spec, &item.value) => continue,
                None => Keys::KeyNotAField {
                    what,
                    suggestion: did_you_mean(&field, field_names(spec)).map(str::to_owned),
                    field,
                    entity: spec.name.value.clone(),
                },
                Some(f) if need_non_null && f.nullable => Keys::NullableKey { what, field },
                Some(f)
                    if f.array
                        || matches!(
                            f.field_type,
                            FieldType::Json | FieldType::F32 | FieldType::F64
                        ) =>
                {
                    Keys::UnsuitableKey { what, field }
                }
                Some(f) if f.field_type == FieldType::Numeric => {
                    Keys::UnscaledDecimalKey { what, field }
                }
                Some(_) => continue,
            };
            self.report(rule.at(item));
        }
        list.iter().map(|s| s.value.clone()).collect()
    }

    /// An empty list gave `UNIQUE ()` or `CREATE INDEX … ()`, and a column named twice
    /// `PRIMARY KEY ("a", "a")`: SQL that the databases refuse, so migrations failed
    /// (found by tests/fuzz.rs).
    fn check_key_lists(&mut self, spec: &EntitySpec) {
        let lists = std::iter::once(("primary_key", &spec.primary_key))
            .chain(std::iter::once(("upsert_key", &spec.upsert_key)))
            .chain(spec.unique.iter().map(|u| ("unique", u)))
            .chain(spec.indexes.iter().map(|i| ("indexes", i)));
        for (what, list) in lists {
            if list.is_empty() && matches!(what, "unique" | "indexes") {
                let rule = Keys::EmptyKey {
                    what: what.to_owned(),
                    entity: spec.name.value.clone(),
                };
                self.report(rule.at(&spec.name));
            }
            let mut seen = HashSet::new();
            for item in list.iter().filter(|item| !seen.insert(item.value.as_str())) {
                let rule = Keys::DuplicateKeyField {
                    what: what.to_owned(),
                    field: item.value.clone(),
                };
                self.report(rule.at(item));
            }
        }
    }

    /// The write mode, and a key for the modes that need one.
    fn write_mode(&mut self, spec: &EntitySpec, upsert_key: &[String]) -> WriteMode {
        let written = spec.write.as_ref();
        let write = match written.map(|w| w.value.as_str()) {
            None | Some("insert") => WriteMode::Insert,
            Some("upsert") => WriteMode::Upsert,
            Some("ignore_duplicates") => WriteMode::IgnoreDuplicates,
            Some(other) => {
                let rule = Keys::UnknownWriteMode {
                    mode: other.to_owned(),
                    suggestion: did_you_mean(other, ["insert", "upsert", "ignore_duplicates"])
                        .map(str::to_owned),
                };
                self.report(rule.place(written));
                WriteMode::Insert
            }
        };
        if matches!(write, WriteMode::Upsert | WriteMode::IgnoreDuplicates) && upsert_key.is_empty()
        {
            let rule = Keys::WriteModeWithoutKey {
                entity: spec.name.value.clone(),
                mode: written.map(|w| w.value.clone()).unwrap_or_default(),
            };
            self.report(rule.place(written));
        }
        write
    }
}

/// The values that select an operation: as listed, or the defaults.
fn operation_values(list: &[Spanned<String>], default: &[&str]) -> Vec<String> {
    if list.is_empty() {
        default.iter().map(|s| (*s).to_owned()).collect()
    } else {
        list.iter().map(|s| s.value.clone()).collect()
    }
}

impl Validator {
    /// How a root entity reads the operation of a message.
    fn operation(
        &mut self,
        entity: &str,
        op: &OperationSpec,
        upsert_key: &[String],
    ) -> Option<Operation> {
        let field = parse_pointer(&op.field).map_err(|p| self.report(p)).ok()?;
        let default = match op.default.as_ref().map(|d| d.value.as_str()) {
            None | Some("create") => OperationKind::Create,
            Some("upsert") => OperationKind::Upsert,
            Some("patch") => OperationKind::Patch,
            Some("delete") => OperationKind::Delete,
            Some(other) => {
                let rule = Links::UnknownOperation {
                    operation: other.to_owned(),
                };
                self.report(rule.place(op.default.as_ref()));
                OperationKind::Create
            }
        };
        if upsert_key.is_empty() {
            let rule = Links::OperationWithoutKey {
                entity: entity.to_owned(),
            };
            self.report(rule.at(&op.field));
        }
        let operation = Operation {
            field,
            create: operation_values(&op.create, &["create", "c", "insert"]),
            upsert: operation_values(&op.upsert, &["upsert", "u", "update"]),
            patch: operation_values(&op.patch, &["patch", "p"]),
            delete: operation_values(&op.delete, &["delete", "d"]),
            default,
        };
        let mut all = HashSet::new();
        let values = (operation.create.iter())
            .chain(&operation.upsert)
            .chain(&operation.patch)
            .chain(&operation.delete);
        for value in values.filter(|v| !all.insert(v.as_str())) {
            let rule = Links::AmbiguousOperation {
                value: value.clone(),
            };
            self.report(rule.at(&op.field));
        }
        Some(operation)
    }

    /// A root's version: a non-nullable field of a type that orders exactly and converts
    /// to an integer.
    fn version(&mut self, spec: &EntitySpec, fields: &[Field], root: bool) -> Option<String> {
        let written = spec.version.as_ref()?;
        let name = written.value.clone();
        let rule = if !root {
            Links::VersionOnChild
        } else {
            match fields.iter().find(|f| f.name == name) {
                None if written_field(spec, &name) => return None,
                None => Links::VersionNotAField {
                    suggestion: did_you_mean(&name, field_names(spec)).map(str::to_owned),
                    field: name,
                    entity: spec.name.value.clone(),
                },
                Some(f) if f.array || !f.field_type.can_version() => Links::VersionType {
                    field: name,
                    type_name: spec
                        .fields
                        .iter()
                        .find(|s| s.name.value == f.name)
                        .map_or_else(String::new, |s| s.field_type.value.clone()),
                },
                Some(f) if f.nullable => Links::NullableVersion { field: name },
                Some(_) => return Some(name),
            }
        };
        self.report(rule.at(written));
        None
    }

    /// Keys only children have.
    fn check_root(&mut self, spec: &EntitySpec) {
        if let Some(source) = &spec.source {
            self.report(Links::SourceOnRoot.at(source));
        }
        if let Some(pk) = spec.parent_key.first() {
            self.report(Links::ParentKeyOnRoot.at(&pk.field));
        }
        for field in &spec.fields {
            if let Some(source) =
                (field.source.as_ref()).filter(|s| s.value.text() == Some("$index"))
            {
                let field = field.name.value.clone();
                self.report(Links::IndexOnRoot { field }.at(source));
            }
        }
    }

    /// A child's link to its parent: where its rows are, and the fields the parent fills.
    fn parent_link(
        &mut self,
        spec: &EntitySpec,
        parent: &str,
        fields: &mut [Field],
    ) -> Option<ParentLink> {
        // Only a root's parser reads the operation; on a child it was ignored, and its
        // delete-key parser referred to a parent it does not have, so the crate did not
        // compile (found by tests/fuzz.rs).
        if let Some(op) = &spec.operation {
            self.report(Links::OperationOnChild.at(&op.field));
        }
        if let Some(route) = &spec.route {
            self.report(Links::RouteOnChild.at(route));
        }
        if let Some(fan_out) = &spec.fan_out {
            self.report(Links::FanOutOnChild.at(fan_out));
        }
        let entity = spec.name.value.clone();
        let source = match &spec.source {
            Some(s) => parse_pointer(s).map_err(|p| self.report(p)).ok(),
            None => {
                self.report(
                    Links::MissingSource {
                        entity: entity.clone(),
                    }
                    .at(&spec.name),
                );
                None
            }
        };
        if spec.parent_key.is_empty() {
            self.report(Links::MissingParentKey { entity }.at(&spec.name));
        }
        let parent_entity = self.entities.iter().find(|e| e.name == parent).cloned();
        let keys = spec
            .parent_key
            .iter()
            .filter_map(|link| self.parent_key(spec, parent, parent_entity.as_ref(), link, fields))
            .collect();
        source.map(|source| ParentLink {
            entity: parent.to_owned(),
            source,
            keys,
        })
    }

    /// One `parent_key` pair: both fields exist, with the same type and nullability.
    /// Marks the child field as filled from the parent.
    fn parent_key(
        &mut self,
        spec: &EntitySpec,
        parent: &str,
        parent_entity: Option<&Entity>,
        link: &ParentKeySpec,
        fields: &mut [Field],
    ) -> Option<(String, String)> {
        let (field, from) = (link.field.value.clone(), link.from.value.clone());
        let Some(child) = fields.iter_mut().find(|f| f.name == field) else {
            if written_field(spec, &field) {
                return None;
            }
            let entity = spec.name.value.clone();
            self.report(Links::ParentKeyNotAField { field, entity }.at(&link.field));
            return None;
        };
        let Some(parent_field) = parent_entity.and_then(|p| p.field(&from)) else {
            let parent = parent.to_owned();
            self.report(Links::ParentKeyFromNotAField { from, parent }.at(&link.from));
            return None;
        };
        if child.field_type != parent_field.field_type || child.array != parent_field.array {
            let rule = Links::ParentKeyTypes {
                field: field.clone(),
                from: from.clone(),
            };
            self.report(rule.at(&link.field));
        } else if child.nullable != parent_field.nullable {
            // The child's value is the parent's: `Option<T>` and `T` do not mix, and the
            // crate did not compile (found by tests/fuzz.rs).
            let rule = Links::ParentKeyNullability {
                field: field.clone(),
                from: from.clone(),
                parent_nullable: parent_field.nullable,
            };
            self.report(rule.at(&link.field));
        }
        child.from_parent = true;
        Some((field, from))
    }

    /// A root's routes: `route:` (one or a list), or its name. A route is what the API's
    /// entity hint or the discriminator field says, so it can be any text a sender
    /// writes, within what the hint allows.
    fn routes(&mut self, spec: &EntitySpec) -> Vec<String> {
        let Some(written) = &spec.route else {
            return vec![spec.name.value.clone()];
        };
        if written.value.0.is_empty() {
            let route = String::new();
            self.report(Naming::InvalidRoute { route }.at(written));
        }
        for route in &written.value.0 {
            if !is_route(route) {
                let route = route.clone();
                self.report(Naming::InvalidRoute { route }.at(written));
            }
        }
        written.value.0.clone()
    }

    /// Each root entity's `fan_out`: its pointers, its discriminator (its own, else the
    /// spec's routing discriminator) and what becomes of records no entity takes.
    fn fan_outs(&mut self, spec: &SpecFile) {
        let routing = spec.routing.as_ref().and_then(|r| r.discriminator.as_ref());
        for root in &spec.entities {
            let Some(written) = &root.fan_out else {
                continue;
            };
            let fan_out = &written.value;
            let array = parse_pointer(&fan_out.array).map_err(|p| self.report(p));
            let record = match &fan_out.record {
                Some(r) if r.value.is_empty() => Ok(Pointer {
                    text: String::new(),
                    tokens: Vec::new(),
                }),
                Some(r) => parse_pointer(r).map_err(|p| self.report(p)),
                None => Ok(Pointer {
                    text: String::new(),
                    tokens: Vec::new(),
                }),
            };
            let discriminators = match fan_out.discriminator.as_ref().or(routing) {
                Some(d) if !d.value.0.is_empty() => (items(d).iter())
                    .map(|d| parse_pointer(d).map_err(|p| self.report(p)))
                    .collect::<Result<Vec<_>, ()>>(),
                Some(d) => {
                    let raw = String::new();
                    self.report(Naming::NotAPointer { raw }.at(d));
                    Err(())
                }
                None => {
                    let entity = root.name.value.clone();
                    self.report(Links::FanOutWithoutDiscriminator { entity }.at(written));
                    Err(())
                }
            };
            let ignore_unrouted = match &fan_out.unrouted {
                None => Ok(false),
                Some(u) if u.value == "dead_letter" => Ok(false),
                Some(u) if u.value == "ignore" => Ok(true),
                Some(u) => {
                    let value = u.value.clone();
                    self.report(Links::InvalidUnrouted { value }.at(u));
                    Err(())
                }
            };
            let (Ok(array), Ok(record), Ok(discriminators), Ok(ignore_unrouted)) =
                (array, record, discriminators, ignore_unrouted)
            else {
                continue;
            };
            if let Some(entity) =
                (self.entities.iter_mut()).find(|e| e.parent.is_none() && e.name == root.name.value)
            {
                entity.fan_out = Some(FanOut {
                    array,
                    record,
                    discriminators,
                    ignore_unrouted,
                });
            }
        }
    }

    fn check_routing(&mut self, spec: &SpecFile) {
        let discriminator = spec.routing.as_ref().and_then(|r| r.discriminator.as_ref());
        if let Some(d) = discriminator {
            if d.value.0.is_empty() {
                let raw = String::new();
                self.report(Naming::NotAPointer { raw }.at(d));
            }
            for pointer in items(d) {
                if let Err(p) = parse_pointer(&pointer) {
                    self.report(p);
                }
            }
        }
        let mut routes: HashSet<String> = HashSet::new();
        for root in &spec.entities {
            let written = match &root.route {
                Some(route) => items(route),
                None => vec![root.name.clone()],
            };
            for at in written {
                let route = at.value.clone();
                if !routes.insert(route.clone()) {
                    self.report(Naming::AmbiguousRoute { route }.at(&at));
                }
            }
        }
    }
}

/// A field validate added for a `partial_timestamp`.
fn is_bound(field: &Field) -> bool {
    matches!(
        field.field_type,
        FieldType::PartialStart | FieldType::PartialEnd
    )
}
