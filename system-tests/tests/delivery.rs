//! How the worker handles JetStream's delivery rules, with real processes: a write held
//! up past ack_wait, the stream deleted under it, a message that keeps failing until
//! max_deliver, and a dead-letter stream that refuses the copy.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use common::{
    LOCK_WAITERS, TableLock, Worker, assert_exactly_once, count, dlq_len, post_orders, start_api,
    wait_for,
};
use futures::StreamExt;
use nomnom_test_support::{NatsServer, Postgres};
use serde_json::Value;

async fn jetstream(nats: &NatsServer) -> jetstream::Context {
    jetstream::new(async_nats::connect(nats.url()).await.unwrap())
}

/// The workers' durable consumer, as another replica would see it.
async fn workers_consumer(nats: &NatsServer) -> jetstream::consumer::Consumer<pull::Config> {
    jetstream(nats)
        .await
        .get_stream("MESSAGES")
        .await
        .unwrap()
        .get_consumer("workers")
        .await
        .unwrap()
}

async fn consumer_info(nats: &NatsServer) -> jetstream::consumer::Info {
    workers_consumer(nats).await.info().await.unwrap().clone()
}

/// Posts one order; returns its message id.
async fn post_order(api: &str, order: &Value) -> String {
    let reply = reqwest::Client::new()
        .post(format!("{api}/api/ingest/message/order"))
        .json(order)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202);
    let body: Value = reply.json().await.unwrap();
    body["message_id"].as_str().unwrap().to_owned()
}

fn status_count(url: &str, id: &str, condition: &str) -> i64 {
    count(
        url,
        &format!(
            "SELECT count(*) AS n FROM nomnom_message_status WHERE message_id = '{id}' AND {condition}"
        ),
    )
}

fn migrate(url: &str) {
    let migrated = std::process::Command::new(env!("CARGO_BIN_EXE_tpch-test-worker"))
        .arg("--migrate-only")
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(migrated.success(), "--migrate-only exits 0");
}

/// A transaction blocked far longer than ack_wait: the worker keeps reporting progress,
/// so JetStream hands none of the batch to anyone else, and nothing is redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_held_up_past_ack_wait_is_not_redelivered() {
    const ORDERS: usize = 300;
    let nats = NatsServer::start();
    let pg = Postgres::start();
    let url = pg.create_database("held");
    migrate(&url);
    let orders: Vec<Value> = tpch_data::orders(0.002).take(ORDERS).collect();
    let items = post_orders(&nats, &orders).await;

    // Hold the orders table: the worker's batch waits on the lock.
    let lock = TableLock::take(&url, "orders");
    let _worker = Worker::start_with(
        &nats,
        &url,
        &[
            ("NOMNOM_ACK_WAIT", "1s"),
            ("NOMNOM_BATCH_SIZE", "1000"),
            ("NOMNOM_BATCH_WAIT", "1s"),
        ],
    );
    wait_for(
        Duration::from_secs(60),
        "the worker to wait on the lock",
        || count(&url, LOCK_WAITERS) >= 1,
    )
    .await;

    // Pull as a second replica would, for three times ack_wait: without progress
    // reports the held messages would be redelivered here.
    let consumer = workers_consumer(&nats).await;
    let stolen = consumer
        .fetch()
        .max_messages(ORDERS)
        .expires(Duration::from_secs(3))
        .messages()
        .await
        .unwrap()
        .count()
        .await;
    assert_eq!(
        stolen, 0,
        "messages of a batch in progress were redelivered"
    );

    lock.release();
    wait_for(Duration::from_secs(60), "every order", || {
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == ORDERS as i64
    })
    .await;
    assert_exactly_once(&url, ORDERS as i64, items);
    let info = consumer_info(&nats).await;
    assert_eq!(info.num_redelivered, 0);
    assert_eq!(info.delivered.consumer_sequence, ORDERS as u64);
}

