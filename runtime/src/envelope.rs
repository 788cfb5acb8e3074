//! The message envelope: the only definition of nomnom's wire format.
//!
//! An envelope travels as one NATS message whose payload is one JSON document: the
//! metadata fields, then the client's body embedded verbatim (no re-encoding, no
//! escaping). The only NATS header is `Nats-Msg-Id`, sent when the client gave an
//! idempotency key, because JetStream deduplicates on it. ARCHITECTURE.md records the
//! measurement behind this choice (one JSON document beat metadata-in-headers by about
//! 20% in publish throughput and 17% in CPU).
//!
//! Version 1:
//!
//! ```json
//! {"nomnom":1,"message_id":"…","received_at":"2026-11-22T13:30:00.123456Z",
//!  "entity":"order","idempotency_key":"…","request_id":"…",
//!  "content_type":"application/json","body":{…the client's JSON…}}
//! ```
//!
//! `entity`, `idempotency_key`, `request_id` and `traceparent` (a W3C trace context,
//! `"traceparent":"00-<trace id>-<parent id>-<flags>"`, after `request_id`) are omitted
//! when absent, as is `headers`:
//! the request headers nats-api was configured to capture (`--capture-header`), as an
//! object of lower-case names to values, `"headers":{"x-github-delivery":"…"}`. A body stored in
//! the Object Store (claim-check) replaces `body` with
//! `"body_ref":{"bucket":"…","object":"…","size":N}`. `nomnom` (the version) is always the
//! first key, so a reader can refuse other versions before parsing them. Readers ignore
//! fields they do not know, so adding an optional field does not need a new version.
//! [`Envelope::encode`] writes `body` (or `body_ref`) last; the worker relies on that to
//! find the body without scanning it ([`Envelope::decode_leaving_body_unchecked`]), and
//! reads anything else in full, so an envelope in another member order means the same.

use std::borrow::Cow;
use std::collections::BTreeMap;

use async_nats::HeaderMap;
use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::subject::{EntityName, EntityNameError};
use crate::traceparent::TraceParent;

/// The envelope format version this code writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// JetStream's deduplication header, the envelope's only header.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// What an envelope travels as: the payload, and headers when it needs any.
#[derive(Debug, Clone)]
pub struct EncodedMessage {
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
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
    /// The W3C trace the message belongs to: its parent is nats-api's handling of the
    /// request. Absent in messages published before nomnom carried it.
    pub traceparent: Option<TraceParent>,
    /// Request headers nats-api captured (lower-case name → value), for specs that read
    /// them (`source: $header.<name>`).
    pub headers: BTreeMap<String, String>,
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
    #[error(
        "message is not a nomnom envelope (it does not start with {{\"nomnom\":<version>}}); was it published by nats-api?"
    )]
    NotAnEnvelope,
    #[error("envelope version {0} is not supported (this build reads version {ENVELOPE_VERSION})")]
    UnsupportedVersion(u64),
    #[error("envelope is malformed: {0}")]
    Malformed(String),
    #[error("envelope field entity is invalid: {0}")]
    Entity(#[from] EntityNameError),
    #[error("envelope field idempotency_key is invalid")]
    IdempotencyKey,
    #[error("envelope has neither body nor body_ref")]
    NoBody,
}

#[derive(Deserialize)]
struct WireV1<'a> {
    message_id: Uuid,
    received_at: DateTime<Utc>,
    #[serde(borrow, default)]
    entity: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    idempotency_key: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    request_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    traceparent: Option<Cow<'a, str>>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(borrow, default)]
    content_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    body: Option<&'a RawValue>,
    #[serde(default)]
    body_ref: Option<BodyRefWire>,
}

#[derive(Deserialize)]
struct BodyRefWire {
    bucket: String,
    object: String,
    size: u64,
}

const VERSION_PREFIX: &[u8] = b"{\"nomnom\":";

/// The version of an encoded envelope, read from its leading `{"nomnom":N`.
fn version_of(payload: &[u8]) -> Result<u64, DecodeError> {
    let rest = payload
        .strip_prefix(VERSION_PREFIX)
        .ok_or(DecodeError::NotAnEnvelope)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits])
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or(DecodeError::NotAnEnvelope)
}

