//! The `nats-api` binary: parse flags, set up logging, run until SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use nats_api::{ApiArgs, server::shutdown_signal};
use nomnom_runtime::healthcheck;

// glibc's malloc was ~20% of nats-api's CPU under batch load (perf); mimalloc spends
// less on the per-message allocations (and far less than musl's, in the static image).
#[global_allocator]
static ALLOCATOR: nomnom_runtime::Allocator = nomnom_runtime::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    nomnom_runtime::allocator::return_freed_memory_promptly();
    let args = ApiArgs::parse();
    if let Some(healthcheck::Command::Healthcheck { path }) = &args.command {
        return Ok(healthcheck::exit_code(args.listen, path));
    }
    nomnom_runtime::telemetry::init(args.log_format);
    nats_api::run(args.to_config(), shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
