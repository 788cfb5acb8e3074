//! Typed reading of message bodies, for generated parsers: every error names the JSON
//! path of the offending value, so a dead-lettered message says exactly what was wrong.

use std::borrow::Cow;
use std::ops::{Bound, RangeBounds};
use std::sync::LazyLock;

use crate::decimal::{Decimal, Refusal};
use crate::json::Value;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};

/// Why a body could not become rows. Always permanent: the same body fails the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", if path.is_empty() { "body" } else { path })]
pub struct ParseError {
    /// JSON pointer of the value, `""` for the whole body, or `$name` for metadata.
    pub path: String,
    pub message: String,
    /// The entity the message was routed to, when routing got that far.
    pub entity: Option<&'static str>,
}

impl ParseError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            entity: None,
        }
    }

    /// The error of a record found at `path` in the message (a fanned-out record): its
    /// path becomes the path in the message. Metadata (`$name`) has no place in the body.
    #[must_use]
    pub fn within(self, path: &str) -> Self {
        if path.is_empty() || self.path.starts_with('$') {
            return self;
        }
        Self {
            path: format!("{path}{}", self.path),
            ..self
        }
    }

    /// The error of a message routed to `entity`.
    pub fn in_entity(self, entity: &'static str) -> Self {
        Self {
            entity: Some(entity),
            ..self
        }
    }
}

pub type Result<T> = std::result::Result<T, ParseError>;

/// The value at `tokens` below `value`, if any (JSON null counts as absent).
pub fn lookup<'a, 'v>(value: &'a Value<'v>, tokens: &[&str]) -> Option<&'a Value<'v>> {
    let mut current = value;
    for token in tokens {
        current = match current {
            Value::Object(map) => map.get(token)?,
            Value::Array(items) => items.get(array_index(token)?)?,
            _ => return None,
        };
    }
    (!current.is_null()).then_some(current)
}

/// An array index as RFC 6901 writes it: `0`, or digits without a leading zero (not `01`
/// or `+1`, which `usize`'s parser reads as 1; nor `-`, the element after the last).
fn array_index(token: &str) -> Option<usize> {
    let canonical = token == "0" || !token.starts_with('0');
    (canonical && token.bytes().all(|b| b.is_ascii_digit()))
        .then(|| token.parse().ok())
        .flatten()
}

/// A source that picks an array's element by its members' values (`source: { array,
/// where, then }`): the first element of the array at `array` that is an object whose
/// members named in `matching` are strings equal to the given ones, exactly; then the
/// value at `then` inside that element. Elements that are not objects are skipped.
#[derive(Debug, Clone, Copy)]
pub struct Selection {
    pub array: &'static [&'static str],
    pub matching: &'static [(&'static str, &'static str)],
    pub then: &'static [&'static str],
}

/// The element `selection` picks below `value`: its position in the array, and the value
/// at `then` inside it (`None` when the element lacks it, or it is null). `None` when the
/// array is absent, is not an array, or no element matches.
pub fn select<'a, 'v>(
    value: &'a Value<'v>,
    selection: &Selection,
) -> Option<(usize, Option<&'a Value<'v>>)> {
    let Value::Array(items) = lookup(value, selection.array)? else {
        return None;
    };
    items.iter().enumerate().find_map(|(index, item)| {
        let Value::Object(members) = item else {
            return None;
        };
        let matches = (selection.matching.iter())
            .all(|(name, wanted)| members.get(name).and_then(Value::as_str) == Some(*wanted));
        matches.then(|| (index, lookup(item, selection.then)))
    })
}

/// A value a field's source found, or did not, and the JSON path (or `$name`) naming it in
/// errors: what generated parsers read when a source picks an element by its members'
/// values ([`selected`]) or keeps a capture group of a string ([`Found::capture`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Found<'a> {
    /// The value; `None` when absent (a nullable field is then `NULL`, a default applies).
    pub value: Option<Cow<'a, Value<'a>>>,
    /// Where the value is (or was looked for): `/code/coding/1/code`, `$request_id`.
    pub path: String,
    /// Why it is absent, said by a required field's error (else "is required").
    pub missing: Option<String>,
    /// What a conversion error adds: the text a pattern captured, and the pattern.
    pub context: Option<String>,
}

/// The value at `tokens` below `body` (found at `path`), as a [`Found`].
pub fn found<'a>(body: &'a Value, path: &str, tokens: &[&str]) -> Found<'a> {
    Found {
        value: lookup(body, tokens).map(Cow::Borrowed),
        path: join(path, tokens),
        missing: None,
        context: None,
    }
}

/// Metadata item `name` of `meta` (see [`metadata`]), as a [`Found`] named `$name`.
pub fn found_meta<'a>(meta: &'a Value, name: &str) -> Found<'a> {
    Found {
        value: meta.get(name).map(Cow::Borrowed),
        path: format!("${name}"),
        missing: None,
        context: None,
    }
}

/// The value `selection` picks below `body` (found at `path`). Its path names the element
/// taken (`/code/coding/1/code`); when no element matches, the array's, and a required
/// field's error says which member values were looked for.
pub fn selected<'a>(body: &'a Value, path: &str, selection: &Selection) -> Found<'a> {
    match select(body, selection) {
        Some((index, value)) => {
            let mut tokens: Vec<&str> = selection.array.to_vec();
            let index = index.to_string();
            tokens.push(&index);
            tokens.extend_from_slice(selection.then);
            Found {
                value: value.map(Cow::Borrowed),
                path: join(path, &tokens),
                missing: None,
                context: None,
            }
        }
        None => {
            let wanted: Vec<String> = (selection.matching.iter())
                .map(|(name, value)| format!("{name} is {value:?}"))
                .collect();
            Found {
                value: None,
                path: join(path, selection.array),
                missing: Some(format!(
                    "is required: no element of the array has {}",
                    wanted.join(" and ")
                )),
                context: None,
            }
        }
    }
}

impl<'a> Found<'a> {
    /// Whether a value was found (a patch sets only those).
    pub fn is_present(&self) -> bool {
        self.value.is_some()
    }

