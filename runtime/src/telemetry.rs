//! Logging: JSON lines in production, readable text for people at a terminal; and, when
//! asked, the export of spans over OTLP ([`crate::otlp`]).

use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::otlp::Exporter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// One JSON object per line (for log collectors).
    #[default]
    Json,
    /// Human-readable text.
    Text,
}

/// Installs the global subscriber; `RUST_LOG` filters (default `info`). Logs go to
/// standard output; text is coloured only when that is a terminal, so a file or a pipe
/// gets no escape codes. With `exporter`, spans are exported too; without, no
/// OpenTelemetry layer is installed at all. Safe to call twice.
pub fn init(format: LogFormat, exporter: Option<&Exporter>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(exporter.map(Exporter::layer));
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(fmt::layer().with_ansi(std::io::stdout().is_terminal()))
            .try_init(),
    };
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = result;
}
