//! nats-api configuration: a plain struct with defaults, and the clap flags that fill it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderName;

use nomnom_runtime::{
    EntityName, NatsConfig, StreamSettings,
    cli::{NatsArgs, StreamArgs, TraceArgs},
    defaults, duration,
    telemetry::LogFormat,
};

use crate::webhook::WebhookRule;

/// The header that names the entity when the URL does not, by default.
pub const DEFAULT_ENTITY_HEADER: &str = "x-entity";
/// The header the idempotency key is read from, by default.
pub const DEFAULT_IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Headers that are never copied into a message: credentials.
pub const NEVER_CAPTURED: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// Everything nats-api needs to run. Build with `..Default::default()`.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub nats: NatsConfig,
    pub stream: StreamSettings,
    /// Largest single-message body, in bytes.
    pub max_body_bytes: usize,
    /// Largest batch request body, in bytes.
    pub max_batch_bytes: usize,
    pub max_batch_items: usize,
    /// Bytes of request bodies held in memory at once, across all requests; beyond it,
    /// 503 with `Retry-After`. Default: half the container's memory limit (256 MiB
    /// without one).
    pub body_budget_bytes: usize,
    /// Bound on one publish, from send to JetStream's stored acknowledgement.
    pub publish_timeout: Duration,
    /// Publishes awaiting acknowledgement at once; beyond it, 429.
    pub max_in_flight: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub shutdown_grace: Duration,
    /// API keys clients must present as `Authorization: Bearer <key>`. Empty: no auth.
    pub api_keys: Vec<String>,
    /// File with one API key per line (re-read on SIGHUP).
    pub api_keys_file: Option<PathBuf>,
    /// Database the workers record statuses in (optional: status lookups need it).
    pub database_url: Option<String>,
    /// Request headers copied into each message's envelope, for specs that read them
    /// (`source: $header.<name>`).
    pub capture_headers: Vec<HeaderName>,
    /// The header that names the entity when the URL does not (`X-GitHub-Event`).
    pub entity_header: HeaderName,
    /// Values of the entity header that are not route names themselves, and their routes
    /// (`System Hook` → `system_hook`).
    pub entity_map: BTreeMap<String, EntityName>,
    /// Headers the idempotency key is read from, the first present one wins
    /// (`X-GitHub-Delivery`, `webhook-id`).
    pub idempotency_headers: Vec<HeaderName>,
    /// Webhook signature rules; empty: no verification (and no cost).
    pub webhooks: Vec<WebhookRule>,
    /// Serve the operator console at `/console` (behind the API keys).
    pub console: bool,
    /// The workers' durable consumer, whose lag the console shows.
    pub consumer: String,
    /// The dead-letter stream the console browses and replays from.
    pub dlq_stream: String,
}

/// A configuration that cannot work, refused at start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "--capture-header {0} (NOMNOM_CAPTURE_HEADERS) would copy credentials into every message; remove it"
    )]
    CapturedCredential(String),
    #[error(
        "--capture-header {0} (NOMNOM_CAPTURE_HEADERS) would copy a webhook token into every message; remove it"
    )]
    CapturedToken(String),
    #[error(
        "--idempotency-header (NOMNOM_IDEMPOTENCY_HEADERS) is empty; name at least one header, e.g. Idempotency-Key"
    )]
    NoIdempotencyHeader,
}

