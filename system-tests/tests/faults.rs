//! Faults around the worker, with the worker as a real process: killed with SIGKILL
//! mid-run, PostgreSQL stopped under load, two workers at once. After each, every
//! accepted order is in the database exactly once and nothing was dead-lettered.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Worker, assert_exactly_once, count, dlq_len, post_orders, wait_for};
use nomnom_test_support::{NatsServer, Postgres};
use serde_json::Value;

const ORDERS: usize = 3_000;

async fn worker_killed_repeatedly(url: String) {
    const ORDERS: usize = 10_000;
    let nats = NatsServer::start();
    let orders: Vec<Value> = tpch_data::orders(0.01).take(ORDERS).collect();
    let items = post_orders(&nats, &orders).await;

    // Kill the worker three times (six in the full run) while it is writing, then let
    // one finish.
    let thresholds: &[i64] = if common::full_reliability_run() {
        &[1_000, 2_500, 4_000, 5_500, 7_000, 8_500]
    } else {
        &[1_000, 4_000, 7_000]
    };
    for &threshold in thresholds {
        let worker = Worker::start(&nats, &url);
        wait_for(Duration::from_secs(60), "progress", || {
            count(&url, "SELECT count(*) AS n FROM orders") >= threshold
        })
        .await;
        worker.kill();
    }
    let _worker = Worker::start(&nats, &url);
    wait_for(Duration::from_secs(240), "every order", || {
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
    let (before, during) = orders.split_at(ORDERS / 2);
    let mut items = post_orders(&nats, before).await;
    wait_for(Duration::from_secs(60), "progress", || {
        count(&url, "SELECT count(*) AS n FROM orders") >= 200
    })
    .await;
    pg.stop();
    // Ingest goes on while the database is down.
    items += post_orders(&nats, during).await;
    // Down for 30 s (a minute with NOMNOM_RELIABILITY=full, as scripts/reliability.sh
    // runs it): longer than the retry delays of max_deliver attempts would last. The
    // sleep is the fault's length, not a synchronisation.
    tokio::time::sleep(common::outage()).await;
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

async fn several_workers(url: String, workers: usize) {
    let nats = NatsServer::start();
    let orders: Vec<Value> = tpch_data::orders(0.002).take(ORDERS).collect();
    let items = post_orders(&nats, &orders).await;
    let _workers: Vec<Worker> = (0..workers).map(|_| Worker::start(&nats, &url)).collect();
    wait_for(Duration::from_secs(120), "every order", || {
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == ORDERS as i64
    })
    .await;
    assert_exactly_once(&url, ORDERS as i64, items);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_stream_exactly_once_on_postgres() {
    let pg = Postgres::start();
    several_workers(pg.create_database("two"), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_stream_exactly_once_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    several_workers(
        format!("sqlite://{}", dir.path().join("two.db").display()),
        2,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_batch_in_hand_and_exits_zero() {
    let nats = NatsServer::start();
    let pg = Postgres::start();
    let url = pg.create_database("term");
    let orders: Vec<Value> = tpch_data::orders(0.002).take(ORDERS).collect();
    let items = post_orders(&nats, &orders).await;
    let worker = Worker::start(&nats, &url);
    wait_for(Duration::from_secs(60), "progress", || {
        count(&url, "SELECT count(*) AS n FROM orders") >= 500
    })
    .await;
    let status = worker.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    let _next = Worker::start(&nats, &url);
    wait_for(Duration::from_secs(120), "every order", || {
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == ORDERS as i64
    })
    .await;
    assert_exactly_once(&url, ORDERS as i64, items);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_consumer_is_recreated_and_nothing_is_written_twice() {
    let nats = NatsServer::start();
    let pg = Postgres::start();
    let url = pg.create_database("consumer");
    let orders: Vec<Value> = tpch_data::orders(0.002).take(1_000).collect();
    let _worker = Worker::start(&nats, &url);
    let first = post_orders(&nats, &orders[..500]).await;
    wait_for(Duration::from_secs(60), "the first half", || {
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == 500
    })
    .await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.delete_consumer_from_stream("workers", "MESSAGES")
        .await
        .unwrap();
    // The recreated consumer starts from the beginning of the stream: the first half comes
    // again and must be recognised as already persisted.
    let second = post_orders(&nats, &orders[500..]).await;
    wait_for(Duration::from_secs(60), "the second half", || {
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == 1_000
    })
    .await;
    assert_exactly_once(&url, 1_000, first + second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_database_refuses_are_dead_lettered_alone() {
    let nats = NatsServer::start();
    let pg = Postgres::start();
    let url = pg.create_database("refused");
    let migrated = Command::new(env!("CARGO_BIN_EXE_tpch-test-worker"))
        .arg("--migrate-only")
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(migrated.success(), "--migrate-only exits 0");
    // A rule the parser does not know: the database refuses some rows of every batch.
    pg.psql(
        "refused",
        "ALTER TABLE orders ADD CONSTRAINT modest CHECK (o_totalprice < 200000)",
    );
    let orders: Vec<Value> = tpch_data::orders(0.002).take(1_000).collect();
    let refused = orders
        .iter()
        .filter(|o| o["o_totalprice"].as_str().unwrap().parse::<f64>().unwrap() >= 200000.0)
        .count() as i64;
    assert!(
        refused > 10 && refused < 500,
        "{refused} orders over the limit"
    );
    let _worker = Worker::start(&nats, &url);
    post_orders(&nats, &orders).await;
    wait_for(Duration::from_secs(60), "every order decided", || {
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == 1_000
    })
    .await;
    assert_eq!(
        count(&url, "SELECT count(*) AS n FROM orders"),
        1_000 - refused
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) AS n FROM nomnom_message_status WHERE status = 'dead_lettered' AND error LIKE '%modest%'"
        ),
        refused,
        "exactly the refused orders are dead-lettered, with the database's reason"
    );
    assert_eq!(dlq_len(&nats).await, refused as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_share_the_stream_exactly_once_on_postgres() {
    let pg = Postgres::start();
    several_workers(pg.create_database("four"), 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_serves_health_readiness_and_metrics() {
    let nats = NatsServer::start();
    let pg = Postgres::start();
    let url = pg.create_database("probes");
    let worker = Worker::start(&nats, &url);
    let base = format!("http://127.0.0.1:{}", worker.1);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{base}/ready")).send().await
            && r.status() == 200
        {
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["database"], "ok");
            assert_eq!(body["nats"], "connected");
            break;
        }
        assert!(Instant::now() < deadline, "worker never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        client
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The image's HEALTHCHECK: the worker binary probes its own listen address.
    for path in ["/health", "/ready"] {
        let probe = Command::new(env!("CARGO_BIN_EXE_tpch-test-worker"))
            .env_clear()
            .env("NOMNOM_WORKER_LISTEN", format!("0.0.0.0:{}", worker.1))
            .args(["healthcheck", path])
            .output()
            .unwrap();
        assert!(probe.status.success(), "{path}: {probe:?}");
    }
    let orders: Vec<Value> = tpch_data::orders(0.002).take(50).collect();
    post_orders(&nats, &orders).await;
    wait_for(Duration::from_secs(30), "50 orders", || {
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == 50
    })
    .await;
    // Acknowledgements (and their counter) follow the commit: poll for them.
    let mut metrics = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !metrics.contains("worker_messages_persisted_total 50") {
        assert!(
            Instant::now() < deadline,
            "persisted counter never reached 50:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        metrics = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    assert!(
        metrics.contains("worker_messages_consumed_total 50"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pipeline_end_to_end_latency_seconds_bucket"),
        "{metrics}"
    );
}
