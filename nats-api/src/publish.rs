//! Publishing envelopes to JetStream: bounded in time and in flight, pipelined for
//! batches, and with a claim-check for bodies larger than the server's max_payload.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::{
    HeaderMap,
    connection::State,
    jetstream::{
        self,
        context::{PublishAckFuture, PublishErrorKind},
        message::PublishMessage,
        object_store::{ObjectMetadata, ObjectStore},
        publish::PublishAck,
    },
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use nomnom_runtime::{
    Body, BodyRef, Envelope, envelope,
    stream::{self, StreamSettings},
    subject,
};
use tokio::sync::{Notify, OnceCell};
use uuid::Uuid;

use crate::{config::ApiConfig, error::ApiError};

/// Object Store chunk size: async-nats' default, lowered on servers with a small max_payload.
const OBJECT_CHUNK_SIZE: usize = 128 * 1024;

/// Whether the stream is known to exist, and the signal to check it again.
#[derive(Debug, Default)]
pub struct StreamHealth {
    pub ready: AtomicBool,
    pub resync: Notify,
}

/// Publishes envelopes. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    // Arcs: a Publisher is cloned per request, and cloning a NATS client is not cheap.
    js: Arc<jetstream::Context>,
    client: Arc<async_nats::Client>,
    settings: Arc<StreamSettings>,
    publish_timeout: Duration,
    body_store: Arc<OnceCell<ObjectStore>>,
    pub health: Arc<StreamHealth>,
}

/// A message JetStream has stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub message_id: Uuid,
    pub received_at: DateTime<Utc>,
    /// The stream already held this message id (an Idempotency-Key retry).
    pub duplicate: bool,
    pub sequence: u64,
}

/// A message sent to JetStream whose stored acknowledgement has not arrived yet.
pub struct PendingAck {
    ack: PublishAckFuture,
    deadline: Instant,
    started: Instant,
    envelope: Envelope,
    publisher: Publisher,
}

impl std::fmt::Debug for PendingAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAck")
            .field("message_id", &self.envelope.message_id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("stream", &self.settings.name)
            .field("publish_timeout", &self.publish_timeout)
            .finish_non_exhaustive()
    }
}

/// Bytes a header block takes on the wire: `NATS/1.0\r\n`, `Name: value\r\n` each, `\r\n`.
fn header_block_size(headers: Option<&HeaderMap>) -> usize {
    let Some(headers) = headers else {
        return 0;
    };
    let mut size = "NATS/1.0\r\n\r\n".len();
    for (name, values) in headers.iter() {
        for value in values {
            let name: &str = name.as_ref();
            size += name.len() + 2 + value.as_str().len() + 2;
        }
    }
    size
}

impl Publisher {
    pub fn new(js: jetstream::Context, settings: Arc<StreamSettings>, config: &ApiConfig) -> Self {
        Self {
            client: Arc::new(js.client()),
            js: Arc::new(js),
            settings,
            publish_timeout: config.publish_timeout,
            body_store: Arc::new(OnceCell::new()),
            health: Arc::new(StreamHealth::default()),
        }
    }

