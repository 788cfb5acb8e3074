//! Stage 3: the typed intermediate form the templates render. Everything here has been
//! validated: identifiers are safe in Rust and SQL, references resolve, types fit.

use nomnom_runtime::change::{SEQUENCE_COLUMN, VERSION_COLUMN};
use serde::Serialize;

/// A validated project.
#[derive(Debug, Clone, Serialize)]
pub struct Project {
    pub name: String,
    /// Cargo package name of the generated worker.
    pub crate_name: String,
    /// Rust identifier of the crate (`-` → `_`).
    pub crate_ident: String,
    pub description: Option<String>,
    /// The discriminator fields, when routing by body field: the first present names
    /// the entity.
    pub discriminators: Vec<Pointer>,
    /// Every entity, parents before their children.
    pub entities: Vec<Entity>,
}

/// A JSON pointer, as written and as tokens.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Pointer {
    pub text: String,
    pub tokens: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    Insert,
    Upsert,
    IgnoreDuplicates,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    Create,
    Upsert,
    Patch,
    Delete,
}

#[derive(Debug, Clone, Serialize)]
pub struct Operation {
    pub field: Pointer,
    pub create: Vec<String>,
    pub upsert: Vec<String>,
    pub patch: Vec<String>,
    pub delete: Vec<String>,
    pub default: OperationKind,
}

#[derive(Debug, Clone, Serialize)]
pub struct ParentLink {
    /// Name of the parent entity.
    pub entity: String,
    /// Where the child rows are in the parent's body.
    pub source: Pointer,
    /// (child field, parent field) pairs.
    pub keys: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Entity {
    pub name: String,
    /// Rust type name (PascalCase).
    pub type_name: String,
    pub table: String,
    /// The table's name before a rename (`renamed_from`).
    pub renamed_from: Option<String>,
    pub description: Option<String>,
    /// Routing values, for root entities (at least one); empty for children.
    pub routes: Vec<String>,
    pub write: WriteMode,
    pub primary_key: Vec<String>,
    /// Key upserts and deletes match on.
    pub upsert_key: Vec<String>,
    pub unique: Vec<Vec<String>>,
    pub indexes: Vec<Vec<String>>,
    pub operation: Option<Operation>,
    /// Root entities only: the field whose value orders the row's versions.
    pub version: Option<String>,
    pub fields: Vec<Field>,
    pub parent: Option<ParentLink>,
    /// Names of direct children.
    pub children: Vec<String>,
    /// Root entities only: records of other root entities carried in the body.
    pub fan_out: Option<FanOut>,
}

/// An array of records inside a root entity's body, each routed to a root entity by its
/// own discriminator and written with the entity's row.
#[derive(Debug, Clone, Serialize)]
pub struct FanOut {
    /// The array, in the entity's body.
    pub array: Pointer,
    /// The record in each element (no tokens: the element itself).
    pub record: Pointer,
    /// The fields of a record naming its route; the first present wins.
    pub discriminators: Vec<Pointer>,
    /// Whether elements no root entity takes are skipped (else the message is refused).
    pub ignore_unrouted: bool,
}

/// Column types of the spec.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FieldType {
    String {
        max_length: Option<u32>,
    },
    Text,
    Bool,
    I16,
    I32,
    I64,
    F32,
    F64,
    Decimal {
        precision: u32,
        scale: u32,
    },
    /// `decimal` without `precision` and `scale`: any size, at the value's own scale.
    Numeric,
    Date,
    Time,
    Timestamptz,
    /// `partial_timestamp`: a date or date-time of any precision (`2013`, `2013-05-17`,
    /// `2013-05-17T10:30+02:00`), stored as sent; validate adds its two bounds.
    PartialTimestamp,
    /// The first instant a `partial_timestamp` covers (the `<name>_start` field).
    PartialStart,
    /// The first instant after it (the `<name>_end` field).
    PartialEnd,
    Uuid,
    Json,
}

impl FieldType {
    /// Names accepted in the spec's `type:`.
    pub const NAMES: &'static [&'static str] = &[
        "string",
        "text",
        "bool",
        "i16",
        "i32",
        "i64",
        "f32",
        "f64",
        "decimal",
        "date",
        "time",
        "timestamptz",
        "partial_timestamp",
        "uuid",
        "json",
    ];

    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            Self::I16
                | Self::I32
                | Self::I64
                | Self::F32
                | Self::F64
                | Self::Decimal { .. }
                | Self::Numeric
        )
    }

    /// Whether a field of this type can be an entity's `version`: it orders exactly and
    /// converts to an integer (`nomnom_runtime::change::IntoVersion`).
    pub fn can_version(self) -> bool {
        matches!(
            self,
            Self::I16 | Self::I32 | Self::I64 | Self::Date | Self::Timestamptz
        )
    }

    pub fn is_textual(self) -> bool {
        matches!(self, Self::String { .. } | Self::Text)
    }
}

/// Checks the generated parser applies to a value.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Checks {
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub min_length: Option<u32>,
    pub max_length: Option<u32>,
    pub pattern: Option<String>,
    pub allowed: Vec<String>,
}

