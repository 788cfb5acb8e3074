//! Every problem the validator finds, typed: one variant per rule, grouped by what it is
//! about. Each says its code, message (`Display`), label and help, and becomes a miette
//! [`Problem`] placed where the spec wrote the value.

use std::fmt::{self, Display};

use serde_saphyr::Spanned;

use crate::diagnostics::Problem;
use crate::validate::{MAX_FIELDS, MAX_IDENTIFIER_BYTES, MAX_VARCHAR};

/// A rule's side of a diagnostic.
pub trait Rule: Display {
    /// The code, without the `nomnom::` prefix.
    fn code(&self) -> &'static str;
    /// The text beside the place in the spec.
    fn label(&self) -> String;
    fn help(&self) -> Option<String>;

    /// The diagnostic, pointing at where `value` was written.
    fn at<T>(&self, value: &Spanned<T>) -> Problem {
        self.place(Some(value))
    }

    /// The diagnostic, pointing at `value` when there is one.
    fn place<T>(&self, value: Option<&Spanned<T>>) -> Problem {
        let mut problem = Problem::new(self.code(), self.to_string());
        if let Some(value) = value {
            problem = problem.at(value, self.label());
        }
        if let Some(help) = self.help() {
            problem = problem.help(help);
        }
        problem
    }

    /// The diagnostic of a problem of the whole spec, at no place.
    fn unplaced(&self) -> Problem {
        self.place::<()>(None)
    }
}

/// "did you mean …?" before `rest`, or `rest` alone.
fn suggest(suggestion: &Option<String>, rest: &str) -> String {
    match suggestion {
        Some(s) => format!("did you mean {s:?}? {rest}"),
        None => rest.to_owned(),
    }
}

/// What a child made of an array's elements reads from each: `rest` (after the `*`).
fn element_help(rest: &str) -> String {
    if rest.is_empty() {
        "; its field with `source: \"\"` holds the element".to_owned()
    } else {
        format!(", and give its field `source: {rest}`")
    }
}

/// Names: identifiers, the project, entities, tables, routes and JSON pointers.
#[derive(Debug, Clone, PartialEq)]
pub enum Naming {
    /// `what` is "field name", "entity name", "table name".
    BadCharacters {
        what: String,
        text: String,
        suggestion: String,
    },
    Wildcard {
        what: String,
    },
    TooLong {
        what: String,
        text: String,
    },
    RustKeyword {
        what: String,
        text: String,
    },
    UnsupportedVersion {
        version: String,
    },
    InvalidProject {
        name: String,
    },
    NoEntities,
    DuplicateEntity {
        name: String,
    },
    TypeNotIdentifier {
        name: String,
        type_name: String,
    },
    ReservedTypeName {
        name: String,
        type_name: String,
    },
    TypeNameCollision {
        name: String,
        type_name: String,
    },
    NomnomTablePrefix {
        table: String,
    },
    SqliteTablePrefix {
        table: String,
    },
    DuplicateTable {
        table: String,
    },
    NomnomColumnPrefix {
        column: String,
    },
    NomnomFieldPrefix {
        field: String,
    },
    AmbiguousRoute {
        route: String,
    },
    InvalidRoute {
        route: String,
    },
    NotAPointer {
        raw: String,
    },
    PointerEscape {
        raw: String,
    },
    /// `/`, `/a//b` or `/a/`.
    PointerEmptyToken {
        raw: String,
    },
    /// A `*` token: `array` is the pointer before it (`/` when first), `rest` after it.
    PointerWildcard {
        raw: String,
        array: String,
        rest: String,
    },
}

impl Display for Naming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Naming::*;
        match self {
            BadCharacters { what, text, .. } => {
                write!(f, "{what} {text:?} is not a valid identifier")
            }
            Wildcard { what } => write!(f, "{what} \"_\" is not a valid identifier"),
            TooLong { what, text } => {
                write!(
                    f,
                    "{what} {text:?} is longer than {MAX_IDENTIFIER_BYTES} bytes"
                )
            }
            RustKeyword { what, text } => write!(f, "{what} {text:?} is a Rust keyword"),
            UnsupportedVersion { version } => write!(f, "spec version {version} is not supported"),
            InvalidProject { name } => write!(f, "project name {name:?} cannot name a crate"),
            NoEntities => write!(f, "the spec has no entities"),
            DuplicateEntity { name } => write!(f, "entity {name:?} is defined twice"),
            TypeNotIdentifier { name, type_name } => write!(
                f,
                "entity {name:?} would be the Rust type {type_name:?}, which is not an identifier"
            ),
            ReservedTypeName { name, type_name } => write!(
                f,
                "entity {name:?} would be the Rust type {type_name}, which the generated code uses itself"
            ),
            TypeNameCollision { name, type_name } => write!(
                f,
                "entity {name:?} becomes the Rust type {type_name}, like another entity"
            ),
            NomnomTablePrefix { table } => {
                write!(f, "table {table:?} uses the reserved prefix nomnom_")
            }
            SqliteTablePrefix { table } => write!(
                f,
                "table {table:?} uses the prefix sqlite_, which SQLite reserves"
            ),
            DuplicateTable { table } => write!(f, "table {table:?} is used by two entities"),
            NomnomColumnPrefix { column } => {
                write!(f, "column {column:?} uses the reserved prefix nomnom_")
            }
            NomnomFieldPrefix { field } => {
                write!(f, "field {field:?} uses the reserved prefix nomnom_")
            }
            AmbiguousRoute { route } => write!(f, "route {route:?} selects two entities"),
            InvalidRoute { route } => {
                write!(f, "route {route:?} cannot be sent as an entity hint")
            }
            NotAPointer { raw } => write!(f, "{raw:?} is not a JSON pointer"),
            PointerEscape { raw } => write!(f, "{raw:?} has a '~' not followed by 0 or 1"),
            PointerEmptyToken { raw } => write!(
                f,
                "{raw:?} has an empty token, which names a member called \"\""
            ),
            PointerWildcard { raw, .. } => write!(
                f,
                "{raw:?} has a wildcard token '*', which nomnom does not expand"
            ),
        }
    }
}

