//! Text logs written to a file or a pipe carry no colour codes: the test runs itself again
//! as a child process whose standard output is a file, logs through `telemetry::init`, and
//! reads the file.

use std::process::{Command, Stdio};

/// Set in the child: log a line and exit.
const CHILD: &str = "NOMNOM_TELEMETRY_TEST_CHILD";

#[test]
fn text_logs_to_a_file_have_no_ansi_escapes() {
    if std::env::var_os(CHILD).is_some() {
        nomnom_runtime::telemetry::init(nomnom_runtime::telemetry::LogFormat::Text, None);
        tracing::warn!(answer = 42, "hello from the child");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.txt");
    let file = std::fs::File::create(&path).unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "text_logs_to_a_file_have_no_ansi_escapes",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::from(file))
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    assert!(status.success());
    let log = std::fs::read_to_string(&path).unwrap();
    assert!(
        log.contains("hello from the child"),
        "no log line in {log:?}"
    );
    assert!(
        log.contains("answer=42"),
        "fields not written as text: {log:?}"
    );
    assert!(
        !log.contains("\x1b["),
        "ANSI escape codes in a log file: {log:?}"
    );
}