impl ApiConfig {
    /// Checks what can be checked without I/O.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for name in &self.capture_headers {
            if NEVER_CAPTURED.contains(&name.as_str()) {
                return Err(ConfigError::CapturedCredential(name.to_string()));
            }
            if self
                .webhooks
                .iter()
                .any(|rule| rule.scheme == crate::webhook::Scheme::Token && rule.header == name)
            {
                return Err(ConfigError::CapturedToken(name.to_string()));
            }
        }
        if self.idempotency_headers.is_empty() {
            return Err(ConfigError::NoIdempotencyHeader);
        }
        Ok(())
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: defaults::API_LISTEN
                .parse()
                .expect("default listen address"),
            nats: NatsConfig {
                client_name: "nats-api".into(),
                ..Default::default()
            },
            stream: StreamSettings::default(),
            max_body_bytes: defaults::API_MAX_BODY_BYTES,
            max_batch_bytes: defaults::API_MAX_BATCH_BYTES,
            max_batch_items: defaults::API_MAX_BATCH_ITEMS,
            body_budget_bytes: crate::budget::default_budget_bytes(),
            publish_timeout: defaults::API_PUBLISH_TIMEOUT,
            max_in_flight: defaults::API_MAX_IN_FLIGHT,
            header_read_timeout: defaults::API_HEADER_READ_TIMEOUT,
            body_read_timeout: defaults::API_BODY_READ_TIMEOUT,
            shutdown_grace: defaults::API_SHUTDOWN_GRACE,
            api_keys: Vec::new(),
            api_keys_file: None,
            database_url: None,
            capture_headers: Vec::new(),
            entity_header: HeaderName::from_static(DEFAULT_ENTITY_HEADER),
            entity_map: BTreeMap::new(),
            idempotency_headers: vec![HeaderName::from_static(DEFAULT_IDEMPOTENCY_HEADER)],
            webhooks: Vec::new(),
            console: false,
            consumer: defaults::WORKER_CONSUMER.to_owned(),
            dlq_stream: defaults::DLQ_STREAM.to_owned(),
        }
    }
}

