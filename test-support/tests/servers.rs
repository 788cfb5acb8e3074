//! The test servers behave as the tests built on them assume: they answer when started,
//! refuse when stopped, come back on the same ports with their data, and apply options.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nomnom_test_support::{NatsOptions, NatsServer, Postgres, free_port};

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// Raw HTTP/1.0 GET on loopback (1.0 so the body is not chunked): status and body, or
/// None if nothing answered in `timeout`.
fn get(port: u16, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_owned()))
}

fn get_json(port: u16, path: &str) -> serde_json::Value {
    let (status, body) = get(port, path, Duration::from_secs(5)).expect("monitoring answers");
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// Just enough of the NATS client protocol to make JetStream API requests.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    info: String,
}

impl Client {
    fn connect(port: u16, connect_options: &str) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to nats");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut client = Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            info: String::new(),
        };
        client.info = client.line();
        assert!(client.info.starts_with("INFO "), "{}", client.info);
        write!(
            client.writer,
            "CONNECT {{\"verbose\":false,\"pedantic\":false{connect_options}}}\r\nPING\r\n"
        )
        .unwrap();
        client
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read from nats");
        line.trim_end().to_owned()
    }

    /// The server's answer to the CONNECT + PING sent by `connect`: "PONG" or an -ERR.
    fn handshake(&mut self) -> String {
        self.line()
    }

    /// Request/reply; returns the reply payload.
    fn request(&mut self, subject: &str, payload: &str) -> String {
        write!(
            self.writer,
            "SUB _INBOX.test 1\r\nPUB {subject} _INBOX.test {}\r\n{payload}\r\n",
            payload.len()
        )
        .unwrap();
        loop {
            let line = self.line();
            if line == "PING" {
                self.writer.write_all(b"PONG\r\n").unwrap();
            } else if let Some(header) = line.strip_prefix("MSG _INBOX.test ") {
                let len: usize = header.rsplit(' ').next().unwrap().parse().unwrap();
                let mut body = vec![0; len + 2];
                self.reader.read_exact(&mut body).unwrap();
                write!(self.writer, "UNSUB 1\r\n").unwrap();
                return String::from_utf8_lossy(&body[..len]).into_owned();
            } else {
                assert!(!line.starts_with("-ERR"), "nats error: {line}");
            }
        }
    }
}

fn stream_messages(nats: &NatsServer) -> u64 {
    let mut client = Client::connect(nats.port(), "");
    let info: serde_json::Value =
        serde_json::from_str(&client.request("$JS.API.STREAM.INFO.ORDERS", "")).unwrap();
    info["state"]["messages"]
        .as_u64()
        .unwrap_or_else(|| panic!("stream info: {info}"))
}

#[test]
fn nats_starts_healthy_with_jetstream_on_its_own_ports() {
    let nats = NatsServer::start();
    let other = NatsServer::start();
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{}", nats.port()));
    assert_eq!(
        nats.monitor_url(),
        format!("http://127.0.0.1:{}", nats.monitor_port())
    );
    let ports = [
        nats.port(),
        nats.monitor_port(),
        other.port(),
        other.monitor_port(),
    ];
    for (i, port) in ports.iter().enumerate() {
        assert!(!ports[i + 1..].contains(port), "ports collide: {ports:?}");
    }

    let client = Client::connect(nats.port(), "");
    assert!(
        client.info.contains("\"jetstream\":true"),
        "{}",
        client.info
    );

    let (status, _) = get(
        nats.monitor_port(),
        "/healthz?js-enabled-only=true",
        Duration::from_secs(5),
    )
    .expect("healthz answers");
    assert_eq!(status, 200);

    let jsz = get_json(nats.monitor_port(), "/jsz");
    let store = jsz["config"]["store_dir"].as_str().expect("jsz config");
    assert!(
        store.starts_with(nats.store_dir().to_str().unwrap()),
        "{store} is under {}",
        nats.store_dir().display()
    );
    assert!(nats.store_dir().is_dir());
}

#[test]
fn nats_restart_keeps_ports_and_jetstream_data_after_stop_and_kill() {
    let mut nats = NatsServer::start();
    let (port, monitor_port) = (nats.port(), nats.monitor_port());
    let mut client = Client::connect(port, "");
    let created = client.request(
        "$JS.API.STREAM.CREATE.ORDERS",
        r#"{"name":"ORDERS","subjects":["orders.>"],"storage":"file"}"#,
    );
    assert!(created.contains("\"type\":\"io.nats.jetstream.api.v1.stream_create_response\""));
    assert!(!created.contains("\"error\""), "{created}");
    let ack = client.request("orders.1", "first");
    assert!(ack.contains("\"seq\":1"), "{ack}");
    drop(client);

    nats.stop();
    assert!(!nats.is_running());
    assert!(!accepts(port), "a stopped server refuses connections");
    assert!(!accepts(monitor_port));

    nats.restart();
    assert!(nats.is_running());
    assert_eq!((nats.port(), nats.monitor_port()), (port, monitor_port));
    assert_eq!(
        stream_messages(&nats),
        1,
        "JetStream data survives a restart"
    );

    let ack = Client::connect(port, "").request("orders.2", "second");
    assert!(ack.contains("\"seq\":2"), "{ack}");
    nats.kill();
    assert!(!nats.is_running());
    assert!(!accepts(port), "a killed server refuses connections");

    nats.restart();
    assert_eq!(nats.port(), port);
    assert_eq!(stream_messages(&nats), 2, "JetStream data survives a kill");
}

