//! A real PostgreSQL server in a temporary data directory.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the temporary
//! directory (under `/tmp`, which every user can traverse) is given to the `postgres`
//! user and `initdb`/`postgres` run as that user via `setpriv`, which execs in place: the
//! child we hold is the postmaster itself, so our signals reach it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tempfile::TempDir;

use crate::process::{
    NotReady, POLL, alive, children_of, find_on_path, is_running, port_open, signal, tail,
    wait_exit, wait_ready, wait_until,
};

/// How long a server gets to accept `SELECT 1`.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Settings of a server, for benchmarks; tests use the defaults.
#[derive(Debug, Clone, Default)]
pub struct PostgresOptions {
    /// Keep PostgreSQL's durable defaults (`fsync`, `synchronous_commit`,
    /// `full_page_writes` on), as in production. Off by default: tests need speed, not
    /// crash safety of their throwaway data.
    pub durable: bool,
    /// More `name=value` settings, passed as `-c name=value`.
    pub settings: Vec<String>,
}

/// A running PostgreSQL server on a loopback port with trust auth for user `postgres`,
/// with its data in a temporary directory. Shut down immediately on drop so tests end
/// quickly.
#[derive(Debug)]
pub struct Postgres {
    options: PostgresOptions,
    dir: TempDir,
    bin: PathBuf,
    psql: PathBuf,
    /// uid and gid to run the server binaries as (when we are root).
    run_as: Option<(u32, u32)>,
    port: u16,
    child: Option<Child>,
}

/// Directory holding `initdb` and `postgres`: `PG_BIN_DIR`, the newest
/// `/usr/lib/postgresql/*/bin` (Debian's layout, not on `PATH`), or `PATH`.
fn bin_dir() -> PathBuf {
    const MISSING: &str = "PostgreSQL server binaries not found: install postgresql (apt-get install postgresql) or set PG_BIN_DIR";
    if let Some(dir) = std::env::var_os("PG_BIN_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("initdb").is_file() && dir.join("postgres").is_file(),
            "PG_BIN_DIR={} has no initdb and postgres: {MISSING}",
            dir.display()
        );
        return dir;
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file())
                .then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    find_on_path("initdb")
        .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
        .filter(|dir| dir.join("postgres").is_file())
        .unwrap_or_else(|| panic!("{MISSING}"))
}

/// `psql` beside the server binaries (Debian ships one there too), else on `PATH`.
fn psql_binary(bin: &Path) -> PathBuf {
    let beside = bin.join("psql");
    if beside.is_file() {
        return beside;
    }
    find_on_path("psql").unwrap_or_else(|| {
        panic!(
            "psql not found: install postgresql-client (apt-get install postgresql-client) or set PG_BIN_DIR"
        )
    })
}

/// uid and gid of the `postgres` user, from `/etc/passwd`.
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                ["postgres", _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
                _ => None,
            }
        })
        .unwrap_or_else(|| {
            panic!(
                "tests run as root but there is no `postgres` user to run PostgreSQL as (it refuses root): install postgresql (apt-get install postgresql creates the user) or run the tests as a normal user"
            )
        })
}

impl Postgres {
    /// `initdb` into a temporary directory and start the server on a free loopback port.
    /// Durability is off (`fsync`, `full_page_writes`, `synchronous_commit`): these are
    /// tests.
    ///
    /// # Panics
    /// When the binaries are missing or the server does not answer within 30 s (with
    /// its log).
    pub fn start() -> Postgres {
        Postgres::start_with(PostgresOptions::default())
    }

    /// Like [`start`](Self::start), with `options`.
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn start_with(options: PostgresOptions) -> Postgres {
        let bin = bin_dir();
        let run_as = rustix::process::geteuid().is_root().then(postgres_user);
        let mut builder = tempfile::Builder::new();
        builder.prefix("nomnom-pg-");
        let dir = if run_as.is_some() {
            // TMPDIR may be somewhere the postgres user cannot reach (e.g. under /root).
            builder.tempdir_in("/tmp")
        } else {
            builder.tempdir()
        }
        .expect("create a temp dir for PostgreSQL");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("give the temp dir to the postgres user");
        }
        let mut pg = Postgres {
            options,
            psql: psql_binary(&bin),
            bin,
            dir,
            run_as,
            port: 0,
            child: None,
        };