/// Two writers: a batch held up on a lock does not hold up a batch with other rows,
/// which commits meanwhile; a batch with a row in common waits behind it (it is not
/// written at once), and the later message's row is the one kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_held_up_on_a_lock_does_not_hold_up_other_rows() {
    let nats = NatsServer::start();
    let pg = Postgres::start();
    let url = pg.create_database("writers");
    migrate(&url);
    let first: Value = tpch_data::orders(0.001).next().unwrap();
    let mut second = first.clone();
    second["o_comment"] = Value::from("sent second");
    second["lineitems"].as_array_mut().unwrap().truncate(1);
    let customer: Value = tpch_data::customers(0.001).next().unwrap();

    let api = start_api(&nats).await;
    post_order(&api, &first).await;
    let reply = reqwest::Client::new()
        .post(format!("{api}/api/ingest/message/customer"))
        .json(&customer)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202);
    post_order(&api, &second).await;

    // Hold the orders table: the first order's batch waits on the lock.
    let lock = TableLock::take(&url, "orders");
    let _worker = Worker::start_with(
        &nats,
        &url,
        &[
            ("NOMNOM_WRITERS", "2"),
            ("NOMNOM_BATCH_SIZE", "1"),
            ("NOMNOM_BATCH_WAIT", "50ms"),
        ],
    );
    let waiting_on_locks = || count(&url, LOCK_WAITERS);
    wait_for(
        Duration::from_secs(60),
        "the first order to wait on the lock",
        || waiting_on_locks() >= 1,
    )
    .await;
    wait_for(
        Duration::from_secs(30),
        "the customer to be written while the first order waits",
        || count(&url, "SELECT count(*) AS n FROM customer") == 1,
    )
    .await;
    // The second order is fetched (both orders delivered, nothing left to deliver) …
    let mut fetched = false;
    for _ in 0..600 {
        let info = consumer_info(&nats).await;
        if info.num_pending == 0 && info.num_ack_pending == 2 {
            fetched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(fetched, "the second order was not fetched");
    // … and held: its write would wait on the lock too.
    assert!(
        !common::eventually(Duration::from_secs(1), || waiting_on_locks() > 1).await,
        "the batch sharing a row with the held-up one was written at once"
    );

    lock.release();
    wait_for(Duration::from_secs(60), "every message", || {
        count(
            &url,
            "SELECT count(*) AS n FROM nomnom_message_status WHERE status = 'persisted'",
        ) == 3
    })
    .await;
    let kept = common::lines(&url, "SELECT o_comment AS line FROM orders");
    assert_eq!(kept, ["sent second"], "the later message's row is kept");
    assert_eq!(count(&url, "SELECT count(*) AS n FROM lineitem"), 1);
}

/// The stream deleted under a running worker: the worker recreates it (and its
/// consumer) and goes on persisting what is posted next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_is_recreated_by_the_worker() {
    let nats = NatsServer::start();
    let pg = Postgres::start();
    let url = pg.create_database("stream_gone");
    let orders: Vec<Value> = tpch_data::orders(0.002).take(400).collect();
    let _worker = Worker::start(&nats, &url);
    let first = post_orders(&nats, &orders[..200]).await;
    wait_for(Duration::from_secs(60), "the first half", || {
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == 200
    })
    .await;
    let js = jetstream(&nats).await;
    js.delete_stream("MESSAGES").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while js.get_stream("MESSAGES").await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never recreated the stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = post_orders(&nats, &orders[200..]).await;
    wait_for(Duration::from_secs(60), "the second half", || {
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == 400
    })
    .await;
    assert_exactly_once(&url, 400, first + second);
}

