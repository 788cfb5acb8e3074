//! Benchmark 4 (end to end at a fixed offered rate: HTTP accept to committed row, and
//! the consumer lag) and benchmark 5 (resident memory of nats-api and the worker, idle
//! and under that load).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use async_nats::jetstream::{self, consumer::pull};
use nomnom_test_support::{NatsServer, free_port};

use crate::Options;
use crate::ingest::ApiMemory;
use crate::util::{Proc, Row, RssSampler, Verdict, binary, thousands, wait_http_ok, wait_until};
use crate::worker::{count, durable_postgres, migrated_database};

const API_KEY: &str = "bench-key-e2e";

async fn consumer_lag(js: &jetstream::Context) -> Option<u64> {
    let mut consumer: jetstream::consumer::Consumer<pull::Config> = js
        .get_stream("MESSAGES")
        .await
        .ok()?
        .get_consumer("workers")
        .await
        .ok()?;
    let info = consumer.info().await.ok()?;
    Some(info.num_pending + info.num_ack_pending as u64)
}

#[derive(diesel::QueryableByName)]
struct Percentiles {
    #[diesel(sql_type = diesel::sql_types::Double)]
    p50: f64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    p99: f64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    before_write_p99: f64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    write_p99: f64,
}

/// Median and 99th percentile, in ms, from each message's receipt by nats-api to the
/// commit of the transaction that wrote its status row (`track_commit_timestamp`); and
/// the 99th percentiles of its two parts, split where the worker began the write
/// (`processed_at`, stamped as the status row is made): receipt to write (NATS, the
/// batch wait, parsing, waiting for the write before), and the write to its commit.
fn accept_to_commit_ms(conn: &mut diesel::PgConnection) -> anyhow::Result<Percentiles> {
    use diesel::RunQueryDsl;
    let row = diesel::sql_query(
        "SELECT (percentile_cont(0.5) WITHIN GROUP (ORDER BY t))::float8 * 1000 AS p50, \
                (percentile_cont(0.99) WITHIN GROUP (ORDER BY t))::float8 * 1000 AS p99, \
                (percentile_cont(0.99) WITHIN GROUP (ORDER BY before_write))::float8 * 1000 \
                    AS before_write_p99, \
                (percentile_cont(0.99) WITHIN GROUP (ORDER BY write))::float8 * 1000 \
                    AS write_p99 \
         FROM (SELECT extract(epoch FROM committed - received_at) AS t, \
                      extract(epoch FROM processed_at - received_at) AS before_write, \
                      extract(epoch FROM committed - processed_at) AS write \
               FROM (SELECT pg_xact_commit_timestamp(xmin) AS committed, received_at, \
                            processed_at FROM nomnom_message_status) AS stamped) AS latencies",
    )
    .get_result::<Percentiles>(conn)?;
    Ok(row)
}

