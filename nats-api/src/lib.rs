//! nats-api: the generic ingestion service. It wraps each POSTed JSON body in a nomnom
//! envelope and publishes it to NATS JetStream. It knows nothing about entities.
//!
//! [`app`] builds the router (tested in-process with `tower::ServiceExt::oneshot`);
//! [`run`] is the whole service, used by the binary.

pub mod auth;
pub mod budget;
pub mod config;
pub mod console;
pub mod error;
pub mod health;
pub mod ingest;
pub mod publish;
pub mod server;
pub mod state;
pub mod status;
pub mod tracecontext;
pub mod webhook;

use std::future::Future;
use std::time::Duration;

use axum::{
    Router,
    http::{HeaderName, Request},
    middleware,
    routing::{get, post},
};
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::RequestBodyDeadlineLayer,
    trace::TraceLayer,
};

pub use config::{ApiArgs, ApiConfig};
pub use state::{AppState, StartupError};

/// The routes whose requests belong to a message's trace (ingest, status).
const API_PATH_PREFIX: &str = "/api/";

/// The target of other requests' spans, which are never exported (see
/// [`nomnom_runtime::otlp::UNTRACED_TARGET_SUFFIX`]).
const UNTRACED_TARGET: &str = "nats_api::untraced";

/// The service's routes and middleware.
pub fn app(state: AppState) -> Router {
    let request_id = HeaderName::from_static(ingest::REQUEST_ID_HEADER);
    let api = Router::new()
        .route("/api/ingest/message", post(ingest::message))
        .route("/api/ingest/message/{entity}", post(ingest::message))
        .route("/api/ingest/batch", post(ingest::batch))
        .route("/api/ingest/batch/{entity}", post(ingest::batch))
        .route("/api/ingest/status", get(status::lookup_by_key))
        .route("/api/ingest/status/{id}", get(status::lookup))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ))
        // Outside the key check, so a refused request's log lines carry its trace too.
        .route_layer(middleware::from_fn(tracecontext::continue_trace))
        .route_layer(middleware::from_fn(health::count_responses));
    let console = if state.config.console {
        console::routes(state.clone())
    } else {
        Router::new()
    };
    Router::new()
        .merge(api)
        .merge(console)
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(health::openapi))
        .layer(RequestBodyDeadlineLayer::new(
            state.config.body_read_timeout,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    let id = request
                        .headers()
                        .get(ingest::REQUEST_ID_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    // trace_id and span_id are set by `tracecontext`, message_id by the
                    // single-message handler once it has one. Error level, as the
                    // worker's message span: a span exists only when its level is
                    // enabled, and its ids must be on every line RUST_LOG lets through
                    // and its span exported whatever RUST_LOG says. Only the API's
                    // requests belong to a message's trace: the others' spans (health
                    // checks, scrapes, the console) are never exported.
                    let path = request.uri().path();
                    if path.starts_with(API_PATH_PREFIX) {
                        tracing::error_span!(
                            "request",
                            method = %request.method(),
                            path,
                            request_id = %id,
                            trace_id = tracing::field::Empty,
                            span_id = tracing::field::Empty,
                            message_id = tracing::field::Empty,
                        )
                    } else {
                        tracing::info_span!(
                            target: UNTRACED_TARGET,
                            "request",
                            method = %request.method(),
                            path,
                            request_id = %id,
                        )
                    }
                })
                .on_request(())
                .on_response(
                    tower_http::trace::DefaultOnResponse::new().level(tracing::Level::DEBUG),
                )
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// The service exported spans are named after, unless `--otel-service-name` says otherwise.
pub const SERVICE_NAME: &str = "nats-api";

/// What the binary does once its flags are parsed: logs (and span export, when
/// `--otlp-endpoint` asks for it), the service until SIGTERM or SIGINT, then the last
/// spans sent.
pub async fn main(args: &ApiArgs) -> Result<(), StartupError> {
    let exporter = nomnom_runtime::otlp::start(
        &args.traces,
        SERVICE_NAME,
        tokio::runtime::Handle::current(),
    )?;
    nomnom_runtime::telemetry::init(args.log_format, exporter.as_ref());
    let result = run(args.to_config(), server::shutdown_signal()).await;
    if let Some(exporter) = exporter {
        // Blocks until the collector answered (or the timeout): not on a runtime thread.
        let _ = tokio::task::spawn_blocking(move || exporter.shutdown()).await;
    }
    result
}

/// Runs the service until `shutdown` resolves; returns once in-flight requests are done.
pub async fn run(
    config: ApiConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartupError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartupError::Listen {
            addr: config.listen,
            source,
        })?;
    serve_on(listener, config, shutdown).await
}

/// Like [`run`], on a listener the caller bound (tests bind port 0).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: ApiConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartupError> {
    let options = server::ServeOptions {
        header_read_timeout: config.header_read_timeout,
        shutdown_grace: config.shutdown_grace,
    };
    let state = AppState::start(config).await?;
    reload_keys_on_sighup(state.clone());
    reload_changed_webhook_secrets(state.clone());
    let address = listener.local_addr().ok();
    tracing::info!(address = ?address, stream = %state.config.stream.name, nats = %state.config.nats.url, "nats-api listening");
    let finished = server::serve(listener, app(state.clone()), options, shutdown).await;
    if !finished {
        tracing::warn!("shutdown grace period ended with requests still in flight");
    }
    // Acks of answered requests were awaited already; flush anything still buffered. Not
    // while NATS is down: a flush would wait for the reconnection.
    if state.client.connection_state() == async_nats::connection::State::Connected {
        let _ = tokio::time::timeout(Duration::from_secs(1), state.client.flush()).await;
    }
    tracing::info!("nats-api stopped");
    Ok(())
}

fn reload_keys_on_sighup(state: AppState) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hangup.recv().await.is_some() {
            match state.reload_api_keys() {
                Ok(count) => tracing::info!(keys = count, "reloaded API keys"),
                Err(err) => {
                    tracing::error!(error = %err, "cannot reload API keys; keeping the old ones")
                }
            }
            if !state.config.webhooks.is_empty() {
                reload_webhooks(&state);
            }
        }
    });
}

/// Re-reads the webhook secrets files when their contents change (a rotated Kubernetes
/// secret, an edited file), checked every [`webhook::SECRETS_POLL_INTERVAL`].
fn reload_changed_webhook_secrets(state: AppState) {
    if !state
        .config
        .webhooks
        .iter()
        .any(|r| r.secrets_file.is_some())
    {
        return;
    }
    tokio::spawn(async move {
        let mut seen = webhook::secrets_files_fingerprint(&state.config.webhooks);
        loop {
            tokio::time::sleep(webhook::SECRETS_POLL_INTERVAL).await;
            let now = webhook::secrets_files_fingerprint(&state.config.webhooks);
            if now != seen {
                seen = now;
                reload_webhooks(&state);
            }
        }
    });
}

fn reload_webhooks(state: &AppState) {
    match state.reload_webhooks() {
        Ok(count) => tracing::info!(secrets = count, "reloaded webhook secrets"),
        Err(err) => {
            tracing::error!(error = %err, "cannot reload webhook secrets; keeping the old ones")
        }
    }
}
