//! Every unknown key of a spec at once. The YAML is read as a generic tree with locations,
//! and each mapping's keys are checked against the keys its spec struct accepts. Those
//! lists come from the structs' derived `Deserialize` (a probe records the field names it
//! asks for), so they cannot drift. The typed parse then ignores unknown keys, so one run
//! reports unknown keys and every other problem together.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::diagnostics::{Problem, did_you_mean};

/// A YAML value with the location of every key and value.
#[derive(Debug)]
enum Node {
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
                    let value = map.next_value::<Spanned<Node>>()?;
                    let Spanned {
                        value: KeyText(text),
                        referenced,
                        defined,
                    } = key;
                    entries.push((
                        Spanned {
                            value: text,
                            referenced,
                            defined,
                        },
                        value,
                    ));
                }
                Ok(Node::Map(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Node>>()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
        }
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// A mapping key as text, whatever scalar it was written as.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = KeyText;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
        }
        deserializer.deserialize_any(KeyVisitor)
    }
}

/// The places in a spec that hold mappings of known keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Level {
    File,
    Routing,
    Entity,
    Field,
    Operation,
    ParentKey,
    /// A field's `source` written as a mapping (an element picked by its members).
    Select,
    /// A field's `capture`.
    Capture,
    /// A root entity's `fan_out`.
    FanOut,
}

/// A deserializer that only records the field names a derived `Deserialize` asks for.
struct FieldsProbe(Option<&'static [&'static str]>);

#[derive(Debug)]
struct ProbeDone;

impl std::fmt::Display for ProbeDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("probe")
    }
}

impl std::error::Error for ProbeDone {}

impl serde::de::Error for ProbeDone {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        ProbeDone
    }
}

impl<'de> Deserializer<'de> for &mut FieldsProbe {
    type Error = ProbeDone;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, ProbeDone> {
        Err(ProbeDone)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, ProbeDone> {
        self.0 = Some(fields);
        Err(ProbeDone)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// The keys a spec struct accepts, as its derived `Deserialize` names them.
fn fields_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut probe = FieldsProbe(None);
    let _ = T::deserialize(&mut probe);
    probe.0.unwrap_or(&[])
}

/// The keys the spec struct at `level` accepts.
fn accepted(level: Level) -> &'static [&'static str] {
    use crate::spec::{
        CaptureSpec, EntitySpec, FanOutSpec, FieldSpec, OperationSpec, ParentKeySpec, RoutingSpec,
        SelectSpec, SpecFile,
    };
    match level {
        Level::File => fields_of::<SpecFile>(),
        Level::Routing => fields_of::<RoutingSpec>(),
        Level::Entity => fields_of::<EntitySpec>(),
        Level::Field => fields_of::<FieldSpec>(),
        Level::Operation => fields_of::<OperationSpec>(),
        Level::ParentKey => fields_of::<ParentKeySpec>(),
        Level::Select => fields_of::<SelectSpec>(),
        Level::Capture => fields_of::<CaptureSpec>(),
        Level::FanOut => fields_of::<FanOutSpec>(),
    }
}

/// Every level's accepted keys, for the JSON Schema test.
pub fn known_keys() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("file", accepted(Level::File)),
        ("routing", accepted(Level::Routing)),
        ("entity", accepted(Level::Entity)),
        ("field", accepted(Level::Field)),
        ("operation", accepted(Level::Operation)),
        ("parent_key", accepted(Level::ParentKey)),
        ("select", accepted(Level::Select)),
        ("capture", accepted(Level::Capture)),
        ("fan_out", accepted(Level::FanOut)),
    ]
}

/// Every unknown key in `text`, or `None` if the YAML itself cannot be read (the typed
/// parse then reports the syntax error).
pub fn unknown_keys(text: &str) -> Option<Vec<Problem>> {
    let root: Spanned<Node> =
        serde_saphyr::from_str_with_options(text, crate::spec::options()).ok()?;
    let mut problems = Vec::new();
    check(&root.value, Level::File, &mut problems);
    Some(problems)
}

fn check(node: &Node, level: Level, problems: &mut Vec<Problem>) {
    let Node::Map(entries) = node else {
        return;
    };
    let known = accepted(level);
    for (key, value) in entries {
        if !known.is_empty() && !known.contains(&key.value.as_str()) {
            let mut problem = Problem::new("unknown_key", format!("unknown key `{}`", key.value))
                .at(key, "unknown key");
            problem.help = Some(match did_you_mean(&key.value, known.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("expected one of: {}", known.join(", ")),
            });
            problems.push(problem);
            continue;
        }
        let child = match (level, key.value.as_str()) {
            (Level::File, "routing") => Some(Level::Routing),
            (Level::File, "entities") | (Level::Entity, "children") => Some(Level::Entity),
            (Level::Entity, "fields") => Some(Level::Field),
            (Level::Entity, "operation") => Some(Level::Operation),
            (Level::Entity, "parent_key") => Some(Level::ParentKey),
            (Level::Field, "source") => Some(Level::Select),
            (Level::Field, "capture") => Some(Level::Capture),
            (Level::Entity, "fan_out") => Some(Level::FanOut),
            _ => None,
        };
        if let Some(child) = child {
            match &value.value {
                Node::Seq(items) => {
                    for item in items {
                        check(&item.value, child, problems);
                    }
                }
                map @ Node::Map(_) => check(map, child, problems),
                Node::Scalar => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lists_come_from_the_spec_structs() {
        assert!(accepted(Level::File).contains(&"entities"));
        assert!(accepted(Level::Entity).contains(&"primary_key"));
        assert!(accepted(Level::Field).contains(&"max_length"));
        assert!(
            accepted(Level::Field).contains(&"type"),
            "serde renames are honoured"
        );
        assert!(accepted(Level::Operation).contains(&"delete"));
        assert_eq!(accepted(Level::ParentKey), ["field", "from"]);
        assert_eq!(accepted(Level::Routing), ["discriminator"]);
        assert_eq!(accepted(Level::Select), ["array", "where", "then"]);
        assert_eq!(accepted(Level::Capture), ["pattern", "group"]);
    }

    #[test]
    fn every_unknown_key_is_found_at_every_level() {
        let yaml = "version: 1\nprojekt: p\nentities:\n  - name: a\n    tabel: t\n    fields:\n      - {name: x, typ: i64}\n    children:\n      - {name: c, sauce: /c, fields: []}\n";
        let problems = unknown_keys(yaml).unwrap();
        let messages: Vec<_> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "unknown key `projekt`",
                "unknown key `tabel`",
                "unknown key `typ`",
                "unknown key `sauce`"
            ]
        );
        assert_eq!(problems[1].help.as_deref(), Some("did you mean `table`?"));
    }
}
