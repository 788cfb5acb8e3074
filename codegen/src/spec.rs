//! Stage 1: the entities YAML as written, with the source location of every value.
//!
//! Unknown keys are found (all of them, with locations) by the key pass in `keys.rs`,
//! which reads the accepted keys from these structs; this parse ignores them so the other
//! problems can be reported in the same run. Meaning is checked by [`crate::validate`].

use serde::Deserialize;
use serde_saphyr::Spanned;

/// A value and where it was written.
pub type S<T> = Spanned<T>;

/// The whole file.
#[derive(Debug, Deserialize)]
pub struct SpecFile {
    /// Spec format version; only 1 exists.
    pub version: S<u32>,
    /// Project name: names the generated crate (`<project>-worker`).
    pub project: S<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub routing: Option<RoutingSpec>,
    pub entities: Vec<EntitySpec>,
}

/// How a message is recognised as an entity.
#[derive(Debug, Deserialize)]
pub struct RoutingSpec {
    /// JSON pointer (or a list of them, the first present wins) to a field of the body
    /// whose value names the entity (one of its `route`s).
    #[serde(default)]
    pub discriminator: Option<S<OneOrMany>>,
}

/// A string, or a list of strings: `format: unix_seconds` or
/// `format: [rfc3339, unix_seconds]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;
        impl<'de> serde::de::Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_owned()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(OneOrMany(items))
            }
        }
        deserializer.deserialize_any(OneOrManyVisitor)
    }
}

/// An entity: a table, its fields, and its nested children.
#[derive(Debug, Deserialize)]
pub struct EntitySpec {
    pub name: S<String>,
    /// Table name; default: the entity name.
    #[serde(default)]
    pub table: Option<S<String>>,
    /// The table's name before a rename: the next migration renames it, keeping its rows.
    #[serde(default)]
    pub renamed_from: Option<S<String>>,
    #[serde(default)]
    pub description: Option<String>,
    /// Value (or list of values) of the API's entity hint or of the discriminator that
    /// selects this entity; default: the entity name. Root entities only.
    #[serde(default)]
    pub route: Option<S<OneOrMany>>,
    /// `insert` (default), `upsert` (on the upsert key) or `ignore_duplicates`.
    #[serde(default)]
    pub write: Option<S<String>>,
    #[serde(default)]
    pub primary_key: Vec<S<String>>,
    /// Key that `upsert` and `delete` match on; default: the primary key.
    #[serde(default)]
    pub upsert_key: Vec<S<String>>,
    #[serde(default)]
    pub unique: Vec<Vec<S<String>>>,
    #[serde(default)]
    pub indexes: Vec<Vec<S<String>>>,
    /// Per-message operation (create / upsert / patch / delete) read from the body.
    #[serde(default)]
    pub operation: Option<OperationSpec>,
    /// Root entities only: a field (integer, date or timestamp) whose larger value wins
    /// over a smaller one, whatever the order the messages arrive in.
    #[serde(default)]
    pub version: Option<S<String>>,
    pub fields: Vec<FieldSpec>,
    #[serde(default)]
    pub children: Vec<EntitySpec>,
    /// Children only: JSON pointer to the array (one row per element) or the object (one
    /// row), in the parent's body.
    #[serde(default)]
    pub source: Option<S<String>>,
    /// Children only: which child fields take which parent fields' values.
    #[serde(default)]
    pub parent_key: Vec<ParentKeySpec>,
    /// Root entities only: an array of records of other root entities, each routed by
    /// its own discriminator and written with this entity's row.
    #[serde(default)]
    pub fan_out: Option<S<FanOutSpec>>,
}

/// Records carried inside a message (a bundle, a batch event), each of a root entity
/// named by its own discriminator.
#[derive(Debug, Deserialize)]
pub struct FanOutSpec {
    /// JSON pointer to the array of elements in the entity's body.
    pub array: S<String>,
    /// JSON pointer to the record in each element; default `""`: the element itself.
    #[serde(default)]
    pub record: Option<S<String>>,
    /// JSON pointer (or a list: the first present wins) to the route in each record;
    /// default: `routing.discriminator`.
    #[serde(default)]
    pub discriminator: Option<S<OneOrMany>>,
    /// `dead_letter` (default): an element no root entity takes refuses the message;
    /// `ignore`: it is skipped.
    #[serde(default)]
    pub unrouted: Option<S<String>>,
}

/// Child field ← parent field.
#[derive(Debug, Deserialize)]
pub struct ParentKeySpec {
    pub field: S<String>,
    pub from: S<String>,
}

/// Where a message says what to do with its entity.
#[derive(Debug, Deserialize)]
pub struct OperationSpec {
    /// JSON pointer to the operation field in the body.
    pub field: S<String>,
    /// Values meaning "create" (insert); default `["create", "c", "insert"]`.
    #[serde(default)]
    pub create: Vec<S<String>>,
    /// Values meaning "upsert"; default `["upsert", "u", "update"]`.
    #[serde(default)]
    pub upsert: Vec<S<String>>,
    /// Values meaning "patch" (set the fields the body has); default `["patch", "p"]`.
    #[serde(default)]
    pub patch: Vec<S<String>>,
    /// Values meaning "delete"; default `["delete", "d"]`.
    #[serde(default)]
    pub delete: Vec<S<String>>,
    /// Operation when the field is absent: `create` (default), `upsert`, `patch` or
    /// `delete`.
    #[serde(default)]
    pub default: Option<S<String>>,
}

