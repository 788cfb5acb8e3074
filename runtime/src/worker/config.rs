//! The worker's settings: flags, environment variables and their checks.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use clap::Parser;

use super::WorkerError;
use crate::{
    NatsConfig, StreamSettings,
    cli::{NatsArgs, StreamArgs, TraceArgs},
    db::{DatabaseKind, DatabaseUrl},
    defaults, duration, subject,
    telemetry::LogFormat,
};

/// Flags of every generated worker.
#[derive(Debug, Clone, Parser)]
#[command(about = "A nomnom worker: consumes the stream and writes rows")]
pub struct WorkerArgs {
    #[command(subcommand)]
    pub command: Option<crate::healthcheck::Command>,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Database to write to: postgres://… or sqlite://path (the embedded default).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://nomnom.db",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Durable consumer name, shared by all replicas.
    #[arg(long, env = "NOMNOM_CONSUMER", default_value = defaults::WORKER_CONSUMER)]
    pub consumer: String,
    /// Most messages per batch (one transaction).
    #[arg(long, env = "NOMNOM_BATCH_SIZE", default_value_t = defaults::WORKER_BATCH_SIZE)]
    pub batch_size: usize,
    /// Batches written at once, each in its own transaction on its own database
    /// connection; a batch with a row in common with one being written waits for it.
    /// PostgreSQL only: SQLite allows one writer at a time.
    #[arg(long, env = "NOMNOM_WRITERS", default_value_t = defaults::WORKER_WRITERS)]
    pub writers: usize,
    /// Longest wait to fill a batch.
    #[arg(long, env = "NOMNOM_BATCH_WAIT", default_value = "100ms", value_parser = duration::parse)]
    pub batch_wait: Duration,
    /// Time to process a message before JetStream redelivers it.
    #[arg(long, env = "NOMNOM_ACK_WAIT", default_value = "30s", value_parser = duration::parse)]
    pub ack_wait: Duration,
    /// Deliveries before a message failing transiently is dead-lettered; -1: never.
    #[arg(long, env = "NOMNOM_MAX_DELIVER", default_value_t = defaults::WORKER_MAX_DELIVER, allow_negative_numbers = true)]
    pub max_deliver: i64,
    /// Redelivery delays, comma-separated (`1s,5s,30s`): the n-th retry waits the n-th
    /// (the last one repeats). Also the consumer's backoff for unacknowledged messages,
    /// whose first entry then replaces ack_wait. Empty: 1s doubling up to 30s.
    #[arg(long, env = "NOMNOM_BACKOFF", value_delimiter = ',', value_parser = duration::parse)]
    pub backoff: Vec<Duration>,
    /// Messages delivered and not yet acknowledged, across all replicas; -1: no limit.
    #[arg(long, env = "NOMNOM_MAX_ACK_PENDING", default_value_t = defaults::WORKER_MAX_ACK_PENDING, allow_negative_numbers = true)]
    pub max_ack_pending: i64,
    /// Stream for dead-lettered messages.
    #[arg(long, env = "NOMNOM_DLQ_STREAM", default_value = defaults::DLQ_STREAM)]
    pub dlq_stream: String,
    /// How long deleted keys' tombstones and logged patches are kept: within it, an older
    /// message arriving late (a redelivery, a replayed dead letter) still finds them.
    #[arg(long, env = "NOMNOM_TOMBSTONE_RETENTION", default_value = "7d", value_parser = duration::parse)]
    pub tombstone_retention: Duration,
    /// Run the migrations and exit.
    #[arg(long)]
    pub migrate_only: bool,
    /// How long a SIGTERM waits for the batch being written; then the worker exits
    /// without acknowledging it (it is redelivered). Keep it under the orchestrator's
    /// grace period (Kubernetes: 30 s by default).
    #[arg(long, env = "NOMNOM_SHUTDOWN_GRACE", default_value = "20s", value_parser = duration::parse)]
    pub shutdown_grace: Duration,
    /// Address of the worker's /health, /ready and /metrics endpoints.
    #[arg(long, env = "NOMNOM_WORKER_LISTEN", default_value = defaults::WORKER_LISTEN)]
    pub listen: std::net::SocketAddr,
    #[arg(long, env = "NOMNOM_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub traces: TraceArgs,
}

