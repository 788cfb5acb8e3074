//! The contract between a generated worker crate and the shared worker runtime, and the
//! worker itself.
//!
//! Generated code implements [`EntitySchema`]: how to turn a message body into rows, how
//! to write rows, and which migrations create the tables. Everything else (consuming,
//! batching, transactions with the status table, acks, dead-lettering) is the runtime's:
//! a [`Worker`] takes batches from the durable consumer and runs each through
//! decode → parse → write → settle (see `batch.rs`).

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::json::Value;
use async_nats::jetstream;
use clap::Parser;
use diesel::QueryResult;

use crate::{
    Envelope,
    change::Change,
    db::{self, DatabaseKind, DatabaseUrl},
    dlq::{DeadLetters, DlqError},
    parse::ParseError,
    sql::AnyConnection,
    stream, telemetry,
};

mod batch;
mod config;
mod consumer;
mod health;
mod migrate;
mod refusal;
pub mod write;

pub use config::{WorkerArgs, WorkerConfig};
pub use consumer::ConsumerSetupError;
pub use migrate::{create_runtime_tables, migrate};

use consumer::Consumer;
use health::{Database, Health};

/// One migration of the generated schema.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Sortable version, e.g. `00000000000001`.
    pub version: &'static str,
    pub name: &'static str,
    pub up: &'static str,
    pub down: &'static str,
}

/// What a generated worker knows about its entities.
pub trait EntitySchema: Send + Sync + 'static {
    /// The project name from the spec.
    fn project(&self) -> &'static str;

    /// Routes and parses one message body into its changes. Errors are permanent
    /// (dead-letter).
    fn parse(&self, envelope: &Envelope, body: &Value) -> Result<Parsed, ParseError>;

    /// Migrations creating the entity tables on `kind`, oldest first.
    fn migrations(&self, kind: DatabaseKind) -> &'static [Migration];
}

/// A parsed message.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The entity the message was routed to.
    pub entity: &'static str,
    /// What the message does to that entity's row, then to the rows of the records
    /// fanned out of it, if any (never empty; see [`crate::change::Records`]).
    pub changes: Vec<Change>,
}

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Database(#[from] db::ConnectError),
    #[error("migration {version} failed: {source}")]
    Migration {
        version: String,
        source: diesel::result::Error,
    },
    #[error(
        "migration {version}_{name} was changed after it ran on this database (recorded sha256 {recorded}, now {now}); migrations are append-only: restore its up.sql from version control and change the spec instead, which adds a migration"
    )]
    MigrationEdited {
        version: String,
        name: String,
        recorded: String,
        now: String,
    },
    #[error(transparent)]
    Nats(#[from] crate::nats::NatsConnectError),
    #[error(transparent)]
    Stream(#[from] stream::StreamSetupError),
    #[error(transparent)]
    DeadLetters(#[from] DlqError),
    #[error("cannot set up the consumer {name}: {source}")]
    Consumer {
        name: String,
        source: ConsumerSetupError,
    },
    #[error(
        "the consumer {name} keeps failing ({source}) and could not be recreated; check the stream and NATS permissions"
    )]
    ConsumerLost {
        name: String,
        source: async_nats::Error,
    },
    #[error(
        "cannot serve health endpoints on {addr}: {source}; set NOMNOM_WORKER_LISTEN to a free address"
    )]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Entry point of a generated worker binary.