    pub fn settings(&self) -> &StreamSettings {
        &self.settings
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    fn unavailable_if_disconnected(&self) -> Result<(), ApiError> {
        if self.client.connection_state() != State::Connected {
            return Err(ApiError::Unavailable("NATS is not connected".into()));
        }
        if !self.health.ready.load(Ordering::Acquire) {
            return Err(ApiError::Unavailable(format!(
                "stream {} is not set up yet",
                self.settings.name
            )));
        }
        Ok(())
    }

    /// Publishes and waits for JetStream's stored acknowledgement.
    pub async fn publish(&self, envelope: Envelope) -> Result<Accepted, ApiError> {
        self.send(envelope).await?.wait().await
    }

    /// Sends the message without waiting for its acknowledgement, so callers can keep many
    /// in flight. Bodies over the server's max_payload go to the Object Store first.
    pub async fn send(&self, mut envelope: Envelope) -> Result<PendingAck, ApiError> {
        let started = Instant::now();
        let deadline = started + self.publish_timeout;
        self.unavailable_if_disconnected()?;
        let max_payload = self.client.server_info().max_payload;
        // A body over max_payload goes to the Object Store before it is encoded: no copy.
        let encoded = match &envelope.body {
            Body::Inline(body) if body.len() > max_payload => None,
            _ => Some(envelope.encode()),
        };
        let message = match encoded {
            Some(message)
                if header_block_size(message.headers.as_ref()) + message.payload.len()
                    <= max_payload =>
            {
                message
            }
            _ => {
                envelope.body = Body::Stored(self.store_body(&envelope, deadline).await?);
                metrics::counter!("ingest_claim_checks_total").increment(1);
                envelope.encode()
            }
        };
        let subject = subject::message_subject(
            &self.settings.subject_prefix,
            envelope.entity.as_ref(),
            envelope.message_id,
        );
        let mut publish = PublishMessage::build().payload(message.payload);
        if let Some(headers) = message.headers {
            publish = publish.headers(headers);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let ack = tokio::time::timeout(remaining, self.js.send_publish(subject, publish))
            .await
            .map_err(|_| self.timed_out())?
            .map_err(|err| self.publish_error(err))?;
        Ok(PendingAck {
            ack,
            deadline,
            started,
            envelope,
            publisher: self.clone(),
        })
    }

    async fn store_body(
        &self,
        envelope: &Envelope,
        deadline: Instant,
    ) -> Result<BodyRef, ApiError> {
        let Body::Inline(bytes) = &envelope.body else {
            return Err(ApiError::Internal("body stored twice".into()));
        };
        let object = envelope.message_id.as_hyphenated().to_string();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let put = async {
            let store = self
                .body_store
                .get_or_try_init(|| stream::ensure_body_store(&self.js, &self.settings))
                .await
                .map_err(|e| ApiError::Unavailable(format!("cannot open the body store: {e}")))?;
            let mut reader: &[u8] = bytes;
            // Chunks must fit in one NATS message with their headers.
            let max_payload = self.client.server_info().max_payload;
            let metadata = ObjectMetadata {
                name: object.clone(),
                chunk_size: Some(OBJECT_CHUNK_SIZE.min(max_payload.saturating_sub(4096).max(1024))),
                ..Default::default()
            };
            store
                .put(metadata, &mut reader)
                .await
                .map_err(|e| ApiError::Unavailable(format!("cannot store the large body: {e}")))
        };
        tokio::time::timeout(remaining, put)
            .await
            .map_err(|_| self.timed_out())??;
        Ok(BodyRef {
            bucket: self.settings.body_bucket.clone(),
            object,
            size: bytes.len() as u64,
        })
    }

    fn timed_out(&self) -> ApiError {
        ApiError::Unavailable(format!(
            "NATS did not store the message within {}",
            nomnom_runtime::duration::format(self.publish_timeout)
        ))
    }

    fn publish_error(&self, err: jetstream::context::PublishError) -> ApiError {
        match err.kind() {
            PublishErrorKind::MaxAckPending => ApiError::Overloaded,
            PublishErrorKind::TimedOut => self.timed_out(),
            PublishErrorKind::StreamNotFound => {
                self.health.ready.store(false, Ordering::Release);
                self.health.resync.notify_one();
                ApiError::Unavailable(format!(
                    "stream {} is missing; it is being recreated",
                    self.settings.name
                ))
            }
            PublishErrorKind::BrokenPipe => {
                ApiError::Unavailable("lost the connection to NATS".into())
            }
            _ if is_storage_full(&err) => ApiError::InsufficientStorage(err.to_string()),
            _ => ApiError::Unavailable(format!("NATS refused the message: {err}")),
        }
    }

    /// The stream message a duplicate acknowledgement points at: the original.
    async fn original(&self, sequence: u64) -> Option<jetstream::message::StreamMessage> {
        let stream = self.js.get_stream_no_info(&self.settings.name).await.ok()?;
        stream.get_raw_message(sequence).await.ok()
    }

    /// Looks a message up in the stream by id (wherever its entity put it).
    pub async fn find(&self, message_id: Uuid) -> Result<Option<Envelope>, ApiError> {
        let stream = self
            .js
            .get_stream_no_info(&self.settings.name)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let filter = subject::lookup_subject(&self.settings.subject_prefix, message_id);
        match stream.get_last_raw_message_by_subject(&filter).await {
            Ok(message) => {
                let envelope = Envelope::decode(message.payload).map_err(|e| {
                    ApiError::Internal(format!("unreadable message in the stream: {e}"))
                })?;
                Ok(Some(envelope))
            }
            Err(err)
                if err.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                Ok(None)
            }
            Err(err) => Err(ApiError::Unavailable(format!(
                "cannot look the message up in the stream: {err}"
            ))),
        }
    }
}

fn is_storage_full(err: &jetstream::context::PublishError) -> bool {
    use jetstream::ErrorCode;
    let code = std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .map(jetstream::Error::error_code);
    matches!(
        code,
        Some(
            ErrorCode::STREAM_STORE_FAILED
                | ErrorCode::STORAGE_RESOURCES_EXCEEDED
                | ErrorCode::INSUFFICIENT_RESOURCES
                | ErrorCode::MEMORY_RESOURCES_EXCEEDED
                | ErrorCode::ACCOUNT_RESOURCES_EXCEEDED
        )
    ) || err.to_string().contains("maximum bytes exceeded")
}

impl PendingAck {
    pub fn message_id(&self) -> Uuid {
        self.envelope.message_id
    }

