//! nats-api configuration: a plain struct with defaults, and the clap flags that fill it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderName;

use nomnom_runtime::{
    NatsConfig, StreamSettings,
    cli::{NatsArgs, StreamArgs},
    defaults, duration,
    telemetry::LogFormat,
};

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
            publish_timeout: defaults::API_PUBLISH_TIMEOUT,
            max_in_flight: defaults::API_MAX_IN_FLIGHT,
            header_read_timeout: defaults::API_HEADER_READ_TIMEOUT,
            body_read_timeout: defaults::API_BODY_READ_TIMEOUT,
            shutdown_grace: defaults::API_SHUTDOWN_GRACE,
            api_keys: Vec::new(),
            api_keys_file: None,
            database_url: None,
            capture_headers: Vec::new(),
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
    /// Log format.
    #[arg(long, env = "NOMNOM_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

/// A header name as HTTP allows it, lower-cased.
fn header_name(text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.trim().as_bytes()).map_err(|_| {
        format!("{text:?} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)")
    })
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
    }
}
