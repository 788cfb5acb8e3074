//! NATS security end to end: nats-api and the generated worker, each as its own NATS
//! user with only the permissions of `deploy/nats/permissions.conf`, over mutual TLS, run
//! the whole pipeline against a real nats-server configured that way; the server logs no
//! permission violation, and each component is refused what it must not do.
//!
//! Each authentication method (user/password, token, nkey, operator `.creds`, TLS client
//! certificates) is also tested one by one in `runtime/tests/auth.rs`; the connection code
//! is shared, so the worker and nats-api both use what is tested there.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::{Worker, count, eventually, start_api_with};
use nomnom_runtime::NatsConfig;
use nomnom_test_support::{NatsOptions, NatsServer, TlsFiles, workspace_root};
use serde_json::{Value, json};

const API_PASSWORD: &str = "api-s3cret";
const WORKER_PASSWORD: &str = "worker-s3cret";
const ADMIN_PASSWORD: &str = "admin-s3cret";
// nats-server logs "Publish Violation" and "Subscription Violation" (older servers
// "Permissions Violation").
const VIOLATION: &str = " Violation";

/// A server demanding client certificates, with one user per component holding the
/// example permissions verbatim, and an unrestricted admin user for the test's checks.
fn secured_server(tls: &TlsFiles) -> NatsServer {
    let permissions =
        std::fs::read_to_string(workspace_root().join("deploy/nats/permissions.conf"))
            .expect("read deploy/nats/permissions.conf");
    NatsServer::start_with(NatsOptions {
        extra_config: format!(
            "{tls}\n{permissions}\nauthorization {{\n  users: [\n    \
             {{ user: nats-api, password: {API_PASSWORD}, permissions: $NOMNOM_API_PERMISSIONS }}\n    \
             {{ user: worker, password: {WORKER_PASSWORD}, permissions: $NOMNOM_WORKER_PERMISSIONS }}\n    \
             {{ user: admin, password: {ADMIN_PASSWORD} }}\n  ]\n}}\n",
            tls = tls.nats_server_block(),
        ),
        // Small, so one test body goes through the Object Store (the claim-check).
        max_payload: Some(16 * 1024),
        ..Default::default()
    })
}

fn nats_config(nats: &NatsServer, tls: &TlsFiles, user: &str, password: &str) -> NatsConfig {
    NatsConfig {
        url: nats.url(),
        user: Some(user.into()),
        password: Some(password.into()),
        tls_ca: Some(tls.ca.clone()),
        tls_cert: Some(tls.client_cert.clone()),
        tls_key: Some(tls.client_key.clone()),
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

async fn jetstream_as(config: &NatsConfig) -> jetstream::Context {
    let client = config.connect().await.expect("connect");
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(2));
    js
}

async fn stream_len(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut stream) => stream.info().await.unwrap().state.messages,
        Err(_) => 0,
    }
}