impl Rule for Naming {
    fn code(&self) -> &'static str {
        use Naming::*;
        match self {
            BadCharacters { .. } | Wildcard { .. } | TypeNotIdentifier { .. } => {
                "invalid_identifier"
            }
            TooLong { .. } => "identifier_too_long",
            RustKeyword { .. }
            | ReservedTypeName { .. }
            | NomnomTablePrefix { .. }
            | SqliteTablePrefix { .. }
            | NomnomColumnPrefix { .. }
            | NomnomFieldPrefix { .. } => "reserved_identifier",
            UnsupportedVersion { .. } => "unsupported_version",
            InvalidProject { .. } => "invalid_project",
            NoEntities => "no_entities",
            DuplicateEntity { .. } => "duplicate_entity",
            TypeNameCollision { .. } => "identifier_collision",
            DuplicateTable { .. } => "duplicate_table",
            AmbiguousRoute { .. } => "ambiguous_route",
            InvalidRoute { .. } => "invalid_route",
            NotAPointer { .. } | PointerEscape { .. } | PointerEmptyToken { .. } => {
                "invalid_pointer"
            }
            PointerWildcard { .. } => "pointer_wildcard",
        }
    }

    fn label(&self) -> String {
        use Naming::*;
        match self {
            BadCharacters { .. } => "not of the form [a-z_][a-z0-9_]*",
            Wildcard { .. } => "a wildcard in Rust",
            TooLong { text, .. } => return format!("{} bytes", text.len()),
            RustKeyword { .. } => "reserved in Rust",
            UnsupportedVersion { .. } => "unknown version",
            InvalidProject { .. } => "not of the form [a-z][a-z0-9]*([_-][a-z0-9]+)*",
            NoEntities => "",
            DuplicateEntity { .. } => "second definition",
            TypeNotIdentifier { .. } => "no letter after the underscores",
            ReservedTypeName { .. } => "reserved type name",
            TypeNameCollision { .. } => "collides after case conversion",
            NomnomTablePrefix { .. }
            | SqliteTablePrefix { .. }
            | NomnomColumnPrefix { .. }
            | NomnomFieldPrefix { .. } => "reserved prefix",
            DuplicateTable { .. } => "already used",
            AmbiguousRoute { .. } => "second entity with this route",
            InvalidRoute { .. } => "not of the form [A-Za-z0-9_-]{1,64}",
            NotAPointer { .. } => "must start with '/'",
            PointerEscape { .. } => "bad escape",
            PointerEmptyToken { .. } => "empty token",
            PointerWildcard { .. } => "wildcard",
        }
        .to_owned()
    }

    fn help(&self) -> Option<String> {
        use Naming::*;
        Some(match self {
            BadCharacters { text, suggestion, .. } if suggestion.is_empty() || suggestion == text => "use lower-case ASCII letters, digits and underscores, starting with a letter or underscore".to_owned(),
            BadCharacters { suggestion, .. } => format!("use lower-case ASCII letters, digits and underscores, for example {suggestion:?}"),
            Wildcard { .. } => "add a letter or digit, for example \"_1\" or \"value\"".to_owned(),
            TooLong { .. } => "PostgreSQL would silently truncate it; choose a shorter name".to_owned(),
            RustKeyword { what, text } if what == "field name" => format!("name the field, for example, \"{text}_\" and keep the column's name with `column: {text}`; the field reads the body's \"{text}\" with `source: /{text}`"),
            RustKeyword { text, .. } => format!("choose another name, for example \"{text}_value\""),
            UnsupportedVersion { .. } => "this nomnom reads `version: 1`".to_owned(),
            InvalidProject { .. } => "use lower-case ASCII letters and digits, separated by single '-' or '_', starting with a letter, at most 50 characters".to_owned(),
            NoEntities => "add at least one entity under `entities:`".to_owned(),
            DuplicateEntity { .. } => "entity names must be unique across the spec, children included".to_owned(),
            TypeNotIdentifier { .. } => "start the entity name with a letter, for example \"e_1\"".to_owned(),
            ReservedTypeName { .. } => "choose another entity name; its table can keep any name with `table:`".to_owned(),
            TypeNameCollision { .. } => "rename one of them so that their PascalCase forms differ".to_owned(),
            NomnomTablePrefix { .. } => "nomnom's own tables start with nomnom_; pick another table name".to_owned(),
            SqliteTablePrefix { .. } => "pick another table name, with `table:` if the entity keeps its name".to_owned(),
            DuplicateTable { .. } => "give one of them another `table:`".to_owned(),
            NomnomColumnPrefix { .. } => "nomnom names its own columns nomnom_ (nomnom_seq, nomnom_version); choose another column name".to_owned(),
            NomnomFieldPrefix { field } => format!("nomnom names its own columns nomnom_ (nomnom_seq, nomnom_version); rename the field, and read the body's \"{field}\" with `source: /{field}`"),
            AmbiguousRoute { .. } => "give each root entity its own `route`".to_owned(),
            InvalidRoute { .. } => "the API's entity hint allows letters, digits, '_' and '-'; \"_\" alone is reserved".to_owned(),
            NotAPointer { .. } => "write the path of the value in the message body, for example /order/id".to_owned(),
            PointerEscape { .. } => "write ~0 for '~' and ~1 for '/'".to_owned(),
            PointerEmptyToken { .. } => "remove the extra '/'; a field's `source: \"\"` (no '/') is the whole body, or of a child entity the whole element".to_owned(),
            PointerWildcard { array, .. } if array == "/" => "a pointer names one value: write the member's name or the element's index instead of '*'; to read each element of an array, make the array a child entity, whose rows come from each element".to_owned(),
            PointerWildcard { array, rest, .. } => format!("a pointer names one value: make the array a child entity (under `children:`, with `source: {array}`), whose rows come from each element{}", element_help(rest)),
        })
    }
}

