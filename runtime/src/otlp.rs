//! Optional export of spans over OTLP/HTTP (protobuf), off by default.
//!
//! With `--otlp-endpoint` (`OTEL_EXPORTER_OTLP_ENDPOINT`) a binary exports its spans to an
//! OpenTelemetry collector: nats-api its `request` spans, a worker its `message` spans.
//! Each continues the W3C trace of the message ([`TraceParent`]): nats-api's request span
//! is a child of the client's `traceparent` (or the root of the trace it starts), and the
//! envelope carries that span's own id, so the worker's message span is its child in the
//! same trace. The ids exported are the ids logged.
//!
//! Without an endpoint nothing here runs: no OpenTelemetry layer is installed (a `None`
//! layer), no exporter thread is started, and [`continue_trace`] and [`follow`] cost one
//! relaxed atomic load.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{Layer, registry::LookupSpan};

use crate::{cli::TraceArgs, defaults, traceparent::TraceParent};

/// Whether spans are exported: set once the layer is installed.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The path OTLP/HTTP receivers take traces on, under the endpoint.
const TRACES_PATH: &str = "v1/traces";

/// Spans whose target ends with this are never exported (health checks, scrapes: requests
/// that belong to no message's trace). Logging is unchanged: the target still starts with
/// the crate's name, so `RUST_LOG` directives for the crate cover it.
pub const UNTRACED_TARGET_SUFFIX: &str = "::untraced";

/// Where and as what spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The collector's base URL; spans are POSTed to `<endpoint>/v1/traces`.
    pub endpoint: String,
    pub service_name: String,
}

impl OtlpConfig {
    /// The URL spans are POSTed to: `v1/traces` under the endpoint, as the OpenTelemetry
    /// specification says of `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn traces_url(&self) -> Result<axum::http::Uri, OtlpError> {
        let base = self.endpoint.trim_end_matches('/');
        let url: axum::http::Uri =
            format!("{base}/{TRACES_PATH}")
                .parse()
                .map_err(|_| OtlpError::Endpoint {
                    endpoint: self.endpoint.clone(),
                    reason: "it is not a URL",
                })?;
        match url.scheme_str() {
            Some("http") => Ok(url),
            Some("https") => Err(OtlpError::Endpoint {
                endpoint: self.endpoint.clone(),
                reason: "OTLP over HTTPS is not supported; point it at a collector's plain HTTP port (4318), e.g. a collector agent beside the pod",
            }),
            _ => Err(OtlpError::Endpoint {
                endpoint: self.endpoint.clone(),
                reason: "it must start with http://",
            }),
        }
    }
}

/// Why the export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error(
        "cannot export spans to {endpoint:?}: {reason}; fix --otlp-endpoint (OTEL_EXPORTER_OTLP_ENDPOINT), or unset it to export nothing"
    )]
    Endpoint {
        endpoint: String,
        reason: &'static str,
    },
    #[error(
        "cannot set up the OTLP span exporter: {0}; fix --otlp-endpoint (OTEL_EXPORTER_OTLP_ENDPOINT), or unset it to export nothing"
    )]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The span exporter: batches spans on a thread of its own and POSTs them from the tokio
/// runtime it was given. [`Exporter::shutdown`] sends what is still buffered.
#[derive(Debug)]
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Starts the exporter; its HTTP requests run on `runtime`, which must outlive
    /// [`Exporter::shutdown`].
    pub fn start(config: &OtlpConfig, runtime: tokio::runtime::Handle) -> Result<Self, OtlpError> {
        use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
        let client = OnRuntime {
            client: opentelemetry_http::hyper::HyperClient::with_default_connector(
                defaults::OTLP_EXPORT_TIMEOUT,
                None,
            ),
            runtime,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(config.traces_url()?.to_string())
            .with_timeout(defaults::OTLP_EXPORT_TIMEOUT)
            .with_http_client(client)
            .build()?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        Ok(Self { provider })
    }

    /// The tracing layer that turns spans into exported ones. Spans are started when
    /// their ids are first asked for ([`continue_trace`]) or when they close, not when
    /// entered, so a parent can still be set on an entered span.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        EXPORTING.store(true, Ordering::Relaxed);
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("nomnom"))
            .with_context_activation(false)
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
                !metadata.target().ends_with(UNTRACED_TARGET_SUFFIX)
            }))
    }

    /// Sends the spans still buffered (within [`defaults::OTLP_SHUTDOWN_TIMEOUT`]) and
    /// stops the exporter. Blocks: call it outside async code, or in `spawn_blocking`.
    pub fn shutdown(self) {
        EXPORTING.store(false, Ordering::Relaxed);
        if let Err(err) = self
            .provider
            .shutdown_with_timeout(defaults::OTLP_SHUTDOWN_TIMEOUT)
        {
            tracing::warn!(error = %err, "spans still buffered at shutdown may not have been exported");
        }
    }
}

