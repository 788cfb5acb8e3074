//! The JSON of message bodies, read in place. A [`Value`] borrows its strings and member
//! names from the body's bytes (only strings with escapes are copied), keeps an object's
//! members in a vector in the order sent, and keeps every number as the text it was sent
//! as: `66.899999999999991` stays those digits, and `1E-22` stays `1E-22`, where a 64-bit
//! float would change both. Decimals are read from that text (`parse::decimal`), so no
//! digit is lost or invented; `json` columns store it as sent.
//!
//! Why not serde_json's `Value`: it copies every string and builds a `BTreeMap` per
//! object, which made reading a body cost the worker more than the rows it wrote (issue
//! 22's profile). Lookups here scan a few members, which is what bodies have.
//!
//! The tokenizer is serde_json's, as the separate crate `serde_json_lenient`: its
//! `arbitrary_precision` feature (numbers as text) reaches bodies only, where Cargo would
//! turn serde_json's on for the whole build and break untagged and flattened enums
//! elsewhere (async-nats' JetStream replies among them). Its lenient extensions (comments,
//! trailing commas) are switched off: bodies are strict JSON.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// For [`json!`]: the document is built by serde_json_lenient's macro, then converted.
#[doc(hidden)]
pub use serde_json_lenient as lenient;
pub use serde_json_lenient::Error;

/// A JSON document or a part of one, borrowing from the text it was read from;
/// `Value<'static>` owns everything (see [`Value::to_static`]).
#[derive(Debug, Clone, Default)]
pub enum Value<'a> {
    #[default]
    Null,
    Bool(bool),
    Number(Number<'a>),
    String(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    Object(Map<'a>),
}

/// A JSON number, as sent: integers that fit 64 bits as integers, others as their text.
#[derive(Debug, Clone)]
pub struct Number<'a>(NumberRepr<'a>);

#[derive(Debug, Clone)]
enum NumberRepr<'a> {
    Unsigned(u64),
    Signed(i64),
    Text(Cow<'a, str>),
}

/// An object's members in the order sent. A name sent twice reads as its last value, as
/// serde_json reads it.
#[derive(Debug, Clone, Default)]
pub struct Map<'a>(Vec<(Cow<'a, str>, Value<'a>)>);

/// The bytes of a JSON text that are outside its strings, with their offsets: for scans
/// that look for structure (nesting, a member) without reading values. The quotes that
/// open and close a string are not among them. Nothing is validated.
pub fn outside_strings(bytes: &[u8]) -> impl Iterator<Item = (usize, u8)> + '_ {
    let (mut in_string, mut escaped) = (false, false);
    bytes.iter().enumerate().filter_map(move |(offset, &byte)| {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            None
        } else if byte == b'"' {
            in_string = true;
            None
        } else {
            Some((offset, byte))
        }
    })
}

/// Parses one strict JSON document (RFC 8259): no comments, no trailing commas.
pub fn from_slice(bytes: &[u8]) -> Result<Value<'_>, Error> {
    // Checked as UTF-8 once, whole, rather than string by string as a slice reader
    // does: those checks cost the worker a fifth of its parsing. Bytes that are not
    // UTF-8 go to the slice reader, for its error and where it is.
    match std::str::from_utf8(bytes) {
        Ok(text) => from_str(text),
        Err(_) => strict(serde_json_lenient::Deserializer::from_slice(bytes)),
    }
}

/// [`from_slice`] of a string.
pub fn from_str(text: &str) -> Result<Value<'_>, Error> {
    strict(serde_json_lenient::Deserializer::from_str(text))
}

fn strict<'a, R: serde_json_lenient::de::Read<'a>>(
    mut deserializer: serde_json_lenient::Deserializer<R>,
) -> Result<Value<'a>, Error> {
    deserializer.set_ignore_trailing_commas(false);
    deserializer.set_allow_comments(false);
    let value = Value::deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// A [`Value<'static>`](Value) written as JSON, as serde_json's `json!` writes it.
#[macro_export]
#[doc(hidden)]
macro_rules! __json_value {
    ($($json:tt)+) => {
        $crate::json::Value::from($crate::json::lenient::json!($($json)+))
    };
}
pub use crate::__json_value as json;

