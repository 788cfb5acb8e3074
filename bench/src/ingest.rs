//! Benchmarks 1 and 2: HTTP ingest into JetStream, single messages (under wrk) and
//! NDJSON batches, each against its baseline in the same run.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream;
use futures::{StreamExt, stream::FuturesUnordered};
use nomnom_runtime::stream::{StreamSettings, ensure_stream};
use nomnom_test_support::{NatsServer, free_port};

use crate::Options;
use crate::util::{
    Proc, Row, RssSampler, Verdict, binary, body_of_size, median, thousands, wait_http_ok,
};

const API_KEY: &str = "bench-key-0123456789";
const BODY_BYTES: usize = 512;
/// The GitHub webhook secret of the nats-api that verifies signatures.
const WEBHOOK_SECRET: &str = "bench-webhook-secret-0123456789";

/// What the memory benchmark reports about nats-api.
#[derive(Debug, Default, Clone, Copy)]
pub struct ApiMemory {
    /// Peak resident set size under the single-message load.
    pub loaded_kib: u64,
}

/// One wrk run's figures.
#[derive(Debug, Clone, Copy)]
struct WrkFigures {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn start_api(nats: &NatsServer, port: u16) -> anyhow::Result<Proc> {
    Proc::spawn(
        &binary("nats-api"),
        &[],
        &[
            ("NATS_URL", nats.url()),
            ("NOMNOM_LISTEN", format!("127.0.0.1:{port}")),
            ("NOMNOM_API_KEYS", API_KEY.to_owned()),
            ("NOMNOM_LOG_FORMAT", "json".to_owned()),
        ],
    )
}

/// nats-api verifying GitHub signatures (`X-Hub-Signature-256`) instead of API keys.
fn start_signed_api(nats: &NatsServer, port: u16) -> anyhow::Result<Proc> {
    Proc::spawn(
        &binary("nats-api"),
        &[],
        &[
            ("NATS_URL", nats.url()),
            ("NOMNOM_LISTEN", format!("127.0.0.1:{port}")),
            (
                "NOMNOM_WEBHOOKS",
                "scheme=github,secrets-env=BENCH_WEBHOOK_SECRET".to_owned(),
            ),
            ("BENCH_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
            ("NOMNOM_LOG_FORMAT", "json".to_owned()),
        ],
    )
}

/// GitHub's `X-Hub-Signature-256` value for `body`.
fn github_signature(body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn js_of(nats: &NatsServer) -> anyhow::Result<jetstream::Context> {
    Ok(jetstream::new(async_nats::connect(nats.url()).await?))
}

async fn stream_messages(js: &jetstream::Context) -> anyhow::Result<u64> {
    Ok(js
        .get_stream("MESSAGES")
        .await?
        .info()
        .await?
        .state
        .messages)
}

async fn purge(js: &jetstream::Context) -> anyhow::Result<()> {
    js.get_stream("MESSAGES").await?.purge().await?;
    Ok(())
}

/// `1.23ms` → 1.23; `850.00us` → 0.85; `1.20s` → 1200.
fn parse_wrk_duration_ms(text: &str) -> Option<f64> {
    let text = text.trim();
    for (unit, factor) in [("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("m", 60_000.0)] {
        if let Some(number) = text.strip_suffix(unit) {
            if let Ok(value) = number.parse::<f64>() {
                return Some(value * factor);
            }
        }
    }
    None
}

fn parse_wrk(output: &str) -> anyhow::Result<WrkFigures> {
    let mut figures = WrkFigures {
        requests_per_second: f64::NAN,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        errors: 0,
    };
    for line in output.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            figures.requests_per_second = rest.trim().parse()?;
        } else if let Some(rest) = line.strip_prefix("50%") {
            figures.p50_ms = parse_wrk_duration_ms(rest).context("wrk p50")?;
        } else if let Some(rest) = line.strip_prefix("99%") {
            figures.p99_ms = parse_wrk_duration_ms(rest).context("wrk p99")?;
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            figures.errors += rest.trim().parse::<u64>()?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            figures.errors += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if figures.requests_per_second.is_nan() {
        bail!("wrk printed no Requests/sec:\n{output}");
    }
    Ok(figures)
}

fn run_wrk(url: &str, script: &std::path::Path, seconds: u64) -> anyhow::Result<WrkFigures> {
    let output = std::process::Command::new("wrk")
        .args(["-t1", "-c64", &format!("-d{seconds}s"), "--latency", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .context(
            "cannot run wrk: install it (apt-get install wrk; scripts/install-deps.sh does)",
        )?;
    if !output.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    parse_wrk(&String::from_utf8_lossy(&output.stdout))
}

/// Benchmark 1: single 512-byte messages, 64 connections, nats-api (API keys, metrics,
/// request ids: everything on) against the minimal publish-and-await handler; and, in the
/// same run, nats-api verifying a GitHub HMAC-SHA256 signature of every body instead of
/// an API key (1b).
pub async fn single_messages(
    options: &Options,
    report: &mut Vec<Row>,
) -> anyhow::Result<ApiMemory> {
    let seconds = if options.quick { 2 } else { 10 };
    let nats = NatsServer::start();
    let js = js_of(&nats).await?;
    ensure_stream(&js, &StreamSettings::default()).await?;
    let (api_port, baseline_port, signed_port) = (free_port(), free_port(), free_port());
    let api = start_api(&nats, api_port)?;
    let _signed_api = start_signed_api(&nats, signed_port)?;
    let _baseline = Proc::spawn(
        &binary("baseline-api"),
        &[&format!("127.0.0.1:{baseline_port}"), &nats.url()],
        &[],
    )?;
    wait_http_ok(
        &format!("http://127.0.0.1:{api_port}/ready"),
        Duration::from_secs(30),
    )
    .await?;
    let body = body_of_size(BODY_BYTES);
    let client = reqwest::Client::new();
    let baseline_url = format!("http://127.0.0.1:{baseline_port}/api/ingest/message/order");
    let api_url = format!("http://127.0.0.1:{api_port}/api/ingest/message/order");
    let signed_url = format!("http://127.0.0.1:{signed_port}/api/ingest/message/order");
    wait_http_ok(
        &format!("http://127.0.0.1:{signed_port}/ready"),
        Duration::from_secs(30),
    )
    .await?;
    let signature = github_signature(body.as_bytes());
    for (name, value, status) in [
        ("X-Hub-Signature-256", signature.as_str(), 202),
        ("X-Hub-Signature-256", "sha256=00", 401),
    ] {
        let reply = client
            .post(&signed_url)
            .header("content-type", "application/json")
            .header(name, value)
            .body(body.clone())
            .send()
            .await?;
        if reply.status() != status {
            bail!(
                "the signing nats-api answered {} where {status} was due: {}",
                reply.status(),
                reply.text().await?
            );
        }
    }
    crate::util::wait_until_async("the baseline API", Duration::from_secs(30), || async {
        client
            .post(&baseline_url)
            .body(body.clone())
            .send()
            .await
            .is_ok_and(|r| r.status() == 202)
    })
    .await?;
    let accepted = client
        .post(&api_url)
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await?;
    if accepted.status() != 202 {
        bail!("nats-api refused the benchmark body: {}", accepted.status());
    }

    let dir = tempfile::tempdir()?;
    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{body}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {API_KEY}\"\n"
        ),
    )?;
    let signed_script = dir.path().join("post-signed.lua");
    std::fs::write(
        &signed_script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{body}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"X-Hub-Signature-256\"] = \"{signature}\"\n"
        ),
    )?;
    let (mut ours, mut theirs, mut signed) = (Vec::new(), Vec::new(), Vec::new());
    let mut loaded_kib = 0;
    for run in 0..options.runs {
        purge(&js).await?;
        let verified = run_wrk(&signed_url, &signed_script, seconds)?;
        if verified.errors > 0 {
            bail!("signed requests failed under load: the figures would not be comparable");
        }
        println!(
            "  run {}: nats-api verifying GitHub signatures {} req/s (p50 {:.2} ms, p99 {:.2} ms)",
            run + 1,
            thousands(verified.requests_per_second),
            verified.p50_ms,
            verified.p99_ms
        );
        signed.push(verified);
        purge(&js).await?;
        let base = run_wrk(&baseline_url, &script, seconds)?;
        purge(&js).await?;
        let sampler = RssSampler::start(api.pid());
        let nomnom = run_wrk(&api_url, &script, seconds)?;
        loaded_kib = loaded_kib.max(sampler.peak_kib());
        println!(
            "  run {}: nats-api {} req/s (p50 {:.2} ms, p99 {:.2} ms, {} errors); baseline {} req/s (p50 {:.2} ms, p99 {:.2} ms, {} errors)",
            run + 1,
            thousands(nomnom.requests_per_second),
            nomnom.p50_ms,
            nomnom.p99_ms,
            nomnom.errors,
            thousands(base.requests_per_second),
            base.p50_ms,
            base.p99_ms,
            base.errors
        );
        if nomnom.errors > 0 || base.errors > 0 {
            bail!("requests failed under load: the figures would not be comparable");
        }
        ours.push(nomnom);
        theirs.push(base);
    }
    let pick = |runs: &[WrkFigures], f: fn(&WrkFigures) -> f64| {
        median(&runs.iter().map(f).collect::<Vec<_>>())
    };
    let (rps, base_rps) = (
        pick(&ours, |w| w.requests_per_second),
        pick(&theirs, |w| w.requests_per_second),
    );
    let ratio = rps / base_rps;
    report.push(Row {
        benchmark: "1. single-message ingest (64 conns, 512 B)".into(),
        measure: "requests/s".into(),
        figure: thousands(rps),
        baseline: thousands(base_rps),
        ratio: format!("{ratio:.2}×"),
        target: "≥ 0.9× and ≥ 25,000".into(),
        verdict: Verdict::of(ratio >= 0.9 && rps >= 25_000.0),
    });
    report.push(Row {
        benchmark: "1. single-message ingest".into(),
        measure: "latency p50 / p99".into(),
        figure: format!(
            "{:.2} / {:.2} ms",
            pick(&ours, |w| w.p50_ms),
            pick(&ours, |w| w.p99_ms)
        ),
        baseline: format!(
            "{:.2} / {:.2} ms",
            pick(&theirs, |w| w.p50_ms),
            pick(&theirs, |w| w.p99_ms)
        ),
        ratio: String::new(),
        target: String::new(),
        verdict: Verdict::Info,
    });
    let signed_rps = pick(&signed, |w| w.requests_per_second);
    report.push(Row {
        benchmark: "1b. single-message ingest, GitHub signature verified (HMAC-SHA256 of 512 B)"
            .into(),
        measure: "requests/s (baseline: nats-api with an API key)".into(),
        figure: thousands(signed_rps),
        baseline: thousands(rps),
        ratio: format!("{:.2}×", signed_rps / rps),
        target: String::new(),
        verdict: Verdict::Info,
    });
    report.push(Row {
        benchmark: "1b. single-message ingest, GitHub signature verified".into(),
        measure: "latency p50 / p99".into(),
        figure: format!(
            "{:.2} / {:.2} ms",
            pick(&signed, |w| w.p50_ms),
            pick(&signed, |w| w.p99_ms)
        ),
        baseline: format!(
            "{:.2} / {:.2} ms",
            pick(&ours, |w| w.p50_ms),
            pick(&ours, |w| w.p99_ms)
        ),
        ratio: String::new(),
        target: String::new(),
        verdict: Verdict::Info,
    });
    Ok(ApiMemory { loaded_kib })
}

/// Benchmark 2: NDJSON batches of 1,000 messages through nats-api against raw pipelined
/// JetStream publishing of the same bodies (1,024 acknowledgements outstanding).
pub async fn batches(options: &Options, report: &mut Vec<Row>) -> anyhow::Result<()> {
    const PER_REQUEST: usize = 1_000;
    const REQUESTS_IN_FLIGHT: usize = 4;
    let total = if options.quick { 4_000 } else { 200_000 };
    let nats = NatsServer::start();
    let js = js_of(&nats).await?;
    ensure_stream(&js, &StreamSettings::default()).await?;
    let api_port = free_port();
    let _api = start_api(&nats, api_port)?;
    wait_http_ok(
        &format!("http://127.0.0.1:{api_port}/ready"),
        Duration::from_secs(30),
    )
    .await?;
    let body = body_of_size(BODY_BYTES);
    let ndjson: bytes::Bytes = std::iter::repeat_n(format!("{body}\n"), PER_REQUEST)
        .collect::<String>()
        .into();
    let url = format!("http://127.0.0.1:{api_port}/api/ingest/batch/order");
    let client = reqwest::Client::new();

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..options.runs {
        // Baseline: the same bodies straight into JetStream.
        purge(&js).await?;
        let started = Instant::now();
        let mut pending = FuturesUnordered::new();
        let payload = bytes::Bytes::from(body.clone());
        for n in 0..total {
            if pending.len() >= 1_024 {
                pending.next().await.context("an ack")??;
            }
            let ack = js
                .publish(format!("messages.ingest.order.{n}"), payload.clone())
                .await?;
            pending.push(ack.into_future());
        }
        while let Some(ack) = pending.next().await {
            ack?;
        }
        let base = total as f64 / started.elapsed().as_secs_f64();
        if stream_messages(&js).await? != total as u64 {
            bail!("the baseline did not store every message");
        }

        purge(&js).await?;
        let started = Instant::now();
        let requests = total / PER_REQUEST;
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..requests)
            .map(|_| {
                let (client, url, ndjson) = (client.clone(), url.clone(), ndjson.clone());
                async move {
                    let reply = client
                        .post(url)
                        .bearer_auth(API_KEY)
                        .header("content-type", "application/x-ndjson")
                        .body(ndjson)
                        .send()
                        .await?;
                    if reply.status() != 202 {
                        bail!("batch answered {}: {}", reply.status(), reply.text().await?);
                    }
                    Ok(())
                }
            })
            .buffer_unordered(REQUESTS_IN_FLIGHT)
            .collect()
            .await;
        results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        let nomnom = total as f64 / started.elapsed().as_secs_f64();
        let stored = stream_messages(&js).await?;
        if stored != total as u64 {
            bail!("nats-api stored {stored} of {total} messages");
        }
        println!(
            "  run {}: nats-api {} msg/s; raw JetStream {} msg/s",
            run + 1,
            thousands(nomnom),
            thousands(base)
        );
        ours.push(nomnom);
        theirs.push(base);
    }
    let (rate, base) = (median(&ours), median(&theirs));
    report.push(Row {
        benchmark: "2. batch ingest (NDJSON, 1,000 per request)".into(),
        measure: "messages/s into JetStream".into(),
        figure: thousands(rate),
        baseline: thousands(base),
        ratio: format!("{:.2}×", rate / base),
        target: "≥ 0.7×".into(),
        verdict: Verdict::of(rate / base >= 0.7),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let output = "Running 2s test @ http://127.0.0.1:1/x\n  1 threads and 64 connections\n  Latency Distribution\n     50%    2.10ms\n     75%    3.00ms\n     90%    4.00ms\n     99%  850.00us\n  1000 requests in 2.00s, 1.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  12345.67\n";
        let figures = parse_wrk(output).unwrap();
        assert_eq!(figures.requests_per_second, 12345.67);
        assert_eq!(figures.p50_ms, 2.1);
        assert!((figures.p99_ms - 0.85).abs() < 1e-9);
        assert_eq!(figures.errors, 7);
        assert!(parse_wrk("nothing").is_err());
    }
}
