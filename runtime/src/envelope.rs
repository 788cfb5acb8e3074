//! The message envelope: the only definition of nomnom's wire format.
//!
//! An envelope travels as one NATS message: its metadata in NATS headers, the body as the
//! raw payload, untouched. Carrying the body as-is avoids re-encoding (and JSON-escaping)
//! every byte on the ingest hot path and lets the worker parse it straight from the
//! payload; ARCHITECTURE.md records the measurement behind this choice.
//!
//! Version 1 headers:
//!
//! | header | value |
//! |---|---|
//! | `Nomnom-Version` | `1` |
//! | `Nomnom-Message-Id` | UUID (v7, or v5 of the idempotency key) |
//! | `Nomnom-Received-At` | RFC 3339, UTC, microseconds |
//! | `Nomnom-Entity` | entity hint, when given |
//! | `Nomnom-Idempotency-Key` | the client's key, when given |
//! | `Nats-Msg-Id` | the message id, when an idempotency key is given (JetStream dedupe) |
//! | `Nomnom-Request-Id` | request id for log correlation |
//! | `Content-Type` | the body's media type |
//! | `Nomnom-Body-Ref` | `<bucket>/<object>` when the body is in the Object Store (payload empty) |
//! | `Nomnom-Body-Size` | body size in bytes, with `Nomnom-Body-Ref` |

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use crate::subject::{EntityName, EntityNameError};

/// The envelope format version this code writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

pub mod header {
    //! Header names of the envelope.
    pub const VERSION: &str = "Nomnom-Version";
    pub const MESSAGE_ID: &str = "Nomnom-Message-Id";
    pub const RECEIVED_AT: &str = "Nomnom-Received-At";
    pub const ENTITY: &str = "Nomnom-Entity";
    pub const IDEMPOTENCY_KEY: &str = "Nomnom-Idempotency-Key";
    pub const REQUEST_ID: &str = "Nomnom-Request-Id";
    pub const CONTENT_TYPE: &str = "Content-Type";
    pub const BODY_REF: &str = "Nomnom-Body-Ref";
    pub const BODY_SIZE: &str = "Nomnom-Body-Size";
    /// JetStream's deduplication header.
    pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
}

/// Longest idempotency key or request id accepted.
pub const MAX_TOKEN_LEN: usize = 255;

/// Namespace of the UUIDv5 message ids derived from idempotency keys. Fixed forever:
/// changing it would change the id of every retried request.
pub const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6e6f_6d6e_6f6d_4000_8000_6964_656d_706f);

/// The media type of every body nats-api accepts today.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// Where the body of a message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// In the NATS message payload.
    Inline(Bytes),
    /// In the JetStream Object Store (claim-check), because it is larger than max_payload.
    Stored(BodyRef),
}

/// A reference to a body kept in the Object Store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyRef {
    pub bucket: String,
    pub object: String,
    pub size: u64,
}

/// One ingested message with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub message_id: Uuid,
    pub received_at: DateTime<Utc>,
    pub entity: Option<EntityName>,
    pub idempotency_key: Option<IdempotencyKey>,
    pub request_id: Option<String>,
    pub content_type: String,
    pub body: Body,
}

/// A client-chosen idempotency key: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

/// Why an idempotency key was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "idempotency key must be 1 to {MAX_TOKEN_LEN} visible ASCII characters (no spaces or control characters)"
)]
pub struct IdempotencyKeyError;

