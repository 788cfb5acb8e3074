//! A three-node JetStream cluster on loopback ports with an R3 stream, nats-api and the
//! TPC-H worker connected to all three servers, PostgreSQL behind the worker. Clients
//! post orders one by one and retry with the same Idempotency-Key until they get a 202,
//! as the HTTP API tells them to. Through a stream leader killed under load, the loss of
//! two of three nodes (503, never 202) and a rolling restart, every order ends in the
//! database exactly once.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Worker, assert_exactly_once, count, start_api_with, wait_for};
use nomnom_runtime::{NatsConfig, StreamSettings};
use nomnom_test_support::{NatsCluster, Postgres};
use serde_json::Value;

const STREAM: &str = "MESSAGES";

/// Posts each order until it is accepted (202), retrying with the same key after any
/// other answer; counts acceptances in `accepted`. Returns the statuses seen.
async fn post_until_accepted(
    api: String,
    orders: Vec<Value>,
    accepted: Arc<AtomicUsize>,
) -> Vec<u16> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut seen = Vec::new();
    for order in orders {
        let key = format!("cluster-order-{}", order["o_orderkey"]);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let reply = client
                .post(format!("{api}/api/ingest/message/order"))
                .header("idempotency-key", &key)
                .json(&order)
                .send()
                .await;
            let status = reply.map(|r| r.status().as_u16()).unwrap_or(0);
            seen.push(status);
            if status == 202 {
                accepted.fetch_add(1, Ordering::Relaxed);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "order {key} never accepted: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    seen
}

fn line_items(orders: &[Value]) -> i64 {
    orders
        .iter()
        .map(|o| o["lineitems"].as_array().unwrap().len() as i64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r3_cluster_survives_leader_loss_quorum_loss_and_a_rolling_restart() {
    let mut cluster = NatsCluster::start(3);
    let pg = Postgres::start();
    let url = pg.create_database("cluster");
    let api = start_api_with(nats_api::ApiConfig {
        nats: NatsConfig {
            url: cluster.urls(),
            ..Default::default()
        },
        stream: StreamSettings {
            replicas: 3,
            ..Default::default()
        },
        publish_timeout: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let _worker = Worker::start_on(&cluster.urls(), &url, &[("NOMNOM_STREAM_REPLICAS", "3")]);
    wait_for(
        Duration::from_secs(30),
        "an R3 stream with all replicas current",
        || cluster.stream_healthy(STREAM, 3),
    )
    .await;
    let all: Vec<Value> = tpch_data::orders(0.002).take(900).collect();
    let (first, rest) = all.split_at(300);
    let (second, third) = rest.split_at(300);

    // 1. The stream leader killed (SIGKILL) while orders are being posted.
    let accepted = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(post_until_accepted(
        api.clone(),
        first.to_vec(),
        Arc::clone(&accepted),
    ));
    wait_for(Duration::from_secs(60), "100 orders accepted", || {
        accepted.load(Ordering::Relaxed) >= 100
    })
    .await;
    let old_leader = cluster.stream_leader(STREAM).expect("a stream leader");
    cluster.server(old_leader).kill();
    wait_for(Duration::from_secs(30), "a new stream leader", || {
        cluster
            .stream_leader(STREAM)
            .is_some_and(|leader| leader != old_leader)
    })
    .await;
    let statuses = load.await.unwrap();
    assert_eq!(accepted.load(Ordering::Relaxed), first.len());
    assert!(
        statuses.iter().all(|s| matches!(s, 202 | 503 | 0)),
        "only 202 or 503 while the leader moves: {statuses:?}"
    );
    cluster.server(old_leader).restart();
    wait_for(
        Duration::from_secs(60),
        "the first orders persisted",
        || count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == first.len() as i64,
    )
    .await;
    assert_exactly_once(&url, first.len() as i64, line_items(first));

    // 2. Two of three nodes down: no quorum, so nothing can be stored; the API must say
    // 503 and never 202. Nothing of those requests may be half-stored.
    wait_for(
        Duration::from_secs(30),
        "the restarted node caught up",
        || cluster.stream_healthy(STREAM, 3),
    )
    .await;
    cluster.server(0).kill();
    cluster.server(1).kill();
    let client = reqwest::Client::new();
    let refused: Vec<&Value> = second.iter().take(3).collect();
    for order in &refused {
        let reply = client
            .post(format!("{api}/api/ingest/message/order"))
            .header(
                "idempotency-key",
                format!("cluster-order-{}", order["o_orderkey"]),
            )
            .json(order)
            .send()
            .await
            .unwrap();
        let status = reply.status().as_u16();
        let body = reply.text().await.unwrap();
        assert_eq!(status, 503, "without quorum: {body}");
    }
    cluster.server(0).restart();
    cluster.server(1).restart();
    wait_for(
        Duration::from_secs(60),
        "quorum back with all replicas current",
        || cluster.stream_healthy(STREAM, 3),
    )
    .await;
    assert_eq!(
        stream_messages(&cluster, STREAM).await,
        first.len() as u64,
        "a 503'd order was stored in the stream"
    );

    // 3. A rolling restart of all three nodes while the clients retry the refused orders
    // and post the rest.
    let accepted = Arc::new(AtomicUsize::new(0));
    let later: Vec<Value> = second.iter().chain(third).cloned().collect();
    let load = tokio::spawn(post_until_accepted(
        api.clone(),
        later.clone(),
        Arc::clone(&accepted),
    ));
    for member in 0..cluster.len() {
        let before = accepted.load(Ordering::Relaxed);
        wait_for(
            Duration::from_secs(60),
            "orders accepted before the next restart",
            || accepted.load(Ordering::Relaxed) >= (before + 50).min(later.len()),
        )
        .await;
        cluster.server(member).restart();
        wait_for(
            Duration::from_secs(60),
            "all replicas current after a restart",
            || cluster.stream_healthy(STREAM, 3),
        )
        .await;
    }
    load.await.unwrap();
    wait_for(Duration::from_secs(120), "every order persisted", || {
        count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == all.len() as i64
    })
    .await;
    assert_exactly_once(&url, all.len() as i64, line_items(&all));
    assert_eq!(dlq_len_at(&cluster).await, 0);
}

async fn dlq_len_at(cluster: &NatsCluster) -> u64 {
    stream_messages(cluster, "MESSAGES_DLQ").await
}

async fn stream_messages(cluster: &NatsCluster, stream: &str) -> u64 {
    let servers: Vec<async_nats::ServerAddr> = cluster
        .urls()
        .split(',')
        .map(|url| url.parse().unwrap())
        .collect();
    let client = async_nats::connect(servers).await.unwrap();
    let js = async_nats::jetstream::new(client);
    match js.get_stream(stream).await {
        Ok(mut stream) => stream.info().await.unwrap().state.messages,
        Err(_) => 0,
    }
}
