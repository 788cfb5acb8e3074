//! What /ready reports and how the worker waits out a database outage: the health
//! state, the endpoints, and the worker's database connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::WorkerError;
use crate::db::{self, AnyConnection};

/// What /ready reports. Served from the start, so /health answers while the worker
/// still waits for NATS or the database.
#[derive(Debug, Default)]
pub(super) struct Health {
    database_ok: AtomicBool,
    /// Migrated, and the stream and consumer set up: fetching.
    started: AtomicBool,
    /// The NATS connection, once there is one.
    nats: OnceLock<async_nats::Client>,
    /// The stream and durable consumer, once set up: /metrics reports their depth and lag.
    consumer: OnceLock<(String, String)>,
}

impl Health {
    pub(super) fn database_ok(&self) -> bool {
        self.database_ok.load(Ordering::Acquire)
    }

    pub(super) fn set_database_ok(&self, ok: bool) {
        self.database_ok.store(ok, Ordering::Release);
    }

    pub(super) fn set_started(&self, stream: &str, consumer: &str) {
        let _ = self.consumer.set((stream.to_owned(), consumer.to_owned()));
        self.started.store(true, Ordering::Release);
    }

    pub(super) fn set_nats(&self, client: async_nats::Client) {
        let _ = self.nats.set(client);
    }

    fn nats_connected(&self) -> bool {
        self.nats.get().is_some_and(|client| {
            client.connection_state() == async_nats::connection::State::Connected
        })
    }
}

/// Serves /health, /ready and /metrics on `listen`, in the background.
pub(super) async fn serve(
    listen: std::net::SocketAddr,
    health: Arc<Health>,
) -> Result<(), WorkerError> {
    use axum::{Json, Router, routing::get};
    let metrics = crate::metrics::install();
    register_counters();
    let scraped = Arc::clone(&health);
    let ready = move || {
        let health = Arc::clone(&health);
        async move { readiness(&health) }
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
                let health = Arc::clone(&scraped);
                async move {
                    observe(&health).await;
                    metrics.render()
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| WorkerError::Listen {
            addr: listen,
            source,
        })?;
    tracing::info!(address = %listen, "health endpoints listening");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}

/// The worker's counters, at zero from the start: an alert on `increase()` then sees the
/// first dead letter, and a dashboard shows 0 rather than no data.
fn register_counters() {
    for name in [
        "worker_messages_consumed_total",
        "worker_messages_persisted_total",
        "worker_messages_skipped_total",
        "worker_messages_stale_total",
        "worker_redeliveries_total",
        "worker_naks_total",
        "worker_dlq_messages_total",
        "worker_dlq_publish_failures_total",
    ] {
        // increment(0) registers without touching a count another worker in this
        // process (tests) may have made.
        metrics::counter!(name).increment(0);
    }
}

/// What a scrape reports besides the counters: readiness, the database, and the stream's
/// depth and the consumer's lag as JetStream tells them now (every replica reports the
/// same consumer; dashboards and alerts take the max). A JetStream that does not answer
/// within two seconds leaves the last values.
async fn observe(health: &Health) {
    let (code, _) = readiness(health);
    metrics::gauge!("worker_ready").set(f64::from(u8::from(code.is_success())));
    metrics::gauge!("worker_database_up").set(f64::from(u8::from(health.database_ok())));
    let (Some(client), Some((stream, consumer))) = (health.nats.get(), health.consumer.get())
    else {
        return;
    };
    if !health.nats_connected() {
        return;
    }
    let js = async_nats::jetstream::new(client.clone());
    let ask = async {
        let mut handle = js.get_stream(stream).await.ok()?;
        let messages = handle.info().await.ok()?.state.messages;
        let info = handle.consumer_info(consumer).await.ok()?;
        Some((messages, info.num_pending, info.num_ack_pending))
    };
    if let Ok(Some((messages, pending, ack_pending))) =
        tokio::time::timeout(Duration::from_secs(2), ask).await
    {
        let (s, c) = (stream.clone(), consumer.clone());
        metrics::gauge!("worker_stream_messages", "stream" => s.clone()).set(messages as f64);
        metrics::gauge!("worker_consumer_pending_messages", "stream" => s.clone(), "consumer" => c.clone())
            .set(pending as f64);
        metrics::gauge!("worker_consumer_ack_pending_messages", "stream" => s, "consumer" => c)
            .set(ack_pending as f64);
    }
}

/// /ready: 200 when the worker has started and both NATS and the database are
/// reachable, else 503.
fn readiness(health: &Health) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    use axum::http::StatusCode;
    let nats = health.nats_connected();
    let database = health.database_ok();
    let started = health.started.load(Ordering::Acquire);
    let code = if nats && database && started {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(serde_json::json!({
            "status": if code == StatusCode::OK { "ready" } else { "unavailable" },
            "nats": if nats { "connected" } else { "disconnected" },
            "database": if database { "ok" } else { "unavailable" },
            "worker": if started { "fetching" } else { "starting" },
        })),
    )
}

/// The worker's database connections (one per writer), used from blocking tasks.
#[derive(Clone)]
pub(super) struct Database {
    conns: Arc<[Mutex<AnyConnection>]>,
    url: String,
}

impl Database {
    /// `conns`: at least one.
    pub(super) fn new(conns: Vec<AnyConnection>, url: String) -> Self {
        assert!(!conns.is_empty(), "a worker needs a database connection");
        Self {
            conns: conns.into_iter().map(Mutex::new).collect(),
            url,
        }
    }

    /// Runs `work` off the async runtime on a connection no one else is using, or, if
    /// all are in use, on the first once it is free; `Err` if the task panicked. With no
    /// more writes in flight than connections, each write has a connection of its own.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut AnyConnection) -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let conns = Arc::clone(&self.conns);
        tokio::task::spawn_blocking(move || {
            let mut conn = conns
                .iter()
                .find_map(|conn| match conn.try_lock() {
                    Ok(conn) => Some(conn),
                    Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                    Err(std::sync::TryLockError::WouldBlock) => None,
                })
                .unwrap_or_else(|| {
                    conns[0]
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                });
            work(&mut conn)
        })
        .await
    }

    /// Waits until the database answers again, reconnecting if the connection broke.
    pub(super) async fn wait_until_reachable(&self, health: &Health) {
        let mut delay = Duration::from_millis(250);
        loop {
            // Every connection: one left broken would fail the next write on it.
            let url = self.url.clone();
            let conns = Arc::clone(&self.conns);
            let ok = tokio::task::spawn_blocking(move || {
                conns.iter().all(|conn| {
                    let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    if db::ping(&mut conn).is_ok() {
                        return true;
                    }
                    match db::connect(&url) {
                        Ok(fresh) => {
                            *conn = fresh;
                            db::ping(&mut conn).is_ok()
                        }
                        Err(_) => false,
                    }
                })
            })
            .await
            .unwrap_or(false);
            if ok {
                tracing::info!("database reachable again; resuming");
                health.set_database_ok(true);
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}
