//! `POST /api/ingest/message` and `POST /api/ingest/batch`.

use std::collections::BTreeMap;

use axum::{
    Extension, Json,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::{Buf, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::{StreamExt, future::BoxFuture, stream::FuturesOrdered};
use nomnom_runtime::{
    EntityName, Envelope, IdempotencyKey, TraceParent, envelope, envelope::format_time,
};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::{
    auth::Unverified,
    budget::{BodyBudget, Reservation},
    config::ApiConfig,
    error::{ApiError, ErrorDetail},
    publish::{Accepted, envelope_for},
    state::AppState,
};

/// Header carrying the request id (set by the request-id layer when absent).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The answer to an accepted message.
#[derive(Debug, Serialize)]
pub struct AcceptedResponse {
    pub message_id: Uuid,
    pub status: &'static str,
    pub received_at: String,
    /// True when an Idempotency-Key retry matched a message already stored.
    pub duplicate: bool,
}

impl From<&Accepted> for AcceptedResponse {
    fn from(accepted: &Accepted) -> Self {
        Self {
            message_id: accepted.message_id,
            status: "accepted",
            received_at: format_time(accepted.received_at),
            duplicate: accepted.duplicate,
        }
    }
}

/// What a request's URL and headers say about the message(s) in its body.
struct RequestMeta {
    received_at: DateTime<Utc>,
    entity: Option<EntityName>,
    key: Option<IdempotencyKey>,
    request_id: Option<String>,
    /// This request's place in its trace (set by `tracecontext::continue_trace`).
    traceparent: Option<TraceParent>,
    /// The configured headers the request has.
    captured: BTreeMap<String, String>,
}

impl RequestMeta {
    fn read(
        path_entity: Option<&str>,
        headers: &HeaderMap,
        traceparent: Option<Extension<TraceParent>>,
        config: &ApiConfig,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            received_at: envelope::now_micros(),
            entity: entity_hint(path_entity, headers, config)?,
            key: idempotency_key(headers, &config.idempotency_headers)?,
            request_id: request_id(headers),
            traceparent: traceparent.map(|Extension(t)| t),
            captured: captured_headers(headers, &config.capture_headers)?,
        })
    }
}