    /// Group `group` of `pattern`'s first match in the value, a string: absent when the
    /// pattern does not match or the group takes no part in the match. With `literal`
    /// (fields read from JSON numbers or booleans), a captured text that is a JSON number,
    /// `true` or `false` becomes that value, so `"123"` reads as an integer.
    pub fn capture(self, pattern: &regex::Regex, group: usize, literal: bool) -> Result<Self> {
        let Some(value) = &self.value else {
            return Ok(self);
        };
        let Value::String(text) = value.as_ref() else {
            return Err(type_error(
                &self.path,
                &format!("a string to match {}", pattern.as_str()),
                value,
            ));
        };
        let Some(captured) = (pattern.captures(text.as_ref())).and_then(|c| c.get(group)) else {
            let missing = format!(
                "is required: {text:?} does not match {} (group {group})",
                pattern.as_str()
            );
            return Ok(Found {
                value: None,
                missing: Some(missing),
                ..self
            });
        };
        let captured = captured.as_str();
        let value = literal
            .then(|| crate::json::from_str(captured).ok())
            .flatten()
            .filter(|v| v.is_number() || v.is_boolean())
            .map(|value| value.to_static())
            .unwrap_or_else(|| Value::from(captured.to_owned()));
        Ok(Found {
            value: Some(Cow::Owned(value)),
            context: Some(format!(
                "{captured:?}, captured from {text:?} by {}",
                pattern.as_str()
            )),
            ..self
        })
    }

    fn convert<T>(
        &self,
        value: &Value,
        convert: impl FnOnce(&Value, &str) -> Result<T>,
    ) -> Result<T> {
        convert(value, "").map_err(|err| ParseError {
            path: self.path.clone() + &err.path,
            message: match &self.context {
                None => err.message,
                Some(context) => format!("{} ({context})", err.message),
            },
            ..err
        })
    }

    /// A required field's value, converted by `convert`.
    pub fn required<T>(self, convert: impl FnOnce(&Value, &str) -> Result<T>) -> Result<T> {
        match &self.value {
            None => Err(ParseError::new(
                self.path,
                self.missing.unwrap_or_else(|| "is required".to_owned()),
            )),
            Some(value) => self.convert(value, convert),
        }
    }

    /// A nullable field's value: `None` when absent.
    pub fn optional<T>(self, convert: impl FnOnce(&Value, &str) -> Result<T>) -> Result<Option<T>> {
        (self.value.as_ref())
            .map(|value| self.convert(value, convert))
            .transpose()
    }

    /// A value, or `default` when absent.
    pub fn or<T>(
        self,
        default: &Value,
        convert: impl FnOnce(&Value, &str) -> Result<T>,
    ) -> Result<T> {
        self.convert(self.value.as_deref().unwrap_or(default), convert)
    }
}

#[cfg(test)]
mod selection_tests {
    use super::*;
    use crate::json::json;

    const LOINC: Selection = Selection {
        array: &["code", "coding"],
        matching: &[("system", "http://loinc.org")],
        then: &["code"],
    };

    #[test]
    fn the_first_element_whose_members_match_is_taken() {
        let body = json!({"code": {"coding": [
            "not an object",
            {"system": "http://snomed.info/sct", "code": "27113001"},
            {"system": "http://loinc.org/", "code": "near miss"},
            {"system": "http://loinc.org", "code": "29463-7"},
            {"system": "http://loinc.org", "code": "second"}
        ]}});
        let found = selected(&body, "", &LOINC);
        assert_eq!(found.path, "/code/coding/3/code");
        assert_eq!(found.required(text).unwrap(), "29463-7");
        // An error names the element taken.
        let err = selected(&body, "/entry/0", &LOINC)
            .required(integer::<i64>)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/entry/0/code/coding/3/code: expected an integer, got a string"
        );
    }

    #[test]
    fn no_match_is_absent() {
        let body = json!({"code": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}, {"code": "2"}]}});
        let found = selected(&body, "", &LOINC);
        assert_eq!(found.clone().optional(text), Ok(None));
        assert_eq!(found.clone().or(&json!("none"), text).unwrap(), "none");
        assert_eq!(
            found.required(text).unwrap_err().to_string(),
            "/code/coding: is required: no element of the array has system is \"http://loinc.org\""
        );
        for body in [
            json!({}),
            json!({"code": {"coding": {"system": "http://loinc.org"}}}),
        ] {
            assert_eq!(selected(&body, "", &LOINC).optional(text), Ok(None));
        }
        // Every member must match, as a string.
        let both = Selection {
            matching: &[("system", "http://loinc.org"), ("version", "2.0")],
            ..LOINC
        };
        let body = json!({"code": {"coding": [
            {"system": "http://loinc.org", "version": 2.0, "code": "number"},
            {"system": "http://loinc.org", "version": "2.0", "code": "string"}
        ]}});
        assert_eq!(selected(&body, "", &both).required(text).unwrap(), "string");
        // The element itself, with no `then`.
        let element = Selection { then: &[], ..LOINC };
        assert_eq!(selected(&body, "", &element).path, "/code/coding/0");
    }

    #[test]
    fn captures_are_read_as_the_field_reads_values() {
        let pattern = regex::Regex::new("^([A-Za-z]+)/(.+)$").unwrap();
        let body = json!({"subject": {"reference": "Patient/123"}, "n": 5});
        let capture = |group, literal| {
            found(&body, "", &["subject", "reference"]).capture(&pattern, group, literal)
        };
        assert_eq!(
            capture(1, false).unwrap().required(text).unwrap(),
            "Patient"
        );
        assert_eq!(capture(2, false).unwrap().required(text).unwrap(), "123");
        assert_eq!(capture(2, true).unwrap().required(integer::<i64>), Ok(123));
        let letters = regex::Regex::new("^([A-Za-z]+)/([a-z]+)$").unwrap();
        let absent = found(&body, "", &["subject", "reference"])
            .capture(&letters, 1, false)
            .unwrap();
        assert_eq!(absent.clone().optional(text), Ok(None));
        assert_eq!(
            absent.required(text).unwrap_err().to_string(),
            "/subject/reference: is required: \"Patient/123\" does not match ^([A-Za-z]+)/([a-z]+)$ (group 1)"
        );
        let err = capture(1, true)
            .unwrap()
            .required(integer::<i64>)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/subject/reference: expected an integer, got a string (\"Patient\", captured from \"Patient/123\" by ^([A-Za-z]+)/(.+)$)"
        );
        let err = found(&body, "", &["n"])
            .capture(&pattern, 1, false)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/n: expected a string to match ^([A-Za-z]+)/(.+)$, got a number"
        );
        // Absent stays absent; metadata is named `$name`.
        assert_eq!(
            found(&body, "", &["x"])
                .capture(&pattern, 1, false)
                .unwrap()
                .value,
            None
        );
        let meta = json!({"request_id": "Patient/7"});
        let id = found_meta(&meta, "request_id")
            .capture(&pattern, 2, true)
            .unwrap();
        assert_eq!(id.path, "$request_id");
        assert_eq!(id.required(integer::<i32>), Ok(7));
    }
}