pub fn main<S: EntitySchema>(schema: S) -> ExitCode {
    let args = WorkerArgs::parse();
    if let Some(crate::healthcheck::Command::Healthcheck { path }) = &args.command {
        return crate::healthcheck::exit_code(args.listen, path);
    }
    crate::allocator::return_freed_memory_promptly();
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

/// Runs the worker until `shutdown` resolves; the batch in hand is finished first.
pub async fn run<S: EntitySchema>(
    schema: S,
    config: WorkerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    config.validate()?;
    match Worker::start(schema, config).await? {
        Some(worker) => worker.run(shutdown).await,
        None => Ok(()),
    }
}

/// How often a worker deletes tombstones past their retention.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// A running worker: everything a batch needs.
struct Worker<S: EntitySchema> {
    schema: Arc<S>,
    db: Database,
    js: jetstream::Context,
    dead_letters: DeadLetters,
    consumer: Consumer,
    /// The guard sequence base of each stream incarnation seen.
    sequence_bases: Arc<SequenceBases>,
    config: WorkerConfig,
    health: Arc<Health>,
}

impl<S: EntitySchema> Worker<S> {
    /// Connects, migrates, and sets up the streams, the consumer and the health
    /// endpoints. `None` with `--migrate-only`, once the migrations are applied.
    async fn start(schema: S, config: WorkerConfig) -> Result<Option<Self>, WorkerError> {
        let url = DatabaseUrl::parse(&config.database_url).map_err(db::ConnectError::from)?;
        let mut conn = db::connect(&config.database_url)?;
        migrate(&mut conn, &schema, url.kind)?;
        migrate::warn_if_commits_are_asynchronous(&mut conn);
        if config.migrate_only {
            tracing::info!("migrations applied; exiting (--migrate-only)");
            return Ok(None);
        }
        let js = jetstream::new(config.nats.connect().await?);
        stream::ensure_stream(&js, &config.stream).await?;
        let dead_letters =
            DeadLetters::ensure(js.clone(), &config.dlq_stream, config.stream.replicas).await?;
        let consumer = Consumer::ensure(js.clone(), &config).await?;
        tracing::info!(consumer = %config.consumer, stream = %config.stream.name, database = %url.redacted(), "worker started");
        let health = Arc::new(Health::default());
        health.set_database_ok(true);
        if let Some(listen) = config.listen {
            health::serve(listen, Arc::clone(&health), js.client()).await?;
        }
        Ok(Some(Self {
            schema: Arc::new(schema),
            db: Database::new(conn, config.database_url.clone()),
            js,
            dead_letters,
            consumer,
            sequence_bases: Arc::default(),
            config,
            health,
        }))
    }

    /// Takes and processes batches until `shutdown` resolves.
    async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
        tokio::pin!(shutdown);
        let mut last_prune: Option<std::time::Instant> = None;
        loop {
            if !self.health.database_ok() {
                // Fetching now would only burn deliveries: wait for the database first.
                tokio::select! {
                    () = &mut shutdown => break,
                    () = self.db.wait_until_reachable(&self.health) => {},
                }
            }
            let wait = self.config.batch_wait.max(Duration::from_millis(10));
            let fetched = tokio::select! {
                () = &mut shutdown => break,
                fetched = self.consumer.fetch(self.config.batch_size, wait) => fetched,
            };
            let messages = self.consumer.receive(fetched).await?;
            if !messages.is_empty() {
                self.process(messages).await;
            }
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(std::time::Instant::now());
                self.prune_tombstones().await;
            }
        }
        tracing::info!("worker stopped");
        Ok(())
    }
}

impl<S: EntitySchema> Worker<S> {
    /// Deletes tombstones past their retention. A failure is logged and tried again at
    /// the next round: tombstones kept longer only cost space.
    async fn prune_tombstones(&self) {
        let retention = self.config.tombstone_retention;
        match self
            .db
            .run(move |conn| crate::apply::prune(conn, retention))
            .await
        {
            Ok(Ok(0)) => {}
            Ok(Ok(pruned)) => {
                tracing::info!(
                    pruned,
                    "tombstones and logged patches past their retention deleted"
                );
            }
            Ok(Err(err)) => tracing::warn!(error = %err, "cannot prune tombstones; retrying later"),
            Err(err) => tracing::warn!(error = %err, "cannot prune tombstones; retrying later"),
        }
    }
}

/// The sequence base of each stream incarnation (see [`crate::apply::sequence_base`]),
/// asked of the database once per incarnation.
#[derive(Debug, Default)]
struct SequenceBases(std::sync::Mutex<Vec<(i64, i64)>>);

impl SequenceBases {
    fn base(&self, conn: &mut AnyConnection, stream: &str, created: i64) -> QueryResult<i64> {
        let mut known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, base)) = known.iter().find(|(c, _)| *c == created) {
            return Ok(*base);
        }
        let base = crate::apply::sequence_base(conn, stream, created)?;
        known.push((created, base));
        Ok(base)
    }
}
