//! Real health records, the examples HL7 publishes with FHIR R4 (npm package
//! hl7.fhir.r4.examples, fetched by scripts/install-deps.sh), posted as they are through
//! nats-api to the generated `fhir` worker (examples/fhir), on SQLite and PostgreSQL:
//! every observation and patient is stored; decimals keep every published digit
//! (`66.899999999999991`, `1E-22`, `-1.000000000000000000E+245`), in their columns and in
//! the JSON of the whole resource; array elements without an identity of their own
//! (components, names) become rows in their order, identical ones included; the LOINC code
//! is found wherever it is among an observation's codings, and a reference's type and id
//! are captured from its text.

mod common;

use std::time::Duration;

use common::{count, dlq_len, lines, wait_for};
use nomnom_runtime::{
    NatsConfig,
    worker::{WorkerConfig, run},
};
use nomnom_test_support::{NatsServer, Postgres};
use serde_json::Value;

/// The published records of one resource type: file name and raw bytes, as shipped.
fn records(resource: &str) -> Vec<(String, Vec<u8>)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../.tools/fhir-examples/4.0.1");
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| {
        panic!("cannot read {dir} ({e}): run scripts/install-deps.sh to fetch hl7.fhir.r4.examples")
    });
    let mut found: Vec<(String, Vec<u8>)> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            name.starts_with(&format!("{resource}-")) && name.ends_with(".json")
        })
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no {resource} examples");
    found
}

/// Elements of the array at `pointer`, summed over the records: the rows a child must get.
fn elements(records: &[(String, Vec<u8>)], pointer: &str) -> i64 {
    records
        .iter()
        .map(|(_, raw)| {
            let record: Value = serde_json::from_slice(raw).unwrap();
            record
                .pointer(pointer)
                .and_then(Value::as_array)
                .map_or(0, |a| a.len() as i64)
        })
        .sum()
}

/// nats-api and the `fhir` worker on `database_url`, against a nats-server of their own.
struct Pipeline {
    nats: NatsServer,
    api: String,
    stop: tokio::sync::oneshot::Sender<()>,
    worker: tokio::task::JoinHandle<()>,
}

