//! The contract between a generated worker crate and the shared worker runtime, and the
//! worker itself.
//!
//! Generated code implements [`EntitySchema`]: how to turn a message body into rows, how
//! to write rows, and which migrations create the tables. Everything else (consuming,
//! batching, transactions with the status table, acks, dead-lettering) is the runtime's:
//! a [`Worker`] takes batches from the durable consumer and runs each through
//! decode → parse → write → settle (see `batch.rs`), decoding and parsing the next batch
//! while one is written.

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::json::Value;
use async_nats::jetstream;
use clap::Parser;
use diesel::QueryResult;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::{
    Envelope,
    change::Change,
    db::{self, DatabaseKind, DatabaseUrl},
    dlq::{DeadLetters, DlqError},
    otlp,
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
mod shutdown;
pub mod write;

pub use config::{WorkerArgs, WorkerConfig};
pub use consumer::ConsumerSetupError;
pub use migrate::{Migrated, create_runtime_tables, migrate, migrate_unless};

use batch::{Prepared, Processed};
use consumer::Consumer;
use health::{Database, Health};
use shutdown::{Backoff, Shutdown};

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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let exporter = match otlp::start(&args.traces, schema.project(), runtime.handle().clone()) {
        Ok(exporter) => exporter,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    telemetry::init(args.log_format, exporter.as_ref());
    let config = args.to_config();
    let result = runtime.block_on(async {
        // Handlers first: a SIGTERM while the worker still waits for NATS or the database
        // must be observed, not end the process with the signal.
        let signal = shutdown_signal();
        run(schema, config, signal).await
    });
    // The last spans are sent while the runtime their requests run on is still up.
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    // A write abandoned at the end of the grace period may still hold a blocking thread:
    // do not wait for it (the database rolls back what the connection did not commit).
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "worker stopped");
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed when this is
/// called, not when the future is first polled.
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        let terminate = async {
            match terminate {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        let interrupt = async {
            match interrupt {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            () = interrupt => tracing::info!("SIGINT received; stopping"),
            () = terminate => tracing::info!("SIGTERM received; stopping"),
        }
    }
}

/// Runs the worker until `shutdown` resolves; the batch in hand is finished first (within
/// `shutdown_grace`). Every wait (for NATS, JetStream, the database, the migration lock,
/// a backoff) ends when `shutdown` resolves, and the worker then returns `Ok`.
pub async fn run<S: EntitySchema>(
    schema: S,
    config: WorkerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    config.validate()?;
    let (trigger, stop) = Shutdown::new();
    let work = async {
        match Worker::start(schema, config, &stop).await? {
            Some((worker, consumer)) => worker.run(consumer, &stop).await,
            None => Ok(()),
        }
    };
    tokio::pin!(work);
    tokio::select! {
        result = &mut work => return result,
        () = shutdown => trigger.fire(),
    }
    work.await
}

/// How often a worker deletes tombstones past their retention.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// A running worker: everything a batch needs. The consumer is the loop's own (see
/// [`Worker::run`]): fetching the next batch must not wait for the batch being written.
struct Worker<S: EntitySchema> {
    schema: Arc<S>,
    /// One connection per writer (`config.writers`).
    db: Database,
    js: jetstream::Context,
    dead_letters: DeadLetters,
    /// The guard sequence base of each stream incarnation seen.
    sequence_bases: Arc<SequenceBases>,
    config: WorkerConfig,
    health: Arc<Health>,
    shutdown: Shutdown,
}

/// Runs blocking `work` off the async runtime, passing its panic on.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        // Only a runtime shutting down cancels a blocking task.
        Err(_) => std::future::pending().await,
    }
}

/// Connects to the database, waiting as long as it is unreachable: PostgreSQL may be
/// down or still starting, while a SQLite file that cannot be opened will not open by
/// waiting. `None` if shutdown was requested first.
async fn connect_waiting(
    shutdown: &Shutdown,
    database_url: &str,
    kind: DatabaseKind,
) -> Result<Option<AnyConnection>, db::ConnectError> {
    wait_for(
        shutdown,
        "database unreachable; waiting for it",
        || {
            let url = database_url.to_owned();
            blocking(move || db::connect(&url))
        },
        |_| kind == DatabaseKind::Postgres,
    )
    .await
}