/// An entity's fields and keys, and how it is written.
#[derive(Debug, Clone, PartialEq)]
pub enum Keys {
    DuplicateField {
        field: String,
        entity: String,
    },
    /// A `partial_timestamp` adds `<name>_start` and `<name>_end`.
    BoundTaken {
        field: String,
        bound: String,
    },
    NoFields {
        entity: String,
    },
    /// `guard`: the columns nomnom adds to the table (a root's `nomnom_seq` and
    /// `nomnom_version`).
    TooManyFields {
        entity: String,
        count: usize,
        guard: usize,
    },
    /// `what` is the key's spec key: "primary_key", "upsert_key", "unique", "indexes".
    KeyNotAField {
        what: String,
        field: String,
        entity: String,
        suggestion: Option<String>,
    },
    NullableKey {
        what: String,
        field: String,
    },
    UnsuitableKey {
        what: String,
        field: String,
    },
    /// `decimal` without precision and scale: `1.0` and `1.00` are one number in
    /// PostgreSQL and two texts in SQLite.
    UnscaledDecimalKey {
        what: String,
        field: String,
    },
    MissingPrimaryKey {
        entity: String,
    },
    EmptyKey {
        what: String,
        entity: String,
    },
    DuplicateKeyField {
        what: String,
        field: String,
    },
    UnknownWriteMode {
        mode: String,
        suggestion: Option<String>,
    },
    WriteModeWithoutKey {
        entity: String,
        mode: String,
    },
}

impl Display for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Keys::*;
        match self {
            DuplicateField { field, entity } => {
                write!(f, "field {field:?} is defined twice in {entity:?}")
            }
            BoundTaken { field, bound } => write!(
                f,
                "partial_timestamp {field:?} adds a field {bound:?}, and another field has that name"
            ),
            NoFields { entity } => write!(f, "entity {entity:?} has no fields"),
            TooManyFields {
                entity,
                count,
                guard,
            } => {
                write!(
                    f,
                    "entity {entity:?} has {count} fields, more than {}",
                    MAX_FIELDS - guard
                )
            }
            KeyNotAField {
                what,
                field,
                entity,
                ..
            } => {
                write!(
                    f,
                    "{what} names {field:?}, which is not a field of {entity:?}"
                )
            }
            NullableKey { what, field } => write!(f, "{what} field {field:?} is nullable"),
            UnsuitableKey { what, field } => write!(
                f,
                "{what} field {field:?} cannot be a key (a float, json or array)"
            ),
            UnscaledDecimalKey { what, field } => write!(
                f,
                "{what} field {field:?} is a decimal without precision and scale, which cannot be a key"
            ),
            MissingPrimaryKey { entity } => write!(f, "entity {entity:?} has no primary_key"),
            EmptyKey { what, entity } => write!(f, "an empty list in `{what}` of {entity:?}"),
            DuplicateKeyField { what, field } => write!(f, "`{what}` names {field:?} twice"),
            UnknownWriteMode { mode, .. } => write!(f, "write mode {mode:?} is unknown"),
            WriteModeWithoutKey { entity, mode } => {
                write!(
                    f,
                    "entity {entity:?} uses write mode {mode:?} without a key"
                )
            }
        }
    }
}