/// `path` extended by `tokens`, escaped as a JSON pointer.
pub fn join(path: &str, tokens: &[&str]) -> String {
    let mut out = path.to_owned();
    for token in tokens {
        out.push('/');
        out.push_str(&token.replace('~', "~0").replace('/', "~1"));
    }
    out
}

/// Prefixes the path of an error raised while converting the value at `path`+`tokens`.
fn under(path: &str, tokens: &[&str], err: ParseError) -> ParseError {
    ParseError {
        path: join(path, tokens) + &err.path,
        ..err
    }
}

/// The message metadata a spec can read (`$message_id`, `$received_at`,
/// `$idempotency_key`, `$entity`, `$request_id`, `$header.<name>`), as one JSON object
/// (`header.<name>` for a captured header), so generated
/// parsers read them with the same conversions as body fields. Absent items are absent.
pub fn metadata(envelope: &crate::Envelope) -> Value<'_> {
    let mut map = crate::json::Map::new();
    map.insert("message_id", envelope.message_id.to_string().into());
    map.insert(
        "received_at",
        (envelope.received_at)
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            .into(),
    );
    if let Some(key) = &envelope.idempotency_key {
        map.insert("idempotency_key", key.as_str().into());
    }
    if let Some(entity) = &envelope.entity {
        map.insert("entity", entity.to_string().into());
    }
    if let Some(request_id) = &envelope.request_id {
        map.insert("request_id", request_id.clone().into());
    }
    for (name, value) in &envelope.headers {
        map.insert(format!("header.{name}"), value.clone().into());
    }
    Value::Object(map)
}

/// Converts metadata item `name` of `meta` (see [`metadata`]); errors name it `$name`.
fn convert_meta<T>(
    value: &Value,
    name: &str,
    convert: impl FnOnce(&Value, &str) -> Result<T>,
) -> Result<T> {
    convert(value, "").map_err(|err| ParseError {
        path: format!("${name}"),
        ..err
    })
}

/// A metadata item every message has, or that the field requires.
pub fn meta<T>(
    meta: &Value,
    name: &str,
    convert: impl FnOnce(&Value, &str) -> Result<T>,
) -> Result<T> {
    match meta.get(name) {
        None => Err(ParseError::new(
            format!("${name}"),
            "is required: the message was sent without it",
        )),
        Some(value) => convert_meta(value, name, convert),
    }
}

/// Like [`meta`], using `default` when the message lacks the item.
pub fn meta_or<T>(
    meta: &Value,
    name: &str,
    default: &Value,
    convert: impl FnOnce(&Value, &str) -> Result<T>,
) -> Result<T> {
    convert_meta(meta.get(name).unwrap_or(default), name, convert)
}

/// A metadata item for a nullable field: `None` when the message lacks it.
pub fn optional_meta<T>(
    meta: &Value,
    name: &str,
    convert: impl FnOnce(&Value, &str) -> Result<T>,
) -> Result<Option<T>> {
    (meta.get(name))
        .map(|value| convert_meta(value, name, convert))
        .transpose()
}

/// A required field of `body`, converted by `convert` (called with a path of `""`). The
/// JSON path is only built when something is wrong, not for every field of every message.
pub fn field<T>(
    body: &Value,
    path: &str,
    tokens: &[&str],
    convert: impl FnOnce(&Value, &str) -> Result<T>,
) -> Result<T> {
    match lookup(body, tokens) {
        None => Err(ParseError::new(join(path, tokens), "is required")),
        Some(value) => convert(value, "").map_err(|e| under(path, tokens, e)),
    }
}

/// Like [`field`], using `default` when the body lacks the field.
pub fn field_or<T>(
    body: &Value,
    path: &str,
    tokens: &[&str],
    default: &Value,
    convert: impl FnOnce(&Value, &str) -> Result<T>,
) -> Result<T> {
    let value = lookup(body, tokens).unwrap_or(default);
    convert(value, "").map_err(|e| under(path, tokens, e))
}

/// A nullable field: `None` when absent or null.
pub fn optional_field<T>(
    body: &Value,
    path: &str,
    tokens: &[&str],
    convert: impl FnOnce(&Value, &str) -> Result<T>,
) -> Result<Option<T>> {
    lookup(body, tokens)
        .map(|value| convert(value, "").map_err(|e| under(path, tokens, e)))
        .transpose()
}

/// A required value: present, or an error naming its path.
pub fn required<'a, 'v>(value: Option<&'a Value<'v>>, path: &str) -> Result<&'a Value<'v>> {
    value.ok_or_else(|| ParseError::new(path, "is required"))
}

/// Every message body is one JSON object; say so instead of reporting its first field
/// missing.
pub fn body_object(body: &Value) -> Result<()> {
    if body.is_object() {
        Ok(())
    } else {
        Err(type_error("", "a JSON object as the message body", body))
    }
}

fn type_error(path: &str, expected: &str, got: &Value) -> ParseError {
    let kind = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    ParseError::new(path, format!("expected {expected}, got {kind}"))
}

/// Checks `value` against the spec's `min` and `max`, given as a range: `1..`, `0..=7`,
/// `..=1.0`. An excluded end means "less than" (or "greater than").
fn check_range<T: PartialOrd + std::fmt::Display>(
    path: &str,
    value: T,
    range: &impl RangeBounds<T>,
) -> Result<()> {
    let message = match (range.start_bound(), range.end_bound()) {
        (Bound::Included(min), _) if value < *min => format!("must be at least {min}, got {value}"),
        (Bound::Excluded(min), _) if value <= *min => {
            format!("must be greater than {min}, got {value}")
        }
        (_, Bound::Included(max)) if value > *max => format!("must be at most {max}, got {value}"),
        (_, Bound::Excluded(max)) if value >= *max => {
            format!("must be less than {max}, got {value}")
        }
        _ => return Ok(()),
    };
    Err(ParseError::new(path, message))
}

