//! POST /api/ingest/batch against a real nats-server.

mod common;

use axum::{body::Body, http::Request, http::StatusCode};
use common::Harness;
use futures::StreamExt;
use nomnom_test_support::NatsServer;

fn ndjson(uri: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/x-ndjson")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[tokio::test]
async fn ndjson_batches_report_each_line() {
    let h = Harness::start().await;
    let body = "{\"n\":1}\n{\"n\":2}\n\n{broken\n{\"n\":4}\r\n";
    let reply = h.send(ndjson("/api/ingest/batch/order", body)).await;
    assert_eq!(reply.status, StatusCode::MULTI_STATUS, "{}", reply.text);
    assert_eq!(reply.json["accepted"], 3);
    assert_eq!(reply.json["rejected"], 1);
    assert_eq!(reply.json["failed"], 0);
    let items = reply.json["items"].as_array().unwrap();
    let lines: Vec<_> = items
        .iter()
        .map(|i| (i["line"].as_u64().unwrap(), i["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        lines,
        [
            (1, "accepted"),
            (2, "accepted"),
            (4, "rejected"),
            (5, "accepted")
        ]
    );
    assert_eq!(items[2]["error"]["code"], "invalid_json");
    assert!(items[2]["message_id"].is_null());

    assert_eq!(h.stream_len().await, 3);
    for (sequence, item) in [(1, &items[0]), (2, &items[1]), (3, &items[3])] {
        let (subject, envelope) = h.stored(sequence).await;
        assert_eq!(
            envelope.message_id.to_string(),
            item["message_id"].as_str().unwrap()
        );
        assert!(subject.starts_with("messages.ingest.order."));
    }
    let (_, last) = h.stored(3).await;
    assert_eq!(
        last.body,
        nomnom_runtime::Body::Inline(bytes::Bytes::from_static(b"{\"n\":4}")),
        "the CR of a CRLF line is not part of the message"
    );
}

#[tokio::test]
async fn json_array_batches_are_all_or_nothing_on_syntax() {
    let h = Harness::start().await;
    let reply = h
        .post("/api/ingest/batch", r#"[{"a":1},{"b":2},[3]]"#)
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(reply.json["accepted"], 3);
    assert!(reply.json["items"][0]["line"].is_null());
    assert_eq!(reply.json["items"][2]["index"], 2);
    assert_eq!(h.stream_len().await, 3);

    let broken = h.post("/api/ingest/batch", r#"[{"a":1},{"b":]"#).await;
    assert_eq!(broken.status, StatusCode::BAD_REQUEST);
    assert!(
        broken.error_message().contains("byte offset"),
        "{}",
        broken.text
    );

    let not_array = h.post("/api/ingest/batch", r#"{"a":1}"#).await;
    assert_eq!(not_array.status, StatusCode::BAD_REQUEST);
    assert_eq!(not_array.error_code(), "invalid_batch");

    let empty = h.send(ndjson("/api/ingest/batch", "\n\n")).await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    assert_eq!(h.stream_len().await, 3);

    // Well-formed arrays still get each item checked as the worker will read it.
    let out_of_range = h
        .post("/api/ingest/batch", r#"[{"a":1},{"price":1e400}]"#)
        .await;
    assert_eq!(
        out_of_range.status,
        StatusCode::MULTI_STATUS,
        "{}",
        out_of_range.text
    );
    assert_eq!(out_of_range.json["accepted"], 1);
    assert_eq!(out_of_range.json["items"][1]["status"], "rejected");
    assert!(
        out_of_range.json["items"][1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("number out of range"),
        "{}",
        out_of_range.text
    );
    assert_eq!(h.stream_len().await, 4);
}

#[tokio::test]
async fn a_batch_of_only_bad_lines_is_a_400_and_publishes_nothing() {
    let h = Harness::start().await;
    let reply = h.send(ndjson("/api/ingest/batch", "nope\n{\n")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    assert_eq!(reply.json["rejected"], 2);
    assert_eq!(h.stream_len().await, 0);
}

#[tokio::test]
async fn large_batches_are_pipelined_and_complete() {
    let h = Harness::start().await;
    let body: String = (0..5000).map(|n| format!("{{\"n\":{n}}}\n")).collect();
    let reply = h.send(ndjson("/api/ingest/batch", &body)).await;
    assert_eq!(
        reply.status,
        StatusCode::ACCEPTED,
        "{}",
        &reply.text[..200.min(reply.text.len())]
    );
    assert_eq!(reply.json["accepted"], 5000);
    assert_eq!(h.stream_len().await, 5000);
    let ids: std::collections::HashSet<_> = reply.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 5000);
}

#[tokio::test]
async fn batch_limits_are_enforced() {
    let h = Harness::start_with(NatsServer::start(), |c| {
        c.max_batch_items = 3;
        c.max_batch_bytes = 100;
    })
    .await;
    // NDJSON streams: the items before the limit are published and listed.
    let reply = h.send(ndjson("/api/ingest/batch", "1\n2\n3\n4\n")).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text
    );
    assert!(
        reply
            .error_message()
            .contains("the batch has more than 3 items (line 4 is item 4)"),
        "{}",
        reply.text
    );
    assert_eq!(reply.json["accepted"], 3, "{}", reply.text);
    assert_eq!(h.stream_len().await, 3);
    // A declared length over the byte limit is refused before anything is read.
    let big = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(200));
    let mut request = ndjson("/api/ingest/batch", &big);
    request
        .headers_mut()
        .insert("content-length", big.len().into());
    let reply = h.send(request).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.error_message().contains("the limit is 100 bytes"));
    // Without one, the bytes are counted as they come.
    let reply = h
        .send(ndjson("/api/ingest/batch", &format!("[1]\n{big}")))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text
    );
    assert!(
        reply.error_message().contains("more than 100 bytes"),
        "{}",
        reply.text
    );
    // A JSON array is read whole: over the limit, nothing of it is published.
    let array = format!("[{}]", ["1"; 4].join(","));
    let reply = h
        .send(
            Request::post("/api/ingest/batch")
                .header("content-type", "application/json")
                .body(Body::from(array))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        reply.error_message().contains("the limit is 3"),
        "{}",
        reply.text
    );
    assert_eq!(h.stream_len().await, 3 + 1);
}

/// An NDJSON body that never ends: a batch that read it whole would never answer.
#[tokio::test]
async fn an_endless_ndjson_batch_is_answered_at_its_item_limit() {
    let h = Harness::start_with(NatsServer::start(), |c| c.max_batch_items = 5).await;
    let endless = futures::stream::iter(0u64..)
        .map(|n| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(format!("{{\"n\":{n}}}\n"))));
    let request = Request::post("/api/ingest/batch/order")
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(endless))
        .unwrap();
    let reply = tokio::time::timeout(std::time::Duration::from_secs(20), h.send(request))
        .await
        .expect("answered while the body was still coming");
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text
    );
    assert_eq!(reply.json["accepted"], 5);
    assert_eq!(h.stream_len().await, 5);
    let (_, envelope) = h.stored(5).await;
    let nomnom_runtime::envelope::Body::Inline(body) = envelope.body else {
        panic!("inline body")
    };
    assert_eq!(&body[..], b"{\"n\":4}");
}

#[tokio::test]
async fn a_batch_retried_with_its_idempotency_key_stores_nothing_new() {
    let h = Harness::start().await;
    let request = || {
        Request::post("/api/ingest/batch")
            .header("content-type", "application/x-ndjson")
            .header("idempotency-key", "batch-7")
            .body(Body::from("{\"n\":1}\n{\"n\":2}\n"))
            .unwrap()
    };
    let first = h.send(request()).await;
    let again = h.send(request()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(again.status, StatusCode::ACCEPTED);
    for index in 0..2 {
        assert_eq!(
            first.json["items"][index]["message_id"],
            again.json["items"][index]["message_id"]
        );
        assert_eq!(again.json["items"][index]["duplicate"], true);
    }
    assert_ne!(
        first.json["items"][0]["message_id"],
        first.json["items"][1]["message_id"]
    );
    assert_eq!(h.stream_len().await, 2);
}

#[tokio::test]
async fn a_batch_when_nats_is_down_fails_every_item_with_503() {
    let mut h = Harness::start().await;
    h.nats.stop();
    let reply = h.send(ndjson("/api/ingest/batch", "{}\n{}\n")).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
    assert_eq!(reply.json["failed"], 2);
    assert_eq!(reply.headers["retry-after"], "1");
    assert_eq!(reply.json["items"][0]["status"], "failed");
}
