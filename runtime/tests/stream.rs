//! The stream setup against a real nats-server.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use common::connect;
use nomnom_runtime::{
    Envelope, NatsConfig, StreamSettings, envelope, stream, subject, subject::EntityName,
};
use nomnom_test_support::NatsServer;

#[tokio::test]
async fn ensure_stream_creates_then_is_idempotent_then_updates() {
    let nats = NatsServer::start();
    let js = connect(&nats).await;
    let settings = StreamSettings::default();

    let created = stream::ensure_stream(&js, &settings).await.unwrap();
    assert_eq!(created.config.name, "MESSAGES");
    assert_eq!(created.config.subjects, ["messages.>"]);
    assert_eq!(
        created.config.discard,
        jetstream::stream::DiscardPolicy::New
    );
    assert!(created.config.allow_direct);
    assert_eq!(created.config.duplicate_window, Duration::from_secs(120));

    // Same settings: nothing to change.
    let again = stream::ensure_stream(&js, &settings).await.unwrap();
    assert!(stream::differences(&again.config, &settings.stream_config()).is_empty());
    assert_eq!(
        again.created, created.created,
        "stream must not be recreated"
    );

    // A changed setting is applied to the running stream.
    let longer = StreamSettings {
        max_age: Duration::from_secs(3600),
        duplicate_window: Duration::from_secs(60),
        ..settings.clone()
    };
    let updated = stream::ensure_stream(&js, &longer).await.unwrap();
    assert_eq!(updated.config.max_age, Duration::from_secs(3600));
    assert_eq!(updated.config.duplicate_window, Duration::from_secs(60));
}

#[tokio::test]
async fn concurrent_ensure_from_many_processes_agrees() {
    let nats = NatsServer::start();
    let settings = StreamSettings::default();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let js = connect(&nats).await;
        let settings = settings.clone();
        tasks.push(tokio::spawn(async move {
            stream::ensure_stream(&js, &settings).await
        }));
    }
    for task in tasks {
        let info = task.await.unwrap().expect("every caller gets the stream");
        assert_eq!(info.config.name, "MESSAGES");
    }
}

#[tokio::test]
async fn invalid_settings_are_refused_before_reaching_the_server() {
    let outside = StreamSettings {
        subject_prefix: "elsewhere.ingest".into(),
        ..Default::default()
    };
    let err = outside.validate().unwrap_err().to_string();
    assert!(err.contains("not captured by the stream subjects"), "{err}");
    let bad_name = StreamSettings {
        name: "MY.STREAM".into(),
        ..Default::default()
    };
    assert!(bad_name.validate().is_err());
    let replicas = StreamSettings {
        replicas: 7,
        ..Default::default()
    };
    assert!(
        replicas
            .validate()
            .unwrap_err()
            .to_string()
            .contains("replicas")
    );
}

/// The status endpoint relies on finding a message by id with a wildcard over the entity.
#[tokio::test]
async fn a_message_can_be_found_by_id_whatever_its_entity() {
    let nats = NatsServer::start();
    let js = connect(&nats).await;
    let settings = StreamSettings::default();
    stream::ensure_stream(&js, &settings).await.unwrap();

    let order = EntityName::parse("order").unwrap();
    let mut ids = Vec::new();
    for entity in [Some(order.clone()), None] {
        let env = Envelope::new(entity.clone(), Bytes::from_static(b"{}"));
        let subject =
            subject::message_subject(&settings.subject_prefix, entity.as_ref(), env.message_id);
        js.publish(subject, env.encode().payload)
            .await
            .unwrap()
            .await
            .unwrap();
        ids.push((env.message_id, entity));
    }
    let stream = js.get_stream_no_info("MESSAGES").await.unwrap();
    for (id, entity) in ids {
        let found = stream
            .get_last_raw_message_by_subject(&subject::lookup_subject(&settings.subject_prefix, id))
            .await
            .expect("found by wildcard lookup");
        let decoded = Envelope::decode(found.payload).unwrap();
        assert_eq!(decoded.message_id, id);
        assert_eq!(decoded.entity, entity);
    }
    let missing = stream
        .get_last_raw_message_by_subject(&subject::lookup_subject(
            &settings.subject_prefix,
            envelope::new_message_id(),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        missing.kind(),
        jetstream::stream::LastRawMessageErrorKind::NoMessageFound
    );
}

#[tokio::test]
async fn connection_settings_are_checked_with_clear_errors() {
    let both = NatsConfig {
        token: Some("t".into()),
        user: Some("u".into()),
        password: Some("p".into()),
        ..Default::default()
    };
    let err = both.connect().await.unwrap_err().to_string();
    assert!(err.contains("set only one of"), "{err}");

    let unreachable = NatsConfig {
        url: format!("nats://127.0.0.1:{}", nomnom_test_support::free_port()),
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let err = unreachable.connect().await.unwrap_err().to_string();
    assert!(
        err.starts_with("cannot connect to NATS at nats://127.0.0.1:"),
        "{err}"
    );
}