impl<'a> Number<'a> {
    pub fn as_i64(&self) -> Option<i64> {
        match &self.0 {
            NumberRepr::Unsigned(n) => i64::try_from(*n).ok(),
            NumberRepr::Signed(n) => Some(*n),
            NumberRepr::Text(text) => text.parse().ok(),
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match &self.0 {
            NumberRepr::Unsigned(n) => Some(*n),
            NumberRepr::Signed(n) => u64::try_from(*n).ok(),
            NumberRepr::Text(text) => text.parse().ok(),
        }
    }

    /// The nearest `f64`, if finite.
    pub fn as_f64(&self) -> Option<f64> {
        match &self.0 {
            NumberRepr::Unsigned(n) => Some(*n as f64),
            NumberRepr::Signed(n) => Some(*n as f64),
            NumberRepr::Text(text) => text.parse::<f64>().ok().filter(|f| f.is_finite()),
        }
    }

    /// The number's text, as sent.
    pub fn text(&self) -> Cow<'_, str> {
        match &self.0 {
            NumberRepr::Unsigned(n) => Cow::Owned(n.to_string()),
            NumberRepr::Signed(n) => Cow::Owned(n.to_string()),
            NumberRepr::Text(text) => Cow::Borrowed(text),
        }
    }

    /// A copy that owns its text.
    pub fn to_static(&self) -> Number<'static> {
        Number(match &self.0 {
            NumberRepr::Unsigned(n) => NumberRepr::Unsigned(*n),
            NumberRepr::Signed(n) => NumberRepr::Signed(*n),
            NumberRepr::Text(text) => NumberRepr::Text(Cow::Owned(text.to_string())),
        })
    }

    /// A number from its text, which must be a JSON number.
    fn from_text(text: Cow<'a, str>) -> Self {
        if let Ok(n) = text.parse::<u64>() {
            return Number(NumberRepr::Unsigned(n));
        }
        match text.parse::<i64>() {
            Ok(n) => Number(NumberRepr::Signed(n)),
            Err(_) => Number(NumberRepr::Text(text)),
        }
    }
}

/// Equal when written the same (`1.0` is not `1`), as serde_json's exact numbers are.
impl PartialEq for Number<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.text() == other.text()
    }
}

impl fmt::Display for Number<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl<'a> Map<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The member named `name` (the last one, if sent twice).
    pub fn get(&self, name: &str) -> Option<&Value<'a>> {
        (self.0.iter().rev())
            .find(|(member, _)| member == name)
            .map(|(_, value)| value)
    }

    /// Sets member `name`, replacing a member of that name.
    pub fn insert(&mut self, name: impl Into<Cow<'a, str>>, value: Value<'a>) {
        let name = name.into();
        self.0.retain(|(member, _)| *member != name);
        self.0.push((name, value));
    }

    /// Removes member `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<Value<'a>> {
        let mut removed = None;
        self.0.retain_mut(|(member, value)| {
            let keep = member != name;
            if !keep {
                removed = Some(std::mem::take(value));
            }
            keep
        });
        removed
    }

    /// The members, each name once (with its last value), in name order, as serde_json's
    /// map holds them.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value<'a>)> {
        let mut members: Vec<(&str, &Value<'a>)> = (self.0.iter())
            .map(|(name, value)| (name.as_ref(), value))
            .collect();
        // Stable: of the members with one name, the last sent stays last, and is kept.
        members.sort_by(|a, b| a.0.cmp(b.0));
        let mut kept: Vec<(&str, &Value<'a>)> = Vec::with_capacity(members.len());
        for member in members {
            match kept.last_mut() {
                Some(last) if last.0 == member.0 => *last = member,
                _ => kept.push(member),
            }
        }
        kept.into_iter()
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Equal when they have the same members, in any order, as serde_json's objects are.
impl PartialEq for Map<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && (self.iter()).all(|(name, value)| other.get(name) == Some(value))
    }
}

impl PartialEq for Value<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Number(a), Value::Number(b)) => a == b,
            (Value::String(a), Value::String(b)) => a == b,
            (Value::Array(a), Value::Array(b)) => a == b,
            (Value::Object(a), Value::Object(b)) => a == b,
            _ => false,
        }
    }
}

impl<'a> Value<'a> {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn is_boolean(&self) -> bool {
        matches!(self, Value::Bool(_))
    }

    pub fn is_number(&self) -> bool {
        matches!(self, Value::Number(_))
    }

    pub fn is_string(&self) -> bool {
        matches!(self, Value::String(_))
    }

    pub fn is_array(&self) -> bool {
        matches!(self, Value::Array(_))
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Value::Object(_))
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(text) => Some(text),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Vec<Value<'a>>> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Map<'a>> {
        match self {
            Value::Object(map) => Some(map),
            _ => None,
        }
    }

