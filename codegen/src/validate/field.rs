//! The rules of one field: its type, the keys that apply to that type, its bounds,
//! pattern, default and source.

use serde_saphyr::Spanned;

use super::MAX_VARCHAR;
use super::names::{column_problem, identifier_problem, parse_pointer};
use super::problem::{FieldRule, Naming, Rule};
use crate::diagnostics::{Problem, did_you_mean};
use crate::model::{
    Capture, Checks, Field, FieldType, Metadata, Pointer, Selection, Source, TimeFormat,
};
use crate::spec::{CaptureSpec, FieldSpec, SelectSpec, SourceSpec};

/// Checks a field and builds it; `None` when it cannot be built (its problems are in
/// `problems`).
pub fn field(spec: &FieldSpec, problems: &mut Vec<Problem>) -> Option<Field> {
    let name = identifier_problem(&spec.name, "field name").or_else(|| reserved_name(spec));
    let name_ok = name.is_none();
    problems.extend(name);
    let (type_name, array) = match spec.field_type.value.strip_suffix("[]") {
        Some(element) => (element, true),
        None => (spec.field_type.value.as_str(), false),
    };
    let field_type = field_type(spec, type_name, array, problems)?;
    problems.extend(max_length(spec, field_type));
    problems.extend(misplaced_keys(spec, field_type));
    problems.extend(bounds(spec));
    problems.extend(pattern(spec, field_type));
    problems.extend(allowed(spec, field_type));
    let source = source(spec).map_err(|p| problems.push(p)).ok();
    match &source {
        Some(Source::Metadata { item }) => {
            problems.extend(metadata(spec, *item, field_type, array));
        }
        Some(Source::Header { .. }) => problems.extend(header(spec, field_type, array)),
        Some(Source::Index) => problems.extend(index(spec, field_type, array)),
        Some(Source::Body(_) | Source::Select(_)) | None => {}
    }
    let capture = spec
        .capture
        .as_ref()
        .and_then(|written| capture(spec, written, source.as_ref(), field_type, array, problems));
    problems.extend(default(spec, field_type, array));
    let formats = formats(spec, field_type, problems);
    let column = match &spec.column {
        None => spec.name.value.clone(),
        Some(column) => {
            problems.extend(column_problem(column));
            column.value.clone()
        }
    };
    if let Some(old) = &spec.renamed_from {
        problems.extend(column_problem(old));
    }
    let source = source.filter(|_| name_ok)?;
    Some(Field {
        name: spec.name.value.clone(),
        column,
        renamed_from: spec.renamed_from.as_ref().map(|r| r.value.clone()),
        field_type,
        array,
        nullable: spec.nullable.as_ref().is_some_and(|n| n.value),
        source,
        capture,
        formats,
        default: spec.default.as_ref().map(|d| d.value.clone()),
        checks: checks(spec),
        description: spec.description.clone(),
        from_parent: false,
    })
}

/// Names starting with `nomnom_` are nomnom's: a root table's guard columns
/// (`nomnom_seq`, `nomnom_version`) are named so.
fn reserved_name(spec: &FieldSpec) -> Option<Problem> {
    spec.name.value.starts_with("nomnom_").then(|| {
        Naming::NomnomFieldPrefix {
            field: spec.name.value.clone(),
        }
        .at(&spec.name)
    })
}

fn checks(spec: &FieldSpec) -> Checks {
    let value = |v: &Option<Spanned<u32>>| v.as_ref().map(|v| v.value);
    Checks {
        min: spec.min.as_ref().map(|m| m.value),
        max: spec.max.as_ref().map(|m| m.value),
        min_length: value(&spec.min_length),
        max_length: value(&spec.max_length),
        pattern: spec.pattern.as_ref().map(|p| p.value.clone()),
        allowed: spec.allowed.iter().map(|a| a.value.clone()).collect(),
    }
}

