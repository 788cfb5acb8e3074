//! Where a generated crate sits, so that it builds there: which nomnom-runtime it
//! depends on, whether it is a member of an enclosing workspace or a workspace of its
//! own, and (for its own workspace) the Cargo.lock it ships with.

use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use crate::model::Project;
use crate::render::{self, RenderOptions, RuntimeDependency};

/// The `nomnom-runtime` source this binary was built from, when it is still there (a
/// nomnom checkout; not a binary installed from elsewhere).
pub fn built_runtime() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime");
    dir.join("Cargo.toml")
        .is_file()
        .then(|| dir.canonicalize().unwrap_or(dir))
}

/// The runtime dependency when no `--runtime-path` or `--runtime-version` is given: the
/// runtime this binary was built from, by a path relative to `output` (absolute when the
/// two share no directory but the root), else `version` from a registry.
pub fn default_runtime(output: &Path, version: &str) -> RuntimeDependency {
    match built_runtime() {
        Some(runtime) => RuntimeDependency::Path(
            relative(&absolute(output), &runtime)
                .unwrap_or(runtime)
                .to_string_lossy()
                .into_owned(),
        ),
        None => RuntimeDependency::Version(version.to_owned()),
    }
}

/// A `--runtime-path` as the generated files spell it, whatever its spelling on the
/// command line: relative to the crate directory `output` when the two share a directory
/// (with `.` and `..` detours and symbolic links resolved), else absolute. A relative
/// `given` is relative to `output`, as a path in Cargo.toml is.
pub fn runtime_path(output: &Path, given: &Path) -> String {
    let output = absolute(output);
    let runtime = absolute(&output.join(given));
    relative(&output, &runtime)
        .unwrap_or(runtime)
        .to_string_lossy()
        .into_owned()
}

/// `path` made absolute against the current directory, `.` and `..` resolved lexically,
/// and symbolic links resolved in the part that exists (the output may not exist yet).
pub fn absolute(path: &Path) -> PathBuf {
    let joined = std::env::current_dir().unwrap_or_default().join(path);
    let mut normal = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    let mut existing = normal.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return normal,
        }
    }
}

/// `to` as seen from the directory `from` (both absolute), or `None` when they share
/// nothing but the root.
pub fn relative(from: &Path, to: &Path) -> Option<PathBuf> {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    if common <= 1 {
        return None;
    }
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for component in &to[common..] {
        path.push(component);
    }
    Some(if path.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        path
    })
}

/// The workspace whose directory holds a crate, as cargo finds it: the nearest ancestor
/// with a `[workspace]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnclosingWorkspace {
    /// The directory of its Cargo.toml.
    pub root: PathBuf,
    /// Whether it lists the crate in `members` (and not in `exclude`). A crate inside a
    /// workspace that does not list it is refused by cargo, unless it has a `[workspace]`
    /// of its own.
    pub lists_crate: bool,
}

/// The workspace enclosing the crate directory `output`, if any.
pub fn enclosing_workspace(output: &Path) -> Option<EnclosingWorkspace> {
    let output = absolute(output);
    for dir in output.ancestors().skip(1) {
        let Ok(text) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        // A manifest that does not parse is not one cargo would build from either.
        let Ok(manifest) = text.parse::<toml::Table>() else {
            continue;
        };
        let Some(workspace) = manifest.get("workspace").and_then(toml::Value::as_table) else {
            continue;
        };
        let Ok(inside) = output.strip_prefix(dir) else {
            continue;
        };
        let listed = paths(workspace, "members")
            .iter()
            .any(|m| member_matches(m, inside));
        let excluded = paths(workspace, "exclude")
            .iter()
            .any(|e| inside.starts_with(normal_relative(e)));
        return Some(EnclosingWorkspace {
            root: dir.to_owned(),
            lists_crate: listed && !excluded,
        });
    }
    None
}

