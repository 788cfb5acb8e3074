//! The operator console: off unless asked for, behind the API keys, refusing cross-site
//! replays, escaping what it shows, and replaying what is selected.

mod common;

use std::time::Duration;

use axum::{body::Body, http::Request, http::StatusCode};
use base64::Engine as _;
use common::{Harness, eventually};
use nomnom_runtime::dlq::{self, DeadLetter, DeadLetters};
use nomnom_test_support::NatsServer;

const KEY: &str = "console-key";

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn basic(key: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("operator:{key}"));
    format!("Basic {encoded}")
}

fn signed_in(uri: &str) -> Request<Body> {
    Request::get(uri)
        .header("authorization", basic(KEY))
        .body(Body::empty())
        .unwrap()
}

fn replay_form(ids: &[uuid::Uuid], sec_fetch_site: &str) -> Request<Body> {
    let body = ids
        .iter()
        .map(|id| format!("message_id={id}"))
        .collect::<Vec<_>>()
        .join("&");
    Request::post("/console/replay")
        .header("authorization", basic(KEY))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("host", "127.0.0.1:8080")
        .header("sec-fetch-site", sec_fetch_site)
        .body(Body::from(body))
        .unwrap()
}

async fn console_with_key() -> Harness {
    Harness::start_with(NatsServer::start(), |c| {
        c.console = true;
        c.api_keys = vec![KEY.into()];
    })
    .await
}

/// Accepts a message through the API, then dead-letters it the way a worker does: its
/// stored envelope, with `error`, on the dead-letter stream.
async fn dead_letter(h: &Harness, error: &str) -> uuid::Uuid {
    let accepted = h
        .send(
            Request::post("/api/ingest/message/order")
                .header("authorization", format!("Bearer {KEY}"))
                .header("content-type", "application/json")
                .body(Body::from(r#"{"o":1}"#))
                .unwrap(),
        )
        .await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.text);
    let id = accepted.message_id();
    // Each test's stream is new: the message is its first.
    assert_eq!(h.stream_len().await, 1);
    let sequence = 1;
    let stream = h.js.get_stream("MESSAGES").await.unwrap();
    let stored = stream.get_raw_message(sequence).await.unwrap();
    let letters = DeadLetters::ensure(h.js.clone(), "MESSAGES_DLQ", 1)
        .await
        .unwrap();
    letters
        .publish(&DeadLetter {
            message_id: id,
            entity: Some("order".into()),
            error: error.to_owned(),
            attempts: 1,
            stream_sequence: sequence,
            received_at: accepted.json["received_at"].as_str().unwrap().to_owned(),
            dead_lettered_at: "2026-01-01T00:00:00Z".into(),
            envelope: String::from_utf8(stored.payload.to_vec()).unwrap(),
            request_id: None,
            trace_id: None,
            dlq_sequence: 0,
        })
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn the_console_is_off_unless_enabled() {
    let h = Harness::start().await;
    for uri in ["/console", "/console/dead-letters", "/console/live"] {
        assert_eq!(
            h.send(get(uri)).await.status,
            StatusCode::NOT_FOUND,
            "{uri}"
        );
    }
}

#[tokio::test]
async fn the_console_asks_a_browser_for_a_key() {
    let h = console_with_key().await;
    for uri in ["/console", "/console/dead-letters", "/console/live"] {
        let refused = h.send(get(uri)).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(
            refused.headers["www-authenticate"],
            r#"Basic realm="nomnom console", charset="UTF-8""#
        );
        let wrong = h
            .send(
                Request::get(uri)
                    .header("authorization", basic("wrong"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{uri}");
    }

    let overview = h.send(signed_in("/console")).await;
    assert_eq!(overview.status, StatusCode::OK, "{}", overview.text);
    assert!(overview.text.contains("id=\"lookup\""), "{}", overview.text);
    assert!(
        overview.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    assert_eq!(overview.headers["x-content-type-options"], "nosniff");
    assert_eq!(overview.headers["cache-control"], "no-store");

    let bearer = h
        .send(
            Request::get("/console/live")
                .header("authorization", format!("Bearer {KEY}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(bearer.status, StatusCode::OK, "{}", bearer.text);
    assert_eq!(bearer.json["stream"]["name"], "MESSAGES", "{}", bearer.text);
}

#[tokio::test]
async fn before_any_worker_the_dead_letters_page_says_there_are_none_and_why() {
    let h = console_with_key().await;
    let page = h.send(signed_in("/console/dead-letters")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(
        page.text.contains("id=\"no-dead-letters\""),
        "{}",
        page.text
    );
    assert!(
        page.text
            .contains("the dead-letter stream MESSAGES_DLQ does not exist yet"),
        "{}",
        page.text
    );
    let live = h.send(signed_in("/console/live")).await;
    assert_eq!(live.status, StatusCode::OK, "{}", live.text);
    assert!(
        live.text
            .contains("does not exist yet (a worker creates it"),
        "{}",
        live.text
    );
}

#[tokio::test]
async fn dead_letters_are_shown_escaped_and_replayed_from_the_console_only() {
    let h = console_with_key().await;
    let id = dead_letter(&h, r#"violates <script>alert("x")</script> & more"#).await;

    let page = h.send(signed_in("/console/dead-letters")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(page.text.contains(&id.to_string()), "{}", page.text);
    assert!(
        page.text
            .contains("violates &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more"),
        "{}",
        page.text
    );
    assert!(!page.text.contains("<script>alert"), "{}", page.text);

    // The error filter narrows the list, case-insensitively.
    let filtered = h
        .send(signed_in("/console/dead-letters?error=VIOLATES"))
        .await;
    assert!(filtered.text.contains(&id.to_string()), "{}", filtered.text);
    let none = h
        .send(signed_in("/console/dead-letters?error=timeout"))
        .await;
    assert!(
        none.text.contains("id=\"no-dead-letters\""),
        "{}",
        none.text
    );

    // Another site's page cannot make a signed-in browser replay.
    let cross_site = h.send(replay_form(&[id], "cross-site")).await;
    assert_eq!(
        cross_site.status,
        StatusCode::FORBIDDEN,
        "{}",
        cross_site.text
    );
    let foreign_origin = h
        .send(
            Request::post("/console/replay")
                .header("authorization", basic(KEY))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("host", "127.0.0.1:8080")
                .header("origin", "https://evil.example")
                .body(Body::from(format!("message_id={id}")))
                .unwrap(),
        )
        .await;
    assert_eq!(foreign_origin.status, StatusCode::FORBIDDEN);
    assert_eq!(dlq::count(&h.js, "MESSAGES_DLQ").await.unwrap(), 1);
    assert_eq!(
        h.stream_len().await,
        1,
        "a refused replay publishes nothing"
    );

    let replayed = h.send(replay_form(&[id], "same-origin")).await;
    assert_eq!(replayed.status, StatusCode::SEE_OTHER, "{}", replayed.text);
    assert_eq!(
        replayed.headers["location"],
        "/console/dead-letters?replayed=1&missing=0"
    );
    assert_eq!(dlq::count(&h.js, "MESSAGES_DLQ").await.unwrap(), 0);
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.stream_len().await == 2
        })
        .await,
        "the replayed envelope is back in the stream"
    );
    let (_, envelope) = h.stored(2).await;
    assert_eq!(envelope.message_id, id, "replayed under its own id");

    let again = h.send(replay_form(&[id], "same-origin")).await;
    assert_eq!(
        again.headers["location"],
        "/console/dead-letters?replayed=0&missing=1"
    );
}
