//! Stage 4: renders the model into files, in memory: the views of [`crate::view`] go to
//! the Tera templates in `templates/worker/`, which only lay them out. Rust output is
//! formatted with one rustfmt run.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use tera::{Context, Tera};

use crate::evolve::{self, Dialect, MigrationId, Refusal, Snapshot, Step};
use crate::model::{Entity, Project};
use crate::view::{EntityView, discriminator_view, entity_view, rust_string};

/// Which databases the generated crate gets migrations for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Databases {
    Postgres,
    Sqlite,
    Both,
}

/// How the generated Cargo.toml refers to nomnom-runtime.
#[derive(Debug, Clone)]
pub enum RuntimeDependency {
    /// `path = "…"` (relative to the generated crate).
    Path(String),
    /// `version = "…"` from crates.io.
    Version(String),
}

#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub databases: Databases,
    pub runtime: RuntimeDependency,
    /// Spec file name, for the generated header.
    pub spec_name: String,
    /// Where the crate is written, for the Docker build context of a path runtime.
    pub output: std::path::PathBuf,
    /// Whether the crate is a workspace of its own (`[workspace]` in its Cargo.toml), so
    /// that it builds wherever it is; not when an enclosing workspace lists it as a member
    /// ([`crate::layout::enclosing_workspace`]).
    pub own_workspace: bool,
}

/// Where a Docker build of the crate finds what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DockerContext {
    /// The build context as seen from the crate (`.`: the crate alone).
    context: String,
    /// The crate as seen from the context.
    crate_dir: String,
    /// With a path runtime in the context: the runtime, and the manifest of its
    /// workspace (whose settings it inherits), as seen from the context.
    runtime: Option<(String, String)>,
}

/// The Docker build context: with a path runtime, the deepest directory that holds both
/// the crate and the runtime's parent (its workspace, whose manifest it inherits from);
/// else the crate itself. Computed from the real absolute directories, so it does not
/// depend on how `output` or the runtime path are spelled. Directories that share nothing
/// but the root have no context: the crate alone.
fn docker_context(output: &std::path::Path, runtime: &RuntimeDependency) -> DockerContext {
    use std::path::{Component, Path};
    let alone = DockerContext {
        context: ".".into(),
        crate_dir: ".".into(),
        runtime: None,
    };
    let RuntimeDependency::Path(runtime_path) = runtime else {
        return alone;
    };
    let crate_dir = crate::layout::absolute(output);
    let runtime_dir = crate::layout::absolute(&crate_dir.join(runtime_path));
    let Some(workspace) = runtime_dir.parent() else {
        return alone;
    };
    let common: std::path::PathBuf = crate_dir
        .components()
        .zip(workspace.components())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    if common
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Prefix(_)))
    {
        return alone;
    }
    // Forward slashes whatever the platform: Dockerfiles and compose files want them.
    let slashed = |path: &Path| -> String {
        let parts: Vec<String> = path
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.is_empty() {
            ".".into()
        } else {
            parts.join("/")
        }
    };
    let inside = |path: &Path| slashed(path.strip_prefix(&common).unwrap_or(path));
    let up = crate_dir.components().count() - common.components().count();
    DockerContext {
        context: if up == 0 {
            ".".into()
        } else {
            vec![".."; up].join("/")
        },
        crate_dir: inside(&crate_dir),
        runtime: Some((inside(&runtime_dir), inside(&workspace.join("Cargo.toml")))),
    }
}

/// Why rendering failed (a bug in nomnom, or rustfmt missing).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {name} failed: {message}")]
    Template { name: String, message: String },
    #[error("rustfmt is not available ({0}); install it with `rustup component add rustfmt`")]
    RustfmtMissing(String),
    #[error("rustfmt rejected generated {file} (a nomnom bug, please report it): {message}")]
    Rustfmt { file: String, message: String },
    #[error(
        "{} cannot read the schema the crate was generated for ({message}); restore it from version control",
        crate::evolve::SNAPSHOT
    )]
    Snapshot { message: String },
    #[error("{}", refused_text(.0))]
    Refused(Vec<Refusal>),
}

/// Every refused change, with what to do, one per line.
fn refused_text(refused: &[Refusal]) -> String {
    let mut text = format!(
        "the spec changed in {} way(s) that would lose stored data or break messages already in the stream:",
        refused.len()
    );
    for r in refused {
        text.push_str(&format!("\n  - {}\n    help: {}", r.change, r.help));
    }
    text
}