/// The JSON number as an `i64`: integral JSON numbers only (no 1.5, no "1").
fn integer_value(value: &Value, path: &str) -> Result<i64> {
    value.as_i64().ok_or_else(|| match value {
        Value::Number(_) => ParseError::new(path, "expected an integer in range"),
        other => type_error(path, "an integer", other),
    })
}

fn narrow<T: TryFrom<i64>>(number: i64, path: &str) -> Result<T> {
    T::try_from(number).map_err(|_| {
        ParseError::new(
            path,
            format!("{number} does not fit the column's integer type"),
        )
    })
}

/// An integer of the column's width. Integral JSON numbers only (no 1.5, no "1").
pub fn integer<T: TryFrom<i64>>(value: &Value, path: &str) -> Result<T> {
    narrow(integer_value(value, path)?, path)
}

/// An integer of the column's width within `range` (the spec's `min` and `max`, in the
/// column's type). The range is checked before the width, so a value too large for the
/// column and above `max` says it is above `max`.
pub fn integer_in<T>(value: &Value, path: &str, range: impl RangeBounds<T>) -> Result<T>
where
    T: TryFrom<i64> + Into<i64> + Copy,
{
    let number = integer_value(value, path)?;
    let wide = (map_bound(range.start_bound()), map_bound(range.end_bound()));
    check_range(path, number, &wide)?;
    narrow(number, path)
}

fn map_bound<T: Into<i64> + Copy>(bound: Bound<&T>) -> Bound<i64> {
    match bound {
        Bound::Included(b) => Bound::Included((*b).into()),
        Bound::Excluded(b) => Bound::Excluded((*b).into()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

pub fn float(value: &Value, path: &str) -> Result<f64> {
    value
        .as_f64()
        .ok_or_else(|| type_error(path, "a number", value))
}

/// A float within `range` (the spec's `min` and `max`).
pub fn float_in(value: &Value, path: &str, range: impl RangeBounds<f64>) -> Result<f64> {
    let number = float(value, path)?;
    check_range(path, number, &range)?;
    Ok(number)
}

/// `f32` columns: refuses values that overflow it.
pub fn float32(value: &Value, path: &str) -> Result<f32> {
    narrow_f32(float(value, path)?, path)
}

/// An `f32` within `range`, checked on the JSON number before narrowing it.
pub fn float32_in(value: &Value, path: &str, range: impl RangeBounds<f64>) -> Result<f32> {
    narrow_f32(float_in(value, path, range)?, path)
}

fn narrow_f32(number: f64, path: &str) -> Result<f32> {
    if number.is_finite() && number.abs() > f64::from(f32::MAX) {
        return Err(ParseError::new(path, "does not fit a 32-bit float"));
    }
    Ok(number as f32)
}

pub fn boolean(value: &Value, path: &str) -> Result<bool> {
    value
        .as_bool()
        .ok_or_else(|| type_error(path, "true or false", value))
}

/// String checks from the spec; unset fields check nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextRules {
    pub min_length: Option<u32>,
    pub max_length: Option<u32>,
    pub pattern: Option<&'static LazyLock<regex::Regex>>,
    pub allowed: &'static [&'static str],
}

/// A string (without NUL characters, which databases refuse).
pub fn text(value: &Value, path: &str) -> Result<String> {
    text_str(value, path).map(str::to_owned)
}

fn text_str<'a>(value: &'a Value, path: &str) -> Result<&'a str> {
    let text = value
        .as_str()
        .ok_or_else(|| type_error(path, "a string", value))?;
    if text.contains('\0') {
        return Err(ParseError::new(
            path,
            "contains a NUL character, which databases refuse",
        ));
    }
    Ok(text)
}

/// A string, checked for length (in characters), pattern and allowed values.
pub fn text_with(value: &Value, path: &str, rules: TextRules) -> Result<String> {
    let text = text_str(value, path)?;
    let length = text.chars().count();
    if let Some(max) = rules.max_length
        && length > max as usize
    {
        return Err(ParseError::new(
            path,
            format!("is {length} characters long; the limit is {max}"),
        ));
    }
    if let Some(min) = rules.min_length
        && length < min as usize
    {
        return Err(ParseError::new(
            path,
            format!("is {length} characters long; the minimum is {min}"),
        ));
    }
    if !rules.allowed.is_empty() && !rules.allowed.contains(&text) {
        return Err(ParseError::new(
            path,
            format!("{text:?} is not one of {}", rules.allowed.join(", ")),
        ));
    }
    if let Some(pattern) = rules.pattern
        && !pattern.is_match(text)
    {
        return Err(ParseError::new(
            path,
            format!("{text:?} does not match {}", pattern.as_str()),
        ));
    }
    Ok(text.to_owned())
}

/// The text of a decimal as it was sent (a JSON number's own digits: no float in
/// between), read exactly.
fn decimal_text<'a>(value: &'a Value, path: &str) -> Result<(Cow<'a, str>, Decimal)> {
    let raw = match value {
        Value::String(s) => Cow::Borrowed(s.trim()),
        Value::Number(n) => n.text(),
        other => {
            return Err(type_error(
                path,
                "a decimal number or numeric string",
                other,
            ));
        }
    };
    let decimal = Decimal::parse(&raw).map_err(|refusal| decimal_refused(path, &raw, refusal))?;
    Ok((raw, decimal))
}

fn decimal_refused(path: &str, raw: &str, refusal: Refusal) -> ParseError {
    let message = match refusal {
        Refusal::NotANumber => format!("{raw:?} is not a decimal number"),
        Refusal::Exponent => format!("{raw} has an exponent beyond any decimal column"),
        Refusal::Scale(scale) => format!("{raw} has more than {scale} digits after the point"),
        Refusal::Whole(whole) => format!("{raw} has more than {whole} digits before the point"),
    };
    ParseError::new(path, message)
}

