//! The memory budget for request bodies, against a real nats-server: a request that would
//! exceed it gets 503 with Retry-After before any of its body is read, and publishes
//! nothing; the budget comes back when requests end.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use axum::{body::Body, http::Request, http::StatusCode};
use bytes::Bytes;
use common::{Harness, eventually, post};
use futures::SinkExt;
use nomnom_test_support::NatsServer;

const KIB: usize = 1024;

#[tokio::test]
async fn a_request_over_the_budget_gets_503_and_publishes_nothing() {
    let h = Harness::start_with(NatsServer::start(), |c| {
        c.max_body_bytes = 64 * KIB;
        c.body_budget_bytes = 200 * KIB;
    })
    .await;
    // A body still coming holds its reservation: without a Content-Length, twice (the
    // body and its encoded copy) 64 KiB to begin with, more as it comes.
    let (mut sender, receiver) = futures::channel::mpsc::channel::<Result<Bytes, Infallible>>(1);
    let slow = Request::post("/api/ingest/message/order")
        .header("content-type", "application/json")
        .body(Body::from_stream(receiver))
        .unwrap();
    let app = h.app.clone();
    let slow = tokio::spawn(async move { common::send(&app, slow).await });
    sender
        .send(Ok(Bytes::from_static(b"{\"o_orderkey\": ")))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.state.budget.in_use_bytes() == 128 * KIB
        })
        .await,
        "the slow request reserved {} bytes",
        h.state.budget.in_use_bytes()
    );

    // 2 × 40,000 bytes more would pass the 200 KiB budget.
    let body = format!("{{\"pad\": \"{}\"}}", "x".repeat(40_000 - 12));
    let with_length = |uri: &str| {
        let mut request = post(uri, &body);
        request
            .headers_mut()
            .insert("content-length", body.len().into());
        request
    };
    for uri in ["/api/ingest/message/order", "/api/ingest/batch/order"] {
        let reply = h.send(with_length(uri)).await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text
        );
        assert_eq!(reply.error_code(), "busy");
        assert!(
            reply
                .error_message()
                .contains("as many request bodies as its memory budget allows (200 KiB"),
            "{}",
            reply.text
        );
        assert_eq!(reply.headers["retry-after"], "1");
    }
    assert_eq!(h.stream_len().await, 0, "nothing published");

    // The slow request ends: its reservation comes back, and the refused one passes.
    sender.send(Ok(Bytes::from_static(b"1}"))).await.unwrap();
    drop(sender);
    let first = slow.await.unwrap();
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    assert_eq!(h.state.budget.in_use_bytes(), 0);
    let reply = h.send(with_length("/api/ingest/message/order")).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(h.stream_len().await, 2);
}
