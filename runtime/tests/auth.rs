//! NATS authentication and TLS against real nats-server processes configured that way.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use nomnom_runtime::{NatsConfig, StreamSettings, stream};
use nomnom_test_support::{NatsOptions, NatsServer};

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

/// A private CA, a server certificate for 127.0.0.1, and a client certificate.
fn write_certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    for (name, names) in [
        (
            "server",
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
        ),
        ("client", vec!["nomnom-client".to_owned()]),
    ] {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
}

#[tokio::test]
async fn mutual_tls_with_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    write_certificates(dir);
    let nats = server(format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n  timeout: 2\n}}",
        dir.join("server.pem"),
        dir.join("server-key.pem"),
        dir.join("ca.pem")
    ));
    let tls = NatsConfig {
        tls_ca: Some(dir.join("ca.pem")),
        tls_cert: Some(dir.join("client.pem")),
        tls_key: Some(dir.join("client-key.pem")),
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
