//! The worker stopped at the exact points where a crash could lose or duplicate work,
//! with real processes. A table lock held by the test parks the worker inside its
//! transaction; a TCP proxy between the worker and NATS holds its acknowledgements. After
//! each scenario every accepted order is in PostgreSQL exactly once and nothing was
//! dead-lettered.

mod common;

use std::time::{Duration, Instant};

use common::{
    LOCK_WAITERS, OTHER_SESSIONS, TableLock, Worker, assert_exactly_once, count, dlq_len,
    post_orders, wait_for,
};
use nomnom_test_support::{NatsServer, Postgres, PostgresOptions, TcpProxy};
use serde_json::Value;

const ORDERS: usize = 300;

async fn consumer_info(nats: &NatsServer) -> async_nats::jetstream::consumer::Info {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream("workers", "MESSAGES")
        .await
        .unwrap();
    consumer.info().await.unwrap().clone()
}

fn orders() -> Vec<Value> {
    tpch_data::orders(0.002).take(ORDERS).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_between_commit_and_ack_writes_nothing_twice() {
    let nats = NatsServer::start();
    let pg = Postgres::start();
    let url = pg.create_database("after_commit");
    let proxy = TcpProxy::start(nats.port());
    let proxied = format!("nats://127.0.0.1:{}", proxy.port());
    let worker = Worker::start_on(&proxied, &url, &[]);
    worker.wait_ready().await;

    // Park the worker in its first batch's transaction, then hold everything it sends
    // to NATS (acks included) and let the transaction commit.
    let lock = TableLock::take(&url, "orders");
    let items = post_orders(&nats, &orders()).await;
    wait_for(
        Duration::from_secs(30),
        "the worker waiting on the lock",
        || count(&url, LOCK_WAITERS) >= 1,
    )
    .await;
    proxy.hold_upstream();
    lock.release();
    wait_for(Duration::from_secs(30), "the first batch committed", || {
        count(&url, "SELECT count(*) AS n FROM orders") > 0
    })
    .await;
    worker.kill();
    proxy.sever();

    let committed = count(&url, "SELECT count(*) AS n FROM nomnom_message_status");
    let info = consumer_info(&nats).await;
    assert!(
        info.num_ack_pending as i64 >= committed,
        "the committed batch ({committed}) must still be unacknowledged: {} pending",
        info.num_ack_pending
    );

    let next = Worker::start(&nats, &url);
    wait_for(Duration::from_secs(120), "every order", || {
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == ORDERS as i64
    })
    .await;
    // The committed batch comes back after ack_wait: recognised by its status rows
    // and acknowledged, not written again.
    wait_for_counter(&next, "worker_messages_skipped_total", committed as u64).await;
    assert_exactly_once(&url, ORDERS as i64, items);
    assert_eq!(dlq_len(&nats).await, 0);
}

/// Polls the worker's counter `name` until it reaches `at_least`.
async fn wait_for_counter(worker: &Worker, name: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let value = worker.counter(name).await;
        if value >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {value}, expected at least {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_transaction_leaves_nothing_half_written() {
    let nats = NatsServer::start();
    let pg = Postgres::start();
    let url = pg.create_database("mid_transaction");
    let worker = Worker::start(&nats, &url);
    worker.wait_ready().await;

    let lock = TableLock::take(&url, "orders");
    let items = post_orders(&nats, &orders()).await;
    wait_for(
        Duration::from_secs(30),
        "the worker waiting on the lock",
        || count(&url, LOCK_WAITERS) >= 1,
    )
    .await;
    // Its status claims are written, its order rows not yet: kill it there.
    worker.kill();
    lock.release();
    // PostgreSQL rolls the orphaned transaction back when it finds the client gone.
    wait_for(
        Duration::from_secs(30),
        "the killed worker's session ended",
        || count(&url, OTHER_SESSIONS) == 0,
    )
    .await;
    assert_eq!(count(&url, "SELECT count(*) AS n FROM orders"), 0);
    assert_eq!(count(&url, "SELECT count(*) AS n FROM lineitem"), 0);
    assert_eq!(
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status"),
        0,
        "no status claim survives the rollback"
    );

    let _next = Worker::start(&nats, &url);
    wait_for(Duration::from_secs(120), "every order", || {
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == ORDERS as i64
    })
    .await;
    assert_exactly_once(&url, ORDERS as i64, items);
    assert_eq!(dlq_len(&nats).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_ack_wait_while_another_runs_writes_once() {
    let nats = NatsServer::start();
    let pg = Postgres::start();
    let url = pg.create_database("paused");
    let short_ack_wait = [("NOMNOM_ACK_WAIT", "2s")];
    let paused = Worker::start_with(&nats, &url, &short_ack_wait);
    paused.wait_ready().await;

    // The first worker stops (SIGSTOP) inside its transaction, after its claims and
    // with its order rows written but not committed, and sends no more progress.
    let lock = TableLock::take(&url, "orders");
    let items = post_orders(&nats, &orders()).await;
    wait_for(
        Duration::from_secs(30),
        "the worker waiting on the lock",
        || count(&url, LOCK_WAITERS) >= 1,
    )
    .await;
    paused.signal("STOP");
    lock.release();
    // Its session takes the lock and runs the statement it was waiting on, then waits
    // for the stopped client.
    wait_for(
        Duration::from_secs(30),
        "the paused worker's statement done",
        || count(&url, LOCK_WAITERS) == 0,
    )
    .await;

    // Past ack_wait its messages go to the second worker, whose claims wait on the
    // first one's uncommitted rows.
    let logs = tempfile::tempdir().unwrap();
    let second_log = logs.path().join("second.log");
    let second = Worker::start_logging_to(&nats, &url, &short_ack_wait, &second_log);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&url, LOCK_WAITERS) < 1 {
        assert!(
            Instant::now() < deadline,
            "the second worker never blocked on the claims; consumer {:?}; its log:\n{}",
            consumer_info(&nats).await,
            std::fs::read_to_string(&second_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let redelivered = consumer_info(&nats).await.num_redelivered;
    assert!(
        redelivered > 0,
        "nothing was redelivered to the second worker"
    );

    // The first one wakes, commits and acknowledges; the second skips what it committed.
    paused.signal("CONT");
    wait_for(Duration::from_secs(120), "every order", || {
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == ORDERS as i64
    })
    .await;
    assert_exactly_once(&url, ORDERS as i64, items);
    assert_eq!(dlq_len(&nats).await, 0);
    wait_for_counter(&second, "worker_messages_skipped_total", 1).await;
    assert_exactly_once(&url, ORDERS as i64, items);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_killed_during_commits_loses_and_duplicates_nothing() {
    const ORDERS: usize = 2_000;
    let nats = NatsServer::start();
    // Durable as in production: with `synchronous_commit=off` (the test default) a
    // crash loses the last commits, which the worker had already acknowledged.
    let mut pg = Postgres::start_with(PostgresOptions {
        durable: true,
        ..Default::default()
    });
    let url = pg.create_database("killed_pg");
    let orders: Vec<Value> = tpch_data::orders(0.002).take(ORDERS).collect();
    let _worker = Worker::start(&nats, &url);
    let items = post_orders(&nats, &orders).await;
    // SIGKILL the postmaster (every backend dies with it, mid-commit or not) twice while
    // the worker is writing; crash recovery keeps exactly what was committed.
    for threshold in [300, 1_000] {
        wait_for(Duration::from_secs(120), "progress", || {
            count(&url, "SELECT count(*) AS n FROM orders") >= threshold
        })
        .await;
        pg.kill();
        pg.restart();
    }
    wait_for(Duration::from_secs(180), "every order", || {
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == ORDERS as i64
    })
    .await;
    assert_exactly_once(&url, ORDERS as i64, items);
    assert_eq!(dlq_len(&nats).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_with_a_backlog_keeps_every_message() {
    const ORDERS: usize = 2_000;
    let mut nats = NatsServer::start();
    let pg = Postgres::start();
    let url = pg.create_database("killed_nats");
    let orders: Vec<Value> = tpch_data::orders(0.002).take(ORDERS).collect();
    let items = post_orders(&nats, &orders).await;
    // Nothing consumed yet: the whole backlog is in the stream when nats-server dies.
    nats.kill();
    nats.restart();
    let _worker = Worker::start(&nats, &url);
    wait_for(Duration::from_secs(120), "every order", || {
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == ORDERS as i64
    })
    .await;
    assert_exactly_once(&url, ORDERS as i64, items);
    assert_eq!(dlq_len(&nats).await, 0);
}