impl Rule for Keys {
    fn code(&self) -> &'static str {
        use Keys::*;
        match self {
            DuplicateField { .. } => "duplicate_field",
            BoundTaken { .. } => "bound_taken",
            NoFields { .. } => "no_fields",
            TooManyFields { .. } => "too_many_fields",
            KeyNotAField { .. } => "unknown_field",
            NullableKey { .. } => "nullable_key",
            UnsuitableKey { .. } => "unsuitable_key",
            UnscaledDecimalKey { .. } => "unscaled_decimal_key",
            MissingPrimaryKey { .. } => "missing_primary_key",
            EmptyKey { .. } => "empty_key",
            DuplicateKeyField { .. } => "duplicate_key_field",
            UnknownWriteMode { .. } => "invalid_write_mode",
            WriteModeWithoutKey { .. } => "missing_key",
        }
    }

    fn label(&self) -> String {
        use Keys::*;
        match self {
            DuplicateField { .. } => "second definition",
            BoundTaken { .. } => "adds _start and _end",
            NoFields { .. } => "no fields",
            TooManyFields { .. } => "too many fields",
            KeyNotAField { .. } => "no such field",
            NullableKey { .. } => "nullable",
            UnsuitableKey { .. } => "not a key type",
            UnscaledDecimalKey { .. } => "no scale",
            MissingPrimaryKey { .. } => "no primary key",
            EmptyKey { .. } => "in this entity",
            DuplicateKeyField { .. } => "named twice",
            UnknownWriteMode { .. } => "unknown mode",
            WriteModeWithoutKey { .. } => "needs primary_key or upsert_key",
        }
        .to_owned()
    }

    fn help(&self) -> Option<String> {
        use Keys::*;
        Some(match self {
            DuplicateField { .. } => return None,
            BoundTaken { .. } => "rename one of the two fields: a partial_timestamp keeps its bounds in <name>_start and <name>_end".to_owned(),
            NoFields { .. } => "add fields under `fields:`".to_owned(),
            TooManyFields { guard: 0, .. } => format!("a table has at most {MAX_FIELDS} columns; split the entity, for example into a child entity, or keep rarely used values in a json field"),
            TooManyFields { guard, .. } => format!("a table has at most {MAX_FIELDS} columns, and a root entity's table also holds {} that nomnom fills (the stream sequence{}); split the entity, for example into a child entity, or keep rarely used values in a json field", if *guard == 1 { "one" } else { "two" }, if *guard == 1 { "" } else { " and the version" }),
            KeyNotAField { suggestion, .. } => return suggestion.as_ref().map(|s| format!("did you mean {s:?}?")),
            NullableKey { .. } => "key fields must be `nullable: false`".to_owned(),
            UnsuitableKey { .. } => "use an integer, string, uuid, date or decimal field".to_owned(),
            UnscaledDecimalKey { .. } => "give the field `precision` and `scale`, so that equal numbers have one text (1.0 and 1.00 would be two keys)".to_owned(),
            MissingPrimaryKey { .. } => "name the fields that identify a row, e.g. `primary_key: [id]`; for append-only events add an id field (uuid) to the payload".to_owned(),
            EmptyKey { .. } => "name at least one field, or remove the empty list".to_owned(),
            DuplicateKeyField { .. } => "name each field once".to_owned(),
            UnknownWriteMode { suggestion, .. } => suggest(suggestion, "modes: insert, upsert, ignore_duplicates"),
            WriteModeWithoutKey { .. } => "add `primary_key: [..]` (or `upsert_key: [..]`) naming the fields that identify a row".to_owned(),
        })
    }
}

/// Operations, and the links between roots and children.
#[derive(Debug, Clone, PartialEq)]
pub enum Links {
    UnknownOperation {
        operation: String,
    },
    OperationWithoutKey {
        entity: String,
    },
    AmbiguousOperation {
        value: String,
    },
    SourceOnRoot,
    ParentKeyOnRoot,
    OperationOnChild,
    RouteOnChild,
    /// `fan_out` on a child entity.
    FanOutOnChild,
    /// `fan_out` with no discriminator of its own and no `routing.discriminator`.
    FanOutWithoutDiscriminator {
        entity: String,
    },
    /// `fan_out.unrouted` is neither `dead_letter` nor `ignore`.
    InvalidUnrouted {
        value: String,
    },
    MissingSource {
        entity: String,
    },
    MissingParentKey {
        entity: String,
    },
    ParentKeyNotAField {
        field: String,
        entity: String,
    },
    ParentKeyFromNotAField {
        from: String,
        parent: String,
    },
    ParentKeyTypes {
        field: String,
        from: String,
    },
    ParentKeyNullability {
        field: String,
        from: String,
        parent_nullable: bool,
    },
    VersionOnChild,
    /// `source: $index` in a root entity's field.
    IndexOnRoot {
        field: String,
    },
    VersionNotAField {
        field: String,
        entity: String,
        suggestion: Option<String>,
    },
    VersionType {
        field: String,
        type_name: String,
    },
    NullableVersion {
        field: String,
    },
}