/// Appends `text` as a JSON string literal.
fn put_json_string(buffer: &mut BytesMut, text: &str) {
    let mut writer = buffer.writer();
    // Writing a &str to memory cannot fail.
    let _ = serde_json::to_writer(&mut writer, text);
}

impl Envelope {
    /// A new JSON message for `body`, received now, with a fresh id and none of the
    /// optional metadata (idempotency key, request id, trace, captured headers): what
    /// nats-api publishes for a bare POST, for tests and tools that publish themselves.
    pub fn new(entity: Option<EntityName>, body: Bytes) -> Self {
        Self {
            message_id: new_message_id(),
            received_at: now_micros(),
            entity,
            idempotency_key: None,
            request_id: None,
            traceparent: None,
            headers: BTreeMap::new(),
            content_type: JSON_CONTENT_TYPE.to_owned(),
            body: Body::Inline(body),
        }
    }

    /// Encodes the envelope. An inline body must be one JSON document without surrounding
    /// whitespace (nats-api checks and trims it before it builds an envelope); it is
    /// embedded byte for byte.
    pub fn encode(&self) -> EncodedMessage {
        let id = self.message_id.as_hyphenated().to_string();
        let body_len = match &self.body {
            Body::Inline(bytes) => bytes.len(),
            Body::Stored(_) => 64,
        };
        let mut buffer = BytesMut::with_capacity(body_len + 256);
        buffer.put_slice(VERSION_PREFIX);
        buffer.put_slice(ENVELOPE_VERSION.to_string().as_bytes());
        buffer.put_slice(b",\"message_id\":\"");
        buffer.put_slice(id.as_bytes());
        buffer.put_slice(b"\",\"received_at\":\"");
        buffer.put_slice(format_time(self.received_at).as_bytes());
        buffer.put_slice(b"\"");
        if let Some(entity) = &self.entity {
            buffer.put_slice(b",\"entity\":");
            put_json_string(&mut buffer, entity.as_str());
        }
        if let Some(key) = &self.idempotency_key {
            buffer.put_slice(b",\"idempotency_key\":");
            put_json_string(&mut buffer, key.as_str());
        }
        if let Some(request_id) = &self.request_id {
            buffer.put_slice(b",\"request_id\":");
            put_json_string(&mut buffer, request_id);
        }
        if let Some(traceparent) = &self.traceparent {
            buffer.put_slice(b",\"traceparent\":\"");
            buffer.put_slice(traceparent.to_string().as_bytes());
            buffer.put_slice(b"\"");
        }
        if !self.headers.is_empty() {
            buffer.put_slice(b",\"headers\":{");
            for (index, (name, value)) in self.headers.iter().enumerate() {
                if index > 0 {
                    buffer.put_slice(b",");
                }
                put_json_string(&mut buffer, name);
                buffer.put_slice(b":");
                put_json_string(&mut buffer, value);
            }
            buffer.put_slice(b"}");
        }
        buffer.put_slice(b",\"content_type\":");
        put_json_string(&mut buffer, &self.content_type);
        match &self.body {
            Body::Inline(bytes) => {
                buffer.put_slice(b",\"body\":");
                buffer.put_slice(bytes);
            }
            Body::Stored(reference) => {
                buffer.put_slice(b",\"body_ref\":{\"bucket\":");
                put_json_string(&mut buffer, &reference.bucket);
                buffer.put_slice(b",\"object\":");
                put_json_string(&mut buffer, &reference.object);
                buffer.put_slice(b",\"size\":");
                buffer.put_slice(reference.size.to_string().as_bytes());
                buffer.put_slice(b"}");
            }
        }
        buffer.put_slice(b"}");
        let headers = self.idempotency_key.as_ref().map(|_| {
            let mut headers = HeaderMap::new();
            headers.insert(NATS_MSG_ID, id.as_str());
            headers
        });
        EncodedMessage {
            headers,
            payload: buffer.freeze(),
        }
    }

