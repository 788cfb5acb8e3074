//! HTTP → nats-api → JetStream → generated TPC-H worker → rows, with real nats-server,
//! SQLite and PostgreSQL.

mod common;

use std::time::Duration;

use common::{count, eventually};
use nomnom_runtime::{
    NatsConfig, StreamSettings, dlq,
    worker::{WorkerConfig, run},
};
use nomnom_test_support::{NatsServer, Postgres};
use serde_json::{Value, json};

struct Pipeline {
    api: String,
    nats: NatsServer,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    worker: Option<tokio::task::JoinHandle<()>>,
}

impl Pipeline {
    async fn start(database_url: &str) -> Pipeline {
        Self::start_on(NatsServer::start(), database_url).await
    }

    async fn start_on(nats: NatsServer, database_url: &str) -> Pipeline {
        let nats_config = NatsConfig {
            url: nats.url(),
            ..Default::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", listener.local_addr().unwrap());
        let api_config = nats_api::ApiConfig {
            nats: nats_config.clone(),
            database_url: Some(database_url.to_owned()),
            ..Default::default()
        };
        tokio::spawn(nats_api::serve_on(
            listener,
            api_config,
            std::future::pending(),
        ));
        let worker_config = WorkerConfig {
            nats: nats_config,
            database_url: database_url.to_owned(),
            batch_size: 100,
            batch_wait: Duration::from_millis(50),
            ..Default::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(async move {
            run(tpch_worker::Schema, worker_config, async {
                let _ = stopped.await;
            })
            .await
            .expect("worker runs");
        });
        let client = reqwest::Client::new();
        assert!(wait_ready(&client, &api).await, "nats-api ready");
        Pipeline {
            api,
            nats,
            stop: Some(stop),
            worker: Some(worker),
        }
    }

    async fn post(&self, path: &str, body: &Value, key: Option<&str>) -> Value {
        let mut request = reqwest::Client::new()
            .post(format!("{}{path}", self.api))
            .json(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let reply = request.send().await.unwrap();
        assert_eq!(reply.status(), 202);
        reply.json().await.unwrap()
    }

    async fn status(&self, id: &str) -> Value {
        reqwest::get(format!("{}/api/ingest/status/{id}", self.api))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.worker.take().unwrap().await.unwrap();
    }
}

async fn wait_ready(client: &reqwest::Client, api: &str) -> bool {
    for _ in 0..300 {
        if let Ok(r) = client.get(format!("{api}/ready")).send().await
            && r.status() == 200
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn wait_status(p: &Pipeline, id: &str, wanted: &str) -> Value {
    for _ in 0..300 {
        let status = p.status(id).await;
        if status["status"] == wanted {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "message {id} never reached {wanted}: {}",
        p.status(id).await
    );
}

async fn orders_with_line_items_become_rows(database_url: String) {
    let p = Pipeline::start(&database_url).await;
    let mut orders = tpch_data::orders(0.001);
    let first = orders.next().unwrap();
    let items = first["lineitems"].as_array().unwrap().len() as i64;

    let accepted = p
        .post("/api/ingest/message/order", &first, Some("order-1"))
        .await;
    let id = accepted["message_id"].as_str().unwrap().to_owned();
    let status = wait_status(&p, &id, "persisted").await;
    assert_eq!(status["entity"], "order");
    assert_eq!(count(&database_url, "SELECT count(*) AS n FROM orders"), 1);
    assert_eq!(
        count(&database_url, "SELECT count(*) AS n FROM lineitem"),
        items
    );

    // The same message again (same key) and a customer through the discriminator.
    p.post("/api/ingest/message/order", &first, Some("order-1"))
        .await;
    let customer = tpch_data::customers(0.001).next().unwrap();
    let c = p.post("/api/ingest/message", &customer, None).await;
    wait_status(&p, c["message_id"].as_str().unwrap(), "persisted").await;
    assert_eq!(
        count(&database_url, "SELECT count(*) AS n FROM orders"),
        1,
        "one set of rows"
    );
    assert_eq!(
        count(&database_url, "SELECT count(*) AS n FROM lineitem"),
        items
    );
    assert_eq!(
        count(&database_url, "SELECT count(*) AS n FROM customer"),
        1
    );

    // An invalid order: no rows, dead-lettered with the field path.
    let mut bad = orders.next().unwrap();
    bad["o_totalprice"] = json!("-1.00");
    let b = p.post("/api/ingest/message/order", &bad, None).await;
    let status = wait_status(&p, b["message_id"].as_str().unwrap(), "dead_lettered").await;
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .starts_with("/o_totalprice: must be at least 0"),
        "{status}"
    );
    assert_eq!(count(&database_url, "SELECT count(*) AS n FROM orders"), 1);
    let js = async_nats::jetstream::new(async_nats::connect(p.nats.url()).await.unwrap());
    let dlq = js.get_stream("MESSAGES_DLQ").await.unwrap();
    let dead = dlq
        .get_last_raw_message_by_subject("messages_dlq.>")
        .await
        .unwrap();
    let dead: Value = serde_json::from_slice(&dead.payload).unwrap();
    assert_eq!(dead["message_id"], b["message_id"]);
    assert!(
        dead["error"].as_str().unwrap().contains("/o_totalprice"),
        "{dead}"
    );

    // Replaying it after fixing nothing dead-letters it again, idempotently.
    let bad_id: uuid::Uuid = b["message_id"].as_str().unwrap().parse().unwrap();
    let only_bad = dlq::Filter {
        message_id: Some(bad_id),
        ..Default::default()
    };
    let before = dlq::list(&js, "MESSAGES_DLQ", &only_bad).await.unwrap();
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].entity.as_deref(), Some("order"));
    let replayed = dlq::replay(&js, "MESSAGES_DLQ", &StreamSettings::default(), &only_bad)
        .await
        .unwrap();
    assert_eq!(replayed, 1);
    let old = before[0].dlq_sequence;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = dlq::list(&js, "MESSAGES_DLQ", &only_bad).await.unwrap();
        if now.len() == 1 && now[0].dlq_sequence > old {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replayed message was not dead-lettered again exactly once: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(&database_url, "SELECT count(*) AS n FROM orders"), 1);
    let status = p.status(&bad_id.to_string()).await;
    assert_eq!(status["status"], "dead_lettered");

    // Many orders in batches.
    let batch: Vec<Value> = orders.take(200).collect();
    let mut ndjson = String::new();
    for order in &batch {
        ndjson.push_str(&order.to_string());
        ndjson.push('\n');
    }
    let reply = reqwest::Client::new()
        .post(format!("{}/api/ingest/batch/order", p.api))
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202);
    let expected_items: i64 = items
        + batch
            .iter()
            .map(|o| o["lineitems"].as_array().unwrap().len() as i64)
            .sum::<i64>();
    assert!(
        eventually(Duration::from_secs(30), || count(
            &database_url,
            "SELECT count(*) AS n FROM orders"
        ) == 201)
        .await,
        "all orders written"
    );
    assert_eq!(
        count(&database_url, "SELECT count(*) AS n FROM lineitem"),
        expected_items
    );
    assert_eq!(
        count(
            &database_url,
            "SELECT count(*) AS n FROM nomnom_message_status WHERE status = 'persisted'"
        ),
        202,
        "201 orders and 1 customer recorded once each"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_with_line_items_become_rows_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    orders_with_line_items_become_rows(format!(
        "sqlite://{}",
        dir.path().join("tpch.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_with_line_items_become_rows_on_postgres() {
    let pg = Postgres::start();
    orders_with_line_items_become_rows(pg.create_database("tpch")).await;
}

/// An order larger than the server's max_payload travels by claim-check (Object Store)
/// and is persisted like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_over_max_payload_is_fetched_from_the_object_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("big.db").display());
    let nats = NatsServer::start_with(nomnom_test_support::NatsOptions {
        max_payload: Some(8 * 1024),
        ..Default::default()
    });
    let p = Pipeline::start_on(nats, &url).await;
    let mut order = tpch_data::orders(0.001).next().unwrap();
    // Pad with a field the spec does not read, to pass max_payload.
    order["padding"] = json!("x".repeat(20_000));
    let accepted = p.post("/api/ingest/message/order", &order, None).await;
    wait_status(&p, accepted["message_id"].as_str().unwrap(), "persisted").await;
    assert_eq!(count(&url, "SELECT count(*) AS n FROM orders"), 1);
    let js = async_nats::jetstream::new(async_nats::connect(p.nats.url()).await.unwrap());
    let stored = js
        .get_stream("MESSAGES")
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    assert!(
        stored.payload.len() < 1024,
        "the stream held only the reference"
    );
    p.stop().await;
}

/// The JSON log lines in `path` (the ones complete so far).
fn json_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// The first of the worker's log lines saying `message` about message `id`, waited for.
async fn worker_line(log: &std::path::Path, message: &str, id: &str) -> Value {
    let mut found = None;
    let seen = eventually(Duration::from_secs(30), || {
        found = json_lines(log)
            .into_iter()
            .find(|l| l["message"] == message && l["span"]["message_id"] == id);
        found.is_some()
    })
    .await;
    assert!(
        seen,
        "no worker line {message:?} about {id}:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    found.unwrap()
}

/// A client's request id and trace reach the worker's log lines about its message, for
/// a persisted and for a dead-lettered message, and the dead letter keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_trace_ids_reach_the_workers_log_lines() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", dir.path().join("tpch.db").display());
    let log = dir.path().join("worker.log");
    let nats = NatsServer::start();
    let api = common::start_api(&nats).await;
    let worker = common::Worker::start_logging_to(
        &nats,
        &database_url,
        &[
            ("NOMNOM_LOG_FORMAT", "json"),
            ("RUST_LOG", "info,nomnom_runtime=debug"),
        ],
        &log,
    );
    worker.wait_ready().await;

    let client = reqwest::Client::new();
    let post = |body: Value, request_id: &'static str| {
        let request = client
            .post(format!("{api}/api/ingest/message/order"))
            .header("x-request-id", request_id)
            .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
            .json(&body);
        async move {
            let reply = request.send().await.unwrap();
            assert_eq!(reply.status(), 202);
            let body: Value = reply.json().await.unwrap();
            body["message_id"].as_str().unwrap().to_owned()
        }
    };
    let mut orders = tpch_data::orders(0.001);
    let good = post(orders.next().unwrap(), "req-good").await;
    let mut bad = orders.next().unwrap();
    bad["o_totalprice"] = json!("-1.00");
    let bad = post(bad, "req-bad").await;

    for (id, request_id, messages) in [
        (&good, "req-good", &["message persisted"][..]),
        (
            &bad,
            "req-bad",
            &["message refused by its parser", "message dead-lettered"][..],
        ),
    ] {
        for message in messages {
            let line = worker_line(&log, message, id).await;
            let span = &line["span"];
            assert_eq!(span["request_id"], request_id, "{line}");
            assert_eq!(span["trace_id"], TRACE, "{line}");
            assert_eq!(span["entity"], "order", "{line}");
            assert!(
                span["parent_span_id"]
                    .as_str()
                    .is_some_and(|p| p.len() == 16 && p != "00f067aa0ba902b7"),
                "the parent is nats-api's span, not the client's: {line}"
            );
        }
    }

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let letters = dlq::list(&js, "MESSAGES_DLQ", &dlq::Filter::default())
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].message_id.to_string(), bad);
    assert_eq!(letters[0].request_id.as_deref(), Some("req-bad"));
    assert_eq!(letters[0].trace_id.as_deref(), Some(TRACE));
}
