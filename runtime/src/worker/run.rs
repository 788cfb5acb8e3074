//! The worker loop shared by every generated worker.
//!
//! Per batch: decode and parse each message; refuse the unparseable ones for good
//! (dead-letter stream, status row, terminate); write the rest in one transaction
//! together with their status rows; acknowledge only after the commit. A message whose
//! status row already says `persisted` (a redelivery after a crash between commit and
//! acknowledgement) is acknowledged without writing again.

use std::future::Future;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, pull},
    stream::{Config as StreamConfig, DiscardPolicy, StorageType},
};
use clap::Parser;
use diesel::{Connection, RunQueryDsl};
use futures::StreamExt;
use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::{EntitySchema, Migration};
use crate::{
    Body, Envelope, NatsConfig, StreamSettings,
    cli::{NatsArgs, StreamArgs},
    db::{DatabaseKind, DatabaseUrl},
    defaults, duration,
    envelope::format_time,
    sql::{self, AnyConnection},
    status::{self, MessageState, StatusRecord},
    stream, subject,
    telemetry::{self, LogFormat},
};

fn parse_duration(text: &str) -> Result<Duration, String> {
    duration::parse(text).map_err(|e| e.to_string())
}

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
    /// Longest wait to fill a batch.
    #[arg(long, env = "NOMNOM_BATCH_WAIT", default_value = "100ms", value_parser = parse_duration)]
    pub batch_wait: Duration,
    /// Time to process a message before JetStream redelivers it.
    #[arg(long, env = "NOMNOM_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// Deliveries before a message failing transiently is dead-lettered; -1: never.
    #[arg(long, env = "NOMNOM_MAX_DELIVER", default_value_t = defaults::WORKER_MAX_DELIVER, allow_negative_numbers = true)]
    pub max_deliver: i64,
    /// Redelivery delays, comma-separated (`1s,5s,30s`): the n-th retry waits the n-th
    /// (the last one repeats). Also the consumer's backoff for unacknowledged messages,
    /// whose first entry then replaces ack_wait. Empty: 1s doubling up to 30s.
    #[arg(long, env = "NOMNOM_BACKOFF", value_delimiter = ',', value_parser = parse_duration)]
    pub backoff: Vec<Duration>,
    /// Messages delivered and not yet acknowledged, across all replicas; -1: no limit.
    #[arg(long, env = "NOMNOM_MAX_ACK_PENDING", default_value_t = defaults::WORKER_MAX_ACK_PENDING, allow_negative_numbers = true)]
    pub max_ack_pending: i64,
    /// Stream for dead-lettered messages.
    #[arg(long, env = "NOMNOM_DLQ_STREAM", default_value = defaults::DLQ_STREAM)]
    pub dlq_stream: String,
    /// Run the migrations and exit.
    #[arg(long)]
    pub migrate_only: bool,
    /// Address of the worker's /health, /ready and /metrics endpoints.
    #[arg(long, env = "NOMNOM_WORKER_LISTEN", default_value = defaults::WORKER_LISTEN)]
    pub listen: std::net::SocketAddr,
    #[arg(long, env = "NOMNOM_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