    pub fn as_object_mut(&mut self) -> Option<&mut Map<'a>> {
        match self {
            Value::Object(map) => Some(map),
            _ => None,
        }
    }

    /// An object's member.
    pub fn get(&self, name: &str) -> Option<&Value<'a>> {
        match self {
            Value::Object(map) => map.get(name),
            _ => None,
        }
    }

    /// The value a JSON pointer (RFC 6901) names, as serde_json's `pointer`.
    pub fn pointer(&self, pointer: &str) -> Option<&Value<'a>> {
        if pointer.is_empty() {
            return Some(self);
        }
        let tokens = pointer.strip_prefix('/')?;
        tokens.split('/').try_fold(self, |target, token| {
            let token = token.replace("~1", "/").replace("~0", "~");
            match target {
                Value::Object(map) => map.get(&token),
                Value::Array(items) => {
                    let canonical = token == "0" || !token.starts_with(['0', '+']);
                    items.get(token.parse::<usize>().ok().filter(|_| canonical)?)
                }
                _ => None,
            }
        })
    }

    /// A copy of the document that owns all of itself (one pass, whatever it borrowed).
    pub fn to_static(&self) -> Value<'static> {
        match self {
            Value::Null => Value::Null,
            Value::Bool(b) => Value::Bool(*b),
            Value::Number(n) => Value::Number(n.to_static()),
            Value::String(text) => Value::String(Cow::Owned(text.to_string())),
            Value::Array(items) => Value::Array(items.iter().map(Value::to_static).collect()),
            Value::Object(Map(members)) => Value::Object(Map(members
                .iter()
                .map(|(name, value)| (Cow::Owned(name.to_string()), value.to_static()))
                .collect())),
        }
    }
}

static NULL: Value<'static> = Value::Null;

/// `value["name"]`: the member, or null (as serde_json indexes).
impl<'a> std::ops::Index<&str> for Value<'a> {
    type Output = Value<'a>;
    fn index(&self, name: &str) -> &Value<'a> {
        self.get(name).unwrap_or(&NULL)
    }
}

/// `value["name"] = …`: sets the member (a null becomes an object first), as serde_json
/// does. Panics on other values.
impl<'a> std::ops::IndexMut<&str> for Value<'a> {
    fn index_mut(&mut self, name: &str) -> &mut Value<'a> {
        if self.is_null() {
            *self = Value::Object(Map::new());
        }
        let Value::Object(Map(members)) = self else {
            panic!("cannot set member {name:?} of a JSON value that is not an object");
        };
        let at = match members.iter().rposition(|(member, _)| member == name) {
            Some(at) => at,
            None => {
                members.push((Cow::Owned(name.to_owned()), Value::Null));
                members.len() - 1
            }
        };
        &mut members[at].1
    }
}

/// `value[2] = …`: sets the element. Panics when there is none, as serde_json does.
impl<'a> std::ops::IndexMut<usize> for Value<'a> {
    fn index_mut(&mut self, index: usize) -> &mut Value<'a> {
        match self {
            Value::Array(items) if index < items.len() => &mut items[index],
            _ => panic!("no element {index} in this JSON value"),
        }
    }
}

/// `value[2]`: the element, or null.
impl<'a> std::ops::Index<usize> for Value<'a> {
    type Output = Value<'a>;
    fn index(&self, index: usize) -> &Value<'a> {
        (self.as_array())
            .and_then(|items| items.get(index))
            .unwrap_or(&NULL)
    }
}

impl From<usize> for Value<'static> {
    fn from(n: usize) -> Self {
        Value::Number(Number(NumberRepr::Unsigned(n as u64)))
    }
}

impl From<String> for Value<'static> {
    fn from(text: String) -> Self {
        Value::String(Cow::Owned(text))
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(text: &'a str) -> Self {
        Value::String(Cow::Borrowed(text))
    }
}

impl From<serde_json_lenient::Value> for Value<'static> {
    fn from(value: serde_json_lenient::Value) -> Self {
        use serde_json_lenient::Value as V;
        match value {
            V::Null => Value::Null,
            V::Bool(b) => Value::Bool(b),
            V::Number(n) => Value::Number(Number::from_text(Cow::Owned(n.as_str().to_owned()))),
            V::String(text) => Value::String(Cow::Owned(text)),
            V::Array(items) => Value::Array(items.into_iter().map(Value::from).collect()),
            V::Object(members) => Value::Object(Map(members
                .into_iter()
                .map(|(name, value)| (Cow::Owned(name), Value::from(value)))
                .collect())),
        }
    }
}

