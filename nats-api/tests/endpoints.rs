//! Status lookups, authentication, health, readiness, metrics and the OpenAPI document.

mod common;

use axum::{body::Body, http::Request, http::StatusCode};
use chrono::Utc;
use common::{Harness, post};
use nomnom_runtime::status::{MessageState, StatusRecord, StatusStore};
use nomnom_test_support::{NatsServer, Postgres};
use uuid::Uuid;

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn with_key(mut request: Request<Body>, key: &str) -> Request<Body> {
    request
        .headers_mut()
        .insert("idempotency-key", key.parse().unwrap());
    request
}

/// The status lifecycle as a client sees it, with the worker's writes done the way a
/// worker does them (same table, same code).
async fn status_lifecycle(database_url: String) {
    let store = StatusStore::open(&database_url, 1).unwrap();
    store.create_table().await.unwrap();
    let h = Harness::start_with(NatsServer::start(), |c| c.database_url = Some(database_url)).await;

    let malformed = h.send(get("/api/ingest/status/not-a-uuid")).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.error_code(), "invalid_message_id");

    let unknown = h
        .send(get(&format!("/api/ingest/status/{}", Uuid::now_v7())))
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.error_code(), "not_found");

    let accepted = h.post("/api/ingest/message/order", r#"{"o":1}"#).await;
    let id = accepted.message_id();
    let pending = h.send(get(&format!("/api/ingest/status/{id}"))).await;
    assert_eq!(pending.status, StatusCode::OK, "{}", pending.text);
    assert_eq!(pending.json["status"], "pending");
    assert_eq!(pending.json["entity"], "order");
    assert_eq!(pending.json["received_at"], accepted.json["received_at"]);

    store
        .upsert(StatusRecord {
            message_id: id,
            entity: Some("order".into()),
            status: MessageState::Persisted,
            attempts: 1,
            error: None,
            received_at: Utc::now(),
            processed_at: Utc::now(),
            stream_sequence: Some(1),
        })
        .await
        .unwrap();
    let persisted = h.send(get(&format!("/api/ingest/status/{id}"))).await;
    assert_eq!(persisted.json["status"], "persisted", "{}", persisted.text);
    assert_eq!(persisted.json["attempts"], 1);
    assert_eq!(persisted.json["stream_sequence"], 1);

    // By the client's idempotency key: a single message, and item 1 of a batch (`K#1`).
    let keyed = h
        .send(with_key(
            post("/api/ingest/message/order", r#"{"o":2}"#),
            "order-2",
        ))
        .await;
    let by_key = h
        .send(get("/api/ingest/status?idempotency_key=order-2"))
        .await;
    assert_eq!(by_key.status, StatusCode::OK, "{}", by_key.text);
    assert_eq!(by_key.json["message_id"], keyed.json["message_id"]);
    assert_eq!(by_key.json["status"], "pending");
    let batch = h
        .send(with_key(
            post("/api/ingest/batch/order", r#"[{"o":3},{"o":4}]"#),
            "b-7",
        ))
        .await;
    let item = h
        .send(get("/api/ingest/status?idempotency_key=b-7%231"))
        .await;
    assert_eq!(item.status, StatusCode::OK, "{}", item.text);
    assert_eq!(
        item.json["message_id"],
        batch.json["items"][1]["message_id"]
    );
    let unknown_key = h
        .send(get("/api/ingest/status?idempotency_key=never-sent"))
        .await;
    assert_eq!(unknown_key.status, StatusCode::NOT_FOUND);
    let no_key = h.send(get("/api/ingest/status")).await;
    assert_eq!(no_key.status, StatusCode::BAD_REQUEST);
    assert_eq!(no_key.error_code(), "missing_idempotency_key");
    assert!(no_key.error_message().contains("idempotency_key=<key>"));
    let bad_key = h
        .send(get("/api/ingest/status?idempotency_key=has%20space"))
        .await;
    assert_eq!(bad_key.error_code(), "invalid_idempotency_key");

    let dead = Uuid::now_v7();
    store
        .upsert(StatusRecord {
            message_id: dead,
            entity: Some("order".into()),
            status: MessageState::DeadLettered,
            attempts: 3,
            error: Some("/o_totalprice: must be at least 0".into()),
            received_at: Utc::now(),
            processed_at: Utc::now(),
            stream_sequence: Some(9),
        })
        .await
        .unwrap();
    let reply = h.send(get(&format!("/api/ingest/status/{dead}"))).await;
    assert_eq!(reply.json["status"], "dead_lettered");
    assert_eq!(reply.json["error"], "/o_totalprice: must be at least 0");
    assert_eq!(reply.json["attempts"], 3);
}

#[tokio::test]
async fn status_lifecycle_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    status_lifecycle(format!("sqlite://{}", dir.path().join("s.db").display())).await;
}

#[tokio::test]
async fn status_lifecycle_on_postgres() {
    let pg = Postgres::start();
    status_lifecycle(pg.create_database("status_api")).await;
}

#[tokio::test]
async fn without_a_database_status_says_accepted_from_the_stream() {
    let h = Harness::start().await;
    let id = h.post("/api/ingest/message", "{}").await.message_id();
    let reply = h.send(get(&format!("/api/ingest/status/{id}"))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["status"], "accepted");
}

#[tokio::test]
async fn a_database_that_is_down_makes_status_503_not_ingest() {
    let port = nomnom_test_support::free_port();
    let h = Harness::start_with(NatsServer::start(), |c| {
        c.database_url = Some(format!("postgres://postgres@127.0.0.1:{port}/none"))
    })
    .await;
    let accepted = h.post("/api/ingest/message", "{}").await;
    assert_eq!(
        accepted.status,
        StatusCode::ACCEPTED,
        "ingest needs no database"
    );
    let reply = h
        .send(get(&format!(
            "/api/ingest/status/{}",
            accepted.message_id()
        )))
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        !reply.text.contains(&port.to_string()),
        "no internals: {}",
        reply.text
    );
    let ready = h.send(get("/ready")).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json["database"], "unavailable");
}

