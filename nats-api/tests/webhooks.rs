//! nats-api as a webhook receiver, tested as a sender meets it: the real binary with its
//! flags, real HTTP, a real nats-server. Signatures (GitHub, Standard Webhooks, Stripe,
//! a GitLab token), rotated secrets, replayed timestamps, routing and idempotency by
//! header, form-encoded bodies and captured headers; every refused request is checked to
//! have published nothing.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use nomnom_runtime::Envelope;
use nomnom_test_support::{NatsServer, free_port};
use serde_json::Value;
use sha2::Sha256;

/// A nats-api process; killed when dropped.
struct Api {
    child: Child,
    port: u16,
    nats: NatsServer,
    http: reqwest::Client,
}

impl Api {
    /// Starts nats-api with `args` and `env` over the tests' defaults, on a fresh
    /// nats-server; returns once it is ready.
    async fn start(args: &[&str], env: &[(&str, &str)]) -> Api {
        let nats = NatsServer::start();
        let port = free_port();
        let child = common::nats_api_process(&nats.url(), port)
            .args(args)
            .env("NOMNOM_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nats-api");
        let mut api = Api {
            child,
            port,
            nats,
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(reply) = api.http.get(api.url("/ready")).send().await
                && reply.status() == 200
            {
                return api;
            }
            if let Some(status) = api.child.try_wait().unwrap() {
                panic!("nats-api exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "nats-api did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// POSTs `body` to `path` with `headers`; (status, answer).
    async fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
        let mut request = self.http.post(self.url(path)).body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let reply = request.send().await.unwrap();
        let status = reply.status().as_u16();
        (status, reply.json().await.unwrap_or(Value::Null))
    }

    /// The stored messages: (subject, envelope), in stream order.
    async fn stored(&self) -> Vec<(String, Envelope)> {
        let js = async_nats::jetstream::new(async_nats::connect(self.nats.url()).await.unwrap());
        let mut stream = js.get_stream("MESSAGES").await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        let mut messages = Vec::new();
        for sequence in state.first_sequence..=state.last_sequence {
            if state.messages == 0 {
                break;
            }
            let message = stream.get_raw_message(sequence).await.unwrap();
            messages.push((
                message.subject.to_string(),
                Envelope::decode(message.payload).unwrap(),
            ));
        }
        messages
    }

    /// The bodies stored, as text.
    async fn stored_bodies(&self) -> Vec<String> {
        self.stored()
            .await
            .into_iter()
            .map(|(_, envelope)| match envelope.body {
                nomnom_runtime::Body::Inline(bytes) => String::from_utf8(bytes.to_vec()).unwrap(),
                other => panic!("unexpected body {other:?}"),
            })
            .collect()
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// GitHub's `X-Hub-Signature-256` of `body`.
fn github_signature(secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(hmac_sha256(secret.as_bytes(), &[body]))
    )
}

/// Standard Webhooks' `webhook-signature` of `body` (secret `whsec_<base64>`).
fn standard_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = BASE64.decode(secret.trim_start_matches("whsec_")).unwrap();
    let ts = timestamp.to_string();
    let mac = hmac_sha256(&key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    format!("v1,{}", BASE64.encode(mac))
}

/// Stripe's `Stripe-Signature` of `body`.
fn stripe_signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mac = hmac_sha256(secret.as_bytes(), &[ts.as_bytes(), b".", body]);
    format!("t={ts},v1={}", hex::encode(mac))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn error_message(answer: &Value) -> &str {
    answer["error"]["message"].as_str().unwrap_or("")
}

const BODY: &[u8] = br#"{"action":"created","sender":{"id":1}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_signatures_are_checked_over_the_raw_body_and_bearer_keys_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("github-secrets");
    std::fs::write(
        &secrets,
        "# current and next\nfirst-secret\n\nsecond-secret\n",
    )
    .unwrap();
    let rule = format!("scheme=github,secrets-file={}", secrets.display());
    let api = Api::start(&["--webhook", &rule], &[("NOMNOM_API_KEYS", "ops-key")]).await;
    let path = "/api/ingest/message/star";

    // Refused: no signature, a wrong secret, another body's signature, a malformed
    // header, a wrong API key.
    let (status, answer) = api.post(path, &[], BODY).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_signature");
    assert!(
        error_message(&answer).contains("X-Hub-Signature-256 header is missing"),
        "{answer}"
    );
    let wrong = github_signature("not-the-secret", BODY);
    let (status, answer) = api
        .post(path, &[("X-Hub-Signature-256", &wrong)], BODY)
        .await;
    assert_eq!(status, 401);
    assert!(
        error_message(&answer).contains("does not match the body"),
        "{answer}"
    );
    let other_body = github_signature("first-secret", b"{}");
    assert_eq!(
        api.post(path, &[("X-Hub-Signature-256", &other_body)], BODY)
            .await
            .0,
        401,
        "a signature is over the body it came with"
    );
    let (status, answer) = api
        .post(path, &[("X-Hub-Signature-256", "sha1=abc")], BODY)
        .await;
    assert_eq!(status, 401);
    assert!(
        error_message(&answer).contains("sha256=<64 hex digits>"),
        "{answer}"
    );
    let (status, _) = api
        .post(path, &[("Authorization", "Bearer wrong-key")], BODY)
        .await;
    assert_eq!(status, 401);
    assert!(
        api.stored().await.is_empty(),
        "nothing refused is published"
    );

    // Accepted: each secret of the file, and an API key without a signature.
    for secret in ["first-secret", "second-secret"] {
        let signature = github_signature(secret, BODY);
        let (status, answer) = api
            .post(path, &[("X-Hub-Signature-256", &signature)], BODY)
            .await;
        assert_eq!(status, 202, "{secret}: {answer}");
    }
    let (status, _) = api
        .post(
            path,
            &[("Authorization", "Bearer ops-key")],
            br#"{"from":"ops"}"#,
        )
        .await;
    assert_eq!(status, 202, "bearer keys keep working");
    // Batches are verified over their whole body too.
    let batch = b"{\"n\":1}\n{\"n\":2}\n";
    let (status, _) = api.post("/api/ingest/batch/star", &[], batch).await;
    assert_eq!(status, 401);
    let signature = github_signature("second-secret", batch);
    let (status, answer) = api
        .post(
            "/api/ingest/batch/star",
            &[
                ("X-Hub-Signature-256", &signature),
                ("Content-Type", "application/x-ndjson"),
            ],
            batch,
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    // Status lookups still need the key.
    let status = api
        .http
        .get(api.url("/api/ingest/status?idempotency_key=x"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    let bodies = api.stored_bodies().await;
    assert_eq!(
        bodies,
        [
            String::from_utf8(BODY.to_vec()).unwrap(),
            String::from_utf8(BODY.to_vec()).unwrap(),
            r#"{"from":"ops"}"#.to_owned(),
            r#"{"n":1}"#.to_owned(),
            r#"{"n":2}"#.to_owned()
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secrets_file_is_used_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::write(&secrets, "old-secret\n").unwrap();
    let rule = format!("scheme=github,secrets-file={}", secrets.display());
    let api = Api::start(&["--webhook", &rule], &[]).await;
    let path = "/api/ingest/message/star";
    let signed = |secret: &str| github_signature(secret, BODY);
    let post = |secret: &'static str| {
        let signature = signed(secret);
        let api = &api;
        async move {
            api.post(path, &[("X-Hub-Signature-256", &signature)], BODY)
                .await
                .0
        }
    };
    assert_eq!(post("old-secret").await, 202);
    assert_eq!(post("new-secret").await, 401);
    let mut accepted = 1;

    // Rotation, step 1: both secrets valid while the sender changes over.
    std::fs::write(&secrets, "old-secret\nnew-secret\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match post("new-secret").await {
            202 => break,
            401 => assert!(
                Instant::now() < deadline,
                "the new secret was never picked up"
            ),
            other => panic!("answered {other}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    accepted += 1;
    assert_eq!(post("old-secret").await, 202, "the old secret still works");
    accepted += 1;

    // Step 2: the old secret removed.
    std::fs::write(&secrets, "new-secret\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match post("old-secret").await {
            401 => break,
            202 => {
                accepted += 1;
                assert!(
                    Instant::now() < deadline,
                    "the old secret was never dropped"
                );
            }
            other => panic!("answered {other}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(post("new-secret").await, 202);
    accepted += 1;

    // A file that cannot be read keeps the secrets in use.
    std::fs::remove_file(&secrets).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await; // two polls of the file
    assert_eq!(post("new-secret").await, 202);
    accepted += 1;
    assert_eq!(api.stored().await.len(), accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_refuse_replayed_timestamps_and_redeliveries_collapse() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let api = Api::start(
        &[
            "--webhook",
            "scheme=standard-webhooks,secrets-env=WEBHOOK_SECRETS,tolerance=5m",
            "--idempotency-header",
            "webhook-id",
        ],
        &[(
            "WEBHOOK_SECRETS",
            &format!("whsec_b2xkIHNlY3JldA==,{SECRET}"),
        )],
    )
    .await;
    let path = "/api/ingest/message/invoice";
    let send = |id: &'static str, timestamp: i64, signature: String| {
        let api = &api;
        async move {
            let ts = timestamp.to_string();
            api.post(
                path,
                &[
                    ("webhook-id", id),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", &signature),
                ],
                BODY,
            )
            .await
        }
    };
    let t = now();
    let (status, first) = send("msg_1", t, standard_signature(SECRET, "msg_1", t, BODY)).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["duplicate"], false);

    // The sender retries the same delivery: one message.
    let (status, again) = send("msg_1", t, standard_signature(SECRET, "msg_1", t, BODY)).await;
    assert_eq!(status, 202);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["message_id"], first["message_id"]);

    // A captured delivery replayed later, signature intact: refused by its timestamp.
    let old = t - 600;
    let (status, answer) = send("msg_2", old, standard_signature(SECRET, "msg_2", old, BODY)).await;
    assert_eq!(status, 401, "{answer}");
    assert!(error_message(&answer).contains("tolerance"), "{answer}");
    let future = t + 600;
    let (status, _) = send(
        "msg_3",
        future,
        standard_signature(SECRET, "msg_3", future, BODY),
    )
    .await;
    assert_eq!(status, 401, "timestamps from the future too");
    // A replay with a fresh timestamp no longer matches the signature.
    let (status, _) = send("msg_2", t, standard_signature(SECRET, "msg_2", old, BODY)).await;
    assert_eq!(status, 401);
    // Signed with another secret, or with the id changed.
    let (status, _) = send(
        "msg_4",
        t,
        standard_signature("whsec_c29tZW9uZSBlbHNl", "msg_4", t, BODY),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = send("msg_5", t, standard_signature(SECRET, "msg_4", t, BODY)).await;
    assert_eq!(status, 401);

    // Several signatures (the sender rotating): one valid one is enough.
    let both = format!(
        "v1,Zm9yZ2Vk {}",
        standard_signature("whsec_b2xkIHNlY3JldA==", "msg_6", t, BODY)
    );
    let (status, answer) = send("msg_6", t, both).await;
    assert_eq!(status, 202, "{answer}");

    let stored = api.stored().await;
    assert_eq!(stored.len(), 2, "msg_1 once and msg_6");
    assert_eq!(
        stored[0].1.idempotency_key.as_ref().unwrap().as_str(),
        "msg_1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_signatures_and_their_tolerance() {
    const SECRET: &str = "whsec_stripe_test_secret";
    let api = Api::start(
        &[
            "--webhook",
            "scheme=stripe,route=stripe,secrets-env=STRIPE_SECRET,tolerance=1m",
        ],
        &[("STRIPE_SECRET", SECRET)],
    )
    .await;
    let path = "/api/ingest/message/stripe";
    let t = now();
    let good = stripe_signature(SECRET, t, BODY);
    let (status, answer) = api.post(path, &[("Stripe-Signature", &good)], BODY).await;
    assert_eq!(status, 202, "{answer}");
    // Stripe lists several v1 signatures while a secret rolls: any one may match.
    let rolled = format!(
        "{},v1={}",
        stripe_signature("whsec_old", t, BODY),
        hex::encode([0u8; 32])
    );
    assert_eq!(
        api.post(path, &[("Stripe-Signature", &rolled)], BODY)
            .await
            .0,
        401
    );
    let mixed = format!("{good},v1={}", hex::encode([0u8; 32]));
    assert_eq!(
        api.post(path, &[("Stripe-Signature", &mixed)], BODY)
            .await
            .0,
        202
    );

    let old = stripe_signature(SECRET, t - 120, BODY);
    let (status, answer) = api.post(path, &[("Stripe-Signature", &old)], BODY).await;
    assert_eq!(status, 401);
    assert!(
        error_message(&answer).contains("over the 60 s tolerance"),
        "{answer}"
    );
    let (status, answer) = api
        .post(path, &[("Stripe-Signature", "v1=abcd")], BODY)
        .await;
    assert_eq!(status, 401);
    assert!(
        error_message(&answer).contains("t=<unix seconds>"),
        "{answer}"
    );
    // The rule covers its route only; without API keys other routes stay open.
    assert_eq!(
        api.post("/api/ingest/message/order", &[], BODY).await.0,
        202
    );
    assert_eq!(api.stored().await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_tokens_with_events_routed_by_header() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "gitlab-token-1\n").unwrap();
    let rule = format!(
        "scheme=token,header=X-Gitlab-Token,secrets-file={}",
        tokens.display()
    );
    let api = Api::start(
        &[
            "--webhook",
            &rule,
            "--entity-header",
            "X-Gitlab-Event",
            "--entity-map",
            "Push Hook=push,System Hook=system_hook",
            "--capture-header",
            "X-Gitlab-Event",
        ],
        &[],
    )
    .await;
    let path = "/api/ingest/message";
    let (status, answer) = api
        .post(path, &[("X-Gitlab-Event", "Push Hook")], BODY)
        .await;
    assert_eq!(status, 401);
    assert!(
        error_message(&answer).contains("x-gitlab-token header is missing"),
        "{answer}"
    );
    let (status, answer) = api
        .post(
            path,
            &[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "guess")],
            BODY,
        )
        .await;
    assert_eq!(status, 401);
    assert!(
        error_message(&answer).contains("not hold a configured token"),
        "{answer}"
    );
    for event in ["Push Hook", "System Hook"] {
        let (status, answer) = api
            .post(
                path,
                &[
                    ("X-Gitlab-Event", event),
                    ("X-Gitlab-Token", "gitlab-token-1"),
                ],
                BODY,
            )
            .await;
        assert_eq!(status, 202, "{event}: {answer}");
    }
    let stored = api.stored().await;
    assert_eq!(stored.len(), 2);
    assert!(
        stored[0].0.starts_with("messages.ingest.push."),
        "{}",
        stored[0].0
    );
    assert!(
        stored[1].0.starts_with("messages.ingest.system_hook."),
        "{}",
        stored[1].0
    );
    assert_eq!(stored[1].1.headers["x-gitlab-event"], "System Hook");
    assert!(
        !stored[1].1.headers.contains_key("x-gitlab-token"),
        "the token never reaches the stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_routed_and_deliveries_deduplicated_by_header() {
    let api = Api::start(
        &[
            "--entity-header",
            "X-GitHub-Event",
            "--entity-map",
            "System Hook=system_hook",
            "--idempotency-header",
            "X-GitHub-Delivery",
            "--idempotency-header",
            "Idempotency-Key",
        ],
        &[],
    )
    .await;
    let path = "/api/ingest/message";
    let delivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
    let headers = [
        ("X-GitHub-Event", "issues"),
        ("X-GitHub-Delivery", delivery),
    ];
    let (status, first) = api.post(path, &headers, BODY).await;
    assert_eq!(status, 202, "{first}");
    // GitHub redelivers with the same delivery id: the same message, stored once.
    let (status, again) = api.post(path, &headers, BODY).await;
    assert_eq!(status, 202);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["message_id"], first["message_id"]);
    // The key's status lookup finds it by the delivery id.
    let status: Value = api
        .http
        .get(api.url("/api/ingest/status"))
        .query(&[("idempotency_key", delivery)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["message_id"], first["message_id"], "{status}");

    let (status, _) = api
        .post(path, &[("X-GitHub-Event", "System Hook")], BODY)
        .await;
    assert_eq!(status, 202);
    // The second idempotency header is read when the first is absent.
    let (status, _) = api
        .post(
            path,
            &[("X-GitHub-Event", "star"), ("Idempotency-Key", "client-1")],
            BODY,
        )
        .await;
    assert_eq!(status, 202);
    // A value that is no route and not mapped says how to map it.
    let (status, answer) = api
        .post(path, &[("X-GitHub-Event", "Merge Request Hook")], BODY)
        .await;
    assert_eq!(status, 400);
    assert!(
        error_message(&answer).contains("--entity-map 'Merge Request Hook=<route>'"),
        "{answer}"
    );
    // The URL and the header must agree; X-Entity is no longer read.
    let (status, answer) = api
        .post(
            &format!("{path}/push"),
            &[("X-GitHub-Event", "issues")],
            BODY,
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        error_message(&answer).contains("x-github-event header names \"issues\""),
        "{answer}"
    );
    let (status, _) = api.post(path, &[("X-Entity", "order")], BODY).await;
    assert_eq!(status, 202);
    let (status, answer) = api
        .post(path, &[("X-GitHub-Delivery", "has space")], BODY)
        .await;
    assert_eq!(status, 400);
    assert!(
        error_message(&answer).contains("x-github-delivery"),
        "{answer}"
    );

    let subjects: Vec<String> = api.stored().await.into_iter().map(|(s, _)| s).collect();
    let prefixes: Vec<&str> = subjects
        .iter()
        .map(|s| s.rsplit_once('.').unwrap().0)
        .collect();
    assert_eq!(
        prefixes,
        [
            "messages.ingest.issues",
            "messages.ingest.system_hook",
            "messages.ingest.star",
            "messages.ingest._"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_encoded_deliveries_are_unwrapped_and_other_types_named() {
    let api = Api::start(
        &["--webhook", "scheme=github,secrets-env=SECRET"],
        &[("SECRET", "s3cret")],
    )
    .await;
    let path = "/api/ingest/message/push";
    let form = "application/x-www-form-urlencoded";
    let json = r#"{"ref":"refs/heads/main","note":"a+b & c=d"}"#;
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", json)
        .finish();
    // GitHub signs the form body as sent.
    let signature = github_signature("s3cret", body.as_bytes());
    let (status, answer) = api
        .post(
            path,
            &[("Content-Type", form), ("X-Hub-Signature-256", &signature)],
            body.as_bytes(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    // A signature of the unwrapped JSON is not one of the body sent.
    let inner = github_signature("s3cret", json.as_bytes());
    let (status, _) = api
        .post(
            path,
            &[("Content-Type", form), ("X-Hub-Signature-256", &inner)],
            body.as_bytes(),
        )
        .await;
    assert_eq!(status, 401);

    let signed = |body: &[u8]| github_signature("s3cret", body);
    // `curl -d '{…}'` labels JSON as a form: still JSON.
    let (status, _) = api
        .post(
            path,
            &[
                ("Content-Type", form),
                ("X-Hub-Signature-256", &signed(BODY)),
            ],
            BODY,
        )
        .await;
    assert_eq!(status, 202);
    let no_payload = b"event=push&ref=main";
    let (status, answer) = api
        .post(
            path,
            &[
                ("Content-Type", form),
                ("X-Hub-Signature-256", &signed(no_payload)),
            ],
            no_payload,
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["code"], "invalid_form");
    assert!(
        error_message(&answer).contains("without a payload field"),
        "{answer}"
    );
    let bad_payload = b"payload=%7Bnope";
    let (status, answer) = api
        .post(
            path,
            &[
                ("Content-Type", form),
                ("X-Hub-Signature-256", &signed(bad_payload)),
            ],
            bad_payload,
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        error_message(&answer).contains("the form's payload field"),
        "{answer}"
    );
    let xml = b"<push/>";
    let (status, answer) = api
        .post(
            path,
            &[
                ("Content-Type", "application/xml; charset=utf-8"),
                ("X-Hub-Signature-256", &signed(xml)),
            ],
            xml,
        )
        .await;
    assert_eq!(status, 415);
    assert_eq!(answer["error"]["code"], "unsupported_content_type");
    assert!(
        error_message(&answer).contains("sent as application/xml; charset=utf-8"),
        "{answer}"
    );
    assert_eq!(
        api.stored_bodies().await,
        [json.to_owned(), String::from_utf8(BODY.to_vec()).unwrap()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allow_listed_headers_reach_the_stream() {
    let api = Api::start(
        &["--capture-header", "X-GitHub-Event,X-GitHub-Delivery"],
        &[],
    )
    .await;
    let (status, _) = api
        .post(
            "/api/ingest/message/push",
            &[
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", "d-1"),
                ("Authorization", "Bearer secret"),
                ("Cookie", "session=secret"),
                ("X-Hub-Signature-256", "sha256=00"),
                ("User-Agent", "GitHub-Hookshot/abc"),
            ],
            BODY,
        )
        .await;
    assert_eq!(status, 202);
    let stored = api.stored().await;
    let expected = BTreeMap::from([
        ("x-github-delivery".to_owned(), "d-1".to_owned()),
        ("x-github-event".to_owned(), "push".to_owned()),
    ]);
    assert_eq!(stored[0].1.headers, expected);

    // Credentials cannot be captured: refused at start, with the flag to fix.
    for name in ["Authorization", "Cookie", "Proxy-Authorization"] {
        let output = Command::new(env!("CARGO_BIN_EXE_nats-api"))
            .args(["--capture-header", name])
            .env("NOMNOM_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("NATS_URL", api.nats.url())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}");
        assert!(
            stderr.contains("would copy credentials into every message"),
            "{name}: {stderr}"
        );
    }
}
