//! Envelope format: NATS headers + raw body (what nomnom uses) versus one JSON document
//! with the body embedded, measured in the same run.
//!
//! `cargo bench -p nomnom-runtime --bench envelope` (needs nats-server; see
//! scripts/install-deps.sh). `-- --quick` runs a small configuration (CI uses it so the
//! harness cannot rot).

use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use nomnom_runtime::{
    Body, EntityName, Envelope, IdempotencyKey, StreamSettings, envelope, stream, subject,
};
use nomnom_test_support::NatsServer;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The alternative format: everything in one JSON document.
#[derive(Serialize, Deserialize)]
struct JsonEnvelope<'a> {
    version: u32,
    message_id: String,
    received_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    entity: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    content_type: &'a str,
    #[serde(borrow)]
    body: &'a RawValue,
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
        content_type: envelope::JSON_CONTENT_TYPE.into(),
        body: Body::Inline(body),
    }
}

fn to_json(e: &Envelope) -> Bytes {
    let Body::Inline(body) = &e.body else {
        unreachable!()
    };
    let raw: &RawValue = serde_json::from_slice(body).unwrap();
    let doc = JsonEnvelope {
        version: 1,
        message_id: e.message_id.to_string(),
        received_at: envelope::format_time(e.received_at),
        entity: e.entity.as_ref().map(EntityName::as_str),
        idempotency_key: e.idempotency_key.as_ref().map(IdempotencyKey::as_str),
        request_id: e.request_id.as_deref(),
        content_type: &e.content_type,
        body: raw,
    };
    Bytes::from(serde_json::to_vec(&doc).unwrap())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

/// ns per encode+decode round trip, median of `runs`.
fn cpu_cost(runs: usize, iterations: usize, body: &Bytes) -> (f64, f64) {
    let mut headers_ns = Vec::new();
    let mut json_ns = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        for _ in 0..iterations {
            let e = sample_envelope(body.clone());
            let (h, p) = e.to_headers_and_payload();
            let back = Envelope::from_headers_and_payload(Some(&h), p).unwrap();
            std::hint::black_box(back);
        }
        headers_ns.push(start.elapsed().as_nanos() as f64 / iterations as f64);

        let start = Instant::now();
        for _ in 0..iterations {
            let e = sample_envelope(body.clone());
            let bytes = to_json(&e);
            let back: JsonEnvelope = serde_json::from_slice(&bytes).unwrap();
            // The worker then parses the body; with headers it is the payload itself.
            std::hint::black_box(back.body.get().len());
        }
        json_ns.push(start.elapsed().as_nanos() as f64 / iterations as f64);
    }
    (median(headers_ns), median(json_ns))
}

/// Messages per second published with `window` acks outstanding.
async fn publish_rate(
    js: &jetstream::Context,
    count: usize,
    window: usize,
    body: &Bytes,
    as_json: bool,
) -> f64 {
    let start = Instant::now();
    let mut pending = std::collections::VecDeque::with_capacity(window);
    for _ in 0..count {
        let e = sample_envelope(body.clone());
        let subject = subject::message_subject("messages.ingest", e.entity.as_ref(), e.message_id);
        let ack = if as_json {
            js.send_publish(
                subject,
                jetstream::message::PublishMessage::build().payload(to_json(&e)),
            )
            .await
            .unwrap()
        } else {
            let (headers, payload) = e.to_headers_and_payload();
            js.send_publish(
                subject,
                jetstream::message::PublishMessage::build()
                    .headers(headers)
                    .payload(payload),
            )
            .await
            .unwrap()
        };
        pending.push_back(ack);
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

    let (headers_ns, json_ns) = cpu_cost(runs, iterations, &body);
    println!("envelope encode+decode, 512-byte body, median of {runs}:");
    println!("  headers + raw body : {headers_ns:>8.0} ns/message");
    println!("  one JSON document  : {json_ns:>8.0} ns/message");
    println!("  ratio json/headers : {:>8.2}", json_ns / headers_ns);

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
    let mut headers_rates = Vec::new();
    let mut json_rates = Vec::new();
    for _ in 0..runs.min(3) {
        headers_rates.push(publish_rate(&js, count, 1024, &body, false).await);
        json_rates.push(publish_rate(&js, count, 1024, &body, true).await);
    }
    let (h, j) = (median(headers_rates), median(json_rates));
    println!(
        "JetStream publish, {count} messages, 1024 acks outstanding, median of {}:",
        runs.min(3)
    );
    println!("  headers + raw body : {h:>10.0} msg/s");
    println!("  one JSON document  : {j:>10.0} msg/s");
    println!("  ratio headers/json : {:>10.2}", h / j);
    let (hdr, payload) = sample_envelope(body.clone()).to_headers_and_payload();
    let header_bytes: usize = hdr
        .iter()
        .map(|(n, v)| {
            let n: &str = n.as_ref();
            v.iter()
                .map(|v| n.len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    println!(
        "  bytes per message  : headers {} + payload {} vs JSON {}",
        header_bytes,
        payload.len(),
        to_json(&sample_envelope(body)).len()
    );
}