    /// Waits for JetStream's stored acknowledgement, within the publish deadline.
    pub async fn wait(self) -> Result<Accepted, ApiError> {
        let publisher = self.publisher.clone();
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let ack: PublishAck = tokio::time::timeout(remaining, self.ack)
            .await
            .map_err(|_| publisher.timed_out())?
            .map_err(|err| publisher.publish_error(err))?;
        metrics::histogram!("ingest_publish_duration_seconds")
            .record(self.started.elapsed().as_secs_f64());
        let mut accepted = Accepted {
            message_id: self.envelope.message_id,
            received_at: self.envelope.received_at,
            duplicate: ack.duplicate,
            sequence: ack.sequence,
        };
        if ack.duplicate {
            check_same_request(&publisher, &self.envelope, &mut accepted).await?;
        }
        Ok(accepted)
    }
}

/// On a duplicate, answers with the original's receipt time, and refuses a key reused
/// for a different body (the IETF Idempotency-Key draft's 422).
async fn check_same_request(
    publisher: &Publisher,
    envelope: &Envelope,
    accepted: &mut Accepted,
) -> Result<(), ApiError> {
    let Some(original) = publisher.original(accepted.sequence).await else {
        return Ok(());
    };
    let Ok(original) = Envelope::decode(original.payload) else {
        return Ok(());
    };
    if original.message_id != envelope.message_id {
        return Ok(());
    }
    accepted.received_at = original.received_at;
    let differs = match (&original.body, &envelope.body) {
        (Body::Inline(a), Body::Inline(b)) => a != b,
        (Body::Stored(a), Body::Stored(b)) => a.size != b.size,
        _ => true,
    };
    if differs {
        return Err(ApiError::Unprocessable(format!(
            "idempotency key {:?} was already used for a different body; use a new key for a new message",
            envelope
                .idempotency_key
                .as_ref()
                .map(|k| k.as_str())
                .unwrap_or_default()
        )));
    }
    Ok(())
}

/// Builds the envelope for a body that has been checked to be JSON. Whitespace around
/// the document is dropped: it is not part of the message, and an idempotent retry that
/// differs only there is the same message.
pub fn envelope_for(
    body: Bytes,
    entity: Option<nomnom_runtime::EntityName>,
    idempotency_key: Option<nomnom_runtime::IdempotencyKey>,
    request_id: Option<String>,
    traceparent: Option<nomnom_runtime::TraceParent>,
    headers: std::collections::BTreeMap<String, String>,
    received_at: DateTime<Utc>,
) -> Envelope {
    let message_id = idempotency_key
        .as_ref()
        .map_or_else(envelope::new_message_id, |k| k.message_id());
    Envelope {
        message_id,
        received_at,
        entity,
        idempotency_key,
        request_id,
        traceparent,
        headers,
        content_type: envelope::JSON_CONTENT_TYPE.to_owned(),
        body: Body::Inline(trim_whitespace(body)),
    }
}

fn trim_whitespace(body: Bytes) -> Bytes {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    let end = body
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    body.slice(start..end)
}