/// Authenticates a request the API-key middleware let through [`Unverified`]: by the
/// signature of the webhook rule covering its route, over the raw body. Nothing else
/// happens to a request that fails here.
fn authenticate(
    state: &AppState,
    unverified: Option<Extension<Unverified>>,
    route: Option<&EntityName>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ApiError> {
    let Some(Extension(Unverified { keys_required })) = unverified else {
        return Ok(());
    };
    let now = Utc::now().timestamp();
    match state.current_webhooks().verify(route, headers, body, now) {
        Ok(true) => Ok(()),
        Ok(false) if !keys_required => Ok(()),
        Ok(false) => Err(ApiError::Unauthorized),
        Err(err) => Err(ApiError::Signature(err)),
    }
    .inspect_err(|_| metrics::counter!("ingest_auth_failures_total").increment(1))
}

/// The JSON document of a single-message body: the body itself, or, in a form-encoded
/// body (`application/x-www-form-urlencoded`, GitHub's default), its `payload` field.
/// An error names the content type the body came with.
fn json_body(bytes: Bytes, headers: &HeaderMap) -> Result<Bytes, ApiError> {
    let Err(not_json) = check_json_item(&bytes) else {
        // `curl -d` sends JSON labelled as a form: JSON is JSON whatever the label.
        return Ok(bytes);
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
        .unwrap_or_default();
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if not_json.code == "empty_body"
        || media_type.is_empty()
        || media_type == "application/json"
        || media_type.ends_with("+json")
        || media_type == "text/json"
    {
        return Err(ApiError::bad_request(not_json.code, not_json.message));
    }
    if media_type == "application/x-www-form-urlencoded" {
        let payload = form_urlencoded::parse(&bytes)
            .find(|(name, _)| name == "payload")
            .map(|(_, value)| Bytes::from(value.into_owned()));
        let Some(payload) = payload else {
            return Err(ApiError::bad_request(
                "invalid_form",
                "the body is form-encoded (Content-Type: application/x-www-form-urlencoded) without a payload field, and is not JSON either; send JSON (Content-Type: application/json), or the JSON in a payload field",
            ));
        };
        return check_json_item(&payload).map(|()| payload).map_err(|e| {
            ApiError::bad_request(e.code, format!("the form's payload field: {}", e.message))
        });
    }
    Err(ApiError::UnsupportedMediaType(format!(
        "the body was sent as {content_type} and is not JSON ({}); send JSON (Content-Type: application/json), or a form (application/x-www-form-urlencoded) with the JSON in a payload field",
        not_json.message
    )))
}

/// The values of the headers nats-api captures (`--capture-header`): text, since the
/// envelope is JSON. A header sent twice keeps its values joined by ", " (RFC 9110).
fn captured_headers(
    headers: &HeaderMap,
    capture: &[HeaderName],
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut captured = BTreeMap::new();
    for name in capture {
        let mut values = Vec::new();
        for value in headers.get_all(name) {
            let text = value.to_str().map_err(|_| {
                ApiError::bad_request(
                    "invalid_header",
                    format!("header {name} is not visible ASCII text; it is captured into the message, which holds text only"),
                )
            })?;
            values.push(text);
        }
        if !values.is_empty() {
            captured.insert(name.as_str().to_owned(), values.join(", "));
        }
    }
    Ok(captured)
}

/// `POST /api/ingest/message` and `POST /api/ingest/message/{entity}`.
pub async fn message(
    State(state): State<AppState>,
    unverified: Option<Extension<Unverified>>,
    traceparent: Option<Extension<TraceParent>>,
    entity: Option<Path<String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let meta = RequestMeta::read(
        entity.as_ref().map(|Path(e)| e.as_str()),
        &headers,
        traceparent,
        &state.config,
    )?;
    // The body and its encoded copy count against the budget until it is published.
    let limit = state.config.max_body_bytes;
    let length = declared_length(&headers, limit)?;
    // Of unknown length, it reserves as it comes.
    let mut reservation = state
        .budget
        .try_reserve(2 * length.unwrap_or(UNKNOWN_LENGTH_FIRST))?;
    let bytes = read_rest(
        BytesMut::new(),
        body.into_data_stream(),
        length,
        limit,
        Some((&state.budget, &mut reservation)),
    )
    .await?;
    authenticate(&state, unverified, meta.entity.as_ref(), &headers, &bytes)?;
    let bytes = json_body(bytes, &headers).inspect_err(|_| count("message", "rejected"))?;
    let envelope = envelope_for(
        bytes,
        meta.entity,
        meta.key,
        meta.request_id,
        meta.traceparent,
        meta.captured,
        meta.received_at,
    );
    // Every later line about this request (a failed publish, say) names the message.
    tracing::Span::current().record("message_id", tracing::field::display(envelope.message_id));
    let accepted = state
        .publisher
        .publish(envelope)
        .await
        .inspect_err(|e| count("message", outcome_of(e)))?;
    tracing::debug!(duplicate = accepted.duplicate, "message accepted");
    count(
        "message",
        if accepted.duplicate {
            "duplicate"
        } else {
            "accepted"
        },
    );
    let mut response = (
        StatusCode::ACCEPTED,
        Json(AcceptedResponse::from(&accepted)),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!(
        "/api/ingest/status/{}",
        accepted.message_id.as_hyphenated()
    )) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

fn count(endpoint: &'static str, outcome: &'static str) {
    metrics::counter!("ingest_messages_received_total", "endpoint" => endpoint, "outcome" => outcome)
        .increment(1);
}

fn outcome_of(error: &ApiError) -> &'static str {
    if error.is_retryable() {
        "failed"
    } else {
        "rejected"
    }
}

/// The entity hint from the URL or the entity header (`X-Entity` unless configured;
/// they must agree). A header value is looked up in `--entity-map` first.
fn entity_hint(
    path: Option<&str>,
    headers: &HeaderMap,
    config: &ApiConfig,
) -> Result<Option<EntityName>, ApiError> {
    let name = &config.entity_header;
    let from_header = headers
        .get(name)
        .map(|v| {
            let text = v.to_str().map_err(|_| {
                ApiError::bad_request(
                    "invalid_entity",
                    format!("the {name} header is not visible ASCII text"),
                )
            })?;
            match config.entity_map.get(text) {
                Some(route) => Ok(route.clone()),
                None => EntityName::parse(text).map_err(|e| {
                    ApiError::bad_request(
                        "invalid_entity",
                        format!(
                            "the {name} header names no route: {e}; map the value to a route with --entity-map '{text}=<route>' (NOMNOM_ENTITY_MAP)"
                        ),
                    )
                }),
            }
        })
        .transpose()?;
    let from_path = path
        .map(|p| {
            EntityName::parse(p).map_err(|e| ApiError::bad_request("invalid_entity", e.to_string()))
        })
        .transpose()?;
    match (from_path, from_header) {
        (Some(p), Some(h)) if p != h => Err(ApiError::bad_request(
            "invalid_entity",
            format!(
                "the URL names entity {:?} but the {name} header names {:?}; send one of them",
                p.as_str(),
                h.as_str()
            ),
        )),
        (Some(entity), _) | (None, Some(entity)) => Ok(Some(entity)),
        (None, None) => Ok(None),
    }
}

/// The idempotency key from the first of `names` the request has.
fn idempotency_key(
    headers: &HeaderMap,
    names: &[HeaderName],
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some((name, value)) = names
        .iter()
        .find_map(|name| headers.get(name).map(|value| (name, value)))
    else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| IdempotencyKey::parse(text).ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                format!("the {name} header: {}", envelope::IdempotencyKeyError),
            )
        })
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| envelope::is_visible_ascii_token(v))
        .map(str::to_owned)
}

