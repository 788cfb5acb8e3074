//! Benchmark 3: worker throughput from a pre-filled stream of real TPC-H orders into
//! PostgreSQL, with 1, 2 and 4 workers, against the same rows written by PostgreSQL
//! COPY, by the worker's SQL path alone (multi-row statements), and by the naive design
//! (one transaction per message); and into SQLite, against a bulk insert of the same rows
//! (one transaction, a prepared statement, WAL) on the same file system. With
//! `--worker-before`, another worker binary (an older build) is measured in the same runs,
//! back to back with this one.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream;
use futures::{StreamExt, stream::FuturesUnordered};
use nomnom_runtime::{
    Envelope,
    apply::Absent,
    change::Change,
    sql::{self, AnyConnection, Table, Value},
    status::{self, MessageState, StatusRecord},
    stream::{StreamSettings, ensure_stream},
    subject::{self, EntityName},
    worker::write::{Pending, write_batch_with},
};
use nomnom_test_support::{NatsServer, Postgres, PostgresOptions, free_port};

use crate::Options;
use crate::util::{Proc, Row, Verdict, binary, median, thousands, wait_until};

/// Messages per transaction in the worker and in the multi-row baseline.
const BATCH: usize = 500;

/// The workload: real TPC-H orders, as the API would have published them, and the rows
/// they become.
pub struct Workload {
    pub bodies: Vec<bytes::Bytes>,
    /// Rows of the orders table, the stream sequence (`nomnom_seq`) last.
    pub orders: Vec<Vec<Value>>,
    pub lineitems: Vec<Vec<Value>>,
    /// Line items per message, to split `lineitems` by message.
    pub items_per_order: Vec<usize>,
    /// Each message's change, as the worker parses it.
    pub changes: Vec<Change>,
}

impl Workload {
    pub fn generate(count: usize) -> anyhow::Result<Workload> {
        let mut workload = Workload {
            bodies: Vec::with_capacity(count),
            orders: Vec::with_capacity(count),
            lineitems: Vec::with_capacity(count * 4),
            items_per_order: Vec::with_capacity(count),
            changes: Vec::with_capacity(count),
        };
        let envelope = envelope_for(bytes::Bytes::new());
        // Scale factor 0.1 holds 150,000 orders: more than any run needs.
        for (n, order) in tpch_data::orders(0.1).take(count).enumerate() {
            // The body as the worker reads it: from its bytes.
            let body = serde_json::to_vec(&order)?;
            let change = tpch_worker::parse(&envelope, &nomnom_runtime::json::from_slice(&body)?)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .changes
                .remove(0);
            workload.bodies.push(body.into());
            workload.changes.push(change.clone());
            // A created row has every value; the stream sequence (the message's, as if
            // the stream held only these) comes last, as in the table.
            let mut row: Vec<Value> = change.values.into_iter().flatten().collect();
            row.push(Value::I64(n as i64 + 1));
            workload.orders.push(row);
            let items: Vec<Vec<Value>> = change
                .children
                .into_iter()
                .flat_map(|group| group.rows)
                .collect();
            workload.items_per_order.push(items.len());
            workload.lineitems.extend(items);
        }
        Ok(workload)
    }

    pub fn rows(&self) -> usize {
        self.orders.len() + self.lineitems.len()
    }
}

fn envelope_for(body: bytes::Bytes) -> Envelope {
    Envelope::new(
        Some(EntityName::parse("order").expect("a valid name")),
        body,
    )
}

/// Publishes every body as nats-api would (an envelope per message), pipelined.
pub async fn prefill(js: &jetstream::Context, bodies: &[bytes::Bytes]) -> anyhow::Result<()> {
    let settings = StreamSettings::default();
    ensure_stream(js, &settings).await?;
    let mut pending = FuturesUnordered::new();
    for body in bodies {
        if pending.len() >= 1_024 {
            pending.next().await.context("an ack")??;
        }
        let envelope = envelope_for(body.clone());
        let subject = subject::message_subject(
            &settings.subject_prefix,
            envelope.entity.as_ref(),
            envelope.message_id,
        );
        let ack = js.publish(subject, envelope.encode().payload).await?;
        pending.push(ack.into_future());
    }
    while let Some(ack) = pending.next().await {
        ack?;
    }
    Ok(())
}

