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
}

impl Health {
    pub(super) fn database_ok(&self) -> bool {
        self.database_ok.load(Ordering::Acquire)
    }

    pub(super) fn set_database_ok(&self, ok: bool) {
        self.database_ok.store(ok, Ordering::Release);
    }

    pub(super) fn set_started(&self) {
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
                async move { metrics.render() }
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

/// The worker's one database connection, used from blocking tasks.
#[derive(Clone)]
pub(super) struct Database {
    conn: Arc<Mutex<AnyConnection>>,
    url: String,
}

impl Database {
    pub(super) fn new(conn: AnyConnection, url: String) -> Self {
        Self {
            conn: Arc::new(Mutex::new(conn)),
            url,
        }
    }

    /// Runs `work` on the connection off the async runtime; `Err` if the task panicked.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut AnyConnection) -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut conn)
        })
        .await
    }

    /// Waits until the database answers again, reconnecting if the connection broke.
    pub(super) async fn wait_until_reachable(&self, health: &Health) {
        let mut delay = Duration::from_millis(250);
        loop {
            let url = self.url.clone();
            let ok = self
                .run(move |conn| {
                    if db::ping(conn).is_ok() {
                        return true;
                    }
                    match db::connect(&url) {
                        Ok(fresh) => {
                            *conn = fresh;
                            db::ping(conn).is_ok()
                        }
                        Err(_) => false,
                    }
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