impl Display for Links {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Links::*;
        match self {
            UnknownOperation { operation } => {
                write!(f, "default operation {operation:?} is unknown")
            }
            OperationWithoutKey { entity } => write!(
                f,
                "entity {entity:?} reads operations but has no key to upsert or delete by"
            ),
            AmbiguousOperation { value } => {
                write!(f, "operation value {value:?} means two operations")
            }
            SourceOnRoot => write!(f, "`source` is only for child entities"),
            ParentKeyOnRoot => write!(f, "`parent_key` is only for child entities"),
            OperationOnChild => write!(f, "`operation` is only for root entities"),
            RouteOnChild => write!(f, "`route` is only for root entities"),
            FanOutOnChild => write!(f, "`fan_out` is only for root entities"),
            FanOutWithoutDiscriminator { entity } => write!(
                f,
                "the fan_out of {entity:?} has no discriminator: nothing says which entity each record is"
            ),
            InvalidUnrouted { value } => write!(f, "`unrouted: {value}` is not a choice"),
            MissingSource { entity } => write!(f, "child entity {entity:?} has no `source`"),
            MissingParentKey { entity } => {
                write!(f, "child entity {entity:?} has no `parent_key`")
            }
            ParentKeyNotAField { field, entity } => {
                write!(f, "parent_key field {field:?} is not a field of {entity:?}")
            }
            ParentKeyFromNotAField { from, parent } => write!(
                f,
                "parent_key from {from:?} is not a field of the parent {parent:?}"
            ),
            ParentKeyTypes { field, from } => write!(
                f,
                "parent_key links {field:?} to {from:?}, which have different types"
            ),
            ParentKeyNullability { field, from, .. } => write!(
                f,
                "parent_key links {field:?} to {from:?}, but only one of them is nullable"
            ),
            VersionOnChild => write!(f, "`version` is only for root entities"),
            IndexOnRoot { field } => write!(
                f,
                "field {field:?} reads $index, but a root entity's row is not in an array"
            ),
            VersionNotAField { field, entity, .. } => {
                write!(
                    f,
                    "version names {field:?}, which is not a field of {entity:?}"
                )
            }
            VersionType { field, type_name } => write!(
                f,
                "version field {field:?} is of type {type_name}, which cannot order versions"
            ),
            NullableVersion { field } => write!(f, "version field {field:?} is nullable"),
        }
    }
}

impl Rule for Links {
    fn code(&self) -> &'static str {
        use Links::*;
        match self {
            UnknownOperation { .. } => "invalid_operation",
            OperationWithoutKey { .. } => "missing_key",
            AmbiguousOperation { .. } => "ambiguous_operation",
            SourceOnRoot | ParentKeyOnRoot | OperationOnChild | RouteOnChild | VersionOnChild
            | FanOutOnChild => "misplaced_key",
            FanOutWithoutDiscriminator { .. } => "missing_discriminator",
            InvalidUnrouted { .. } => "invalid_unrouted",
            MissingSource { .. } => "missing_source",
            MissingParentKey { .. } => "missing_parent_key",
            ParentKeyNotAField { .. } | ParentKeyFromNotAField { .. } | VersionNotAField { .. } => {
                "unknown_field"
            }
            ParentKeyTypes { .. } | ParentKeyNullability { .. } => "type_mismatch",
            VersionType { .. } | NullableVersion { .. } => "invalid_version",
            IndexOnRoot { .. } => "index_on_root",
        }
    }

    fn label(&self) -> String {
        use Links::*;
        match self {
            UnknownOperation { .. } => "unknown operation",
            OperationWithoutKey { .. } => "operations need a key",
            AmbiguousOperation { .. } => "ambiguous values",
            SourceOnRoot | ParentKeyOnRoot => "on a root entity",
            OperationOnChild | RouteOnChild | VersionOnChild | FanOutOnChild => "on a child entity",
            FanOutWithoutDiscriminator { .. } => "no discriminator",
            InvalidUnrouted { .. } => "unknown choice",
            MissingSource { .. } => "where are its rows?",
            MissingParentKey { .. } => "not linked to its parent",
            ParentKeyNotAField { .. } => "no such field",
            ParentKeyFromNotAField { .. } => "no such parent field",
            ParentKeyTypes { .. } => "types differ",
            ParentKeyNullability { .. } => "nullability differs",
            VersionNotAField { .. } => "no such field",
            VersionType { .. } => "not an integer, date or timestamp",
            NullableVersion { .. } => "nullable",
            IndexOnRoot { .. } => "on a root entity",
        }
        .to_owned()
    }

    fn help(&self) -> Option<String> {
        use Links::*;
        Some(match self {
            UnknownOperation { .. } => "use create, upsert, patch or delete".to_owned(),
            OperationWithoutKey { .. } => "add `primary_key: [..]` naming the fields that identify a row".to_owned(),
            AmbiguousOperation { .. } => "each value may appear in only one of create, upsert, patch, delete".to_owned(),
            SourceOnRoot => "move this entity under its parent's `children:`, or remove `source`".to_owned(),
            ParentKeyOnRoot => "move this entity under its parent's `children:`".to_owned(),
            OperationOnChild => "children are written with their parent's message; give the root entity the operation".to_owned(),
            RouteOnChild => "children arrive inside their parent's message".to_owned(),
            FanOutOnChild => "children are rows of their parent; records of other entities fan out from a root entity: move `fan_out` to the root entity whose body holds the array".to_owned(),
            FanOutWithoutDiscriminator { .. } => "add `discriminator: /<field>` to `fan_out` (or `routing.discriminator`), naming the field of each record that holds one of the root entities' routes".to_owned(),
            InvalidUnrouted { .. } => "use `dead_letter` (an element no entity takes refuses the message, naming its path) or `ignore` (such elements are skipped)".to_owned(),
            MissingSource { .. } => "add `source: /<array field>` naming the array in the parent's body".to_owned(),
            MissingParentKey { .. } => "add `parent_key: [{field: <child field>, from: <parent field>}]`: children follow their parent, and without a parent_key their rows cannot be found when the parent is replaced or deleted".to_owned(),
            ParentKeyNotAField { .. } | ParentKeyFromNotAField { .. } => return None,
            ParentKeyTypes { .. } => "give the child field the same type as the parent field".to_owned(),
            ParentKeyNullability { parent_nullable, .. } => format!("make the child field `nullable: {parent_nullable}` like the parent field"),
            VersionOnChild => "children follow their parent's version; give the root entity the version".to_owned(),
            VersionNotAField { suggestion, .. } => suggest(suggestion, "name a field of this entity"),
            VersionType { .. } => "use an i16, i32, i64, date or timestamptz field: versions are compared as integers (dates by day, timestamps by microsecond)".to_owned(),
            NullableVersion { .. } => "make the field `nullable: false`: every message must carry a version, or older and newer could not be told apart".to_owned(),
            IndexOnRoot { .. } => "$index is the position of a child entity's row in its array (`source` of the child); a message is one root row: read a body value, or $message_id for a key of its own".to_owned(),
        })
    }
}

