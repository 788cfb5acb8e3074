//! SIGTERM in every state the worker can wait in, with the worker as a real process and
//! real nats-server and PostgreSQL: NATS down at start or lost while running, JetStream
//! missing, the database down at start or lost mid-batch, the migration lock held by
//! another session, a write held up past the grace period. Each test gets the worker
//! into the state and checks it is there (its log, /health, /ready), sends SIGTERM and
//! expects exit status 0 well within the grace period; where there are messages, a new
//! worker then persists every one exactly once.

mod common;

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{
    LOCK_WAITERS, OTHER_SESSIONS, TableLock, assert_exactly_once, count, dlq_len, post_orders,
    wait_for,
};
use diesel::{Connection, PgConnection, RunQueryDsl};
use nomnom_test_support::{NatsServer, Postgres, free_port, nats_server_binary};
use serde_json::Value;

/// How long a worker may take to exit after SIGTERM in a waiting state: well under the
/// grace period (20 s by default), and far under what a wait for NATS or the database
/// would last.
const EXIT_WITHIN: Duration = Duration::from_secs(5);

/// The migrations' advisory lock (runtime/src/worker/migrate.rs).
const MIGRATION_LOCK: i64 = 7236423147236412;

/// A TPC-H worker process whose log (text, `info`) goes to a file the test reads.
struct Worker {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Worker {
    fn start(nats_url: &str, database_url: &str, settings: &[(&str, &str)]) -> Worker {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("worker.log");
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_tpch-test-worker"))
            .env("NATS_URL", nats_url)
            .env("DATABASE_URL", database_url)
            .env("NOMNOM_WORKER_LISTEN", format!("127.0.0.1:{port}"))
            .env("NOMNOM_BATCH_SIZE", "200")
            .env("NOMNOM_ACK_WAIT", "5s")
            .env("NOMNOM_LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .envs(settings.iter().copied())
            .stdout(Stdio::from(File::create(&log).unwrap()))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the worker");
        Worker {
            child: Some(child),
            port,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the log until it contains `line` (failing with the log if the worker exits
    /// or `within` passes first).
    async fn wait_log(&mut self, within: Duration, line: &str) {
        let deadline = Instant::now() + within;
        loop {
            if self.log().contains(line) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the worker exited ({status}) before logging {line:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not log {line:?} within {within:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Status and body of GET `path` on the health port.
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let reply = reqwest::get(format!("http://127.0.0.1:{}{path}", self.port))
            .await
            .ok()?;
        Some((reply.status().as_u16(), reply.text().await.ok()?))
    }

    /// While it waits, the worker answers /health and says on /ready why it is not ready.
    async fn assert_alive_but_not_ready(&self, because: &str) {
        let mut health = None;
        for _ in 0..100 {
            health = self.get("/health").await;
            if health.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(health.map(|(code, _)| code), Some(200), "{}", self.log());
        let (code, body) = self.get("/ready").await.expect("/ready answers");
        assert_eq!(code, 503, "{body}");
        assert!(body.contains(because), "/ready: {body}");
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.get("/ready").await.map(|(code, _)| code) != Some(200) {
            assert!(Instant::now() < deadline, "never ready:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM; the exit status and how long the worker took to exit. Fails the test if
    /// it is still running after `within` (and SIGKILLs it).
    fn terminate(&mut self, within: Duration) -> (ExitStatus, Duration) {
        self.stop_with("TERM", within)
    }

    /// Like [`Worker::terminate`], with `signal` (`TERM`, `INT`).
    fn stop_with(&mut self, signal: &str, within: Duration) -> (ExitStatus, Duration) {
        let sent = Instant::now();
        self.signal(signal);
        self.wait_exit(signal, sent, within)
    }

    fn signal(&self, signal: &str) {
        send_signal(self.child.as_ref().unwrap(), signal);
    }

    /// Waits for the worker to exit after SIG`signal`, sent at `sent`.
    fn wait_exit(
        &mut self,
        signal: &str,
        sent: Instant,
        within: Duration,
    ) -> (ExitStatus, Duration) {
        let mut child = self.child.take().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let took = sent.elapsed();
                eprintln!("worker exited {status} {took:?} after SIG{signal}");
                return (status, took);
            }
            if sent.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the worker was still running {within:?} after SIG{signal}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then exit 0 within [`EXIT_WITHIN`], and the log saying it stopped on it.
    fn terminate_cleanly(&mut self) -> Duration {
        let (status, took) = self.terminate(EXIT_WITHIN);
        assert!(
            status.success(),
            "exit status after SIGTERM: {status}\n{}",
            self.log()
        );
        assert!(self.log().contains("SIGTERM received"), "{}", self.log());
        took
    }

    /// Waits until the worker is ready (its migrations applied), then stops it cleanly.
    async fn terminate_cleanly_when_ready(mut self) {
        self.wait_ready().await;
        self.terminate_cleanly();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn send_signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal}");
}

/// A NATS URL nothing listens on.
fn nowhere() -> String {
    format!("nats://127.0.0.1:{}", free_port())
}

fn orders(n: usize) -> Vec<Value> {
    tpch_data::orders(0.002).take(n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_nats_is_down_at_start_exits_zero() {
    let pg = Postgres::start();
    let url = pg.create_database("nats_down");
    let mut worker = Worker::start(&nowhere(), &url, &[]);
    let mut interrupted = Worker::start(&nowhere(), &url, &[]);
    for worker in [&mut worker, &mut interrupted] {
        worker
            .wait_log(Duration::from_secs(30), "NATS unreachable; waiting for it")
            .await;
        worker
            .assert_alive_but_not_ready("\"nats\":\"disconnected\"")
            .await;
    }
    worker.terminate_cleanly();
    // Ctrl-C the same.
    let (status, _) = interrupted.stop_with("INT", EXIT_WITHIN);
    assert!(status.success(), "exit status after SIGINT: {status}");
    assert!(interrupted.log().contains("SIGINT received"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waiting_for_nats_starts_once_it_is_up() {
    let pg = Postgres::start();
    let url = pg.create_database("nats_late");
    let mut nats = NatsServer::start();
    nats.stop();
    let mut worker = Worker::start(&nats.url(), &url, &[]);
    worker
        .wait_log(Duration::from_secs(30), "NATS unreachable; waiting for it")
        .await;
    nats.restart();
    worker.wait_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_nats_is_lost_exits_zero_and_loses_nothing() {
    const ORDERS: usize = 1_000;
    let mut nats = NatsServer::start();
    let pg = Postgres::start();
    let url = pg.create_database("nats_lost");
    let orders = orders(ORDERS);
    let items = post_orders(&nats, &orders).await;
    let mut worker = Worker::start(&nats.url(), &url, &[]);
    wait_for(Duration::from_secs(60), "progress", || {
        count(&url, "SELECT count(*) AS n FROM orders") >= 200
    })
    .await;
    nats.stop();
    worker
        .wait_log(
            Duration::from_secs(60),
            "JetStream unavailable; waiting for it",
        )
        .await;
    worker
        .assert_alive_but_not_ready("\"nats\":\"disconnected\"")
        .await;
    worker.terminate_cleanly();

    nats.restart();
    let mut next = Worker::start(&nats.url(), &url, &[]);
    wait_for(Duration::from_secs(120), "every order", || {
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == ORDERS as i64
    })
    .await;
    assert_exactly_once(&url, ORDERS as i64, items);
    assert_eq!(dlq_len(&nats).await, 0);
    next.terminate_cleanly();
}

/// A nats-server without JetStream on a free port: the worker connects, and every
/// JetStream request goes unanswered.
struct PlainNats(Child, u16);

impl PlainNats {
    fn start() -> PlainNats {
        let port = free_port();
        let child = Command::new(nats_server_binary())
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        PlainNats(child, port)
    }
}

impl Drop for PlainNats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_jetstream_is_missing_exits_zero() {
    let nats = PlainNats::start();
    let pg = Postgres::start();
    let url = pg.create_database("no_jetstream");
    let mut worker = Worker::start(&format!("nats://127.0.0.1:{}", nats.1), &url, &[]);
    worker
        .wait_log(
            Duration::from_secs(30),
            "JetStream unavailable; waiting for it",
        )
        .await;
    worker
        .assert_alive_but_not_ready("\"worker\":\"starting\"")
        .await;
    worker.terminate_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_database_is_down_at_start_exits_zero() {
    let nats = NatsServer::start();
    let mut pg = Postgres::start();
    let url = pg.create_database("db_down");
    pg.stop();
    let mut waiting = Worker::start(&nats.url(), &url, &[]);
    let mut terminated = Worker::start(&nats.url(), &url, &[]);
    for worker in [&mut waiting, &mut terminated] {
        worker
            .wait_log(
                Duration::from_secs(30),
                "database unreachable; waiting for it",
            )
            .await;
        worker
            .assert_alive_but_not_ready("\"database\":\"unavailable\"")
            .await;
    }
    terminated.terminate_cleanly();
    // The other one was waiting, not failing: it starts once the database is back.
    pg.restart();
    waiting.wait_ready().await;
    waiting.terminate_cleanly();
}

/// A transaction holding the migrations' advisory lock, as a replica migrating would.
struct MigrationLock(PgConnection);

impl MigrationLock {
    fn take(url: &str) -> MigrationLock {
        let mut conn = PgConnection::establish(url).expect("connect for the lock");
        diesel::sql_query("BEGIN").execute(&mut conn).unwrap();
        diesel::sql_query(format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            .execute(&mut conn)
            .unwrap();
        MigrationLock(conn)
    }

    fn release(mut self) {
        diesel::sql_query("COMMIT").execute(&mut self.0).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_another_process_holds_the_migration_lock_exits_zero() {
    let nats = NatsServer::start();
    let pg = Postgres::start();
    let url = pg.create_database("migration_lock");
    let lock = MigrationLock::take(&url);
    let mut worker = Worker::start(&nats.url(), &url, &[]);
    worker
        .wait_log(
            Duration::from_secs(30),
            "another process is running the migrations (it holds their lock); waiting for it",
        )
        .await;
    worker
        .assert_alive_but_not_ready("\"worker\":\"starting\"")
        .await;
    worker.terminate_cleanly();
    // It left nothing behind: nothing was migrated, and a worker started once the lock
    // is released migrates and runs.
    assert_eq!(
        count(
            &url,
            "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'orders'"
        ),
        0
    );
    let mut next = Worker::start(&nats.url(), &url, &[]);
    next.wait_log(
        Duration::from_secs(30),
        "another process is running the migrations",
    )
    .await;
    lock.release();
    next.wait_ready().await;
    next.terminate_cleanly();
}

/// The database stopped under a worker parked in its transaction: the write fails, the
/// batch is naked with a backoff delay and the worker waits for the database, pausing
/// between attempts. SIGTERM there exits 0, and the naked batch is not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_after_the_database_was_lost_mid_batch_exits_zero_and_loses_nothing() {
    const ORDERS: usize = 600;
    let nats = NatsServer::start();
    let mut pg = Postgres::start();
    let url = pg.create_database("db_lost");
    let mut worker = Worker::start(&nats.url(), &url, &[("NOMNOM_BACKOFF", "2s")]);
    worker.wait_ready().await;
    let lock = TableLock::take(&url, "orders");
    let orders = orders(ORDERS);
    let items = post_orders(&nats, &orders).await;
    wait_for(
        Duration::from_secs(30),
        "the worker parked mid-batch",
        || count(&url, LOCK_WAITERS) >= 1,
    )
    .await;
    pg.stop();
    drop(lock); // its session ended with the server
    worker
        .wait_log(Duration::from_secs(30), "transient failure; retrying")
        .await;
    worker
        .assert_alive_but_not_ready("\"database\":\"unavailable\"")
        .await;
    worker.terminate_cleanly();
    // A fast shutdown cuts every session at once: the lock's session can end first, and
    // the parked transaction then commit before its own session is cut (its client sees
    // the connection lost, and retries). So at most that batch is in; a redelivery of it
    // is skipped by its status rows, which the exactly-once check below proves.
    let committed = count_after_restart(&mut pg, &url);
    assert!(
        committed < ORDERS as i64,
        "at most the parked batch committed: {committed} of {ORDERS}"
    );

    let mut next = Worker::start(&nats.url(), &url, &[]);
    wait_for(Duration::from_secs(120), "every order", || {
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == ORDERS as i64
    })
    .await;
    assert_exactly_once(&url, ORDERS as i64, items);
    assert_eq!(dlq_len(&nats).await, 0);
    next.terminate_cleanly();
}

fn count_after_restart(pg: &mut Postgres, url: &str) -> i64 {
    pg.restart();
    count(url, "SELECT count(*) AS n FROM nomnom_message_status")
}

/// SIGTERM while the batch's transaction is held up (a table lock): the worker waits for
/// it for its grace period, then exits 0 without acknowledging anything; the batch is
/// redelivered and persisted once by the next worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_write_waits_out_the_grace_period_and_acks_nothing() {
    const ORDERS: usize = 600;
    let nats = NatsServer::start();
    let pg = Postgres::start();
    let url = pg.create_database("mid_write");
    let mut worker = Worker::start(&nats.url(), &url, &[("NOMNOM_SHUTDOWN_GRACE", "2s")]);
    worker.wait_ready().await;
    let lock = TableLock::take(&url, "orders");
    let orders = orders(ORDERS);
    let items = post_orders(&nats, &orders).await;
    wait_for(
        Duration::from_secs(30),
        "the worker parked mid-batch",
        || count(&url, LOCK_WAITERS) >= 1,
    )
    .await;
    let (status, took) = worker.terminate(EXIT_WITHIN);
    assert!(status.success(), "{status}\n{}", worker.log());
    assert!(
        took >= Duration::from_secs(2),
        "exited after {took:?}, before its 2 s grace period"
    );
    assert!(
        worker.log().contains("exiting without acknowledging it"),
        "{}",
        worker.log()
    );
    lock.release();
    let mut next = Worker::start(&nats.url(), &url, &[]);
    wait_for(Duration::from_secs(120), "every order", || {
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == ORDERS as i64
    })
    .await;
    assert_exactly_once(&url, ORDERS as i64, items);
    assert_eq!(dlq_len(&nats).await, 0);
    next.terminate_cleanly();
}

/// Messages the worker has been delivered and has not acknowledged, naked or terminated.
async fn ack_pending(nats: &NatsServer) -> u64 {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("MESSAGES").await.unwrap();
    stream
        .consumer_info("workers")
        .await
        .unwrap()
        .num_ack_pending as u64
}

/// Waits until the worker holds more messages than one batch (200): a second batch,
/// fetched while the first is written.
async fn wait_for_a_batch_behind(nats: &NatsServer, worker: &Worker) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = ack_pending(nats).await;
        if held > 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no second batch fetched behind the write ({held} messages held):\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A worker started with `settings` on a stream already holding 600 orders, parked in
/// its first batch's transaction by a lock on `orders`, with a second batch fetched and
/// parsed behind it. Returns the worker, the lock and the orders' line items.
async fn parked_with_a_batch_behind(
    nats: &NatsServer,
    url: &str,
    settings: &[(&str, &str)],
) -> (Worker, TableLock, i64) {
    // Every order is in the stream before the worker fetches: its first batch and the
    // one behind are then full batches (a first worker migrates the tables to lock).
    Worker::start(&nats.url(), url, &[])
        .terminate_cleanly_when_ready()
        .await;
    let lock = TableLock::take(url, "orders");
    let items = post_orders(nats, &orders(ORDERS_BEHIND)).await;
    let worker = Worker::start(&nats.url(), url, settings);
    wait_for(
        Duration::from_secs(30),
        "the worker parked mid-batch",
        || count(url, LOCK_WAITERS) >= 1,
    )
    .await;
    wait_for_a_batch_behind(nats, &worker).await;
    (worker, lock, items)
}

/// Orders in the tests of a batch waiting behind the write: three batches of 200.
const ORDERS_BEHIND: usize = 600;

/// SIGTERM while one batch is written (held up by a table lock) and the next one,
/// already fetched and parsed, waits behind it: the batch being written commits within
/// the grace period, the one behind is naked, not dropped, and the worker exits 0. With
/// an ack_wait of a minute, only a nak lets the next worker persist every order well
/// before that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_batch_waiting_behind_the_write_naks_it_and_loses_nothing() {
    const ORDERS: usize = ORDERS_BEHIND;
    let long_ack_wait = [("NOMNOM_ACK_WAIT", "60s")];
    let nats = NatsServer::start();
    let pg = Postgres::start();
    let url = pg.create_database("batch_behind");
    let (mut worker, lock, items) = parked_with_a_batch_behind(&nats, &url, &long_ack_wait).await;
    let sent = Instant::now();
    worker.signal("TERM");
    worker
        .wait_log(Duration::from_secs(10), "finishing the batch in hand")
        .await;
    lock.release();
    let (status, _) = worker.wait_exit("TERM", sent, Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", worker.log());
    let log = worker.log();
    assert!(
        log.contains("handing back the batch waiting behind the write"),
        "{log}"
    );
    let committed = count(&url, "SELECT count(*) AS n FROM nomnom_message_status");
    assert!(
        committed > 0 && committed < ORDERS as i64,
        "the batch in hand commits, and only it: {committed} status rows\n{log}"
    );

    let mut next = Worker::start(&nats.url(), &url, &long_ack_wait);
    wait_for(
        Duration::from_secs(40),
        "every order, well before ack_wait",
        || count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == ORDERS as i64,
    )
    .await;
    assert_exactly_once(&url, ORDERS as i64, items);
    assert_eq!(dlq_len(&nats).await, 0);
    next.terminate_cleanly();
}

/// The database lost while one batch is written and the next waits behind it: the
/// written one is naked with its backoff, the one behind is held (kept alive) until the
/// database is back, and then written; nothing is lost or dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_lost_with_a_batch_waiting_behind_the_write_loses_nothing() {
    database_lost_with_a_batch_behind("outage_behind", 1).await;
}

/// The same with two writers, two batches in flight: each connection is restored once
/// the database is back (one left broken would fail every write on it until its
/// messages were dead-lettered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_lost_under_two_writers_loses_nothing() {
    database_lost_with_a_batch_behind("outage_two_writers", 2).await;
}

async fn database_lost_with_a_batch_behind(database: &str, writers: usize) {
    const ORDERS: usize = ORDERS_BEHIND;
    let nats = NatsServer::start();
    let mut pg = Postgres::start();
    let url = pg.create_database(database);
    let writers_setting = writers.to_string();
    let settings = [
        ("NOMNOM_BACKOFF", "2s"),
        ("NOMNOM_WRITERS", writers_setting.as_str()),
    ];
    let (mut worker, lock, items) = parked_with_a_batch_behind(&nats, &url, &settings).await;
    pg.stop();
    drop(lock); // its session ended with the server
    worker
        .wait_log(Duration::from_secs(30), "transient failure; retrying")
        .await;
    worker
        .wait_log(
            Duration::from_secs(30),
            "database unavailable; holding the next batch until it is back",
        )
        .await;
    pg.restart();
    wait_for(Duration::from_secs(120), "every order", || {
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == ORDERS as i64
    })
    .await;
    assert_exactly_once(&url, ORDERS as i64, items);
    assert_eq!(dlq_len(&nats).await, 0);
    // Every writer's connection is open again, not only the one that found the database.
    wait_for(Duration::from_secs(10), "a session per writer", || {
        count(&url, OTHER_SESSIONS) == writers as i64
    })
    .await;
    worker.terminate_cleanly();
}