#[test]
fn nats_pause_holds_answers_until_resume() {
    let mut nats = NatsServer::start();
    let health = "/healthz?js-enabled-only=true";

    nats.pause();
    assert!(nats.is_running(), "a paused server is still running");
    assert_eq!(
        get(nats.monitor_port(), health, Duration::from_millis(300)),
        None,
        "a paused server answers nothing"
    );

    nats.resume();
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(nats.monitor_port(), health, Duration::from_secs(1)).map(|(s, _)| s) != Some(200) {
        assert!(Instant::now() < deadline, "no answer after resume");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Stopping a paused server must not wait out the SIGKILL fallback.
    nats.pause();
    let started = Instant::now();
    nats.stop();
    assert!(!nats.is_running());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn nats_options_reach_the_server() {
    let nats = NatsServer::start_with(NatsOptions {
        max_payload: Some(65_536),
        max_file_store: Some(64 << 20),
        extra_config: "authorization { token: \"s3cret\" }".into(),
    });
    let varz = get_json(nats.monitor_port(), "/varz");
    assert_eq!(varz["max_payload"], 65_536);
    let jsz = get_json(nats.monitor_port(), "/jsz");
    assert_eq!(jsz["config"]["max_storage"], 64 << 20);

    let mut anonymous = Client::connect(nats.port(), "");
    let refused = anonymous.handshake();
    assert!(refused.contains("Authorization Violation"), "{refused}");
    let mut with_token = Client::connect(nats.port(), ",\"auth_token\":\"s3cret\"");
    assert_eq!(with_token.handshake(), "PONG");
}

#[test]
fn nats_startup_failure_panics_with_the_reason() {
    let failed = std::panic::catch_unwind(|| {
        NatsServer::start_with(NatsOptions {
            extra_config: "no_such_option_here: 1".into(),
            ..Default::default()
        })
    })
    .expect_err("a bad config fails the start");
    let message = failed.downcast_ref::<String>().expect("a formatted panic");
    assert!(message.contains("exited during startup"), "{message}");
    assert!(
        message.contains("no_such_option_here"),
        "the log says why: {message}"
    );
}

#[test]
fn free_ports_are_bindable_distinct_reserved_and_outside_the_ephemeral_range() {
    let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
    let distinct: std::collections::HashSet<_> = ports.iter().collect();
    assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    for &port in &ports {
        // Outgoing connections and port-0 binds take ports from 32768 up; ours never clash.
        assert!((20_000..32_768).contains(&port), "{port}");
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
        // Another test process would find the port locked (flock locks are per open file,
        // so a second open in this process stands in for it).
        let file = std::fs::File::open(
            std::env::temp_dir()
                .join("nomnom-test-ports")
                .join(port.to_string()),
        )
        .expect("a reservation file");
        assert!(
            rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err(),
            "port {port} is not reserved"
        );
    }
}

#[test]
fn postgres_runs_sql_in_its_own_databases() {
    let pg = Postgres::start();
    assert_eq!(
        pg.url(),
        format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port())
    );
    assert_eq!(pg.psql("postgres", "SELECT 1"), "1");

    let url = pg.create_database("orders");
    assert_eq!(
        url,
        format!("postgres://postgres@127.0.0.1:{}/orders", pg.port())
    );
    pg.psql(
        "orders",
        "CREATE TABLE t (id int PRIMARY KEY, name text); INSERT INTO t VALUES (1, 'a'), (2, 'b')",
    );
    assert_eq!(
        pg.psql("orders", "SELECT id, name FROM t ORDER BY id"),
        "1|a\n2|b"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_tables WHERE tablename = 't'"
        ),
        "0",
        "each database is separate"
    );

    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pg.psql("orders", "SELECT * FROM missing")
    }))
    .expect_err("bad SQL panics");
    let message = failed.downcast_ref::<String>().expect("a formatted panic");
    assert!(
        message.contains("relation \"missing\" does not exist"),
        "{message}"
    );
}

#[test]
fn postgres_restart_keeps_port_and_data_after_stop_and_kill() {
    let mut pg = Postgres::start();
    let port = pg.port();
    pg.create_database("kept");
    pg.psql(
        "kept",
        "CREATE TABLE t (n int); INSERT INTO t VALUES (40), (1)",
    );

    pg.restart();
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("kept", "SELECT sum(n) FROM t"), "41");

    // A session busy in a query while the postmaster is killed: its backend outlives
    // the postmaster for a moment, and the restart must wait it out.
    // Commits are asynchronous (synchronous_commit=off): a checkpoint makes this one
    // survive the kill. (One -c string would be one transaction, checkpointed first.)
    pg.psql("kept", "INSERT INTO t VALUES (1)");
    pg.psql("kept", "CHECKPOINT");
    let mut session = Command::new("psql")
        .args(["-X", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "kept", "-c", "SELECT pg_sleep(60)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run psql");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'",
    ) != "1"
    {
        assert!(Instant::now() < deadline, "the session never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    pg.kill();
    assert!(!pg.is_running());
    assert!(!accepts(port), "a killed server refuses connections");

    pg.restart();
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("kept", "SELECT sum(n) FROM t"), "42");
    let _ = session.kill();
    let _ = session.wait();

    pg.stop();
    assert!(!pg.is_running());
    assert!(!accepts(port), "a stopped server refuses connections");
}