/// The field's type (of each element, for an array), from its name in the spec.
fn field_type(
    spec: &FieldSpec,
    type_name: &str,
    array: bool,
    problems: &mut Vec<Problem>,
) -> Option<FieldType> {
    if array && (matches!(type_name, "json" | "partial_timestamp") || type_name.ends_with("[]")) {
        let rule = FieldRule::UnsupportedArray {
            type_name: spec.field_type.value.clone(),
        };
        problems.push(rule.at(&spec.field_type));
        return None;
    }
    Some(match type_name {
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
        "decimal" => decimal(spec, problems),
        "date" => FieldType::Date,
        "time" => FieldType::Time,
        "timestamptz" | "timestamp" => FieldType::Timestamptz,
        "partial_timestamp" => FieldType::PartialTimestamp,
        "uuid" => FieldType::Uuid,
        "json" => FieldType::Json,
        _ => {
            let rule = FieldRule::UnknownType {
                name: spec.field_type.value.clone(),
                suggestion: did_you_mean(type_name, FieldType::NAMES.iter().copied()).map(|name| {
                    if array {
                        format!("{name}[]")
                    } else {
                        name.to_owned()
                    }
                }),
            };
            problems.push(rule.at(&spec.field_type));
            return None;
        }
    })
}

/// A decimal takes a precision and a scale that PostgreSQL accepts, or neither (an
/// unconstrained `NUMERIC`).
fn decimal(spec: &FieldSpec, problems: &mut Vec<Problem>) -> FieldType {
    let (precision, scale) = match (&spec.precision, &spec.scale) {
        (Some(p), Some(s)) => (p.value, s.value),
        (None, None) => return FieldType::Numeric,
        _ => {
            let rule = FieldRule::MissingPrecision {
                field: spec.name.value.clone(),
            };
            problems.push(rule.at(&spec.field_type));
            (1, 0)
        }
    };
    if !(1..=1000).contains(&precision) || scale > precision {
        let rule = FieldRule::InvalidPrecision { precision, scale };
        problems.push(match &spec.precision {
            Some(at) => rule.at(at),
            None => rule.at(&spec.field_type),
        });
    }
    FieldType::Decimal { precision, scale }
}

/// `max_length` of a string is its column's size, `VARCHAR(n)`, which PostgreSQL takes
/// only for 1 <= n <= 10485760: other sizes made a migration it refuses (found by
/// tests/fuzz.rs).
fn max_length(spec: &FieldSpec, field_type: FieldType) -> Option<Problem> {
    let max = spec.max_length.as_ref()?;
    (matches!(field_type, FieldType::String { .. }) && !(1..=MAX_VARCHAR).contains(&max.value))
        .then(|| {
            FieldRule::InvalidLength {
                max_length: max.value,
            }
            .at(max)
        })
}

/// Keys the field's type has no use for.
fn misplaced_keys(spec: &FieldSpec, field_type: FieldType) -> Vec<Problem> {
    let type_name = &spec.field_type.value;
    let decimal = matches!(field_type, FieldType::Decimal { .. } | FieldType::Numeric);
    let textual = field_type.is_textual();
    let mut problems = Vec::new();
    for (key, value, applies, types) in [
        ("precision", &spec.precision, decimal, "decimal"),
        ("scale", &spec.scale, decimal, "decimal"),
        ("max_length", &spec.max_length, textual, "string and text"),
        ("min_length", &spec.min_length, textual, "string and text"),
    ] {
        if let Some(value) = value.as_ref().filter(|_| !applies) {
            let rule = FieldRule::NotForType {
                key,
                type_name: type_name.clone(),
                types,
            };
            problems.push(rule.at(value));
        }
    }
    for (key, value) in [("min", &spec.min), ("max", &spec.max)] {
        if let Some(value) = value.as_ref().filter(|_| !field_type.is_numeric()) {
            let rule = FieldRule::BoundNotForType {
                key,
                type_name: type_name.clone(),
            };
            problems.push(rule.at(value));
        }
    }
    problems
}