impl Pipeline {
    async fn start(database_url: &str) -> Self {
        let nats = NatsServer::start();
        let api = common::start_api_with(nats_api::ApiConfig {
            nats: NatsConfig {
                url: nats.url(),
                ..Default::default()
            },
            database_url: Some(database_url.to_owned()),
            ..Default::default()
        })
        .await;
        let config = WorkerConfig {
            nats: NatsConfig {
                url: nats.url(),
                ..Default::default()
            },
            database_url: database_url.to_owned(),
            batch_size: 50,
            batch_wait: Duration::from_millis(100),
            ..Default::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(async move {
            run(fhir_worker::Schema, config, async {
                let _ = stopped.await;
            })
            .await
            .expect("worker runs");
        });
        Self {
            nats,
            api,
            stop,
            worker,
        }
    }

    /// Posts each record as published, with no route: its own `resourceType` routes it.
    async fn post(&self, records: &[(String, Vec<u8>)]) {
        let client = reqwest::Client::new();
        for (name, raw) in records {
            // The bytes as published: a client that re-encoded them through a float would
            // already have lost the digits this test is about.
            let reply = client
                .post(format!("{}/api/ingest/message", self.api))
                .header("content-type", "application/json")
                .body(raw.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(
                reply.status(),
                202,
                "{name}: {}",
                reply.text().await.unwrap()
            );
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.worker.await.unwrap();
    }
}

async fn records_become_rows(database_url: String) {
    let pipeline = Pipeline::start(&database_url).await;
    let nats = &pipeline.nats;
    let observations = records("Observation");
    let patients = records("Patient");
    pipeline
        .post(&[observations.clone(), patients.clone()].concat())
        .await;
    let (n_observations, n_patients) = (observations.len() as i64, patients.len() as i64);
    wait_for(Duration::from_secs(60), "every record stored", || {
        count(&database_url, "SELECT count(*) AS n FROM observation") == n_observations
            && count(&database_url, "SELECT count(*) AS n FROM patient") == n_patients
    })
    .await;
    assert_eq!(dlq_len(nats).await, 0, "no record was dead-lettered");
    assert_eq!(
        count(
            &database_url,
            "SELECT count(*) AS n FROM observation_component"
        ),
        elements(&observations, "/component")
    );
    assert_eq!(
        count(&database_url, "SELECT count(*) AS n FROM patient_name"),
        elements(&patients, "/name")
    );

    // Every digit, as published.
    assert_eq!(
        lines(
            &database_url,
            "SELECT CAST(value AS TEXT) || ' ' || unit AS line FROM observation WHERE id = 'body-height'"
        ),
        ["66.899999999999991 in"]
    );
    // Components have no identity but their position: the first and third are the same
    // ("Component", 1.0 g), and both are rows.
    let zeros = |n: usize| "0".repeat(n);
    assert_eq!(
        lines(
            &database_url,
            "SELECT CAST(position AS TEXT) || ' ' || code_text || ' ' || CAST(value AS TEXT) AS line
             FROM observation_component WHERE observation_id = 'decimal' ORDER BY position"
        ),
        [
            "0 Component 1.0".to_owned(),
            "1 Component 1.00".to_owned(),
            "2 Component 1.0".to_owned(),
            "3 Component 0.0000000000000000000001".to_owned(),
            "4 Component 1000000000000000000".to_owned(),
            format!("5 Component 0.{}1{}", zeros(244), zeros(18)),
            format!("6 Component -1{}", zeros(245)),
        ]
    );
    // The whole resource, as JSON, keeps the numbers' digits too.
    let kept = if database_url.starts_with("sqlite:") {
        "SELECT count(*) AS n FROM observation WHERE id = 'body-height'
           AND instr(resource, '66.899999999999991') > 0"
    } else {
        "SELECT count(*) AS n FROM observation WHERE id = 'body-height'
           AND resource->'valueQuantity'->>'value' = '66.899999999999991'"
    };
    assert_eq!(count(&database_url, kept), 1);
    // Dates and date-times of any precision in one field: as sent, and the instants they
    // cover (an offset is applied to the bounds; the text keeps it).
    let utc = |column: &str| {
        if database_url.starts_with("sqlite:") {
            format!("substr({column}, 1, 19)")
        } else {
            format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS')")
        }
    };
    assert_eq!(
        lines(
            &database_url,
            &format!(
                "SELECT id || ' ' || effective || ' ' || {} || ' ' || {} AS line
                 FROM observation WHERE id IN ('body-height', 'satO2') ORDER BY id",
                utc("effective_start"),
                utc("effective_end")
            )
        ),
        [
            "body-height 1999-07-02 1999-07-02T00:00:00 1999-07-03T00:00:00",
            "satO2 2014-12-05T09:30:10+01:00 2014-12-05T08:30:10 2014-12-05T08:30:11",
        ]
    );
    let dated = observations
        .iter()
        .filter(|(_, raw)| {
            let record: Value = serde_json::from_slice(raw).unwrap();
            record.get("effectiveDateTime").is_some()
        })
        .count() as i64;
    assert_eq!(
        count(
            &database_url,
            "SELECT count(*) AS n FROM observation
             WHERE effective IS NOT NULL AND effective_start < effective_end"
        ),
        dated
    );
    // The LOINC code wherever it is among the codings: f206's first coding is the lab's
    // own and its second LOINC's; f202 has two LOINC codings (the first is taken), after
    // the lab's; herd1's is the first; 20minute-apgar-score has only a SNOMED coding.
    assert_eq!(
        lines(
            &database_url,
            "SELECT id || ' ' || COALESCE(code, '-') || ' ' || COALESCE(loinc, '-') AS line
             FROM observation WHERE id IN ('20minute-apgar-score', 'f202', 'f206', 'herd1')
             ORDER BY id"
        ),
        [
            "20minute-apgar-score 443849008 -",
            "f202 BT 8310-5",
            "f206 104177 600-7",
            "herd1 80219-9 80219-9"
        ]
    );
    // References split into their type and id; a local reference (#newborn) has neither.
    assert_eq!(
        lines(
            &database_url,
            "SELECT id || ' ' || COALESCE(subject_type, '-') || ' ' || COALESCE(subject_id, '-') AS line
             FROM observation WHERE id IN ('10minute-apgar-score', '656', 'f206', 'herd1')
             ORDER BY id"
        ),
        [
            "10minute-apgar-score - -",
            "656 Patient PatientId-patientId",
            "f206 Patient f201",
            "herd1 Group herd1"
        ]
    );
    // Every reference of the form Type/id was split, and only those.
    assert_eq!(
        count(
            &database_url,
            "SELECT count(*) AS n FROM observation
             WHERE (subject_type IS NULL) <> (subject NOT LIKE '%/%' OR subject IS NULL)"
        ),
        0
    );

    // Names in their order; the first and third share their given names.
    assert_eq!(
        lines(
            &database_url,
            "SELECT CAST(position AS TEXT) || ' ' || COALESCE(name_use, '-') || ' ' || COALESCE(family, '-') AS line
             FROM patient_name WHERE patient_id = 'example' ORDER BY position"
        ),
        ["0 official Chalmers", "1 usual -", "2 maiden Windsor"]
    );
    assert_eq!(
        lines(
            &database_url,
            "SELECT COALESCE(CAST(birth_date AS TEXT), '-') || ' ' || COALESCE(gender, '-') AS line
             FROM patient WHERE id = 'example'"
        ),
        ["1974-12-25 male"]
    );
    pipeline.stop().await;
}

/// A record a bundle carries that the spec stores (a patient, an observation or a
/// bundle), read from the published JSON without the worker: its type, id and path.
struct Carried {
    resource: String,
    id: Option<String>,
    path: String,
    record: Value,
}

/// The records `bundle` (found at `path`) carries, in the order the worker reads them:
/// each record before the records it carries.
fn carried(bundle: &Value, path: &str, out: &mut Vec<Carried>) {
    let entries = bundle.get("entry").and_then(Value::as_array);
    for (n, entry) in entries.into_iter().flatten().enumerate() {
        let Some(record) = entry.get("resource") else {
            continue;
        };
        let resource = record["resourceType"].as_str().unwrap_or_default();
        if !["Patient", "Observation", "Bundle"].contains(&resource) {
            continue;
        }
        let at = format!("{path}/entry/{n}/resource");
        out.push(Carried {
            resource: resource.to_owned(),
            id: record["id"].as_str().map(str::to_owned),
            path: at.clone(),
            record: record.clone(),
        });
        if resource == "Bundle" {
            carried(record, &at, out);
        }
    }
}

/// Why a bundle must be refused, as its dead letter says it: its first record without
/// an id (the key), or the first two records of one type with one id; `None` if neither.
fn refusal(records: &[Carried]) -> Option<String> {
    for (n, record) in records.iter().enumerate() {
        let Some(id) = &record.id else {
            return Some(format!("{}/id: ", record.path));
        };
        let first = records[..n]
            .iter()
            .find(|r| r.resource == record.resource && r.id.as_ref() == Some(id));
        if let Some(first) = first {
            return Some(format!(
                "{} and {} have the same key (id = {id:?})",
                first.path, record.path
            ));
        }
    }
    None
}

/// Every bundle HL7 publishes, posted as it is: the patients, observations and bundles it
/// carries (nested bundles' included) become rows of their own, with their children, in
/// the bundle's transaction; records of other types are skipped. A bundle with a record
/// the spec cannot store (no id, or two with one key) is dead-lettered whole, naming the
/// record's path, and none of its records is stored.
async fn bundles_fan_out_into_their_records(database_url: String) {
    let pipeline = Pipeline::start(&database_url).await;
    let bundles = records("Bundle");
    pipeline.post(&bundles).await;

    // The expected rows, from the published JSON: each table's distinct ids over the
    // stored bundles, and the names of each patient's last version (upserts: the last
    // message wins).
    let mut refused: Vec<(String, String)> = Vec::new();
    let mut ids: std::collections::BTreeMap<&str, std::collections::BTreeSet<String>> =
        Default::default();
    let mut names: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, raw) in &bundles {
        let bundle: Value = serde_json::from_slice(raw).unwrap();
        let mut records = vec![Carried {
            resource: "Bundle".into(),
            id: bundle["id"].as_str().map(str::to_owned),
            path: String::new(),
            record: bundle.clone(),
        }];
        carried(&bundle, "", &mut records);
        if let Some(why) = refusal(&records) {
            refused.push((bundle["id"].as_str().unwrap().to_owned(), why));
            continue;
        }
        for record in records {
            let table = match record.resource.as_str() {
                "Patient" => "patient",
                "Observation" => "observation",
                _ => "bundle",
            };
            let id = record.id.unwrap();
            if table == "patient" {
                let n = record.record["name"].as_array().map_or(0, Vec::len);
                names.insert(id.clone(), n);
            }
            ids.entry(table).or_default().insert(id);
        }
    }
    // What HL7 published: transaction bundles whose records have no id yet (they are
    // to be created), a document with an id-less record, and a collection that repeats
    // its records; bundles of bundles (a collection of 17 search results).
    let refused_ids: Vec<&str> = refused.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        refused_ids,
        ["bundle-references", "bundle-transaction", "father", "hla-1"]
    );
    assert!(
        ids["bundle"].len() > bundles.len() - refused.len(),
        "nested bundles"
    );
    assert!(
        ids["observation"].len() > 400,
        "{}",
        ids["observation"].len()
    );

    let dead = refused.len() as i64;
    wait_for(
        Duration::from_secs(120),
        "every bundle persisted or dead-lettered",
        || {
            count(
                &database_url,
                "SELECT count(*) AS n FROM nomnom_message_status
             WHERE status IN ('persisted', 'dead_lettered')",
            ) == bundles.len() as i64
        },
    )
    .await;
    for table in ["bundle", "patient", "observation"] {
        let expected: Vec<String> = ids.get(table).into_iter().flatten().cloned().collect();
        assert_eq!(
            lines(
                &database_url,
                &format!("SELECT id AS line FROM {table} ORDER BY id")
            ),
            {
                let mut sorted = expected.clone();
                sorted.sort();
                sorted
            },
            "{table}: exactly the records of the stored bundles"
        );
    }
    assert_eq!(
        count(&database_url, "SELECT count(*) AS n FROM patient_name"),
        names.values().sum::<usize>() as i64,
        "bundled patients' names are their rows"
    );
    assert_eq!(dlq_len(&pipeline.nats).await, dead as u64);
    let mut errors = lines(
        &database_url,
        "SELECT error AS line FROM nomnom_message_status WHERE status = 'dead_lettered'",
    );
    errors.sort();
    let mut expected: Vec<&str> = refused.iter().map(|(_, why)| why.as_str()).collect();
    expected.sort();
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for why in &expected {
        assert!(
            errors.iter().any(|e| e.contains(why)),
            "a dead letter says {why:?}: {errors:#?}"
        );
    }
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_bundles_fan_out_into_their_records_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    bundles_fan_out_into_their_records(format!(
        "sqlite://{}",
        dir.path().join("fhir.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_bundles_fan_out_into_their_records_on_postgres() {
    let postgres = Postgres::start();
    bundles_fan_out_into_their_records(postgres.create_database("fhir")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_health_records_become_rows_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    records_become_rows(format!("sqlite://{}", dir.path().join("fhir.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_health_records_become_rows_on_postgres() {
    let postgres = Postgres::start();
    records_become_rows(postgres.create_database("fhir")).await;
}