/// nats-api: accepts JSON over HTTP and stores it durably in NATS JetStream.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "nats-api", version, about)]
pub struct ApiArgs {
    #[command(subcommand)]
    pub command: Option<nomnom_runtime::healthcheck::Command>,
    /// Address to listen on.
    #[arg(long, env = "NOMNOM_LISTEN", default_value = defaults::API_LISTEN)]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Largest accepted message body in bytes (413 above it).
    #[arg(long, env = "NOMNOM_MAX_BODY_BYTES", default_value_t = defaults::API_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Largest accepted batch body in bytes.
    #[arg(long, env = "NOMNOM_MAX_BATCH_BYTES", default_value_t = defaults::API_MAX_BATCH_BYTES)]
    pub max_batch_bytes: usize,
    /// Most items in one batch.
    #[arg(long, env = "NOMNOM_MAX_BATCH_ITEMS", default_value_t = defaults::API_MAX_BATCH_ITEMS)]
    pub max_batch_items: usize,
    /// Bytes of request bodies held in memory at once (503 and Retry-After beyond it);
    /// default: half the container's memory limit, or 256 MiB without one.
    #[arg(long, env = "NOMNOM_BODY_BUDGET_BYTES")]
    pub body_budget_bytes: Option<usize>,
    /// Bound on one publish before answering 503.
    #[arg(long, env = "NOMNOM_PUBLISH_TIMEOUT", default_value = "5s", value_parser = duration::parse)]
    pub publish_timeout: Duration,
    /// Publishes awaiting JetStream's acknowledgement at once (429 beyond).
    #[arg(long, env = "NOMNOM_MAX_IN_FLIGHT", default_value_t = defaults::API_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Time a client has to send its request headers.
    #[arg(long, env = "NOMNOM_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration::parse)]
    pub header_read_timeout: Duration,
    /// Time a client has to send its request body.
    #[arg(long, env = "NOMNOM_BODY_READ_TIMEOUT", default_value = "30s", value_parser = duration::parse)]
    pub body_read_timeout: Duration,
    /// How long SIGTERM waits for in-flight requests.
    #[arg(long, env = "NOMNOM_SHUTDOWN_GRACE", default_value = "25s", value_parser = duration::parse)]
    pub shutdown_grace: Duration,
    /// Comma-separated API keys; when set (or --api-keys-file is), requests need `Authorization: Bearer <key>`.
    #[arg(
        long,
        env = "NOMNOM_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// File with one API key per line (`#` comments); re-read on SIGHUP.
    #[arg(long, env = "NOMNOM_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Database the workers write statuses to (postgres://… or sqlite://…), for status lookups.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// A request header to copy into each message's envelope, where a spec reads it with
    /// `source: $header.<name>` (repeat the flag, or separate names with commas).
    #[arg(
        long = "capture-header",
        env = "NOMNOM_CAPTURE_HEADERS",
        value_delimiter = ',',
        value_parser = header_name
    )]
    pub capture_headers: Vec<HeaderName>,
    /// The request header that names the entity when the URL does not (e.g.
    /// `X-GitHub-Event`); the URL and the header must agree when both name one.
    #[arg(long, env = "NOMNOM_ENTITY_HEADER", default_value = DEFAULT_ENTITY_HEADER, value_parser = header_name)]
    pub entity_header: HeaderName,
    /// `VALUE=ROUTE`: the route of an entity-header value that is not a route name
    /// itself (e.g. `System Hook=system_hook`; repeat, or separate with commas).
    #[arg(long = "entity-map", env = "NOMNOM_ENTITY_MAP", value_delimiter = ',', value_parser = entity_mapping)]
    pub entity_map: Vec<(String, EntityName)>,
    /// A request header the idempotency key is read from (e.g. `X-GitHub-Delivery`,
    /// `webhook-id`); repeat for several, the first one a request has wins.
    #[arg(
        long = "idempotency-header",
        env = "NOMNOM_IDEMPOTENCY_HEADERS",
        value_delimiter = ',',
        default_value = DEFAULT_IDEMPOTENCY_HEADER,
        value_parser = header_name
    )]
    pub idempotency_headers: Vec<HeaderName>,
    /// A webhook signature rule: `scheme=github|standard-webhooks|stripe|token`, then
    /// `secrets-file=PATH` (re-read when it changes, and on SIGHUP) and/or
    /// `secrets-env=VARIABLE`, optional `route=NAME` (repeat; none: every route),
    /// `tolerance=5m`, `header=X-Gitlab-Token`. Repeat the flag for several rules
    /// (`;` between rules in the environment variable). See docs/webhooks.md.
    #[arg(long = "webhook", env = "NOMNOM_WEBHOOKS", value_delimiter = ';', value_parser = WebhookRule::parse)]
    pub webhooks: Vec<WebhookRule>,
    /// Serve the operator console at /console: message lookup, dead letters and their
    /// replay, live rates and lag. Behind the API keys (a browser asks for one: any user
    /// name, the key as password). See docs/operations.md.
    /// `NOMNOM_CONSOLE` takes true/false, 1/0, yes/no or on/off.
    #[arg(long, env = "NOMNOM_CONSOLE", value_parser = clap::builder::BoolishValueParser::new())]
    pub console: bool,
    /// The workers' durable consumer (the console shows its lag).
    #[arg(long, env = "NOMNOM_CONSUMER", default_value = defaults::WORKER_CONSUMER)]
    pub consumer: String,
    /// The workers' dead-letter stream (the console browses and replays it).
    #[arg(long, env = "NOMNOM_DLQ_STREAM", default_value = defaults::DLQ_STREAM)]
    pub dlq_stream: String,
    /// Log format.
    #[arg(long, env = "NOMNOM_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub traces: TraceArgs,
}

/// A header name as HTTP allows it, lower-cased.
fn header_name(text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.trim().as_bytes()).map_err(|_| {
        format!("{text:?} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)")
    })
}

/// `VALUE=ROUTE` (split at the last `=`: a route has none).
fn entity_mapping(text: &str) -> Result<(String, EntityName), String> {
    let (value, route) = text
        .rsplit_once('=')
        .ok_or_else(|| format!("{text:?} is not VALUE=ROUTE, e.g. 'System Hook=system_hook'"))?;
    let route = EntityName::parse(route.trim()).map_err(|e| format!("{text:?}: {e}"))?;
    Ok((value.trim().to_owned(), route))
}

