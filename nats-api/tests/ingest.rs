//! POST /api/ingest/message against a real nats-server.

mod common;

use std::time::Duration;

use axum::{body::Body, http::Request, http::StatusCode};
use common::{Harness, eventually, post};
use nomnom_runtime::Body as EnvelopeBody;
use nomnom_test_support::{NatsOptions, NatsServer};
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn a_posted_message_is_stored_in_its_envelope() {
    let h = Harness::start().await;
    let reply = h.post("/api/ingest/message", r#"{"o_orderkey": 1}"#).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(reply.json["status"], "accepted");
    assert_eq!(reply.json["duplicate"], false);
    let id = reply.message_id();
    assert_eq!(id.get_version_num(), 7, "fresh ids are time-ordered v7");
    assert_eq!(
        reply.headers["location"],
        format!("/api/ingest/status/{id}").as_str()
    );
    assert!(reply.headers.contains_key("x-request-id"));

    assert_eq!(h.stream_len().await, 1);
    let (subject, envelope) = h.stored(1).await;
    assert_eq!(subject, format!("messages.ingest._.{id}"));
    assert_eq!(envelope.message_id, id);
    assert_eq!(envelope.entity, None);
    assert_eq!(
        envelope.request_id.as_deref(),
        reply.headers["x-request-id"].to_str().ok()
    );
    assert_eq!(
        envelope.body,
        EnvelopeBody::Inline(bytes::Bytes::from_static(br#"{"o_orderkey": 1}"#))
    );
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(reply.json["received_at"].as_str().unwrap()).unwrap(),
        envelope.received_at
    );
}

#[tokio::test]
async fn the_entity_hint_comes_from_the_path_or_a_header() {
    let h = Harness::start().await;
    let by_path = h.post("/api/ingest/message/order", "{}").await;
    assert_eq!(by_path.status, StatusCode::ACCEPTED);
    let by_header = h
        .send(
            Request::post("/api/ingest/message")
                .header("x-entity", "line-item")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(by_header.status, StatusCode::ACCEPTED);
    let (subject, envelope) = h.stored(1).await;
    assert_eq!(
        subject,
        format!("messages.ingest.order.{}", by_path.message_id())
    );
    assert_eq!(envelope.entity.unwrap().as_str(), "order");
    let (subject, _) = h.stored(2).await;
    assert!(
        subject.starts_with("messages.ingest.line-item."),
        "{subject}"
    );

    let conflicting = h
        .send(
            Request::post("/api/ingest/message/order")
                .header("x-entity", "customer")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(conflicting.status, StatusCode::BAD_REQUEST);
    assert!(
        conflicting
            .error_message()
            .contains("x-entity header names \"customer\"")
    );

    for bad in ["a.b", "a%20b", "_", "%C3%A4"] {
        let reply = h.post(&format!("/api/ingest/message/{bad}"), "{}").await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            reply.text
        );
        assert_eq!(reply.error_code(), "invalid_entity");
    }
    assert_eq!(h.stream_len().await, 2, "refused requests publish nothing");
}

#[tokio::test]
async fn malformed_or_empty_bodies_are_refused_with_the_position() {
    let h = Harness::start().await;
    let cases: [(&[u8], &str, &str); 6] = [
        (b"{\"a\": 1,,}", "invalid_json", "byte offset 8"),
        (b"", "empty_body", "empty"),
        (b"  \n ", "empty_body", "empty"),
        (
            b"{\"a\": \"\xff\"}",
            "invalid_json",
            "not valid UTF-8 (byte offset 7)",
        ),
        (b"{\"a\": \"nul\x00\"}", "invalid_json", "control character"),
        (
            b"{\"a\": 1} trailing",
            "invalid_json",
            "trailing characters",
        ),
    ];
    for (body, code, fragment) in cases {
        let reply = h
            .send(
                Request::post("/api/ingest/message")
                    .body(Body::from(body.to_vec()))
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body:?}");
        assert_eq!(reply.error_code(), code, "{body:?}");
        assert!(
            reply.error_message().contains(fragment),
            "{body:?}: {}",
            reply.error_message()
        );
    }
    let deep = "[".repeat(200) + &"]".repeat(200);
    let reply = h.post("/api/ingest/message", &deep).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.error_message().contains("deeper than 127 levels"),
        "{}",
        reply.text
    );
    let at_limit = "[".repeat(127) + &"]".repeat(127);
    let over_limit = "[".repeat(128) + &"]".repeat(128);
    assert_eq!(
        h.post("/api/ingest/message", &over_limit).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        h.post("/api/ingest/message", &at_limit).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        h.stream_len().await,
        1,
        "only the document at the limit was stored"
    );
}

#[tokio::test]
async fn idempotency_keys_give_one_message_and_the_same_id() {
    let h = Harness::start().await;
    let request = |body: &str, key: &str| {
        Request::post("/api/ingest/message/order")
            .header("idempotency-key", key)
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let first = h.send(request(r#"{"k":1}"#, "order-1")).await;
    let second = h.send(request("  {\"k\":1}\n", "order-1")).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(second.status, StatusCode::ACCEPTED);
    assert_eq!(first.message_id(), second.message_id());
    assert_eq!(first.json["duplicate"], false);
    assert_eq!(second.json["duplicate"], true);
    assert_eq!(
        first.json["received_at"], second.json["received_at"],
        "a duplicate answers with the original's receipt time"
    );
    assert_eq!(h.stream_len().await, 1);
    let (_, stored) = h.stored(1).await;
    assert_eq!(stored.idempotency_key.unwrap().as_str(), "order-1");

    let reused = h.send(request(r#"{"k":2}"#, "order-1")).await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reused.error_message().contains("different body"));

    let other = h.send(request(r#"{"k":1}"#, "order-2")).await;
    assert_ne!(other.message_id(), first.message_id());

    let bad = h.send(request("{}", "has space")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.error_code(), "invalid_idempotency_key");
    assert_eq!(h.stream_len().await, 2);
}

#[tokio::test]
async fn concurrent_posts_with_one_key_store_one_message() {
    let h = Harness::start().await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let app = h.app.clone();
        tasks.push(tokio::spawn(async move {
            common::send(
                &app,
                Request::post("/api/ingest/message")
                    .header("idempotency-key", "same-key")
                    .body(Body::from(r#"{"x":1}"#))
                    .unwrap(),
            )
            .await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut originals = 0;
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
        ids.insert(reply.message_id());
        if reply.json["duplicate"] == false {
            originals += 1;
        }
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(originals, 1, "exactly one request stored the message");
    assert_eq!(h.stream_len().await, 1);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_with_the_limit() {
    let h = Harness::start_with(NatsServer::start(), |c| c.max_body_bytes = 1000).await;
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2000));
    let reply = h.post("/api/ingest/message", &big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        reply.error_message().contains("the limit is 1000 bytes"),
        "{}",
        reply.text
    );

    // Without a Content-Length the limit still holds while streaming.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        vec![Ok(bytes::Bytes::from(big.clone()))];
    let streamed = h
        .send(
            Request::post("/api/ingest/message")
                .body(Body::from_stream(futures::stream::iter(chunks)))
                .unwrap(),
        )
        .await;
    assert_eq!(streamed.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(h.stream_len().await, 0);
}

#[tokio::test]
async fn bodies_over_max_payload_go_to_the_object_store() {
    let nats = NatsServer::start_with(NatsOptions {
        max_payload: Some(64 * 1024),
        ..Default::default()
    });
    let h = Harness::start_with(nats, |_| {}).await;
    let big = format!(r#"{{"pad":"{}"}}"#, "y".repeat(300 * 1024));
    let reply = h.post("/api/ingest/message/order", &big).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let id = reply.message_id();

    let (_, envelope) = h.stored(1).await;
    let raw =
        h.js.get_stream("MESSAGES")
            .await
            .unwrap()
            .get_raw_message(1)
            .await
            .unwrap();
    assert!(
        raw.payload.len() < 1024,
        "the stream message holds only the reference"
    );
    let EnvelopeBody::Stored(reference) = &envelope.body else {
        panic!("expected a claim-check, got an inline body");
    };
    assert_eq!(reference.bucket, "MESSAGES_BODIES");
    assert_eq!(reference.object, id.to_string());
    assert_eq!(reference.size, big.len() as u64);

    let store = h.js.get_object_store("MESSAGES_BODIES").await.unwrap();
    let mut object = store.get(&reference.object).await.unwrap();
    let mut stored = Vec::new();
    object.read_to_end(&mut stored).await.unwrap();
    assert_eq!(stored, big.as_bytes());

    // A small message on the same server still travels inline.
    let small = h.post("/api/ingest/message", "{}").await;
    assert_eq!(small.status, StatusCode::ACCEPTED);
    let (_, envelope) = h.stored(2).await;
    assert!(matches!(envelope.body, EnvelopeBody::Inline(_)));
}

#[tokio::test]
async fn too_many_publishes_in_flight_get_429_with_retry_after() {
    let h = Harness::start_with(NatsServer::start(), |c| c.max_in_flight = 1).await;
    // Hold the only in-flight slot with a publish whose acknowledgement nobody awaits yet.
    let held = h
        .state
        .publisher
        .jetstream()
        .send_publish(
            "messages.ingest._.held",
            async_nats::jetstream::message::PublishMessage::build(),
        )
        .await
        .unwrap();
    let reply = h.post("/api/ingest/message", "{}").await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reply.text
    );
    assert_eq!(reply.headers["retry-after"], "1");
    assert_eq!(reply.error_code(), "overloaded");
    held.await.unwrap();
    let reply = h.post("/api/ingest/message", "{}").await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "slot free again");
}

#[tokio::test]
async fn a_full_jetstream_store_answers_507_and_loses_nothing() {
    // The server's whole JetStream file store (not one stream's limit) runs out, as a
    // full disk would make it.
    let nats = NatsServer::start_with(NatsOptions {
        max_file_store: Some(256 * 1024),
        ..Default::default()
    });
    let h = Harness::start_with(nats, |_| {}).await;
    let body = format!(r#"{{"pad":"{}"}}"#, "s".repeat(4000));
    let mut accepted = 0u64;
    let mut refused = None;
    for _ in 0..200 {
        let reply = h.post("/api/ingest/message", &body).await;
        if reply.status == StatusCode::ACCEPTED {
            accepted += 1;
        } else {
            refused = Some(reply);
            break;
        }
    }
    let refused = refused.expect("the store filled up within 200 messages");
    assert_eq!(
        refused.status,
        StatusCode::INSUFFICIENT_STORAGE,
        "{}",
        refused.text
    );
    assert!(accepted > 0);
    assert_eq!(
        h.stream_len().await,
        accepted,
        "every 202 is stored, nothing else"
    );
}

#[tokio::test]
async fn a_full_stream_answers_507_and_stores_nothing_more() {
    let nats = NatsServer::start();
    let h = Harness::start_with(nats, |c| c.stream.max_bytes = 16 * 1024).await;
    let body = format!(r#"{{"pad":"{}"}}"#, "z".repeat(1000));
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let reply = h.post("/api/ingest/message", &body).await;
        statuses.push(reply.status);
        if reply.status != StatusCode::ACCEPTED {
            assert_eq!(
                reply.status,
                StatusCode::INSUFFICIENT_STORAGE,
                "{}",
                reply.text
            );
            assert_eq!(reply.error_code(), "insufficient_storage");
            assert_eq!(reply.headers["retry-after"], "1");
            break;
        }
    }
    let accepted = statuses
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count() as u64;
    assert!(accepted > 0 && accepted < 40, "{statuses:?}");
    assert_eq!(
        h.stream_len().await,
        accepted,
        "every 202 is stored, nothing else"
    );
}

#[tokio::test]
async fn nats_down_gives_503_fast_and_recovers() {
    let mut h = Harness::start().await;
    let ready = h
        .send(Request::get("/ready").body(Body::empty()).unwrap())
        .await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);

    h.nats.stop();
    let started = std::time::Instant::now();
    let reply = h.post("/api/ingest/message", "{}").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
    assert_eq!(reply.headers["retry-after"], "1");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "bounded by the publish timeout, took {:?}",
        started.elapsed()
    );
    let app = h.app.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let app = app.clone();
            async move {
                common::send(&app, Request::get("/ready").body(Body::empty()).unwrap())
                    .await
                    .status
                    == StatusCode::SERVICE_UNAVAILABLE
            }
        })
        .await
    );

    h.nats.restart();
    let app = h.app.clone();
    assert!(
        eventually(Duration::from_secs(15), || {
            let app = app.clone();
            async move {
                common::send(&app, Request::get("/ready").body(Body::empty()).unwrap())
                    .await
                    .status
                    == StatusCode::OK
            }
        })
        .await,
        "ready again after NATS restarts"
    );
    let reply = h.post("/api/ingest/message", "{}").await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(h.stream_len().await, 1, "no 503 left a message behind");
}

#[tokio::test]
async fn a_deleted_stream_is_recreated() {
    let h = Harness::start().await;
    h.js.delete_stream("MESSAGES").await.unwrap();
    let reply = h.post("/api/ingest/message", "{}").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
    assert!(
        reply.error_message().contains("being recreated"),
        "{}",
        reply.text
    );
    let app = h.app.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let app = app.clone();
            async move {
                common::send(&app, post("/api/ingest/message", "{}"))
                    .await
                    .status
                    == StatusCode::ACCEPTED
            }
        })
        .await
    );
    assert_eq!(h.stream_len().await, 1);
}