/// `.nan` and `.inf` are YAML numbers, but the bounds become Rust float literals
/// (`Some(NaN)` did not compile) and a NaN bound compares false with everything (found
/// by tests/fuzz.rs). And `min` above `max` lets no value pass.
fn bounds(spec: &FieldSpec) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (key, value) in [("min", &spec.min), ("max", &spec.max)] {
        if let Some(v) = value.as_ref().filter(|v| !v.value.is_finite()) {
            problems.push(
                FieldRule::NonFiniteBound {
                    key,
                    value: v.value,
                }
                .at(v),
            );
        }
    }
    if let (Some(min), Some(max)) = (&spec.min, &spec.max)
        && min.value > max.value
    {
        let rule = FieldRule::EmptyRange {
            min: min.value,
            max: max.value,
        };
        problems.push(rule.at(min));
    }
    problems
}

/// A pattern is for text, and must compile with the crate and limits the generated
/// worker uses: a pattern too big to compile would panic the worker on its first
/// message instead of failing here.
fn pattern(spec: &FieldSpec, field_type: FieldType) -> Option<Problem> {
    let pattern = spec.pattern.as_ref()?;
    if !field_type.is_textual() {
        return Some(not_for_type("pattern", spec, pattern));
    }
    let error = regex::Regex::new(&pattern.value).err()?;
    let rule = FieldRule::InvalidPattern {
        pattern: pattern.value.clone(),
        reason: error
            .to_string()
            .lines()
            .last()
            .unwrap_or("check the syntax")
            .to_owned(),
    };
    Some(rule.at(pattern))
}

/// `enum` (allowed values) is for text.
fn allowed(spec: &FieldSpec, field_type: FieldType) -> Option<Problem> {
    let first = spec.allowed.first()?;
    (!field_type.is_textual()).then(|| not_for_type("enum", spec, first))
}

fn not_for_type<T>(key: &'static str, spec: &FieldSpec, at: &Spanned<T>) -> Problem {
    FieldRule::NotForType {
        key,
        type_name: spec.field_type.value.clone(),
        types: "string and text",
    }
    .at(at)
}

/// Where the value is: `source` (a JSON pointer into the body, `""` for all of it,
/// `$metadata`, or an element picked by its members' values), or the body's member of the
/// field's name.
fn source(spec: &FieldSpec) -> Result<Source, Problem> {
    let written = spec.source.as_ref().map(|s| match &s.value {
        SourceSpec::Text(text) => Ok(Spanned {
            value: text.clone(),
            referenced: s.referenced,
            defined: s.defined,
        }),
        SourceSpec::Select(select) => Err((s, select)),
    });
    let text = match written {
        Some(Err((at, select))) => return selection(at, select).map(Source::Select),
        Some(Ok(text)) => Some(text),
        None => None,
    };
    match &text {
        Some(s) if s.value.is_empty() => Ok(Source::Body(Pointer {
            text: String::new(),
            tokens: Vec::new(),
        })),
        Some(s) if s.value.starts_with("$header.") => {
            let name = &s.value["$header.".len()..];
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if name.is_empty() || !name.bytes().all(token) {
                return Err(FieldRule::InvalidHeaderName {
                    source: s.value.clone(),
                }
                .at(s));
            }
            Ok(Source::Header {
                name: name.to_ascii_lowercase(),
            })
        }
        Some(s) if s.value == "$index" => Ok(Source::Index),
        Some(s) if s.value.starts_with('$') => {
            let name = &s.value[1..];
            match Metadata::ALL.iter().find(|m| m.name() == name) {
                Some(item) => Ok(Source::Metadata { item: *item }),
                None => Err(FieldRule::UnknownMetadata {
                    source: s.value.clone(),
                    suggestion: did_you_mean(
                        name,
                        Metadata::ALL.iter().map(|m| m.name()).chain(["index"]),
                    )
                    .map(str::to_owned),
                }
                .at(s)),
            }
        }
        Some(s) => match bracket_selection(s) {
            Some(problem) => Err(problem),
            None => parse_pointer(s).map(Source::Body),
        },
        None => Ok(Source::Body(Pointer {
            text: format!("/{}", spec.name.value.replace('~', "~0").replace('/', "~1")),
            tokens: vec![spec.name.value.clone()],
        })),
    }
}

