//! What the generator's test binaries share: running `nomnom`, and compiling generated
//! crates for real.

// Each test binary uses some of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use nomnom_test_support::workspace_root;

/// Runs the `nomnom` binary with `args` in `cwd`.
pub fn nomnom(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nomnom"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

/// What a run printed, stdout then stderr.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The runtime generated crates depend on by path.
pub fn runtime_dir() -> PathBuf {
    workspace_root().join("runtime")
}

/// Runs `cargo clippy --all-targets -- -D warnings` over `members` (directories under
/// `dir` holding generated crates) as one temporary workspace, with this workspace's
/// Cargo.lock and target dir, so dependencies are built once for all of them.
pub fn clippy_workspace(dir: &Path, members: &[String]) -> Output {
    cargo_workspace(
        dir,
        members,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--keep-going",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ],
    )
}

/// Runs cargo with `args` over `members` as one temporary workspace (see
/// [`clippy_workspace`]).
pub fn cargo_workspace(dir: &Path, members: &[String], args: &[&str]) -> Output {
    let members: Vec<String> = members.iter().map(|m| format!("{m:?}")).collect();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[workspace]\nresolver = \"3\"\nmembers = [{}]\n",
            members.join(", ")
        ),
    )
    .unwrap();
    std::fs::copy(workspace_root().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    Command::new(env!("CARGO"))
        .args(args)
        .env("CARGO_TARGET_DIR", target)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Writes generated `files` under `dir/member`.
pub fn write_crate(dir: &Path, member: &str, files: &nomnom_codegen::render::Files) {
    for (path, contents) in files {
        let target = dir.join(member).join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(target, contents).unwrap();
    }
}
