//! Command-line flags shared by nats-api and generated workers. Every flag has an
//! environment fallback; defaults come from [`crate::defaults`].

use std::path::PathBuf;
use std::time::Duration;

use crate::{defaults, duration, nats::NatsConfig, otlp::OtlpConfig, stream::StreamSettings};

/// How to reach NATS.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL (comma-separated for a cluster).
    #[arg(long = "nats-url", env = "NATS_URL", default_value = defaults::NATS_URL)]
    pub url: String,
    /// NATS user (with --nats-password).
    #[arg(long = "nats-user", env = "NATS_USER")]
    pub user: Option<String>,
    /// NATS password.
    #[arg(long = "nats-password", env = "NATS_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// NATS token.
    #[arg(long = "nats-token", env = "NATS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// NATS NKey seed.
    #[arg(
        long = "nats-nkey-seed",
        env = "NATS_NKEY_SEED",
        hide_env_values = true
    )]
    pub nkey_seed: Option<String>,
    /// NATS credentials (.creds) file.
    #[arg(long = "nats-creds", env = "NATS_CREDS")]
    pub creds_file: Option<PathBuf>,
    /// PEM file of a CA to trust for the NATS server's certificate.
    #[arg(long = "nats-tls-ca", env = "NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --nats-tls-key).
    #[arg(long = "nats-tls-cert", env = "NATS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long = "nats-tls-key", env = "NATS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Refuse to connect without TLS.
    #[arg(long = "nats-require-tls", env = "NATS_REQUIRE_TLS")]
    pub require_tls: bool,
    /// Connection timeout.
    #[arg(long = "nats-connect-timeout", env = "NATS_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration::parse)]
    pub connect_timeout: Duration,
    /// Timeout of JetStream API requests.
    #[arg(long = "nats-request-timeout", env = "NATS_REQUEST_TIMEOUT", default_value = "5s", value_parser = duration::parse)]
    pub request_timeout: Duration,
}

impl NatsArgs {
    pub fn to_config(&self, client_name: &str) -> NatsConfig {
        NatsConfig {
            url: self.url.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            token: self.token.clone(),
            nkey_seed: self.nkey_seed.clone(),
            creds_file: self.creds_file.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            require_tls: self.require_tls,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            client_name: client_name.to_owned(),
        }
    }
}

/// The stream messages go to.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    /// JetStream stream name.
    #[arg(long = "stream", env = "NOMNOM_STREAM", default_value = defaults::STREAM_NAME)]
    pub name: String,
    /// Subjects the stream captures (comma-separated).
    #[arg(long = "stream-subjects", env = "NOMNOM_STREAM_SUBJECTS", default_value = defaults::STREAM_SUBJECTS, value_delimiter = ',')]
    pub subjects: Vec<String>,
    /// Prefix of ingest subjects: `<prefix>.<entity>.<id>`.
    #[arg(long = "subject-prefix", env = "NOMNOM_SUBJECT_PREFIX", default_value = defaults::INGEST_SUBJECT_PREFIX)]
    pub subject_prefix: String,
    /// JetStream duplicate window for Idempotency-Key retries.
    #[arg(long = "duplicate-window", env = "NOMNOM_DUPLICATE_WINDOW", default_value = "2m", value_parser = duration::parse)]
    pub duplicate_window: Duration,
    /// How long messages are kept in the stream.
    #[arg(long = "stream-max-age", env = "NOMNOM_STREAM_MAX_AGE", default_value = "7d", value_parser = duration::parse)]
    pub max_age: Duration,
    /// Stream size limit in bytes (-1: unlimited). When full, ingest answers 507.
    #[arg(long = "stream-max-bytes", env = "NOMNOM_STREAM_MAX_BYTES", default_value_t = defaults::STREAM_MAX_BYTES, allow_hyphen_values = true)]
    pub max_bytes: i64,
    /// Stream replicas (3 on a production cluster).
    #[arg(long = "stream-replicas", env = "NOMNOM_STREAM_REPLICAS", default_value_t = defaults::STREAM_REPLICAS)]
    pub replicas: usize,
    /// Object Store bucket for bodies larger than the server's max_payload.
    #[arg(long = "body-bucket", env = "NOMNOM_BODY_BUCKET", default_value = defaults::BODY_BUCKET)]
    pub body_bucket: String,
}

impl StreamArgs {
    pub fn to_settings(&self) -> StreamSettings {
        StreamSettings {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            subject_prefix: self.subject_prefix.clone(),
            duplicate_window: self.duplicate_window,
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            replicas: self.replicas,
            body_bucket: self.body_bucket.clone(),
        }
    }
}

/// Flags of every binary: where to export spans, and under which service name.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TraceArgs {
    /// OpenTelemetry collector to export spans to over OTLP/HTTP (protobuf), e.g.
    /// http://otel-collector:4318 (spans go to /v1/traces under it). Unset: no span is
    /// exported, and tracing costs nothing.
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The service name exported spans carry (default: `nats-api`, or the worker's
    /// project name).
    #[arg(long = "otel-service-name", env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,
}

impl TraceArgs {
    /// The export's settings, `None` when no endpoint is set (an empty one is unset).
    pub fn to_config(&self, default_service_name: &str) -> Option<OtlpConfig> {
        let endpoint = self.otlp_endpoint.as_deref().map(str::trim)?;
        if endpoint.is_empty() {
            return None;
        }
        let service_name = self
            .service_name
            .as_deref()
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .unwrap_or(default_service_name);
        Some(OtlpConfig {
            endpoint: endpoint.to_owned(),
            service_name: service_name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Both {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        stream: StreamArgs,
    }

    /// The string defaults of the flags must say what `defaults` says.
    #[test]
    fn flag_defaults_match_the_defaults_module() {
        let parsed = Both::try_parse_from(["x"]).unwrap();
        assert_eq!(parsed.stream.to_settings(), StreamSettings::default());
        let nats = parsed.nats.to_config("x");
        let default = NatsConfig::default();
        assert_eq!(nats.url, default.url);
        assert_eq!(nats.connect_timeout, default.connect_timeout);
        assert_eq!(nats.request_timeout, default.request_timeout);
    }
}
