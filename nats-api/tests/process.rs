//! The nats-api binary as a process: graceful shutdown and slow clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nomnom_test_support::{NatsServer, TcpProxy, free_port};

struct Api {
    child: Child,
    port: u16,
}

impl Api {
    fn start(nats: &NatsServer, extra_env: &[(&str, &str)]) -> Api {
        Api::start_on(&nats.url(), extra_env)
    }

    fn start_on(nats_url: &str, extra_env: &[(&str, &str)]) -> Api {
        let api = Api::spawn(nats_url, extra_env);
        let deadline = Instant::now() + Duration::from_secs(15);
        while api.get("/ready").0 != 200 {
            assert!(Instant::now() < deadline, "nats-api did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        api
    }

    /// Starts nats-api and returns once it answers /health (ready or not).
    fn start_unready(nats_url: &str, extra_env: &[(&str, &str)]) -> Api {
        let api = Api::spawn(nats_url, extra_env);
        let deadline = Instant::now() + Duration::from_secs(15);
        while api.get("/health").0 != 200 {
            assert!(Instant::now() < deadline, "nats-api did not answer /health");
            std::thread::sleep(Duration::from_millis(20));
        }
        api
    }

    fn spawn(nats_url: &str, extra_env: &[(&str, &str)]) -> Api {
        let port = free_port();
        let mut command = common::nats_api_process(nats_url, port);
        command
            .env("NOMNOM_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn nats-api");
        Api { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A blocking GET with a raw socket (status, body); (0, "") if nothing answers.
    fn get(&self, path: &str) -> (u16, String) {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, String::new());
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Api {
    /// SIGTERM, then the exit status and how long it took; fails the test if the process
    /// still runs after `within`.
    fn terminate(&mut self, within: Duration) -> (std::process::ExitStatus, Duration) {
        let sent = Instant::now();
        self.signal("TERM");
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let took = sent.elapsed();
                eprintln!("nats-api exited {status} {took:?} after SIGTERM");
                return (status, took);
            }
            assert!(
                sent.elapsed() < within,
                "nats-api still running {within:?} after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// How long nats-api may take to exit after SIGTERM with nothing in flight: far under
/// its grace period (25 s by default).
const EXIT_WITHIN: Duration = Duration::from_secs(3);

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_requests_in_flight_loses_nothing_that_got_a_202() {
    let nats = NatsServer::start();
    let mut api = Api::start(&nats, &[]);
    let client = reqwest::Client::new();
    let url = api.url("/api/ingest/message");
    let answered = Arc::new(AtomicUsize::new(0));

    // 16 clients post in a loop until the server stops answering.
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let (client, url, answered) = (client.clone(), url.clone(), Arc::clone(&answered));
        tasks.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            for n in 0..2000 {
                let reply = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(format!("{{\"worker\":{worker},\"n\":{n}}}"))
                    .send()
                    .await;
                match reply {
                    Ok(r) if r.status() == 202 => {
                        let json: serde_json::Value = r.json().await.unwrap();
                        accepted.push(json["message_id"].as_str().unwrap().to_owned());
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => panic!("unexpected answer during shutdown: {}", r.status()),
                    Err(_) => break, // connection refused or closed: the server is stopping
                }
            }
            accepted
        }));
    }
    // Signal once the server is busy answering.
    let deadline = Instant::now() + Duration::from_secs(20);
    while answered.load(Ordering::Relaxed) < 200 {
        assert!(
            Instant::now() < deadline,
            "nats-api answered too few requests"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    api.signal("TERM");
    let mut accepted = Vec::new();
    for task in tasks {
        accepted.extend(task.await.unwrap());
    }
    let exit = api.child.wait().unwrap();
    assert!(exit.success(), "nats-api exits 0 after SIGTERM: {exit:?}");
    assert!(
        accepted.len() >= 200,
        "requests were accepted before the signal"
    );

    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream_no_info("MESSAGES").await.unwrap();
    for id in &accepted {
        stream
            .get_last_raw_message_by_subject(&format!("messages.ingest._.{id}"))
            .await
            .unwrap_or_else(|e| panic!("message {id} got a 202 but is not in the stream: {e}"));
    }
    let mut info = js.get_stream("MESSAGES").await.unwrap();
    let stored = info.info().await.unwrap().state.messages;
    assert!(stored >= accepted.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_while_others_are_served() {
    let nats = NatsServer::start();
    let api = Api::start(
        &nats,
        &[
            ("NOMNOM_HEADER_READ_TIMEOUT", "500ms"),
            ("NOMNOM_BODY_READ_TIMEOUT", "500ms"),
        ],
    );

    // Drip-fed headers: the server closes the connection after the header timeout.
    let mut slow_headers = TcpStream::connect(("127.0.0.1", api.port)).unwrap();
    slow_headers
        .write_all(b"POST /api/ingest/message HTTP/1.1\r\nHost: x\r\n")
        .unwrap();

    // Complete headers, drip-fed body: 408 after the body timeout.
    let mut slow_body = TcpStream::connect(("127.0.0.1", api.port)).unwrap();
    slow_body
        .write_all(
            b"POST /api/ingest/message HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":",
        )
        .unwrap();

    // Meanwhile a normal client is served at once.
    let reply = reqwest::Client::new()
        .post(api.url("/api/ingest/message"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202);

    let started = Instant::now();
    slow_headers
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buffer = Vec::new();
    let _ = slow_headers.read_to_end(&mut buffer);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "header timeout enforced"
    );
    let text = String::from_utf8_lossy(&buffer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );

    slow_body
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buffer = Vec::new();
    let _ = slow_body.read_to_end(&mut buffer);
    let text = String::from_utf8_lossy(&buffer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
}

#[test]
fn bad_configuration_fails_at_start_with_one_clear_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_nats-api"))
        .env_clear()
        .env("NOMNOM_SUBJECT_PREFIX", "elsewhere")
        .env("NATS_URL", "nats://127.0.0.1:1")
        .env("NOMNOM_LOG_FORMAT", "text")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not captured by the stream subjects"),
        "{stderr}"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_nats-api"))
        .env_clear()
        .args(["--stream-max-age", "soon"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("use a number followed by ms, s, m, h or d"),
        "{stderr}"
    );
}

async fn stream_len(nats: &NatsServer) -> u64 {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut stream = js.get_stream("MESSAGES").await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_killed_between_publish_and_reply_is_retried_into_one_message() {
    let nats = NatsServer::start();
    // The API reaches NATS through a proxy that can hold what NATS sends back.
    let proxy = TcpProxy::start(nats.port());
    let mut api = Api::start_on(&format!("nats://127.0.0.1:{}", proxy.port()), &[]);
    proxy.hold_downstream();
    let body = r#"{"o_orderkey": 7, "note": "retried after a crash"}"#;
    let post = |url: String| {
        reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .header("idempotency-key", "order-7-attempt")
            .body(body)
            .send()
    };
    let first = tokio::spawn(post(api.url("/api/ingest/message/order")));

    // The message is stored; the stored acknowledgement is held, so no reply yet. Kill
    // the API there.
    let deadline = Instant::now() + Duration::from_secs(15);
    while stream_len(&nats).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the message never reached the stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    api.child.kill().unwrap();
    api.child.wait().unwrap();
    proxy.sever();
    let first = first.await.unwrap();
    assert!(first.is_err(), "the client got no answer: {first:?}");

    // The client retries with the same key against a restarted API: the same message,
    // acknowledged as a duplicate, and still one message in the stream.
    let api = Api::start(&nats, &[]);
    let retry = post(api.url("/api/ingest/message/order")).await.unwrap();
    assert_eq!(retry.status(), 202);
    let reply: serde_json::Value = retry.json().await.unwrap();
    assert_eq!(reply["duplicate"], true, "{reply}");
    assert_eq!(stream_len(&nats).await, 1);
    let id = reply["message_id"].as_str().unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stored = js
        .get_stream_no_info("MESSAGES")
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&format!("messages.ingest.order.{id}"))
        .await
        .expect("the stored message has the id the retry was given");
    let envelope = nomnom_runtime::Envelope::decode(stored.payload).unwrap();
    assert_eq!(envelope.message_id.to_string(), id);
}

#[tokio::test]
async fn a_key_revoked_in_the_file_is_refused_after_sighup_and_nothing_it_sent_is_stored() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("api-keys");
    std::fs::write(&keys, "# ingest clients\nkey-old\nkey-kept\n").unwrap();
    let api = Api::start(&nats, &[("NOMNOM_API_KEYS_FILE", keys.to_str().unwrap())]);
    let client = reqwest::Client::new();
    let post = |key: Option<&'static str>| {
        let mut request = client
            .post(api.url("/api/ingest/message"))
            .header("content-type", "application/json")
            .body("{\"n\":1}");
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(Some("key-old")).await, 202);
    assert_eq!(post(Some("key-kept")).await, 202);
    assert_eq!(post(None).await, 401, "missing key");
    assert_eq!(post(Some("key-new")).await, 401, "not yet issued");

    // Revoke one key and issue another, then tell the running process.
    std::fs::write(&keys, "key-kept\nkey-new\n").unwrap();
    api.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while post(Some("key-new")).await != 202 {
        assert!(Instant::now() < deadline, "the new key never took effect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(post(Some("key-old")).await, 401, "revoked");
    assert_eq!(post(Some("key-kept")).await, 202);
    assert_eq!(
        stream_len(&nats).await,
        4,
        "only the requests that got a 202 were published"
    );
}

/// `nats-api healthcheck [path]`, as the image's HEALTHCHECK and compose run it.
fn healthcheck(listen_port: u16, path: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nats-api"))
        .env_clear()
        .env("NOMNOM_LISTEN", format!("0.0.0.0:{listen_port}"))
        .args(["healthcheck", path])
        .output()
        .expect("run nats-api healthcheck")
}

#[test]
fn the_healthcheck_subcommand_probes_the_running_api_on_its_listen_port() {
    let mut nats = NatsServer::start();
    let api = Api::start(&nats, &[]);
    for path in ["/health", "/ready"] {
        let probe = healthcheck(api.port, path);
        assert!(probe.status.success(), "{path}: {probe:?}");
    }
    // NATS gone: alive, but not ready.
    nats.kill();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let probe = healthcheck(api.port, "/ready");
        if !probe.status.success() {
            let stderr = String::from_utf8_lossy(&probe.stderr);
            assert!(stderr.starts_with("unhealthy: "), "{stderr}");
            assert!(stderr.contains("503"), "{stderr}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/ready never failed without NATS"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(healthcheck(api.port, "/health").status.success());
    // Nothing listening: a clear failure, not a hang.
    let nobody = healthcheck(free_port(), "/health");
    assert_eq!(nobody.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&nobody.stderr).contains("cannot connect"),
        "{nobody:?}"
    );
}

/// The environment of a running process, from /proc.
fn environment_of(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// mimalloc reads its options only at start: nats-api runs itself again in place (the
/// same process id) with the one that gives freed memory back; an operator's value wins.
#[test]
fn nats_api_runs_with_the_allocator_option_that_returns_memory() {
    let nats = NatsServer::start();
    for (given, running) in [
        (None, "MIMALLOC_ARENA_EAGER_COMMIT=0"),
        (Some("1"), "MIMALLOC_ARENA_EAGER_COMMIT=1"),
    ] {
        let env: Vec<(&str, &str)> = given
            .map(|value| ("MIMALLOC_ARENA_EAGER_COMMIT", value))
            .into_iter()
            .collect();
        let api = Api::start(&nats, &env);
        let environment = environment_of(api.child.id());
        assert!(
            environment.contains(&running.to_owned()),
            "{running} in {environment:?}"
        );
        assert!(
            environment.contains(&"NOMNOM_LOG_FORMAT=text".to_owned()),
            "the rest of the environment is kept: {environment:?}"
        );
        assert_eq!(
            api.get("/health").0,
            200,
            "the process answering is the one started"
        );
    }
}

/// Resident memory of a process, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// The memory of a burst of large bodies goes back to the system while nats-api then
/// sits idle: mimalloc purges what it freed only when it is called again, so without
/// the purge thread these bodies would stay resident until the next requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_of_a_burst_of_large_bodies_goes_back_while_nats_api_is_idle() {
    const BODIES: usize = 12;
    const BODY_BYTES: usize = 6 * 1024 * 1024;
    const MIB: u64 = 1024;
    let nats = NatsServer::start();
    let budget = (512u64 << 20).to_string();
    let api = Api::start(&nats, &[("NOMNOM_BODY_BUDGET_BYTES", &budget)]);
    let pid = api.child.id();
    let idle = rss_kib(pid);
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(BODY_BYTES - 10));
    let http = reqwest::Client::new();
    let posts: Vec<_> = (0..BODIES)
        .map(|_| {
            let request = http
                .post(api.url("/api/ingest/message/order"))
                .header("content-type", "application/json")
                .body(body.clone());
            tokio::spawn(request.send())
        })
        .collect();
    for post in posts {
        let reply = post.await.unwrap().expect("a response");
        assert_eq!(reply.status(), 202, "{:?}", reply.text().await);
    }
    let after_burst = rss_kib(pid);
    eprintln!("nats-api RSS: idle {idle} KiB, after the burst {after_burst} KiB");
    assert!(
        after_burst > idle + 40 * MIB,
        "the burst ({BODIES} x {BODY_BYTES} B) should have raised RSS from {idle} KiB, not to {after_burst} KiB"
    );
    // Within seconds: the purge delay (1 s) and the purge thread's interval (1 s), with
    // room for a loaded machine. Without the thread, the next purge waits for nats-api's
    // own next allocations (about 10 s here: its periodic work).
    let burst_over = Instant::now();
    let deadline = burst_over + Duration::from_secs(6);
    loop {
        let now = rss_kib(pid);
        if now < idle + 24 * MIB {
            eprintln!(
                "back to {now} KiB {:?} after the burst",
                burst_over.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RSS still {now} KiB 6 s after the burst (idle {idle} KiB, after the burst {after_burst} KiB)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn sigterm_with_nats_down_at_start_exits_zero() {
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    let mut api = Api::start_unready(&nowhere, &[]);
    let (code, body) = api.get("/ready");
    assert_eq!(code, 503, "{body}");
    let (status, _) = api.terminate(EXIT_WITHIN);
    assert!(status.success(), "{status}");
}

#[test]
fn sigterm_after_nats_was_lost_exits_zero() {
    let mut nats = NatsServer::start();
    let mut api = Api::start(&nats, &[]);
    nats.stop();
    let deadline = Instant::now() + Duration::from_secs(15);
    while api.get("/ready").0 != 503 {
        assert!(Instant::now() < deadline, "/ready never said NATS was lost");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, _) = api.terminate(EXIT_WITHIN);
    assert!(status.success(), "{status}");
}

/// Publishes stored by JetStream whose acknowledgements never come back (held by a
/// proxy) when SIGTERM arrives: each request gets a clear 503 at the publish timeout, the
/// process exits 0 right after (long before its grace period), and a retry with the same
/// keys stores nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_publishes_in_flight_and_nats_unresponsive_exits_zero_and_loses_nothing() {
    const REQUESTS: u64 = 10;
    let nats = NatsServer::start();
    let proxy = TcpProxy::start(nats.port());
    let mut api = Api::start_on(
        &format!("nats://127.0.0.1:{}", proxy.port()),
        &[("NOMNOM_PUBLISH_TIMEOUT", "2s")],
    );
    let _ = stream_len(&nats).await;
    proxy.hold_downstream();
    let post = |url: String, n: u64| {
        reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .header("idempotency-key", format!("in-flight-{n}"))
            .body(format!(r#"{{"o_orderkey": {n}}}"#))
            .send()
    };
    let requests: Vec<_> = (0..REQUESTS)
        .map(|n| tokio::spawn(post(api.url("/api/ingest/message/order"), n)))
        .collect();
    // All stored, none answered: every request is in flight.
    let deadline = Instant::now() + Duration::from_secs(15);
    while stream_len(&nats).await < REQUESTS {
        assert!(
            Instant::now() < deadline,
            "the messages never reached the stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, took) = tokio::task::spawn_blocking(move || {
        let result = api.terminate(Duration::from_secs(10));
        drop(api);
        result
    })
    .await
    .unwrap();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
    for request in requests {
        let reply = request
            .await
            .unwrap()
            .expect("an answer, not a cut connection");
        assert_eq!(reply.status(), 503);
        let body = reply.text().await.unwrap();
        assert!(body.contains("error"), "{body}");
    }
    drop(proxy);
    // Retried with their keys: stored once each.
    let api = Api::start(&nats, &[]);
    for n in 0..REQUESTS {
        let reply = post(api.url("/api/ingest/message/order"), n).await.unwrap();
        assert_eq!(reply.status(), 202);
    }
    assert_eq!(stream_len(&nats).await, REQUESTS);
}