/// Everything the loop needs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub nats: NatsConfig,
    pub stream: StreamSettings,
    pub database_url: String,
    pub consumer: String,
    pub batch_size: usize,
    pub batch_wait: Duration,
    pub ack_wait: Duration,
    /// Deliveries before a message failing transiently is dead-lettered; -1: never.
    /// Enforced by the worker, not the server (see [`WorkerConfig::consumer_config`]).
    pub max_deliver: i64,
    /// Redelivery delays; empty: [`defaults::WORKER_RETRY_FIRST_DELAY`] doubling.
    pub backoff: Vec<Duration>,
    pub max_ack_pending: i64,
    pub dlq_stream: String,
    pub migrate_only: bool,
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
            batch_wait: defaults::WORKER_BATCH_WAIT,
            ack_wait: defaults::WORKER_ACK_WAIT,
            max_deliver: defaults::WORKER_MAX_DELIVER,
            backoff: Vec::new(),
            max_ack_pending: defaults::WORKER_MAX_ACK_PENDING,
            dlq_stream: defaults::DLQ_STREAM.to_owned(),
            migrate_only: false,
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
            batch_wait: self.batch_wait,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            backoff: self.backoff.clone(),
            max_ack_pending: self.max_ack_pending,
            dlq_stream: self.dlq_stream.clone(),
            migrate_only: self.migrate_only,
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

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Database(#[from] sql::ConnectError),
    #[error("migration {version} failed: {source}")]
    Migration {
        version: String,
        source: diesel::result::Error,
    },
    #[error(transparent)]
    Nats(#[from] crate::nats::NatsConnectError),
    #[error(transparent)]
    Stream(#[from] stream::StreamSetupError),
    #[error("cannot set up the consumer {name}: {message}")]
    Consumer { name: String, message: String },
    #[error(
        "the consumer {name} keeps failing ({message}) and could not be recreated; check the stream and NATS permissions"
    )]
    ConsumerLost { name: String, message: String },
    #[error(
        "cannot serve health endpoints on {addr}: {message}; set NOMNOM_WORKER_LISTEN to a free address"
    )]
    Listen {
        addr: std::net::SocketAddr,
        message: String,
    },
}

