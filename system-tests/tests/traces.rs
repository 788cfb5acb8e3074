//! Span export over OTLP, end to end: nats-api and the TPC-H worker as processes, with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` pointed at an OTLP/HTTP receiver started here (the
//! collector's protobuf messages, decoded with `opentelemetry-proto`). A client's trace
//! is continued by nats-api's request span and by the worker's message span, child of
//! that request span; the spans are sent when the processes stop on SIGTERM. Without the
//! setting nothing is sent.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header::CONTENT_TYPE},
    routing::post,
};
use common::{Worker, count, wait_for};
use nomnom_runtime::TraceParent;
use nomnom_test_support::{NatsServer, free_port};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::{AnyValue, KeyValue, any_value},
};
use prost::Message as _;
use serde_json::Value;

/// The client's trace: the W3C specification's example.
const CLIENT_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CLIENT_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// One span as a collector receives it; ids in lower-case hex, empty when absent.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, String)>,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct Inbox {
    spans: Vec<Received>,
    /// Requests the receiver could not read, with why.
    refused: Vec<String>,
}

/// An OTLP/HTTP receiver on a free loopback port: `POST /v1/traces` with an
/// `ExportTraceServiceRequest` in protobuf, as an OpenTelemetry collector takes it.
struct Collector {
    url: String,
    received: Arc<Mutex<Inbox>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Inbox::default()));
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(received.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Collector { url, received }
    }

    fn spans(&self) -> Vec<Received> {
        let received = self.received.lock().unwrap();
        assert!(
            received.refused.is_empty(),
            "the receiver refused requests: {:?}",
            received.refused
        );
        received.spans.clone()
    }
}

async fn receive(
    State(received): State<Arc<Mutex<Inbox>>>,
    headers: HeaderMap,
    body: Bytes,
) -> (
    StatusCode,
    [(axum::http::HeaderName, &'static str); 1],
    Vec<u8>,
) {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let request = if content_type == "application/x-protobuf" {
        ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())
    } else {
        Err(format!("content type {content_type:?}, not protobuf"))
    };
    let mut received = received.lock().unwrap();
    match request {
        Ok(request) => received.spans.extend(spans_of(request)),
        Err(why) => {
            received.refused.push(why);
            return (
                StatusCode::BAD_REQUEST,
                [(CONTENT_TYPE, "text/plain")],
                Vec::new(),
            );
        }
    }
    (
        StatusCode::OK,
        [(CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

fn spans_of(request: ExportTraceServiceRequest) -> Vec<Received> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .map(text)
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                spans.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex::encode(span.trace_id),
                    span_id: hex::encode(span.span_id),
                    parent_span_id: hex::encode(span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), text(a)))
                        .collect(),
                });
            }
        }
    }
    spans
}

