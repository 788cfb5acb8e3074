//! Helpers shared by the TPC-H end-to-end tests.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nomnom_test_support::{NatsServer, free_port};
use serde_json::Value;

use diesel::{RunQueryDsl, sql_types::BigInt};
use nomnom_runtime::sql::{self, AnyConnection};

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// `SELECT count(*) AS n …` on either database; -1 if it cannot be asked (yet).
pub fn count(url: &str, sql_text: &str) -> i64 {
    let Ok(conn) = sql::connect(url) else {
        return -1;
    };
    match conn {
        AnyConnection::Postgresql(mut pg) => {
            diesel::sql_query(sql_text).get_result::<Count>(&mut pg)
        }
        AnyConnection::Sqlite(mut lite) => {
            diesel::sql_query(sql_text).get_result::<Count>(&mut lite)
        }
    }
    .map(|c| c.n)
    .unwrap_or(-1)
}

#[derive(diesel::QueryableByName)]
struct Line {
    #[diesel(sql_type = diesel::sql_types::Text)]
    line: String,
}

/// `SELECT … AS line …` on either database: each row's text, in the query's order.
pub fn lines(url: &str, sql_text: &str) -> Vec<String> {
    let rows: Vec<Line> = match sql::connect(url).unwrap() {
        AnyConnection::Postgresql(mut pg) => diesel::sql_query(sql_text).load(&mut pg),
        AnyConnection::Sqlite(mut lite) => diesel::sql_query(sql_text).load(&mut lite),
    }
    .unwrap_or_else(|e| panic!("{sql_text}: {e}"));
    rows.into_iter().map(|row| row.line).collect()
}

/// Polls `check` every 50 ms; whether it held within `within`.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

/// Like [`eventually`], failing the test with `what` on time-out.
pub async fn wait_for(within: Duration, what: &str, check: impl FnMut() -> bool) {
    assert!(
        eventually(within, check).await,
        "timed out waiting for {what}"
    );
}

/// `LOCK TABLE … IN ACCESS EXCLUSIVE MODE` held in an open transaction until released:
/// a worker writing to the table waits inside its own transaction, after its status claim.
pub struct TableLock(diesel::PgConnection);

impl TableLock {
    pub fn take(url: &str, table: &str) -> TableLock {
        use diesel::Connection;
        let mut conn = diesel::PgConnection::establish(url).expect("connect for the lock");
        diesel::sql_query("BEGIN").execute(&mut conn).unwrap();
        diesel::sql_query(format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            .execute(&mut conn)
            .unwrap();
        TableLock(conn)
    }

    pub fn release(mut self) {
        diesel::sql_query("COMMIT").execute(&mut self.0).unwrap();
    }
}

/// Sessions waiting on a lock (`count`).
pub const LOCK_WAITERS: &str =
    "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock'";

/// Client sessions but the one asking (`count`).
pub const OTHER_SESSIONS: &str = "SELECT count(*) AS n FROM pg_stat_activity \
     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()";

/// A TPC-H worker process; killed when dropped.
pub struct Worker(pub Child, pub u16);

impl Worker {
    pub fn start(nats: &NatsServer, database_url: &str) -> Worker {
        Worker::start_with(nats, database_url, &[])
    }

    /// Starts a worker with `settings` (environment variables) over the tests' defaults.
    pub fn start_with(nats: &NatsServer, database_url: &str, settings: &[(&str, &str)]) -> Worker {
        Worker::start_on(&nats.url(), database_url, settings)
    }

    /// Like [`Worker::start_with`], for a NATS URL (a proxy, a cluster's servers).
    pub fn start_on(nats_url: &str, database_url: &str, settings: &[(&str, &str)]) -> Worker {
        Worker::spawn(nats_url, database_url, settings, Stdio::null())
    }

    /// Like [`Worker::start_with`], with the worker's log lines (standard output) written
    /// to `log`.
    pub fn start_logging_to(
        nats: &NatsServer,
        database_url: &str,
        settings: &[(&str, &str)],
        log: &std::path::Path,
    ) -> Worker {
        let file = std::fs::File::create(log).expect("create the worker's log file");
        Worker::spawn(&nats.url(), database_url, settings, file.into())
    }