/// Entry point of a generated worker binary.
pub fn main<S: EntitySchema>(schema: S) -> ExitCode {
    let args = WorkerArgs::parse();
    if let Some(crate::healthcheck::Command::Healthcheck { path }) = &args.command {
        return crate::healthcheck::exit_code(args.listen, path);
    }
    telemetry::init(args.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(schema, args.to_config(), shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "worker stopped");
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
}

const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS nomnom_migrations (version TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL)";

/// Creates the status table and applies the schema's migrations not applied yet. On
/// PostgreSQL an advisory lock serialises replicas that start at once.
pub fn migrate<S: EntitySchema>(
    conn: &mut AnyConnection,
    schema: &S,
    kind: DatabaseKind,
) -> Result<(), WorkerError> {
    let fail = |version: &str| {
        let version = version.to_owned();
        move |source| WorkerError::Migration { version, source }
    };
    conn.transaction(|conn| {
        if let AnyConnection::Postgresql(pg) = conn {
            diesel::sql_query("SELECT pg_advisory_xact_lock(7236423147236412)").execute(pg)?;
        }
        sql::run_script(conn, MIGRATIONS_TABLE)?;
        match conn {
            AnyConnection::Postgresql(pg) => status::postgres::create_table(pg)?,
            AnyConnection::Sqlite(lite) => status::sqlite::create_table(lite)?,
        }
        Ok(())
    })
    .map_err(fail("status"))?;
    for migration in schema.migrations(kind) {
        apply(conn, migration).map_err(fail(migration.version))?;
    }
    Ok(())
}

fn apply(conn: &mut AnyConnection, migration: &Migration) -> diesel::QueryResult<()> {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    conn.transaction(|conn| {
        if let AnyConnection::Postgresql(pg) = conn {
            diesel::sql_query("SELECT pg_advisory_xact_lock(7236423147236412)").execute(pg)?;
        }
        let applied = match conn {
            AnyConnection::Postgresql(pg) => {
                diesel::sql_query("SELECT count(*) AS n FROM nomnom_migrations WHERE version = $1")
                    .bind::<diesel::sql_types::Text, _>(migration.version)
                    .get_result::<Count>(pg)?
            }
            AnyConnection::Sqlite(lite) => {
                diesel::sql_query("SELECT count(*) AS n FROM nomnom_migrations WHERE version = ?")
                    .bind::<diesel::sql_types::Text, _>(migration.version)
                    .get_result::<Count>(lite)?
            }
        };
        if applied.n > 0 {
            return Ok(());
        }
        sql::run_script(conn, migration.up)?;
        let record = format!(
            "INSERT INTO nomnom_migrations (version, name) VALUES ('{}', '{}')",
            migration.version.replace('\'', "''"),
            migration.name.replace('\'', "''")
        );
        sql::run_script(conn, &record)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
        Ok(())
    })
}

/// A message taken from the stream, with what is known about it so far.
struct Delivery {
    message: jetstream::Message,
    sequence: u64,
    delivered: i64,
    envelope: Option<Envelope>,
}

/// Runs the worker until `shutdown` resolves; the batch in hand is finished first.
pub async fn run<S: EntitySchema>(
    schema: S,
    config: WorkerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    config.validate()?;
    let url = DatabaseUrl::parse(&config.database_url).map_err(sql::ConnectError::from)?;
    let mut conn = sql::connect(&config.database_url)?;
    migrate(&mut conn, &schema, url.kind)?;
    warn_if_commits_are_asynchronous(&mut conn);
    if config.migrate_only {
        tracing::info!("migrations applied; exiting (--migrate-only)");
        return Ok(());
    }
    let client = config.nats.connect().await?;
    let js = jetstream::new(client);
    stream::ensure_stream(&js, &config.stream).await?;
    let dlq = ensure_dlq(&js, &config).await?;
    let consumer = ensure_consumer(&js, &config).await?;
    tracing::info!(consumer = %config.consumer, stream = %config.stream.name, database = %url.redacted(), "worker started");

    let conn = Arc::new(Mutex::new(conn));
    let schema = Arc::new(schema);
    let health = Arc::new(Health::default());
    health.database_ok.store(true, Ordering::Release);
    if let Some(listen) = config.listen {
        serve_health(listen, Arc::clone(&health), js.client()).await?;
    }
    let mut consumer = consumer;
    let mut fetch_failures = 0u32;
    tokio::pin!(shutdown);
    loop {
        if !health.database_ok.load(Ordering::Acquire) {
            // Fetching now would only burn deliveries: wait for the database first.
            tokio::select! {
                () = &mut shutdown => break,
                () = wait_for_database(&conn, &config.database_url, &health) => {},
            }
        }
        let batch = tokio::select! {
            () = &mut shutdown => break,
            batch = consumer.fetch().max_messages(config.batch_size).expires(config.batch_wait.max(Duration::from_millis(10))).messages() => batch,
        };
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(err) => {
                consumer =
                    recover_consumer(&js, &config, &mut fetch_failures, &err.to_string()).await?;
                continue;
            }
        };
        let mut deliveries = Vec::new();
        let mut fetch_error = None;
        while let Some(message) = batch.next().await {
            let message = match message {
                Ok(message) => message,
                Err(err) => {
                    fetch_error = Some(err.to_string());
                    break;
                }
            };
            let (sequence, delivered) = message
                .info()
                .map(|i| (i.stream_sequence, i.delivered))
                .unwrap_or((0, 1));
            deliveries.push(Delivery {
                message,
                sequence,
                delivered,
                envelope: None,
            });
        }
        if fetch_error.is_none() {
            fetch_failures = 0;
        }
        if deliveries.is_empty() {
            if let Some(error) = fetch_error {
                consumer = recover_consumer(&js, &config, &mut fetch_failures, &error).await?;
            }
            continue;
        }
        metrics::counter!("worker_messages_consumed_total").increment(deliveries.len() as u64);
        metrics::histogram!("worker_batch_size_items").record(deliveries.len() as f64);
        let redelivered = deliveries.iter().filter(|d| d.delivered > 1).count();
        metrics::counter!("worker_redeliveries_total").increment(redelivered as u64);
        process(&schema, &conn, &js, &dlq, &config, &health, deliveries).await;
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// Exactly-once rests on acknowledging only durable commits: with PostgreSQL's
/// `synchronous_commit` off, a database crash can lose commits the worker has acked.
fn warn_if_commits_are_asynchronous(conn: &mut AnyConnection) {
    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        synchronous_commit: String,
    }
    if let AnyConnection::Postgresql(pg) = conn
        && let Ok(setting) = diesel::sql_query("SHOW synchronous_commit").get_result::<Setting>(pg)
        && setting.synchronous_commit == "off"
    {
        tracing::warn!(
            "PostgreSQL has synchronous_commit=off: a database crash can lose rows of messages already acknowledged; set synchronous_commit=on (the default) for exactly-once"
        );
    }
}

/// What /ready reports.
#[derive(Debug, Default)]
struct Health {
    database_ok: AtomicBool,
}

async fn serve_health(
    listen: std::net::SocketAddr,
    health: Arc<Health>,
    client: async_nats::Client,
) -> Result<(), WorkerError> {
    use axum::{Json, Router, http::StatusCode, routing::get};
    let metrics = crate::metrics::install();
    let ready = move || {
        let health = Arc::clone(&health);
        let client = client.clone();
        async move {
            let nats = client.connection_state() == async_nats::connection::State::Connected;
            let database = health.database_ok.load(Ordering::Acquire);
            let code = if nats && database {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (
                code,
                Json(serde_json::json!({
                    "status": if code == StatusCode::OK { "ready" } else { "unavailable" },
                    "nats": if nats { "connected" } else { "disconnected" },
                    "database": if database { "ok" } else { "unavailable" },
                })),
            )
        }
    };
    let app = Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/ready", get(ready))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        );
    let listener =
        tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| WorkerError::Listen {
                addr: listen,
                message: e.to_string(),
            })?;
    tracing::info!(address = %listen, "health endpoints listening");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}

/// Waits until the database answers again, reconnecting if the connection broke.
async fn wait_for_database(conn: &Arc<Mutex<AnyConnection>>, url: &str, health: &Health) {
    let mut delay = Duration::from_millis(250);
    loop {
        let conn = Arc::clone(conn);
        let url = url.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if ping(&mut conn).is_ok() {
                return true;
            }
            match sql::connect(&url) {
                Ok(fresh) => {
                    *conn = fresh;
                    ping(&mut conn).is_ok()
                }
                Err(_) => false,
            }
        })
        .await
        .unwrap_or(false);
        if ok {
            tracing::info!("database reachable again; resuming");
            health.database_ok.store(true, Ordering::Release);
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// After a fetch error: recreate the stream and consumer if they were deleted; give up
/// (exit non-zero) when that keeps failing, instead of idling forever.
async fn recover_consumer(
    js: &jetstream::Context,
    config: &WorkerConfig,
    failures: &mut u32,
    error: &str,
) -> Result<jetstream::consumer::Consumer<pull::Config>, WorkerError> {
    *failures += 1;
    tracing::warn!(%error, attempt = *failures, "fetch failed; checking the stream and consumer");
    if *failures > 10 {
        return Err(WorkerError::ConsumerLost {
            name: config.consumer.clone(),
            message: error.to_owned(),
        });
    }
    let mut delay = Duration::from_millis(200 * u64::from(*failures));
    loop {
        tokio::time::sleep(delay).await;
        // JetStream unreachable or without a quorum (a cluster that lost nodes) is not a
        // lost stream: wait for it, logging each attempt, instead of exiting. Anything
        // else (a refusal) ends the worker with the reason.
        let unavailable = match stream::ensure_stream(js, &config.stream).await {
            Err(err) if err.is_unavailable() => err.to_string(),
            Err(err) => return Err(err.into()),
            Ok(_) => match ensure_consumer(js, config).await {
                Ok(consumer) => return Ok(consumer),
                Err(WorkerError::Consumer { message, .. }) if is_unavailable_message(&message) => {
                    message
                }
                Err(err) => return Err(err),
            },
        };
        tracing::warn!(error = %unavailable, retry_in_ms = delay.as_millis() as u64, "JetStream unavailable; waiting for it");
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Consumer set-up errors are kept as text (see `ensure_consumer`): the request timed
/// out, or JetStream said it is temporarily unavailable.
fn is_unavailable_message(message: &str) -> bool {
    message.contains("timed out") || message.contains("temporarily unavailable")
}

async fn ensure_dlq(js: &jetstream::Context, config: &WorkerConfig) -> Result<String, WorkerError> {
    let subject = format!("{}.>", crate::dlq::subject_prefix(&config.dlq_stream));
    js.get_or_create_stream(StreamConfig {
        name: config.dlq_stream.clone(),
        subjects: vec![subject],
        storage: StorageType::File,
        discard: DiscardPolicy::New,
        num_replicas: config.stream.replicas,
        // Listing and replaying read single dead letters.
        allow_direct: true,
        ..Default::default()
    })
    .await
    .map_err(|e| WorkerError::Consumer {
        name: config.dlq_stream.clone(),
        message: e.to_string(),
    })?;
    Ok(crate::dlq::subject_prefix(&config.dlq_stream))
}

async fn ensure_consumer(
    js: &jetstream::Context,
    config: &WorkerConfig,
) -> Result<jetstream::consumer::Consumer<pull::Config>, WorkerError> {
    let stream = js
        .get_stream(&config.stream.name)
        .await
        .map_err(|e| WorkerError::Consumer {
            name: config.consumer.clone(),
            message: e.to_string(),
        })?;
    // Create or update: changed settings (ack wait, backoff, ...) apply on restart.
    stream
        .create_consumer(config.consumer_config())
        .await
        .map_err(|e| WorkerError::Consumer {
            name: config.consumer.clone(),
            message: e.to_string(),
        })
}

/// The body of a message: inline, or fetched from the Object Store by reference.
async fn body_of(js: &jetstream::Context, envelope: &Envelope) -> Result<bytes::Bytes, String> {
    match &envelope.body {
        Body::Inline(bytes) => Ok(bytes.clone()),
        Body::Stored(reference) => {
            let store = js
                .get_object_store(&reference.bucket)
                .await
                .map_err(|e| format!("cannot open body bucket {}: {e}", reference.bucket))?;
            let mut object = store
                .get(&reference.object)
                .await
                .map_err(|e| format!("cannot fetch body {}: {e}", reference.object))?;
            let mut bytes = Vec::with_capacity(reference.size as usize);
            object
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| format!("cannot read body {}: {e}", reference.object))?;
            Ok(bytes.into())
        }
    }
}

enum Outcome {
    Persist,
    DeadLetter(String),
    Retry(String),
}

async fn process<S: EntitySchema>(
    schema: &Arc<S>,
    conn: &Arc<Mutex<AnyConnection>>,
    js: &jetstream::Context,
    dlq: &str,
    config: &WorkerConfig,
    health: &Health,
    mut deliveries: Vec<Delivery>,
) {
    let started = Instant::now();
    // Decode and parse (CPU only).
    let mut parsed: Vec<(usize, &'static str, S::Rows)> = Vec::new();
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(deliveries.len());
    for (index, delivery) in deliveries.iter_mut().enumerate() {
        let outcome = match Envelope::decode(delivery.message.payload.clone()) {
            Err(err) => Outcome::DeadLetter(format!("unreadable envelope: {err}")),
            Ok(envelope) if config.max_deliver > 0 && delivery.delivered > config.max_deliver => {
                // Back after its last delivery without an outcome: the worker crashed or
                // timed out on it, or could not dead-letter it. Do not try it again.
                delivery.envelope = Some(envelope);
                Outcome::DeadLetter(format!(
                    "gave up after {} deliveries without an outcome (worker crashed or timed out on it, or its dead-lettering failed)",
                    delivery.delivered - 1
                ))
            }
            Ok(envelope) => {
                let result = match body_of(js, &envelope).await {
                    Err(err) => Err(Outcome::Retry(err)),
                    Ok(body) => serde_json::from_slice::<Value>(&body)
                        .map_err(|e| Outcome::DeadLetter(format!("body is not JSON: {e}")))
                        .and_then(|value| {
                            crate::parse::body_object(&value)
                                .and_then(|()| schema.parse(&envelope, &value))
                                .map_err(|e| Outcome::DeadLetter(e.to_string()))
                        }),
                };
                delivery.envelope = Some(envelope);
                match result {
                    Ok(p) => {
                        parsed.push((index, p.entity, p.rows));
                        Outcome::Persist
                    }
                    Err(outcome) => outcome,
                }
            }
        };
        outcomes.push(outcome);
    }

    // A slow batch (large claim-checked bodies, say) must not outlive ack_wait.
    let progress_every = config.effective_ack_wait() / 3;
    if started.elapsed() > progress_every {
        report_progress(&deliveries).await;
    }

    // Write the parsed ones in one transaction with their status rows.
    let records: Vec<(usize, StatusRecord)> = parsed
        .iter()
        .map(|(index, entity, _)| {
            (
                *index,
                status_record(
                    &deliveries[*index],
                    Some(entity),
                    MessageState::Persisted,
                    None,
                ),
            )
        })
        .collect();
    let write_result = {
        let schema = Arc::clone(schema);
        let conn = Arc::clone(conn);
        let batch: Vec<(usize, StatusRecord, S::Rows)> = parsed
            .into_iter()
            .zip(records)
            .map(|((index, _, rows), (_, record))| (index, record, rows))
            .collect();
        let write = tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            write_batch(&*schema, &mut conn, batch)
        });
        tokio::pin!(write);
        // A write held up (locks, a slow disk) must not outlive ack_wait either: keep
        // telling JetStream the batch is in progress until the transaction ends.
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + progress_every, progress_every);
        loop {
            tokio::select! {
                result = &mut write => break result.unwrap_or_else(|e| Err(format!("writer task failed: {e}"))),
                _ = heartbeat.tick() => report_progress(&deliveries).await,
            }
        }
    };
    match write_result {
        Ok(written) => {
            // Redeliveries of messages already persisted (a crash between commit and
            // ack, a replica paused past ack_wait): acknowledged, not written again.
            metrics::counter!("worker_messages_skipped_total").increment(written.skipped as u64);
            for (index, error) in written.refused {
                outcomes[index] = Outcome::DeadLetter(error);
            }
        }
        Err(error) => {
            // The database is down: retry later, and stop fetching until it is back.
            health.database_ok.store(false, Ordering::Release);
            for outcome in &mut outcomes {
                if matches!(outcome, Outcome::Persist) {
                    *outcome = Outcome::Retry(error.clone());
                }
            }
        }
    }

    // Acknowledge the committed ones together (one round trip each, concurrently), then
    // dead-letter or retry the rest.
    let committed: Vec<&Delivery> = deliveries
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| matches!(o, Outcome::Persist))
        .map(|(d, _)| d)
        .collect();
    let now = chrono::Utc::now();
    for delivery in &committed {
        if let Some(envelope) = &delivery.envelope {
            let latency = (now - envelope.received_at).num_microseconds().unwrap_or(0);
            metrics::histogram!("pipeline_end_to_end_latency_seconds").record(latency as f64 / 1e6);
        }
    }
    // Plain acks, then one flush (a PING/PONG) so they are with the server before the
    // next fetch: one round trip per batch instead of one per message. An ack lost
    // anyway only brings a redelivery, which the status row turns into a skip.
    let mut failed_acks = 0;
    for delivery in &committed {
        if let Err(err) = delivery.message.ack().await {
            failed_acks += 1;
            tracing::warn!(error = %err, sequence = delivery.sequence, "ack failed; the message will be redelivered and skipped");
        }
    }
    if !committed.is_empty()
        && failed_acks < committed.len()
        && let Err(err) = js.client().flush().await
    {
        tracing::warn!(error = %err, "acks not confirmed; unconfirmed messages will be redelivered and skipped");
    }
    metrics::counter!("worker_messages_persisted_total").increment(committed.len() as u64);
    for (delivery, outcome) in deliveries.iter().zip(outcomes) {
        match outcome {
            Outcome::Persist => {}
            Outcome::Retry(error) => {
                if config.is_last_delivery(delivery.delivered) {
                    dead_letter(
                        js,
                        dlq,
                        conn,
                        config,
                        delivery,
                        &format!("gave up after {} attempts: {error}", delivery.delivered),
                    )
                    .await;
                } else {
                    let delay = config.retry_delay(delivery.delivered);
                    tracing::warn!(%error, sequence = delivery.sequence, retry_in_ms = delay.as_millis() as u64, "transient failure; retrying");
                    let _ = delivery.message.ack_with(AckKind::Nak(Some(delay))).await;
                }
            }
            Outcome::DeadLetter(error) => {
                dead_letter(js, dlq, conn, config, delivery, &error).await;
            }
        }
    }
    tracing::debug!(
        messages = deliveries.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "batch done"
    );
}

