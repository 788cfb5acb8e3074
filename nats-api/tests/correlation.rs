//! Correlation from the outside: the real binary, real HTTP, a real nats-server. A
//! client's W3C `traceparent` is continued into the envelope, a malformed one starts a
//! new trace instead of refusing the message, and nats-api's JSON log lines about a
//! message carry its request id, message id and trace id.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nomnom_runtime::{Envelope, TraceParent};
use nomnom_test_support::{NatsServer, free_port};
use serde_json::Value;

const CLIENT_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A nats-api process logging JSON at debug level to a file; killed when dropped.
struct Api {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
    nats: NatsServer,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Api {
    async fn start() -> Api {
        let nats = NatsServer::start();
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = common::nats_api_process(&nats.url(), port)
            .env("NOMNOM_LOG_FORMAT", "json")
            .env("RUST_LOG", "info,nats_api=debug")
            .stdout(log.reopen().unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nats-api");
        let api = Api {
            child,
            port,
            log,
            nats,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(http.get(api.url("/ready")).send().await, Ok(r) if r.status() == 200) {
            assert!(Instant::now() < deadline, "nats-api did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        api
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// POSTs one order with `headers`; the message id and the answer's traceparent.
    async fn post(&self, headers: &[(&str, &str)]) -> (String, TraceParent) {
        let mut request = reqwest::Client::new()
            .post(self.url("/api/ingest/message/order"))
            .header("content-type", "application/json")
            .body(r#"{"o_orderkey":1}"#);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let reply = request.send().await.unwrap();
        assert_eq!(reply.status(), 202);
        let answered = reply
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse)
            .expect("the answer carries a valid traceparent");
        let body: Value = reply.json().await.unwrap();
        (body["message_id"].as_str().unwrap().to_owned(), answered)
    }

    /// The envelope stored for message `id`.
    async fn stored(&self, id: &str) -> Envelope {
        let js = async_nats::jetstream::new(async_nats::connect(self.nats.url()).await.unwrap());
        let stream = js.get_stream("MESSAGES").await.unwrap();
        let message = stream
            .get_last_raw_message_by_subject(&format!("messages.ingest.order.{id}"))
            .await
            .unwrap();
        Envelope::decode(message.payload).unwrap()
    }

    /// Waits for a JSON log line `matching`, and returns it.
    async fn log_line(&self, what: &str, matching: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(self.log.path()).unwrap();
            if let Some(line) = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| matching(l))
            {
                return line;
            }
            assert!(Instant::now() < deadline, "no log line {what}:\n{text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn a_clients_trace_is_continued_and_a_malformed_one_replaced() {
    let api = Api::start().await;
    let client = TraceParent::parse(CLIENT_TRACE).unwrap();

    let (id, answered) = api
        .post(&[
            ("x-request-id", "req-corr-1"),
            ("traceparent", CLIENT_TRACE),
        ])
        .await;
    let envelope = api.stored(&id).await;
    let carried = envelope
        .traceparent
        .expect("the envelope carries the trace");
    assert_eq!(carried.trace_id(), client.trace_id(), "the client's trace");
    assert_ne!(
        carried.parent_id(),
        client.parent_id(),
        "nats-api is a span of its own"
    );
    assert_eq!(
        carried, answered,
        "the answer names what the envelope carries"
    );
    assert_eq!(envelope.request_id.as_deref(), Some("req-corr-1"));

    let line = api
        .log_line("'message accepted' of req-corr-1", |l| {
            l["message"] == "message accepted" && l["span"]["request_id"] == "req-corr-1"
        })
        .await;
    assert_eq!(line["span"]["message_id"], id.as_str(), "{line}");
    assert_eq!(
        line["span"]["trace_id"],
        client.trace_id().as_str(),
        "{line}"
    );

    // Malformed (upper-case hex): accepted all the same, under a new trace.
    let malformed = CLIENT_TRACE.to_uppercase();
    let (id, answered) = api.post(&[("traceparent", &malformed)]).await;
    let carried = api.stored(&id).await.traceparent.unwrap();
    assert_ne!(carried.trace_id(), client.trace_id());
    assert_eq!(carried, answered);

    // None sent: nats-api starts one.
    let (id, answered) = api.post(&[]).await;
    assert_eq!(api.stored(&id).await.traceparent, Some(answered));
    assert_ne!(answered.trace_id(), carried.trace_id());
}