#[tokio::test]
async fn api_keys_guard_the_api_but_not_the_probes() {
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys");
    std::fs::write(&keys_file, "file-key\n").unwrap();
    let h = Harness::start_with(NatsServer::start(), |c| {
        c.api_keys = vec!["inline-key".into()];
        c.api_keys_file = Some(keys_file.clone());
    })
    .await;
    let with_key = |key: Option<&str>| {
        let mut builder = Request::post("/api/ingest/message");
        if let Some(key) = key {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        builder.body(Body::from("{}")).unwrap()
    };
    for (key, expected) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("wrong"), StatusCode::UNAUTHORIZED),
        (Some(""), StatusCode::UNAUTHORIZED),
        (Some("inline-key"), StatusCode::ACCEPTED),
        (Some("file-key"), StatusCode::ACCEPTED),
    ] {
        let reply = h.send(with_key(key)).await;
        assert_eq!(reply.status, expected, "{key:?}: {}", reply.text);
        if expected == StatusCode::UNAUTHORIZED {
            assert_eq!(reply.error_code(), "unauthorized");
            assert_eq!(reply.headers["www-authenticate"], "Bearer");
        }
    }
    let basic = h
        .send(
            Request::post("/api/ingest/message")
                .header("authorization", "Basic aW5saW5lLWtleTo=")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    let status = h
        .send(get(&format!("/api/ingest/status/{}", Uuid::now_v7())))
        .await;
    assert_eq!(status.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.stream_len().await, 2, "refused requests publish nothing");

    // Revoking a key in the file takes effect on reload.
    std::fs::write(&keys_file, "new-key\n").unwrap();
    assert_eq!(h.state.reload_api_keys().unwrap(), 2);
    assert_eq!(
        h.send(with_key(Some("file-key"))).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.send(with_key(Some("new-key"))).await.status,
        StatusCode::ACCEPTED
    );

    for probe in ["/health", "/ready", "/metrics", "/openapi.json"] {
        assert_eq!(h.send(get(probe)).await.status, StatusCode::OK, "{probe}");
    }
}

#[tokio::test]
async fn probes_metrics_and_openapi_answer() {
    let h = Harness::start().await;
    let health = h.send(get("/health")).await;
    assert_eq!(health.json["status"], "ok");
    let ready = h.send(get("/ready")).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json["nats"], "connected");
    assert_eq!(ready.json["stream"], "ok");

    h.post("/api/ingest/message", "{}").await;
    h.post("/api/ingest/message", "{oops").await;
    let metrics = h.send(get("/metrics")).await;
    assert!(
        metrics
            .text
            .contains(r#"ingest_messages_received_total{endpoint="message",outcome="accepted"}"#),
        "{}",
        metrics.text
    );
    assert!(metrics.text.contains(r#"outcome="rejected""#));
    assert!(
        metrics
            .text
            .contains("ingest_publish_duration_seconds_bucket")
    );

    let openapi = h.send(get("/openapi.json")).await;
    assert_eq!(openapi.json["openapi"], "3.1.0");
    let paths = openapi.json["paths"].as_object().unwrap();
    for path in [
        "/api/ingest/message",
        "/api/ingest/message/{entity}",
        "/api/ingest/batch",
        "/api/ingest/batch/{entity}",
        "/api/ingest/status",
        "/api/ingest/status/{id}",
        "/health",
        "/ready",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(path), "openapi.json lacks {path}");
    }
    assert_eq!(
        paths.len(),
        10,
        "openapi.json documents a route the app lacks"
    );
}

#[tokio::test]
async fn request_ids_are_kept_or_generated() {
    let h = Harness::start().await;
    let reply = h
        .send(
            Request::post("/api/ingest/message")
                .header("x-request-id", "client-abc-1")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.headers["x-request-id"], "client-abc-1");
    let (_, envelope) = h.stored(1).await;
    assert_eq!(envelope.request_id.as_deref(), Some("client-abc-1"));
    let generated = h.post("/api/ingest/message", "{}").await;
    let id = generated.headers["x-request-id"].to_str().unwrap();
    assert!(Uuid::parse_str(id).is_ok(), "{id}");
    let _ = post;
}