/// Tells JetStream each message of the batch is still being worked on (resets ack_wait).
async fn report_progress(deliveries: &[Delivery]) {
    futures::future::join_all(
        deliveries
            .iter()
            .map(|d| d.message.ack_with(AckKind::Progress)),
    )
    .await;
}

fn status_record(
    delivery: &Delivery,
    entity: Option<&str>,
    state: MessageState,
    error: Option<String>,
) -> StatusRecord {
    let envelope = delivery.envelope.as_ref();
    StatusRecord {
        message_id: envelope.map_or_else(uuid::Uuid::nil, |e| e.message_id),
        entity: entity
            .map(str::to_owned)
            .or_else(|| envelope.and_then(|e| e.entity.as_ref().map(|n| n.to_string()))),
        status: state,
        attempts: delivery.delivered as i32,
        error,
        received_at: envelope.map_or_else(chrono::Utc::now, |e| e.received_at),
        processed_at: chrono::Utc::now(),
        stream_sequence: Some(delivery.sequence as i64),
    }
}

fn claim(
    conn: &mut AnyConnection,
    records: &[StatusRecord],
) -> diesel::QueryResult<std::collections::HashSet<uuid::Uuid>> {
    match conn {
        AnyConnection::Postgresql(pg) => status::postgres::claim(pg, records),
        AnyConnection::Sqlite(lite) => status::sqlite::claim(lite, records),
    }
}