/// What the crate on disk says of its past: the schema it was generated for.
#[derive(Debug, Default)]
pub struct History {
    /// `migrations/schema.toml` of the crate being regenerated; `None` for a new crate.
    pub previous: Option<Snapshot>,
    /// Write dropping migrations too (`--allow-destructive`).
    pub allow_destructive: bool,
}

/// Generated files: relative path → contents, in a stable order.
pub type Files = BTreeMap<String, String>;

macro_rules! templates {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../templates/worker/", $name)))),*]
    };
}

/// Every template, by name.
const TEMPLATES: &[(&str, &str)] = templates![
    "Cargo.toml.tera",
    "README.md.tera",
    "Dockerfile.tera",
    "Dockerfile.dockerignore.tera",
    "docker-compose.nats.yml.tera",
    "main.rs.tera",
    "lib.rs.tera",
    "model.rs.tera",
    "parser.rs.tera",
    "schema.rs.tera",
    "database.rs.tera",
];

/// A TOML basic string for arbitrary text. Not JSON's encoding (which the template
/// used): JSON leaves DEL (U+007F) raw, and TOML forbids it in strings, so a description
/// holding one made a Cargo.toml that cargo refuses (found by tests/fuzz.rs).
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn tera() -> Result<Tera, RenderError> {
    let mut tera = Tera::default();
    tera.autoescape_on(vec![]);
    for (name, text) in TEMPLATES {
        tera.add_raw_template(name, text)
            .map_err(|e| RenderError::Template {
                name: (*name).to_owned(),
                message: format!("{e:?}"),
            })?;
    }
    Ok(tera)
}

fn render_one(tera: &Tera, name: &str, context: &Context) -> Result<String, RenderError> {
    tera.render(name, context).map_err(|e| {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        RenderError::Template {
            name: name.to_owned(),
            message,
        }
    })
}

/// Formats Rust sources with one rustfmt process (edition 2024), as `cargo fmt` would:
/// starting rustfmt costs more than formatting a file, so all files go to one run.
pub fn rustfmt_all(sources: &mut [(String, String)]) -> Result<(), RenderError> {
    if sources.is_empty() {
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!(
        "nomnom-fmt-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let result = rustfmt_in(&dir, sources);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn io_error(e: std::io::Error) -> RenderError {
    RenderError::RustfmtMissing(e.to_string())
}

/// Writes `sources` under `dir` in the crate's own layout (rustfmt resolves `mod`
/// declarations from it), formats them, and reads them back.
fn rustfmt_in(dir: &std::path::Path, sources: &mut [(String, String)]) -> Result<(), RenderError> {
    let mut paths = Vec::new();
    for (relative, source) in sources.iter() {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_error)?;
        }
        std::fs::write(&path, source).map_err(io_error)?;
        paths.push(path);
    }
    // Roots only (files no other file declares as a module): rustfmt formats the
    // modules they declare itself, and naming those too would format them twice.
    let roots: Vec<&std::path::PathBuf> = paths
        .iter()
        .zip(sources.iter())
        .filter(|(_, (relative, _))| {
            !relative.contains("/models/")
                && !relative.contains("/parsers/")
                && !relative.ends_with("database.rs")
                && !relative.ends_with("schema.rs")
        })
        .map(|(path, _)| path)
        .collect();
    let output = Command::new(std::env::var("RUSTFMT").unwrap_or_else(|_| "rustfmt".into()))
        .args(["--edition", "2024", "--quiet"])
        .args(&roots)
        .stdin(Stdio::null())
        .output()
        .map_err(io_error)?;
    if !output.status.success() {
        let message = String::from_utf8_lossy(&output.stderr).into_owned();
        return Err(rustfmt_failure(&paths, sources, message));
    }
    for ((_, source), path) in sources.iter_mut().zip(&paths) {
        *source = std::fs::read_to_string(path).map_err(io_error)?;
    }
    Ok(())
}