fn kib_to_mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub async fn fixed_rate(
    options: &Options,
    api_memory: ApiMemory,
    report: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let (rate, seconds) = if options.quick {
        (200u64, 3u64)
    } else {
        (5_000, 30)
    };
    let total = (rate * seconds) as usize;
    let bodies: Vec<bytes::Bytes> = tpch_data::orders(0.1)
        .take(total)
        .map(|order| bytes::Bytes::from(order.to_string()))
        .collect();

    let pg = durable_postgres();
    let url = migrated_database(&pg, "e2e")?;
    let nats = NatsServer::start();
    let (api_port, worker_port) = (free_port(), free_port());
    let api = Proc::spawn(
        &binary("nats-api"),
        &[],
        &[
            ("NATS_URL", nats.url()),
            ("NOMNOM_LISTEN", format!("127.0.0.1:{api_port}")),
            ("NOMNOM_API_KEYS", API_KEY.to_owned()),
            ("NOMNOM_LOG_FORMAT", "json".to_owned()),
        ],
    )?;
    wait_http_ok(
        &format!("http://127.0.0.1:{api_port}/ready"),
        Duration::from_secs(30),
    )
    .await?;
    let worker = Proc::spawn(
        &binary("tpch-worker"),
        &[],
        &[
            ("NATS_URL", nats.url()),
            ("DATABASE_URL", url.clone()),
            ("NOMNOM_WORKER_LISTEN", format!("127.0.0.1:{worker_port}")),
        ],
    )?;
    wait_http_ok(
        &format!("http://127.0.0.1:{worker_port}/ready"),
        Duration::from_secs(30),
    )
    .await?;
    let (api_idle, worker_idle) = (api.rss_kib(), worker.rss_kib());
    let js = jetstream::new(async_nats::connect(nats.url()).await?);

    let api_sampler = RssSampler::start(api.pid());
    let worker_sampler = RssSampler::start(worker.pid());
    let max_lag = Arc::new(AtomicU64::new(0));
    let lag_task = {
        let (js, max_lag) = (js.clone(), Arc::clone(&max_lag));
        tokio::spawn(async move {
            loop {
                if let Some(lag) = consumer_lag(&js).await {
                    max_lag.fetch_max(lag, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    // Open loop: message n leaves at n / rate seconds, whatever the replies do.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let target = format!("http://127.0.0.1:{api_port}/api/ingest/message/order");
    let started = tokio::time::Instant::now();
    let mut requests = Vec::with_capacity(total);
    for (n, body) in bodies.into_iter().enumerate() {
        tokio::time::sleep_until(started + Duration::from_secs_f64(n as f64 / rate as f64)).await;
        let (client, target) = (client.clone(), target.clone());
        requests.push(tokio::spawn(async move {
            client
                .post(target)
                .bearer_auth(API_KEY)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    let offered = total as f64 / started.elapsed().as_secs_f64();
    let mut refused = 0;
    for request in requests {
        if request.await.unwrap_or(0) != 202 {
            refused += 1;
        }
    }
    let sent_at = Instant::now();
    let mut client_pg = crate::worker::connect(&url)?;
    let accepted = (total - refused) as i64;
    wait_until(
        "every accepted message persisted",
        Duration::from_secs(300),
        || count(&mut client_pg, "nomnom_message_status") >= accepted,
    )
    .await?;
    let drain = sent_at.elapsed().as_secs_f64();
    lag_task.abort();
    let (api_loaded, worker_loaded) = (api_sampler.peak_kib(), worker_sampler.peak_kib());
    if refused > 0 {
        bail!("{refused} of {total} requests were not accepted at {rate} msg/s");
    }
    let Percentiles {
        p50,
        p99,
        before_write_p99,
        write_p99,
    } = accept_to_commit_ms(&mut client_pg)?;
    let max_lag = max_lag.load(Ordering::Relaxed);
    println!(
        "  offered {} msg/s for {seconds} s: accept→commit p50 {p50:.1} ms, p99 {p99:.1} ms (p99 accept→write {before_write_p99:.1} ms, write→commit {write_p99:.1} ms); max consumer lag {max_lag}; drained {drain:.1} s after the last request",
        thousands(offered)
    );
    // Bounded: never more than two seconds of traffic behind, and caught up soon after.
    let bounded = max_lag <= 2 * rate && drain < 5.0;
    report.push(Row {
        benchmark: format!(
            "4. end to end at {} msg/s for {seconds} s",
            thousands(rate as f64)
        ),
        measure: "HTTP accept → committed row, p50 / p99".into(),
        figure: format!("{p50:.1} / {p99:.1} ms"),
        baseline: String::new(),
        ratio: String::new(),
        target: String::new(),
        verdict: Verdict::Info,
    });
    report.push(Row {
        benchmark: "4. end to end".into(),
        measure: "p99 of its parts: accept → write begins / write → commit".into(),
        figure: format!("{before_write_p99:.1} / {write_p99:.1} ms"),
        baseline: String::new(),
        ratio: String::new(),
        target: String::new(),
        verdict: Verdict::Info,
    });
    report.push(Row {
        benchmark: "4. end to end".into(),
        measure: "max consumer lag; drain after last request".into(),
        figure: format!("{max_lag} messages; {drain:.1} s"),
        baseline: format!("offered {} msg/s", thousands(offered)),
        ratio: String::new(),
        target: "bounded (≤ 2 s of traffic, drained < 5 s)".into(),
        verdict: Verdict::of(bounded),
    });
    report.push(Row {
        benchmark: "5. memory (RSS)".into(),
        measure: "nats-api idle / under load".into(),
        figure: format!(
            "{} / {}",
            kib_to_mib(api_idle),
            kib_to_mib(api_memory.loaded_kib.max(api_loaded))
        ),
        baseline: String::new(),
        ratio: String::new(),
        target: String::new(),
        verdict: Verdict::Info,
    });
    report.push(Row {
        benchmark: "5. memory (RSS)".into(),
        measure: "worker idle / under load".into(),
        figure: format!(
            "{} / {}",
            kib_to_mib(worker_idle),
            kib_to_mib(worker_loaded)
        ),
        baseline: String::new(),
        ratio: String::new(),
        target: String::new(),
        verdict: Verdict::Info,
    });
    Ok(())
}