/// The strings of `workspace.<key>` (`members`, `exclude`).
fn paths(workspace: &toml::Table, key: &str) -> Vec<String> {
    (workspace.get(key).and_then(toml::Value::as_array))
        .map(|items| {
            (items.iter())
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A member path or glob as components, `./` dropped.
fn normal_relative(path: &str) -> PathBuf {
    Path::new(path)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// Whether `path` (relative to the workspace root) matches a `members` entry, a glob as
/// cargo reads them (the `glob` crate, which cargo uses).
fn member_matches(pattern: &str, path: &Path) -> bool {
    let pattern = normal_relative(pattern);
    glob::Pattern::new(&pattern.to_string_lossy()).is_ok_and(|pattern| {
        pattern.matches_path_with(
            path,
            glob::MatchOptions {
                require_literal_separator: true,
                ..glob::MatchOptions::new()
            },
        )
    })
}

/// Why no Cargo.lock could be derived.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot prepare the lock file in {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Render(#[from] render::RenderError),
    #[error(
        "`cargo update --workspace --offline` failed ({0}); build nomnom's workspace once so its dependencies are in cargo's cache, or pass --runtime-version"
    )]
    Cargo(String),
}

/// The Cargo.lock of a crate that is its own workspace and depends on the runtime by
/// path: the lock of the workspace holding that runtime (nomnom's own Cargo.lock, the
/// versions the runtime is tested with), trimmed by cargo itself to this crate's
/// dependencies. `cargo update --workspace` on a copy keeps every pinned version and
/// drops or adds only what differs, exactly as the crate's first build would, so the
/// crate builds with `--locked` and cargo never rewrites the file. `None` without a path
/// runtime or without such a lock.
pub fn lockfile(project: &Project, options: &RenderOptions) -> Result<Option<String>, LockError> {
    let RuntimeDependency::Path(runtime) = &options.runtime else {
        return Ok(None);
    };
    let runtime = absolute(&absolute(&options.output).join(runtime));
    let Some(seed) = runtime
        .parent()
        .map(|workspace| workspace.join("Cargo.lock"))
        .filter(|lock| lock.is_file())
    else {
        return Ok(None);
    };
    // Lock files do not record paths: a copy of the manifest with the runtime's absolute
    // path resolves as the crate does where it is written.
    let manifest = render::cargo_toml(
        project,
        &RenderOptions {
            runtime: RuntimeDependency::Path(runtime.to_string_lossy().into_owned()),
            ..options.clone()
        },
    )?;
    let dir = std::env::temp_dir().join(format!(
        "nomnom-lock-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let result = cargo_lock(&dir, &manifest, &seed);
    let _ = std::fs::remove_dir_all(&dir);
    result.map(Some)
}

fn cargo_lock(dir: &Path, manifest: &str, seed: &Path) -> Result<String, LockError> {
    let io = |source| LockError::Io {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir.join("src")).map_err(io)?;
    std::fs::write(dir.join("Cargo.toml"), manifest).map_err(io)?;
    std::fs::write(dir.join("src/lib.rs"), "").map_err(io)?;
    std::fs::write(dir.join("src/main.rs"), "fn main() {}\n").map_err(io)?;
    std::fs::copy(seed, dir.join("Cargo.lock")).map_err(io)?;
    let output = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["update", "--workspace", "--offline", "--quiet"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LockError::Cargo(e.to_string()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(LockError::Cargo(
            stderr
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("it exited without a word")
                .trim()
                .to_owned(),
        ));
    }
    std::fs::read_to_string(dir.join("Cargo.lock")).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_to_the_common_directory() {
        let rel = |a: &str, b: &str| relative(Path::new(a), Path::new(b));
        assert_eq!(
            rel("/w/nomnom/my-project/worker", "/w/nomnom/runtime"),
            Some(PathBuf::from("../../runtime"))
        );
        assert_eq!(rel("/w/a", "/w/a"), Some(PathBuf::from(".")));
        assert_eq!(rel("/tmp/x/worker", "/w/nomnom/runtime"), None);
    }

    #[test]
    fn members_are_read_from_the_workspace_table() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = "[package]\nname = \"x\"\nmembers = [\"no\"]\n\n[workspace]\nresolver = \"3\"\n# members = [\"commented\"]\nmembers = [\n  \"runtime\", # the runtime\n  'examples/*/worker',\n  \"./tools/**\",\n]\nexclude = [\"examples/old\"]\n\n[workspace.package]\nversion = \"1\"\n";
        std::fs::write(dir.path().join("Cargo.toml"), manifest).unwrap();
        let lists = |path: &str| {
            enclosing_workspace(&dir.path().join(path))
                .unwrap()
                .lists_crate
        };
        assert!(lists("runtime"));
        assert!(lists("examples/tpch/worker"));
        assert!(lists("tools/a/b"));
        assert!(!lists("examples/old/worker"), "excluded");
        assert!(!lists("my-project/worker"));
        assert!(!lists("examples/tpch"), "a glob matches whole components");
        assert!(!lists("no"), "only the workspace table's members count");
        std::fs::write(dir.path().join("Cargo.toml"), "[package]\nname = \"x\"\n").unwrap();
        assert_eq!(enclosing_workspace(&dir.path().join("runtime")), None);
    }

    #[test]
    fn this_workspace_lists_its_examples_and_nothing_else() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let root = root.canonicalize().unwrap();
        let found = enclosing_workspace(&root.join("examples/tpch/worker")).unwrap();
        assert_eq!(found.root, root);
        assert!(found.lists_crate);
        let found = enclosing_workspace(&root.join("my-project/worker")).unwrap();
        assert!(!found.lists_crate);
    }
}