/// Starts the exporter `args` ask for, on `runtime`: `None`, and nothing started, without
/// an endpoint.
pub fn start(
    args: &TraceArgs,
    default_service_name: &str,
    runtime: tokio::runtime::Handle,
) -> Result<Option<Exporter>, OtlpError> {
    args.to_config(default_service_name)
        .map(|config| Exporter::start(&config, runtime))
        .transpose()
}

/// Whether spans are exported (an OpenTelemetry layer is installed).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// nats-api's request span: continues the client's trace (`client`) or starts one, and
/// returns the traceparent to pass on downstream, whose parent id is `span`'s own. When
/// spans are exported, these are the ids the exported span has; otherwise a child of the
/// client's (or a new trace) made here.
pub fn continue_trace(span: &tracing::Span, client: Option<TraceParent>) -> TraceParent {
    let made_here = || client.map_or_else(TraceParent::start, |parent| parent.child());
    if !exporting() {
        return made_here();
    }
    if let Some(parent) = client {
        // Fails only for a span not exported (disabled by RUST_LOG): then the ids below
        // are invalid and the trace is made here.
        let _ = span.set_parent(remote_context(&parent));
    }
    let context = span.context();
    let exported = context.span().span_context().clone();
    if !exported.is_valid() {
        return made_here();
    }
    TraceParent::from_ids(
        u128::from_be_bytes(exported.trace_id().to_bytes()),
        u64::from_be_bytes(exported.span_id().to_bytes()),
        exported.is_sampled(),
    )
    .unwrap_or_else(made_here)
}

/// Makes `span` (not yet entered nor asked for its ids) a child of `parent`, a span of
/// another process, when spans are exported.
pub fn follow(span: &tracing::Span, parent: Option<&TraceParent>) {
    if let Some(parent) = parent
        && exporting()
    {
        let _ = span.set_parent(remote_context(parent));
    }
}

/// An OpenTelemetry context whose current span is `parent`, of another process.
fn remote_context(parent: &TraceParent) -> opentelemetry::Context {
    let (trace_id, parent_id, flags) = parent.ids();
    opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(trace_id),
        SpanId::from(parent_id),
        TraceFlags::new(flags),
        true,
        TraceState::NONE,
    ))
}

/// The exporter's HTTP client: hyper's, run on the tokio runtime. The batch processor
/// exports from a thread of its own, outside any runtime, and hyper needs one.
#[derive(Debug)]
struct OnRuntime {
    client: opentelemetry_http::hyper::HyperClient,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: axum::http::Request<bytes::Bytes>,
    ) -> Result<axum::http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(endpoint: Option<&str>, service_name: Option<&str>) -> TraceArgs {
        TraceArgs {
            otlp_endpoint: endpoint.map(str::to_owned),
            service_name: service_name.map(str::to_owned),
        }
    }

    #[test]
    fn no_endpoint_means_no_export() {
        assert_eq!(args(None, Some("x")).to_config("nats-api"), None);
        assert_eq!(args(Some("  "), None).to_config("nats-api"), None);
        // Nothing is started: no exporter, so `telemetry::init` installs no layer.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let exporter = start(&args(None, None), "nats-api", runtime.handle().clone()).unwrap();
        assert!(exporter.is_none());
        assert!(!exporting());
    }

    #[test]
    fn the_service_name_defaults_to_the_binarys() {
        let config = args(Some("http://collector:4318"), None)
            .to_config("nats-api")
            .unwrap();
        assert_eq!(config.service_name, "nats-api");
        let config = args(Some("http://collector:4318"), Some("ingest"))
            .to_config("nats-api")
            .unwrap();
        assert_eq!(config.service_name, "ingest");
    }

    #[test]
    fn spans_go_to_v1_traces_under_the_endpoint() {
        for endpoint in ["http://collector:4318", "http://collector:4318/"] {
            let config = args(Some(endpoint), None).to_config("x").unwrap();
            assert_eq!(
                config.traces_url().unwrap().to_string(),
                "http://collector:4318/v1/traces"
            );
        }
        let config = args(Some("http://gateway/otlp"), None)
            .to_config("x")
            .unwrap();
        assert_eq!(
            config.traces_url().unwrap().to_string(),
            "http://gateway/otlp/v1/traces"
        );
    }

    #[test]
    fn endpoints_it_cannot_use_are_refused_with_what_to_do() {
        for endpoint in [
            "https://collector:4318",
            "collector:4318",
            "http://bad host",
        ] {
            let config = args(Some(endpoint), None).to_config("x").unwrap();
            let err = config.traces_url().unwrap_err().to_string();
            assert!(err.contains("--otlp-endpoint"), "{endpoint}: {err}");
        }
    }

    #[test]
    fn without_export_the_trace_is_made_here() {
        // No layer is installed in this test binary: nothing is exported.
        assert!(!exporting());
        let client =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let ours = continue_trace(&tracing::Span::none(), Some(client));
        assert_eq!(ours.trace_id(), client.trace_id());
        assert_ne!(ours.parent_id(), client.parent_id());
        let started = continue_trace(&tracing::Span::none(), None);
        assert_ne!(started.trace_id(), client.trace_id());
    }
}
