//! Listing, counting and replaying the dead-letter stream against a real nats-server.

mod common;

use bytes::Bytes;
use common::connect;
use nomnom_runtime::{
    Envelope, StreamSettings,
    dlq::{self, DeadLetter, DeadLetters, Filter},
    envelope, stream,
    subject::EntityName,
};
use nomnom_test_support::NatsServer;
use uuid::Uuid;

const DLQ: &str = "MESSAGES_DLQ";

/// Dead-letters a new `order` message with `error`, as a worker would.
async fn dead_letter(letters: &DeadLetters, error: &str) -> Uuid {
    let env = Envelope::new(
        Some(EntityName::parse("order").unwrap()),
        Bytes::from_static(b"{}"),
    );
    let payload = env.encode().payload;
    letters
        .publish(&DeadLetter {
            message_id: env.message_id,
            entity: Some("order".into()),
            error: error.to_owned(),
            attempts: 1,
            stream_sequence: 1,
            received_at: envelope::format_time(env.received_at),
            dead_lettered_at: envelope::format_time(env.received_at),
            envelope: String::from_utf8(payload.to_vec()).unwrap(),
            request_id: None,
            trace_id: None,
            dlq_sequence: 0,
        })
        .await
        .unwrap();
    env.message_id
}

fn ids(letters: &[DeadLetter]) -> Vec<Uuid> {
    letters.iter().map(|l| l.message_id).collect()
}

#[tokio::test]
async fn dlq_lists_newest_first_filters_by_error_counts_and_replays_a_selection() {
    let nats = NatsServer::start();
    let js = connect(&nats).await;
    let settings = StreamSettings::default();
    stream::ensure_stream(&js, &settings).await.unwrap();
    let letters = DeadLetters::ensure(js.clone(), DLQ, 1).await.unwrap();
    assert_eq!(dlq::count(&js, DLQ).await.unwrap(), 0);

    let a = dead_letter(&letters, "violates CHECK constraint \"positive\"").await;
    let b = dead_letter(&letters, "/o_totalprice: must be at least 0").await;
    let c = dead_letter(&letters, "new row violates check constraint").await;
    assert_eq!(dlq::count(&js, DLQ).await.unwrap(), 3);

    let all = Filter::default();
    assert_eq!(ids(&dlq::list(&js, DLQ, &all).await.unwrap()), [a, b, c]);
    assert_eq!(
        ids(&dlq::list_newest(&js, DLQ, &all, 2).await.unwrap()),
        [c, b],
        "newest first, at most the limit"
    );
    assert!(
        dlq::list_newest(&js, DLQ, &all, 0)
            .await
            .unwrap()
            .is_empty()
    );

    let check = Filter {
        error_contains: Some("Check Constraint".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(&dlq::list(&js, DLQ, &check).await.unwrap()),
        [a, c],
        "case-insensitive"
    );
    let check_on_c = Filter {
        message_id: Some(c),
        ..check.clone()
    };
    assert_eq!(ids(&dlq::list(&js, DLQ, &check_on_c).await.unwrap()), [c]);
    let elsewhere = Filter {
        entity: Some("customer".into()),
        ..check.clone()
    };
    assert!(dlq::list(&js, DLQ, &elsewhere).await.unwrap().is_empty());

    // Replaying a selection republishes those envelopes and removes only them.
    let selected: Vec<DeadLetter> = dlq::list(&js, DLQ, &all)
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.message_id == b)
        .collect();
    assert_eq!(
        dlq::replay_letters(&js, DLQ, &settings, &selected)
            .await
            .unwrap(),
        1
    );
    assert_eq!(dlq::count(&js, DLQ).await.unwrap(), 2);
    assert_eq!(ids(&dlq::list(&js, DLQ, &all).await.unwrap()), [a, c]);
    let mut messages = js.get_stream(&settings.name).await.unwrap();
    let state = messages.info().await.unwrap().state.clone();
    assert_eq!(state.messages, 1);
    let replayed = messages.get_raw_message(state.last_sequence).await.unwrap();
    assert_eq!(Envelope::decode(replayed.payload).unwrap().message_id, b);

    // `replay` by error: what matches goes, the rest stays.
    assert_eq!(dlq::replay(&js, DLQ, &settings, &check).await.unwrap(), 2);
    assert_eq!(dlq::count(&js, DLQ).await.unwrap(), 0);
}