/// An exact decimal with at most `precision` digits, `scale` of them after the point.
/// Accepts JSON numbers (`12.5`, `1E-2`) and numeric strings (`"12.50"`), read from their
/// text; returns the canonical text, with exactly `scale` digits after the point
/// (`"12.50"`), as `NUMERIC(precision, scale)` stores it. Refuses what that column would
/// round or overflow, echoing the value as it was sent.
pub fn decimal(value: &Value, path: &str, precision: u32, scale: u32) -> Result<String> {
    let (raw, decimal) = decimal_text(value, path)?;
    decimal
        .constrained(precision, scale)
        .map_err(|refusal| decimal_refused(path, &raw, refusal))
}

/// A decimal within `range` (the spec's `min` and `max`), compared exactly.
pub fn decimal_in(
    value: &Value,
    path: &str,
    precision: u32,
    scale: u32,
    range: impl RangeBounds<f64>,
) -> Result<String> {
    let (raw, decimal) = decimal_text(value, path)?;
    let canonical = decimal
        .constrained(precision, scale)
        .map_err(|refusal| decimal_refused(path, &raw, refusal))?;
    check_decimal_range(path, &raw, &decimal, &range)?;
    Ok(canonical)
}

/// A decimal of any size and scale (`decimal` without `precision` and `scale`: an
/// unconstrained `NUMERIC`), kept at its own scale: `1.00` stays `1.00`, `1E-3` is
/// `0.001`.
pub fn numeric(value: &Value, path: &str) -> Result<String> {
    let (raw, decimal) = decimal_text(value, path)?;
    decimal
        .unconstrained()
        .map_err(|refusal| decimal_refused(path, &raw, refusal))
}

/// [`numeric`] within `range` (the spec's `min` and `max`), compared exactly.
pub fn numeric_in(value: &Value, path: &str, range: impl RangeBounds<f64>) -> Result<String> {
    let (raw, decimal) = decimal_text(value, path)?;
    let canonical = decimal
        .unconstrained()
        .map_err(|refusal| decimal_refused(path, &raw, refusal))?;
    check_decimal_range(path, &raw, &decimal, &range)?;
    Ok(canonical)
}

/// [`check_range`] for decimals: the bounds' shortest decimal text against the value's
/// exact digits, so `0.10000000000000000001` is above a `max` of `0.1`.
fn check_decimal_range(
    path: &str,
    raw: &str,
    value: &Decimal,
    range: &impl RangeBounds<f64>,
) -> Result<()> {
    use std::cmp::Ordering::{Greater, Less};
    // The value's nearest f64 decides whenever it differs from the bound: rounding to
    // nearest never reorders, and a bound is exactly the shortest text that rounds to it.
    // Only a tie needs the exact digits (writing the bound out and reading it back costs
    // more than the rest of the field).
    let rounded = raw.parse::<f64>().ok().filter(|f| f.is_finite());
    let compare = |bound: &f64| match rounded.and_then(|r| r.partial_cmp(bound)) {
        Some(order) if order.is_ne() => order,
        _ => value.compare(&Decimal::parse(&bound.to_string()).expect("a finite spec bound")),
    };
    let message = match (range.start_bound(), range.end_bound()) {
        (Bound::Included(min), _) if compare(min) == Less => {
            format!("must be at least {min}, got {raw}")
        }
        (Bound::Excluded(min), _) if compare(min) != Greater => {
            format!("must be greater than {min}, got {raw}")
        }
        (_, Bound::Included(max)) if compare(max) == Greater => {
            format!("must be at most {max}, got {raw}")
        }
        (_, Bound::Excluded(max)) if compare(max) != Less => {
            format!("must be less than {max}, got {raw}")
        }
        _ => return Ok(()),
    };
    Err(ParseError::new(path, message))
}

pub fn date(value: &Value, path: &str) -> Result<NaiveDate> {
    let text = value
        .as_str()
        .ok_or_else(|| type_error(path, "a date string", value))?;
    crate::calendar::date(text)
        .ok_or_else(|| ParseError::new(path, format!("{text:?} is not a date (YYYY-MM-DD)")))
}

/// A partial date or date-time (`2013`, `2013-05`, `2013-05-17`,
/// `2013-05-17T10:30[:15[.5]][Z|±hh:mm]`) and the instants it covers.
fn partial_interval<'a>(
    value: &'a Value,
    path: &str,
) -> Result<(&'a str, crate::partial::Interval)> {
    let text = value
        .as_str()
        .ok_or_else(|| type_error(path, "a date or date-time string", value))?;
    let interval = crate::partial::interval(text.trim()).ok_or_else(|| {
        ParseError::new(
            path,
            format!(
                "{} is not a date or date-time (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss[.f]][Z|±hh:mm])",
                shown(value)
            ),
        )
    })?;
    Ok((text.trim(), interval))
}

/// A `partial_timestamp` as it was sent (checked, surrounding blanks removed).
pub fn partial_timestamp(value: &Value, path: &str) -> Result<String> {
    partial_interval(value, path).map(|(text, _)| text.to_owned())
}

/// The first instant a `partial_timestamp` covers (`2013` → 2013-01-01T00:00:00Z).
pub fn partial_timestamp_start(value: &Value, path: &str) -> Result<DateTime<Utc>> {
    partial_interval(value, path).map(|(_, interval)| interval.start)
}

/// The first instant after a `partial_timestamp` (`2013` → 2014-01-01T00:00:00Z).
pub fn partial_timestamp_end(value: &Value, path: &str) -> Result<DateTime<Utc>> {
    partial_interval(value, path).map(|(_, interval)| interval.end)
}

pub fn time(value: &Value, path: &str) -> Result<NaiveTime> {
    let text = value
        .as_str()
        .ok_or_else(|| type_error(path, "a time string", value))?;
    crate::calendar::time(text)
        .ok_or_else(|| ParseError::new(path, format!("{text:?} is not a time (HH:MM:SS)")))
}

/// A format a timestamp or date may be written in (the spec's `format:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFormat {
    /// `2019-05-15T15:20:41Z`; `2019-05-15` for a date.
    Rfc3339,
    /// A JSON number of seconds since 1970-01-01 UTC (fractions allowed).
    UnixSeconds,
    /// A JSON number of milliseconds since 1970-01-01 UTC.
    UnixMillis,
    /// A chrono strftime pattern; without an offset in it, the time is UTC.
    Pattern(&'static str),
}