/// rustfmt names the file it rejects; a failure naming none is rustfmt itself not
/// running (rustup's proxy without the component or a default toolchain).
fn rustfmt_failure(
    paths: &[std::path::PathBuf],
    sources: &[(String, String)],
    message: String,
) -> RenderError {
    match paths
        .iter()
        .position(|p| message.contains(&p.display().to_string()))
    {
        Some(i) => RenderError::Rustfmt {
            file: sources[i].0.clone(),
            message,
        },
        None => {
            let first = message.lines().find(|l| !l.trim().is_empty());
            RenderError::RustfmtMissing(
                first
                    .unwrap_or("it exited without a word")
                    .trim()
                    .to_owned(),
            )
        }
    }
}

/// The first line of every generated file (in the file's comment syntax).
pub fn header(comment: &str, spec_name: &str) -> String {
    format!(
        "{comment} @generated by nomnom from {spec_name}. DO NOT EDIT: change the spec and run `nomnom generate`.\n"
    )
}

/// The context every template shares: the project, its entities and the options.
fn context(project: &Project, entities: &[EntityView], options: &RenderOptions) -> Context {
    let mut context = Context::new();
    context.insert("project", project);
    context.insert("entities", entities);
    let roots: Vec<&EntityView> = entities.iter().filter(|e| e.parent.is_none()).collect();
    context.insert("roots", &roots);
    // rustc's non_snake_case lint refuses `a__b` (an inner double underscore), which the
    // spec's identifiers allow: modules and fields of such names made the crate fail
    // under `-D warnings` (found by tests/fuzz.rs). Only such specs get the `allow`.
    context.insert(
        "allow_non_snake_case",
        &project.entities.iter().any(|e| {
            std::iter::once(&e.name)
                .chain(e.fields.iter().map(|f| &f.name))
                .any(|n| n.trim_matches('_').contains("__"))
        }),
    );
    context.insert("spec_name", &options.spec_name);
    context.insert(
        "cargo_description",
        &project
            .description
            .as_deref()
            .filter(|d| !d.is_empty())
            .map(toml_string),
    );
    let discriminators: Vec<_> = project
        .discriminators
        .iter()
        .map(discriminator_view)
        .collect();
    context.insert("discriminators", &discriminators);
    let names: Vec<&str> = project
        .discriminators
        .iter()
        .map(|d| d.text.as_str())
        .collect();
    // Inside a format string literal: pointers may hold quotes, backslashes and braces.
    let literal = rust_string(&names.join(" or "));
    let inner = &literal[1..literal.len() - 1];
    context.insert(
        "discriminator_names",
        &inner.replace('{', "{{").replace('}', "}}"),
    );
    let routes: Vec<&str> = (project.roots())
        .flat_map(|e| e.routes.iter().map(String::as_str))
        .collect();
    context.insert("routes_text", &rust_string(&routes.join(", ")));
    // Diesel's `table!` compiles slower the more columns it allows: the narrowest size
    // that fits the widest table.
    let widest = (project.entities.iter())
        .map(|e| e.fields.len() + e.guard_columns().len())
        .max()
        .unwrap_or(0);
    let table_size = match widest {
        0..=32 => "32-column-tables",
        33..=64 => "64-column-tables",
        _ => "128-column-tables",
    };
    context.insert("diesel_table_size", table_size);
    context.insert(
        "reads_metadata",
        &project.entities.iter().any(Entity::reads_metadata),
    );
    context.insert(
        "runtime_dependency",
        &match &options.runtime {
            RuntimeDependency::Path(path) => format!("path = {}", rust_string(path)),
            RuntimeDependency::Version(version) => format!("version = {}", rust_string(version)),
        },
    );
    let docker = docker_context(&options.output, &options.runtime);
    context.insert("docker_context", &docker.context);
    context.insert("crate_in_context", &docker.crate_dir);
    let (runtime, manifest) = docker.runtime.unwrap_or_default();
    context.insert("runtime_in_context", &runtime);
    context.insert("runtime_manifest_in_context", &manifest);
    context.insert("own_workspace", &options.own_workspace);
    context.insert("postgres", &options.postgres());
    context.insert("sqlite", &options.sqlite());
    context
}

impl RenderOptions {
    fn postgres(&self) -> bool {
        matches!(self.databases, Databases::Postgres | Databases::Both)
    }

    fn sqlite(&self) -> bool {
        matches!(self.databases, Databases::Sqlite | Databases::Both)
    }
}

