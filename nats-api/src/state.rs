//! Shared state of the service, and its start-up.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream;
use nomnom_runtime::metrics::PrometheusHandle;
use nomnom_runtime::{status::StatusStore, stream};

use crate::{
    auth::{ApiKeys, SharedKeys},
    config::{ApiConfig, ConfigError},
    publish::{Publisher, StreamHealth},
    webhook::{WebhookError, Webhooks},
};

/// Webhook rules and secrets shared by all requests, replaced whole on reload.
pub type SharedWebhooks = Arc<RwLock<Arc<Webhooks>>>;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Nats(#[from] nomnom_runtime::nats::NatsConnectError),
    #[error(transparent)]
    Stream(#[from] stream::StreamSetupError),
    #[error(transparent)]
    Status(#[from] nomnom_runtime::status::StatusError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    #[error(transparent)]
    Tracing(#[from] nomnom_runtime::otlp::OtlpError),
    #[error(
        "cannot read the API keys file {path}: {source}; fix the path or unset NOMNOM_API_KEYS_FILE"
    )]
    ApiKeysFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}; pick a free port with --listen or NOMNOM_LISTEN")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ApiConfig>,
    /// Behind an Arc: the state is cloned per request.
    pub client: Arc<async_nats::Client>,
    pub publisher: Publisher,
    pub status: Option<StatusStore>,
    pub api_keys: SharedKeys,
    /// Signature rules (`--webhook`); verification runs only when some are configured.
    pub webhooks: SharedWebhooks,
    pub metrics: PrometheusHandle,
    /// Bytes of request bodies that may be held at once.
    pub budget: crate::budget::BodyBudget,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .field("stream_ready", &self.stream_ready())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Connects to NATS (retrying in the background if it is down), opens the status
    /// database if configured, and starts the task that creates or updates the stream.
    pub async fn start(config: ApiConfig) -> Result<Self, StartupError> {
        config.stream.validate()?;
        config.validate()?;
        let webhooks = Webhooks::load(&config.webhooks)?;
        if config.webhooks.iter().all(|r| !r.routes.is_empty())
            && !config.webhooks.is_empty()
            && config.api_keys.is_empty()
            && config.api_keys_file.is_none()
        {
            tracing::warn!(
                "webhook rules cover only some routes and no API keys are set: other routes accept unauthenticated requests; set NOMNOM_API_KEYS or add a rule without route="
            );
        }
        let keys =
            ApiKeys::load(&config.api_keys, config.api_keys_file.as_deref()).map_err(|source| {
                StartupError::ApiKeysFile {
                    path: config.api_keys_file.clone().unwrap_or_default(),
                    source,
                }
            })?;
        let status = config
            .database_url
            .as_deref()
            .map(|url| StatusStore::open(url, 4))
            .transpose()?;
        let client = config.nats.connect_in_background().await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.publish_timeout)
            .max_ack_inflight(config.max_in_flight)
            .backpressure_on_inflight(false)
            .build(client.clone());
        let publisher = Publisher::new(js.clone(), Arc::new(config.stream.clone()), &config);
        let budget = crate::budget::BodyBudget::new(config.body_budget_bytes);
        let state = Self {
            budget,
            config: Arc::new(config),
            client: Arc::new(client),
            publisher,
            status,
            api_keys: Arc::new(RwLock::new(Arc::new(keys))),
            webhooks: Arc::new(RwLock::new(Arc::new(webhooks))),
            metrics: nomnom_runtime::metrics::install(),
        };
        // After install: before it, counters go nowhere.
        crate::health::register_counters();
        tokio::spawn(keep_stream_in_sync(
            js,
            state.config.stream.clone(),
            Arc::clone(&state.publisher.health),
        ));
        Ok(state)
    }

    /// Whether the stream has been created or verified since start (or since it was lost).
    pub fn stream_ready(&self) -> bool {
        self.publisher.health.ready.load(Ordering::Acquire)
    }

    /// Waits until the stream is set up, for callers that need it (tests, start-up logs).
    pub async fn wait_stream_ready(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.stream_ready() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Re-reads the API keys (on SIGHUP). Keeps the old keys if the file cannot be read.
    /// The API keys in force. A poisoned lock still holds the last keys: they are used,
    /// never an empty (open) set.
    pub fn current_api_keys(&self) -> Arc<ApiKeys> {
        Arc::clone(
            &self
                .api_keys
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    pub fn reload_api_keys(&self) -> Result<usize, std::io::Error> {
        let keys = ApiKeys::load(&self.config.api_keys, self.config.api_keys_file.as_deref())?;
        let count = keys.len();
        // Even through a poisoned lock: a revoked key must not stay valid.
        *self
            .api_keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
        Ok(count)
    }
}

impl AppState {
    /// Re-reads the webhook secrets (files changed, or SIGHUP). Keeps the old ones if
    /// they cannot be read.
    pub fn reload_webhooks(&self) -> Result<usize, WebhookError> {
        let webhooks = Webhooks::load(&self.config.webhooks)?;
        let count = webhooks.secrets();
        if let Ok(mut slot) = self.webhooks.write() {
            *slot = Arc::new(webhooks);
        }
        Ok(count)
    }

    /// The webhook rules as they are now.
    pub fn current_webhooks(&self) -> Arc<Webhooks> {
        self.webhooks
            .read()
            .map(|w| Arc::clone(&w))
            .unwrap_or_default()
    }
}

/// Creates or updates the stream and the body bucket until it succeeds, then again each
/// time a publish reports the stream missing.
async fn keep_stream_in_sync(
    js: jetstream::Context,
    settings: stream::StreamSettings,
    health: Arc<StreamHealth>,
) {
    loop {
        let mut delay = Duration::from_millis(100);
        loop {
            let result = async {
                stream::ensure_stream(&js, &settings).await?;
                stream::ensure_body_store(&js, &settings).await
            }
            .await;
            match result {
                Ok(_) => {
                    health.ready.store(true, Ordering::Release);
                    tracing::info!(stream = %settings.name, "stream ready");
                    break;
                }
                Err(err) => {
                    tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "stream not ready");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        health.resync.notified().await;
    }
}