    /// Decodes an envelope from a NATS message payload. The body is a slice of `payload`,
    /// not a copy.
    pub fn decode(payload: Bytes) -> Result<Self, DecodeError> {
        check_version(&payload)?;
        let mut wire: WireV1 =
            serde_json::from_slice(&payload).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        let body = match (wire.body, wire.body_ref.take()) {
            (Some(raw), _) => Body::Inline(payload.slice_ref(raw.get().as_bytes())),
            (None, Some(r)) => Body::Stored(BodyRef {
                bucket: r.bucket,
                object: r.object,
                size: r.size,
            }),
            (None, None) => return Err(DecodeError::NoBody),
        };
        Self::from_wire(wire, body)
    }

    /// Decodes an envelope in the layout [`Envelope::encode`] writes, an inline body last,
    /// without reading the body: for a reader about to parse the body anyway, which
    /// [`Envelope::decode`] would make scan it twice (the skip alone was a tenth of the
    /// worker's instructions). `None` when the payload is not in that layout, or its
    /// metadata are not readable: [`Envelope::decode`] then says what it is.
    ///
    /// The body is taken as everything between the first top-level `,"body":` and the
    /// payload's closing brace, unchecked. It is the envelope's body exactly when it is
    /// one JSON document (then `decode` returns this same envelope); a reader that finds
    /// it is not must ask [`Envelope::decode`], which reads the envelope whole (a member
    /// after the body, say, or a malformed envelope).
    pub fn decode_leaving_body_unchecked(payload: &Bytes) -> Option<Self> {
        check_version(payload).ok()?;
        let start = body_member(payload)?;
        let body = payload.get(start + BODY_MEMBER.len()..payload.len() - 1)?;
        let outer = |byte: Option<&u8>| byte.is_some_and(|b| !b" \t\n\r".contains(b));
        if payload.last() != Some(&b'}') || !outer(body.first()) || !outer(body.last()) {
            return None;
        }
        // The metadata as a document of their own: the members before the body, closed.
        let mut metadata = Vec::with_capacity(start + 1);
        metadata.extend_from_slice(&payload[..start]);
        metadata.push(b'}');
        let wire: WireV1 = serde_json::from_slice(&metadata).ok()?;
        if wire.body.is_some() {
            // A body member before this one, not in encode's layout: the full decode
            // refuses the duplicate.
            return None;
        }
        Self::from_wire(wire, Body::Inline(payload.slice_ref(body))).ok()
    }

    fn from_wire(wire: WireV1<'_>, body: Body) -> Result<Self, DecodeError> {
        let entity = wire.entity.as_deref().map(EntityName::parse).transpose()?;
        let idempotency_key = wire
            .idempotency_key
            .as_deref()
            .map(|k| IdempotencyKey::parse(k).map_err(|_| DecodeError::IdempotencyKey))
            .transpose()?;
        Ok(Self {
            message_id: wire.message_id,
            received_at: wire.received_at,
            entity,
            idempotency_key,
            request_id: wire.request_id.map(Cow::into_owned),
            // Malformed, it was not written by nats-api: the message is still good, the
            // trace starts again at the worker.
            traceparent: wire.traceparent.as_deref().and_then(TraceParent::parse),
            headers: wire.headers,
            content_type: wire
                .content_type
                .map_or_else(|| JSON_CONTENT_TYPE.to_owned(), Cow::into_owned),
            body,
        })
    }
}

/// How [`Envelope::encode`] introduces an inline body, always the last member.
const BODY_MEMBER: &[u8] = b",\"body\":";

/// Where the first `,"body":` that is a member of the top-level object starts, found
/// by following strings (and their escapes) and nesting up to it; `None` if there is
/// none. The bytes before it are not validated here: the caller parses them.
fn body_member(payload: &[u8]) -> Option<usize> {
    let mut depth = 0_usize;
    for (index, byte) in crate::json::outside_strings(payload) {
        match byte {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.checked_sub(1)?,
            b',' if depth == 1 && payload[index..].starts_with(BODY_MEMBER) => {
                return Some(index);
            }
            _ => {}
        }
    }
    None
}