/// `source: { array, where, then }`: `array` a pointer to the array, `where` at least
/// one member, each named, `then` a pointer inside the element (or `""`).
fn selection<T>(at: &Spanned<T>, select: &SelectSpec) -> Result<Selection, Problem> {
    let Some(array) = &select.array else {
        return Err(FieldRule::SelectionKey { key: "array" }.at(at));
    };
    let array = parse_pointer(array)?;
    let Some(matching) = &select.matching else {
        return Err(FieldRule::SelectionKey { key: "where" }.at(at));
    };
    if matching.value.is_empty() {
        return Err(FieldRule::SelectionNoMember.at(matching));
    }
    if matching.value.keys().any(String::is_empty) {
        return Err(FieldRule::SelectionEmptyMember.at(matching));
    }
    let then = match &select.then {
        None => Pointer {
            text: String::new(),
            tokens: Vec::new(),
        },
        Some(then) if then.value.is_empty() => Pointer {
            text: String::new(),
            tokens: Vec::new(),
        },
        Some(then) => parse_pointer(then)?,
    };
    Ok(Selection {
        array,
        matching: (matching.value.iter())
            .map(|(member, value)| (member.clone(), value.value.clone()))
            .collect(),
        then,
    })
}

/// A pointer with a bracketed condition (`/code/coding[system=http://loinc.org]/code`)
/// is a pointer to members nobody names so: most likely a selection written as other
/// tools write it. Refused, with the mapping that says it.
fn bracket_selection(text: &Spanned<String>) -> Option<Problem> {
    static BRACKETS: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"^(/[^\[\]]*)\[([^=\[\]]*)=([^\[\]]*)\](.*)$").expect("valid")
    });
    let raw = &text.value;
    let suggestion = match BRACKETS.captures(raw) {
        Some(c) if !c[2].is_empty() && (c[4].is_empty() || c[4].starts_with('/')) => {
            let then = if c[4].is_empty() {
                String::new()
            } else {
                format!(", then: {}", &c[4])
            };
            Some(format!(
                "{{ array: {}, where: {{ {}: {:?} }}{then} }}",
                &c[1], &c[2], &c[3]
            ))
        }
        _ if raw.find('[').is_some_and(|at| raw[at..].contains(']')) => None,
        _ => return None,
    };
    Some(
        FieldRule::BracketSelection {
            source: raw.clone(),
            suggestion,
        }
        .at(text),
    )
}

/// `capture: { pattern, group }` of a field read from a string (the body or metadata):
/// the pattern compiles as the worker compiles it, the group exists, and the field holds
/// one value the captured text can be read as.
fn capture(
    spec: &FieldSpec,
    written: &Spanned<CaptureSpec>,
    source: Option<&Source>,
    field_type: FieldType,
    array: bool,
    problems: &mut Vec<Problem>,
) -> Option<Capture> {
    if source == Some(&Source::Index) {
        problems.push(FieldRule::CaptureSource.at(written));
        return None;
    }
    if array || matches!(field_type, FieldType::Json) {
        let type_name = spec.field_type.value.clone();
        problems.push(FieldRule::CaptureType { type_name }.at(written));
        return None;
    }
    let Some(pattern) = &written.value.pattern else {
        problems.push(FieldRule::CapturePattern.at(written));
        return None;
    };
    let regex = match regex::Regex::new(&pattern.value) {
        Ok(regex) => regex,
        Err(error) => {
            problems.push(invalid_pattern(&pattern.value, &error).at(pattern));
            return None;
        }
    };
    let group = written.value.group.as_ref().map_or(1, |g| g.value);
    if group as usize >= regex.captures_len() {
        let rule = FieldRule::CaptureGroup {
            pattern: pattern.value.clone(),
            group,
            groups: regex.captures_len() - 1,
        };
        let at = match &written.value.group {
            Some(at) => rule.at(at),
            None => rule.at(pattern),
        };
        problems.push(at);
        return None;
    }
    Some(Capture {
        pattern: pattern.value.clone(),
        group,
    })
}

