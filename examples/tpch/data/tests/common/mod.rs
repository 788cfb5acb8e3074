//! Helpers shared by the TPC-H end-to-end tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use diesel::{RunQueryDsl, sql_types::BigInt};
use nomnom_runtime::sql::{self, AnyConnection};

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// `SELECT count(*) AS n …` on either database; -1 if it cannot be asked (yet).
pub fn count(url: &str, sql_text: &str) -> i64 {
    let Ok(conn) = sql::connect(url) else {
        return -1;
    };
    match conn {
        AnyConnection::Postgresql(mut pg) => {
            diesel::sql_query(sql_text).get_result::<Count>(&mut pg)
        }
        AnyConnection::Sqlite(mut lite) => {
            diesel::sql_query(sql_text).get_result::<Count>(&mut lite)
        }
    }
    .map(|c| c.n)
    .unwrap_or(-1)
}

/// Polls `check` every 50 ms; whether it held within `within`.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

/// Like [`eventually`], failing the test with `what` on time-out.
pub async fn wait_for(within: Duration, what: &str, check: impl FnMut() -> bool) {
    assert!(
        eventually(within, check).await,
        "timed out waiting for {what}"
    );
}