fn check_version(payload: &[u8]) -> Result<(), DecodeError> {
    match version_of(payload)? {
        version if version == u64::from(ENVELOPE_VERSION) => Ok(()),
        version => Err(DecodeError::UnsupportedVersion(version)),
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
            traceparent: TraceParent::parse(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            headers: BTreeMap::from([("x-github-delivery".into(), "72d3162e-\"quoted\"".into())]),
            content_type: JSON_CONTENT_TYPE.into(),
            body: Body::Inline(Bytes::from_static(br#"{"o_orderkey":42}"#)),
        }
    }

    #[test]
    fn round_trips_inline_and_stored_bodies() {
        let inline = sample();
        let encoded = inline.encode();
        assert_eq!(
            encoded.headers.unwrap().get(NATS_MSG_ID).unwrap().as_str(),
            inline.message_id.to_string()
        );
        assert_eq!(Envelope::decode(encoded.payload).unwrap(), inline);

        let stored = Envelope {
            body: Body::Stored(BodyRef {
                bucket: "MESSAGES_BODIES".into(),
                object: "abc".into(),
                size: 2_000_000,
            }),
            entity: None,
            idempotency_key: None,
            request_id: None,
            traceparent: None,
            ..sample()
        };
        let encoded = stored.encode();
        assert!(encoded.headers.is_none(), "no idempotency key, no header");
        assert_eq!(Envelope::decode(encoded.payload).unwrap(), stored);
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
        for foreign in [&b""[..], b"{}", b"{\"a\":1}", b"[1]", b"{\"nomnom\":x}"] {
            assert!(
                matches!(
                    Envelope::decode(Bytes::copy_from_slice(foreign)),
                    Err(DecodeError::NotAnEnvelope)
                ),
                "{foreign:?}"
            );
        }
        assert!(matches!(
            Envelope::decode(Bytes::from_static(b"{\"nomnom\":2,\"whatever\":true}")),
            Err(DecodeError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            Envelope::decode(Bytes::from_static(
                b"{\"nomnom\":1,\"message_id\":\"nope\"}"
            )),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn user_text_is_escaped_and_the_body_kept_verbatim() {
        let tricky = Envelope {
            request_id: Some("\"},\"body\":1,\"x\":\"".into()),
            headers: Default::default(),
            content_type: "application/json; note=\"\\\"".into(),
            body: Body::Inline(Bytes::from_static(b"{\"k\" : [1, \"\\u0000\"]}")),
            ..sample()
        };
        let encoded = tricky.encode();
        let decoded = Envelope::decode(encoded.payload).unwrap();
        assert_eq!(decoded, tricky);
    }

    #[test]
    fn a_malformed_traceparent_is_dropped_not_refused() {
        let payload = br#"{"nomnom":1,"message_id":"0190d6f2-4c1e-7a3b-8f00-123456789abc","received_at":"2026-11-22T13:30:00.123456Z","traceparent":"00-XYZ","body":{}}"#;
        let envelope = Envelope::decode(Bytes::from_static(payload)).unwrap();
        assert_eq!(envelope.traceparent, None);
    }

    /// What the worker does: the fast decode, then the body read as JSON.
    fn fast_then_body(payload: &Bytes) -> Option<Envelope> {
        let envelope = Envelope::decode_leaving_body_unchecked(payload)?;
        let Body::Inline(body) = &envelope.body else {
            panic!("the fast decode only takes inline bodies")
        };
        crate::json::from_slice(body).ok()?;
        Some(envelope)
    }

    #[test]
    fn the_fast_decode_reads_what_encode_writes() {
        let body_named_header = Envelope {
            headers: BTreeMap::from([("body".into(), ",\"body\":{".into())]),
            ..sample()
        };
        let tricky = Envelope {
            request_id: Some("\"},\"body\":1,\"x\":\"".into()),
            body: Body::Inline(Bytes::from_static(b"[{\"body\" : \"}\"}, 2]")),
            ..sample()
        };
        let bare = Envelope::new(None, Bytes::from_static(b"0"));
        for envelope in [sample(), body_named_header, tricky, bare] {
            let payload = envelope.encode().payload;
            assert_eq!(
                Envelope::decode_leaving_body_unchecked(&payload).as_ref(),
                Some(&envelope)
            );
        }
        let stored = Envelope {
            body: Body::Stored(BodyRef {
                bucket: "B".into(),
                object: "o".into(),
                size: 1,
            }),
            ..sample()
        };
        assert_eq!(
            Envelope::decode_leaving_body_unchecked(&stored.encode().payload),
            None,
            "a claim-checked body goes through the full decode"
        );
    }

    #[test]
    fn the_fast_decode_leaves_other_layouts_to_the_full_decode() {
        let head = r#"{"nomnom":1,"message_id":"0190d6f2-4c1e-7a3b-8f00-123456789abc","received_at":"2026-11-22T13:30:00.123456Z""#;
        let payload = |tail: &str| Bytes::from(format!("{head}{tail}"));
        // Not the layout encode writes: no fast decode.
        for tail in [
            r#", "body":{}}"#,
            r#","body": {}}"#,
            r#","body":{} }"#,
            r#"}"#,
            r#","body_ref":{"bucket":"b","object":"o","size":1}}"#,
            r#","body":}"#,
        ] {
            assert_eq!(
                Envelope::decode_leaving_body_unchecked(&payload(tail)),
                None,
                "{tail}"
            );
        }
        // A member after the body: the fast decode takes the rest as the body, which is
        // then not JSON, and the full decode finds the body and ignores the member.
        let trailing = payload(r#","body":{"a":1},"x":2}"#);
        assert!(Envelope::decode_leaving_body_unchecked(&trailing).is_some());
        assert_eq!(fast_then_body(&trailing), None);
        let full = Envelope::decode(trailing).unwrap();
        assert_eq!(full.body, Body::Inline(Bytes::from_static(br#"{"a":1}"#)));
        // No closing brace: the body would be `{`, and the envelope is malformed.
        let unclosed = payload(r#","body":{}"#);
        assert_eq!(fast_then_body(&unclosed), None);
        assert!(matches!(
            Envelope::decode(unclosed),
            Err(DecodeError::Malformed(_))
        ));
        // The body twice: not JSON as one body, and the full decode refuses the envelope.
        let twice = payload(r#","body":1,"body":2}"#);
        assert_eq!(fast_then_body(&twice), None);
        assert!(matches!(
            Envelope::decode(twice),
            Err(DecodeError::Malformed(_))
        ));
        // The body twice, the first not in encode's layout: no fast decode.
        let spaced = payload(r#", "body":1,"body":2}"#);
        assert_eq!(Envelope::decode_leaving_body_unchecked(&spaced), None);
        assert!(matches!(
            Envelope::decode(spaced),
            Err(DecodeError::Malformed(_))
        ));
    }

    proptest::proptest! {
        /// Whatever the bytes, when the fast decode's body is one JSON document the full
        /// decode reads the same envelope: the worker's shortcut never changes what a
        /// message means.
        #[test]
        fn the_fast_decode_agrees_with_the_full_decode(
            base in 0..3_usize,
            edits in proptest::collection::vec((0..400_usize, 0..3_u8, 0..FRAGMENTS.len()), 1..6),
        ) {
            let mut bytes = [sample(), Envelope { headers: Default::default(), ..sample() }, Envelope {
                body: Body::Inline(Bytes::from_static(br#"{"body":[1,"\"",{}],"x":{"body":2}}"#)),
                ..sample()
            }][base].encode().payload.to_vec();
            for (at, kind, fragment) in edits {
                let at = at % (bytes.len() + 1);
                let fragment = FRAGMENTS[fragment].as_bytes();
                match kind {
                    0 => { bytes.splice(at..at, fragment.iter().copied()); }
                    1 => { bytes.drain(at..(at + fragment.len()).min(bytes.len())); }
                    _ => {
                        let end = (at + fragment.len()).min(bytes.len());
                        bytes.splice(at..end, fragment.iter().copied());
                    }
                }
            }
            let payload = Bytes::from(bytes);
            if let Some(fast) = fast_then_body(&payload) {
                proptest::prop_assert_eq!(Envelope::decode(payload).ok(), Some(fast));
            }
        }
    }

    const FRAGMENTS: &[&str] = &[
        "\"",
        "\\",
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        " ",
        ",\"body\":",
        "\"body\"",
        "1",
        ",\"x\":2",
        "null",
        "\\\"",
        "\"body_ref\":{}",
        "}}",
        ", \"body\":",
    ];

    #[test]
    fn new_ids_are_time_ordered_v7() {
        let first = new_message_id();
        let second = new_message_id();
        assert_eq!(first.get_version_num(), 7);
        assert!(second > first);
    }
}
