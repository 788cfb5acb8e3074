//! The test servers behave as the tests built on them assume.

use std::net::TcpStream;
use std::time::Duration;

use nomnom_test_support::{NatsOptions, NatsServer, Postgres};

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

fn jsz(nats: &NatsServer) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", nats.monitor_port())).unwrap();
    write!(
        stream,
        "GET /jsz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn nats_starts_stops_and_restarts_on_the_same_port() {
    let mut nats = NatsServer::start();
    assert!(accepts(nats.port()));
    assert!(jsz(&nats).contains("\"config\""), "JetStream is enabled");
    assert!(nats.url().ends_with(&nats.port().to_string()));

    nats.stop();
    assert!(!nats.is_running());
    assert!(
        !accepts(nats.port()),
        "a stopped server refuses connections"
    );

    let port = nats.port();
    nats.restart();
    assert_eq!(nats.port(), port);
    assert!(accepts(port));

    nats.kill();
    assert!(!accepts(port));
}

#[test]
fn nats_options_reach_the_server() {
    let nats = NatsServer::start_with(NatsOptions {
        max_payload: Some(65_536),
        ..Default::default()
    });
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", nats.monitor_port())).unwrap();
    write!(
        stream,
        "GET /varz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    assert!(text.contains("\"max_payload\": 65536"), "{text}");
}

#[test]
fn postgres_runs_sql_and_keeps_data_across_a_restart() {
    let mut pg = Postgres::start();
    assert_eq!(pg.psql("postgres", "SELECT 1"), "1");
    let url = pg.create_database("kept");
    assert!(url.ends_with("/kept"));
    pg.psql(
        "kept",
        "CREATE TABLE t (n int); INSERT INTO t VALUES (41), (1)",
    );

    pg.restart();
    assert_eq!(pg.psql("kept", "SELECT sum(n) FROM t"), "42");

    pg.stop();
    assert!(!pg.is_running());
    assert!(!accepts(pg.port()));
}