/// An attribute's value as text.
fn text(attribute: &KeyValue) -> String {
    match attribute
        .value
        .as_ref()
        .and_then(|v: &AnyValue| v.value.as_ref())
    {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(n)) => n.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// nats-api as a process (the crate's `nats-api-test` binary); killed when dropped.
struct Api {
    child: Child,
    port: u16,
}

impl Api {
    /// Starts it on `nats` with `settings` (environment variables) over a clean
    /// environment; returns once it is ready.
    async fn start(nats: &NatsServer, settings: &[(&str, &str)]) -> Api {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_nats-api-test"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NATS_URL", nats.url())
            .env("NOMNOM_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .envs(settings.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nats-api");
        let api = Api { child, port };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(client.get(api.url("/ready")).send().await, Ok(r) if r.status() == 200) {
            assert!(Instant::now() < deadline, "nats-api did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        api
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// POSTs `order`, with the client's `traceparent` if any; the message id and the
    /// traceparent nats-api answered with.
    async fn post(&self, order: &Value, traceparent: Option<&str>) -> (String, TraceParent) {
        let mut request = reqwest::Client::new()
            .post(self.url("/api/ingest/message/order"))
            .json(order);
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let reply = request.send().await.unwrap();
        assert_eq!(reply.status(), 202);
        let answered = reply
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse)
            .expect("the answer carries a traceparent");
        let body: Value = reply.json().await.unwrap();
        (body["message_id"].as_str().unwrap().to_owned(), answered)
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "nats-api did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Posts two orders, one with the client's traceparent and one without, waits until
/// both are persisted, and stops both processes with SIGTERM; the message ids and
/// nats-api's answered traceparents.
async fn post_two_orders_and_stop(settings: &[(&str, &str)]) -> [(String, TraceParent); 2] {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("tpch.db").display());
    let api = Api::start(&nats, settings).await;
    let worker = Worker::start_with(&nats, &url, settings);
    let mut orders = tpch_data::orders(0.001);
    let traced = api.post(&orders.next().unwrap(), Some(CLIENT_TRACE)).await;
    let started = api.post(&orders.next().unwrap(), None).await;
    wait_for(Duration::from_secs(60), "both orders persisted", || {
        count(
            &url,
            "SELECT count(*) AS n FROM nomnom_message_status WHERE status = 'persisted'",
        ) == 2
    })
    .await;
    // Both stop gracefully: their last spans are sent before they exit.
    assert!(worker.terminate().success(), "the worker failed to stop");
    assert!(api.terminate().success(), "nats-api failed to stop");
    [traced, started]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_span_is_a_child_of_nats_apis_in_the_clients_trace() {
    let collector = Collector::start().await;
    let endpoint = [("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str())];
    let [(traced_id, traced), (started_id, started)] = post_two_orders_and_stop(&endpoint).await;

    let spans = collector.spans();
    let request_spans: Vec<&Received> = spans.iter().filter(|s| s.name == "request").collect();
    let message_spans: Vec<&Received> = spans.iter().filter(|s| s.name == "message").collect();
    assert_eq!(
        (request_spans.len(), message_spans.len(), spans.len()),
        (2, 2, 4),
        "one request span per order (none for /ready), one message span each, nothing else: {spans:#?}"
    );
    for span in &request_spans {
        assert_eq!(span.service, "nats-api", "{span:?}");
    }
    for span in &message_spans {
        assert_eq!(span.service, "tpch", "the worker's project name: {span:?}");
    }
    let request_of = |id: &str| {
        *request_spans
            .iter()
            .find(|s| s.attribute("message_id") == Some(id))
            .unwrap_or_else(|| panic!("no request span of message {id}: {spans:#?}"))
    };
    let message_of = |id: &str| {
        *message_spans
            .iter()
            .find(|s| s.attribute("message_id") == Some(id))
            .unwrap_or_else(|| panic!("no message span of message {id}: {spans:#?}"))
    };

    // The client's trace: nats-api's span is the child of the client's span, and the
    // worker's the child of nats-api's, all with the client's trace id.
    let request = request_of(&traced_id);
    let message = message_of(&traced_id);
    assert_eq!(request.trace_id, CLIENT_TRACE_ID);
    assert_eq!(request.parent_span_id, CLIENT_SPAN_ID);
    assert_eq!(message.trace_id, CLIENT_TRACE_ID);
    assert_eq!(message.parent_span_id, request.span_id);
    // What nats-api answered (and logged, and put in the envelope) is its exported span.
    assert_eq!(traced.trace_id(), CLIENT_TRACE_ID);
    assert_eq!(traced.parent_id(), request.span_id);
    assert_eq!(request.attribute("trace_id"), Some(CLIENT_TRACE_ID));
    assert_eq!(request.attribute("span_id"), Some(request.span_id.as_str()));

    // A trace nats-api started: its request span is the root.
    let request = request_of(&started_id);
    let message = message_of(&started_id);
    assert_eq!(request.trace_id, started.trace_id());
    assert_eq!(request.span_id, started.parent_id());
    assert_eq!(request.parent_span_id, "", "a root span");
    assert_eq!(message.trace_id, started.trace_id());
    assert_eq!(message.parent_span_id, request.span_id);
}

/// Without `OTEL_EXPORTER_OTLP_ENDPOINT` nothing is exported, even with the
/// OpenTelemetry SDK's own per-signal variable pointing at a receiver, and the pipeline
/// runs as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_sent() {
    let collector = Collector::start().await;
    let traces_url = format!("{}/v1/traces", collector.url);
    let settings = [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces_url.as_str())];
    let [(_, traced), _] = post_two_orders_and_stop(&settings).await;
    assert_eq!(
        traced.trace_id(),
        CLIENT_TRACE_ID,
        "the trace still continues"
    );
    assert!(collector.spans().is_empty(), "spans were sent");
}