fn is_persisted(conn: &mut AnyConnection, id: uuid::Uuid) -> Result<bool, status::StatusError> {
    let record = match conn {
        AnyConnection::Postgresql(pg) => status::postgres::fetch(pg, id)?,
        AnyConnection::Sqlite(lite) => status::sqlite::fetch(lite, id)?,
    };
    Ok(record.is_some_and(|r| r.status == MessageState::Persisted))
}

fn upsert_status(conn: &mut AnyConnection, record: &StatusRecord) -> diesel::QueryResult<()> {
    match conn {
        AnyConnection::Postgresql(pg) => status::postgres::upsert(pg, record),
        AnyConnection::Sqlite(lite) => status::sqlite::upsert(lite, record),
    }
}

/// What a committed batch did.
#[derive(Debug, Default)]
struct Written {
    /// Messages the database refused (by index), with the error: to dead-letter.
    refused: Vec<(usize, String)>,
    /// Messages already persisted by an earlier delivery, so not written again.
    skipped: usize,
}

/// Writes a batch in one transaction. When the data makes it fail, writes each message
/// alone so only the bad ones are refused. An error for the whole batch means the
/// database itself failed (retry later).
fn write_batch<S: EntitySchema>(
    schema: &S,
    conn: &mut AnyConnection,
    batch: Vec<(usize, StatusRecord, S::Rows)>,
) -> Result<Written, String> {
    // Returns how many of `items` were already persisted (skipped).
    let write = |conn: &mut AnyConnection,
                 items: &[(usize, StatusRecord, S::Rows)]|
     -> diesel::QueryResult<usize> {
        sql::write_transaction(conn, |conn| {
            // The status rows go first and fence the entity rows: only messages this
            // transaction claims (not persisted before, by anyone) contribute rows.
            let mut seen = std::collections::HashSet::with_capacity(items.len());
            let records: Vec<StatusRecord> = items
                .iter()
                .filter(|(_, record, _)| seen.insert(record.message_id))
                .map(|(_, record, _)| record.clone())
                .collect();
            let mut claimed = claim(conn, &records)?;
            let skipped = records.len() - claimed.len();
            let mut rows = S::Rows::default();
            for (_, record, item_rows) in items {
                // `remove`: a message id twice in one batch contributes its rows once.
                if claimed.remove(&record.message_id) {
                    schema.merge(&mut rows, item_rows.clone());
                }
            }
            schema.write(conn, &rows)?;
            Ok(skipped)
        })
    };
    match write(conn, &batch) {
        Ok(skipped) => Ok(Written {
            refused: Vec::new(),
            skipped,
        }),
        Err(err) => {
            if sql::is_transient(&err) || ping(conn).is_err() {
                return Err(format!("database unavailable: {err}"));
            }
            tracing::warn!(error = %err, messages = batch.len(), "batch refused by the database; writing message by message");
            let mut written = Written::default();
            for item in batch {
                match write(conn, std::slice::from_ref(&item)) {
                    Ok(skipped) => written.skipped += skipped,
                    Err(err) => {
                        if sql::is_transient(&err) || ping(conn).is_err() {
                            return Err(format!("database unavailable: {err}"));
                        }
                        written
                            .refused
                            .push((item.0, format!("the database refused the rows: {err}")));
                    }
                }
            }
            Ok(written)
        }
    }
}