/// The Rust sources of the crate, formatted, with their header.
fn rust_files(
    tera: &Tera,
    context: &Context,
    entities: &[EntityView],
    options: &RenderOptions,
    files: &mut Files,
) -> Result<(), RenderError> {
    let mut rust: Vec<(String, String)> = Vec::new();
    for (path, template) in [
        ("src/main.rs", "main.rs.tera"),
        ("src/lib.rs", "lib.rs.tera"),
        ("src/schema.rs", "schema.rs.tera"),
        ("src/database.rs", "database.rs.tera"),
    ] {
        rust.push((path.to_owned(), render_one(tera, template, context)?));
    }
    for entity in entities {
        // Only what the per-entity templates use: cloning the whole context (every
        // entity) for each of them made a 100-entity spec take a second.
        let mut per_entity = Context::new();
        per_entity.insert("entity", entity);
        for (dir, template) in [("models", "model.rs.tera"), ("parsers", "parser.rs.tera")] {
            rust.push((
                format!("src/{dir}/{}.rs", entity.name),
                render_one(tera, template, &per_entity)?,
            ));
        }
    }
    rustfmt_all(&mut rust)?;
    for (path, source) in rust {
        files.insert(path, header("//", &options.spec_name) + &source);
    }
    Ok(())
}

/// The crate's other files: Cargo.toml, Docker and README.
fn text_files(
    tera: &Tera,
    context: &Context,
    options: &RenderOptions,
    files: &mut Files,
) -> Result<(), RenderError> {
    let mut text = |path: &str, template: &str, comment: &str, context: &Context| {
        let body = render_one(tera, template, context)?;
        files.insert(path.to_owned(), header(comment, &options.spec_name) + &body);
        Ok::<(), RenderError>(())
    };
    text("Cargo.toml", "Cargo.toml.tera", "#", context)?;
    text("Dockerfile", "Dockerfile.tera", "#", context)?;
    text(
        "Dockerfile.dockerignore",
        "Dockerfile.dockerignore.tera",
        "#",
        context,
    )?;
    text(
        "docker-compose.nats.yml",
        "docker-compose.nats.yml.tera",
        "#",
        context,
    )?;
    text("README.md", "README.md.tera", "<!--", context)?;
    Ok(())
}

/// A migration to write: every table (`None`: a new crate), or these steps.
type NewMigration = (MigrationId, Option<Vec<Step>>);

/// The new migration (all of it for a new crate; the difference for one with a history,
/// none if the schema is the same) and the schema snapshot, into `files`; returns every
/// migration of the crate, oldest first. Migrations already on disk are not rendered: they
/// stay as they are.
fn migration_files(
    project: &Project,
    entities: &[EntityView],
    options: &RenderOptions,
    history: &History,
    files: &mut Files,
) -> Result<Vec<MigrationId>, RenderError> {
    let tables = evolve::tables(project, entities);
    // The new migration: every table (a new crate), or the steps from the old schema.
    let (migrations, new): (Vec<MigrationId>, Option<NewMigration>) = match &history.previous {
        None => {
            let first = MigrationId {
                version: format!("{:014}", 1),
                name: format!("create_{}", project.name.replace('-', "_")),
            };
            (vec![first.clone()], Some((first, None)))
        }
        Some(previous) => {
            let diff = evolve::diff(&previous.tables, &tables);
            // With --allow-destructive, only drops pass: the other refusals would
            // still break stored rows or queued messages.
            let blocking: Vec<Refusal> = (diff.refused.iter())
                .filter(|r| !history.allow_destructive || !r.droppable)
                .cloned()
                .collect();
            if !blocking.is_empty() {
                return Err(RenderError::Refused(blocking));
            }
            let mut migrations = previous.migrations.clone();
            if diff.steps.is_empty() {
                (migrations, None)
            } else {
                let next = evolve::next_migration(&migrations, &diff.steps);
                migrations.push(next.clone());
                (migrations, Some((next, Some(diff.steps))))
            }
        }
    };
    if let Some((id, steps)) = new {
        for (enabled, dialect) in [
            (options.postgres(), Dialect::Postgres),
            (options.sqlite(), Dialect::Sqlite),
        ] {
            if !enabled {
                continue;
            }
            let sql = match &steps {
                None => evolve::create_all(&project.name, &tables, dialect),
                Some(steps) => evolve::steps_sql(steps, dialect),
            };
            let dir = format!("migrations/{}/{}", dialect.name(), id.dir());
            let header = header("--", &options.spec_name);
            files.insert(format!("{dir}/up.sql"), header.clone() + &sql.up);
            files.insert(format!("{dir}/down.sql"), header + &sql.down);
        }
    }
    let snapshot = Snapshot::new(migrations.clone(), tables);
    files.insert(
        evolve::SNAPSHOT.to_owned(),
        header("#", &options.spec_name) + &snapshot.to_text(),
    );
    Ok(migrations)
}