fn too_large(size: impl std::fmt::Display, limit: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "the body is {size} bytes; the limit is {limit} bytes"
    ))
}

/// The body's `Content-Length`, refused at once when over `limit`.
fn declared_length(headers: &HeaderMap, limit: usize) -> Result<Option<usize>, ApiError> {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        Some(length) if length > limit as u64 => Err(too_large(length, limit)),
        Some(length) => Ok(Some(length as usize)),
        None => Ok(None),
    }
}

/// What a single body of unknown length reserves at first (twice this): it grows as the
/// body comes.
const UNKNOWN_LENGTH_FIRST: usize = 64 * 1024;

/// What went wrong reading a body: too slow, or cut off.
fn body_error(err: &axum::Error) -> ApiError {
    if is_timeout(err) {
        ApiError::RequestTimeout("the request body was not received in time".into())
    } else {
        ApiError::bad_request(
            "unreadable_body",
            format!("could not read the request body: {err}"),
        )
    }
}

/// Reads the rest of a body after `head`, refusing more than `limit` bytes and slow
/// senders. With a known length, the buffer is allocated once, at its size.
async fn read_rest(
    mut head: BytesMut,
    mut stream: axum::body::BodyDataStream,
    length: Option<usize>,
    limit: usize,
    mut growing: Option<(&BodyBudget, &mut Reservation)>,
) -> Result<Bytes, ApiError> {
    head.reserve(length.unwrap_or(0).saturating_sub(head.len()));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| body_error(&e))?;
        let size = head.len() + chunk.len();
        if size > limit {
            return Err(too_large(format!("more than {limit}"), limit));
        }
        // The body and its encoded copy; grown by doubling, up to the limit's.
        if let Some((budget, reservation)) = growing.as_mut()
            && 2 * size > reservation.bytes()
        {
            let wanted = (2 * reservation.bytes()).max(2 * size).min(2 * limit);
            budget.grow(reservation, wanted)?;
        }
        head.extend_from_slice(&chunk);
    }
    Ok(head.freeze())
}

fn is_timeout(mut err: &(dyn std::error::Error + 'static)) -> bool {
    loop {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        match err.source() {
            Some(source) => err = source,
            None => return false,
        }
    }
}

/// Byte offset of a 1-based line and column, as serde_json reports them.
fn byte_offset(bytes: &[u8], line: usize, column: usize) -> usize {
    let line_start = bytes
        .split_inclusive(|b| *b == b'\n')
        .take(line.saturating_sub(1))
        .map(<[u8]>::len)
        .sum::<usize>();
    (line_start + column.saturating_sub(1)).min(bytes.len())
}

/// Deepest nesting accepted: serde_json, which workers parse with, refuses a 128th level
/// (its recursion limit), so the API refuses it too instead of accepting what no worker
/// can read.
pub const MAX_NESTING: usize = 127;

/// Byte offset where arrays/objects nest deeper than `limit`, outside strings.
fn nesting_exceeds(bytes: &[u8], limit: usize) -> Option<usize> {
    let mut depth = 0_usize;
    for (offset, byte) in nomnom_runtime::json::outside_strings(bytes) {
        match byte {
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Some(offset);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Checks that `bytes` is one well-formed JSON document.
pub fn check_json(bytes: &[u8]) -> Result<(), ApiError> {
    check_json_item(bytes).map_err(|detail| ApiError::bad_request(detail.code, detail.message))
}

fn check_json_item(bytes: &[u8]) -> Result<(), ErrorDetail<'static>> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ErrorDetail {
            code: "empty_body",
            message: "the body is empty; send a JSON document".into(),
        });
    }
    // One pass for a good document (the ingest hot path). Only when it fails do the
    // slower scans run, to name the cause as precisely as possible: invalid UTF-8 first
    // (ReadableJson visits every string and key, so serde_json checks their UTF-8 too),
    // then nesting (serde_json's recursion limit), then what serde_json says.
    let Err(e) = serde_json::from_slice::<ReadableJson>(bytes) else {
        return Ok(());
    };
    if let Err(utf8) = std::str::from_utf8(bytes) {
        return Err(ErrorDetail {
            code: "invalid_json",
            message: format!(
                "the body is not valid UTF-8 (byte offset {}); JSON must be UTF-8",
                utf8.valid_up_to()
            ),
        });
    }
    if let Some(offset) = nesting_exceeds(bytes, MAX_NESTING) {
        return Err(ErrorDetail {
            code: "invalid_json",
            message: format!(
                "the body nests arrays and objects deeper than {MAX_NESTING} levels (byte offset {offset})"
            ),
        });
    }
    Err(ErrorDetail {
        code: "invalid_json",
        message: format!(
            "the body is not valid JSON: {e} (byte offset {})",
            byte_offset(bytes, e.line(), e.column())
        ),
    })
}