impl ApiArgs {
    pub fn to_config(&self) -> ApiConfig {
        ApiConfig {
            listen: self.listen,
            nats: self.nats.to_config("nats-api"),
            stream: self.stream.to_settings(),
            max_body_bytes: self.max_body_bytes,
            max_batch_bytes: self.max_batch_bytes,
            max_batch_items: self.max_batch_items,
            body_budget_bytes: (self.body_budget_bytes)
                .unwrap_or_else(crate::budget::default_budget_bytes),
            publish_timeout: self.publish_timeout,
            max_in_flight: self.max_in_flight,
            header_read_timeout: self.header_read_timeout,
            body_read_timeout: self.body_read_timeout,
            shutdown_grace: self.shutdown_grace,
            api_keys: self
                .api_keys
                .iter()
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty())
                .collect(),
            api_keys_file: self.api_keys_file.clone(),
            database_url: self.database_url.clone().filter(|u| !u.trim().is_empty()),
            capture_headers: self.capture_headers.clone(),
            entity_header: self.entity_header.clone(),
            entity_map: self.entity_map.iter().cloned().collect(),
            idempotency_headers: self.idempotency_headers.clone(),
            webhooks: self.webhooks.clone(),
            console: self.console,
            consumer: self.consumer.clone(),
            dlq_stream: self.dlq_stream.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flag_defaults_are_the_struct_defaults() {
        // Clear the environment fallbacks this test could inherit.
        let args = ApiArgs::try_parse_from(["nats-api"]).unwrap();
        let from_flags = args.to_config();
        let default = ApiConfig::default();
        assert_eq!(from_flags.listen, default.listen);
        assert_eq!(from_flags.stream, default.stream);
        assert_eq!(from_flags.max_body_bytes, default.max_body_bytes);
        assert_eq!(from_flags.max_batch_bytes, default.max_batch_bytes);
        assert_eq!(from_flags.max_batch_items, default.max_batch_items);
        assert_eq!(from_flags.publish_timeout, default.publish_timeout);
        assert_eq!(from_flags.max_in_flight, default.max_in_flight);
        assert_eq!(from_flags.header_read_timeout, default.header_read_timeout);
        assert_eq!(from_flags.body_read_timeout, default.body_read_timeout);
        assert_eq!(from_flags.shutdown_grace, default.shutdown_grace);
        assert_eq!(from_flags.nats.client_name, default.nats.client_name);
        assert_eq!(from_flags.entity_header, default.entity_header);
        assert_eq!(from_flags.idempotency_headers, default.idempotency_headers);
        assert_eq!(from_flags.webhooks, default.webhooks);
        assert_eq!(from_flags.console, default.console);
        assert_eq!(from_flags.consumer, default.consumer);
        assert_eq!(from_flags.dlq_stream, default.dlq_stream);
    }

    #[test]
    fn webhook_flags_fill_the_config() {
        let args = ApiArgs::try_parse_from([
            "nats-api",
            "--entity-header",
            "X-GitHub-Event",
            "--entity-map",
            "System Hook=system_hook,Push Hook=push",
            "--idempotency-header",
            "X-GitHub-Delivery",
            "--webhook",
            "scheme=github,secrets-env=GITHUB_SECRETS",
            "--webhook",
            "scheme=stripe,route=stripe,secrets-file=/run/secrets/stripe,tolerance=2m",
        ])
        .unwrap();
        let config = args.to_config();
        assert_eq!(config.entity_header.as_str(), "x-github-event");
        assert_eq!(config.entity_map["System Hook"].as_str(), "system_hook");
        assert_eq!(config.idempotency_headers[0].as_str(), "x-github-delivery");
        assert_eq!(config.webhooks.len(), 2);
        assert_eq!(config.webhooks[1].tolerance, Duration::from_secs(120));
        assert!(ApiArgs::try_parse_from(["nats-api", "--entity-map", "System Hook"]).is_err());
    }

    #[test]
    fn credentials_are_never_captured() {
        for name in ["authorization", "cookie", "proxy-authorization"] {
            let config = ApiConfig {
                capture_headers: vec![HeaderName::from_static(name)],
                ..Default::default()
            };
            assert!(
                matches!(config.validate(), Err(ConfigError::CapturedCredential(_))),
                "{name}"
            );
        }
        let mut token = WebhookRule::new(crate::webhook::Scheme::Token);
        token.secrets = vec!["t".into()];
        let config = ApiConfig {
            capture_headers: vec![HeaderName::from_static("x-gitlab-token")],
            webhooks: vec![token],
            ..Default::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::CapturedToken(_))
        ));
    }
}
