//! The dead-letter stream: creating it, what workers write there (built and read as one
//! [`DeadLetter`] type), and listing and replaying it.
//!
//! A dead-lettered message is a JSON document on `<dlq stream, lower-case>.<entity>.<id>`
//! holding the original envelope, the error, the attempts and the source sequence.
//! Replaying republishes the original envelope (same message id) to the ingest subject and
//! removes the dead letter; the worker's status table makes replays idempotent.

use async_nats::jetstream::{
    self,
    context::{CreateStreamError, PublishError},
    stream::{Config as StreamConfig, DirectGetErrorKind, DiscardPolicy, StorageType},
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    Envelope, StreamSettings,
    envelope::format_time,
    status::{MessageState, StatusRecord},
    subject,
};

/// One dead letter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    pub message_id: Uuid,
    pub entity: Option<String>,
    pub error: String,
    pub attempts: i64,
    pub stream_sequence: u64,
    pub received_at: String,
    pub dead_lettered_at: String,
    /// The original envelope, as published by nats-api.
    pub envelope: String,
    /// The request that brought the message (its `x-request-id`), from the envelope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The W3C trace id the message travelled under, from the envelope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Sequence of this dead letter in the dead-letter stream: set when read back, not
    /// part of what workers publish.
    #[serde(skip_deserializing, default, skip_serializing_if = "is_unset")]
    pub dlq_sequence: u64,
}

fn is_unset(sequence: &u64) -> bool {
    *sequence == 0
}

impl DeadLetter {
    /// The dead letter of a delivery whose `dead_lettered` status row is `record`;
    /// `payload` is the delivered stream message (the envelope as nats-api published it).
    pub fn new(record: &StatusRecord, stream_sequence: u64, payload: &[u8]) -> Self {
        debug_assert_eq!(record.status, MessageState::DeadLettered);
        Self {
            message_id: record.message_id,
            entity: record.entity.clone(),
            error: record.error.clone().unwrap_or_default(),
            attempts: i64::from(record.attempts),
            stream_sequence,
            received_at: format_time(record.received_at),
            dead_lettered_at: format_time(record.processed_at),
            envelope: String::from_utf8_lossy(payload).into_owned(),
            request_id: None,
            trace_id: None,
            dlq_sequence: 0,
        }
        .correlated()
    }

    /// Fills in the request and trace ids from the envelope, when it can be read (dead
    /// letters written before they were recorded have only the envelope).
    fn correlated(mut self) -> Self {
        if self.request_id.is_none() && self.trace_id.is_none() {
            let payload = bytes::Bytes::copy_from_slice(self.envelope.as_bytes());
            if let Ok(envelope) = Envelope::decode(payload) {
                self.request_id = envelope.request_id;
                self.trace_id = envelope.traceparent.map(|t| t.trace_id());
            }
        }
        self
    }
}

/// Where a worker publishes dead letters.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    js: jetstream::Context,
    prefix: String,
}

impl DlqError {
    /// JetStream did not answer, or answered that it cannot serve now: worth waiting
    /// for, unlike a refusal.
    pub fn is_unavailable(&self) -> bool {
        use jetstream::context::CreateStreamErrorKind;
        match self {
            Self::Create { source, .. } => match source.kind() {
                CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => {
                    true
                }
                CreateStreamErrorKind::JetStream(error) => {
                    crate::stream::is_unavailable_code(&error)
                }
                _ => false,
            },
            _ => false,
        }
    }
}