/// Reads a document as the worker will (numbers included, which `IgnoredAny` skips
/// unparsed) and keeps nothing: a number out of range such as `1e400` is refused here
/// with a 400, not accepted and then dead-lettered.
struct ReadableJson;

impl<'de> serde::Deserialize<'de> for ReadableJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ReadableJsonVisitor)
    }
}

struct ReadableJsonVisitor;

impl<'de> serde::de::Visitor<'de> for ReadableJsonVisitor {
    type Value = ReadableJson;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<ReadableJson, E> {
        Ok(ReadableJson)
    }
    fn visit_i64<E>(self, _: i64) -> Result<ReadableJson, E> {
        Ok(ReadableJson)
    }
    fn visit_u64<E>(self, _: u64) -> Result<ReadableJson, E> {
        Ok(ReadableJson)
    }
    fn visit_f64<E>(self, _: f64) -> Result<ReadableJson, E> {
        Ok(ReadableJson)
    }
    fn visit_str<E>(self, _: &str) -> Result<ReadableJson, E> {
        Ok(ReadableJson)
    }
    fn visit_unit<E>(self) -> Result<ReadableJson, E> {
        Ok(ReadableJson)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<ReadableJson, A::Error> {
        while seq.next_element::<ReadableJson>()?.is_some() {}
        Ok(ReadableJson)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ReadableJson, A::Error> {
        while map.next_entry::<ReadableJson, ReadableJson>()?.is_some() {}
        Ok(ReadableJson)
    }
}

/// One item's outcome in a batch answer.
#[derive(Debug, Serialize)]
pub struct BatchItem {
    /// 0-based position of the item in the batch.
    pub index: usize,
    /// 1-based line of the item, for NDJSON batches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// `accepted`, `rejected` (fix the item; do not retry it as is) or `failed` (retry it).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Uuid>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail<'static>>,
}

/// The answer to a batch.
#[derive(Debug, Serialize)]
pub struct BatchResponse {
    /// Why the batch was read only in part (too many items or bytes, a body cut off);
    /// the items read before are listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail<'static>>,
    pub accepted: usize,
    pub rejected: usize,
    pub failed: usize,
    pub received_at: String,
    pub items: Vec<BatchItem>,
}

/// One batch item: its NDJSON line (if any) and its bytes, or why it is not JSON.
type SplitItem = (Option<usize>, Result<Bytes, ErrorDetail<'static>>);

/// Splits a batch body into items: a JSON array, or NDJSON (one document per line).
/// Items are slices of `body`, not copies.
fn split_batch(body: &Bytes, headers: &HeaderMap) -> Result<Vec<SplitItem>, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let ndjson_type = ["ndjson", "jsonl", "json-seq", "jsonlines"]
        .iter()
        .any(|t| content_type.contains(t));
    if first.is_none() {
        return Err(ApiError::bad_request(
            "empty_body",
            "the batch is empty; send a JSON array or NDJSON lines",
        ));
    }
    if !ndjson_type && first == Some(b'[') {
        let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!(
                    "the batch is not a valid JSON array: {e} (byte offset {})",
                    byte_offset(body, e.line(), e.column())
                ),
            )
        })?;
        return Ok(items
            .into_iter()
            .map(|raw| {
                // The array's syntax is checked; each item still gets the number checks.
                let item = body.slice_ref(raw.get().as_bytes());
                (None, check_json_item(&item).map(|()| item))
            })
            .collect());
    }
    if content_type.starts_with("application/json") && !ndjson_type {
        return Err(ApiError::bad_request(
            "invalid_batch",
            "a batch with Content-Type application/json must be a JSON array; send NDJSON as application/x-ndjson",
        ));
    }
    let mut items = Vec::new();
    let mut start = 0;
    for (number, line) in body.split(|b| *b == b'\n').enumerate() {
        let end = start + line.len();
        let trimmed = line.strip_suffix(b"\r").unwrap_or(line);
        if !trimmed.iter().all(u8::is_ascii_whitespace) {
            let item = body.slice(start..start + trimmed.len());
            let checked = check_json_item(&item).map(|()| item);
            items.push((Some(number + 1), checked));
        }
        start = end + 1;
    }
    Ok(items)
}

