//! The chart's alert rules and Grafana dashboard (helm/nomnom/files/) against a real
//! Prometheus scraping a running nats-api and TPC-H worker: every dashboard expression
//! returns data, every rule loads and evaluates without error, and every metric a rule
//! names exists. A misspelt or missing metric fails here, not in an operator's Grafana.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Worker, count, start_api, wait_for};
use nomnom_test_support::{NatsServer, free_port, workspace_root};
use serde_json::{Value, json};

/// A Prometheus process; killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `targets` (job → host:port) every second, with the chart's rule file.
    fn start(targets: &[(&str, String)], rules: &std::path::Path) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let scrape: Vec<Value> = targets
            .iter()
            .map(
                |(job, target)| json!({"job_name": job, "static_configs": [{"targets": [target]}]}),
            )
            .collect();
        // JSON is YAML: Prometheus reads it as its configuration file.
        let config = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules],
            "scrape_configs": scrape,
        });
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "start prometheus (scripts/install-deps.sh installs Debian's prometheus package)",
            );
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// `GET /api/v1/<path>` with `query`; the answer's `data`, or why it failed.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let reply = reqwest::Client::new()
            .get(format!("{}/api/v1/{path}", self.url))
            .query(query)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = reply.json().await.map_err(|e| e.to_string())?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(body.to_string())
        }
    }

    /// The instant vector `expression` evaluates to now.
    async fn query(&self, expression: &str) -> Result<Vec<Value>, String> {
        let data = self.api("query", &[("query", expression)]).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until `expression` returns data; fails with the last answer.
    async fn wait_for_data(&self, expression: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let answer = self.query(expression).await;
            if matches!(&answer, Ok(result) if !result.is_empty()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no data for {expression}: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The metric names an expression reads (all of nomnom's start with one of three prefixes).
fn metric_names(expression: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (start, _) in expression.match_indices(['i', 'w', 'p']) {
        let rest = &expression[start..];
        let boundary = start == 0
            || !expression.as_bytes()[start - 1].is_ascii_alphanumeric()
                && expression.as_bytes()[start - 1] != b'_';
        if boundary
            && ["ingest_", "worker_", "pipeline_"]
                .iter()
                .any(|p| rest.starts_with(p))
        {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            names.push(name);
        }
    }
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_and_dashboard_expression_reads_real_metrics() {
    let chart = workspace_root().join("helm/nomnom/files");
    let rules_file = chart.join("prometheus-rules.yaml");
    let rules: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&rules_file).unwrap()).unwrap();
    let rule_expressions: Vec<(String, String)> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .map(|r| {
            (
                r["alert"].as_str().unwrap().to_owned(),
                r["expr"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(chart.join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    // Grafana's variables, as the dashboard's defaults resolve them.
    let dashboard_expressions: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "30s")
                .replace("$namespace", ".*")
        })
        .collect();
    assert!(rule_expressions.len() >= 5 && dashboard_expressions.len() >= 15);

    // The pipeline, scraped from the start.
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", dir.path().join("tpch.db").display());
    let nats = NatsServer::start();
    let api = start_api(&nats).await;
    let worker = Worker::start_with(&nats, &database_url, &[]);
    worker.wait_ready().await;
    let prometheus = Prometheus::start(
        &[
            ("nats-api", api.trim_start_matches("http://").to_owned()),
            ("worker", format!("127.0.0.1:{}", worker.1)),
        ],
        &rules_file,
    );
    prometheus.wait_for_data("up{job=\"nats-api\"} == 1").await;
    prometheus.wait_for_data("up{job=\"worker\"} == 1").await;
    // Dead letters are counted from zero before the first one.
    prometheus
        .wait_for_data("worker_dlq_messages_total == 0")
        .await;

    // A persisted order, then a dead-lettered one.
    let client = reqwest::Client::new();
    let mut orders = tpch_data::orders(0.001);
    let mut bad = orders.next().unwrap();
    bad["o_totalprice"] = json!("-1.00");
    let good = orders.next().unwrap();
    let line_items = good["lineitems"].as_array().unwrap().len();
    for order in [good, bad] {
        let reply = client
            .post(format!("{api}/api/ingest/message/order"))
            .json(&order)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 202);
    }
    wait_for(Duration::from_secs(30), "the order persisted", || {
        count(&database_url, "SELECT count(*) AS n FROM orders") == 1
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while common::dlq_len(&nats).await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bad order was not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for expression in &dashboard_expressions {
        prometheus.wait_for_data(expression).await;
    }
    // Rows by table: the persisted order's own row and each of its line items; none of
    // the dead-lettered order's.
    for (table, rows) in [("orders", 1), ("lineitem", line_items)] {
        prometheus
            .wait_for_data(&format!(
                "worker_rows_persisted_total{{table=\"{table}\"}} == {rows}"
            ))
            .await;
    }
    for (alert, expression) in &rule_expressions {
        prometheus
            .query(expression)
            .await
            .unwrap_or_else(|e| panic!("{alert}: {e}"));
        let names = metric_names(expression);
        assert!(!names.is_empty(), "{alert}: {expression}");
        for name in names {
            prometheus.wait_for_data(&name).await;
        }
    }
    // Prometheus loaded the rule file and evaluates every rule without error.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let groups = prometheus.api("rules", &[]).await.unwrap();
        let loaded: Vec<Value> = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect();
        assert_eq!(loaded.len(), rule_expressions.len(), "{groups}");
        let evaluated = loaded.iter().all(|r| r["health"] == "ok");
        if evaluated {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline && loaded.iter().all(|r| r["health"] != "err"),
            "rules not evaluated cleanly: {groups}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The first dead letter is an increase Prometheus sees: its alert fires.
    prometheus
        .wait_for_data("ALERTS{alertname=\"NomnomDeadLetters\",alertstate=\"firing\"}")
        .await;
}