/// A PostgreSQL server as production runs one: fsync and synchronous commits on.
pub fn durable_postgres() -> Postgres {
    Postgres::start_with(PostgresOptions {
        durable: true,
        settings: vec!["track_commit_timestamp=on".into()],
    })
}

/// A fresh database with the TPC-H tables and the status table.
pub fn migrated_database(pg: &Postgres, name: &str) -> anyhow::Result<String> {
    let url = pg.create_database(name);
    let status = std::process::Command::new(binary("tpch-worker"))
        .arg("--migrate-only")
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .status()?;
    if !status.success() {
        bail!("tpch-worker --migrate-only failed");
    }
    Ok(url)
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Rows in `table`; -1 if it cannot be asked. (Diesel, not the `postgres` crate: that one
/// blocks on a runtime of its own, which cannot run inside the harness's.)
pub fn count(conn: &mut diesel::PgConnection, table: &str) -> i64 {
    use diesel::RunQueryDsl;
    diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
        .get_result::<Count>(conn)
        .map(|c| c.n)
        .unwrap_or(-1)
}

pub fn connect(url: &str) -> anyhow::Result<diesel::PgConnection> {
    use diesel::Connection;
    Ok(diesel::PgConnection::establish(url)?)
}

/// [`count`] on either database.
fn count_any(conn: &mut AnyConnection, table: &str) -> i64 {
    use diesel::RunQueryDsl;
    match conn {
        AnyConnection::Postgresql(pg) => count(pg, table),
        AnyConnection::Sqlite(lite) => {
            diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
                .get_result::<Count>(lite)
                .map(|c| c.n)
                .unwrap_or(-1)
        }
    }
}

/// Runs `workers` processes of `worker` (a tpch-worker binary) on a pre-filled stream,
/// writing to the migrated database at `url`; messages/s until every message has its
/// status row.
/// What draining the stream took: messages/s, and the workers' CPU time per message
/// (µs, all replicas together).
#[derive(Debug, Clone, Copy)]
struct Drained {
    per_second: f64,
    cpu_micros: f64,
}

async fn run_workers(
    worker: &Path,
    url: &str,
    workload: &Workload,
    workers: usize,
) -> anyhow::Result<Drained> {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    prefill(&js, &workload.bodies).await?;
    let mut client = sql::connect(url)?;
    let expected = workload.bodies.len() as i64;
    let started = Instant::now();
    let procs: Vec<Proc> = (0..workers)
        .map(|_| {
            let mut env = vec![
                ("NATS_URL", nats.url()),
                ("DATABASE_URL", url.to_owned()),
                ("NOMNOM_WORKER_LISTEN", format!("127.0.0.1:{}", free_port())),
                ("NOMNOM_BATCH_SIZE", BATCH.to_string()),
            ];
            // NOMNOM_WRITERS set for the PostgreSQL runs: SQLite takes one writer only.
            if url.starts_with("sqlite") {
                env.push(("NOMNOM_WRITERS", "1".to_owned()));
            }
            Proc::spawn(worker, &[], &env)
        })
        .collect::<anyhow::Result<_>>()?;
    wait_until("every message persisted", Duration::from_secs(600), || {
        count_any(&mut client, "nomnom_message_status") >= expected
    })
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let mut cpu = 0.0;
    for proc in &procs {
        cpu += proc.cpu_seconds()?;
    }
    if count_any(&mut client, "orders") != workload.orders.len() as i64
        || count_any(&mut client, "lineitem") != workload.lineitems.len() as i64
    {
        bail!("the workers wrote the wrong number of rows");
    }
    Ok(Drained {
        per_second: expected as f64 / elapsed,
        cpu_micros: cpu * 1e6 / expected as f64,
    })
}

/// A fresh SQLite database file in `dir` with the TPC-H tables and the status table.
fn migrated_sqlite(dir: &Path, name: &str) -> anyhow::Result<(std::path::PathBuf, String)> {
    let path = dir.join(format!("{name}.db"));
    let url = format!("sqlite://{}", path.display());
    let status = std::process::Command::new(binary("tpch-worker"))
        .arg("--migrate-only")
        .env("DATABASE_URL", &url)
        .env("NOMNOM_WRITERS", "1")
        .env("RUST_LOG", "warn")
        .status()?;
    if !status.success() {
        bail!("tpch-worker --migrate-only failed on SQLite");
    }
    Ok((path, url))
}

/// SQLite's physical limit for these rows: every row (entity rows and one status row per
/// message) by one prepared single-row INSERT per table, in one transaction, in WAL mode
/// with the worker's `synchronous = NORMAL`. Rows/s.
fn sqlite_baseline(path: &Path, workload: &Workload) -> anyhow::Result<f64> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
    let statuses = status_rows(workload.bodies.len());
    let started = Instant::now();
    let tx = conn.transaction()?;
    for (table, columns, rows) in [
        (
            "orders",
            columns(&tpch_worker::database::ORDER.table),
            &workload.orders,
        ),
        (
            "lineitem",
            columns(&tpch_worker::database::LINEITEM.table),
            &workload.lineitems,
        ),
        (
            "nomnom_message_status",
            "message_id, entity, status, attempts, error, received_at, processed_at, stream_sequence".to_owned(),
            &statuses,
        ),
    ] {
        let width = columns.split(", ").count();
        let placeholders = vec!["?"; width].join(", ");
        let mut statement =
            tx.prepare(&format!("INSERT INTO {table} ({columns}) VALUES ({placeholders})"))?;
        for row in rows {
            statement.execute(rusqlite::params_from_iter(row.iter().map(sqlite_value)))?;
        }
    }
    tx.commit()?;
    Ok((workload.rows() + workload.bodies.len()) as f64 / started.elapsed().as_secs_f64())
}

fn sqlite_value(value: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as Lite;
    match value {
        Value::Null => Lite::Null,
        Value::Bool(b) => Lite::Integer(i64::from(*b)),
        Value::I16(n) => Lite::Integer(i64::from(*n)),
        Value::I32(n) => Lite::Integer(i64::from(*n)),
        Value::I64(n) => Lite::Integer(*n),
        Value::F32(n) => Lite::Real(f64::from(*n)),
        Value::F64(n) => Lite::Real(*n),
        Value::Text(text) => Lite::Text(text.clone()),
    }
}

fn columns(table: &Table) -> String {
    table
        .columns
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn status_rows(count: usize) -> Vec<Vec<Value>> {
    let now = nomnom_runtime::envelope::format_time(chrono::Utc::now());
    (0..count)
        .map(|n| {
            vec![
                Value::Text(uuid::Uuid::now_v7().to_string()),
                Value::Text("order".into()),
                Value::Text("persisted".into()),
                Value::I32(1),
                Value::Null,
                Value::Text(now.clone()),
                Value::Text(now.clone()),
                Value::I64(n as i64 + 1),
            ]
        })
        .collect()
}

/// The physical limit: the same rows (entity rows and one status row per message) by
/// COPY, in one transaction. Rows/s.
fn copy_baseline(url: &str, workload: &Workload) -> anyhow::Result<f64> {
    // The `postgres` crate runs a runtime of its own: give it a thread outside ours.
    std::thread::scope(|scope| {
        scope
            .spawn(|| copy_on_this_thread(url, workload))
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the COPY thread panicked")))
    })
}

fn copy_on_this_thread(url: &str, workload: &Workload) -> anyhow::Result<f64> {
    let mut client = postgres::Client::connect(url, postgres::NoTls)?;
    let statuses = status_rows(workload.bodies.len());
    let started = Instant::now();
    let mut tx = client.transaction()?;
    for (table, rows) in [
        (
            format!("orders ({})", columns(&tpch_worker::database::ORDER.table)),
            &workload.orders,
        ),
        (
            format!("lineitem ({})", columns(&tpch_worker::database::LINEITEM.table)),
            &workload.lineitems,
        ),
        (
            "nomnom_message_status (message_id, entity, status, attempts, error, received_at, processed_at, stream_sequence)".to_owned(),
            &statuses,
        ),
    ] {
        let mut data = Vec::with_capacity(rows.len() * 128);
        for row in rows {
            sql::copy_text_row(&mut data, row);
        }
        let mut writer = tx.copy_in(&format!("COPY {table} FROM STDIN"))?;
        writer.write_all(&data)?;
        writer.finish()?;
    }
    tx.commit()?;
    Ok((workload.rows() + workload.bodies.len()) as f64 / started.elapsed().as_secs_f64())
}

fn records(range: std::ops::Range<usize>) -> Vec<StatusRecord> {
    let now = chrono::Utc::now();
    range
        .map(|n| StatusRecord {
            message_id: uuid::Uuid::now_v7(),
            entity: Some("order".into()),
            status: MessageState::Persisted,
            attempts: 1,
            error: None,
            received_at: now,
            processed_at: now,
            stream_sequence: Some(n as i64 + 1),
        })
        .collect()
}

/// Line items of messages `range`.
fn items_of(workload: &Workload, range: std::ops::Range<usize>) -> &[Vec<Value>] {
    let start: usize = workload.items_per_order[..range.start].iter().sum();
    let len: usize = workload.items_per_order[range].iter().sum();
    &workload.lineitems[start..start + len]
}

/// How entity rows reach PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SqlPath {
    /// What the worker does: COPY into a staging table, then one `INSERT … SELECT`
    /// (batches of [`sql::COPY_MIN_ROWS`] rows or more).
    Worker,
    /// Multi-row `INSERT … VALUES … ON CONFLICT` statements only (the worker's path for
    /// small batches, and its only path before COPY).
    Statements,
}

fn write_rows(
    conn: &mut AnyConnection,
    table: &Table,
    rows: &[Vec<Value>],
    path: SqlPath,
) -> diesel::QueryResult<()> {
    match path {
        SqlPath::Worker => sql::write_rows(conn, table, rows).map(drop),
        SqlPath::Statements => {
            for chunk in rows.chunks(sql::COPY_MIN_ROWS - 1) {
                sql::write_rows(conn, table, chunk)?;
            }
            Ok(())
        }
    }
}

/// Writes messages `range` in one transaction the way the worker does: status rows
/// claimed in one statement, then the entity rows by `path`.
fn write_like_the_worker(
    conn: &mut AnyConnection,
    workload: &Workload,
    range: std::ops::Range<usize>,
    path: SqlPath,
) -> anyhow::Result<()> {
    sql::write_transaction(conn, |conn| -> diesel::QueryResult<()> {
        status::claim(conn, &records(range.clone()))?;
        let orders = &workload.orders[range.clone()];
        write_rows(conn, &tpch_worker::database::ORDER.table, orders, path)?;
        let items = items_of(workload, range);
        write_rows(conn, &tpch_worker::database::LINEITEM.table, items, path)?;
        Ok(())
    })?;
    Ok(())
}

/// The worker's SQL work alone (no NATS, no parsing), 500 messages a transaction.
/// Rows/s, counted as for COPY.
fn sql_path_baseline(url: &str, workload: &Workload, path: SqlPath) -> anyhow::Result<f64> {
    let mut conn = sql::connect(url)?;
    let started = Instant::now();
    let total = workload.bodies.len();
    for start in (0..total).step_by(BATCH) {
        let range = start..(start + BATCH).min(total);
        write_like_the_worker(&mut conn, workload, range, path)?;
    }
    Ok((workload.rows() + total) as f64 / started.elapsed().as_secs_f64())
}

/// The worker's own write function ([`write_batch_with`]: the status claim, the keys'
/// locks and guards, the rows), fed the messages already parsed, 500 a transaction: its
/// SQL work alone, with no NATS and no parsing. `absent` says how rows of keys the
/// database does not hold are written: straight (what the worker does) or upserted (what
/// it did before). Rows/s, counted as for COPY.
fn write_path_baseline(url: &str, workload: &Workload, absent: Absent) -> anyhow::Result<f64> {
    let mut conn = sql::connect(url)?;
    let batches: Vec<Vec<Pending>> = (0..workload.changes.len())
        .step_by(BATCH)
        .map(|start| {
            let range = start..(start + BATCH).min(workload.changes.len());
            records(range.clone())
                .into_iter()
                .zip(&workload.changes[range])
                .enumerate()
                .map(|(index, (record, change))| Pending {
                    index,
                    record,
                    changes: vec![change.clone()],
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    for batch in &batches {
        let written = write_batch_with(&mut conn, batch, 0, absent)?;
        if !written.refused.is_empty() || written.skipped + written.stale > 0 {
            bail!("the write path did not write every message: {written:?}");
        }
    }
    let rate = (workload.rows() + workload.changes.len()) as f64 / started.elapsed().as_secs_f64();
    if count(&mut connect(url)?, "lineitem") != workload.lineitems.len() as i64 {
        bail!("the write path's line items are not all there");
    }
    Ok(rate)
}

/// The naive design: each message in its own transaction (its status row, its order,
/// its line items). Messages/s over the first `messages`.
fn naive_baseline(url: &str, workload: &Workload, messages: usize) -> anyhow::Result<f64> {
    let mut conn = sql::connect(url)?;
    let started = Instant::now();
    for n in 0..messages {
        write_like_the_worker(&mut conn, workload, n..n + 1, SqlPath::Worker)?;
    }
    Ok(messages as f64 / started.elapsed().as_secs_f64())
}

/// Baselines of one run, all in rows/s but the naive one (messages/s).
struct Baselines {
    copy: f64,
    /// The worker's write function, new rows straight, and everything upserted.
    write_straight: f64,
    write_upsert: f64,
    sql_path: f64,
    statements: f64,
    naive: f64,
}

fn baselines(
    pg: &Postgres,
    workload: &Workload,
    naive_messages: usize,
    run: usize,
) -> anyhow::Result<Baselines> {
    let fresh = |name: &str| migrated_database(pg, &format!("{name}_{run}"));
    Ok(Baselines {
        copy: copy_baseline(&fresh("copy")?, workload)?,
        write_straight: write_path_baseline(&fresh("straight")?, workload, Absent::Straight)?,
        write_upsert: write_path_baseline(&fresh("upsert")?, workload, Absent::Upsert)?,
        sql_path: sql_path_baseline(&fresh("sqlpath")?, workload, SqlPath::Worker)?,
        statements: sql_path_baseline(&fresh("statements")?, workload, SqlPath::Statements)?,
        naive: naive_baseline(&fresh("naive")?, workload, naive_messages)?,
    })
}

/// The `--worker-before` build's rows: its rows/s (from `before`, msg/s) against `baseline`
/// (rows/s, and what it is), and this build's msg/s (`after`) against it.
fn before_and_after(
    database: &str,
    (before, after): (f64, f64),
    rows_per_message: f64,
    (baseline, what): (f64, &str),
) -> [Row; 2] {
    let before_rows = before * rows_per_message;
    [
        Row {
            benchmark: format!("3. worker before (--worker-before), 1 replica, {database}"),
            measure: "rows/s vs baseline".into(),
            figure: format!(
                "{} rows/s ({} msg/s)",
                thousands(before_rows),
                thousands(before)
            ),
            baseline: format!("{} rows/s ({what})", thousands(baseline)),
            ratio: format!("{:.2}×", before_rows / baseline),
            target: String::new(),
            verdict: Verdict::Info,
        },
        Row {
            benchmark: format!("3. worker, 1 replica, {database}"),
            measure: "msg/s, this build vs before".into(),
            figure: format!("{} msg/s", thousands(after)),
            baseline: format!("{} msg/s (before)", thousands(before)),
            ratio: format!("{:.2}×", after / before),
            target: String::new(),
            verdict: Verdict::Info,
        },
    ]
}

/// One run's worker figures, messages/s.
#[derive(Default)]
struct WorkerRates {
    /// By replica count, this build.
    by_workers: Vec<f64>,
    /// One replica of the `--worker-before` build, on PostgreSQL.
    before: Option<f64>,
    /// SQLite: bulk insert rows/s, this build's and the before build's messages/s.
    sqlite_bulk: f64,
    sqlite: f64,
    sqlite_before: Option<f64>,
    /// One replica's CPU time per message (µs), this build's and the before build's:
    /// on PostgreSQL and on SQLite.
    cpu: (f64, Option<f64>),
    sqlite_cpu: (f64, Option<f64>),
}

/// A drain's figures as the run lines show them.
fn drained(d: Drained) -> String {
    format!(
        "{} msg/s ({:.1} µs CPU/msg)",
        thousands(d.per_second),
        d.cpu_micros
    )
}

/// The worker's CPU time per message (one replica, µs), with the before build's as its
/// baseline when there is one: the figure that the worker's own work per message
/// decides, whatever the database and the machine's other load do to its pace.
fn cpu_row(database: &str, (after, before): (f64, Option<f64>)) -> Row {
    Row {
        benchmark: format!("3. worker, 1 replica, {database}"),
        measure: "worker CPU per message".into(),
        figure: format!("{after:.1} µs"),
        baseline: before.map_or_else(String::new, |b| format!("{b:.1} µs (before)")),
        ratio: before.map_or_else(String::new, |b| format!("{:.2}×", after / b)),
        target: String::new(),
        verdict: Verdict::Info,
    }
}

/// Measures `after` and `before` back to back, in an order that alternates by run (so
/// that a drift in the machine's load does not favour either).
async fn back_to_back<F, Fut, T>(
    run: usize,
    before: Option<&Path>,
    after: &Path,
    mut measure: F,
) -> anyhow::Result<(T, Option<T>)>
where
    F: FnMut(std::path::PathBuf, &'static str) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let Some(before) = before else {
        return Ok((measure(after.to_owned(), "after").await?, None));
    };
    if run % 2 == 0 {
        let b = measure(before.to_owned(), "before").await?;
        let a = measure(after.to_owned(), "after").await?;
        Ok((a, Some(b)))
    } else {
        let a = measure(after.to_owned(), "after").await?;
        let b = measure(before.to_owned(), "before").await?;
        Ok((a, Some(b)))
    }
}

pub async fn throughput(options: &Options, report: &mut Vec<Row>) -> anyhow::Result<()> {
    let messages = if options.quick { 1_000 } else { 20_000 };
    let naive_messages = if options.quick { 200 } else { 2_000 };
    let worker_counts: &[usize] = if options.quick { &[1, 2] } else { &[1, 2, 4] };
    let workload = Workload::generate(messages)?;
    let rows_per_message = (workload.rows() + messages) as f64 / messages as f64;
    println!(
        "  workload: {messages} orders, {} line items ({rows_per_message:.2} rows per message with its status row)",
        workload.lineitems.len()
    );
    let before = options.worker_before.as_deref();
    if let Some(before) = before {
        println!("  before: {}", before.display());
    }
    let after = binary("tpch-worker");
    let pg = durable_postgres();
    // SQLite files on the file system the harness's temporary files are on, for the
    // worker and the bulk insert alike.
    let sqlite_dir = tempfile::tempdir()?;
    let mut runs = Vec::new();
    let mut rates = Vec::new();
    for run in 0..options.runs {
        // Synchronous database clients: let the runtime know this thread blocks.
        let base = tokio::task::block_in_place(|| baselines(&pg, &workload, naive_messages, run))?;
        let mut line = format!(
            "  run {}: COPY {} rows/s; write function, new rows straight {} rows/s, all upserted {} rows/s; claim + staging upsert {} rows/s; multi-row statements {} rows/s; naive {} msg/s",
            run + 1,
            thousands(base.copy),
            thousands(base.write_straight),
            thousands(base.write_upsert),
            thousands(base.sql_path),
            thousands(base.statements),
            thousands(base.naive)
        );
        let mut rate = WorkerRates::default();
        let (one, one_before) = back_to_back(run, before, &after, |worker, which| {
            let workload = &workload;
            let pg = &pg;
            async move {
                let url = migrated_database(pg, &format!("workers_1_{which}_{run}"))?;
                run_workers(&worker, &url, workload, 1).await
            }
        })
        .await?;
        if let Some(b) = one_before {
            line.push_str(&format!("; 1 worker before {}", drained(b)));
        }
        line.push_str(&format!("; 1 worker(s) {}", drained(one)));
        rate.by_workers.push(one.per_second);
        rate.cpu = (one.cpu_micros, one_before.map(|b| b.cpu_micros));
        rate.before = one_before.map(|b| b.per_second);
        for workers in worker_counts.iter().skip(1) {
            let url = migrated_database(&pg, &format!("workers_{workers}_{run}"))?;
            let r = run_workers(&after, &url, &workload, *workers).await?;
            line.push_str(&format!("; {workers} worker(s) {}", drained(r)));
            rate.by_workers.push(r.per_second);
        }
        println!("{line}");

        let (path, _) = migrated_sqlite(sqlite_dir.path(), &format!("bulk_{run}"))?;
        rate.sqlite_bulk = tokio::task::block_in_place(|| sqlite_baseline(&path, &workload))?;
        let dir = sqlite_dir.path();
        let (lite, lite_before) = back_to_back(run, before, &after, |worker, which| {
            let workload = &workload;
            async move {
                let (_, url) = migrated_sqlite(dir, &format!("worker_{which}_{run}"))?;
                run_workers(&worker, &url, workload, 1).await
            }
        })
        .await?;
        rate.sqlite = lite.per_second;
        rate.sqlite_before = lite_before.map(|b| b.per_second);
        rate.sqlite_cpu = (lite.cpu_micros, lite_before.map(|b| b.cpu_micros));
        let mut line = format!(
            "  run {}, SQLite: bulk insert {} rows/s",
            run + 1,
            thousands(rate.sqlite_bulk)
        );
        if let Some(b) = lite_before {
            line.push_str(&format!("; 1 worker before {}", drained(b)));
        }
        line.push_str(&format!("; 1 worker {}", drained(lite)));
        println!("{line}");
        runs.push(base);
        rates.push(rate);
    }
    let pick = |f: fn(&Baselines) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let (write_straight, write_upsert) = (pick(|b| b.write_straight), pick(|b| b.write_upsert));
    let (copy, sql_path, statements, naive) = (
        pick(|b| b.copy),
        pick(|b| b.sql_path),
        pick(|b| b.statements),
        pick(|b| b.naive),
    );
    let of = |f: &dyn Fn(&WorkerRates) -> f64| median(&rates.iter().map(f).collect::<Vec<_>>());
    let one = of(&|r| r.by_workers[0]);
    let one_rows = one * rows_per_message;
    report.push(Row {
        benchmark: "3. worker, 1 replica, PostgreSQL (durable)".into(),
        measure: "rows/s vs COPY".into(),
        figure: format!("{} rows/s ({} msg/s)", thousands(one_rows), thousands(one)),
        baseline: format!("{} rows/s (COPY)", thousands(copy)),
        ratio: format!("{:.2}×", one_rows / copy),
        target: "≥ 0.5× (issue 22)".into(),
        verdict: Verdict::of(one_rows / copy >= 0.5),
    });
    report.push(Row {
        benchmark: "3. worker, 1 replica, PostgreSQL (durable)".into(),
        measure: "rows/s vs its SQL work alone".into(),
        figure: format!("{} rows/s", thousands(one_rows)),
        baseline: format!(
            "{} rows/s (its write function, parsed batches)",
            thousands(write_straight)
        ),
        ratio: format!("{:.2}×", one_rows / write_straight),
        target: "≥ 0.9× (issue 22)".into(),
        verdict: Verdict::of(one_rows / write_straight >= 0.9),
    });
    let cpu_of = |f: &dyn Fn(&WorkerRates) -> (f64, Option<f64>)| {
        let after = of(&|r| f(r).0);
        let before = before.map(|_| of(&|r| f(r).1.unwrap_or(f64::NAN)));
        (after, before)
    };
    report.push(cpu_row("PostgreSQL", cpu_of(&|r| r.cpu)));
    if before.is_some() {
        let before_one = of(&|r| r.before.unwrap_or(f64::NAN));
        report.extend(before_and_after(
            "PostgreSQL",
            (before_one, one),
            rows_per_message,
            (copy, "COPY"),
        ));
    }
    let bulk = of(&|r| r.sqlite_bulk);
    let lite = of(&|r| r.sqlite);
    let lite_rows = lite * rows_per_message;
    report.push(Row {
        benchmark: "3. worker, 1 replica, SQLite (WAL)".into(),
        measure: "rows/s vs bulk insert".into(),
        figure: format!(
            "{} rows/s ({} msg/s)",
            thousands(lite_rows),
            thousands(lite)
        ),
        baseline: format!("{} rows/s (prepared INSERT, 1 tx)", thousands(bulk)),
        ratio: format!("{:.2}×", lite_rows / bulk),
        target: "≥ 0.5× (issue 22)".into(),
        verdict: Verdict::of(lite_rows / bulk >= 0.5),
    });
    report.push(cpu_row("SQLite", cpu_of(&|r| r.sqlite_cpu)));
    if before.is_some() {
        let lite_before = of(&|r| r.sqlite_before.unwrap_or(f64::NAN));
        report.extend(before_and_after(
            "SQLite",
            (lite_before, lite),
            rows_per_message,
            (bulk, "prepared INSERT, 1 tx"),
        ));
    }
    report.push(Row {
        benchmark: "3. worker, 1 replica".into(),
        measure: "messages/s vs naive".into(),
        figure: format!("{} msg/s", thousands(one)),
        baseline: format!("{} msg/s (a transaction per message)", thousands(naive)),
        ratio: format!("{:.1}×", one / naive),
        target: "≥ 8×".into(),
        verdict: Verdict::of(one / naive >= 8.0),
    });
    report.push(Row {
        benchmark: "3. SQL work alone: the worker's write function".into(),
        measure: "rows/s: new rows straight vs all upserted".into(),
        figure: format!("{} rows/s", thousands(write_straight)),
        baseline: format!("{} rows/s (all upserted)", thousands(write_upsert)),
        ratio: format!("{:.2}×", write_straight / write_upsert),
        target: String::new(),
        verdict: Verdict::Info,
    });
    report.push(Row {
        benchmark: "3. SQL work alone: the worker's write function".into(),
        measure: "rows/s: new rows straight vs plain COPY".into(),
        figure: format!("{} rows/s", thousands(write_straight)),
        baseline: format!("{} rows/s (plain COPY)", thousands(copy)),
        ratio: format!("{:.2}×", write_straight / copy),
        target: String::new(),
        verdict: Verdict::Info,
    });
    report.push(Row {
        benchmark: "3. SQL work alone, 500 messages a transaction".into(),
        measure: "rows/s: claim + COPY + staging upsert, no guard".into(),
        figure: format!("{} rows/s", thousands(sql_path)),
        baseline: format!("{} rows/s (plain COPY)", thousands(copy)),
        ratio: format!("{:.2}×", sql_path / copy),
        target: String::new(),
        verdict: Verdict::Info,
    });
    report.push(Row {
        benchmark: "3. SQL work alone (issue 4: COPY or multi-row?)".into(),
        measure: "rows/s: multi-row VALUES upserts".into(),
        figure: format!("{} rows/s", thousands(statements)),
        baseline: format!("{} rows/s (COPY + staging upsert)", thousands(sql_path)),
        ratio: format!("{:.2}×", statements / sql_path),
        target: String::new(),
        verdict: Verdict::Info,
    });
    for (slot, workers) in worker_counts.iter().enumerate().skip(1) {
        let rate = of(&|r| r.by_workers[slot]);
        report.push(Row {
            benchmark: format!("3. worker, {workers} replicas"),
            measure: "messages/s vs 1 replica".into(),
            figure: format!("{} msg/s", thousands(rate)),
            baseline: format!("{} msg/s", thousands(one)),
            ratio: format!("{:.2}×", rate / one),
            target: "> 1× (issue 4)".into(),
            verdict: Verdict::of(rate > one),
        });
    }
    Ok(())
}