/// `POST /api/ingest/batch` and `POST /api/ingest/batch/{entity}`.
///
/// NDJSON is read as a stream: each line is checked and published as it arrives, so a
/// batch holds at most one line and a window of unacknowledged items, whatever its size.
/// A JSON array, or a batch whose webhook signature covers the whole body, is read whole
/// first (the array is refused whole if malformed; the signature is checked before
/// anything is published).
pub async fn batch(
    State(state): State<AppState>,
    unverified: Option<Extension<Unverified>>,
    traceparent: Option<Extension<TraceParent>>,
    entity: Option<Path<String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let meta = RequestMeta::read(
        entity.as_ref().map(|Path(e)| e.as_str()),
        &headers,
        traceparent,
        &state.config,
    )?;
    let limit = state.config.max_batch_bytes;
    let length = declared_length(&headers, limit)?;
    let whole = 2 * length.unwrap_or(limit);
    let mut stream = body.into_data_stream();
    if unverified.is_some() || batch_kind(&headers) == BatchKind::Array {
        let reservation = state.budget.try_reserve(whole)?;
        let bytes = read_rest(BytesMut::new(), stream, length, limit, None).await?;
        return whole_batch(&state, unverified, meta, &headers, bytes, reservation).await;
    }
    let reservation = state
        .budget
        .try_reserve(whole.min(streaming_reservation(&state.config)))?;
    // Without a content type that says which, the first byte does: `[` is an array.
    let mut head = BytesMut::new();
    let first = loop {
        if let Some(first) = head.iter().find(|b| !b.is_ascii_whitespace()) {
            break Some(*first);
        }
        match stream.next().await {
            Some(chunk) => head.extend_from_slice(&chunk.map_err(|e| body_error(&e))?),
            None => break None,
        }
    };
    if first == Some(b'[') && batch_kind(&headers) == BatchKind::Either {
        drop(reservation);
        let reservation = state.budget.try_reserve(whole)?;
        let bytes = read_rest(head, stream, length, limit, None).await?;
        return whole_batch(&state, unverified, meta, &headers, bytes, reservation).await;
    }
    streaming_batch(&state, meta, head, stream, reservation).await
}

#[derive(Debug, PartialEq, Eq)]
enum BatchKind {
    Ndjson,
    Array,
    /// No content type that says: NDJSON, unless the body starts with `[`.
    Either,
}

fn batch_kind(headers: &HeaderMap) -> BatchKind {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ["ndjson", "jsonl", "json-seq", "jsonlines"]
        .iter()
        .any(|t| content_type.contains(t))
    {
        BatchKind::Ndjson
    } else if content_type.starts_with("application/json") {
        BatchKind::Array
    } else {
        BatchKind::Either
    }
}

/// Bytes of unacknowledged items one streaming batch keeps in flight (each counted twice:
/// its line and its encoded message).
const WINDOW_BYTES: usize = 8 * 1024 * 1024;

/// What a streaming batch reserves: the line being read (at most a single body's size)
/// and its copy, and the window of items in flight.
fn streaming_reservation(config: &ApiConfig) -> usize {
    2 * config.max_body_bytes + WINDOW_BYTES
}

/// A batch read whole: split, checked and published.
async fn whole_batch(
    state: &AppState,
    unverified: Option<Extension<Unverified>>,
    meta: RequestMeta,
    headers: &HeaderMap,
    bytes: Bytes,
    _reservation: Reservation,
) -> Result<Response, ApiError> {
    authenticate(state, unverified, meta.entity.as_ref(), headers, &bytes)?;
    let items = split_batch(&bytes, headers)?;
    if items.len() > state.config.max_batch_items {
        return Err(ApiError::PayloadTooLarge(format!(
            "the batch has {} items; the limit is {}",
            items.len(),
            state.config.max_batch_items
        )));
    }
    let mut batch = PipelinedBatch::default();
    for (line, item) in items {
        batch.item(state, &meta, line, item).await;
    }
    let items = batch.finish().await;
    metrics::histogram!("ingest_batch_size_items").record(items.len() as f64);
    Ok(batch_response(items, meta.received_at, None))
}

/// An NDJSON batch read line by line, each line published as it arrives.
async fn streaming_batch(
    state: &AppState,
    meta: RequestMeta,
    head: BytesMut,
    mut stream: axum::body::BodyDataStream,
    _reservation: Reservation,
) -> Result<Response, ApiError> {
    let config = &state.config;
    let limit = config.max_batch_bytes;
    let mut read = 0;
    let mut lines = Lines::new(BytesMut::new(), config.max_body_bytes);
    let mut batch = PipelinedBatch::default();
    let mut chunk = Some(head.freeze());
    let mut ended = false;
    // Why reading stopped before the end of the body, if it did.
    let mut stopped: Option<ApiError> = None;
    'read: loop {
        // Bytes past the limit are not read: the lines before it are.
        let mut over = false;
        if let Some(chunk) = chunk.take() {
            let room = limit - read;
            over = chunk.len() > room;
            let taken = &chunk[..chunk.len().min(room)];
            read += taken.len();
            lines.push(taken);
        }
        while let Some((line, item)) = lines.next(ended && !over) {
            if batch.results.len() == config.max_batch_items {
                stopped = Some(ApiError::PayloadTooLarge(format!(
                    "the batch has more than {max} items (line {line} is item {next}); the first {max} were read and are listed, the rest was not read: send at most {max} items per batch",
                    max = config.max_batch_items,
                    next = config.max_batch_items + 1,
                )));
                break 'read;
            }
            batch.item(state, &meta, Some(line), item).await;
        }
        if over {
            stopped = Some(ApiError::PayloadTooLarge(format!(
                "the batch is more than {limit} bytes, the limit; the lines that end before byte {limit} were read and are listed, the rest was not read"
            )));
            break;
        }
        if ended {
            break;
        }
        match stream.next().await {
            None => ended = true,
            Some(Ok(next)) => chunk = Some(next),
            Some(Err(err)) => {
                stopped = Some(body_error(&err));
                break;
            }
        }
    }
    if batch.results.is_empty() {
        return Err(stopped.unwrap_or_else(|| {
            ApiError::bad_request(
                "empty_body",
                "the batch is empty; send a JSON array or NDJSON lines",
            )
        }));
    }
    let items = batch.finish().await;
    metrics::histogram!("ingest_batch_size_items").record(items.len() as f64);
    Ok(batch_response(items, meta.received_at, stopped))
}

