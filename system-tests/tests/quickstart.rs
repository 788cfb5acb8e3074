//! README's first command, run as a newcomer runs it (in its small configuration, on
//! free ports, in a state directory of its own): its summary must match the database,
//! a second run must work too, and a port in use must give one clear line. (PostgreSQL,
//! and an unreachable one: quickstart_postgres.rs.)

mod common;

use common::{assert_nothing_left_running, count, run_quickstart};
use serde_json::Value;

#[test]
fn the_quickstart_summary_matches_the_database_twice_in_a_row() {
    let state = tempfile::tempdir().unwrap();
    let summary_path = state.path().join("summary.json");
    let url = format!("sqlite://{}", state.path().join("tpch.db").display());
    for run in 1..=2 {
        let output = run_quickstart(
            state.path(),
            &[],
            &[
                "--orders",
                "200",
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
        assert_eq!(summary["orders_expected"], 200);
        // The summary says what the database holds (each run starts from empty data).
        assert_eq!(
            summary["orders_rows"],
            count(&url, "SELECT count(*) AS n FROM orders")
        );
        assert_eq!(
            summary["lineitem_rows"],
            count(&url, "SELECT count(*) AS n FROM lineitem")
        );
        assert_eq!(summary["orders_rows"], summary["orders_expected"]);
        assert_eq!(summary["lineitem_rows"], summary["lineitems_expected"]);
        assert!(summary["lineitems_expected"].as_i64().unwrap() > 200);
        assert_eq!(
            summary["persisted"],
            count(
                &url,
                "SELECT count(*) AS n FROM nomnom_message_status WHERE status = 'persisted'"
            )
        );
        assert_eq!(
            summary["persisted"], 201,
            "200 in batches and the single one"
        );
        assert_eq!(
            summary["dead_lettered"],
            count(
                &url,
                "SELECT count(*) AS n FROM nomnom_message_status WHERE status = 'dead_lettered'"
            )
        );
        assert_eq!(summary["dead_lettered"], 1);
        assert!(stdout.contains("curl -X POST"), "{stdout}");
        assert!(stdout.contains("/api/ingest/status/"), "{stdout}");
    }
    assert_nothing_left_running(state.path());
}

#[test]
fn a_port_in_use_is_one_clear_line() {
    let state = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let output = run_quickstart(
        state.path(),
        &[("NOMNOM_API_PORT", port.to_string())],
        &["--orders", "10"],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors,
        [format!(
            "error: port {port} is in use: stop what uses it, or set NOMNOM_API_PORT to a free port"
        )
        .as_str()],
        "{stderr}"
    );
}
