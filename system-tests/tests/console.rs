//! The operator console in a real browser (headless Chromium through chromedriver), over
//! the whole system: nats-api with `--console` and an API key, nats-server, the TPC-H
//! worker process and PostgreSQL. An order the database refuses is dead-lettered; the
//! operator finds it, fixes the cause, replays it from the console and sees it persisted,
//! and the live panel shows figures. The overview's screenshot (`docs/console.png` is a
//! copy) goes to the target directory's `tmp/console.png`.
//!
//! Needs Chromium and chromedriver (`scripts/install-deps.sh` installs both); without
//! them the test fails saying so.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Worker, count, start_api_with, wait_for};
use fantoccini::{Client, ClientBuilder, Locator};
use nomnom_test_support::{NatsServer, Postgres, free_port};
use serde_json::{Value, json};

const KEY: &str = "console-system-test-key";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver as a process; killed when dropped.
struct Chromedriver {
    child: Child,
    port: u16,
}

impl Chromedriver {
    fn start() -> Chromedriver {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).is_file(),
                "{binary} not found: the console's browser test needs Chromium and chromedriver; \
                 run scripts/install-deps.sh (or apt-get install chromium chromium-driver)"
            );
        }
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Chromedriver { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    async fn browser(&self, profile: &Path) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1000,520",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("chromedriver starts a Chromium session")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn order(key: i64) -> Value {
    let mut order = tpch_data::orders(0.002).next().unwrap();
    order["o_orderkey"] = json!(key);
    for item in order["lineitems"].as_array_mut().unwrap() {
        item["l_orderkey"] = json!(key);
    }
    order
}

async fn post_order(api: &str, order: &Value) -> String {
    let reply = reqwest::Client::new()
        .post(format!("{api}/api/ingest/message/order"))
        .bearer_auth(KEY)
        .json(order)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202);
    let reply: Value = reply.json().await.unwrap();
    reply["message_id"].as_str().unwrap().to_owned()
}

fn has_status(url: &str, id: &str, status: &str) -> bool {
    count(
        url,
        &format!(
            "SELECT count(*) AS n FROM nomnom_message_status \
             WHERE message_id = '{id}' AND status = '{status}'"
        ),
    ) == 1
}

/// The text of element `#id`, polled until `accept` takes it (the live panel fills in
/// from a script); fails the test with the last text on time-out.
async fn wait_text(browser: &Client, id: &str, accept: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(element) = browser.find(Locator::Id(id)).await {
            last = element.text().await.unwrap_or_default();
            if accept(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("#{id} never showed what was expected; last: {last:?}");
}

fn a_number(text: &str) -> bool {
    text.trim().parse::<f64>().is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_replays_and_watches_dead_letters_in_the_console() {
    let driver = Chromedriver::start();
    let nats = NatsServer::start();
    let pg = Postgres::start();
    let url = pg.create_database("console");
    let api = start_api_with(nats_api::ApiConfig {
        nats: nomnom_runtime::NatsConfig {
            url: nats.url(),
            ..Default::default()
        },
        console: true,
        api_keys: vec![KEY.into()],
        database_url: Some(url.clone()),
        ..Default::default()
    })
    .await;
    let _worker = Worker::start(&nats, &url);

    let good = post_order(&api, &order(1)).await;
    wait_for(Duration::from_secs(30), "the first order persisted", || {
        has_status(&url, &good, "persisted")
    })
    .await;
    // The database now refuses every new order (NOT VALID: the stored one stays): a data
    // error, so the next is dead-lettered.
    pg.psql(
        "console",
        "ALTER TABLE orders ADD CONSTRAINT console_refuses CHECK (o_totalprice < 0) NOT VALID",
    );
    let bad = post_order(&api, &order(2)).await;
    wait_for(
        Duration::from_secs(30),
        "the second order dead-lettered",
        || has_status(&url, &bad, "dead_lettered"),
    )
    .await;

    let profile = tempfile::tempdir().unwrap();
    let browser = driver.browser(profile.path()).await;
    // The credentials in the URL answer the console's Basic challenge, as typing them
    // into the browser's prompt would; Chromium then sends them for the whole origin.
    let signed_in = api.replacen("http://", &format!("http://operator:{KEY}@"), 1);
    browser
        .goto(&format!("{signed_in}/console"))
        .await
        .expect("open the console");
    let title = browser.title().await.unwrap();
    assert!(
        title.starts_with("Overview"),
        "the console did not accept the key: title {title:?}, page {}",
        browser.source().await.unwrap_or_default()
    );

    // What happened to this message?
    browser
        .find(Locator::Id("lookup"))
        .await
        .unwrap()
        .send_keys(&bad)
        .await
        .unwrap();
    browser
        .find(Locator::Id("lookup-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&browser, "message-status", |s| s == "dead_lettered").await;
    let error = wait_text(&browser, "message-error", |s| !s.is_empty()).await;
    assert!(error.contains("console_refuses"), "{error}");

    // Fix the cause, then replay it from the dead letters.
    pg.psql(
        "console",
        "ALTER TABLE orders DROP CONSTRAINT console_refuses",
    );
    browser
        .goto(&format!("{api}/console/dead-letters"))
        .await
        .unwrap();
    let table = browser
        .find(Locator::Id("dead-letters"))
        .await
        .expect("the dead letters are listed");
    assert!(table.text().await.unwrap().contains("console_refuses"));
    browser
        .find(Locator::Css(&format!(
            "input[name=\"message_id\"][value=\"{bad}\"]"
        )))
        .await
        .expect("the dead letter has a box to select it")
        .click()
        .await
        .unwrap();
    browser
        .find(Locator::Id("replay"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let replayed = wait_text(&browser, "replayed", |s| !s.is_empty()).await;
    assert!(replayed.starts_with("Replayed 1 message"), "{replayed}");
    wait_for(
        Duration::from_secs(30),
        "the replayed order persisted",
        || has_status(&url, &bad, "persisted"),
    )
    .await;
    assert_eq!(count(&url, "SELECT count(*) AS n FROM orders"), 2);

    // Is it keeping up? The live panel fills in from /console/live.
    browser.goto(&format!("{api}/console")).await.unwrap();
    let messages = wait_text(&browser, "stream-messages", a_number).await;
    assert_eq!(messages, "3", "two orders and one replay in the stream");
    wait_text(&browser, "consumer-pending", a_number).await;
    wait_text(&browser, "dead-letters-count", |s| s == "0").await;
    wait_text(&browser, "ingest-rate", a_number).await;
    wait_text(&browser, "processed-rate", a_number).await;
    let problems = browser
        .find(Locator::Id("live-problems"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(problems, "", "the live figures are all readable");

    let png = browser.screenshot().await.expect("a screenshot");
    // Into the target directory, not the source tree: a test run leaves the checkout
    // as it was. docs/console.png is a copy of it, taken by hand.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    std::fs::write(&shot, png).expect("write the console's screenshot");
    println!("screenshot: {}", shot.display());
    browser.close().await.unwrap();
}
