//! Faults around the worker, with the worker as a real process: killed with SIGKILL
//! mid-run, PostgreSQL stopped under load, two workers at once. After each, every
//! accepted order is in the database exactly once and nothing was dead-lettered.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::{RunQueryDsl, sql_types::BigInt};
use nomnom_runtime::sql::{self, AnyConnection};
use nomnom_test_support::{NatsServer, Postgres, free_port};
use serde_json::Value;

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(url: &str, sql_text: &str) -> i64 {
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

struct Worker(Child);

impl Worker {
    fn start(nats: &NatsServer, database_url: &str) -> Worker {
        let child = Command::new(env!("CARGO_BIN_EXE_tpch-test-worker"))
            .env("NATS_URL", nats.url())
            .env("DATABASE_URL", database_url)
            .env("NOMNOM_WORKER_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("NOMNOM_BATCH_SIZE", "200")
            .env("NOMNOM_ACK_WAIT", "5s")
            .env("NOMNOM_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the worker");
        Worker(child)
    }

    fn kill(mut self) {
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
async fn post_orders(nats: &NatsServer, orders: &[Value]) -> i64 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let config = nats_api::ApiConfig {
        nats: nomnom_runtime::NatsConfig {
            url: nats.url(),
            ..Default::default()
        },
        ..Default::default()
    };
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
    for (n, chunk) in orders.chunks(500).enumerate() {
        let body: String = chunk.iter().map(|o| o.to_string() + "\n").collect();
        let reply = client
            .post(format!("{api}/api/ingest/batch/order"))
            .header("content-type", "application/x-ndjson")
            .header("idempotency-key", format!("orders-{n}"))
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

async fn wait_for(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_exactly_once(url: &str, orders: i64, items: i64) {
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

async fn dlq_len(nats: &NatsServer) -> u64 {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    match js.get_stream("MESSAGES_DLQ").await {
        Ok(mut stream) => stream.info().await.unwrap().state.messages,
        Err(_) => 0,
    }
}

const ORDERS: usize = 3_000;

async fn worker_killed_repeatedly(url: String) {
    let nats = NatsServer::start();
    let orders: Vec<Value> = tpch_data::orders(0.002).take(ORDERS).collect();
    let items = post_orders(&nats, &orders).await;

    // Kill the worker three times while it is writing, then let one finish.
    for threshold in [300, 1_000, 1_800] {
        let worker = Worker::start(&nats, &url);
        wait_for(Duration::from_secs(60), "progress", || {
            count(&url, "SELECT count(*) AS n FROM orders") >= threshold
        })
        .await;
        worker.kill();
    }
    let _worker = Worker::start(&nats, &url);
    wait_for(Duration::from_secs(120), "every order", || {
        count(&url, "SELECT count(*) AS n FROM orders") == ORDERS as i64
            && count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == ORDERS as i64
    })
    .await;
    assert_exactly_once(&url, ORDERS as i64, items);
    assert_eq!(dlq_len(&nats).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_repeatedly_persists_every_order_exactly_once_on_postgres() {
    let pg = Postgres::start();
    worker_killed_repeatedly(pg.create_database("killed")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_repeatedly_persists_every_order_exactly_once_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    worker_killed_repeatedly(format!(
        "sqlite://{}",
        dir.path().join("killed.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_loses_nothing_and_dead_letters_nothing() {
    let nats = NatsServer::start();
    let mut pg = Postgres::start();
    let url = pg.create_database("outage");
    let orders: Vec<Value> = tpch_data::orders(0.002).take(ORDERS).collect();
    let _worker = Worker::start(&nats, &url);
    let items = post_orders(&nats, &orders).await;
    wait_for(Duration::from_secs(60), "progress", || {
        count(&url, "SELECT count(*) AS n FROM orders") >= 200
    })
    .await;
    pg.stop();
    // Down for longer than the retry delays of max_deliver attempts would last.
    tokio::time::sleep(Duration::from_secs(12)).await;
    pg.restart();
    wait_for(
        Duration::from_secs(120),
        "every order after the outage",
        || count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == ORDERS as i64,
    )
    .await;
    assert_exactly_once(&url, ORDERS as i64, items);
    assert_eq!(dlq_len(&nats).await, 0);
}

async fn two_workers(url: String) {
    let nats = NatsServer::start();
    let orders: Vec<Value> = tpch_data::orders(0.002).take(ORDERS).collect();
    let items = post_orders(&nats, &orders).await;
    let _a = Worker::start(&nats, &url);
    let _b = Worker::start(&nats, &url);
    wait_for(Duration::from_secs(120), "every order", || {
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == ORDERS as i64
    })
    .await;
    assert_exactly_once(&url, ORDERS as i64, items);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_stream_exactly_once_on_postgres() {
    let pg = Postgres::start();
    two_workers(pg.create_database("two")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_stream_exactly_once_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    two_workers(format!("sqlite://{}", dir.path().join("two.db").display())).await;
}
