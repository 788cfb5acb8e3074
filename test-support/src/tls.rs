//! Certificates for TLS tests: a private CA, a server certificate and a client
//! certificate, as an operator would issue them for mutual TLS.

use std::path::{Path, PathBuf};

/// PEM files under one directory, made by [`TlsFiles::write`].
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The private CA's certificate (`ca.pem`): both sides trust it.
    pub ca: PathBuf,
    /// Server certificate for `127.0.0.1` and `localhost`, and its key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Client certificate (`CN`-less, SAN `nomnom-client`), and its key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Issues a CA, a server and a client certificate into `dir`.
    ///
    /// # Panics
    /// When a certificate cannot be made or written.
    pub fn write(dir: &Path) -> TlsFiles {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        for (name, names) in [
            (
                "server",
                vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            ),
            ("client", vec!["nomnom-client".to_owned()]),
        ] {
            let key = KeyPair::generate().expect("key");
            let cert = CertificateParams::new(names)
                .expect("params")
                .signed_by(&key, &issuer)
                .expect("certificate");
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write cert");
            std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem())
                .expect("write key");
        }
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write CA");
        TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        }
    }

    /// A nats-server `tls { ... }` block demanding a client certificate from this CA.
    pub fn nats_server_block(&self) -> String {
        format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n  timeout: 2\n}}\n",
            self.server_cert, self.server_key, self.ca
        )
    }
}
