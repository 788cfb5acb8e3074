//! NATS authentication and TLS against real nats-server processes configured that way.

use std::time::Duration;

use async_nats::jetstream;
use nomnom_runtime::{NatsConfig, StreamSettings, stream};
use nomnom_test_support::{NatsOptions, NatsServer, TlsFiles};

fn server(extra_config: String) -> NatsServer {
    NatsServer::start_with(NatsOptions {
        extra_config,
        ..Default::default()
    })
}

fn config(nats: &NatsServer) -> NatsConfig {
    NatsConfig {
        url: nats.url(),
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

/// Connected for real: the stream can be set up over the connection.
async fn assert_works(config: NatsConfig) {
    let client = config.connect().await.expect("authenticated connection");
    let js = jetstream::new(client);
    stream::ensure_stream(&js, &StreamSettings::default())
        .await
        .expect("JetStream usable");
}

async fn assert_refused(config: NatsConfig, reason: &str) {
    let err = config
        .connect()
        .await
        .expect_err("connection must be refused");
    let text = err.to_string();
    assert!(text.starts_with("cannot connect to NATS"), "{text}");
    assert!(text.contains(reason), "expected {reason:?} in {text:?}");
}

const AUTHORIZATION: &str = "authorization violation";

#[tokio::test]
async fn user_and_password() {
    let nats = server(r#"authorization { user: "api", password: "s3cret" }"#.into());
    let with = |user: &str, password: &str| NatsConfig {
        user: Some(user.into()),
        password: Some(password.into()),
        ..config(&nats)
    };
    assert_works(with("api", "s3cret")).await;
    assert_refused(with("api", "wrong"), AUTHORIZATION).await;
    assert_refused(config(&nats), AUTHORIZATION).await;
    let err = NatsConfig {
        user: Some("api".into()),
        ..config(&nats)
    }
    .connect()
    .await
    .unwrap_err();
    assert!(err.to_string().contains("set NATS_PASSWORD"), "{err}");
}

#[tokio::test]
async fn token() {
    let nats = server(r#"authorization { token: "t0ken-abc" }"#.into());
    let with = |token: &str| NatsConfig {
        token: Some(token.into()),
        ..config(&nats)
    };
    assert_works(with("t0ken-abc")).await;
    assert_refused(with("other"), AUTHORIZATION).await;
}

#[tokio::test]
async fn nkey() {
    let user = nkeys::KeyPair::new_user();
    let nats = server(format!(
        r#"authorization {{ users: [ {{ nkey: "{}" }} ] }}"#,
        user.public_key()
    ));
    assert_works(NatsConfig {
        nkey_seed: Some(user.seed().unwrap()),
        ..config(&nats)
    })
    .await;
    let stranger = nkeys::KeyPair::new_user();
    assert_refused(
        NatsConfig {
            nkey_seed: Some(stranger.seed().unwrap()),
            ..config(&nats)
        },
        AUTHORIZATION,
    )
    .await;
}

#[tokio::test]
async fn mutual_tls_with_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    let files = TlsFiles::write(certs.path());
    let nats = server(files.nats_server_block());
    let tls = NatsConfig {
        tls_ca: Some(files.ca.clone()),
        tls_cert: Some(files.client_cert.clone()),
        tls_key: Some(files.client_key.clone()),
        ..config(&nats)
    };
    assert_works(tls.clone()).await;
    // The server demands a client certificate.
    assert_refused(
        NatsConfig {
            tls_cert: None,
            tls_key: None,
            ..tls.clone()
        },
        "CertificateRequired",
    )
    .await;
    // The client must trust the private CA.
    assert_refused(
        NatsConfig {
            tls_ca: None,
            require_tls: true,
            ..tls.clone()
        },
        "UnknownIssuer",
    )
    .await;
    let err = NatsConfig {
        tls_key: None,
        ..tls
    }
    .connect()
    .await
    .unwrap_err();
    assert!(err.to_string().contains("must be set together"), "{err}");
}

/// A signed NATS JWT (`ed25519-nkey`), as `nsc` would issue it.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine as _;
    let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("{:X}", uuid::Uuid::now_v7().as_u128()),
        "iat": 1_700_000_000,
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let payload = encode(claims.to_string().as_bytes());
    let signature = issuer
        .sign(format!("{header}.{payload}").as_bytes())
        .unwrap();
    format!("{header}.{payload}.{}", encode(&signature))
}

#[tokio::test]
async fn creds_file_in_operator_mode() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "nomnom-test",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "app",
        serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "nats-api",
        serde_json::json!({"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}),
    );
    // JetStream in operator mode needs a system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2}),
    );
    let nats = server(format!(
        "operator: \"{operator_jwt}\"\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{\n  {acc}: \"{account_jwt}\"\n  {sys}: \"{system_jwt}\"\n}}\n",
        acc = account.public_key(),
        sys = system.public_key(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("nats-api.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    assert_works(NatsConfig {
        creds_file: Some(creds),
        ..config(&nats)
    })
    .await;
    assert_refused(config(&nats), AUTHORIZATION).await;
    let missing = NatsConfig {
        creds_file: Some(dir.path().join("missing.creds")),
        ..config(&nats)
    }
    .connect()
    .await
    .unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("cannot read the NATS credentials file"),
        "{missing}"
    );
}
