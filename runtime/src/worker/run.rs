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
    /// Deliveries before a message is dead-lettered.
    #[arg(long, env = "NOMNOM_MAX_DELIVER", default_value_t = defaults::WORKER_MAX_DELIVER)]
    pub max_deliver: i64,
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
    pub max_deliver: i64,
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
            dlq_stream: self.dlq_stream.clone(),
            migrate_only: self.migrate_only,
            listen: Some(self.listen),
        }
    }
}

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
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
    let url = DatabaseUrl::parse(&config.database_url).map_err(sql::ConnectError::from)?;
    let mut conn = sql::connect(&config.database_url)?;
    migrate(&mut conn, &schema, url.kind)?;
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
        if deliveries.is_empty() {
            if let Some(error) = fetch_error {
                consumer = recover_consumer(&js, &config, &mut fetch_failures, &error).await?;
            }
            continue;
        }
        fetch_failures = 0;
        metrics::counter!("worker_messages_consumed_total").increment(deliveries.len() as u64);
        metrics::histogram!("worker_batch_size_items").record(deliveries.len() as f64);
        let redelivered = deliveries.iter().filter(|d| d.delivered > 1).count();
        metrics::counter!("worker_redeliveries_total").increment(redelivered as u64);
        process(&schema, &conn, &js, &dlq, &config, &health, deliveries).await;
    }
    tracing::info!("worker stopped");
    Ok(())
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
    tokio::time::sleep(Duration::from_millis(200 * u64::from(*failures))).await;
    stream::ensure_stream(js, &config.stream).await?;
    ensure_consumer(js, config).await
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
    stream
        .get_or_create_consumer(
            &config.consumer,
            pull::Config {
                durable_name: Some(config.consumer.clone()),
                filter_subject: subject::ingest_filter(&config.stream.subject_prefix),
                ack_policy: AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_deliver: config.max_deliver,
                max_ack_pending: (config.batch_size * 4) as i64,
                ..Default::default()
            },
        )
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
            Ok(envelope) => {
                let result = match body_of(js, &envelope).await {
                    Err(err) => Err(Outcome::Retry(err)),
                    Ok(body) => serde_json::from_slice::<Value>(&body)
                        .map_err(|e| Outcome::DeadLetter(format!("body is not JSON: {e}")))
                        .and_then(|value| {
                            schema
                                .parse(&envelope, &value)
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
    if started.elapsed() > config.ack_wait / 3 {
        for delivery in &deliveries {
            let _ = delivery.message.ack_with(AckKind::Progress).await;
        }
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
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            write_batch(&*schema, &mut conn, batch)
        })
        .await
        .unwrap_or_else(|e| Err(format!("writer task failed: {e}")))
    };
    match write_result {
        Ok(failed) => {
            for (index, error) in failed {
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
    let acks = futures::future::join_all(committed.iter().map(|d| d.message.double_ack())).await;
    for (delivery, ack) in committed.iter().zip(acks) {
        if let Err(err) = ack {
            tracing::warn!(error = %err, sequence = delivery.sequence, "ack failed; the message will be redelivered and skipped");
        }
    }
    metrics::counter!("worker_messages_persisted_total").increment(committed.len() as u64);
    for (delivery, outcome) in deliveries.iter().zip(outcomes) {
        match outcome {
            Outcome::Persist => {}
            Outcome::Retry(error) => {
                if delivery.delivered >= config.max_deliver {
                    dead_letter(
                        js,
                        dlq,
                        conn,
                        delivery,
                        &format!("gave up after {} attempts: {error}", delivery.delivered),
                    )
                    .await;
                } else {
                    let delay = Duration::from_millis(
                        500 * 2u64.pow(delivery.delivered.clamp(1, 6) as u32),
                    );
                    tracing::warn!(%error, sequence = delivery.sequence, retry_in_ms = delay.as_millis() as u64, "transient failure; retrying");
                    let _ = delivery.message.ack_with(AckKind::Nak(Some(delay))).await;
                }
            }
            Outcome::DeadLetter(error) => dead_letter(js, dlq, conn, delivery, &error).await,
        }
    }
    tracing::debug!(
        messages = deliveries.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "batch done"
    );
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

fn already_persisted(
    conn: &mut AnyConnection,
    id: uuid::Uuid,
) -> Result<bool, status::StatusError> {
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

/// Writes a batch in one transaction. When the data makes it fail, writes each message
/// alone so only the bad ones are refused: returns their indexes and errors. An error
/// for the whole batch means the database itself failed (retry later).
fn write_batch<S: EntitySchema>(
    schema: &S,
    conn: &mut AnyConnection,
    batch: Vec<(usize, StatusRecord, S::Rows)>,
) -> Result<Vec<(usize, String)>, String> {
    let write = |conn: &mut AnyConnection,
                 items: &[(usize, StatusRecord, S::Rows)]|
     -> diesel::QueryResult<()> {
        sql::write_transaction(conn, |conn| {
            let mut rows = S::Rows::default();
            for (_, record, item_rows) in items {
                let done = already_persisted(conn, record.message_id)
                    .map_err(|e| diesel::result::Error::QueryBuilderError(e.to_string().into()))?;
                if done {
                    continue;
                }
                schema.merge(&mut rows, item_rows.clone());
                upsert_status(conn, record)?;
            }
            schema.write(conn, &rows)
        })
    };
    match write(conn, &batch) {
        Ok(()) => Ok(Vec::new()),
        Err(err) => {
            if sql::is_transient(&err) || ping(conn).is_err() {
                return Err(format!("database unavailable: {err}"));
            }
            tracing::warn!(error = %err, messages = batch.len(), "batch refused by the database; writing message by message");
            let mut refused = Vec::new();
            for item in batch {
                if let Err(err) = write(conn, std::slice::from_ref(&item)) {
                    if sql::is_transient(&err) || ping(conn).is_err() {
                        return Err(format!("database unavailable: {err}"));
                    }
                    refused.push((item.0, format!("the database refused the rows: {err}")));
                }
            }
            Ok(refused)
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
    delivery: &Delivery,
    error: &str,
) {
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
    let published = async {
        js.publish(
            subject,
            serde_json::to_vec(&document).unwrap_or_default().into(),
        )
        .await?
        .await
    }
    .await;
    if let Err(err) = published {
        // Not acknowledged: it comes back and is dead-lettered then.
        tracing::error!(error = %err, sequence = delivery.sequence, "dead-letter publish failed; the message will be redelivered");
        let _ = delivery
            .message
            .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
            .await;
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
        assert_eq!(config.dlq_stream, default.dlq_stream);
        assert_eq!(config.stream, default.stream);
        assert_eq!(config.listen, defaults::WORKER_LISTEN.parse().ok());
    }
}
