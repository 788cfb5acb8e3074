//! Every default of nomnom, in one place. The `Default` impls and the clap
//! flags of both `nats-api` and generated workers read these constants, so
//! the API and the workers can never disagree about a default.

use std::time::Duration;

/// NATS server to connect to.
pub const NATS_URL: &str = "nats://127.0.0.1:4222";
/// How long to wait for the TCP/TLS connection and the server's INFO.
pub const NATS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on JetStream API requests (stream info, direct get, ...).
pub const NATS_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The JetStream stream every message goes to.
pub const STREAM_NAME: &str = "MESSAGES";
/// Subjects the stream captures.
pub const STREAM_SUBJECTS: &str = "messages.>";
/// Prefix of the subjects messages are published on: `<prefix>.<entity|_>.<message id>`.
pub const INGEST_SUBJECT_PREFIX: &str = "messages.ingest";
/// Window in which a repeated `Nats-Msg-Id` (from an `Idempotency-Key`) stores nothing new.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(2 * 60);
/// How long messages are kept in the stream (7 days), processed or not.
pub const STREAM_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Stream size limit in bytes; -1 means unlimited.
pub const STREAM_MAX_BYTES: i64 = -1;
/// Stream replicas: 1 on a single server, 3 on a production cluster.
pub const STREAM_REPLICAS: usize = 1;
/// JetStream Object Store bucket for bodies larger than the server's max_payload (claim-check).
pub const BODY_BUCKET: &str = "MESSAGES_BODIES";

/// Address `nats-api` listens on.
pub const API_LISTEN: &str = "0.0.0.0:8080";
/// Largest body `nats-api` accepts on `/api/ingest/message` (8 MiB).
pub const API_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Largest body `nats-api` accepts on `/api/ingest/batch` (32 MiB).
pub const API_MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;
/// Most items in one batch request.
pub const API_MAX_BATCH_ITEMS: usize = 10_000;
/// Bytes of request bodies `nats-api` holds at once when the container has no memory
/// limit (with one, half of it).
pub const API_BODY_BUDGET_BYTES: usize = 256 * 1024 * 1024;
/// The smallest default budget: a maximum-size single body and its encoded copy, twice.
pub const API_MIN_BODY_BUDGET_BYTES: usize = 32 * 1024 * 1024;
/// Bound on one publish (send + stored acknowledgement) before answering 503.
pub const API_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Publishes awaiting their JetStream acknowledgement at once, across all requests;
/// beyond it the API answers 429 with `Retry-After`.
pub const API_MAX_IN_FLIGHT: usize = 4096;
/// Time a client has to send the request headers.
pub const API_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send the whole request body.
pub const API_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM waits for in-flight requests before giving up on them.
pub const API_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
/// Seconds suggested to clients in `Retry-After` when NATS is unavailable or overloaded.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// How long one export of spans to the OTLP collector may take.
pub const OTLP_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping binary waits for its last spans to be exported.
pub const OTLP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Name of the table workers record every message's outcome in.
pub const STATUS_TABLE: &str = "nomnom_message_status";

/// Database a worker writes to when `DATABASE_URL` is not set: embedded SQLite.
pub const DATABASE_URL: &str = "sqlite://nomnom.db";
/// Durable consumer shared by all worker replicas.
pub const WORKER_CONSUMER: &str = "workers";
/// Most messages per batch (one transaction).
pub const WORKER_BATCH_SIZE: usize = 500;
/// Longest wait to fill a batch.
pub const WORKER_BATCH_WAIT: Duration = Duration::from_millis(100);
/// How long tombstones of deleted keys are kept (see docs/operations.md).
pub const WORKER_TOMBSTONE_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Time to process a message before JetStream redelivers it.
pub const WORKER_ACK_WAIT: Duration = Duration::from_secs(30);
/// Deliveries before a message that keeps failing is dead-lettered.
pub const WORKER_MAX_DELIVER: i64 = 5;
/// Messages delivered and not yet acknowledged, across all replicas of the consumer;
/// must be at least the batch size (times the replicas, to keep them all busy).
pub const WORKER_MAX_ACK_PENDING: i64 = 10_000;
/// First delay before a message that failed transiently is redelivered, when no
/// `--backoff` schedule is given; it doubles with each delivery up to
/// [`WORKER_RETRY_MAX_DELAY`].
pub const WORKER_RETRY_FIRST_DELAY: Duration = Duration::from_secs(1);
/// Longest delay between redeliveries of a message failing transiently.
pub const WORKER_RETRY_MAX_DELAY: Duration = Duration::from_secs(30);
/// Batches a worker writes at once, each in its own transaction on its own connection.
/// One: on the 2-core machines measured, a second transaction in flight gave no more
/// throughput and a worse end-to-end p99 (docs/benchmarks.md, fourth lever). SQLite
/// allows one writer at a time anyway.
pub const WORKER_WRITERS: usize = 1;
/// Stream of dead-lettered messages.
pub const DLQ_STREAM: &str = "MESSAGES_DLQ";
/// How long a SIGTERM waits for the batch being written before the worker exits without
/// acknowledging it; under Kubernetes' default 30 s termination grace period.
pub const WORKER_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// Address of a worker's /health, /ready and /metrics.
pub const WORKER_LISTEN: &str = "0.0.0.0:9090";
