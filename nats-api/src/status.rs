//! `GET /api/ingest/status/{id}` and `GET /api/ingest/status?idempotency_key=<key>`: what
//! happened to a message, by its id or by the key the client sent it with.
//!
//! The status table (written by workers) is the truth for processed messages. A message
//! with no row yet is looked up in the stream: found means accepted and waiting
//! (`pending`), not found means unknown (404).

use axum::{
    Json,
    extract::{Path, Query, State},
};
use nomnom_runtime::{IdempotencyKey, envelope::format_time, status::StatusRecord};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{error::ApiError, state::AppState};

/// The answer of a status lookup.
#[derive(Debug, Serialize)]
pub struct StatusResponse {
    pub message_id: Uuid,
    /// `persisted`, `dead_lettered`, `skipped_stale`, `skipped_missing` (recorded by a
    /// worker); `pending` (in the
    /// stream, not processed yet); `accepted` (in the stream; no database configured, so
    /// processing is not tracked).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    pub received_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_sequence: Option<i64>,
}

impl From<StatusRecord> for StatusResponse {
    fn from(record: StatusRecord) -> Self {
        Self {
            message_id: record.message_id,
            status: record.status.as_str(),
            entity: record.entity,
            received_at: format_time(record.received_at),
            processed_at: Some(format_time(record.processed_at)),
            attempts: Some(record.attempts),
            error: record.error,
            stream_sequence: record.stream_sequence,
        }
    }
}

/// `GET /api/ingest/status/{id}`.
pub async fn lookup(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StatusResponse>, ApiError> {
    let message_id = Uuid::parse_str(&id).map_err(|_| {
        ApiError::bad_request(
            "invalid_message_id",
            format!("{id:?} is not a message id; ids are UUIDs like 0190d6f2-4c1e-7a3b-8f00-123456789abc"),
        )
    })?;
    status_of(&state, message_id).await
}

/// The query of a lookup by idempotency key.
#[derive(Debug, Deserialize)]
pub struct KeyQuery {
    idempotency_key: Option<String>,
}

/// `GET /api/ingest/status?idempotency_key=<key>`: a key always maps to the same message
/// id (UUIDv5), so the lookup needs no index of keys. Batch item `i` sent with key `K`
/// has the key `K#i`.
pub async fn lookup_by_key(
    State(state): State<AppState>,
    Query(query): Query<KeyQuery>,
) -> Result<Json<StatusResponse>, ApiError> {
    let text = query.idempotency_key.ok_or_else(|| {
        ApiError::bad_request(
            "missing_idempotency_key",
            "name the message: GET /api/ingest/status/<message id>, or /api/ingest/status?idempotency_key=<key>",
        )
    })?;
    let key = IdempotencyKey::parse(&text).map_err(|err| {
        ApiError::bad_request("invalid_idempotency_key", format!("{text:?}: {err}"))
    })?;
    status_of(&state, key.message_id()).await
}

async fn status_of(state: &AppState, message_id: Uuid) -> Result<Json<StatusResponse>, ApiError> {
    find(state, message_id).await.map(Json)
}

/// The status table first; a message with no row yet is looked up in the stream.
pub(crate) async fn find(state: &AppState, message_id: Uuid) -> Result<StatusResponse, ApiError> {
    if let Some(store) = &state.status {
        match store.fetch(message_id).await {
            Ok(Some(record)) => return Ok(record.into()),
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(error = %err, "status database lookup failed");
                return Err(ApiError::Unavailable(
                    "the status database is unavailable".into(),
                ));
            }
        }
    }
    match state.publisher.find(message_id).await? {
        Some(envelope) => Ok(StatusResponse {
            message_id,
            status: if state.status.is_some() {
                "pending"
            } else {
                "accepted"
            },
            entity: envelope.entity.map(|e| e.to_string()),
            received_at: format_time(envelope.received_at),
            processed_at: None,
            attempts: None,
            error: None,
            stream_sequence: None,
        }),
        None => Err(ApiError::NotFound(format!(
            "no message {message_id}: it was never accepted, or it left the stream before a worker recorded it"
        ))),
    }
}