impl std::fmt::Display for TimeFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rfc3339 => f.write_str("rfc3339"),
            Self::UnixSeconds => f.write_str("unix_seconds"),
            Self::UnixMillis => f.write_str("unix_millis"),
            Self::Pattern(pattern) => write!(f, "{pattern:?}"),
        }
    }
}

/// A number of `unit`s per second since the epoch as a timestamp, exactly for integers.
fn from_unix(value: &Value, per_second: i64) -> Option<DateTime<Utc>> {
    let Value::Number(number) = value else {
        return None;
    };
    if let Some(whole) = number.as_i64() {
        let seconds = whole.div_euclid(per_second);
        let nanos = whole.rem_euclid(per_second) * (1_000_000_000 / per_second);
        return DateTime::from_timestamp(seconds, u32::try_from(nanos).ok()?);
    }
    let fractional = number.as_f64()? / per_second as f64;
    if !fractional.is_finite() || fractional.abs() > 1e12 {
        return None;
    }
    let seconds = fractional.floor();
    let nanos = ((fractional - seconds) * 1e9).round().min(999_999_999.0);
    DateTime::from_timestamp(seconds as i64, nanos as u32)
}

fn timestamp_as_one(value: &Value, format: TimeFormat) -> Option<DateTime<Utc>> {
    match format {
        TimeFormat::UnixSeconds => from_unix(value, 1),
        TimeFormat::UnixMillis => from_unix(value, 1000),
        TimeFormat::Rfc3339 => DateTime::parse_from_rfc3339(value.as_str()?)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        TimeFormat::Pattern(pattern) => {
            let text = value.as_str()?;
            DateTime::parse_from_str(text, pattern)
                .map(|t| t.with_timezone(&Utc))
                .or_else(|_| {
                    chrono::NaiveDateTime::parse_from_str(text, pattern).map(|t| t.and_utc())
                })
                .ok()
        }
    }
}

fn formats_list(formats: &[TimeFormat]) -> String {
    let names: Vec<String> = formats.iter().map(ToString::to_string).collect();
    names.join(", ")
}

/// A value as it was sent, for error messages: strings quoted, others as JSON.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// A timestamp in the first of `formats` that reads it.
pub fn timestamp_as(value: &Value, path: &str, formats: &[TimeFormat]) -> Result<DateTime<Utc>> {
    formats
        .iter()
        .find_map(|format| timestamp_as_one(value, *format))
        .ok_or_else(|| {
            let message = match value {
                Value::String(_) | Value::Number(_) => format!(
                    "{} is not a timestamp in the accepted formats ({})",
                    shown(value),
                    formats_list(formats)
                ),
                other => {
                    return type_error(
                        path,
                        &format!("a timestamp ({})", formats_list(formats)),
                        other,
                    );
                }
            };
            ParseError::new(path, message)
        })
}

/// A date in the first of `formats` (`Rfc3339` or patterns) that reads it.
pub fn date_as(value: &Value, path: &str, formats: &[TimeFormat]) -> Result<NaiveDate> {
    let text = value.as_str().ok_or_else(|| {
        type_error(
            path,
            &format!("a date string ({})", formats_list(formats)),
            value,
        )
    })?;
    formats
        .iter()
        .find_map(|format| match format {
            TimeFormat::Rfc3339 => crate::calendar::date(text),
            TimeFormat::Pattern(pattern) => NaiveDate::parse_from_str(text, pattern).ok(),
            TimeFormat::UnixSeconds | TimeFormat::UnixMillis => None,
        })
        .ok_or_else(|| {
            ParseError::new(
                path,
                format!(
                    "{text:?} is not a date in the accepted formats ({})",
                    formats_list(formats)
                ),
            )
        })
}

pub fn timestamp(value: &Value, path: &str) -> Result<DateTime<Utc>> {
    let text = value
        .as_str()
        .ok_or_else(|| type_error(path, "a timestamp string", value))?;
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ParseError::new(path, format!("{text:?} is not an RFC 3339 timestamp")))
}

pub fn uuid(value: &Value, path: &str) -> Result<uuid::Uuid> {
    let text = value
        .as_str()
        .ok_or_else(|| type_error(path, "a UUID string", value))?;
    uuid::Uuid::parse_str(text)
        .map_err(|_| ParseError::new(path, format!("{text:?} is not a UUID")))
}

/// Any JSON value, kept as is.
pub fn json(value: &Value, _path: &str) -> Result<Value<'static>> {
    Ok(value.to_static())
}

/// An array column's value: each element converted by `convert`, errors naming the
/// element (`/labels/2: expected a string, got null`).
pub fn array_of<T>(
    value: &Value,
    path: &str,
    convert: impl Fn(&Value, &str) -> Result<T>,
) -> Result<Vec<T>> {
    let Value::Array(items) = value else {
        return Err(type_error(path, "an array", value));
    };
    (items.iter().enumerate())
        .map(|(index, item)| convert(item, "").map_err(|e| under(path, &[&index.to_string()], e)))
        .collect()
}

/// A child entity's rows at `value` (found at `path`), each with its own path: one per
/// element of an array, one for an object, none when absent or null.
pub fn rows<'a, 'v>(
    value: Option<&'a Value<'v>>,
    path: &str,
) -> Result<Vec<(&'a Value<'v>, String)>> {
    match value {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items
            .iter()
            .enumerate()
            .map(|(index, item)| (item, format!("{path}/{index}")))
            .collect()),
        Some(object @ Value::Object(_)) => Ok(vec![(object, path.to_owned())]),
        Some(other) => Err(type_error(path, "an array or an object", other)),
    }
}

/// Records carried in a root entity's body (`fan_out` in the spec): the elements of an
/// array, each holding a record of a root entity that its own discriminator names.
#[derive(Debug, Clone, Copy)]
pub struct FanOut {
    /// The array, below the entity's body.
    pub array: &'static [&'static str],
    /// The record, below each element; empty: the element itself.
    pub record: &'static [&'static str],
    /// The fields of a record naming its route; the first present wins.
    pub discriminators: &'static [&'static [&'static str]],
    /// Whether an element that names no route the worker takes (or has no record) is
    /// skipped; else the message is refused, naming the element.
    pub ignore_unrouted: bool,
    /// The routes the worker takes, for error messages.
    pub routes: &'static str,
}

