//! The nomnom code generator, as pipeline stages:
//! [`spec`] (YAML, unknown keys rejected) → [`validate`] → [`model`] (typed intermediate
//! form) → render (Tera templates) → write (in memory first, then atomic).
//!
//! The `nomnom` binary (`main.rs`) is a thin CLI over [`load`] and the later stages.

pub mod diagnostics;
pub mod evolve;
pub mod keys;
pub mod layout;
pub mod model;
pub mod render;
pub mod spec;
pub mod types;
pub mod validate;
pub mod view;
pub mod write;

use std::path::Path;

use miette::{Diagnostic, NamedSource};

use crate::diagnostics::{Problem, SpecProblems, did_you_mean};

/// Why a spec could not be loaded.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    #[diagnostic(code(nomnom::io), help("check the path given to --entities"))]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Problems(#[from] SpecProblems),
}

/// Reads, parses and validates a spec file.
pub fn load(path: &Path) -> Result<model::Project, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    load_str(&path.display().to_string(), &text)
}

/// Parses and validates spec text; `file` names it in diagnostics.
pub fn load_str(file: &str, text: &str) -> Result<model::Project, LoadError> {
    // Unknown keys (all of them) and every other problem, in one report.
    let mut problems = keys::unknown_keys(text).unwrap_or_default();
    match spec::parse(text) {
        Err(err) => problems.push(yaml_problem(&err, text)),
        Ok(parsed) => match validate::validate(&parsed) {
            Ok(project) if problems.is_empty() => return Ok(project),
            Ok(_) => {}
            Err(more) => problems.extend(more),
        },
    }
    // In file order, so the report reads top to bottom.
    problems.sort_by_key(|p| p.span.map_or(usize::MAX, |s| s.offset()));
    Err(LoadError::Problems(SpecProblems {
        file: file.to_owned(),
        source_code: NamedSource::new(file, text.to_owned()).with_language("yaml"),
        problems,
    }))
}

/// A YAML syntax or shape error as a problem with its location, and a "did you mean"
/// for misspelt keys.
fn yaml_problem(err: &serde_saphyr::Error, source: &str) -> Problem {
    let text = err.to_string();
    let first_line = text.lines().next().unwrap_or("invalid YAML").to_owned();
    let mut message = first_line
        .split(" at line ")
        .next()
        .unwrap_or(&first_line)
        .trim_start_matches("error: ")
        .to_owned();
    // serde-saphyr starts with "line L column C: "; the label shows the place instead.
    if message.starts_with("line ")
        && let Some((_, rest)) = message.split_once(": ")
    {
        message = rest.to_owned();
    }
    let mut problem = Problem::new(
        if message.contains("unknown field") {
            "unknown_key"
        } else {
            "invalid_yaml"
        },
        message.clone(),
    );
    if let Some(location) = err.location() {
        let span = location.span();
        let mut offset = span.byte_offset().unwrap_or(span.offset()) as usize;
        let mut len = (span.byte_len().unwrap_or(span.len()) as usize).max(1);
        // Kept inside the text: "unexpected end of input" comes one byte past its end,
        // and miette then showed the line without the label (found by tests/fuzz.rs).
        // Such a problem points at the last character instead.
        if offset + len > source.len() {
            match source.char_indices().last() {
                Some((last, c)) if offset >= source.len() => {
                    offset = last;
                    len = c.len_utf8();
                }
                _ => {
                    offset = offset.min(source.len());
                    len = source.len() - offset;
                }
            }
        }
        problem.span = Some(miette::SourceSpan::new(offset.into(), len));
        problem.label = if message.contains("unknown field") {
            "unknown key".into()
        } else {
            "here".into()
        };
    }
    if let Some((unknown, expected)) = unknown_field(&message) {
        let candidates: Vec<&str> = expected.iter().map(String::as_str).collect();
        problem.help = Some(match did_you_mean(&unknown, candidates.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("expected one of: {}", expected.join(", ")),
        });
    }
    problem
}

/// "unknown field `x`, expected one of a, b" → ("x", ["a", "b"]).
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.split("unknown field `").nth(1)?;
    let (unknown, rest) = rest.split_once('`')?;
    let list = rest
        .split_once("expected one of ")
        .or_else(|| rest.split_once("expected "))?
        .1;
    let expected = list
        .split(", ")
        .map(|s| {
            s.trim_matches(|c: char| c == '`' || c.is_whitespace())
                .to_owned()
        })
        .filter(|s| !s.is_empty())
        .collect();
    Some((unknown.to_owned(), expected))
}

/// A valid spec with `entities` entities of 11 fields each, every field type
/// represented: what the code-generation benchmarks generate.
pub fn synthetic_spec(entities: usize) -> String {
    let mut text = String::from("version: 1\nproject: big\nentities:\n");
    for i in 0..entities {
        text.push_str(&format!(
            "  - name: entity_{i:03}\n    write: upsert\n    primary_key: [id]\n    fields:\n      - {{ name: id, type: i64 }}\n"
        ));
        for (j, ty) in [
            "string",
            "text",
            "bool",
            "i32",
            "f64",
            "date",
            "timestamptz",
            "uuid",
            "json",
        ]
        .iter()
        .enumerate()
        {
            let extra = if *ty == "string" {
                ", max_length: 40"
            } else {
                ""
            };
            text.push_str(&format!(
                "      - {{ name: f_{j}, type: {ty}{extra}, nullable: true }}\n"
            ));
        }
        text.push_str("      - { name: amount, type: decimal, precision: 12, scale: 2 }\n");
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_synthetic_spec_is_valid() {
        let project = super::load_str("synthetic.yaml", &super::synthetic_spec(3)).unwrap();
        assert_eq!(project.entities.len(), 3);
    }
}