#[tokio::test]
async fn components_as_least_privileged_users_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::write(dir.path());
    let nats = secured_server(&tls);
    let database = format!("sqlite://{}", dir.path().join("secure.db").display());

    let api_nats = nats_config(&nats, &tls, "nats-api", API_PASSWORD);
    let api = start_api_with(nats_api::ApiConfig {
        nats: api_nats.clone(),
        database_url: Some(database.clone()),
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::new();
    let post_with_key = |body: Value, key: &'static str| {
        let http = http.clone();
        let api = api.clone();
        async move {
            let mut request = http
                .post(format!("{api}/api/ingest/message/order"))
                .json(&body);
            if !key.is_empty() {
                request = request.header("idempotency-key", key);
            }
            let reply = request.send().await.unwrap();
            assert_eq!(reply.status(), 202, "{}", reply.text().await.unwrap());
            reply.json::<Value>().await.unwrap()["message_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };

    let post = |body: Value| post_with_key(body, "");
    let mut orders = tpch_data::orders(0.001);
    let first = orders.next().unwrap();
    let good = post_with_key(first.clone(), "order-1").await;
    // A retry with the key answers with the original's id (read back from the stream).
    assert_eq!(post_with_key(first, "order-1").await, good);
    let mut large = orders.next().unwrap();
    large["padding"] = json!("x".repeat(40_000));
    let large = post(large).await;
    let mut invalid = orders.next().unwrap();
    invalid["o_totalprice"] = json!("not a price");
    let invalid = post(invalid).await;

    // Before any worker runs, the status endpoint reads the pending message back from the
    // stream (a message get, allowed to nats-api).
    let pending: Value = http
        .get(format!("{api}/api/ingest/status/{good}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pending["status"], "pending", "{pending}");

    let worker = Worker::start_on(
        &nats.url(),
        &database,
        &[
            ("NATS_USER", "worker"),
            ("NATS_PASSWORD", WORKER_PASSWORD),
            ("NATS_TLS_CA", tls.ca.to_str().unwrap()),
            ("NATS_TLS_CERT", tls.client_cert.to_str().unwrap()),
            ("NATS_TLS_KEY", tls.client_key.to_str().unwrap()),
        ],
    );
    worker.wait_ready().await;
    let status = |id: &str| {
        let http = http.clone();
        let url = format!("{api}/api/ingest/status/{id}");
        async move {
            let reply: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            reply["status"].as_str().unwrap_or_default().to_owned()
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done = (
            status(&good).await,
            status(&large).await,
            status(&invalid).await,
        );
        if done
            == (
                "persisted".into(),
                "persisted".into(),
                "dead_lettered".into(),
            )
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pipeline stuck at {done:?}; server log:\n{}",
            nats.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&database, "SELECT count(*) AS n FROM orders"), 2);

    let admin = jetstream_as(&nats_config(&nats, &tls, "admin", ADMIN_PASSWORD)).await;
    assert_eq!(stream_len(&admin, "MESSAGES_DLQ").await, 1);
    assert!(
        !nats.log().contains(VIOLATION),
        "the example permissions must cover everything the pipeline does:\n{}",
        nats.log()
    );

    // nats-api cannot read the stream as a consumer, nor delete it.
    let api_js = jetstream_as(&api_nats).await;
    assert!(
        api_js
            .create_consumer_on_stream(
                jetstream::consumer::pull::Config {
                    durable_name: Some("thief".into()),
                    ..Default::default()
                },
                "MESSAGES",
            )
            .await
            .is_err(),
        "nats-api must not create consumers"
    );
    assert!(api_js.delete_stream("MESSAGES").await.is_err());
    // The worker cannot publish ingest messages nor delete the stream.
    let worker_js = jetstream_as(&nats_config(&nats, &tls, "worker", WORKER_PASSWORD)).await;
    let before = stream_len(&admin, "MESSAGES").await;
    let forged = async {
        worker_js
            .publish("messages.ingest.order.forged", "{}".into())
            .await?
            .await
            .map(drop)
            .map_err(Into::into)
    };
    let forged: Result<(), Box<dyn std::error::Error + Send + Sync>> = forged.await;
    assert!(
        forged.is_err(),
        "the worker must not publish ingest messages"
    );
    assert!(worker_js.delete_stream("MESSAGES").await.is_err());
    assert_eq!(
        stream_len(&admin, "MESSAGES").await,
        before,
        "nothing forged"
    );

    // Each refusal was the server's, by permission.
    assert!(
        eventually(Duration::from_secs(5), || {
            let log = nats.log();
            [
                "$JS.API.CONSUMER.CREATE.MESSAGES.thief",
                "$JS.API.STREAM.DELETE.MESSAGES",
                "messages.ingest.order.forged",
            ]
            .iter()
            .all(|subject| {
                log.lines()
                    .any(|line| line.contains(VIOLATION) && line.contains(subject))
            })
        })
        .await,
        "expected permission violations in the server log:\n{}",
        nats.log_tail()
    );

    // Without a client certificate, neither gets in, even with the right password.
    let no_certificate = NatsConfig {
        tls_cert: None,
        tls_key: None,
        ..api_nats.clone()
    };
    assert!(no_certificate.connect().await.is_err());
    drop(worker);
}
