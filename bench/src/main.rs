//! nomnom's benchmark harness: the pipeline measured against its physical baselines, in
//! one run, on real nats-server and PostgreSQL processes.
//!
//! ```sh
//! cargo run --release -p nomnom-bench            # every benchmark, medians of 3 runs
//! cargo run -p nomnom-bench -- --quick           # small sizes, one run: CI's check that it works
//! cargo run --release -p nomnom-bench -- --only ingest,worker
//! # the worker benchmark, with an older tpch-worker build measured in the same runs
//! cargo run --release -p nomnom-bench -- --only worker --worker-before /path/to/tpch-worker
//! ```
//!
//! The harness builds the binaries it runs (nats-api, the TPC-H worker, nomnom and the
//! baseline API) with its own profile, and needs `wrk` (scripts/install-deps.sh).

mod codegen;
mod e2e;
mod ingest;
mod memory;
mod util;
mod worker;

use std::process::{Command, ExitCode};

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Bench {
    /// 1. single-message HTTP ingest under wrk vs a minimal publish-and-await handler; 1b. verifying GitHub signatures instead
    Ingest,
    /// 2. NDJSON batch ingest vs raw pipelined JetStream publishing
    Batch,
    /// 3. worker throughput (1, 2, 4 replicas) vs COPY, multi-row SQL and the naive design
    Worker,
    /// 4 and 5. end to end at a fixed rate: latency, consumer lag, memory
    E2e,
    /// 6. code generation time and the generated worker's build time
    Codegen,
    /// 7. nats-api's memory under bursts of concurrent maximum-size bodies, against its body budget
    Memory,
}

#[derive(Debug, Parser)]
#[command(about = "nomnom's benchmarks, each against its baseline in the same run")]
struct Args {
    /// Small sizes and one run each: checks that the harness works; the figures mean little.
    #[arg(long)]
    quick: bool,
    /// Which benchmarks to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Bench>,
    /// Runs per measurement; medians are reported (default: 3, or 1 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Fail (exit 1) when a target is missed.
    #[arg(long)]
    strict: bool,
    /// Another tpch-worker binary (a build of an earlier commit) to measure in the worker
    /// benchmark, back to back with this build's.
    #[arg(long, value_name = "PATH")]
    worker_before: Option<std::path::PathBuf>,
}

/// What every benchmark reads.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub runs: usize,
    /// The `--worker-before` binary.
    pub worker_before: Option<std::path::PathBuf>,
}

fn tool_version(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_else(|| "not found".into())
}

fn print_machine() {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let nats = nomnom_test_support::nats_server_binary();
    println!("machine: {cpus} CPUs ({model})");
    println!(
        "nats-server: {}",
        tool_version(&nats.display().to_string(), &["--version"])
    );
    println!("rustc: {}", tool_version("rustc", &["--version"]));
    println!("wrk: {}", tool_version("wrk", &["-v"]));
    println!(
        "profile: {}",
        if cfg!(debug_assertions) {
            "debug (figures are not representative)"
        } else {
            "release"
        }
    );
}

/// Builds what the harness runs, with the harness's own profile.
fn build_binaries() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.args([
        "build",
        "--quiet",
        "-p",
        "nats-api",
        "-p",
        "tpch-worker",
        "-p",
        "nomnom-codegen",
        "-p",
        "nomnom-bench",
        "--bins",
    ]);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    if !command.status()?.success() {
        anyhow::bail!("building the benchmarked binaries failed");
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let options = Options {
        quick: args.quick,
        runs: args.runs.unwrap_or(if args.quick { 1 } else { 3 }).max(1),
        worker_before: args.worker_before.clone(),
    };
    if let Some(before) = &options.worker_before
        && !before.is_file()
    {
        anyhow::bail!("--worker-before {}: no such file", before.display());
    }
    let wanted = |bench: Bench| args.only.is_empty() || args.only.contains(&bench);
    print_machine();
    build_binaries()?;
    let mut report = Vec::new();
    let mut api_memory = ingest::ApiMemory::default();
    if wanted(Bench::Ingest) {
        println!("\n== 1. single-message ingest ==");
        api_memory = ingest::single_messages(&options, &mut report).await?;
    }
    if wanted(Bench::Batch) {
        println!("\n== 2. batch ingest ==");
        ingest::batches(&options, &mut report).await?;
    }
    if wanted(Bench::Worker) {
        println!("\n== 3. worker throughput ==");
        worker::throughput(&options, &mut report).await?;
    }
    if wanted(Bench::E2e) {
        println!("\n== 4, 5. end to end at a fixed rate; memory ==");
        e2e::fixed_rate(&options, api_memory, &mut report).await?;
    }
    if wanted(Bench::Codegen) {
        println!("\n== 6. code generation ==");
        codegen::generation(&options, &mut report)?;
    }
    if wanted(Bench::Memory) {
        println!("\n== 7. nats-api memory under bursts of maximum-size bodies ==");
        memory::bursts(&options, &mut report).await?;
    }
    util::print_report(&report);
    Ok(report
        .iter()
        .all(|row| row.verdict != util::Verdict::Missed))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let strict = args.strict;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(all_met) if all_met || !strict => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("error: a target was missed (--strict)");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
