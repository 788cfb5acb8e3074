//! The `nats-api` binary: parse flags, then [`nats_api::main`]: logs, the service until
//! SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use nats_api::ApiArgs;
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
    nats_api::main(&args).await?;
    Ok(ExitCode::SUCCESS)
}
