//! Benchmark 6: code generation. Time for `nomnom generate` on a 100-entity spec (wall
//! clock, writing included), and the build time of the generated TPC-H worker crate
//! with its dependencies already compiled (what a user waits for after a spec change).

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::Options;
use crate::util::{Row, Verdict, binary, median};

pub fn generation(options: &Options, report: &mut Vec<Row>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = dir.path().join("entities.yaml");
    std::fs::write(&spec, nomnom_codegen::synthetic_spec(100))?;
    let mut times = Vec::new();
    for run in 0..options.runs {
        let output = dir.path().join(format!("worker-{run}"));
        let started = Instant::now();
        let status = Command::new(binary("nomnom"))
            .arg("generate")
            .arg("--entities")
            .arg(&spec)
            .arg("--output")
            .arg(&output)
            .stdout(std::process::Stdio::null())
            .status()
            .context("cannot run nomnom")?;
        times.push(started.elapsed().as_secs_f64());
        if !status.success() {
            bail!("nomnom generate failed on the synthetic spec");
        }
    }
    let generate = median(&times);
    println!(
        "  nomnom generate, 100 entities: {generate:.2} s (median of {})",
        times.len()
    );
    report.push(Row {
        benchmark: "6. code generation".into(),
        measure: "`nomnom generate`, 100 entities".into(),
        figure: format!("{generate:.2} s"),
        baseline: String::new(),
        ratio: String::new(),
        target: "< 1 s (issue 3)".into(),
        verdict: Verdict::of(generate < 1.0),
    });

    // The worker crate alone: clean it, keep its dependencies, build it again.
    let profile: &[&str] = if cfg!(debug_assertions) {
        &[]
    } else {
        &["--release"]
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let clean = Command::new(&cargo)
        .args(["clean", "--quiet", "-p", "tpch-worker"])
        .args(profile)
        .status()?;
    if !clean.success() {
        bail!("cargo clean -p tpch-worker failed");
    }
    let started = Instant::now();
    let build = Command::new(&cargo)
        .args(["build", "--quiet", "-p", "tpch-worker"])
        .args(profile)
        .status()?;
    let seconds = started.elapsed().as_secs_f64();
    if !build.success() {
        bail!("building the generated TPC-H worker failed");
    }
    let profile_name = if profile.is_empty() {
        "debug"
    } else {
        "release"
    };
    println!("  generated TPC-H worker, {profile_name} build of the crate: {seconds:.1} s");
    report.push(Row {
        benchmark: "6. code generation".into(),
        measure: format!(
            "build of the generated TPC-H worker ({profile_name}, dependencies cached)"
        ),
        figure: format!("{seconds:.1} s"),
        baseline: String::new(),
        ratio: String::new(),
        target: String::new(),
        verdict: Verdict::Info,
    });
    Ok(())
}