/// The problem of a pattern the regex crate refuses: its last line says why.
fn invalid_pattern(pattern: &str, error: &regex::Error) -> FieldRule {
    let reason = match error {
        regex::Error::CompiledTooBig(limit) => format!(
            "the compiled pattern exceeds the regex crate's size limit ({limit} bytes): use smaller repetition counts"
        ),
        _ => (error.to_string().lines().last())
            .unwrap_or("check the syntax")
            .to_owned(),
    };
    FieldRule::InvalidPattern {
        pattern: pattern.to_owned(),
        reason,
    }
}

/// Metadata goes into a field of a type that holds it, and one that some messages lack
/// into a field that can be empty.
fn metadata(
    spec: &FieldSpec,
    item: Metadata,
    field_type: FieldType,
    array: bool,
) -> Option<Problem> {
    let at = spec.source.as_ref()?;
    let source = format!("${}", item.name());
    if !item.fits(field_type, array) {
        let types = match item {
            Metadata::MessageId => "uuid, string or text",
            Metadata::ReceivedAt => "timestamptz, string or text",
            _ => "string or text",
        };
        let type_name = spec.field_type.value.clone();
        return Some(
            FieldRule::MetadataType {
                source,
                type_name,
                types,
            }
            .at(at),
        );
    }
    let can_be_empty = spec.nullable.as_ref().is_some_and(|n| n.value) || spec.default.is_some();
    (!item.always_present() && !can_be_empty)
        .then(|| FieldRule::MetadataMaybeAbsent { source }.at(at))
}

/// A header is text that some requests lack: a `string` or `text` field, nullable or with
/// a default.
fn header(spec: &FieldSpec, field_type: FieldType, array: bool) -> Option<Problem> {
    let at = spec.source.as_ref()?;
    let source = at.value.text()?.to_owned();
    if array || !field_type.is_textual() {
        let type_name = spec.field_type.value.clone();
        let types = "string or text";
        return Some(
            FieldRule::MetadataType {
                source,
                type_name,
                types,
            }
            .at(at),
        );
    }
    let can_be_empty = spec.nullable.as_ref().is_some_and(|n| n.value) || spec.default.is_some();
    (!can_be_empty).then(|| FieldRule::MetadataMaybeAbsent { source }.at(at))
}

/// A position is a whole number: an `i16`, `i32` or `i64` field (not an array).
fn index(spec: &FieldSpec, field_type: FieldType, array: bool) -> Option<Problem> {
    let at = spec.source.as_ref()?;
    let integer = matches!(field_type, FieldType::I16 | FieldType::I32 | FieldType::I64);
    (array || !integer).then(|| {
        FieldRule::IndexType {
            type_name: spec.field_type.value.clone(),
        }
        .at(at)
    })
}