/// One column.
#[derive(Debug, Deserialize)]
pub struct FieldSpec {
    pub name: S<String>,
    #[serde(rename = "type")]
    pub field_type: S<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Column name; default: the field name.
    #[serde(default)]
    pub column: Option<S<String>>,
    /// The column's name before a rename: the next migration renames it, keeping its
    /// values.
    #[serde(default)]
    pub renamed_from: Option<S<String>>,
    /// JSON pointer into the body (`""`: the whole body), message metadata
    /// (`$message_id`, …), or an array's element picked by its members' values
    /// (`{ array, where, then }`); default `/<name>`.
    #[serde(default)]
    pub source: Option<S<SourceSpec>>,
    /// A capture group of a regular expression applied to the source's string value.
    #[serde(default)]
    pub capture: Option<S<CaptureSpec>>,
    /// `timestamptz` and `date`: the accepted formats, tried in order.
    #[serde(default)]
    pub format: Option<S<OneOrMany>>,
    #[serde(default)]
    pub nullable: Option<S<bool>>,
    /// Value used when the body lacks the field.
    #[serde(default)]
    pub default: Option<S<serde_json::Value>>,
    /// `string`: column length limit (characters), also checked by the parser.
    #[serde(default)]
    pub max_length: Option<S<u32>>,
    #[serde(default)]
    pub min_length: Option<S<u32>>,
    /// `decimal`: total digits and digits after the point.
    #[serde(default)]
    pub precision: Option<S<u32>>,
    #[serde(default)]
    pub scale: Option<S<u32>>,
    /// Numbers: inclusive bounds.
    #[serde(default)]
    pub min: Option<S<f64>>,
    #[serde(default)]
    pub max: Option<S<f64>>,
    /// `string`/`text`: regular expression the whole value must match.
    #[serde(default)]
    pub pattern: Option<S<String>>,
    /// `string`/`text`: the only values allowed.
    #[serde(default, rename = "enum")]
    pub allowed: Vec<S<String>>,
}

/// A field's `source` as written: text (a JSON pointer, `""`, `$metadata`, `$index`), or a
/// mapping that picks an array's element by its members' values.
#[derive(Debug)]
pub enum SourceSpec {
    Text(String),
    Select(Box<SelectSpec>),
}

impl SourceSpec {
    /// The text of a textual source.
    pub fn text(&self) -> Option<&str> {
        match self {
            Self::Text(text) => Some(text),
            Self::Select(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for SourceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SourceVisitor;
        impl<'de> serde::de::Visitor<'de> for SourceVisitor {
            type Value = SourceSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON pointer, $metadata, or a mapping { array, where, then }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SourceSpec, E> {
                Ok(SourceSpec::Text(v.to_owned()))
            }
            // Other scalars as their text, as a string field reads them: the validator
            // then says what is wrong with `source: 5`, with every other problem.
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SourceSpec, E> {
                Ok(SourceSpec::Text(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SourceSpec, E> {
                Ok(SourceSpec::Text(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<SourceSpec, E> {
                Ok(SourceSpec::Text(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<SourceSpec, E> {
                Ok(SourceSpec::Text(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<SourceSpec, A::Error> {
                // Through the same MapAccess: its values keep their locations.
                SelectSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|select| SourceSpec::Select(Box::new(select)))
            }
        }
        deserializer.deserialize_any(SourceVisitor)
    }
}

/// `source: { array: /code/coding, where: { system: http://loinc.org }, then: /code }`:
/// the first element of the array whose members equal the given strings, then the value
/// at `then` inside it. `array` and `where` are required; their absence is a diagnostic
/// of the validator, not a parse error.
#[derive(Debug, Deserialize)]
pub struct SelectSpec {
    /// JSON pointer of the array in the body (or in a child's element).
    #[serde(default)]
    pub array: Option<S<String>>,
    /// Member name → the string it must equal, exactly; every one must match.
    #[serde(default, rename = "where")]
    pub matching: Option<S<std::collections::BTreeMap<String, S<String>>>>,
    /// JSON pointer inside the element; default `""`, the element itself.
    #[serde(default)]
    pub then: Option<S<String>>,
}

/// `capture: { pattern: "^([A-Za-z]+)/(.+)$", group: 2 }`.
#[derive(Debug, Deserialize)]
pub struct CaptureSpec {
    /// The regular expression (regex crate syntax), searched in the value.
    #[serde(default)]
    pub pattern: Option<S<String>>,
    /// The number of the capture group the field takes (0: the whole match); default 1.
    #[serde(default)]
    pub group: Option<S<u32>>,
}

/// Parses the YAML. Syntax errors, type errors and unknown keys come back as
/// serde-saphyr errors with their location.
pub fn parse(source: &str) -> Result<SpecFile, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options(source, options())
}

/// Deepest nesting of collections a spec may have. A spec needs about 2 levels per level
/// of `children`, so this leaves room for 14 of them.
pub const MAX_DEPTH: usize = 32;

/// How every pass reads the YAML. serde-saphyr's default limits (64 levels, 255 nested
/// flow collections) let a few dozen levels of `{a: {a: …}}` or `[[[…]]]` overflow a
/// 2 MiB thread stack (a debug build's default for threads other than `main`), an
/// abort rather than an error (found by tests/fuzz.rs).
pub fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
        },
    }
}