fn ping(conn: &mut AnyConnection) -> diesel::QueryResult<()> {
    sql::run_script(conn, "SELECT 1")
}

async fn dead_letter(
    js: &jetstream::Context,
    dlq: &str,
    conn: &Arc<Mutex<AnyConnection>>,
    config: &WorkerConfig,
    delivery: &Delivery,
    error: &str,
) {
    if let Some(envelope) = &delivery.envelope {
        // Another delivery of it was committed (a crash before its acknowledgement,
        // say): it is done, not dead.
        let id = envelope.message_id;
        let conn = Arc::clone(conn);
        let persisted = tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            is_persisted(&mut conn, id)
        })
        .await;
        if matches!(persisted, Ok(Ok(true))) {
            let _ = delivery.message.double_ack().await;
            return;
        }
    }
    let record = status_record(
        delivery,
        None,
        MessageState::DeadLettered,
        Some(error.to_owned()),
    );
    let entity = record
        .entity
        .clone()
        .unwrap_or_else(|| subject::NO_ENTITY_TOKEN.to_owned());
    let document = serde_json::json!({
        "message_id": record.message_id,
        "entity": record.entity,
        "error": error,
        "attempts": delivery.delivered,
        "stream_sequence": delivery.sequence,
        "received_at": format_time(record.received_at),
        "dead_lettered_at": format_time(record.processed_at),
        "envelope": String::from_utf8_lossy(&delivery.message.payload),
    });
    let subject = format!("{dlq}.{}.{}", entity, record.message_id);
    // The same delivery dead-lettered twice (its termination lost) is stored once.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("{}:{}", record.message_id, delivery.sequence).as_str(),
    );
    let published = async {
        js.publish_with_headers(
            subject,
            headers,
            serde_json::to_vec(&document).unwrap_or_default().into(),
        )
        .await?
        .await
    }
    .await;
    if let Err(err) = published {
        // Not acknowledged: it comes back (the consumer has no delivery limit of its
        // own) and is dead-lettered then.
        let delay = config.retry_delay(delivery.delivered);
        tracing::error!(error = %err, sequence = delivery.sequence, retry_in_ms = delay.as_millis() as u64, "dead-letter publish failed; the message will be redelivered");
        metrics::counter!("worker_dlq_publish_failures_total").increment(1);
        let _ = delivery.message.ack_with(AckKind::Nak(Some(delay))).await;
        return;
    }
    let conn = Arc::clone(conn);
    let stored = tokio::task::spawn_blocking(move || {
        let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        upsert_status(&mut conn, &record)
    })
    .await;
    if !matches!(stored, Ok(Ok(()))) {
        tracing::warn!(
            sequence = delivery.sequence,
            "dead-lettered, but its status row could not be written"
        );
    }
    metrics::counter!("worker_dlq_messages_total").increment(1);
    tracing::warn!(error, sequence = delivery.sequence, "message dead-lettered");
    let _ = delivery.message.ack_with(AckKind::Term).await;
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
        assert_eq!(config.batch_wait, default.batch_wait);
        assert_eq!(config.ack_wait, default.ack_wait);
        assert_eq!(config.max_deliver, default.max_deliver);
        assert_eq!(config.backoff, default.backoff);
        assert_eq!(config.max_ack_pending, default.max_ack_pending);
        default.validate().expect("the defaults are valid");
        assert_eq!(config.dlq_stream, default.dlq_stream);
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
