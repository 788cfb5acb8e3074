//! A real PostgreSQL server in a temporary data directory.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the data directory is
//! given to the `postgres` user and the server runs as that user via `setpriv`, which
//! execs in place: the child we hold is the postmaster itself, so signals reach it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{is_running, port_open, signal, tail, wait_exit, wait_until};

/// A running PostgreSQL server; stopped on drop.
#[derive(Debug)]
pub struct Postgres {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres_user: bool,
    child: Option<Child>,
}

/// Directory holding `initdb` and `postgres`: `PG_BIN_DIR`, the newest
/// `/usr/lib/postgresql/*/bin`, or the directory of `initdb` on `PATH`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths).find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL server binaries not found: install postgresql (apt-get install postgresql) or set PG_BIN_DIR"
            )
        })
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Postgres {
    /// initdb into a temp dir and start the server on a free loopback port.
    pub fn start() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("nomnom-pg-")
            .tempdir()
            .expect("create a temp dir");
        let as_postgres_user = running_as_root();
        let mut pg = Postgres {
            dir,
            bin: bin_dir(),
            port: 0,
            as_postgres_user,
            child: None,
        };
        if as_postgres_user {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status()
                .expect("run chown");
            assert!(
                status.success(),
                "cannot give the temp dir to the postgres user"
            );
        }
        let output = pg
            .command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
                "-D",
            ])
            .arg(pg.data_dir())
            .output()
            .expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        for _attempt in 0..5 {
            pg.port = crate::free_port();
            if pg.spawn_and_wait() {
                return pg;
            }
            if !pg.log_tail().contains("already in use") {
                panic!("PostgreSQL did not start; its log:\n{}", pg.log_tail());
            }
        }
        panic!("PostgreSQL could not bind a free port after 5 attempts");
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A command for one of the server binaries, as the postgres user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres_user {
            let mut command = Command::new("setpriv");
            command
                .args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "--",
                ])
                .arg(path)
                .env("HOME", self.dir.path());
            command
        } else {
            Command::new(path)
        }
    }

    fn spawn_and_wait(&mut self) -> bool {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the postgres log");
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(self.dir.path())
            .args([
                "-F",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=128MB",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let port = self.port;
        let child = self.child.as_mut().expect("just set");
        wait_until(Duration::from_secs(30), || {
            is_running(child) && port_open(port) && pg_ready(port)
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the `postgres` database.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    pub fn database_url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a database and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.database_url(name)
    }

    /// Runs SQL with psql and returns its unaligned output; panics with psql's error.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .expect("run psql (install postgresql-client)");
        assert!(
            output.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_owned()
    }

    /// Fast shutdown (SIGINT): active transactions are rolled back.
    pub fn stop(&mut self) {
        self.end("INT");
    }

    /// SIGKILL of the postmaster: as close to a crash as a test gets.
    pub fn kill(&mut self) {
        self.end("KILL");
        // Orphaned backends keep the shared memory; they die when they notice.
        let port = self.port;
        wait_until(Duration::from_secs(10), || !port_open(port));
    }

    fn end(&mut self, how: &str) {
        if let Some(mut child) = self.child.take() {
            signal(&child, how);
            wait_exit(&mut child, Duration::from_secs(15));
            let port = self.port;
            wait_until(Duration::from_secs(10), || !port_open(port));
        }
    }

    /// Starts again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(self.data_dir().join("postmaster.pid"));
        assert!(
            self.spawn_and_wait(),
            "PostgreSQL did not restart; its log:\n{}",
            self.log_tail()
        );
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(is_running)
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log_path(), 40)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `SELECT 1` answers.
fn pg_ready(port: u16) -> bool {
    Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-At", "-c", "SELECT 1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            // Immediate shutdown: tests do not need a checkpoint.
            signal(&child, "QUIT");
            let mut child = child;
            wait_exit(&mut child, Duration::from_secs(5));
        }
    }
}