fn entity_views(project: &Project) -> Vec<EntityView> {
    project
        .entities
        .iter()
        .map(|e| entity_view(project, e))
        .collect()
}

/// The tables `project`'s migrations build, as `migrations/schema.toml` records them.
pub fn schema_tables(project: &Project) -> Vec<evolve::TableSchema> {
    evolve::tables(project, &entity_views(project))
}

/// The crate's Cargo.toml alone (what [`render`] writes there).
pub fn cargo_toml(project: &Project, options: &RenderOptions) -> Result<String, RenderError> {
    let entities = entity_views(project);
    let body = render_one(
        &tera()?,
        "Cargo.toml.tera",
        &context(project, &entities, options),
    )?;
    Ok(header("#", &options.spec_name) + &body)
}

/// Renders every file of a new worker crate.
pub fn render(project: &Project, options: &RenderOptions) -> Result<Files, RenderError> {
    render_with_history(project, options, &History::default())
}

/// Renders every file of the worker crate, after `history`: the migrations it had, and a
/// new one with the difference between the schema it was generated for and the spec's.
pub fn render_with_history(
    project: &Project,
    options: &RenderOptions,
    history: &History,
) -> Result<Files, RenderError> {
    let tera = tera()?;
    let entities = entity_views(project);
    let mut context = context(project, &entities, options);
    let mut files = Files::new();
    let migrations = migration_files(project, &entities, options, history, &mut files)?;
    context.insert("migrations", &migrations);
    rust_files(&tera, &context, &entities, options, &mut files)?;
    text_files(&tera, &context, options, &mut files)?;
    // The README header is an HTML comment: close it.
    if let Some(readme) = files.get_mut("README.md") {
        *readme = readme.replacen(" `nomnom generate`.\n", " `nomnom generate`. -->\n", 1);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn docker_context_holds_crate_and_runtime() {
        let path = |p: &str| RuntimeDependency::Path(p.into());
        let root =
            std::env::temp_dir().join(format!("nomnom-docker-context-{}", std::process::id()));
        let checkout = root.join("nomnom");
        std::fs::create_dir_all(checkout.join("runtime")).unwrap();
        std::fs::create_dir_all(checkout.join("examples/tpch/worker")).unwrap();
        let crate_dir = checkout.join("examples/tpch/worker");
        let expected = DockerContext {
            context: "../../..".into(),
            crate_dir: "examples/tpch/worker".into(),
            runtime: Some(("runtime".into(), "Cargo.toml".into())),
        };
        assert_eq!(
            docker_context(&crate_dir, &path("../../../runtime")),
            expected
        );
        assert_eq!(
            docker_context(
                &crate_dir,
                &path(checkout.join("runtime").to_str().unwrap())
            ),
            expected,
            "an absolute runtime path: the same context"
        );
        assert_eq!(
            docker_context(&crate_dir.join("../worker/."), &path("./../../../runtime")),
            expected,
            "detours in either path: the same context"
        );
        // A project beside the checkout: the context is the directory holding both.
        assert_eq!(
            docker_context(
                &root.join("my-project/worker"),
                &path("../../nomnom/runtime")
            ),
            DockerContext {
                context: "../..".into(),
                crate_dir: "my-project/worker".into(),
                runtime: Some(("nomnom/runtime".into(), "nomnom/Cargo.toml".into())),
            }
        );
        let alone = DockerContext {
            context: ".".into(),
            crate_dir: ".".into(),
            runtime: None,
        };
        assert_eq!(
            docker_context(&crate_dir, &RuntimeDependency::Version("0.1.0".into())),
            alone
        );
        assert_eq!(
            docker_context(Path::new("/nomnom-a/worker"), &path("/nomnom-b/runtime")),
            alone,
            "sharing nothing but the root: no context holds both"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
