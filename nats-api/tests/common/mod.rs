//! Shared set-up for nats-api tests: a real nats-server and the app in-process.
#![allow(dead_code)]

use std::time::Duration;

use async_nats::jetstream;
use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Request, StatusCode},
};
use http_body_util::BodyExt;
use nats_api::{ApiConfig, AppState, app};
use nomnom_runtime::{Envelope, NatsConfig};
use nomnom_test_support::NatsServer;
use tower::ServiceExt;

pub struct Harness {
    pub nats: NatsServer,
    pub state: AppState,
    pub app: Router,
    pub js: jetstream::Context,
}

pub fn test_config(nats: &NatsServer) -> ApiConfig {
    ApiConfig {
        nats: NatsConfig {
            url: nats.url(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            ..Default::default()
        },
        publish_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(NatsServer::start(), |_| {}).await
    }

    pub async fn start_with(nats: NatsServer, adjust: impl FnOnce(&mut ApiConfig)) -> Self {
        let mut config = test_config(&nats);
        adjust(&mut config);
        let state = AppState::start(config).await.expect("nats-api starts");
        assert!(
            state.wait_stream_ready(Duration::from_secs(10)).await,
            "stream was not set up; nats-server log:\n{}",
            nats.log_tail()
        );
        let client = NatsConfig {
            url: nats.url(),
            ..Default::default()
        }
        .connect()
        .await
        .unwrap();
        Self {
            app: app(state.clone()),
            state,
            js: jetstream::new(client),
            nats,
        }
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        send(&self.app, request).await
    }

    pub async fn post(&self, uri: &str, body: &str) -> Reply {
        self.send(post(uri, body)).await
    }

    /// Number of messages in the stream.
    pub async fn stream_len(&self) -> u64 {
        let mut stream = self.js.get_stream("MESSAGES").await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    /// The envelope stored at `sequence`.
    pub async fn stored(&self, sequence: u64) -> (String, Envelope) {
        let stream = self.js.get_stream("MESSAGES").await.unwrap();
        let message = stream.get_raw_message(sequence).await.unwrap();
        let envelope = Envelope::decode(message.payload).unwrap();
        (message.subject.to_string(), envelope)
    }
}

pub fn post(uri: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: serde_json::Value,
    pub text: String,
}

impl Reply {
    pub fn error_code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
    pub fn error_message(&self) -> &str {
        self.json["error"]["message"].as_str().unwrap_or("")
    }
    pub fn message_id(&self) -> uuid::Uuid {
        self.json["message_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no message_id in {}", self.text))
    }
}

pub async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Reply {
        status,
        headers,
        json,
        text,
    }
}

/// Polls `check` every 20 ms until it is true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The nats-api binary as a process, with a clean environment but for `PATH`, on
/// `nats_url`, listening on 127.0.0.1:`port`; the caller adds its settings and spawns it.
pub fn nats_api_process(nats_url: &str, port: u16) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_nats-api"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NATS_URL", nats_url)
        .env("NOMNOM_LISTEN", format!("127.0.0.1:{port}"));
    command
}
