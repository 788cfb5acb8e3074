//! Real GitHub webhook deliveries (the examples GitHub's own Octokit ships in the npm
//! package @octokit/webhooks-examples, fetched by scripts/install-deps.sh) through
//! nats-api and the generated `github` worker (examples/github), on SQLite and PostgreSQL:
//! keyed operations end in stream order, and an older version of an issue is skipped.

mod common;

use std::time::Duration;

use common::count;
use nomnom_runtime::{
    NatsConfig,
    worker::{WorkerConfig, run},
};
use nomnom_test_support::{NatsServer, Postgres};
use serde_json::Value;

/// The deliveries of one event (`star`, `issues`) with `action`, in the package's order.
fn deliveries(event: &str, action: &str) -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../.tools/webhooks-examples/7.6.1/api.github.com/index.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!("cannot read {path} ({e}): run scripts/install-deps.sh to fetch @octokit/webhooks-examples")
    });
    let events: Vec<Value> = serde_json::from_str(&text).unwrap();
    let found: Vec<Value> = events
        .iter()
        .filter(|e| e["name"] == event)
        .flat_map(|e| e["examples"].as_array().unwrap().iter())
        .filter(|x| x["action"] == action)
        .cloned()
        .collect();
    assert!(!found.is_empty(), "no {event}.{action} example");
    found
}

struct Pipeline {
    api: String,
    nats_url: String,
    database_url: String,
    client: reqwest::Client,
    worker: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Pipeline {
    /// nats-api, without a worker yet: what is posted waits in the stream.
    async fn start(nats: &NatsServer, database_url: &str) -> Pipeline {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", listener.local_addr().unwrap());
        let config = nats_api::ApiConfig {
            nats: NatsConfig {
                url: nats.url(),
                ..Default::default()
            },
            database_url: Some(database_url.to_owned()),
            ..Default::default()
        };
        tokio::spawn(nats_api::serve_on(listener, config, std::future::pending()));
        let client = reqwest::Client::new();
        let pipeline = Pipeline {
            api,
            nats_url: nats.url(),
            database_url: database_url.to_owned(),
            client,
            worker: None,
        };
        for _ in 0..300 {
            if let Ok(reply) = pipeline
                .client
                .get(format!("{}/ready", pipeline.api))
                .send()
                .await
                && reply.status() == 200
            {
                return pipeline;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nats-api never became ready");
    }

    fn start_worker(&mut self) {
        let config = WorkerConfig {
            nats: NatsConfig {
                url: self.nats_url.clone(),
                ..Default::default()
            },
            database_url: self.database_url.clone(),
            batch_size: 100,
            batch_wait: Duration::from_millis(200),
            ..Default::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(async move {
            run(github_worker::Schema, config, async {
                let _ = stopped.await;
            })
            .await
            .expect("worker runs");
        });
        self.worker = Some((stop, worker));
    }

    async fn stop(mut self) {
        if let Some((stop, worker)) = self.worker.take() {
            let _ = stop.send(());
            worker.await.unwrap();
        }
    }

    /// Posts one delivery; returns its message id.
    async fn post(&self, entity: &str, delivery: &Value) -> String {
        let reply = self
            .client
            .post(format!("{}/api/ingest/message/{entity}", self.api))
            .json(delivery)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 202);
        let body: Value = reply.json().await.unwrap();
        body["message_id"].as_str().unwrap().to_owned()
    }

    /// Posts deliveries as one NDJSON batch; returns their message ids.
    async fn post_batch(&self, entity: &str, deliveries: &[Value]) -> Vec<String> {
        let ndjson: String = deliveries.iter().map(|d| format!("{d}\n")).collect();
        let reply = self
            .client
            .post(format!("{}/api/ingest/batch/{entity}", self.api))
            .header("content-type", "application/x-ndjson")
            .body(ndjson)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 202);
        let body: Value = reply.json().await.unwrap();
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["message_id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits until the message's status is final; returns it.
    async fn outcome(&self, id: &str) -> Value {
        let mut last = Value::Null;
        for _ in 0..600 {
            last = self
                .client
                .get(format!("{}/api/ingest/status/{id}", self.api))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if !matches!(last["status"].as_str(), Some("pending" | "accepted") | None) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("message {id} never got an outcome: {last}");
    }
}

/// Star, star, unstar of one user, accepted before the worker starts so they share one
/// batch: no star is left. Then the deliveries newest first: the older ones are
/// skipped as stale and the row keeps the newest state.
async fn deliveries_end_in_order(database_url: String) {
    let nats = NatsServer::start();
    let mut p = Pipeline::start(&nats, &database_url).await;

    let created = deliveries("star", "created");
    let deleted = deliveries("star", "deleted");
    let stars = [created[0].clone(), created[1].clone(), deleted[0].clone()];
    assert_eq!(stars[0]["sender"]["id"], stars[2]["sender"]["id"]);
    let ids = p.post_batch("star", &stars).await;
    p.start_worker();
    for id in &ids {
        assert_eq!(p.outcome(id).await["status"], "persisted");
    }
    assert_eq!(count(&database_url, "SELECT count(*) AS n FROM star"), 0);

    // Starred again, in a later batch: the star is back.
    let again = p.post("star", &created[0]).await;
    assert_eq!(p.outcome(&again).await["status"], "persisted");
    assert_eq!(count(&database_url, "SELECT count(*) AS n FROM star"), 1);

    // GitHub delivers out of order: the unlock (15:20:28) arrives before the lock
    // (15:20:27) and the opening (15:20:18).
    let unlocked = p.post("issue", &deliveries("issues", "unlocked")[0]).await;
    assert_eq!(p.outcome(&unlocked).await["status"], "persisted");
    for action in ["locked", "opened"] {
        let older = p.post("issue", &deliveries("issues", action)[0]).await;
        let outcome = p.outcome(&older).await;
        assert_eq!(
            outcome["status"], "skipped_stale",
            "issues.{action}: {outcome}"
        );
    }
    assert_eq!(
        count(
            &database_url,
            "SELECT count(*) AS n FROM issue WHERE locked = false AND number = 1"
        ),
        1,
        "the issue keeps its newest state (unlocked)"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_deliveries_end_in_order_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    deliveries_end_in_order(format!(
        "sqlite://{}",
        dir.path().join("github.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_deliveries_end_in_order_on_postgres() {
    let postgres = Postgres::start();
    deliveries_end_in_order(postgres.create_database("github")).await;
}
