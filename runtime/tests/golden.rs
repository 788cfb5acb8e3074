//! Fixes the envelope wire format: a change that alters these bytes breaks every
//! deployed worker reading messages written by an older API (or the reverse).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use nomnom_runtime::{Body, BodyRef, EntityName, Envelope, IdempotencyKey, TraceParent};
use uuid::Uuid;

/// Headers (`Name: value` lines), a blank line, then the payload exactly as sent.
fn render(envelope: &Envelope) -> String {
    let encoded = envelope.encode();
    let mut lines: Vec<String> = encoded
        .headers
        .iter()
        .flat_map(|headers| headers.iter())
        .flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(move |v| format!("{name}: {}", v.as_str()))
        })
        .collect();
    lines.sort();
    format!(
        "{}\n\n{}\n",
        lines.join("\n"),
        String::from_utf8(encoded.payload.to_vec()).unwrap()
    )
}

fn fixed_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T13:30:00.123456Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn check(name: &str, envelope: &Envelope) {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    let rendered = render(envelope);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing {path}; run with UPDATE_GOLDEN=1 once"));
    assert_eq!(
        rendered, expected,
        "the envelope wire format changed; bump ENVELOPE_VERSION and keep reading the old one"
    );
    // Whatever was written must read back identically.
    assert_eq!(
        &Envelope::decode(envelope.encode().payload).unwrap(),
        envelope
    );
}

#[test]
fn inline_body_with_every_optional_field() {
    let key = IdempotencyKey::parse("order-42").unwrap();
    check(
        "envelope_v1_inline.txt",
        &Envelope {
            message_id: key.message_id(),
            received_at: fixed_time(),
            entity: Some(EntityName::parse("order").unwrap()),
            idempotency_key: Some(key),
            request_id: Some("req-7f3a".into()),
            traceparent: None,
            headers: Default::default(),
            content_type: "application/json".into(),
            body: Body::Inline(Bytes::from_static(
                br#"{"o_orderkey":42,"o_totalprice":"173665.47"}"#,
            )),
        },
    );
}

#[test]
fn claim_checked_body_without_optional_fields() {
    check(
        "envelope_v1_stored.txt",
        &Envelope {
            message_id: Uuid::parse_str("0190d6f2-4c1e-7a3b-8f00-123456789abc").unwrap(),
            received_at: fixed_time(),
            entity: None,
            idempotency_key: None,
            request_id: None,
            traceparent: None,
            headers: Default::default(),
            content_type: "application/json".into(),
            body: Body::Stored(BodyRef {
                bucket: "MESSAGES_BODIES".into(),
                object: "0190d6f2-4c1e-7a3b-8f00-123456789abc".into(),
                size: 2_500_000,
            }),
        },
    );
}

/// The trace context is an optional field: envelopes without it (above) keep their bytes,
/// and envelopes written before it existed still read.
#[test]
fn inline_body_with_a_trace_context() {
    check(
        "envelope_v1_traceparent.txt",
        &Envelope {
            message_id: Uuid::parse_str("0190d6f2-4c1e-7a3b-8f00-123456789abc").unwrap(),
            received_at: fixed_time(),
            entity: Some(EntityName::parse("order").unwrap()),
            idempotency_key: None,
            request_id: Some("req-7f3a".into()),
            traceparent: TraceParent::parse(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            headers: Default::default(),
            content_type: "application/json".into(),
            body: Body::Inline(Bytes::from_static(br#"{"o_orderkey":42}"#)),
        },
    );
    for old in ["envelope_v1_inline.txt", "envelope_v1_stored.txt"] {
        let text =
            std::fs::read_to_string(format!("{}/tests/golden/{old}", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        let payload = text.split_once("\n\n").unwrap().1.trim_end();
        let envelope = Envelope::decode(Bytes::copy_from_slice(payload.as_bytes())).unwrap();
        assert_eq!(envelope.traceparent, None, "{old}");
    }
}