/// The formats a `timestamptz` or `date` field accepts: names, or strftime patterns that
/// chrono can parse with.
fn formats(
    spec: &FieldSpec,
    field_type: FieldType,
    problems: &mut Vec<Problem>,
) -> Vec<TimeFormat> {
    let Some(written) = &spec.format else {
        return Vec::new();
    };
    let timestamp = field_type == FieldType::Timestamptz;
    if !timestamp && field_type != FieldType::Date {
        let rule = FieldRule::NotForType {
            key: "format",
            type_name: spec.field_type.value.clone(),
            types: "timestamptz and date",
        };
        problems.push(rule.at(written));
        return Vec::new();
    }
    if written.value.0.is_empty() {
        let format = String::new();
        problems.push(FieldRule::UnknownFormat { format }.at(written));
    }
    let mut formats = Vec::new();
    for text in &written.value.0 {
        let format = match text.as_str() {
            "rfc3339" => TimeFormat::Rfc3339,
            "unix_seconds" if timestamp => TimeFormat::UnixSeconds,
            "unix_millis" if timestamp => TimeFormat::UnixMillis,
            "unix_seconds" | "unix_millis" => {
                let format = text.clone();
                problems.push(FieldRule::FormatNotForDate { format }.at(written));
                continue;
            }
            pattern if pattern.contains('%') => match time_pattern_problem(pattern, timestamp) {
                None => TimeFormat::Pattern(pattern.to_owned()),
                Some(reason) => {
                    let pattern = pattern.to_owned();
                    problems.push(FieldRule::InvalidTimePattern { pattern, reason }.at(written));
                    continue;
                }
            },
            other => {
                let format = other.to_owned();
                problems.push(FieldRule::UnknownFormat { format }.at(written));
                continue;
            }
        };
        formats.push(format);
    }
    formats
}

/// Why chrono could not parse values with `pattern`, if it could not.
fn time_pattern_problem(pattern: &str, timestamp: bool) -> Option<&'static str> {
    use chrono::format::{Fixed, Item, Numeric, StrftimeItems};
    let has = |wanted: &[Numeric]| {
        StrftimeItems::new(pattern)
            .any(|item| matches!(item, Item::Numeric(n, _) if wanted.contains(&n)))
    };
    let items: Vec<Item> = StrftimeItems::new(pattern).collect();
    if items.iter().any(|item| matches!(item, Item::Error)) {
        return Some("unknown or incomplete specifier");
    }
    let whole = items.iter().any(|item| {
        matches!(
            item,
            Item::Fixed(Fixed::RFC2822 | Fixed::RFC3339) | Item::Numeric(Numeric::Timestamp, _)
        )
    });
    if whole {
        return None;
    }
    if !has(&[Numeric::Year, Numeric::IsoYear]) && !has(&[Numeric::YearDiv100]) {
        return Some("no year (%Y)");
    }
    if !(has(&[Numeric::Ordinal]) || has(&[Numeric::Month]) && has(&[Numeric::Day])) {
        let named_month = items.iter().any(|item| {
            matches!(
                item,
                Item::Fixed(Fixed::ShortMonthName | Fixed::LongMonthName)
            )
        });
        if !(named_month && has(&[Numeric::Day])) {
            return Some("no month and day (%m %d)");
        }
    }
    if timestamp && !has(&[Numeric::Hour, Numeric::Hour12]) {
        return Some("no hour (%H)");
    }
    None
}

fn default(spec: &FieldSpec, field_type: FieldType, array: bool) -> Option<Problem> {
    let default = spec.default.as_ref()?;
    let fits = match (&default.value, array) {
        (serde_json::Value::Array(items), true) => items
            .iter()
            .all(|item| !item.is_null() && default_fits(item, field_type)),
        (serde_json::Value::Null, true) => true,
        (_, true) => false,
        (value, false) => default_fits(value, field_type),
    };
    (!fits).then(|| {
        FieldRule::InvalidDefault {
            value: default.value.to_string(),
            type_name: spec.field_type.value.clone(),
        }
        .at(default)
    })
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
        (FieldType::Decimal { .. } | FieldType::Numeric, Value::Number(_) | Value::String(_)) => {
            true
        }
        (FieldType::String { .. } | FieldType::Text, Value::String(_)) => true,
        (
            FieldType::Date
            | FieldType::Time
            | FieldType::Timestamptz
            | FieldType::PartialTimestamp
            | FieldType::Uuid,
            Value::String(_),
        ) => true,
        (FieldType::Json, _) => true,
        _ => false,
    }
}