impl DeadLetters {
    /// Creates the dead-letter stream `dlq_stream` if it does not exist.
    pub async fn ensure(
        js: jetstream::Context,
        dlq_stream: &str,
        replicas: usize,
    ) -> Result<Self, DlqError> {
        let prefix = subject_prefix(dlq_stream);
        js.get_or_create_stream(StreamConfig {
            name: dlq_stream.to_owned(),
            subjects: vec![format!("{prefix}.>")],
            storage: StorageType::File,
            discard: DiscardPolicy::New,
            num_replicas: replicas,
            // Listing and replaying read single dead letters.
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(|source| DlqError::Create {
            stream: dlq_stream.to_owned(),
            source,
        })?;
        Ok(Self { js, prefix })
    }

    /// Publishes `letter` and waits for JetStream to store it. The same delivery
    /// dead-lettered twice (its termination lost) is stored once.
    pub async fn publish(&self, letter: &DeadLetter) -> Result<(), DlqError> {
        let entity = letter.entity.as_deref().unwrap_or(subject::NO_ENTITY_TOKEN);
        let subject = format!("{}.{entity}.{}", self.prefix, letter.message_id);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{}:{}", letter.message_id, letter.stream_sequence).as_str(),
        );
        let payload = serde_json::to_vec(letter).unwrap_or_default();
        let store = |source| DlqError::Store {
            id: letter.message_id,
            source,
        };
        self.js
            .publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(store)?
            .await
            .map_err(store)?;
        Ok(())
    }
}

/// Which dead letters to act on.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub message_id: Option<Uuid>,
    pub entity: Option<String>,
    /// Only dead letters whose error contains this text (case-insensitive).
    pub error_contains: Option<String>,
}

impl Filter {
    fn matches(&self, letter: &DeadLetter) -> bool {
        self.message_id.is_none_or(|id| letter.message_id == id)
            && self
                .entity
                .as_ref()
                .is_none_or(|e| letter.entity.as_deref() == Some(e.as_str()))
            && self
                .error_contains
                .as_ref()
                .is_none_or(|text| letter.error.to_lowercase().contains(&text.to_lowercase()))
    }
}

/// Why the dead-letter stream could not be created, written, read or replayed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(
        "cannot create the dead-letter stream {stream}: {source}; check NOMNOM_DLQ_STREAM and the NATS permissions"
    )]
    Create {
        stream: String,
        source: CreateStreamError,
    },
    #[error("cannot store dead letter of message {id}: {source}")]
    Store { id: Uuid, source: PublishError },
    /// The stream does not exist yet: a worker creates it when it starts, so there are
    /// no dead letters.
    #[error(
        "the dead-letter stream {stream} does not exist yet (a worker creates it when it starts); check NOMNOM_DLQ_STREAM if workers are running"
    )]
    Missing { stream: String },
    #[error("cannot open the dead-letter stream {stream}: {source}")]
    Stream {
        stream: String,
        source: async_nats::Error,
    },
    #[error("cannot read dead letter {sequence}: {source}")]
    Read {
        sequence: u64,
        source: async_nats::Error,
    },
    #[error("dead letter {sequence} is not a nomnom dead letter: {source}")]
    Malformed {
        sequence: u64,
        source: serde_json::Error,
    },
    #[error("cannot republish message {id}: the stored envelope is unreadable: {source}")]
    Unreadable {
        id: Uuid,
        source: crate::envelope::DecodeError,
    },
    #[error("cannot republish message {id}: {source}")]
    Publish { id: Uuid, source: PublishError },
}

/// The subject prefix dead letters of `dlq_stream` are published under.
pub fn subject_prefix(dlq_stream: &str) -> String {
    dlq_stream.to_lowercase()
}

/// Every dead letter matching `filter`, oldest first.
pub async fn list(
    js: &jetstream::Context,
    dlq_stream: &str,
    filter: &Filter,
) -> Result<Vec<DeadLetter>, DlqError> {
    scan(js, dlq_stream, filter, Order::OldestFirst, usize::MAX).await
}

/// At most `limit` dead letters matching `filter`, newest first (the console's view of a
/// stream that may hold many).
pub async fn list_newest(
    js: &jetstream::Context,
    dlq_stream: &str,
    filter: &Filter,
    limit: usize,
) -> Result<Vec<DeadLetter>, DlqError> {
    scan(js, dlq_stream, filter, Order::NewestFirst, limit).await
}

/// The dead-letter stream; [`DlqError::Missing`] if no worker has created it yet.
async fn open(
    js: &jetstream::Context,
    dlq_stream: &str,
) -> Result<jetstream::stream::Stream, DlqError> {
    use async_nats::jetstream::{ErrorCode, context::GetStreamErrorKind};
    js.get_stream(dlq_stream).await.map_err(|e| match e.kind() {
        GetStreamErrorKind::JetStream(error)
            if error.error_code() == ErrorCode::STREAM_NOT_FOUND =>
        {
            DlqError::Missing {
                stream: dlq_stream.to_owned(),
            }
        }
        _ => DlqError::Stream {
            stream: dlq_stream.to_owned(),
            source: e.into(),
        },
    })
}

