//! The status table on real PostgreSQL and SQLite: the same records read back the same.

use chrono::{DateTime, Utc};
use nomnom_runtime::status::{MessageState, StatusRecord, StatusStore};
use nomnom_test_support::Postgres;
use uuid::Uuid;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

async fn exercise(store: StatusStore) {
    assert_eq!(
        store.fetch(Uuid::now_v7()).await.unwrap(),
        None,
        "no table yet (no worker started) reads as nothing recorded"
    );
    store.create_table().await.unwrap();
    store
        .create_table()
        .await
        .expect("creating twice is harmless");
    store.ping().await.unwrap();

    let id = Uuid::now_v7();
    assert_eq!(store.fetch(id).await.unwrap(), None);

    let retrying = StatusRecord {
        message_id: id,
        entity: Some("order".into()),
        status: MessageState::Retrying,
        attempts: 1,
        error: Some("database unavailable".into()),
        received_at: at("2026-11-22T13:30:00.123456Z"),
        processed_at: at("2026-11-22T13:30:01.5Z"),
        stream_sequence: Some(17),
    };
    store.upsert(retrying.clone()).await.unwrap();
    assert_eq!(store.fetch(id).await.unwrap(), Some(retrying.clone()));

    let dead = StatusRecord {
        status: MessageState::DeadLettered,
        attempts: 2,
        error: Some("o_totalprice: must be at least 0, got -1".into()),
        processed_at: at("2026-11-22T13:31:00Z"),
        ..retrying
    };
    store.upsert(dead.clone()).await.unwrap();
    assert_eq!(store.fetch(id).await.unwrap(), Some(dead));

    let other = StatusRecord {
        message_id: Uuid::now_v7(),
        entity: None,
        status: MessageState::Persisted,
        attempts: 1,
        error: None,
        received_at: at("2026-01-01T00:00:00Z"),
        processed_at: at("2026-01-01T00:00:00.000001Z"),
        stream_sequence: None,
    };
    store.upsert(other.clone()).await.unwrap();
    assert_eq!(store.fetch(other.message_id).await.unwrap(), Some(other));
}

#[tokio::test]
async fn status_round_trips_on_postgres() {
    let pg = Postgres::start();
    let url = pg.create_database("status_test");
    exercise(StatusStore::open(&url, 2).unwrap()).await;
}

#[tokio::test]
async fn status_round_trips_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("status.db").display());
    exercise(StatusStore::open(&url, 2).unwrap()).await;
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error() {
    let port = nomnom_test_support::free_port();
    let store = StatusStore::open(&format!("postgres://postgres@127.0.0.1:{port}/x"), 1).unwrap();
    let err = store.ping().await.unwrap_err().to_string();
    assert!(err.contains("check DATABASE_URL"), "{err}");
}