/// Tries `attempt` until it succeeds, fails for good (`retry` says no), or shutdown is
/// requested (`Ok(None)`), logging `waiting` with each retryable error and pausing with
/// a growing delay in between.
async fn wait_for<T, E, Fut>(
    shutdown: &Shutdown,
    waiting: &str,
    mut attempt: impl FnMut() -> Fut,
    retry: impl Fn(&E) -> bool,
) -> Result<Option<T>, E>
where
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        match shutdown.unless_requested(attempt()).await {
            None => return Ok(None),
            Some(Ok(value)) => return Ok(Some(value)),
            Some(Err(err)) if retry(&err) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "{waiting}");
                if !shutdown.sleep(delay).await {
                    return Ok(None);
                }
            }
            Some(Err(err)) => return Err(err),
        }
    }
}

impl<S: EntitySchema> Worker<S> {
    /// Connects, migrates, and sets up the streams, the consumer and the health
    /// endpoints, waiting for NATS, JetStream and the database as long as they are
    /// unreachable. `None` with `--migrate-only` once the migrations are applied, or when
    /// shutdown is requested first.
    async fn start(
        schema: S,
        config: WorkerConfig,
        shutdown: &Shutdown,
    ) -> Result<Option<(Self, Consumer)>, WorkerError> {
        let url = DatabaseUrl::parse(&config.database_url).map_err(db::ConnectError::from)?;
        let health = Arc::new(Health::default());
        if !config.migrate_only
            && let Some(listen) = config.listen
        {
            health::serve(listen, Arc::clone(&health)).await?;
        }
        let stopped = || {
            tracing::info!("shutdown requested while starting; exiting");
            Ok(None)
        };

        let Some(mut conn) = connect_waiting(shutdown, &config.database_url, url.kind).await?
        else {
            return stopped();
        };
        let schema = Arc::new(schema);
        let (conn, migrated) = {
            let schema = Arc::clone(&schema);
            let stop = shutdown.clone();
            let kind = url.kind;
            blocking(move || {
                let migrated = migrate_unless(&mut conn, &*schema, kind, &|| stop.requested());
                if matches!(migrated, Ok(Migrated::Done)) {
                    migrate::warn_if_commits_are_asynchronous(&mut conn);
                }
                (conn, migrated)
            })
            .await
        };
        if migrated? == Migrated::Stopped {
            return stopped();
        }
        if config.migrate_only {
            tracing::info!("migrations applied; exiting (--migrate-only)");
            return Ok(None);
        }
        // One connection per writer: each transaction in flight has its own.
        let mut conns = vec![conn];
        while conns.len() < config.writers {
            let Some(conn) = connect_waiting(shutdown, &config.database_url, url.kind).await?
            else {
                return stopped();
            };
            conns.push(conn);
        }
        health.set_database_ok(true);

        // NATS, then JetStream: the stream, the dead-letter stream and the consumer.
        let nats = config.nats.clone();
        let Some(client) = wait_for(
            shutdown,
            "NATS unreachable; waiting for it",
            || nats.connect(),
            crate::nats::NatsConnectError::is_unreachable,
        )
        .await?
        else {
            return stopped();
        };
        health.set_nats(client.clone());
        let js = jetstream::new(client);
        let unavailable = "JetStream unavailable; waiting for it";
        if wait_for(
            shutdown,
            unavailable,
            || stream::ensure_stream(&js, &config.stream),
            stream::StreamSetupError::is_unavailable,
        )
        .await?
        .is_none()
        {
            return stopped();
        }
        let Some(dead_letters) = wait_for(
            shutdown,
            unavailable,
            || DeadLetters::ensure(js.clone(), &config.dlq_stream, config.stream.replicas),
            DlqError::is_unavailable,
        )
        .await?
        else {
            return stopped();
        };
        let Some(consumer) = wait_for(
            shutdown,
            unavailable,
            || Consumer::ensure(js.clone(), &config),
            ConsumerSetupError::is_unavailable,
        )
        .await
        .map_err(|source| WorkerError::Consumer {
            name: config.consumer.clone(),
            source,
        })?
        else {
            return stopped();
        };
        tracing::info!(consumer = %config.consumer, stream = %config.stream.name, database = %url.redacted(), "worker started");
        health.set_started(&config.stream.name, &config.consumer);
        let worker = Self {
            schema,
            db: Database::new(conns, config.database_url.clone()),
            js,
            dead_letters,
            sequence_bases: Arc::default(),
            config,
            health,
            shutdown: shutdown.clone(),
        };
        Ok(Some((worker, consumer)))
    }