/// The lines of an NDJSON body as it streams in: each non-blank line, copied out on its
/// own (so an item in flight holds only itself), with its 1-based number. A line over
/// `max` bytes is an item refused as too large, and is skipped without being held.
struct Lines {
    pending: BytesMut,
    /// Lines completed so far.
    number: usize,
    /// Inside a line already refused as too large.
    skipping: bool,
    max: usize,
}

impl Lines {
    fn new(head: BytesMut, max: usize) -> Self {
        Self {
            pending: head,
            number: 0,
            skipping: false,
            max,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        if self.skipping {
            // Only the end of the over-long line matters.
            if let Some(end) = memchr::memchr(b'\n', chunk) {
                self.number += 1;
                self.skipping = false;
                self.pending.extend_from_slice(&chunk[end + 1..]);
            }
        } else {
            self.pending.extend_from_slice(chunk);
        }
    }

    /// The next complete line (at the end of the body, the last one too).
    fn next(&mut self, at_end: bool) -> Option<(usize, Result<Bytes, ErrorDetail<'static>>)> {
        loop {
            if self.skipping {
                return None;
            }
            let (line, rest) = match memchr::memchr(b'\n', &self.pending) {
                Some(end) if end <= self.max + 1 => (&self.pending[..end], end + 1),
                None if self.pending.len() <= self.max && !at_end => return None,
                None if self.pending.is_empty() => return None,
                None if self.pending.len() <= self.max => (&self.pending[..], self.pending.len()),
                // Longer than any item may be: refused, and skipped to its end.
                found => {
                    let number = self.number + 1;
                    match found {
                        Some(end) => {
                            self.number += 1;
                            self.pending.advance(end + 1);
                        }
                        None => {
                            self.pending.clear();
                            self.skipping = !at_end;
                            if at_end {
                                self.number += 1;
                            }
                        }
                    }
                    return Some((
                        number,
                        Err(ErrorDetail {
                            code: "payload_too_large",
                            message: format!(
                                "the item is more than {} bytes, the largest a message may be",
                                self.max
                            ),
                        }),
                    ));
                }
            };
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let item =
                (!line.iter().all(u8::is_ascii_whitespace)).then(|| Bytes::copy_from_slice(line));
            self.number += 1;
            self.pending.advance(rest);
            if let Some(item) = item {
                let checked = check_json_item(&item).map(|()| item);
                return Some((self.number, checked));
            }
        }
    }
}

/// An acknowledgement awaited: the item's index, its bytes, and what JetStream said.
type Settled = (usize, usize, Result<Accepted, ApiError>);

/// A batch being published: sends go out while earlier acknowledgements are
/// outstanding, but at most [`PipelinedBatch::WINDOW`] of this request's (and
/// [`WINDOW_BYTES`]) are in flight, so one batch cannot take the whole in-flight budget.
#[derive(Default)]
struct PipelinedBatch {
    results: Vec<BatchItem>,
    /// Acknowledgements awaited, oldest first, each with its item's index and bytes.
    pending: FuturesOrdered<BoxFuture<'static, Settled>>,
    in_flight_bytes: usize,
}

impl PipelinedBatch {
    const WINDOW: usize = 1024;

    /// Adds the next item: publishes it, or records why it is refused. Every item starts
    /// `rejected`, until its publish says otherwise.
    async fn item(
        &mut self,
        state: &AppState,
        meta: &RequestMeta,
        line: Option<usize>,
        item: Result<Bytes, ErrorDetail<'static>>,
    ) {
        let index = self.results.len();
        self.results.push(BatchItem {
            index,
            line,
            status: "rejected",
            message_id: None,
            duplicate: false,
            error: None,
        });
        let bytes = match item {
            Ok(bytes) => bytes,
            Err(detail) => {
                self.results[index].error = Some(detail);
                return;
            }
        };
        let item_key = meta.key.as_ref().map(|k| k.for_batch_item(index));
        let envelope = envelope_for(
            bytes,
            meta.entity.clone(),
            item_key,
            meta.request_id.clone(),
            meta.traceparent,
            meta.captured.clone(),
            meta.received_at,
        );
        self.publish(state, index, envelope).await;
    }

