//! README's "Generate a worker" commands, taken from README.md's text and run as it
//! gives them in a fresh directory of the checkout; then the worker they generated is
//! built where it was generated, with the Cargo.lock it came with.
//!
//! This fails if the crate is taken for an unlisted member of nomnom's workspace (no
//! `[workspace]` of its own), if it asks for a nomnom-runtime no registry holds (not the
//! runtime of the checkout), or if its Cargo.lock is missing or not what cargo would
//! write (`--locked`).

use std::path::{Path, PathBuf};
use std::process::Command;

use nomnom_test_support::workspace_root;

/// The shell commands of README's "Generate a worker" section, each as its words.
fn readme_commands() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Generate a worker")
        .nth(1)
        .expect("README.md has a \"Generate a worker\" section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section starts with a ```sh block");
    block
        .lines()
        .map(|line| line.split(" #").next().unwrap().trim())
        .filter(|line| !line.is_empty())
        .map(|line| {
            assert!(
                !line.contains(['"', '\'', '$', '\\', '|', '&', ';']),
                "this test splits commands on spaces only: {line}"
            );
            line.split_whitespace().map(str::to_owned).collect()
        })
        .collect()
}

/// Where the commands run: a fresh, empty directory inside the checkout, as a new clone's
/// root is for README's reader. It is under `target/`, which git ignores, so nothing a
/// developer made (their own `my-project`) is touched. Inside the checkout, `cargo run -p
/// nomnom-codegen` is the checkout's own build (same sources, same target directory:
/// nothing is built again, and no other test's `nomnom` is replaced), and the crate is
/// generated inside nomnom's workspace directory without being listed in it, the case
/// that made cargo refuse it.
fn fresh_dir() -> PathBuf {
    let dir = workspace_root().join("target").join("readme");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Runs `words` in `dir`: `cargo` is the cargo running this test, with the checkout's
/// target directory, so dependencies are not built again; everything is in cargo's cache
/// already, so nothing is fetched.
fn run(words: &[String], dir: &Path) -> String {
    let program = match words[0].as_str() {
        "cargo" => PathBuf::from(env!("CARGO")),
        other => PathBuf::from(other),
    };
    let output = Command::new(program)
        .args(&words[1..])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir())
        .env("CARGO_NET_OFFLINE", "true")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "`{}` failed in {}:\n{text}",
        words.join(" "),
        dir.display()
    );
    text
}

#[test]
fn readme_generate_commands_give_a_worker_that_builds_where_it_is() {
    let commands = readme_commands();
    let subcommands: Vec<&str> = commands
        .iter()
        .map(|words| {
            assert_eq!(
                words[..4],
                ["cargo", "run", "-p", "nomnom-codegen"],
                "{words:?}"
            );
            words[5].as_str()
        })
        .collect();
    assert_eq!(subcommands, ["init", "validate", "generate"]);
    let output = commands[2]
        .iter()
        .skip_while(|w| *w != "--output")
        .nth(1)
        .expect("README's generate command names its --output")
        .clone();

    let dir = fresh_dir();
    for words in &commands {
        run(words, &dir);
    }

    let worker = dir.join(&output);
    let manifest = std::fs::read_to_string(worker.join("Cargo.toml")).unwrap();
    let runtime = manifest
        .split("nomnom-runtime = { path = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("the worker depends on a runtime by path:\n{manifest}"));
    assert!(
        Path::new(runtime).is_relative(),
        "a relative path, so the checkout can move: {runtime}"
    );
    assert_eq!(
        worker.join(runtime).canonicalize().unwrap(),
        workspace_root().join("runtime").canonicalize().unwrap(),
        "the worker depends on the checkout's runtime"
    );
    assert!(manifest.contains("\n[workspace]\n"), "{manifest}");
    let name = manifest
        .lines()
        .find_map(|l| l.strip_prefix("name = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    let lock = std::fs::read_to_string(worker.join("Cargo.lock"))
        .expect("the worker comes with a Cargo.lock");

    // Built where it was generated, inside nomnom's checkout; `--locked`: with exactly
    // the lock it came with.
    let words = ["cargo", "check", "--locked", "--offline", "--all-targets"].map(String::from);
    run(&words, &worker);
    assert_eq!(
        std::fs::read_to_string(worker.join("Cargo.lock")).unwrap(),
        lock,
        "cargo left the lock file as generated"
    );

    // Every version pinned is the one nomnom's own Cargo.lock pins.
    let pinned = |text: &str| -> Vec<(String, String)> {
        text.split("[[package]]")
            .skip(1)
            .filter_map(|package| {
                let field = |key: &str| {
                    package.lines().find_map(|l| {
                        l.strip_prefix(&format!("{key} = \""))
                            .map(|v| v.trim_end_matches('"').to_owned())
                    })
                };
                Some((field("name")?, field("version")?))
            })
            .collect()
    };
    let nomnom = pinned(&std::fs::read_to_string(workspace_root().join("Cargo.lock")).unwrap());
    for package in pinned(&lock) {
        assert!(
            package.0 == name || nomnom.contains(&package),
            "{package:?} is not a version nomnom's Cargo.lock pins"
        );
    }

    // Generating again changes nothing, the lock file included.
    let mut check = commands[2].clone();
    check.push("--check".into());
    run(&check, &dir);
}
