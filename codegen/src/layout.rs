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
        let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let Some(table) = workspace_table(&manifest) else {
            continue;
        };
        let Ok(inside) = output.strip_prefix(dir) else {
            continue;
        };
        let listed = string_array(table, "members")
            .iter()
            .any(|m| glob_matches(m, inside));
        let excluded = string_array(table, "exclude")
            .iter()
            .any(|e| inside.starts_with(normal_relative(e)));
        return Some(EnclosingWorkspace {
            root: dir.to_owned(),
            lists_crate: listed && !excluded,
        });
    }
    None
}

/// The text of a manifest's `[workspace]` table (empty when only `[workspace.*]`
/// sub-tables are there), or `None` for a manifest that is no workspace root.
fn workspace_table(manifest: &str) -> Option<&str> {
    let mut found = false;
    let mut start = None;
    let mut offset = 0;
    for line in manifest.split_inclusive('\n') {
        let header = line.trim();
        if header.starts_with('[') {
            let name = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim();
            if let Some(begin) = start {
                return Some(&manifest[begin..offset]);
            }
            if name == "workspace" {
                start = Some(offset + line.len());
            }
            found |= name == "workspace" || name.starts_with("workspace.");
        }
        offset += line.len();
    }
    start
        .map(|begin| &manifest[begin..])
        .or(found.then_some(""))
}

/// The strings of the array `key = [ … ]` in a TOML table's text (basic and literal
/// strings, comments skipped): enough for `members` and `exclude`.
fn string_array(table: &str, key: &str) -> Vec<String> {
    let mut offset = 0;
    let mut value = None;
    for line in table.split_inclusive('\n') {
        if let Some((name, _)) = line.split_once('=')
            && name.trim() == key
        {
            value = Some(&table[offset + name.len() + 1..]);
            break;
        }
        offset += line.len();
    }
    let Some(value) = value else {
        return Vec::new();
    };
    let mut strings = Vec::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            ']' => break,
            '#' => {
                chars.by_ref().find(|&c| c == '\n');
            }
            '"' | '\'' => {
                let quote = c;
                let mut text = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        c if c == quote => break,
                        '\\' if quote == '"' => text.extend(chars.next()),
                        c => text.push(c),
                    }
                }
                strings.push(text);
            }
            _ => {}
        }
    }
    strings
}

/// A member path or glob as components, `./` dropped.
fn normal_relative(path: &str) -> PathBuf {
    Path::new(path)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// Whether `path` (relative to the workspace root) matches a `members` entry: a path
/// whose components may hold `*` and `?` (each within one component).
fn glob_matches(pattern: &str, path: &Path) -> bool {
    let pattern = normal_relative(pattern);
    let pattern: Vec<_> = pattern.components().collect();
    let path: Vec<_> = path.components().collect();
    pattern.len() == path.len()
        && pattern.iter().zip(&path).all(|(p, c)| {
            wildcard(
                &p.as_os_str().to_string_lossy(),
                &c.as_os_str().to_string_lossy(),
            )
        })
}

fn wildcard(pattern: &str, text: &str) -> bool {
    match pattern.chars().next() {
        None => text.is_empty(),
        Some('*') => (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .any(|i| wildcard(&pattern[1..], &text[i..])),
        Some(p) => text.chars().next().is_some_and(|t| {
            (p == '?' || p == t) && wildcard(&pattern[p.len_utf8()..], &text[t.len_utf8()..])
        }),
    }
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
        let manifest = "[package]\nname = \"x\"\nmembers = [\"no\"]\n\n[workspace]\nresolver = \"3\"\n# members = [\"commented\"]\nmembers = [\n  \"runtime\", # the runtime\n  'examples/*/worker',\n]\nexclude = [\"old\"]\n\n[workspace.package]\nversion = \"1\"\n";
        let table = workspace_table(manifest).unwrap();
        assert_eq!(
            string_array(table, "members"),
            ["runtime", "examples/*/worker"]
        );
        assert_eq!(string_array(table, "exclude"), ["old"]);
        assert_eq!(workspace_table("[package]\nname = \"x\"\n"), None);
        assert_eq!(workspace_table("[workspace.package]\n"), Some(""));
        assert!(glob_matches(
            "examples/*/worker",
            Path::new("examples/tpch/worker")
        ));
        assert!(glob_matches("./runtime", Path::new("runtime")));
        assert!(!glob_matches(
            "examples/*/worker",
            Path::new("my-project/worker")
        ));
        assert!(!glob_matches(
            "examples/*",
            Path::new("examples/tpch/worker")
        ));
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