impl IdempotencyKey {
    pub fn parse(text: &str) -> Result<Self, IdempotencyKeyError> {
        if is_visible_ascii_token(text) {
            Ok(Self(text.to_owned()))
        } else {
            Err(IdempotencyKeyError)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The message id this key always maps to, so a retried request gets the same id.
    pub fn message_id(&self) -> Uuid {
        Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, self.0.as_bytes())
    }

    /// The key of item `index` (0-based) of a batch sent with this key.
    pub fn for_batch_item(&self, index: usize) -> IdempotencyKey {
        IdempotencyKey(format!("{}#{index}", self.0))
    }
}

/// Whether `text` can travel in a NATS header and a log line unchanged.
pub fn is_visible_ascii_token(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_TOKEN_LEN && text.bytes().all(|b| b.is_ascii_graphic())
}

/// A fresh message id: UUIDv7, so ids sort by the time they were received.
pub fn new_message_id() -> Uuid {
    Uuid::now_v7()
}

/// Why a NATS message could not be read as an envelope.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message has no headers: it was not published by nats-api")]
    NoHeaders,
    #[error("message has no {0} header")]
    Missing(&'static str),
    #[error(
        "envelope version {0:?} is not supported (this build reads version {ENVELOPE_VERSION})"
    )]
    UnsupportedVersion(String),
    #[error("header {name} has an invalid value {value:?}")]
    Invalid { name: &'static str, value: String },
    #[error("header Nomnom-Entity is invalid: {0}")]
    Entity(#[from] EntityNameError),
}

impl Envelope {
    /// Encodes the envelope as NATS headers and payload.
    pub fn to_headers_and_payload(&self) -> (HeaderMap, Bytes) {
        let mut headers = HeaderMap::new();
        let id = self.message_id.as_hyphenated().to_string();
        headers.insert(header::VERSION, ENVELOPE_VERSION.to_string().as_str());
        headers.insert(header::MESSAGE_ID, id.as_str());
        headers.insert(header::RECEIVED_AT, format_time(self.received_at).as_str());
        if let Some(entity) = &self.entity {
            headers.insert(header::ENTITY, entity.as_str());
        }
        if let Some(key) = &self.idempotency_key {
            headers.insert(header::IDEMPOTENCY_KEY, key.as_str());
            headers.insert(header::NATS_MSG_ID, id.as_str());
        }
        if let Some(request_id) = &self.request_id {
            // Request ids are validated where they enter; an unsafe one is dropped, not sent.
            if is_visible_ascii_token(request_id) {
                headers.insert(header::REQUEST_ID, request_id.as_str());
            }
        }
        headers.insert(header::CONTENT_TYPE, self.content_type.as_str());
        let payload = match &self.body {
            Body::Inline(bytes) => bytes.clone(),
            Body::Stored(reference) => {
                let location = format!("{}/{}", reference.bucket, reference.object);
                headers.insert(header::BODY_REF, location.as_str());
                headers.insert(header::BODY_SIZE, reference.size.to_string().as_str());
                Bytes::new()
            }
        };
        (headers, payload)
    }

    /// Decodes an envelope from a NATS message's headers and payload.
    pub fn from_headers_and_payload(
        headers: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Result<Self, DecodeError> {
        let headers = headers.ok_or(DecodeError::NoHeaders)?;
        let get = |name: &'static str| headers.get(name).map(|v| v.as_str());
        let require = |name: &'static str| get(name).ok_or(DecodeError::Missing(name));
        let invalid = |name: &'static str, value: &str| DecodeError::Invalid {
            name,
            value: value.to_owned(),
        };

        let version = require(header::VERSION)?;
        if version != ENVELOPE_VERSION.to_string() {
            return Err(DecodeError::UnsupportedVersion(version.to_owned()));
        }
        let id_text = require(header::MESSAGE_ID)?;
        let message_id =
            Uuid::parse_str(id_text).map_err(|_| invalid(header::MESSAGE_ID, id_text))?;
        let time_text = require(header::RECEIVED_AT)?;
        let received_at = DateTime::parse_from_rfc3339(time_text)
            .map_err(|_| invalid(header::RECEIVED_AT, time_text))?
            .with_timezone(&Utc);
        let entity = get(header::ENTITY).map(EntityName::parse).transpose()?;
        let idempotency_key = get(header::IDEMPOTENCY_KEY)
            .map(|k| IdempotencyKey::parse(k).map_err(|_| invalid(header::IDEMPOTENCY_KEY, k)))
            .transpose()?;
        let request_id = get(header::REQUEST_ID).map(str::to_owned);
        let content_type = get(header::CONTENT_TYPE)
            .unwrap_or(JSON_CONTENT_TYPE)
            .to_owned();
        let body = match get(header::BODY_REF) {
            None => Body::Inline(payload),
            Some(location) => {
                let (bucket, object) = location
                    .split_once('/')
                    .filter(|(b, o)| !b.is_empty() && !o.is_empty())
                    .ok_or_else(|| invalid(header::BODY_REF, location))?;
                let size_text = require(header::BODY_SIZE)?;
                let size = size_text
                    .parse()
                    .map_err(|_| invalid(header::BODY_SIZE, size_text))?;
                Body::Stored(BodyRef {
                    bucket: bucket.to_owned(),
                    object: object.to_owned(),
                    size,
                })
            }
        };
        Ok(Self {
            message_id,
            received_at,
            entity,
            idempotency_key,
            request_id,
            content_type,
            body,
        })
    }
}

/// The envelope's timestamp format: RFC 3339, UTC, microseconds.
pub fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `received_at` truncated to the microseconds the wire format keeps.
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            message_id: Uuid::parse_str("0190d6f2-4c1e-7a3b-8f00-123456789abc").unwrap(),
            received_at: DateTime::parse_from_rfc3339("2026-11-22T13:30:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
            entity: Some(EntityName::parse("order").unwrap()),
            idempotency_key: Some(IdempotencyKey::parse("order-42").unwrap()),
            request_id: Some("req-1".into()),
            content_type: JSON_CONTENT_TYPE.into(),
            body: Body::Inline(Bytes::from_static(br#"{"o_orderkey":42}"#)),
        }
    }

    #[test]
    fn round_trips_inline_and_stored_bodies() {
        let inline = sample();
        let (headers, payload) = inline.to_headers_and_payload();
        assert_eq!(
            Envelope::from_headers_and_payload(Some(&headers), payload).unwrap(),
            inline
        );

        let stored = Envelope {
            body: Body::Stored(BodyRef {
                bucket: "MESSAGES_BODIES".into(),
                object: "abc".into(),
                size: 2_000_000,
            }),
            entity: None,
            idempotency_key: None,
            request_id: None,
            ..sample()
        };
        let (headers, payload) = stored.to_headers_and_payload();
        assert!(payload.is_empty());
        assert!(headers.get(header::NATS_MSG_ID).is_none());
        assert_eq!(
            Envelope::from_headers_and_payload(Some(&headers), payload).unwrap(),
            stored
        );
    }

    #[test]
    fn idempotency_keys_map_to_stable_ids() {
        let key = IdempotencyKey::parse("order-42").unwrap();
        assert_eq!(key.message_id(), key.message_id());
        assert_ne!(
            key.message_id(),
            IdempotencyKey::parse("order-43").unwrap().message_id()
        );
        assert_eq!(key.message_id().get_version_num(), 5);
        assert_ne!(key.for_batch_item(0).message_id(), key.message_id());
        for bad in ["", "has space", "new\nline", "é", &"k".repeat(256)] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refuses_foreign_or_future_messages() {
        assert!(matches!(
            Envelope::from_headers_and_payload(None, Bytes::new()),
            Err(DecodeError::NoHeaders)
        ));
        let (mut headers, payload) = sample().to_headers_and_payload();
        headers.insert(header::VERSION, "2");
        assert!(matches!(
            Envelope::from_headers_and_payload(Some(&headers), payload),
            Err(DecodeError::UnsupportedVersion(v)) if v == "2"
        ));
    }

    #[test]
    fn new_ids_are_time_ordered_v7() {
        let first = new_message_id();
        let second = new_message_id();
        assert_eq!(first.get_version_num(), 7);
        assert!(second > first);
    }
}