/// One field: its type and the rules that check its values.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldRule {
    UnknownType {
        name: String,
        suggestion: Option<String>,
    },
    /// `json[]` or `text[][]`.
    UnsupportedArray {
        type_name: String,
    },
    MissingPrecision {
        field: String,
    },
    InvalidPrecision {
        precision: u32,
        scale: u32,
    },
    InvalidLength {
        max_length: u32,
    },
    /// A key of the field that its type has no use for; `types` are those it is for.
    NotForType {
        key: &'static str,
        type_name: String,
        types: &'static str,
    },
    /// `min` or `max` on a type that is not numeric.
    BoundNotForType {
        key: &'static str,
        type_name: String,
    },
    NonFiniteBound {
        key: &'static str,
        value: f64,
    },
    EmptyRange {
        min: f64,
        max: f64,
    },
    InvalidPattern {
        pattern: String,
        reason: String,
    },
    InvalidDefault {
        value: String,
        type_name: String,
    },
    UnknownMetadata {
        source: String,
        suggestion: Option<String>,
    },
    MetadataType {
        source: String,
        type_name: String,
        types: &'static str,
    },
    MetadataMaybeAbsent {
        source: String,
    },
    InvalidHeaderName {
        source: String,
    },
    /// `$index` in a field that is not an integer.
    IndexType {
        type_name: String,
    },
    UnknownFormat {
        format: String,
    },
    /// `unix_seconds` or `unix_millis` on a date.
    FormatNotForDate {
        format: String,
    },
    InvalidTimePattern {
        pattern: String,
        reason: &'static str,
    },
    DuplicateColumn {
        column: String,
        entity: String,
    },
    /// `source: { … }` without `array` or `where`.
    SelectionKey {
        key: &'static str,
    },
    /// `where: {}`.
    SelectionNoMember,
    /// `where: { "": … }`.
    SelectionEmptyMember,
    /// `/code/coding[system=…]/code`: a selection written inside a pointer.
    BracketSelection {
        source: String,
        suggestion: Option<String>,
    },
    /// `capture` of `$index`.
    CaptureSource,
    /// `capture` in an array or json field.
    CaptureType {
        type_name: String,
    },
    CapturePattern,
    /// `groups`: how many the pattern has (group 0, the whole match, aside).
    CaptureGroup {
        pattern: String,
        group: u32,
        groups: usize,
    },
}