    fn spawn(
        nats_url: &str,
        database_url: &str,
        settings: &[(&str, &str)],
        stdout: Stdio,
    ) -> Worker {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_tpch-test-worker"))
            .env("NATS_URL", nats_url)
            .env("DATABASE_URL", database_url)
            .env("NOMNOM_WORKER_LISTEN", format!("127.0.0.1:{port}"))
            .env("NOMNOM_BATCH_SIZE", "200")
            .env("NOMNOM_ACK_WAIT", "5s")
            .env("NOMNOM_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .envs(settings.iter().copied())
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the worker");
        Worker(child, port)
    }

    pub fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts nats-api in-process and posts `orders` as NDJSON batches; returns line items sent.
pub async fn post_orders(nats: &NatsServer, orders: &[Value]) -> i64 {
    let api = start_api(nats).await;
    let client = reqwest::Client::new();
    let batch_key = uuid::Uuid::now_v7();
    for (n, chunk) in orders.chunks(500).enumerate() {
        let body: String = chunk.iter().map(|o| o.to_string() + "\n").collect();
        let reply = client
            .post(format!("{api}/api/ingest/batch/order"))
            .header("content-type", "application/x-ndjson")
            .header("idempotency-key", format!("{batch_key}-{n}"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 202);
    }
    orders
        .iter()
        .map(|o| o["lineitems"].as_array().unwrap().len() as i64)
        .sum()
}

/// Starts nats-api in-process on a free port; returns its base URL once it is ready.
pub async fn start_api(nats: &NatsServer) -> String {
    start_api_with(nats_api::ApiConfig {
        nats: nomnom_runtime::NatsConfig {
            url: nats.url(),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
}

/// Starts nats-api in-process with `config` (its listen address is ignored).
pub async fn start_api_with(config: nats_api::ApiConfig) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(nats_api::serve_on(listener, config, std::future::pending()));
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while client
        .get(format!("{api}/ready"))
        .send()
        .await
        .map(|r| r.status())
        .ok()
        != Some(reqwest::StatusCode::OK)
    {
        assert!(Instant::now() < deadline, "nats-api not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    api
}

pub fn assert_exactly_once(url: &str, orders: i64, items: i64) {
    assert_eq!(count(url, "SELECT count(*) AS n FROM orders"), orders);
    assert_eq!(count(url, "SELECT count(*) AS n FROM lineitem"), items);
    assert_eq!(
        count(
            url,
            "SELECT count(*) AS n FROM nomnom_message_status WHERE status = 'persisted'"
        ),
        orders,
        "each message recorded once"
    );
    assert_eq!(
        count(
            url,
            "SELECT count(*) AS n FROM nomnom_message_status WHERE status <> 'persisted'"
        ),
        0,
        "nothing dead-lettered"
    );
}

pub async fn dlq_len(nats: &NatsServer) -> u64 {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    match js.get_stream("MESSAGES_DLQ").await {
        Ok(mut stream) => stream.info().await.unwrap().state.messages,
        Err(_) => 0,
    }
}

impl Worker {
    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `scripts/quickstart.sh` as a newcomer would, with its state in `state`, free
/// ports and SQLite (no `DATABASE_URL`), then `env` on top of that.
pub fn run_quickstart(
    state: &std::path::Path,
    env: &[(&str, String)],
    args: &[&str],
) -> std::process::Output {
    Command::new("bash")
        .arg(nomnom_test_support::workspace_root().join("scripts/quickstart.sh"))
        .args(args)
        .env("NOMNOM_STATE_DIR", state)
        .env("NOMNOM_NATS_PORT", free_port().to_string())
        .env("NOMNOM_NATS_MONITOR_PORT", free_port().to_string())
        .env("NOMNOM_API_PORT", free_port().to_string())
        .env("NOMNOM_WORKER_PORT", free_port().to_string())
        .env_remove("DATABASE_URL")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run scripts/quickstart.sh")
}

/// The quickstart removes its pid files once it has stopped what it started.
pub fn assert_nothing_left_running(state: &std::path::Path) {
    for name in ["nats-server", "nats-api", "tpch-worker"] {
        assert!(
            !state.join(format!("{name}.pid")).exists(),
            "{name} left running"
        );
    }
}

impl Worker {
    /// Polls `/ready` until the worker has migrated and connected.
    pub async fn wait_ready(&self) {
        let url = format!("http://127.0.0.1:{}/ready", self.1);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(reply) = client.get(&url).send().await
                && reply.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "worker never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of counter `name` on `/metrics` (0 when not yet recorded).
    pub async fn counter(&self, name: &str) -> u64 {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.1))
            .await
            .expect("worker metrics")
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the worker process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }
}

/// Whether the slow, full form of the reliability scenarios runs (`scripts/reliability.sh`
/// sets `NOMNOM_RELIABILITY=full`); CI runs the quick form.
pub fn full_reliability_run() -> bool {
    std::env::var("NOMNOM_RELIABILITY").is_ok_and(|v| v == "full")
}

/// How long a dependency stays down in an outage scenario.
pub fn outage() -> Duration {
    Duration::from_secs(if full_reliability_run() { 60 } else { 30 })
}
