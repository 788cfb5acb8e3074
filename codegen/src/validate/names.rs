//! Identifiers and JSON pointers: what names the spec may use, and how they are read.

use serde_saphyr::Spanned;

use super::MAX_IDENTIFIER_BYTES;
use super::problem::{Naming, Rule};
use crate::diagnostics::Problem;
use crate::model::Pointer;

/// Rust keywords (strict and reserved): not usable as field or entity names.
const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut",
    "pub", "ref", "return", "self", "static", "struct", "super", "trait", "true", "type", "unsafe",
    "use", "where", "while", "abstract", "become", "box", "do", "final", "macro", "override",
    "priv", "try", "typeof", "unsized", "virtual", "yield",
];

/// Type names the generated code defines or relies on.
pub const RESERVED_TYPE_NAMES: &[&str] = &[
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
pub fn identifier_problem(name: &Spanned<String>, what: &str) -> Option<Problem> {
    identifier_rule(&name.value, what).map(|rule| rule.at(name))
}

fn identifier_rule(text: &str, what: &str) -> Option<Naming> {
    let what = what.to_owned();
    let valid_chars = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !text.as_bytes()[0].is_ascii_digit();
    if !valid_chars {
        return Some(Naming::BadCharacters {
            what,
            text: text.to_owned(),
            suggestion: to_snake(text),
        });
    }
    // `_` alone is Rust's wildcard, not an identifier: a field named `_` gave
    // `pub _: T`, which does not parse (found by tests/fuzz.rs).
    if text == "_" {
        return Some(Naming::Wildcard { what });
    }
    if text.len() > MAX_IDENTIFIER_BYTES {
        return Some(Naming::TooLong {
            what,
            text: text.to_owned(),
        });
    }
    RUST_KEYWORDS.contains(&text).then(|| Naming::RustKeyword {
        what,
        text: text.to_owned(),
    })
}

/// Column check: like an identifier, but Rust keywords are fine (columns are only SQL
/// and Diesel's `#[sql_name]`), and `nomnom_` is nomnom's.
pub fn column_problem(column: &Spanned<String>) -> Option<Problem> {
    let rule = match identifier_rule(&column.value, "column name") {
        Some(Naming::RustKeyword { .. }) | None if column.value.starts_with("nomnom_") => {
            Some(Naming::NomnomColumnPrefix {
                column: column.value.clone(),
            })
        }
        Some(Naming::RustKeyword { .. }) | None => None,
        other => other,
    };
    rule.map(|rule| rule.at(column))
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

/// Whether a project name can name a crate: `[a-z][a-z0-9]*([_-][a-z0-9]+)*`, at most
/// 50 characters.
pub fn is_project_name(name: &str) -> bool {
    !name.is_empty()
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && name.len() <= 50
        // One separator at a time and none last: the crate's Rust name is the project's
        // with `-` → `_`, plus `_worker`, and `a--b` or `a-` gave `a__b_worker` or
        // `a__worker`, which rustc's non_snake_case lint refuses under -D warnings
        // (found by tests/fuzz.rs).
        && !name
            .as_bytes()
            .windows(2)
            .any(|w| matches!(w[0], b'_' | b'-') && matches!(w[1], b'_' | b'-'))
        && !name.ends_with(['_', '-'])
}

/// Whether a route can be sent as the API's entity hint.
pub fn is_route(route: &str) -> bool {
    !route.is_empty()
        && route.len() <= 64
        && route != "_"
        && route
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Parses an RFC 6901 JSON pointer (`/a/b~1c`) that names one value the runtime can
/// find: every token a member name or an array index. Refused: a `~` not followed by `0`
/// or `1`, an empty token (`/`, `/a//b`, `/a/`: the member named "", almost never what was
/// meant), and a `*` token (no wildcards: an array's elements are a child entity's rows).
pub fn parse_pointer(text: &Spanned<String>) -> Result<Pointer, Problem> {
    let raw = text.value.as_str();
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(Naming::NotAPointer {
            raw: raw.to_owned(),
        }
        .at(text));
    };
    let raw_tokens: Vec<&str> = rest.split('/').collect();
    let tokens = (raw_tokens.iter())
        .map(|token| unescape(token))
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| {
            Naming::PointerEscape {
                raw: raw.to_owned(),
            }
            .at(text)
        })?;
    if tokens.iter().any(String::is_empty) {
        return Err(Naming::PointerEmptyToken {
            raw: raw.to_owned(),
        }
        .at(text));
    }
    if let Some(at) = raw_tokens.iter().position(|token| *token == "*") {
        return Err(Naming::PointerWildcard {
            array: format!("/{}", raw_tokens[..at].join("/")),
            rest: raw_tokens[at + 1..]
                .iter()
                .map(|token| format!("/{token}"))
                .collect(),
            raw: raw.to_owned(),
        }
        .at(text));
    }
    Ok(Pointer {
        text: raw.to_owned(),
        tokens,
    })
}

/// One pointer token with `~0` and `~1` decoded; `None` for a `~` followed by neither.
fn unescape(token: &str) -> Option<String> {
    let mut decoded = String::new();
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        decoded.push(match c {
            '~' => match chars.next() {
                Some('0') => '~',
                Some('1') => '/',
                _ => return None,
            },
            c => c,
        });
    }
    Some(decoded)
}
