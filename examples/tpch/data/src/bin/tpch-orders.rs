//! Prints real TPC-H orders (with their line items) as NDJSON, for curl:
//! `tpch-orders [COUNT] [SCALE_FACTOR]` (defaults: 1000 orders of scale factor 0.01).

use std::io::Write;

fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let scale: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0.01);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for order in tpch_data::orders(scale).take(count) {
        if writeln!(out, "{order}").is_err() {
            return; // closed pipe
        }
    }
}