        let output = pg
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .args(["-E", "UTF8", "--locale=C", "-D"])
            .arg(pg.data_dir())
            .output()
            .expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );

        // PostgreSQL cannot pick its own port: choose a free one and retry if another
        // process takes it first.
        for _attempt in 0..5 {
            pg.port = crate::free_port();
            let log_start = pg.log_len();
            match pg.spawn_and_wait() {
                Ok(()) => return pg,
                Err(NotReady::Exited(_)) if pg.log_since(log_start).contains("already in use") => {
                    pg.child = None;
                }
                Err(why) => pg.fail("start", &why, log_start),
            }
        }
        panic!(
            "PostgreSQL could not bind a free port in 5 attempts; its log:\n{}",
            pg.log_tail()
        );
    }

    /// Port on 127.0.0.1; the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the `postgres` database: `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// URL of `database` on this server.
    pub fn database_url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a database (one per test keeps tests independent) and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let quoted = name.replace('"', "\"\"");
        self.psql("postgres", &format!("CREATE DATABASE \"{quoted}\""));
        self.database_url(name)
    }

    /// Runs SQL with `psql -At` (unaligned, tuples only: one row a line, columns split by
    /// `|`) and returns its output without the final newline.
    ///
    /// # Panics
    /// When psql fails, with its error.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = self
            .psql_command(database, sql)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.psql.display()));
        assert!(
            output.status.success(),
            "psql failed on {sql:?} in database {database:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
        let mut stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if stdout.ends_with('\n') {
            stdout.pop();
        }
        stdout
    }

    /// Fast shutdown (SIGINT: sessions are cut, transactions rolled back, a checkpoint
    /// is written); returns once the server has exited.
    pub fn stop(&mut self) {
        self.end(Signal::INT, Duration::from_secs(30));
    }

    /// SIGKILL of the postmaster, as close to a crash as a test gets; returns once it
    /// and its backends are gone, so a [`restart`](Self::restart) goes through crash
    /// recovery. Commits are asynchronous here (`synchronous_commit=off`): the last
    /// ~200 ms of commits may be lost unless a `CHECKPOINT` ran after them.
    pub fn kill(&mut self) {
        self.end(Signal::KILL, Duration::from_secs(10));
    }

    fn end(&mut self, how: Signal, within: Duration) {
        if let Some(mut child) = self.child.take() {
            // Backends outlive a killed postmaster for a moment and keep its shared
            // memory, which a new postmaster refuses to start beside.
            let backends = children_of(child.id());
            signal(&child, how);
            wait_exit(&mut child, within);
            wait_until(Duration::from_secs(10), || {
                !backends.iter().any(|&pid| alive(pid))
            });
            let port = self.port;
            wait_until(Duration::from_secs(5), || !port_open(port));
        }
    }

    /// Stops the server if it runs (fast shutdown) and starts it again on the same port
    /// with the same data; returns once it answers.
    ///
    /// # Panics
    /// When it does not come back within 30 s (with its log).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let log_start = self.log_len();
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(NotReady::Exited(_))
                    if Instant::now() < deadline && {
                        let log = self.log_since(log_start);
                        ["already in use", "already exists", "still in use"]
                            .iter()
                            .any(|transient| log.contains(transient))
                    } =>
                {
                    self.child = None;
                    std::thread::sleep(POLL);
                }
                Err(why) => self.fail("restart", &why, log_start),
            }
        }
    }

    /// Whether the postmaster is alive.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(is_running)
    }

    /// The last 40 lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path(), 40)
    }

    /// The temporary directory holding the data directory and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(self.log_path()).map_or(0, |m| m.len())
    }

    fn log_since(&self, start: u64) -> String {
        let bytes = std::fs::read(self.log_path()).unwrap_or_default();
        let start = usize::try_from(start).unwrap_or(0).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// A command for one of the server binaries, as the postgres user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = match self.run_as {
            Some((uid, gid)) => {
                let mut command = Command::new("setpriv");
                command
                    .arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .args(["--clear-groups", "--"])
                    .arg(path);
                command
            }
            None => Command::new(path),
        };
        command
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env_remove("PGDATA")
            .stdin(Stdio::null());
        command
    }

    fn psql_command(&self, database: &str, sql: &str) -> Command {
        let mut command = Command::new(&self.psql);
        command
            .args(["-X", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", database])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "5")
            .env_remove("PGSERVICE")
            .env_remove("PGSSLMODE")
            .env_remove("PGOPTIONS")
            .stdin(Stdio::null());
        command
    }

    fn spawn_and_wait(&mut self) -> Result<(), NotReady> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the PostgreSQL log");
        let mut child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(self.dir.path())
            .args(if self.options.durable {
                &[][..]
            } else {
                &[
                    "-F",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ][..]
            })
            .args(
                self.options
                    .settings
                    .iter()
                    .flat_map(|s| ["-c", s.as_str()]),
            )
            .args(["-c", "max_connections=200"])
            .args(["-c", "shared_buffers=128MB"])
            .args(["-c", "logging_collector=off"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} (as the postgres user: {}): {e}",
                    self.bin.join("postgres").display(),
                    self.run_as.is_some()
                )
            });
        let port = self.port;
        let result = wait_ready(&mut child, READY_WITHIN, || {
            port_open(port)
                && self
                    .psql_command("postgres", "SELECT 1")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
        });
        self.child = Some(child);
        result
    }

    fn fail(&mut self, what: &str, why: &NotReady, log_start: u64) -> ! {
        let why = match why {
            NotReady::Exited(status) => format!("exited during startup ({status})"),
            NotReady::TimedOut => format!(
                "did not answer SELECT 1 on port {} within {}s",
                self.port,
                READY_WITHIN.as_secs()
            ),
        };
        if let Some(mut child) = self.child.take() {
            signal(&child, Signal::KILL);
            let _ = child.wait();
        }
        let log = self.log_since(log_start);
        let lines: Vec<&str> = log.lines().collect();
        panic!(
            "PostgreSQL {what} failed: it {why}\nbinaries: {}\nlog tail:\n{}",
            self.bin.display(),
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown: no checkpoint, the data is thrown away anyway.
            signal(&child, Signal::QUIT);
            wait_exit(&mut child, Duration::from_secs(5));
        }
    }
}