impl Display for FieldRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use FieldRule::*;
        match self {
            UnknownType { name, .. } => write!(f, "type {name:?} is unknown"),
            UnsupportedArray { type_name } => {
                write!(f, "type {type_name:?} is not an array nomnom stores")
            }
            MissingPrecision { field } => {
                write!(
                    f,
                    "decimal field {field:?} needs both `precision` and `scale`, or neither"
                )
            }
            InvalidPrecision { precision, scale } => write!(
                f,
                "decimal({precision}, {scale}) is not a valid decimal type"
            ),
            InvalidLength { max_length } => {
                write!(f, "max_length {max_length} is not a column size")
            }
            NotForType { key, type_name, .. } | BoundNotForType { key, type_name } => {
                write!(f, "`{key}` does not apply to type {type_name}")
            }
            NonFiniteBound { key, value } => write!(f, "`{key}` {value} is not a finite number"),
            EmptyRange { min, max } => write!(f, "min {min} is greater than max {max}"),
            InvalidPattern { pattern, .. } => {
                write!(f, "pattern {pattern:?} is not a valid regular expression")
            }
            InvalidDefault { value, type_name } => {
                write!(f, "default {value} does not fit type {type_name}")
            }
            UnknownMetadata { source, .. } => {
                write!(f, "{source:?} is not message metadata nomnom knows")
            }
            MetadataType {
                source, type_name, ..
            } => write!(f, "{source} cannot be stored as type {type_name}"),
            MetadataMaybeAbsent { source } => write!(
                f,
                "{source} is absent from some messages, and the field is neither nullable nor defaulted"
            ),
            InvalidHeaderName { source } => {
                write!(f, "{source:?} does not name an HTTP header")
            }
            IndexType { type_name } => {
                write!(f, "$index cannot be stored as type {type_name}")
            }
            UnknownFormat { format } => write!(f, "format {format:?} is unknown"),
            FormatNotForDate { format } => {
                write!(f, "format {format:?} is for timestamptz, not date")
            }
            InvalidTimePattern { pattern, .. } => {
                write!(f, "format {pattern:?} is not a usable strftime pattern")
            }
            DuplicateColumn { column, entity } => {
                write!(f, "column {column:?} appears twice in {entity:?}")
            }
            SelectionKey { key } => write!(f, "a selecting `source` needs `{key}`"),
            SelectionNoMember => write!(f, "`where` names no member"),
            SelectionEmptyMember => write!(f, "`where` names a member called \"\""),
            BracketSelection { source, .. } => write!(
                f,
                "{source:?} selects an element in brackets, which a JSON pointer cannot say"
            ),
            CaptureSource => write!(f, "`capture` cannot apply to $index, which is a number"),
            CaptureType { type_name } => {
                write!(f, "`capture` does not apply to type {type_name}")
            }
            CapturePattern => write!(f, "`capture` needs a `pattern`"),
            CaptureGroup { pattern, group, .. } => {
                write!(f, "pattern {pattern:?} has no group {group}")
            }
        }
    }
}