/// A message that fails transiently on every delivery (its claim-checked body is gone)
/// is retried on the backoff schedule, then dead-lettered with the last error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_failing_every_delivery_is_dead_lettered_at_max_deliver() {
    let nats = NatsServer::start_with(nomnom_test_support::NatsOptions {
        max_payload: Some(8 * 1024),
        ..Default::default()
    });
    let pg = Postgres::start();
    let url = pg.create_database("exhausted");
    let api = start_api(&nats).await;
    let mut order = tpch_data::orders(0.001).next().unwrap();
    order["padding"] = serde_json::json!("x".repeat(20_000));
    let id = post_order(&api, &order).await;
    // Lose the body the message refers to.
    let store = jetstream(&nats)
        .await
        .get_object_store("MESSAGES_BODIES")
        .await
        .unwrap();
    let names: Vec<String> = store
        .list()
        .await
        .unwrap()
        .map(|info| info.unwrap().name)
        .collect()
        .await;
    assert_eq!(names.len(), 1, "the body was claim-checked");
    store.delete(&names[0]).await.unwrap();

    let _worker = Worker::start_with(
        &nats,
        &url,
        &[("NOMNOM_MAX_DELIVER", "2"), ("NOMNOM_BACKOFF", "500ms")],
    );
    wait_for(Duration::from_secs(60), "the message dead-lettered", || {
        status_count(&url, &id, "status = 'dead_lettered'") == 1
    })
    .await;
    assert_eq!(
        status_count(
            &url,
            &id,
            "attempts = 2 AND error LIKE 'gave up after 2 attempts: cannot fetch body%'"
        ),
        1,
        "the status row gives the attempts and the last error"
    );
    assert_eq!(count(&url, "SELECT count(*) AS n FROM orders"), 0);
    assert_eq!(dlq_len(&nats).await, 1);
}

/// The dead-letter stream refuses the copy (full, discard new): the message is neither
/// acknowledged nor recorded as dead-lettered, but redelivered; once the stream takes
/// it, it is dead-lettered exactly once (past max_deliver: as given up on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dead_letter_publish_keeps_the_message() {
    let nats = NatsServer::start();
    let pg = Postgres::start();
    let url = pg.create_database("dlq_full");
    let js = jetstream(&nats).await;
    let dlq = jetstream::stream::Config {
        name: "MESSAGES_DLQ".into(),
        subjects: vec![format!(
            "{}.>",
            nomnom_runtime::dlq::subject_prefix("MESSAGES_DLQ")
        )],
        max_messages: 1,
        discard: jetstream::stream::DiscardPolicy::New,
        allow_direct: true,
        ..Default::default()
    };
    js.create_stream(dlq.clone()).await.unwrap();
    let worker = Worker::start_with(
        &nats,
        &url,
        &[("NOMNOM_BACKOFF", "500ms"), ("NOMNOM_MAX_DELIVER", "2")],
    );
    let api = start_api(&nats).await;
    let mut orders = tpch_data::orders(0.001);
    let mut invalid = || {
        let mut order = orders.next().unwrap();
        order["o_orderkey"] = serde_json::json!(0);
        order
    };
    let first = post_order(&api, &invalid()).await;
    wait_for(Duration::from_secs(30), "the first dead letter", || {
        status_count(&url, &first, "status = 'dead_lettered'") == 1
    })
    .await;
    let second = post_order(&api, &invalid()).await;

    // Three refused copies with max_deliver 2: the third delivery happens only because
    // the consumer has no delivery limit of its own (a server-side limit would have
    // dropped the message after its second). Then check nothing was lost.
    let metrics_url = format!("http://127.0.0.1:{}/metrics", worker.1);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let failures = metrics
            .lines()
            .find_map(|l| l.strip_prefix("worker_dlq_publish_failures_total "))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if failures >= 3.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refused dead-letter copies:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status_count(&url, &second, "true"),
        0,
        "not recorded as dead-lettered"
    );
    assert_eq!(dlq_len(&nats).await, 1);
    assert!(
        consumer_info(&nats).await.num_ack_pending >= 1
            || consumer_info(&nats).await.num_pending >= 1,
        "the message is still owed"
    );

    // Room in the dead-letter stream: the message gets there, once.
    js.update_stream(jetstream::stream::Config {
        max_messages: -1,
        ..dlq
    })
    .await
    .unwrap();
    wait_for(Duration::from_secs(30), "the second dead letter", || {
        status_count(
            &url,
            &second,
            "status = 'dead_lettered' AND error LIKE 'gave up after % deliveries without an outcome%'",
        ) == 1
    })
    .await;
    assert_eq!(dlq_len(&nats).await, 2);
    assert_eq!(count(&url, "SELECT count(*) AS n FROM orders"), 0);
}