    async fn publish(&mut self, state: &AppState, index: usize, envelope: Envelope) {
        let message_id = envelope.message_id;
        let size = 2 * match &envelope.body {
            envelope::Body::Inline(bytes) => bytes.len(),
            envelope::Body::Stored(_) => 0,
        };
        while !self.pending.is_empty() && self.in_flight_bytes + size > WINDOW_BYTES {
            self.settle_one().await;
        }
        // Over the global in-flight limit: the batch waits (for one of its own acks, or a
        // moment) and retries, until its publish timeout; meanwhile it reads no more of
        // its body, which slows its sender.
        let deadline = tokio::time::Instant::now() + state.config.publish_timeout;
        let sent = loop {
            match state.publisher.send(envelope.clone()).await {
                Err(ApiError::Overloaded) if tokio::time::Instant::now() < deadline => {
                    if self.pending.is_empty() {
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    } else {
                        self.settle_one().await;
                    }
                }
                sent => break sent,
            }
        };
        match sent {
            Ok(ack) => {
                self.in_flight_bytes += size;
                self.pending
                    .push_back(Box::pin(async move { (index, size, ack.wait().await) }));
            }
            Err(err) => {
                self.results[index].message_id = Some(message_id);
                self.record(index, Err(err));
            }
        }
        if self.pending.len() >= Self::WINDOW {
            self.settle_one().await;
        }
    }

    /// Waits for the oldest outstanding acknowledgement.
    async fn settle_one(&mut self) {
        if let Some((index, size, outcome)) = self.pending.next().await {
            self.in_flight_bytes -= size;
            self.record(index, outcome);
        }
    }

    async fn finish(mut self) -> Vec<BatchItem> {
        while !self.pending.is_empty() {
            self.settle_one().await;
        }
        self.results
    }