/// Everything the loop needs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub nats: NatsConfig,
    pub stream: StreamSettings,
    pub database_url: String,
    pub consumer: String,
    pub batch_size: usize,
    /// Batches written at once, each on its own connection (more than one: PostgreSQL
    /// only).
    pub writers: usize,
    pub batch_wait: Duration,
    pub ack_wait: Duration,
    /// Deliveries before a message failing transiently is dead-lettered; -1: never.
    /// Enforced by the worker, not the server (see [`WorkerConfig::consumer_config`]).
    pub max_deliver: i64,
    /// Redelivery delays; empty: [`defaults::WORKER_RETRY_FIRST_DELAY`] doubling.
    pub backoff: Vec<Duration>,
    pub max_ack_pending: i64,
    pub dlq_stream: String,
    /// How long tombstones of deleted keys are kept.
    pub tombstone_retention: Duration,
    pub migrate_only: bool,
    /// How long a SIGTERM waits for the batch being written.
    pub shutdown_grace: Duration,
    /// Where /health, /ready and /metrics are served; `None` serves nothing.
    pub listen: Option<std::net::SocketAddr>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            nats: NatsConfig {
                client_name: "nomnom-worker".into(),
                ..Default::default()
            },
            stream: StreamSettings::default(),
            database_url: defaults::DATABASE_URL.to_owned(),
            consumer: defaults::WORKER_CONSUMER.to_owned(),
            batch_size: defaults::WORKER_BATCH_SIZE,
            writers: defaults::WORKER_WRITERS,
            batch_wait: defaults::WORKER_BATCH_WAIT,
            ack_wait: defaults::WORKER_ACK_WAIT,
            max_deliver: defaults::WORKER_MAX_DELIVER,
            backoff: Vec::new(),
            max_ack_pending: defaults::WORKER_MAX_ACK_PENDING,
            dlq_stream: defaults::DLQ_STREAM.to_owned(),
            tombstone_retention: defaults::WORKER_TOMBSTONE_RETENTION,
            migrate_only: false,
            shutdown_grace: defaults::WORKER_SHUTDOWN_GRACE,
            listen: None,
        }
    }
}

impl WorkerArgs {
    pub fn to_config(&self) -> WorkerConfig {
        WorkerConfig {
            nats: self.nats.to_config("nomnom-worker"),
            stream: self.stream.to_settings(),
            database_url: self.database_url.clone(),
            consumer: self.consumer.clone(),
            batch_size: self.batch_size.max(1),
            writers: self.writers,
            batch_wait: self.batch_wait,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            backoff: self.backoff.clone(),
            max_ack_pending: self.max_ack_pending,
            dlq_stream: self.dlq_stream.clone(),
            tombstone_retention: self.tombstone_retention,
            migrate_only: self.migrate_only,
            shutdown_grace: self.shutdown_grace,
            listen: Some(self.listen),
        }
    }
}

