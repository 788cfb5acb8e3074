//! W3C Trace Context: each ingest request continues the client's trace (its
//! `traceparent` header) or starts one, and the envelopes it publishes carry it to the
//! worker. A malformed header starts a new trace rather than refusing the message: the
//! trace is the operator's aid, not part of what the client sends. When spans are
//! exported (`--otlp-endpoint`), the request span is exported as a child of the client's
//! span, and the envelope's traceparent names it as the parent of the worker's span.

use axum::{extract::Request, http::HeaderValue, middleware::Next, response::Response};
use nomnom_runtime::{
    otlp,
    traceparent::{TRACEPARENT, TraceParent},
};

/// Middleware of the ingest and status routes: puts this request's [`TraceParent`] (a
/// child of the client's, or a new trace) in the request's extensions and on its span,
/// and answers with it in a `traceparent` header, so a client that sent none learns its
/// trace id.
pub async fn continue_trace(mut request: Request, next: Next) -> Response {
    let sent = request.headers().get(TRACEPARENT);
    let client = sent
        .and_then(|value| value.to_str().ok())
        .and_then(TraceParent::parse);
    if client.is_none() && sent.is_some() {
        tracing::debug!("malformed traceparent header ignored; starting a new trace");
    }
    let span = tracing::Span::current();
    // The request span's own ids: the exported span's when spans are exported.
    let ours = otlp::continue_trace(&span, client);
    span.record("trace_id", ours.trace_id());
    span.record("span_id", ours.parent_id());
    request.extensions_mut().insert(ours);
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&ours.to_string()) {
        response.headers_mut().insert(TRACEPARENT, value);
    }
    response
}