/// Where a field's value comes from.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A JSON pointer into the body (no tokens: the whole body).
    Body(Pointer),
    /// The message's metadata, from its envelope.
    Metadata { item: Metadata },
    /// A request header nats-api captured into the envelope (`--capture-header`); the
    /// name is lower-case.
    Header { name: String },
    /// A child's position in its array (`$index`): 0 for the first element, and for the
    /// one row of an object.
    Index,
    /// The first element of an array whose members equal given strings, then a pointer
    /// inside it (`source: { array, where, then }`).
    Select(Selection),
}

/// An array's element picked by its members' values.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Selection {
    /// The array, in the body (or a child's element).
    pub array: Pointer,
    /// (member, value) pairs, all of which must match; sorted by member.
    pub matching: Vec<(String, String)>,
    /// Inside the element (no tokens: the element itself).
    pub then: Pointer,
}

/// A capture group of a regular expression, applied to the source's string value.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Capture {
    pub pattern: String,
    /// The group's number (0: the whole match).
    pub group: u32,
}

impl Source {
    /// Whether the value comes from the envelope rather than the body.
    pub fn is_metadata(&self) -> bool {
        matches!(self, Self::Metadata { .. } | Self::Header { .. })
    }
}

/// Message metadata a field can hold (`source: $message_id`, …).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Metadata {
    MessageId,
    ReceivedAt,
    IdempotencyKey,
    Entity,
    RequestId,
}

impl Metadata {
    pub const ALL: &'static [Metadata] = &[
        Self::MessageId,
        Self::ReceivedAt,
        Self::IdempotencyKey,
        Self::Entity,
        Self::RequestId,
    ];

    /// The name after `$` in a spec.
    pub fn name(self) -> &'static str {
        match self {
            Self::MessageId => "message_id",
            Self::ReceivedAt => "received_at",
            Self::IdempotencyKey => "idempotency_key",
            Self::Entity => "entity",
            Self::RequestId => "request_id",
        }
    }

    /// Whether every message has it (the others are absent from some envelopes, so a
    /// field holding them must be nullable or have a default).
    pub fn always_present(self) -> bool {
        matches!(self, Self::MessageId | Self::ReceivedAt)
    }

    /// Whether a field of `field_type` can hold it.
    pub fn fits(self, field_type: FieldType, array: bool) -> bool {
        !array
            && (field_type.is_textual()
                || matches!(
                    (self, field_type),
                    (Self::MessageId, FieldType::Uuid) | (Self::ReceivedAt, FieldType::Timestamptz)
                ))
    }
}

/// A format a `timestamptz` or `date` field accepts.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", content = "pattern", rename_all = "snake_case")]
pub enum TimeFormat {
    /// RFC 3339: `2019-05-15T15:20:41Z`, or `2019-05-15` for a date.
    Rfc3339,
    /// A JSON number of seconds since 1970-01-01 UTC.
    UnixSeconds,
    /// A JSON number of milliseconds since 1970-01-01 UTC.
    UnixMillis,
    /// A chrono strftime pattern; a timestamp without an offset in it is UTC.
    Pattern(String),
}

impl TimeFormat {
    pub const NAMES: &'static [&'static str] = &["rfc3339", "unix_seconds", "unix_millis"];
}

#[derive(Debug, Clone, Serialize)]
pub struct Field {
    pub name: String,
    /// The column's name (default: the field's name).
    pub column: String,
    /// The column's name before a rename (`renamed_from`).
    pub renamed_from: Option<String>,
    /// The type of the value, or of each element of an array.
    pub field_type: FieldType,
    /// An array of `field_type` values (`type: text[]`).
    pub array: bool,
    pub nullable: bool,
    pub source: Source,
    /// A capture group of the source's string value, which the field then reads.
    pub capture: Option<Capture>,
    /// Accepted formats, for `timestamptz` and `date`; empty: RFC 3339 only.
    pub formats: Vec<TimeFormat>,
    pub default: Option<serde_json::Value>,
    pub checks: Checks,
    pub description: Option<String>,
    /// Filled from the parent (a `parent_key` field), not from the body.
    pub from_parent: bool,
}

impl Project {
    pub fn entity(&self, name: &str) -> Option<&Entity> {
        self.entities.iter().find(|e| e.name == name)
    }

    pub fn roots(&self) -> impl Iterator<Item = &Entity> {
        self.entities.iter().filter(|e| e.parent.is_none())
    }
}

impl Entity {
    /// Columns of the table that nomnom fills itself (the stream sequence, and the
    /// version as a number): a root's guard against older messages.
    pub fn guard_columns(&self) -> &'static [&'static str] {
        match (self.parent.is_some(), self.version.is_some()) {
            (true, _) => &[],
            (false, false) => &[SEQUENCE_COLUMN],
            (false, true) => &[SEQUENCE_COLUMN, VERSION_COLUMN],
        }
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The column names of `fields` (field names).
    pub fn columns(&self, fields: &[String]) -> Vec<String> {
        fields
            .iter()
            .map(|name| {
                self.field(name)
                    .map_or_else(|| name.clone(), |f| f.column.clone())
            })
            .collect()
    }

    /// Whether any field holds message metadata.
    pub fn reads_metadata(&self) -> bool {
        self.fields
            .iter()
            .any(|f| !f.from_parent && f.source.is_metadata())
    }
}