impl Rule for FieldRule {
    fn code(&self) -> &'static str {
        use FieldRule::*;
        match self {
            UnknownType { .. } | UnsupportedArray { .. } => "unknown_type",
            MissingPrecision { .. } => "missing_precision",
            InvalidPrecision { .. } => "invalid_precision",
            InvalidLength { .. } => "invalid_length",
            NotForType { .. } | BoundNotForType { .. } => "misplaced_key",
            NonFiniteBound { .. } => "invalid_bound",
            EmptyRange { .. } => "empty_range",
            InvalidPattern { .. } => "invalid_pattern",
            InvalidDefault { .. } => "invalid_default",
            UnknownMetadata { .. } | InvalidHeaderName { .. } => "unknown_metadata",
            MetadataType { .. } => "metadata_type",
            IndexType { .. } => "index_type",
            MetadataMaybeAbsent { .. } => "metadata_maybe_absent",
            UnknownFormat { .. } | FormatNotForDate { .. } | InvalidTimePattern { .. } => {
                "invalid_format"
            }
            DuplicateColumn { .. } => "duplicate_column",
            SelectionKey { .. }
            | SelectionNoMember
            | SelectionEmptyMember
            | BracketSelection { .. } => "invalid_selection",
            CaptureSource | CaptureType { .. } | CapturePattern | CaptureGroup { .. } => {
                "invalid_capture"
            }
        }
    }

    fn label(&self) -> String {
        use FieldRule::*;
        match self {
            UnknownType { .. } => "unknown type",
            UnsupportedArray { .. } => "unsupported array",
            MissingPrecision { .. } => "precision and scale go together",
            InvalidPrecision { .. } | InvalidLength { .. } => "out of range",
            NotForType { .. } | BoundNotForType { .. } => "not for this type",
            NonFiniteBound { .. } => "not finite",
            EmptyRange { .. } => "min",
            InvalidPattern { .. } => "invalid regex",
            InvalidDefault { .. } => "wrong type",
            UnknownMetadata { .. } => "unknown metadata",
            InvalidHeaderName { .. } => "not a header name",
            MetadataType { .. } | MetadataMaybeAbsent { .. } => "metadata source",
            IndexType { .. } => "a position in an array",
            UnknownFormat { .. } => "unknown format",
            FormatNotForDate { .. } => "not for dates",
            InvalidTimePattern { reason, .. } => reason,
            DuplicateColumn { .. } => "second column of this name",
            SelectionKey { .. } => "incomplete selection",
            SelectionNoMember => "no member",
            SelectionEmptyMember => "empty member name",
            BracketSelection { .. } => "brackets in a pointer",
            CaptureSource => "not a string",
            CaptureType { .. } => "not one value",
            CapturePattern => "no pattern",
            CaptureGroup { .. } => "no such group",
        }
        .to_owned()
    }

    fn help(&self) -> Option<String> {
        use FieldRule::*;
        Some(match self {
            UnknownType { suggestion, .. } => suggest(
                suggestion,
                &format!(
                    "types: {}; an array of any but json and partial_timestamp: `<type>[]`",
                    crate::model::FieldType::NAMES.join(", ")
                ),
            ),
            UnsupportedArray { .. } => "arrays hold scalars (`text[]`, `i64[]`, …; not `partial_timestamp`): keep JSON, nested arrays included, in a `json` field".to_owned(),
            MissingPrecision { .. } => {
                "for example `precision: 15` and `scale: 2` for money; without both, a decimal keeps any value at its own scale".to_owned()
            }
            InvalidPrecision { .. } => {
                "precision must be 1 to 1000 and scale at most precision".to_owned()
            }
            InvalidLength { .. } => format!(
                "a string's max_length is 1 to {MAX_VARCHAR}; use type text for longer values"
            ),
            NotForType { key, types, .. } => format!("`{key}` is for {types}"),
            BoundNotForType { .. } => "`min` and `max` are for numeric types".to_owned(),
            NonFiniteBound { key, .. } => format!("remove `{key}` to leave that side unbounded"),
            EmptyRange { .. } => "no value could pass; swap them".to_owned(),
            InvalidPattern { reason, .. } => reason.clone(),
            InvalidDefault { .. } => {
                "write a default of the field's type (decimals, dates, times and uuids as strings)"
                    .to_owned()
            }
            UnknownMetadata { suggestion, .. } => suggest(
                &suggestion.as_ref().map(|s| format!("${s}")),
                &format!(
                    "metadata sources: {}, $header.<name>; a child's position in its array: $index; a JSON pointer into the body starts with '/'",
                    crate::model::Metadata::ALL
                        .iter()
                        .map(|m| format!("${}", m.name()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            MetadataType { source, types, .. } => format!("store {source} as {types}"),
            IndexType { .. } => "store $index, the element's position (0, 1, …), as i16, i32 or i64".to_owned(),
            InvalidHeaderName { .. } => "write $header.<name>, for example $header.x-github-delivery; nats-api captures it when started with --capture-header <name>".to_owned(),
            MetadataMaybeAbsent { .. } => {
                "add `nullable: true`, or a `default`".to_owned()
            }
            UnknownFormat { .. } => format!(
                "formats: {}, or a strftime pattern such as \"%Y-%m-%d %H:%M:%S UTC\"",
                crate::model::TimeFormat::NAMES.join(", ")
            ),
            FormatNotForDate { .. } => "a date reads rfc3339 (YYYY-MM-DD) or a strftime pattern such as \"%d/%m/%Y\"; store Unix times as timestamptz".to_owned(),
            InvalidTimePattern { .. } => "see chrono's strftime specifiers: %Y-%m-%d %H:%M:%S %z, …".to_owned(),
            DuplicateColumn { .. } => "give one of the fields another `column:`".to_owned(),
            SelectionKey { key: "array" } => "add `array: /<pointer>` naming the array whose element is picked, for example `source: { array: /code/coding, where: { system: \"http://loinc.org\" }, then: /code }`".to_owned(),
            SelectionKey { .. } => "add `where: { <member>: <value> }`: the element taken is the first whose member equals the value, for example `where: { system: \"http://loinc.org\" }`".to_owned(),
            SelectionNoMember => "name the member that picks the element and its value, for example `where: { url: \"http://hl7.org/fhir/StructureDefinition/patient-birthPlace\" }`".to_owned(),
            SelectionEmptyMember => "write the member's name, for example `where: { system: \"http://loinc.org\" }`".to_owned(),
            BracketSelection { suggestion: Some(suggestion), .. } => format!("pick the element with a mapping: `source: {suggestion}`"),
            BracketSelection { .. } => "pick an element with a mapping, one condition per source: `source: { array: /code/coding, where: { system: \"http://loinc.org\" }, then: /code }`".to_owned(),
            CaptureSource => "capture from a string: a body value (a JSON pointer) or metadata; remove `capture` from this field".to_owned(),
            CaptureType { .. } => "a capture is one text: give the field a type of one value (text, an integer, a decimal, a date, …), not an array or json".to_owned(),
            CapturePattern => "add `pattern: \"<regex>\"` with a group in parentheses, for example `capture: { pattern: \"^([A-Za-z]+)/(.+)$\", group: 2 }`".to_owned(),
            CaptureGroup { groups: 0, .. } => "put the part to keep in parentheses, or use `group: 0` for the whole match".to_owned(),
            CaptureGroup { groups, .. } => format!("the pattern has groups 1 to {groups} (0 is the whole match); name one of them with `group`"),
        })
    }
}
