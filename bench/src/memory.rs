//! Benchmark 7: nats-api's resident memory under bursts of concurrent maximum-size
//! bodies (NDJSON batches, then single messages), against its body budget, and how
//! much of it goes back once the burst is over.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use nomnom_runtime::defaults;
use nomnom_runtime::stream::{StreamSettings, ensure_stream};
use nomnom_test_support::{NatsServer, free_port};

use crate::Options;
use crate::util::{Proc, Row, RssSampler, Verdict, binary, body_of_size, wait_http_ok};

const API_KEY: &str = "bench-key-0123456789";
/// The budget the benchmark gives nats-api: the default where no memory limit is known.
const BUDGET_BYTES: u64 = 256 * 1024 * 1024;
const MIB: f64 = 1024.0 * 1024.0;

/// What one burst did.
struct Burst {
    peak_kib: u64,
    after_kib: u64,
    /// Answers by status code, in code order.
    answers: std::collections::BTreeMap<u16, usize>,
    /// Messages accepted, of every answer.
    accepted: u64,
}

/// Sends `requests` bodies at once and samples nats-api's RSS until every answer is in,
/// then for `settle` more.
async fn burst(
    api: &Proc,
    url: &str,
    content_type: &str,
    body: bytes::Bytes,
    requests: usize,
    settle: Duration,
) -> anyhow::Result<Burst> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let sampler = RssSampler::start(api.pid());
    let answers: Vec<anyhow::Result<(u16, u64)>> = futures::stream::iter(0..requests)
        .map(|_| {
            let (client, body) = (client.clone(), body.clone());
            async move {
                let reply = client
                    .post(url)
                    .bearer_auth(API_KEY)
                    .header("content-type", content_type)
                    .body(body)
                    .send()
                    .await?;
                let status = reply.status().as_u16();
                let json: serde_json::Value = reply.json().await.unwrap_or_default();
                let accepted = match json["accepted"].as_u64() {
                    Some(n) => n,
                    None => u64::from(status == 202),
                };
                Ok((status, accepted))
            }
        })
        .buffer_unordered(requests)
        .collect()
        .await;
    let peak_kib = sampler.peak_kib();
    let mut counted = std::collections::BTreeMap::new();
    let mut accepted = 0;
    for answer in answers {
        // A refused request may be cut off mid-body: the client sees a reset.
        let (status, n) = answer.unwrap_or((0, 0));
        *counted.entry(status).or_insert(0) += 1;
        accepted += n;
    }
    let settled = Instant::now() + settle;
    while Instant::now() < settled {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Burst {
        peak_kib,
        after_kib: api.rss_kib(),
        answers: counted,
        accepted,
    })
}

fn answers(burst: &Burst) -> String {
    let parts: Vec<String> = (burst.answers.iter())
        .map(|(code, n)| {
            if *code == 0 {
                format!("{n}× connection closed")
            } else {
                format!("{n}× {code}")
            }
        })
        .collect();
    format!("{}; {} messages accepted", parts.join(", "), burst.accepted)
}

pub async fn bursts(options: &Options, report: &mut Vec<Row>) -> anyhow::Result<()> {
    let requests = if options.quick { 8 } else { 100 };
    let settle = Duration::from_secs(5);
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    let settings = StreamSettings::default();
    ensure_stream(&js, &settings).await?;
    let port = free_port();
    let api = Proc::spawn(
        &binary("nats-api"),
        &[],
        &[
            ("NATS_URL", nats.url()),
            ("NOMNOM_LISTEN", format!("127.0.0.1:{port}")),
            ("NOMNOM_API_KEYS", API_KEY.to_owned()),
            ("NOMNOM_BODY_BUDGET_BYTES", BUDGET_BYTES.to_string()),
        ],
    )?;
    wait_http_ok(
        &format!("http://127.0.0.1:{port}/ready"),
        Duration::from_secs(30),
    )
    .await?;
    let idle_kib = api.rss_kib();
    let budget_mib = BUDGET_BYTES as f64 / MIB;
    println!(
        "  nats-api idle: {:.0} MiB RSS; body budget {budget_mib:.0} MiB; {requests} requests at once",
        idle_kib as f64 / 1024.0
    );

    // Maximum-size batches: NDJSON bodies of the batch byte limit, at the item limit.
    let batch_bytes = if options.quick {
        4 * 1024 * 1024
    } else {
        defaults::API_MAX_BATCH_BYTES
    };
    let items = defaults::API_MAX_BATCH_ITEMS;
    let line = body_of_size(batch_bytes / items - 1) + "\n";
    let ndjson = bytes::Bytes::from(line.repeat(items));
    let batches = burst(
        &api,
        &format!("http://127.0.0.1:{port}/api/ingest/batch/order"),
        "application/x-ndjson",
        ndjson.clone(),
        requests,
        settle,
    )
    .await?;
    println!(
        "  {requests} batches of {:.1} MiB ({items} items): peak {:.0} MiB, {:.0} MiB {}s after; answers: {}",
        ndjson.len() as f64 / MIB,
        batches.peak_kib as f64 / 1024.0,
        batches.after_kib as f64 / 1024.0,
        settle.as_secs(),
        answers(&batches)
    );
    if batches.accepted == 0 {
        bail!("no batch was accepted: {}", answers(&batches));
    }
    js.get_stream(&settings.name)
        .await
        .context("the stream")?
        .purge()
        .await
        .context("purge")?;

    // Maximum-size single messages (each goes to the Object Store: over max_payload).
    let single_bytes = if options.quick {
        2 * 1024 * 1024
    } else {
        defaults::API_MAX_BODY_BYTES
    };
    let single = bytes::Bytes::from(body_of_size(single_bytes));
    let singles = burst(
        &api,
        &format!("http://127.0.0.1:{port}/api/ingest/message/order"),
        "application/json",
        single.clone(),
        requests,
        settle,
    )
    .await?;
    println!(
        "  {requests} single bodies of {:.1} MiB: peak {:.0} MiB, {:.0} MiB {}s after; answers: {}",
        single.len() as f64 / MIB,
        singles.peak_kib as f64 / 1024.0,
        singles.after_kib as f64 / 1024.0,
        settle.as_secs(),
        answers(&singles)
    );
    if singles.accepted == 0 {
        bail!("no single body was accepted: {}", answers(&singles));
    }

    let ceiling_mib = budget_mib + 64.0;
    for (what, burst) in [("batches", &batches), ("single bodies", &singles)] {
        let peak = burst.peak_kib as f64 / 1024.0;
        let after = burst.after_kib as f64 / 1024.0;
        report.push(Row {
            benchmark: format!("7. memory: {requests} max-size {what} at once"),
            measure: "nats-api peak RSS, MiB".into(),
            figure: format!("{peak:.0}"),
            baseline: format!("budget {budget_mib:.0}"),
            ratio: format!("{:.2}×", peak / budget_mib),
            target: format!("≤ {ceiling_mib:.0} (budget + 64)"),
            verdict: Verdict::of(peak <= ceiling_mib),
        });
        report.push(Row {
            benchmark: format!("7. memory: {requests} max-size {what} at once"),
            measure: format!("RSS {}s after the burst, MiB", settle.as_secs()),
            figure: format!("{after:.0}"),
            baseline: format!("idle {:.0}", idle_kib as f64 / 1024.0),
            ratio: format!("{:.2}×", burst.after_kib as f64 / idle_kib.max(1) as f64),
            target: "≤ 100".into(),
            verdict: Verdict::of(after <= 100.0),
        });
    }
    Ok(())
}
