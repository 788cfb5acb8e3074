//! What reading bodies with exact numbers costs: real TPC-H orders (with their line
//! items) read as serde_json reads them (numbers through f64), as the worker reads them
//! (`nomnom_runtime::json`: numbers keep their text), and read then parsed into rows by
//! the generated TPC-H parser, all in the same run. Medians of 5 passes.
//!
//! `cargo bench -p tpch-data --bench parse` (`-- --quick`: a small run).

use std::hint::black_box;
use std::time::Instant;

use nomnom_runtime::{Body, EntityName, Envelope, envelope};

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

/// Messages per second of `read` over every body, median of 5 passes.
fn rate(bodies: &[Vec<u8>], read: impl Fn(&[u8])) -> f64 {
    let runs = (0..5)
        .map(|_| {
            let start = Instant::now();
            for body in bodies {
                read(body);
            }
            bodies.len() as f64 / start.elapsed().as_secs_f64()
        })
        .collect();
    median(runs)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let count = if quick { 1_000 } else { 20_000 };
    let bodies: Vec<Vec<u8>> = tpch_data::orders(0.1)
        .take(count)
        .map(|order| serde_json::to_vec(&order).unwrap())
        .collect();
    let envelope = Envelope {
        message_id: envelope::new_message_id(),
        received_at: envelope::now_micros(),
        entity: Some(EntityName::parse("order").unwrap()),
        idempotency_key: None,
        request_id: None,
        traceparent: None,
        headers: Default::default(),
        content_type: envelope::JSON_CONTENT_TYPE.into(),
        body: Body::Inline(bytes::Bytes::new()),
    };
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    println!(
        "{count} TPC-H orders with their line items, {} bytes on average",
        bytes / count
    );
    let floats = rate(&bodies, |body| {
        black_box(serde_json::from_slice::<serde_json::Value>(body).unwrap());
    });
    let exact = rate(&bodies, |body| {
        black_box(nomnom_runtime::json::from_slice(body).unwrap());
    });
    let parsed = rate(&bodies, |body| {
        let value = nomnom_runtime::json::from_slice(body).unwrap();
        black_box(tpch_worker::parse(&envelope, &value).unwrap());
    });
    println!("read, numbers through f64 (serde_json):        {floats:>9.0} msg/s (baseline)");
    println!(
        "read, numbers as sent (nomnom_runtime::json):  {exact:>9.0} msg/s ({:.2}x)",
        exact / floats
    );
    println!(
        "read as sent and parsed into rows (generated): {parsed:>9.0} msg/s ({:.2}x)",
        parsed / floats
    );
}
