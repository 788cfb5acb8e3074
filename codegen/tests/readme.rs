//! README's "Generate a worker" commands, taken from README.md's text and run as it
//! gives them in a fresh copy of the repository; then the worker they generated is
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

/// The repository's tracked files as they are in the working tree, copied under `dir`
/// (emptied first): a fresh clone of what would be committed. Modification times are
/// kept, so that cargo reuses the copy's builds from the last run where nothing changed.
fn copy_checkout(dir: &Path) {
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap();
    }
    let root = workspace_root();
    let listed = Command::new("git")
        .args(["ls-files", "-z", "--cached"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(listed.status.success(), "git ls-files failed");
    for path in listed.stdout.split(|&b| b == 0).filter(|p| !p.is_empty()) {
        let path = Path::new(std::str::from_utf8(path).unwrap());
        let source = root.join(path);
        if !source.is_file() {
            continue; // deleted in the working tree
        }
        let target = dir.join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&source, &target).unwrap();
        let modified = std::fs::metadata(&source).unwrap().modified().unwrap();
        std::fs::File::options()
            .write(true)
            .open(&target)
            .unwrap()
            .set_modified(modified)
            .unwrap();
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The copy's own target directory. Cargo gives the copy's packages the same build
/// identity as the checkout's, so in the shared one its build of `nomnom` would replace
/// the checkout's `target/debug/nomnom` (with the copy's runtime path built in) while
/// other tests run it, and the next build of the checkout would replace it back.
fn copy_target_dir() -> PathBuf {
    target_dir().join("readme-target")
}

/// Runs `words` in `dir`: `cargo` is the cargo running this test. The copy's target
/// directory is kept between runs, so dependencies are built once; everything is in
/// cargo's cache already, so nothing is fetched.
fn run(words: &[String], dir: &Path) -> String {
    let program = match words[0].as_str() {
        "cargo" => PathBuf::from(env!("CARGO")),
        other => PathBuf::from(other),
    };
    let output = Command::new(program)
        .args(&words[1..])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", copy_target_dir())
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

    // Always at the same place, so that the copy's own crates (runtime, codegen, the
    // worker) are not compiled again when they did not change.
    let clone = target_dir().join("readme-clone");
    copy_checkout(&clone);
    for words in &commands {
        run(words, &clone);
    }

    let worker = clone.join(&output);
    let manifest = std::fs::read_to_string(worker.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("nomnom-runtime = { path = \"../../runtime\" }"),
        "the worker depends on the checkout's runtime, by a relative path:\n{manifest}"
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
    let nomnom = pinned(&std::fs::read_to_string(clone.join("Cargo.lock")).unwrap());
    for package in pinned(&lock) {
        assert!(
            package.0 == name || nomnom.contains(&package),
            "{package:?} is not a version nomnom's Cargo.lock pins"
        );
    }

    // Generating again changes nothing, the lock file included.
    let mut check = commands[2].clone();
    check.push("--check".into());
    run(&check, &clone);
}