impl FanOut {
    /// The records of `body` (found at `path` in the message), in array order, each with
    /// what `route` gives for the route it names, and its path in the message.
    pub fn records<'v, R>(
        &self,
        body: &'v Value<'v>,
        path: &str,
        route: impl Fn(&str) -> Option<R>,
    ) -> Result<Vec<(R, &'v Value<'v>, String)>> {
        let at = join(path, self.array);
        let elements = rows(lookup(body, self.array), &at)?;
        let mut records = Vec::with_capacity(elements.len());
        for (element, element_path) in elements {
            match self.route(element, &element_path, &route) {
                Ok(record) => records.push(record),
                Err(_) if self.ignore_unrouted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(records)
    }

    /// The record of one element and what `route` gives for its route; the error says
    /// why it has none.
    fn route<'v, R>(
        &self,
        element: &'v Value<'v>,
        element_path: &str,
        route: &impl Fn(&str) -> Option<R>,
    ) -> Result<(R, &'v Value<'v>, String)> {
        let path = join(element_path, self.record);
        let record = match lookup(element, self.record) {
            Some(record @ Value::Object(_)) => record,
            Some(other) => return Err(type_error(&path, "a record (an object)", other)),
            None => {
                return Err(ParseError::new(
                    element_path,
                    format!(
                        "has no record at {}: no entity to route it to",
                        join("", self.record)
                    ),
                ));
            }
        };
        let named = (self.discriminators.iter())
            .find_map(|tokens| lookup(record, tokens).map(|value| (tokens, value)));
        let Some((tokens, value)) = named else {
            let first = self.discriminators.first().copied().unwrap_or_default();
            return Err(ParseError::new(
                join(&path, first),
                format!("names no entity: expected one of {}", self.routes),
            ));
        };
        let at = join(&path, tokens);
        let name = value.as_str().ok_or_else(|| {
            type_error(
                &at,
                &format!("the entity's route as a string, one of {}", self.routes),
                value,
            )
        })?;
        let routed = route(name).ok_or_else(|| {
            ParseError::new(
                &at,
                format!(
                    "no entity takes {name:?} records; this worker takes {}",
                    self.routes
                ),
            )
        })?;
        Ok((routed, record, path))
    }
}

