//! The status table on real PostgreSQL and SQLite: the same records read back the same.

use chrono::{DateTime, Utc};
use nomnom_runtime::db::AnyConnection;
use nomnom_runtime::status::{self, MessageState, StatusRecord, StatusStore};
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
    assert_eq!(
        store.fetch(other.message_id).await.unwrap(),
        Some(other.clone())
    );

    // A persisted row is final: a late dead letter (from a worker that lost a race)
    // does not overwrite it.
    store
        .upsert(StatusRecord {
            status: MessageState::DeadLettered,
            error: Some("late".into()),
            ..other.clone()
        })
        .await
        .unwrap();
    assert_eq!(store.fetch(other.message_id).await.unwrap(), Some(other));
}

fn persisted(id: Uuid) -> StatusRecord {
    StatusRecord {
        message_id: id,
        entity: Some("order".into()),
        status: MessageState::Persisted,
        attempts: 1,
        error: None,
        received_at: at("2026-11-22T13:30:00Z"),
        processed_at: at("2026-11-22T13:30:01Z"),
        stream_sequence: Some(1),
    }
}

/// Ids of `records` not yet persisted are claimed (and now read as persisted); ids
/// already persisted are not; a dead-lettered id can be claimed by a replay.
fn check_claims(claim: &mut dyn FnMut(&[StatusRecord]) -> std::collections::HashSet<Uuid>) {
    let first: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let records: Vec<StatusRecord> = first.iter().copied().map(persisted).collect();
    assert_eq!(claim(&records), first.iter().copied().collect());
    let fresh = Uuid::now_v7();
    let mut again = records.clone();
    again.push(persisted(fresh));
    assert_eq!(
        claim(&again),
        [fresh].into_iter().collect(),
        "only the id not persisted before is claimed"
    );
    // More records than one statement holds.
    let many: Vec<StatusRecord> = (0..2_500).map(|_| persisted(Uuid::now_v7())).collect();
    assert_eq!(claim(&many).len(), 2_500);
    assert!(claim(&many).is_empty());
}

/// A claimed row reads back as claimed, its times stored as the typed upsert stores them
/// (SQLite keeps them as text: a claim writing another form would still read back, but
/// sort and compare apart from the rows written the other way).
async fn check_claimed_rows_read_back(store: &StatusStore, conn: &mut AnyConnection) {
    use diesel::{QueryableByName, RunQueryDsl};
    let precise = StatusRecord {
        entity: None,
        received_at: at("2026-11-22T13:30:00.123456Z"),
        processed_at: at("2026-11-22T13:30:01.5Z"),
        stream_sequence: Some(42),
        ..persisted(Uuid::now_v7())
    };
    status::claim(conn, std::slice::from_ref(&precise)).unwrap();
    assert_eq!(
        store.fetch(precise.message_id).await.unwrap(),
        Some(precise.clone())
    );
    let typed = StatusRecord {
        message_id: Uuid::now_v7(),
        ..precise.clone()
    };
    store.upsert(typed).await.unwrap();
    #[derive(QueryableByName, Debug, PartialEq)]
    struct Times {
        #[diesel(sql_type = diesel::sql_types::Text)]
        times: String,
    }
    let sql = "SELECT CAST(received_at AS TEXT) || ' ' || CAST(processed_at AS TEXT) AS times \
               FROM nomnom_message_status WHERE stream_sequence = 42";
    let rows: Vec<Times> = match conn {
        AnyConnection::Postgresql(c) => diesel::sql_query(sql).load(c),
        AnyConnection::Sqlite(c) => diesel::sql_query(sql).load(c),
    }
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[0], rows[1],
        "a claim stores times as the typed upsert does"
    );
}

#[tokio::test]
async fn claims_skip_persisted_messages_on_postgres() {
    use diesel::Connection;
    let pg = Postgres::start();
    let url = pg.create_database("claim_test");
    let store = StatusStore::open(&url, 1).unwrap();
    store.create_table().await.unwrap();
    let dead = StatusRecord {
        status: MessageState::DeadLettered,
        error: Some("bad".into()),
        ..persisted(Uuid::now_v7())
    };
    store.upsert(dead.clone()).await.unwrap();
    let mut conn = AnyConnection::Postgresql(diesel::PgConnection::establish(&url).unwrap());
    let claimed = status::claim(&mut conn, &[persisted(dead.message_id)]).unwrap();
    assert!(
        claimed.contains(&dead.message_id),
        "a dead letter replayed can persist"
    );
    check_claims(&mut |records| status::claim(&mut conn, records).unwrap());
    check_claimed_rows_read_back(&store, &mut conn).await;
}

#[tokio::test]
async fn claims_skip_persisted_messages_on_sqlite() {
    use diesel::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("claim.db");
    let store = StatusStore::open(&format!("sqlite://{}", path.display()), 1).unwrap();
    store.create_table().await.unwrap();
    let dead = StatusRecord {
        status: MessageState::DeadLettered,
        error: Some("bad".into()),
        ..persisted(Uuid::now_v7())
    };
    store.upsert(dead.clone()).await.unwrap();
    let mut conn =
        AnyConnection::Sqlite(diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap());
    let claimed = status::claim(&mut conn, &[persisted(dead.message_id)]).unwrap();
    assert!(
        claimed.contains(&dead.message_id),
        "a dead letter replayed can persist"
    );
    check_claims(&mut |records| status::claim(&mut conn, records).unwrap());
    check_claimed_rows_read_back(&store, &mut conn).await;
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
