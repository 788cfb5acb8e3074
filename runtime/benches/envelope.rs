//! Envelope format: one JSON document with the body embedded (what nomnom uses) versus
//! metadata in NATS headers with the raw body as payload, measured in the same run.
//!
//! `cargo bench -p nomnom-runtime --bench envelope` (needs nats-server; see
//! scripts/install-deps.sh). `-- --quick` runs a small configuration (CI runs it so the
//! harness cannot rot).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, jetstream};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use nomnom_runtime::{Body, EntityName, Envelope, StreamSettings, envelope, stream, subject};
use nomnom_test_support::NatsServer;
use uuid::Uuid;

/// The alternative: every metadata field as a NATS header, the body as the payload.
fn to_headers(e: &Envelope) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert("Nomnom-Version", "1");
    headers.insert("Nomnom-Message-Id", e.message_id.to_string().as_str());
    headers.insert(
        "Nomnom-Received-At",
        e.received_at
            .to_rfc3339_opts(SecondsFormat::Micros, true)
            .as_str(),
    );
    if let Some(entity) = &e.entity {
        headers.insert("Nomnom-Entity", entity.as_str());
    }
    if let Some(request_id) = &e.request_id {
        headers.insert("Nomnom-Request-Id", request_id.as_str());
    }
    headers.insert("Content-Type", e.content_type.as_str());
    let Body::Inline(body) = &e.body else {
        unreachable!("the benchmark uses inline bodies")
    };
    (headers, body.clone())
}

fn from_headers(headers: &HeaderMap, payload: Bytes) -> Envelope {
    let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
    Envelope {
        message_id: Uuid::parse_str(&get("Nomnom-Message-Id").unwrap()).unwrap(),
        received_at: DateTime::parse_from_rfc3339(&get("Nomnom-Received-At").unwrap())
            .unwrap()
            .with_timezone(&Utc),
        entity: get("Nomnom-Entity").map(|e| EntityName::parse(&e).unwrap()),
        idempotency_key: None,
        request_id: get("Nomnom-Request-Id"),
        traceparent: None,
        headers: Default::default(),
        content_type: get("Content-Type").unwrap(),
        body: Body::Inline(payload),
    }
}

fn sample_body(size: usize) -> Bytes {
    let mut body = String::from(r#"{"o_orderkey":1,"o_comment":""#);
    while body.len() < size - 2 {
        body.push('x');
    }
    body.push_str("\"}");
    Bytes::from(body)
}

fn sample_envelope(body: Bytes) -> Envelope {
    Envelope {
        message_id: envelope::new_message_id(),
        received_at: envelope::now_micros(),
        entity: Some(EntityName::parse("order").unwrap()),
        idempotency_key: None,
        request_id: Some("0b7c4a36-2f4e-4c4b-9d7e-3f1f7f0f9a11".into()),
        traceparent: None,
        headers: Default::default(),
        content_type: envelope::JSON_CONTENT_TYPE.into(),
        body: Body::Inline(body),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

/// ns per encode+decode round trip (JSON, headers), median of `runs`.
fn cpu_cost(runs: usize, iterations: usize, body: &Bytes) -> (f64, f64) {
    let mut json_ns = Vec::new();
    let mut headers_ns = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        for _ in 0..iterations {
            let e = sample_envelope(body.clone());
            let back = Envelope::decode(e.encode().payload).unwrap();
            std::hint::black_box(back);
        }
        json_ns.push(start.elapsed().as_nanos() as f64 / iterations as f64);

        let start = Instant::now();
        for _ in 0..iterations {
            let e = sample_envelope(body.clone());
            let (h, p) = to_headers(&e);
            std::hint::black_box(from_headers(&h, p));
        }
        headers_ns.push(start.elapsed().as_nanos() as f64 / iterations as f64);
    }
    (median(json_ns), median(headers_ns))
}

/// Messages per second published with `window` acknowledgements outstanding.
async fn publish_rate(
    js: &jetstream::Context,
    count: usize,
    window: usize,
    body: &Bytes,
    as_headers: bool,
) -> f64 {
    let start = Instant::now();
    let mut pending = VecDeque::with_capacity(window);
    for _ in 0..count {
        let e = sample_envelope(body.clone());
        let subject = subject::message_subject("messages.ingest", e.entity.as_ref(), e.message_id);
        let message = if as_headers {
            let (headers, payload) = to_headers(&e);
            jetstream::message::PublishMessage::build()
                .headers(headers)
                .payload(payload)
        } else {
            jetstream::message::PublishMessage::build().payload(e.encode().payload)
        };
        pending.push_back(js.send_publish(subject, message).await.unwrap());
        if pending.len() >= window {
            pending.pop_front().unwrap().await.unwrap();
        }
    }
    for ack in pending {
        ack.await.unwrap();
    }
    count as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (runs, iterations, count) = if quick {
        (3, 2_000, 2_000)
    } else {
        (5, 100_000, 50_000)
    };
    let body = sample_body(512);

    let (json_ns, headers_ns) = cpu_cost(runs, iterations, &body);
    println!("envelope encode+decode, 512-byte body, median of {runs}:");
    println!("  one JSON document (nomnom) : {json_ns:>8.0} ns/message");
    println!("  headers + raw body         : {headers_ns:>8.0} ns/message");
    println!(
        "  ratio headers/json         : {:>8.2}",
        headers_ns / json_ns
    );

    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(2048)
        .backpressure_on_inflight(true)
        .build(client);
    stream::ensure_stream(&js, &StreamSettings::default())
        .await
        .unwrap();
    let rounds = runs.min(3);
    let mut json_rates = Vec::new();
    let mut headers_rates = Vec::new();
    for _ in 0..rounds {
        json_rates.push(publish_rate(&js, count, 1024, &body, false).await);
        headers_rates.push(publish_rate(&js, count, 1024, &body, true).await);
    }
    let (j, h) = (median(json_rates), median(headers_rates));
    println!("JetStream publish, {count} messages, 1024 acks outstanding, median of {rounds}:");
    println!("  one JSON document (nomnom) : {j:>10.0} msg/s");
    println!("  headers + raw body         : {h:>10.0} msg/s");
    println!("  ratio json/headers         : {:>10.2}", j / h);
    let sample = sample_envelope(body);
    let (headers, payload) = to_headers(&sample);
    let header_bytes: usize = headers
        .iter()
        .map(|(n, v)| {
            let n: &str = n.as_ref();
            v.iter()
                .map(|v| n.len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    println!(
        "  bytes per message          : JSON {} vs headers {} + payload {}",
        sample.encode().payload.len(),
        header_bytes,
        payload.len()
    );
}
