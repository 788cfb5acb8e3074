//! `nomnom`: validate entities specs and generate worker crates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit codes (documented in docs/spec.md).
mod exit {
    pub const INVALID_SPEC: u8 = 1;
    pub const IO: u8 = 2;
}

#[derive(Debug, Parser)]
#[command(
    name = "nomnom",
    version,
    about = "Generate nomnom worker crates from an entities spec"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a spec and print every problem in it.
    Validate {
        /// The entities YAML file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file } => match nomnom_codegen::load(&file) {
            Ok(project) => {
                println!(
                    "{}: ok ({} entities)",
                    file.display(),
                    project.entities.len()
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                let code = match &err {
                    nomnom_codegen::LoadError::Read { .. } => exit::IO,
                    nomnom_codegen::LoadError::Problems(_) => exit::INVALID_SPEC,
                };
                eprintln!("{:?}", miette::Report::new(err));
                ExitCode::from(code)
            }
        },
    }
}