impl WorkerConfig {
    /// Refuses settings JetStream would refuse later, or that would stall the worker.
    pub fn validate(&self) -> Result<(), WorkerError> {
        let invalid = |message: String| Err(WorkerError::Config(message));
        if self.max_deliver == 0 || self.max_deliver < -1 {
            return invalid(format!(
                "max deliver must be at least 1, or -1 for no limit, got {}; set NOMNOM_MAX_DELIVER",
                self.max_deliver
            ));
        }
        if self.max_ack_pending != -1 && self.max_ack_pending < self.batch_size as i64 {
            return invalid(format!(
                "max ack pending ({}) is below the batch size ({}): batches could never fill; raise NOMNOM_MAX_ACK_PENDING or lower NOMNOM_BATCH_SIZE",
                self.max_ack_pending, self.batch_size
            ));
        }
        if self.effective_ack_wait() < Duration::from_millis(300) {
            return invalid(format!(
                "ack wait of {:?} is too short to process a batch; set NOMNOM_ACK_WAIT (or the first NOMNOM_BACKOFF entry) to at least 300ms",
                self.effective_ack_wait()
            ));
        }
        if self.backoff.iter().any(Duration::is_zero) {
            return invalid("backoff delays must be above zero; fix NOMNOM_BACKOFF".into());
        }
        let sqlite = DatabaseUrl::parse(&self.database_url)
            .is_ok_and(|url| url.kind == DatabaseKind::Sqlite);
        match self.writers {
            0 => {
                return invalid(
                    "writers must be at least 1; set NOMNOM_WRITERS to 1 or more".into(),
                );
            }
            n if n > 1 && sqlite => {
                return invalid(format!(
                    "SQLite allows one writer at a time, got {n} writers; set NOMNOM_WRITERS to 1"
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// How long JetStream waits for an acknowledgement: the first backoff delay when a
    /// schedule is given (the server replaces ack_wait with it), else ack_wait.
    pub fn effective_ack_wait(&self) -> Duration {
        self.backoff.first().copied().unwrap_or(self.ack_wait)
    }

    /// The delay before the redelivery that follows delivery number `delivered`.
    pub fn retry_delay(&self, delivered: i64) -> Duration {
        let retry = usize::try_from(delivered.max(1) - 1).unwrap_or(0);
        match self.backoff.as_slice() {
            [] => {
                let factor = 1u32 << retry.min(16);
                (defaults::WORKER_RETRY_FIRST_DELAY * factor).min(defaults::WORKER_RETRY_MAX_DELAY)
            }
            schedule => schedule[retry.min(schedule.len() - 1)],
        }
    }

    /// Whether the worker gives up on a message after delivery number `delivered`.
    pub fn is_last_delivery(&self, delivered: i64) -> bool {
        self.max_deliver > 0 && delivered >= self.max_deliver
    }

    /// The durable consumer every replica shares. Its `max_deliver` is unlimited on
    /// purpose: the worker counts deliveries itself and dead-letters at the limit, so a
    /// message whose dead-lettering fails comes back instead of being dropped silently
    /// by the server after its last delivery.
    pub fn consumer_config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(self.consumer.clone()),
            filter_subject: subject::ingest_filter(&self.stream.subject_prefix),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: -1,
            backoff: self.backoff.clone(),
            max_ack_pending: self.max_ack_pending,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_defaults_are_the_struct_defaults() {
        let config = WorkerArgs::try_parse_from(["worker"]).unwrap().to_config();
        let default = WorkerConfig::default();
        assert_eq!(config.database_url, default.database_url);
        assert_eq!(config.consumer, default.consumer);
        assert_eq!(config.batch_size, default.batch_size);
        assert_eq!(config.writers, default.writers);
        assert_eq!(config.batch_wait, default.batch_wait);
        assert_eq!(config.ack_wait, default.ack_wait);
        assert_eq!(config.max_deliver, default.max_deliver);
        assert_eq!(config.backoff, default.backoff);
        assert_eq!(config.max_ack_pending, default.max_ack_pending);
        default.validate().expect("the defaults are valid");
        assert_eq!(config.dlq_stream, default.dlq_stream);
        assert_eq!(config.tombstone_retention, default.tombstone_retention);
        assert_eq!(config.stream, default.stream);
        assert_eq!(config.listen, defaults::WORKER_LISTEN.parse().ok());
    }

    #[test]
    fn backoff_is_a_comma_separated_list_of_durations() {
        let args = WorkerArgs::try_parse_from(["worker", "--backoff", "1s,250ms,1m"]).unwrap();
        let config = args.to_config();
        assert_eq!(
            config.backoff,
            [
                Duration::from_secs(1),
                Duration::from_millis(250),
                Duration::from_secs(60)
            ]
        );
        assert_eq!(config.effective_ack_wait(), Duration::from_secs(1));
        assert_eq!(config.retry_delay(1), Duration::from_secs(1));
        assert_eq!(config.retry_delay(2), Duration::from_millis(250));
        assert_eq!(
            config.retry_delay(9),
            Duration::from_secs(60),
            "the last repeats"
        );
        assert!(WorkerArgs::try_parse_from(["worker", "--backoff", "1s,soon"]).is_err());
    }

    #[test]
    fn default_retry_delays_double_up_to_the_cap() {
        let config = WorkerConfig::default();
        let delays: Vec<u64> = (1..=8).map(|n| config.retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert!(!config.is_last_delivery(4));
        assert!(config.is_last_delivery(5));
        let unlimited = WorkerConfig {
            max_deliver: -1,
            ..WorkerConfig::default()
        };
        assert!(!unlimited.is_last_delivery(1_000), "-1 never gives up");
    }

    #[test]
    fn settings_that_would_stall_the_worker_are_refused() {
        let cases = [
            (
                WorkerConfig {
                    max_ack_pending: 100,
                    batch_size: 500,
                    ..WorkerConfig::default()
                },
                "NOMNOM_MAX_ACK_PENDING",
            ),
            (
                WorkerConfig {
                    max_deliver: 0,
                    ..WorkerConfig::default()
                },
                "NOMNOM_MAX_DELIVER",
            ),
            (
                WorkerConfig {
                    backoff: vec![Duration::from_millis(10)],
                    ..WorkerConfig::default()
                },
                "NOMNOM_BACKOFF",
            ),
        ];
        for (config, hint) in cases {
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(hint), "{error}");
        }
    }

    #[test]
    fn more_than_one_writer_only_on_postgresql() {
        let args = WorkerArgs::try_parse_from(["worker", "--writers", "3"]).unwrap();
        assert_eq!(args.to_config().writers, 3);
        let on = |writers: usize, database_url: &str| WorkerConfig {
            writers,
            database_url: database_url.into(),
            ..WorkerConfig::default()
        };
        on(3, "postgres://localhost/db")
            .validate()
            .expect("three writers on PostgreSQL");
        on(1, "sqlite://a.db")
            .validate()
            .expect("one writer on SQLite");
        for config in [on(0, "postgres://localhost/db"), on(2, "sqlite://a.db")] {
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains("NOMNOM_WRITERS"), "{error}");
        }
    }

    #[test]
    fn the_server_never_drops_a_message_after_its_last_delivery() {
        let config = WorkerConfig {
            backoff: vec![Duration::from_secs(2)],
            ..WorkerConfig::default()
        };
        let consumer = config.consumer_config();
        assert_eq!(consumer.max_deliver, -1);
        assert_eq!(consumer.backoff, config.backoff);
        assert_eq!(consumer.max_ack_pending, defaults::WORKER_MAX_ACK_PENDING);
        assert_eq!(consumer.durable_name.as_deref(), Some("workers"));
    }
}
