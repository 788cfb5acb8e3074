//! Hostile input, end to end: nats-api, real nats-server, the TPC-H worker process and
//! PostgreSQL. Each body gets its HTTP answer (a 4xx saying what is wrong, or 202), and
//! afterwards every 202 is persisted exactly once or dead-lettered with a reason naming
//! the field, while nothing refused with a 4xx reached the stream.

mod common;

use std::time::Duration;

use common::{Worker, count, dlq_len, start_api_with, wait_for};
use diesel::{Connection, PgConnection, RunQueryDsl, sql_types::Text};
use nomnom_test_support::{NatsServer, Postgres};
use serde_json::{Value, json};

/// The limit set on the API in this test: over the server's 1 MiB max_payload, so a body
/// at the limit travels through the Object Store.
const MAX_BODY: usize = 2 * 1024 * 1024;

enum Expect {
    /// Refused by the API with this status and these words in the message.
    Refused(u16, &'static str),
    /// Accepted, then persisted.
    Persisted,
    /// Accepted, then dead-lettered with these words in the error.
    DeadLettered(&'static str),
}

#[derive(diesel::QueryableByName)]
struct StatusRow {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    error: Option<String>,
}

fn status_of(url: &str, id: &str) -> Option<StatusRow> {
    let mut conn = PgConnection::establish(url).ok()?;
    diesel::sql_query(format!(
        "SELECT status, error FROM nomnom_message_status WHERE message_id = '{id}'"
    ))
    .get_result(&mut conn)
    .ok()
}

fn order(key: i64) -> Value {
    let mut order = tpch_data::orders(0.002).next().unwrap();
    order["o_orderkey"] = json!(key);
    for item in order["lineitems"].as_array_mut().unwrap() {
        item["l_orderkey"] = json!(key);
    }
    order
}

fn with(key: i64, change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut order = order(key);
    change(&mut order);
    serde_json::to_vec(&order).unwrap()
}

/// A valid order padded with an unknown field to exactly `size` bytes.
fn padded(key: i64, size: usize) -> Vec<u8> {
    let mut order = order(key);
    order["padding"] = json!("");
    let base = serde_json::to_vec(&order).unwrap().len();
    order["padding"] = json!("x".repeat(size - base));
    let body = serde_json::to_vec(&order).unwrap();
    assert_eq!(body.len(), size);
    body
}

fn cases() -> Vec<(&'static str, Vec<u8>, Expect)> {
    use Expect::*;
    let valid = serde_json::to_vec(&order(1)).unwrap();
    let mut cut = valid.clone();
    cut.truncate(valid.len() / 2);
    vec![
        ("malformed JSON", cut, Refused(400, "not valid JSON")),
        (
            "invalid UTF-8",
            b"{\"o_orderkey\": 2, \"o_comment\": \"\xff\xfe\"}".to_vec(),
            Refused(400, "not valid UTF-8"),
        ),
        (
            "a raw NUL byte",
            b"{\"o_orderkey\": 3}\x00".to_vec(),
            Refused(400, "not valid JSON"),
        ),
        (
            "100,000 levels of nesting",
            "[".repeat(100_000).into_bytes(),
            Refused(400, "deeper than 127 levels"),
        ),
        (
            "a number out of range (1e400)",
            with(5, |o| o["o_totalprice"] = json!("RAW")).replace_value(b"\"RAW\"", b"1e400"),
            Refused(400, "number out of range"),
        ),
        ("an empty body", Vec::new(), Refused(400, "empty")),
        (
            "one byte over the API limit",
            padded(6, MAX_BODY + 1),
            Refused(413, "limit"),
        ),
        ("a valid order", valid, Persisted),
        (
            "unknown fields (ignored)",
            with(10, |o| {
                o["surprise"] = json!({"nested": [1, 2, 3]});
                o["lineitems"][0]["extra"] = json!(true);
            }),
            Persisted,
        ),
        (
            "unicode text (emoji, right-to-left, combining marks)",
            with(11, |o| o["o_comment"] = json!("🦀 שלום e\u{301}")),
            Persisted,
        ),
        (
            "a body exactly at the API limit (over max_payload: Object Store)",
            padded(12, MAX_BODY),
            Persisted,
        ),
        (
            "a NUL character inside a string",
            with(20, |o| o["o_comment"] = json!("nul\u{0}inside")),
            DeadLettered("/o_comment: contains a NUL character"),
        ),
        (
            "an integer over 2^64",
            with(21, |o| o["o_custkey"] = json!("RAW"))
                .replace_value(b"\"RAW\"", b"18446744073709551616"),
            DeadLettered("/o_custkey"),
        ),
        (
            "a decimal with 1,000 digits",
            with(22, |o| o["o_totalprice"] = json!("1".repeat(1000))),
            DeadLettered("/o_totalprice"),
        ),
        (
            "a string where an integer belongs",
            with(23, |o| o["o_custkey"] = json!("forty-two")),
            DeadLettered("/o_custkey"),
        ),
        (
            "an impossible date",
            with(24, |o| o["o_orderdate"] = json!("1996-02-30")),
            DeadLettered("/o_orderdate"),
        ),
        (
            "a wrong type deep in a line item",
            with(25, |o| {
                o["lineitems"][1]["l_quantity"] = json!({"value": 3})
            }),
            DeadLettered("/lineitems/1/l_quantity"),
        ),
        (
            "a JSON array instead of an order",
            b"[1, 2, 3]".to_vec(),
            DeadLettered("body: expected a JSON object as the message body, got an array"),
        ),
    ]
}

trait ReplaceValue {
    fn replace_value(self, from: &[u8], to: &[u8]) -> Vec<u8>;
}

impl ReplaceValue for Vec<u8> {
    /// Swaps raw JSON text that serde_json would not produce itself.
    fn replace_value(self, from: &[u8], to: &[u8]) -> Vec<u8> {
        let at = self
            .windows(from.len())
            .position(|w| w == from)
            .expect("the text to replace");
        [&self[..at], to, &self[at + from.len()..]].concat()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_are_refused_or_dead_lettered_and_good_ones_persisted() {
    let nats = NatsServer::start();
    let pg = Postgres::start();
    let url = pg.create_database("hostile");
    let api = start_api_with(nats_api::ApiConfig {
        nats: nomnom_runtime::NatsConfig {
            url: nats.url(),
            ..Default::default()
        },
        max_body_bytes: MAX_BODY,
        ..Default::default()
    })
    .await;
    let _worker = Worker::start(&nats, &url);
    // A fresh connection per request: after refusing a body (413, say) the server may
    // close the connection, and a pooled client could send the next case into it.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    let mut accepted = Vec::new();
    for (what, body, expect) in cases() {
        let reply = client
            .post(format!("{api}/api/ingest/message/order"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = reply.status().as_u16();
        let text = reply.text().await.unwrap();
        match expect {
            Expect::Refused(code, words) => {
                assert_eq!(status, code, "{what}: {text}");
                assert!(text.contains(words), "{what}: the message says why: {text}");
            }
            expect => {
                assert_eq!(status, 202, "{what}: {text}");
                let reply: Value = serde_json::from_str(&text).unwrap();
                accepted.push((
                    what,
                    reply["message_id"].as_str().unwrap().to_owned(),
                    expect,
                ));
            }
        }
    }

    // Only the accepted bodies reached the stream.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stored = js
        .get_stream("MESSAGES")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(
        stored,
        accepted.len() as u64,
        "a refused body was published"
    );

    wait_for(
        Duration::from_secs(60),
        "an outcome for every accepted body",
        || count(&url, "SELECT count(*) AS n FROM nomnom_message_status") == accepted.len() as i64,
    )
    .await;
    let mut dead = 0;
    for (what, id, expect) in &accepted {
        let row = status_of(&url, id).unwrap_or_else(|| panic!("{what}: no status row"));
        match expect {
            Expect::Persisted => {
                assert_eq!(row.status, "persisted", "{what}: {:?}", row.error);
            }
            Expect::DeadLettered(words) => {
                dead += 1;
                assert_eq!(row.status, "dead_lettered", "{what}");
                let error = row.error.unwrap_or_default();
                assert!(
                    error.contains(words),
                    "{what}: the error names the field: {error}"
                );
            }
            Expect::Refused(..) => unreachable!(),
        }
    }
    assert_eq!(
        dlq_len(&nats).await,
        dead,
        "each dead letter is in the DLQ stream"
    );
    // Persisted ones are whole, and text round-trips exactly.
    assert_eq!(count(&url, "SELECT count(*) AS n FROM orders"), 4);
    assert_eq!(
        count(
            &url,
            "SELECT count(*) AS n FROM orders WHERE o_comment = '🦀 שלום e\u{301}'"
        ),
        1
    );
}

/// Envelopes published straight to the stream, not by nats-api: the worker locates the
/// body without reading it first (`Envelope::decode_leaving_body_unchecked`), and must
/// still read each message as the full decode does.
#[tokio::test(flavor = "multi_thread")]
async fn hand_written_envelopes_are_read_whole_when_the_body_is_not_last() {
    use nomnom_runtime::{EntityName, Envelope, subject};

    let nats = NatsServer::start();
    let pg = Postgres::start();
    let url = pg.create_database("hand_written");
    // nats-api creates the stream; the messages do not go through it.
    let _api = common::start_api(&nats).await;
    let _worker = Worker::start(&nats, &url);
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let entity = EntityName::parse("order").unwrap();
    let encoded = |key: i64| {
        let envelope = Envelope::new(
            Some(entity.clone()),
            serde_json::to_vec(&order(key)).unwrap().into(),
        );
        let id = envelope.message_id;
        let payload = envelope.encode().payload.to_vec();
        assert!(payload.ends_with(b"}}"), "the body is last, an object");
        (
            subject::message_subject("messages.ingest", Some(&entity), id),
            id,
            payload,
        )
    };

    // A member after the body: valid JSON, the body is the order.
    let (subject_after, after_id, mut after) = encoded(31);
    after.truncate(after.len() - 1);
    after.extend_from_slice(br#","note":{"body":"not this"}}"#);
    // The envelope's closing brace missing: not JSON, whatever the body.
    let (subject_unclosed, _, mut unclosed) = encoded(32);
    unclosed.truncate(unclosed.len() - 1);
    // As nats-api writes it.
    let (subject_plain, plain_id, plain) = encoded(33);
    for (subject, payload) in [
        (subject_after, after),
        (subject_unclosed, unclosed),
        (subject_plain, plain),
    ] {
        js.publish(subject, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    wait_for(Duration::from_secs(60), "two messages persisted", || {
        count(
            &url,
            "SELECT count(*) AS n FROM nomnom_message_status WHERE status = 'persisted'",
        ) == 2
    })
    .await;
    for id in [after_id, plain_id] {
        let row = status_of(&url, &id.to_string()).expect("a status row");
        assert_eq!(row.status, "persisted", "{id}: {:?}", row.error);
    }
    assert_eq!(
        count(
            &url,
            "SELECT count(*) AS n FROM orders WHERE o_orderkey IN (31, 33)"
        ),
        2
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) AS n FROM lineitem WHERE l_orderkey = 31"
        ),
        order(31)["lineitems"].as_array().unwrap().len() as i64
    );
    // The unreadable one is in the dead-letter stream, saying so.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while dlq_len(&nats).await != 1 {
        assert!(std::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dlq = js.get_stream("MESSAGES_DLQ").await.unwrap();
    let letter = dlq.get_raw_message(1).await.unwrap();
    let letter = String::from_utf8(letter.payload.to_vec()).unwrap();
    assert!(
        letter.contains("unreadable envelope: envelope is malformed"),
        "{letter}"
    );
}