/// Compact JSON, numbers as sent, members in name order (as `json` columns store it).
impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_json_lenient::to_string(self).map_err(|_| fmt::Error)?)
    }
}

/// As serde_json writes its exact `Value`: numbers as sent, members in name order, each
/// name once.
impl serde::Serialize for Value<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Number(Number(NumberRepr::Unsigned(n))) => serializer.serialize_u64(*n),
            Value::Number(Number(NumberRepr::Signed(n))) => serializer.serialize_i64(*n),
            Value::Number(Number(NumberRepr::Text(text))) => {
                serde_json_lenient::Number::from_string_unchecked(text.to_string())
                    .serialize(serializer)
            }
            Value::String(text) => serializer.serialize_str(text),
            Value::Array(items) => serializer.collect_seq(items),
            Value::Object(map) => serializer.collect_map(map.iter()),
        }
    }
}

/// serde_json_lenient's token for a number it hands over as text (`arbitrary_precision`).
const NUMBER_TOKEN: &str = "$serde_json_lenient::private::Number";

/// An object member's name, borrowed when it has no escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, name: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(name)))
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(name.to_owned())))
            }
            fn visit_string<E: de::Error>(self, name: String) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(name)))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

impl<'de> Deserialize<'de> for Value<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value<'de>, E> {
        Ok(Value::Bool(b))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value<'de>, E> {
        Ok(Value::Number(Number(NumberRepr::Unsigned(n))))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value<'de>, E> {
        Ok(Value::Number(Number(NumberRepr::Signed(n))))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value<'de>, E> {
        // Not reached with numbers as text; kept exact in case it is.
        Ok(Value::Number(Number(NumberRepr::Text(Cow::Owned(
            n.to_string(),
        )))))
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Value<'de>, E> {
        Ok(Value::String(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Value<'de>, E> {
        Ok(Value::String(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Value<'de>, E> {
        Ok(Value::String(Cow::Owned(text)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value<'de>, A::Error> {
        let Some(Name(first)) = map.next_key::<Name<'de>>()? else {
            return Ok(Value::Object(Map::new()));
        };
        if first == NUMBER_TOKEN {
            // A number too long or not whole, handed over as its text.
            let text: String = map.next_value()?;
            return Ok(Value::Number(Number(NumberRepr::Text(Cow::Owned(text)))));
        }
        let mut members = Vec::with_capacity(8);
        members.push((first, map.next_value()?));
        while let Some(Name(name)) = map.next_key::<Name<'de>>()? {
            members.push((name, map.next_value()?));
        }
        Ok(Value::Object(Map(members)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structure_is_found_outside_strings_only() {
        let text = br#"{"a\"{[":[1,"]}\\"],"b":{}}"#;
        let outside: String = outside_strings(text).map(|(_, b)| char::from(b)).collect();
        assert_eq!(outside, "{:[1,],:{}}");
        let (offset, _) = outside_strings(text).find(|&(_, b)| b == b'[').unwrap();
        assert_eq!(&text[offset..offset + 2], b"[1");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_refused_where_they_are() {
        let text = r#"{"a": "é\u00e9", "b": [1, "x"]}"#;
        let (whole, sliced) = (
            from_str(text).unwrap(),
            from_slice(text.as_bytes()).unwrap(),
        );
        assert_eq!(whole.to_string(), sliced.to_string());
        assert_eq!(whole.get("a").and_then(Value::as_str), Some("éé"));
        let err = from_slice(b"{\"a\": \"\xff\"}").unwrap_err();
        assert!(err.to_string().contains("line 1 column"), "{err}");
        assert!(from_slice(b"{\"a\": 1, }").is_err(), "no trailing commas");
    }

    #[test]
    fn numbers_keep_the_text_they_were_sent_as() {
        let value = from_str(
            r#"{"a": 66.899999999999991, "b": 1E-22, "c": -0.10, "d": 18446744073709551616, "e": -7, "f": 18446744073709551615}"#,
        )
        .unwrap();
        let text = |key: &str| match &value[key] {
            Value::Number(n) => n.text().into_owned(),
            other => panic!("{key} is {other}"),
        };
        assert_eq!(text("a"), "66.899999999999991");
        assert_eq!(text("b"), "1E-22");
        assert_eq!(text("c"), "-0.10");
        assert_eq!(text("d"), "18446744073709551616");
        assert_eq!(text("e"), "-7");
        assert_eq!(text("f"), "18446744073709551615");
        // Written back as sent, too (json columns), members in name order.
        assert_eq!(
            value.to_string(),
            r#"{"a":66.899999999999991,"b":1E-22,"c":-0.10,"d":18446744073709551616,"e":-7,"f":18446744073709551615}"#
        );
        // Integers still read as integers, and only integers do.
        assert_eq!(from_str("[7]").unwrap()[0].as_i64(), Some(7));
        assert_eq!(value["e"].as_i64(), Some(-7));
        assert_eq!(value["c"].as_i64(), None);
        assert_eq!(value["d"].as_i64(), None);
        assert_eq!(value["f"].as_u64(), Some(u64::MAX));
        assert_eq!(value["a"].as_f64(), "66.899999999999991".parse().ok());
        assert_eq!(from_str("1E400").unwrap().as_f64(), None);
    }

    #[test]
    fn bodies_are_strict_json() {
        for bad in [
            r#"{"a": 1,}"#,
            "[1, 2,]",
            r#"{"a": 1 /* note */}"#,
            "// x\n{}",
            "{} {}",
            "{'a': 1}",
            r#"{"a": "\ud800"}"#,
            "\"\u{1}\"",
        ] {
            assert!(from_str(bad).is_err(), "{bad} was accepted");
        }
        assert!(from_str(" {\"a\": [1, 2.5e3, null]} \n").is_ok());
    }

    #[test]
    fn strings_are_borrowed_unless_escaped_and_read_as_serde_json_reads_them() {
        let text =
            r#"{"plain": "café", "esc\"aped": "a\nb\u00e9\ud83d\ude00", "n": [true, null, {}]}"#;
        let value = from_str(text).unwrap();
        assert!(matches!(
            &value["plain"],
            Value::String(Cow::Borrowed("café"))
        ));
        assert_eq!(value["esc\"aped"].as_str(), Some("a\nbé😀"));
        // The same document as serde_json reads it, written the same.
        let theirs: serde_json_lenient::Value = serde_json_lenient::from_str(text).unwrap();
        assert_eq!(serde_json_lenient::to_value(&value).unwrap(), theirs);
        assert_eq!(value.to_string(), theirs.to_string());
        assert_eq!(Value::from(theirs), value);
    }

    #[test]
    fn a_name_sent_twice_reads_as_its_last_value() {
        let value = from_str(r#"{"a": 1, "b": 2, "a": 3}"#).unwrap();
        assert_eq!(value["a"].as_i64(), Some(3));
        let map = value.as_object().unwrap();
        assert_eq!(map.len(), 2);
        let names: Vec<&str> = map.iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(value.to_string(), r#"{"a":3,"b":2}"#);
        let mut changed = value.clone();
        changed["c"]["d"] = json!([1]);
        changed["c"]["d"][0] = json!("x");
        changed["a"] = Value::Null;
        assert_eq!(changed, json!({"a": null, "b": 2, "c": {"d": ["x"]}}));
        let mut without = value.clone();
        assert_eq!(without.as_object_mut().unwrap().remove("a"), Some(json!(3)));
        assert_eq!(without, json!({"b": 2}));
        // Objects equal whatever the order, as serde_json's are.
        assert_eq!(value, json!({"b": 2, "a": 3}));
        assert_ne!(value, json!({"b": 2, "a": 1}));
    }

    #[test]
    fn pointers_find_what_serde_json_finds() {
        let text = r#"{"a": {"b/c": [10, {"~d": 20}]}, "": 1}"#;
        let ours = from_str(text).unwrap();
        let theirs: serde_json_lenient::Value = serde_json_lenient::from_str(text).unwrap();
        for pointer in [
            "",
            "/a",
            "/a/b~1c",
            "/a/b~1c/0",
            "/a/b~1c/1/~0d",
            "/a/b~1c/01",
            "/a/b~1c/+1",
            "/a/b~1c/2",
            "/",
            "/x",
            "a",
            "/a/b~1c/-",
        ] {
            assert_eq!(
                ours.pointer(pointer)
                    .map(|v| serde_json_lenient::to_value(v).unwrap()),
                theirs.pointer(pointer).cloned(),
                "{pointer:?}"
            );
        }
    }
}