    /// Takes and processes batches until shutdown is requested, as a pipeline: while
    /// batches are written (each transaction on a blocking thread and a connection of
    /// its own, up to `writers` at once) and settled, the next is fetched, decoded and
    /// parsed. A batch is written once a writer is free and it has no row in common
    /// with a batch being written ([`batch::Keys`]): batches sharing a row commit one
    /// after another, in the order fetched. A batch is acknowledged only after its own
    /// commit, and the next write does not wait for those acknowledgements. In hand at
    /// most: `writers + 1` batches being written or settled, and one prepared behind
    /// them, within max_ack_pending.
    ///
    /// The batch waiting when a write failed (the database is down) is kept, and
    /// written once the database is back. On shutdown, the batches being written finish
    /// within the grace period (see `batch.rs`), and the one waiting is naked so that
    /// it is redelivered at once.
    async fn run(self, consumer: Consumer, shutdown: &Shutdown) -> Result<(), WorkerError> {
        let this = &self;
        let every = self.progress_every();
        let mut last_prune: Option<std::time::Instant> = None;
        // Lent to the fetch under way, if any.
        let mut consumer = Some(consumer);
        let mut fetching = None;
        let mut reconnecting = None;
        let mut writing = FuturesUnordered::new();
        let mut settling = FuturesUnordered::new();
        // The keys of each batch being written, by batch number.
        let mut locked: Vec<(u64, batch::Keys)> = Vec::new();
        let mut numbered = 0u64;
        // Messages fetched and not settled, but the batch waiting.
        let mut in_hand = 0usize;
        // Fetched and parsed, not written yet; and when JetStream last heard of it.
        let mut ahead: Option<Prepared> = None;
        let mut ahead_reported = tokio::time::Instant::now();
        // Whether the batch ahead is held for the database (and that was logged).
        let mut holding = false;
        let mut failure: Option<WorkerError> = None;
        loop {
            let stopping = shutdown.requested() || failure.is_some();
            if let Some(mut batch) = ahead.take() {
                if stopping {
                    self.release(batch).await;
                } else if writing.len() < self.config.writers
                    && writing.len() + settling.len() <= self.config.writers
                    && self.health.database_ok()
                    && !locked.iter().any(|(_, keys)| batch.keys().meet(keys))
                {
                    let number = numbered;
                    numbered += 1;
                    locked.push((number, batch.take_keys()));
                    in_hand += batch.len();
                    writing.push(async move {
                        let processed = this.write_prepared(&mut batch).await;
                        (number, batch, processed)
                    });
                } else {
                    ahead = Some(batch);
                }
            }
            if !stopping && fetching.is_none() && ahead.is_none() && self.health.database_ok() {
                let room = self.room_behind(in_hand);
                if room > 0 {
                    let mut lent = consumer.take().expect("no fetch is under way");
                    fetching = Some(Box::pin(async move {
                        let next = this.next_batch(&mut lent, room, shutdown).await;
                        (lent, next)
                    }));
                }
            }
            // The database is down: once the writes in flight are over, wait for it
            // (with the batch waiting kept alive) rather than burn deliveries.
            if !stopping
                && reconnecting.is_none()
                && writing.is_empty()
                && !self.health.database_ok()
            {
                reconnecting = Some(Box::pin(self.db.wait_until_reachable(&self.health)));
            }
            match &ahead {
                Some(batch) if !holding && !self.health.database_ok() => {
                    holding = true;
                    tracing::info!(
                        messages = batch.len(),
                        "database unavailable; holding the next batch until it is back"
                    );
                }
                _ => holding = holding && ahead.is_some(),
            }
            if stopping
                && ahead.is_none()
                && fetching.is_none()
                && writing.is_empty()
                && settling.is_empty()
            {
                break;
            }
            tokio::select! {
                Some((number, batch, processed)) = writing.next(), if !writing.is_empty() => {
                    locked.retain(|(n, _)| *n != number);
                    if processed == Processed::Abandoned {
                        tracing::warn!(
                            messages = batch.len(),
                            "a batch was still being written at the end of the shutdown grace period; exiting without acknowledging it (it will be redelivered, and skipped if it was committed)"
                        );
                        in_hand -= batch.len();
                    } else {
                        settling.push(async move {
                            let messages = batch.len();
                            this.settle_written(batch).await;
                            messages
                        });
                    }
                }
                Some(messages) = settling.next(), if !settling.is_empty() => in_hand -= messages,
                (lent, next) = maybe(fetching.as_mut()), if fetching.is_some() => {
                    fetching = None;
                    consumer = Some(lent);
                    match next {
                        Ok(Next::Batch(batch)) => {
                            ahead = Some(batch);
                            ahead_reported = tokio::time::Instant::now();
                        }
                        Ok(Next::Empty) if in_hand == 0 => {
                            self.prune_now_and_then(&mut last_prune).await;
                        }
                        Ok(Next::Empty | Next::Stopped) => {}
                        Err(err) => failure = Some(err),
                    }
                }
                () = maybe(reconnecting.as_mut()), if reconnecting.is_some() => reconnecting = None,
                () = tokio::time::sleep_until(ahead_reported + every), if ahead.is_some() => {
                    if let Some(batch) = &ahead {
                        self.keep_alive(batch).await;
                    }
                    ahead_reported = tokio::time::Instant::now();
                }
                () = shutdown.wait(), if !stopping => {}
            }
        }
        tracing::info!("worker stopped");
        match failure {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// How many messages the next batch may take with `in_hand` messages not settled: a
    /// batch, within what the consumer lets one worker hold unacknowledged
    /// (`max_ack_pending`, at least a batch). None: the next batch is fetched once some
    /// are settled, as a fetch that the server cannot fill would only wait for its expiry.
    fn room_behind(&self, in_hand: usize) -> usize {
        let batch = self.config.batch_size;
        match usize::try_from(self.config.max_ack_pending) {
            Ok(limit) => batch.min(limit.saturating_sub(in_hand)),
            // -1: no limit.
            Err(_) => batch,
        }
    }

    /// Fetches up to `max` messages and prepares them (decode, parse).
    async fn next_batch(
        &self,
        consumer: &mut Consumer,
        max: usize,
        shutdown: &Shutdown,
    ) -> Result<Next, WorkerError> {
        let wait = self.config.batch_wait.max(Duration::from_millis(10));
        let Some(fetched) = shutdown.unless_requested(consumer.fetch(max, wait)).await else {
            return Ok(Next::Stopped);
        };
        // A fetch under way is received to its end, even if shutdown is requested
        // meanwhile: what it brings is then handed back, not left to ack_wait.
        let Some(messages) = consumer.receive(fetched, shutdown).await? else {
            return Ok(Next::Stopped);
        };
        if messages.is_empty() {
            return Ok(Next::Empty);
        }
        let created = consumer.stream_created();
        Ok(Next::Batch(self.prepare(messages, created).await))
    }

    /// Deletes expired tombstones once every [`PRUNE_EVERY`].
    async fn prune_now_and_then(&self, last_prune: &mut Option<std::time::Instant>) {
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            *last_prune = Some(std::time::Instant::now());
            self.prune_tombstones().await;
        }
    }
}

/// Awaits `future`, or forever if there is none (a `select!` branch that is off).
async fn maybe<F: Future + Unpin>(future: Option<&mut F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// What a fetch brought.
enum Next {
    Batch(Prepared),
    /// Nothing within the batch wait (or a fetch failure the consumer recovered from).
    Empty,
    /// Shutdown was requested before or during the fetch.
    Stopped,
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