    fn record(&mut self, index: usize, outcome: Result<Accepted, ApiError>) {
        let item = &mut self.results[index];
        match outcome {
            Ok(accepted) => {
                item.status = "accepted";
                item.message_id = Some(accepted.message_id);
                item.duplicate = accepted.duplicate;
            }
            Err(err) => {
                item.status = outcome_of(&err);
                item.error = Some(err.detail());
            }
        }
    }
}

/// The answer listing every item read; `stopped` says why reading ended early (its
/// status is the answer's, with the items read before it listed).
fn batch_response(
    items: Vec<BatchItem>,
    received_at: DateTime<Utc>,
    stopped: Option<ApiError>,
) -> Response {
    let tally = |status: &str| items.iter().filter(|i| i.status == status).count();
    let (accepted, rejected, failed) = (tally("accepted"), tally("rejected"), tally("failed"));
    for (outcome, n) in [
        ("accepted", accepted),
        ("rejected", rejected),
        ("failed", failed),
    ] {
        metrics::counter!("ingest_messages_received_total", "endpoint" => "batch", "outcome" => outcome)
            .increment(n as u64);
    }
    let overloaded = items
        .iter()
        .any(|i| i.error.as_ref().is_some_and(|e| e.code == "overloaded"));
    let status = if let Some(stopped) = &stopped {
        stopped.status()
    } else if rejected + failed == 0 {
        StatusCode::ACCEPTED
    } else if accepted > 0 {
        StatusCode::MULTI_STATUS
    } else if failed == 0 {
        StatusCode::BAD_REQUEST
    } else if overloaded {
        StatusCode::TOO_MANY_REQUESTS
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if let Some(stopped) = &stopped {
        tracing::debug!(error = %stopped, items = items.len(), "batch read in part");
    }
    let mut response = (
        status,
        Json(BatchResponse {
            error: stopped.as_ref().map(ApiError::detail),
            accepted,
            rejected,
            failed,
            received_at: format_time(received_at),
            items,
        }),
    )
        .into_response();
    if failed > 0 || stopped.as_ref().is_some_and(ApiError::is_retryable) {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(nomnom_runtime::defaults::RETRY_AFTER_SECONDS),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_carry_the_byte_offset() {
        let err = check_json(b"{\"a\": 1,\n \"b\": }").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("byte offset 15"), "{message}");
        assert_eq!(err.code(), "invalid_json");
        assert_eq!(check_json(b"  \n").unwrap_err().code(), "empty_body");
        assert!(check_json(br#"{"ok": [1, 2.5, "x", null]}"#).is_ok());
        // Readable by the worker: numbers out of f64's range are refused here.
        let err = check_json(br#"{"price": 1e400}"#).unwrap_err();
        assert!(err.to_string().contains("number out of range"), "{err}");
        assert!(check_json(br#"{"big": 18446744073709551616, "tiny": 1e-400}"#).is_ok());
        // Checked in one pass: invalid UTF-8 in a key or a value is still found and named.
        for bad in [&b"{\"k\xff\": 1}"[..], &b"[\"ok\", \"\xc3\"]"[..]] {
            let err = check_json(bad).unwrap_err();
            assert!(err.to_string().contains("not valid UTF-8"), "{err}");
        }
    }

    #[test]
    fn nesting_is_counted_outside_strings() {
        assert_eq!(nesting_exceeds(b"[[[]]]", 3), None);
        assert_eq!(nesting_exceeds(b"[[[[]]]]", 3), Some(3));
        assert_eq!(nesting_exceeds(br#"{"a":"[[[[[\"[["}"#, 2), None);
        assert_eq!(nesting_exceeds(br#"[{"a":[1]}, {"b":{"c":[]}}]"#, 4), None);
        assert_eq!(
            nesting_exceeds(br#"[{"a":[1]}, {"b":{"c":[]}}]"#, 3),
            Some(22)
        );
    }

    #[test]
    fn ndjson_items_keep_their_line_numbers() {
        let body = Bytes::from_static(b"{\"a\":1}\n\n{bad\r\n[2]\n");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/x-ndjson".parse().unwrap(),
        );
        let items = split_batch(&body, &headers).unwrap();
        let lines: Vec<_> = items.iter().map(|(l, r)| (*l, r.is_ok())).collect();
        assert_eq!(lines, [(Some(1), true), (Some(3), false), (Some(4), true)]);
        assert_eq!(items[2].1.as_ref().unwrap().as_ref(), b"[2]");
    }

    /// Every line `Lines` gives for `chunks`: its number, and its text or error code.
    fn stream_lines(chunks: &[&str], max: usize) -> Vec<(usize, String)> {
        let mut lines = Lines::new(BytesMut::new(), max);
        let mut out = Vec::new();
        let mut take = |lines: &mut Lines, at_end| {
            while let Some((number, item)) = lines.next(at_end) {
                let text = match item {
                    Ok(bytes) => String::from_utf8(bytes.to_vec()).unwrap(),
                    Err(detail) => detail.code.to_owned(),
                };
                out.push((number, text));
            }
        };
        for chunk in chunks {
            lines.push(chunk.as_bytes());
            take(&mut lines, false);
        }
        take(&mut lines, true);
        out
    }

    #[test]
    fn streamed_lines_keep_their_numbers_across_chunks() {
        let expected = [
            (1, "{\"a\":1}".to_owned()),
            (3, "invalid_json".to_owned()),
            (4, "[2]".to_owned()),
            (5, "{\"last\":true}".to_owned()),
        ];
        let body = "{\"a\":1}\n\n{bad\r\n[2]\n{\"last\":true}";
        // Whole, and cut at every byte.
        assert_eq!(stream_lines(&[body], 100), expected);
        for cut in 1..body.len() {
            let (a, b) = body.split_at(cut);
            assert_eq!(stream_lines(&[a, b], 100), expected, "cut at {cut}");
        }
    }

    #[test]
    fn an_over_long_line_is_refused_and_skipped_without_being_held() {
        let long = "x".repeat(50);
        let body = format!("[1]\n\"{long}\"\n[3]\n\"{long}\"");
        let expected = [
            (1, "[1]".to_owned()),
            (2, "payload_too_large".to_owned()),
            (3, "[3]".to_owned()),
            (4, "payload_too_large".to_owned()),
        ];
        assert_eq!(stream_lines(&[&body], 20), expected);
        let pieces: Vec<String> = body.chars().map(String::from).collect();
        let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
        assert_eq!(stream_lines(&pieces, 20), expected, "one byte at a time");
        let mut lines = Lines::new(BytesMut::new(), 20);
        lines.push(format!("[1]\n\"{long}").as_bytes());
        while lines.next(false).is_some() {}
        lines.push(long.as_bytes());
        assert!(lines.pending.is_empty(), "the refused line is not held");
    }

    #[test]
    fn json_arrays_split_into_raw_items() {
        let body = Bytes::from_static(br#"[{"a":1}, {"b":[1,2]} ,3]"#);
        let items = split_batch(&body, &HeaderMap::new()).unwrap();
        let raw: Vec<_> = items
            .iter()
            .map(|(_, r)| String::from_utf8(r.as_ref().unwrap().to_vec()).unwrap())
            .collect();
        assert_eq!(raw, [r#"{"a":1}"#, r#"{"b":[1,2]}"#, "3"]);
        let mut json = HeaderMap::new();
        json.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert_eq!(
            split_batch(&Bytes::from_static(b"{\"a\":1}"), &json)
                .unwrap_err()
                .code(),
            "invalid_batch"
        );
    }
}
