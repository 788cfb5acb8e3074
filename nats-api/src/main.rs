//! The `nats-api` binary: parse flags, set up logging, run until SIGTERM.

use clap::Parser;
use nats_api::{ApiArgs, server::shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = ApiArgs::parse();
    nomnom_runtime::telemetry::init(args.log_format);
    nats_api::run(args.to_config(), shutdown_signal()).await?;
    Ok(())
}
