//! nats-api's `main`, as a binary of this crate so its tests can run (and stop) it as a
//! process beside the worker: the same lines as nats-api/src/main.rs.

use std::process::ExitCode;

use clap::Parser;
use nats_api::ApiArgs;
use nomnom_runtime::healthcheck;

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