/// A child row's position in its array (`source: $index`; 0 for the row of an object),
/// converted by `convert` like a JSON number: an integer of the column's width, within the
/// spec's `min` and `max`. Errors name the row's `path` and say it is the position.
pub fn position<T>(
    index: usize,
    path: &str,
    convert: impl FnOnce(&Value, &str) -> Result<T>,
) -> Result<T> {
    convert(&Value::from(index), "").map_err(|err| ParseError {
        path: path.to_owned(),
        message: format!("$index {}", err.message),
        ..err
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::json;

    #[test]
    fn integers_check_type_range_and_width() {
        assert_eq!(integer_in::<i64>(&json!(5), "/k", 1..), Ok(5));
        assert_eq!(
            integer_in::<i64>(&json!(0), "/k", 1..)
                .unwrap_err()
                .to_string(),
            "/k: must be at least 1, got 0"
        );
        assert_eq!(
            integer_in::<i64>(&json!("5"), "/k", 1..)
                .unwrap_err()
                .message,
            "expected an integer, got a string"
        );
        assert!(
            integer::<i16>(&json!(70000), "/k")
                .unwrap_err()
                .message
                .contains("does not fit")
        );
        // The range is checked before the width.
        assert_eq!(
            integer_in::<i16>(&json!(70000), "/k", ..=7)
                .unwrap_err()
                .message,
            "must be at most 7, got 70000"
        );
        assert_eq!(
            integer_in::<i16>(
                &json!(5),
                "/k",
                (Bound::Excluded(i16::MAX), Bound::Unbounded)
            )
            .unwrap_err()
            .message,
            "must be greater than 32767, got 5"
        );
        assert!(integer::<i64>(&json!(1.5), "/k").is_err());
    }

    #[test]
    fn decimals_are_exact_and_canonical() {
        let d = |v: Value| decimal(&v, "/p", 15, 2);
        assert_eq!(d(json!("172799.49")).unwrap(), "172799.49");
        assert_eq!(d(json!(172799.49)).unwrap(), "172799.49");
        assert_eq!(d(json!("0012.5")).unwrap(), "12.50");
        assert_eq!(d(json!(17)).unwrap(), "17.00");
        assert_eq!(d(json!("-0.00")).unwrap(), "0.00");
        assert_eq!(decimal(&json!("42"), "/p", 5, 0).unwrap(), "42");
        assert!(
            d(json!("1.005"))
                .unwrap_err()
                .message
                .contains("more than 2 digits after")
        );
        assert!(
            d(json!("12345678901234.5"))
                .unwrap_err()
                .message
                .contains("before the point")
        );
        // Exponents are fine where the value fits; errors echo the value as it was sent.
        assert_eq!(d(json!("1e5")).unwrap(), "100000.00");
        let sent =
            crate::json::from_str(r#"[1E-22, 66.899999999999991, 0.1234567890123456789]"#).unwrap();
        assert_eq!(
            d(sent[0].clone()).unwrap_err().message,
            "1E-22 has more than 2 digits after the point"
        );
        assert_eq!(
            decimal(&sent[1], "/p", 17, 15).unwrap(),
            "66.899999999999991"
        );
        assert_eq!(numeric(&sent[2], "/p").unwrap(), "0.1234567890123456789");
        assert_eq!(numeric(&json!("1.00"), "/p").unwrap(), "1.00");
        assert_eq!(
            numeric_in(&json!("0.10000000000000000001"), "/p", ..=0.1)
                .unwrap_err()
                .message,
            "must be at most 0.1, got 0.10000000000000000001"
        );
        assert!(d(json!("abc")).is_err());
        assert!(d(json!(".")).is_err());
        assert_eq!(
            decimal_in(&json!("-1"), "/p", 15, 2, 0.0..)
                .unwrap_err()
                .message,
            "must be at least 0, got -1"
        );
        assert_eq!(
            decimal_in(&json!("0.5"), "/p", 15, 2, 0.0..=1.0).unwrap(),
            "0.50"
        );
    }

    #[test]
    fn decimal_bounds_compare_as_the_exact_digits_do() {
        // The f64 shortcut must agree with comparing exact digits, near bounds above all.
        let bounds = [0.0, 0.1, -0.1, 1.0, 0.3, 99.99, 1e-7, 123_456.789, -5.5];
        let values = [
            "0",
            "-0",
            "0.1",
            "0.10",
            "0.10000000000000000001",
            "0.09999999999999999999",
            "0.1000000000000000055511151231257827",
            "-0.1",
            "-0.10000000000000000001",
            "1",
            "1.0000000000000000000001",
            "0.99999999999999999999",
            "0.3",
            "0.30000000000000004",
            "0.29999999999999998",
            "99.99",
            "99.990000000000000001",
            "1E-7",
            "1.00000000000000001E-7",
            "123456.789",
            "123456.78900000000001",
            "-5.5",
            "-5.50000000000000000001",
            "1E+400",
            "-1E+400",
            "1E-400",
        ];
        for raw in values {
            let exact = Decimal::parse(raw).unwrap();
            for bound in bounds {
                let expected = exact.compare(&Decimal::parse(&bound.to_string()).unwrap());
                let at_least = numeric_in(&json!(raw), "/p", bound..).is_ok();
                let at_most = numeric_in(&json!(raw), "/p", ..=bound).is_ok();
                let above = numeric_in(
                    &json!(raw),
                    "/p",
                    (Bound::Excluded(bound), Bound::Unbounded),
                )
                .is_ok();
                let below = numeric_in(&json!(raw), "/p", ..bound).is_ok();
                assert_eq!(
                    (at_least, at_most, above, below),
                    (
                        expected.is_ge(),
                        expected.is_le(),
                        expected.is_gt(),
                        expected.is_lt()
                    ),
                    "{raw} against {bound}"
                );
            }
        }
    }

    #[test]
    fn text_rules_name_the_path() {
        static PATTERN: LazyLock<regex::Regex> =
            LazyLock::new(|| regex::Regex::new("^Clerk#[0-9]{9}$").unwrap());
        let rules = TextRules {
            max_length: Some(15),
            pattern: Some(&PATTERN),
            ..Default::default()
        };
        assert_eq!(
            text_with(&json!("Clerk#000000951"), "/c", rules).unwrap(),
            "Clerk#000000951"
        );
        assert!(
            text_with(&json!("Clerk#1"), "/c", rules)
                .unwrap_err()
                .message
                .contains("does not match")
        );
        let allowed = TextRules {
            allowed: &["O", "F"],
            ..Default::default()
        };
        assert_eq!(
            text_with(&json!("X"), "/s", allowed)
                .unwrap_err()
                .to_string(),
            "/s: \"X\" is not one of O, F"
        );
        assert!(
            text(&json!("a\u{0}b"), "/s")
                .unwrap_err()
                .message
                .contains("NUL")
        );
        assert!(
            text_with(
                &json!("ééé"),
                "/s",
                TextRules {
                    max_length: Some(3),
                    ..Default::default()
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn positions_are_integers_of_the_column() {
        assert_eq!(position(3, "/items/3", integer::<i16>), Ok(3));
        let err = position(70000, "/items/70000", integer::<i16>).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/items/70000: $index 70000 does not fit the column's integer type"
        );
        let err = position(8, "/items/8", |v, at| integer_in::<i32>(v, at, ..=7)).unwrap_err();
        assert_eq!(err.to_string(), "/items/8: $index must be at most 7, got 8");
    }

    #[test]
    fn lookups_follow_pointers_and_treat_null_as_absent() {
        let body = json!({"a": {"b": [10, {"c": null}]}, "x/y": 1});
        assert_eq!(lookup(&body, &["a", "b", "0"]), Some(&json!(10)));
        assert_eq!(lookup(&body, &["a", "b", "1", "c"]), None);
        assert_eq!(lookup(&body, &["x/y"]), Some(&json!(1)));
        // Array indexes as RFC 6901 writes them, and nothing else.
        assert_eq!(lookup(&body, &["a", "b", "00"]), None);
        assert_eq!(lookup(&body, &["a", "b", "01"]), None);
        assert_eq!(lookup(&body, &["a", "b", "+0"]), None);
        assert_eq!(lookup(&body, &["a", "b", "-"]), None);
        assert_eq!(lookup(&body, &["a", "b", ""]), None);
        assert_eq!(join("/lineitems/0", &["x/y"]), "/lineitems/0/x~1y");
        assert_eq!(required(None, "/a").unwrap_err().message, "is required");
    }

    #[test]
    fn fields_name_their_full_path_only_on_error() {
        let body = json!({"a": {"n": 5, "s": "x"}});
        let n: i64 = field(&body, "/items/2", &["a", "n"], integer).unwrap();
        assert_eq!(n, 5);
        let err = field(&body, "/items/2", &["a", "s"], integer::<i64>).unwrap_err();
        assert_eq!(err.path, "/items/2/a/s");
        assert_eq!(
            field(&body, "", &["b"], boolean).unwrap_err().to_string(),
            "/b: is required"
        );
        assert_eq!(optional_field(&body, "", &["b"], boolean), Ok(None));
        assert_eq!(field_or(&body, "", &["b"], &json!(true), boolean), Ok(true));
    }

    #[test]
    fn floats_check_their_range_before_narrowing() {
        assert_eq!(float_in(&json!(0.5), "/f", 0.0..=1.0), Ok(0.5));
        assert_eq!(
            float_in(&json!(1.5), "/f", ..=1.0).unwrap_err().message,
            "must be at most 1, got 1.5"
        );
        assert!(float32(&json!(1e300), "/f").is_err());
        assert!(
            float32_in(&json!(1e300), "/f", ..=1.0)
                .unwrap_err()
                .message
                .starts_with("must be at most 1, got 1000")
        );
    }

    #[test]
    fn dates_times_and_ids() {
        assert!(date(&json!("1996-01-02"), "/d").is_ok());
        assert!(date(&json!("1996-13-02"), "/d").is_err());
        assert!(time(&json!("12:30:00.5"), "/t").is_ok());
        assert!(timestamp(&json!("2026-11-22T13:30:00Z"), "/t").is_ok());
        assert!(timestamp(&json!("2026-11-22 13:30"), "/t").is_err());
        assert!(uuid(&json!("not"), "/u").is_err());
    }
}
