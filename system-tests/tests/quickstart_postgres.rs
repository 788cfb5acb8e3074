//! README's first command on PostgreSQL (`DATABASE_URL` set): the database keeps earlier
//! runs' rows and status rows, so a second run must still count its own work; and a
//! failure in a `--keep-running` run must not leave half a pipeline running.

mod common;

use common::{assert_nothing_left_running, count, run_quickstart};
use nomnom_test_support::{Postgres, free_port};
use serde_json::Value;

#[test]
fn a_second_run_on_the_same_postgresql_database_counts_its_own_work() {
    let pg = Postgres::start();
    let url = pg.create_database("quickstart");
    let state = tempfile::tempdir().unwrap();
    let summary_path = state.path().join("summary.json");
    // The second run sends more orders: rows are counted for the keys it generated.
    for (run, orders) in [(1, 150), (2, 200)] {
        let output = run_quickstart(
            state.path(),
            &[("DATABASE_URL", url.clone())],
            &[
                "--orders",
                &orders.to_string(),
                "--summary-json",
                summary_path.to_str().unwrap(),
            ],
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "run {run} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!stdout.contains("MISMATCH"), "{stdout}");
        let summary: Value =
            serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
        assert_eq!(summary["orders_expected"], orders);
        assert_eq!(summary["orders_rows"], orders);
        assert_eq!(summary["lineitem_rows"], summary["lineitems_expected"]);
        assert_eq!(summary["persisted"], orders + 1, "this run's messages");
        assert_eq!(summary["dead_lettered"], 1, "this run's invalid order");
        // The database holds both runs' work: the orders upserted, every message once.
        assert_eq!(count(&url, "SELECT count(*) AS n FROM orders"), orders);
        assert_eq!(
            count(&url, "SELECT count(*) AS n FROM lineitem"),
            summary["lineitems_expected"].as_i64().unwrap()
        );
        assert_eq!(
            count(
                &url,
                "SELECT count(*) AS n FROM nomnom_message_status WHERE status = 'dead_lettered'"
            ),
            run
        );
    }
    assert_eq!(
        count(
            &url,
            "SELECT count(*) AS n FROM nomnom_message_status WHERE status = 'persisted'"
        ),
        151 + 201
    );
    assert_nothing_left_running(state.path());
}

#[test]
fn a_failed_keep_running_run_stops_what_it_started() {
    let state = tempfile::tempdir().unwrap();
    let nowhere = format!("postgres://postgres:secret@127.0.0.1:{}/tpch", free_port());
    let output = run_quickstart(
        state.path(),
        &[("DATABASE_URL", nowhere)],
        &["--orders", "10", "--keep-running"],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("Connection refused")
            && errors[0].ends_with("check DATABASE_URL and that PostgreSQL is running"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret"), "password shown: {stderr}");
    assert_nothing_left_running(state.path());
}
