//! `/health`, `/ready`, `/metrics`, `/openapi.json`.

use std::time::Duration;

use async_nats::connection::State as ConnectionState;
use axum::{
    Json,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::state::AppState;

/// Liveness: the process answers.
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

#[derive(Debug, Serialize)]
pub struct Readiness {
    pub status: &'static str,
    pub nats: &'static str,
    pub stream: &'static str,
    /// Informational: status lookups need it, ingest does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<&'static str>,
}

/// Readiness: NATS connected and the stream reachable, else 503.
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let connected = state.client.connection_state() == ConnectionState::Connected;
    let stream_ok = connected
        && state.stream_ready()
        && tokio::time::timeout(
            Duration::from_secs(2),
            state
                .publisher
                .jetstream()
                .get_stream(&state.publisher.settings().name),
        )
        .await
        .is_ok_and(|r| r.is_ok());
    let database = match &state.status {
        None => None,
        Some(store) => Some(
            match tokio::time::timeout(Duration::from_secs(2), store.ping()).await {
                Ok(Ok(())) => "ok",
                _ => "unavailable",
            },
        ),
    };
    let ready = connected && stream_ok;
    let body = Readiness {
        status: if ready { "ready" } else { "unavailable" },
        nats: if connected {
            "connected"
        } else {
            "disconnected"
        },
        stream: if stream_ok { "ok" } else { "unavailable" },
        database,
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

/// Counts the answers of the ingest and status routes by status code
/// (`ingest_http_responses_total{status}`): what the dashboard's status codes and the
/// 503 alert read. Probes and scrapes are not counted.
pub async fn count_responses(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("ingest_http_responses_total", "status" => status).increment(1);
    response
}

/// The counters an alert watches, at zero from the start, so `increase()` sees the first
/// one (a series that starts at 1 shows no increase).
pub fn register_counters() {
    metrics::counter!("ingest_http_responses_total", "status" => "503").increment(0);
}

/// Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// The OpenAPI description of this service.
pub const OPENAPI: &str = include_str!("../openapi.json");

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}
