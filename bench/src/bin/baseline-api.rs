//! The ingest benchmark's baseline: the least an HTTP-to-JetStream service can do. One
//! axum handler publishes the body as it came and awaits JetStream's acknowledgement,
//! then answers 202 with a fresh id. No envelope, no auth, no metrics, no limits.
//!
//! `baseline-api <listen address> <nats url>`

use async_nats::jetstream;
use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8090".into());
    let nats = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let js = jetstream::new(async_nats::connect(nats).await?);
    let app = Router::new()
        .route("/api/ingest/message/{entity}", post(publish))
        .with_state(js);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn publish(State(js): State<jetstream::Context>, body: Bytes) -> (StatusCode, String) {
    let id = uuid::Uuid::now_v7();
    let subject = format!("messages.ingest.order.{id}");
    let stored = async { js.publish(subject, body).await?.await }.await;
    match stored {
        Ok(_) => (StatusCode::ACCEPTED, format!("{{\"message_id\":\"{id}\"}}")),
        Err(err) => (StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
    }
}