/// How many dead letters the stream holds.
pub async fn count(js: &jetstream::Context, dlq_stream: &str) -> Result<u64, DlqError> {
    let mut stream = open(js, dlq_stream).await?;
    let info = stream.info().await.map_err(|e| DlqError::Stream {
        stream: dlq_stream.to_owned(),
        source: e.into(),
    })?;
    Ok(info.state.messages)
}

#[derive(Debug, Clone, Copy)]
enum Order {
    OldestFirst,
    NewestFirst,
}

async fn scan(
    js: &jetstream::Context,
    dlq_stream: &str,
    filter: &Filter,
    order: Order,
    limit: usize,
) -> Result<Vec<DeadLetter>, DlqError> {
    let stream_error = |source: async_nats::Error| DlqError::Stream {
        stream: dlq_stream.to_owned(),
        source,
    };
    let mut stream = open(js, dlq_stream).await?;
    let state = stream
        .info()
        .await
        .map_err(|e| stream_error(e.into()))?
        .state
        .clone();
    let mut letters = Vec::new();
    if state.messages == 0 || limit == 0 {
        return Ok(letters);
    }
    let sequences = state.first_sequence..=state.last_sequence;
    let sequences: Box<dyn Iterator<Item = u64> + Send> = match order {
        Order::OldestFirst => Box::new(sequences),
        Order::NewestFirst => Box::new(sequences.rev()),
    };
    for sequence in sequences {
        let message = match stream.direct_get(sequence).await {
            Ok(message) => message,
            // Deleted (replayed) dead letters leave gaps.
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => continue,
            Err(e) => {
                return Err(DlqError::Read {
                    sequence,
                    source: e.into(),
                });
            }
        };
        let mut letter = serde_json::from_slice::<DeadLetter>(&message.payload)
            .map_err(|source| DlqError::Malformed { sequence, source })?
            .correlated();
        letter.dlq_sequence = sequence;
        if filter.matches(&letter) {
            letters.push(letter);
            if letters.len() == limit {
                break;
            }
        }
    }
    Ok(letters)
}

/// Republishes the matching dead letters' envelopes to the ingest stream, with their
/// original message ids, and removes them from the dead-letter stream. Returns how many.
pub async fn replay(
    js: &jetstream::Context,
    dlq_stream: &str,
    settings: &StreamSettings,
    filter: &Filter,
) -> Result<usize, DlqError> {
    let letters = list(js, dlq_stream, filter).await?;
    replay_letters(js, dlq_stream, settings, &letters).await
}

/// Republishes `letters` (read with [`list`] or [`list_newest`]) like [`replay`].
pub async fn replay_letters(
    js: &jetstream::Context,
    dlq_stream: &str,
    settings: &StreamSettings,
    letters: &[DeadLetter],
) -> Result<usize, DlqError> {
    let stream = js
        .get_stream(dlq_stream)
        .await
        .map_err(|e| DlqError::Stream {
            stream: dlq_stream.to_owned(),
            source: e.into(),
        })?;
    for letter in letters {
        let id = letter.message_id;
        let publish_error = |source| DlqError::Publish { id, source };
        let envelope = Envelope::decode(letter.envelope.clone().into_bytes().into())
            .map_err(|source| DlqError::Unreadable { id, source })?;
        let subject = subject::message_subject(
            &settings.subject_prefix,
            envelope.entity.as_ref(),
            envelope.message_id,
        );
        js.publish(subject, letter.envelope.clone().into_bytes().into())
            .await
            .map_err(publish_error)?
            .await
            .map_err(publish_error)?;
        // Removed only once the replay is stored: a failure leaves it to replay again.
        stream
            .delete_message(letter.dlq_sequence)
            .await
            .map_err(|e| DlqError::Read {
                sequence: letter.dlq_sequence,
                source: e.into(),
            })?;
    }
    Ok(letters.len())
}
