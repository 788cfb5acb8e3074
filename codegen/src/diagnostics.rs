//! Problems in a spec, reported with miette: file, line and column, a label, a help line.

use miette::{Diagnostic, NamedSource, SourceSpan};
use serde_saphyr::Spanned;

/// One problem at one place.
#[derive(Debug, Clone, thiserror::Error, Diagnostic)]
#[error("{message}")]
pub struct Problem {
    pub message: String,
    #[label("{label}")]
    pub span: Option<SourceSpan>,
    pub label: String,
    #[help]
    pub help: Option<String>,
    #[diagnostic(code)]
    pub code: String,
}

impl Problem {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            span: None,
            label: String::new(),
            help: None,
            code: format!("nomnom::{code}"),
        }
    }

    /// Points at where `value` was written.
    pub fn at<T>(mut self, value: &Spanned<T>, label: impl Into<String>) -> Self {
        self.span = span_of(value);
        self.label = label.into();
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Byte span of a spanned value, when the parser knows it.
pub fn span_of<T>(value: &Spanned<T>) -> Option<SourceSpan> {
    let span = value.referenced.span();
    if value.referenced.line() == 0 {
        return None;
    }
    let offset = span.byte_offset().unwrap_or(span.offset());
    let len = span.byte_len().unwrap_or(span.len()).max(1);
    Some(SourceSpan::new((offset as usize).into(), len as usize))
}

/// Every problem of one file.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{file} has {count} problem{plural}", count = problems.len(), plural = if problems.len() == 1 { "" } else { "s" })]
#[diagnostic(code(nomnom::invalid_spec))]
pub struct SpecProblems {
    pub file: String,
    #[source_code]
    pub source_code: NamedSource<String>,
    #[related]
    pub problems: Vec<Problem>,
}

/// Renders a diagnostic as plain text (no colours), the way tests and CI logs see it.
pub fn render_plain(diagnostic: &dyn Diagnostic) -> String {
    let mut out = String::new();
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(100);
    // Writing to a String cannot fail.
    let _ = handler.render_report(&mut out, diagnostic);
    out
}

/// Edit distance, for "did you mean" suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            current.push(
                (previous[j] + cost)
                    .min(previous[j + 1] + 1)
                    .min(current[j] + 1),
            );
        }
        previous = current;
    }
    previous[b.len()]
}

/// The closest candidate within a small distance.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}
