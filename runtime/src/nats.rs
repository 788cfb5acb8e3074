//! Connecting to NATS: one configuration for the API and every worker.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{ConnectOptions, Event};

use crate::defaults;

/// How to reach and authenticate to NATS. Build with `..Default::default()`.
#[derive(Clone)]
pub struct NatsConfig {
    /// One URL or a comma-separated list of cluster URLs.
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// NKey seed (starts with `SU`).
    pub nkey_seed: Option<String>,
    /// A `.creds` file (JWT and NKey seed).
    pub creds_file: Option<PathBuf>,
    /// Extra root certificate (PEM) to trust, for servers with a private CA.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub require_tls: bool,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Name the connection shows in the server's monitoring.
    pub client_name: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: defaults::NATS_URL.to_owned(),
            user: None,
            password: None,
            token: None,
            nkey_seed: None,
            creds_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            require_tls: false,
            connect_timeout: defaults::NATS_CONNECT_TIMEOUT,
            request_timeout: defaults::NATS_REQUEST_TIMEOUT,
            client_name: "nomnom".to_owned(),
        }
    }
}

// Secrets stay out of logs and panics.
impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("NatsConfig")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("password", &redact(&self.password))
            .field("token", &redact(&self.token))
            .field("nkey_seed", &redact(&self.nkey_seed))
            .field("creds_file", &self.creds_file)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("require_tls", &self.require_tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("client_name", &self.client_name)
            .finish()
    }
}

/// Why a NATS connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    #[error(
        "more than one NATS authentication method is set ({0}); set only one of user/password, token, nkey seed or creds file"
    )]
    ConflictingAuth(String),
    #[error("a NATS user needs a password: set NATS_PASSWORD or pass --nats-password")]
    UserWithoutPassword,
    #[error("--nats-tls-cert and --nats-tls-key must be set together")]
    IncompleteClientCertificate,
    #[error("cannot read the NATS credentials file {path}: {source}")]
    CredsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
}

impl NatsConnectError {
    /// The server could not be reached (down, restarting, its name not resolving yet):
    /// worth waiting for, unlike a refused login, a TLS or a configuration error.
    pub fn is_unreachable(&self) -> bool {
        use async_nats::ConnectErrorKind;
        match self {
            Self::Connect { source, .. } => matches!(
                source.kind(),
                ConnectErrorKind::Dns
                    | ConnectErrorKind::TimedOut
                    | ConnectErrorKind::Io
                    | ConnectErrorKind::MaxReconnects
            ),
            _ => false,
        }
    }
}

impl NatsConfig {
    /// Connects, failing within `connect_timeout` if the server cannot be reached.
    pub async fn connect(&self) -> Result<async_nats::Client, NatsConnectError> {
        self.connect_with(false).await
    }

    /// Returns a client at once and keeps trying to connect in the background, for
    /// services that must answer `/health` while NATS is still down.
    pub async fn connect_in_background(&self) -> Result<async_nats::Client, NatsConnectError> {
        self.connect_with(true).await
    }

    async fn connect_with(
        &self,
        retry_initial: bool,
    ) -> Result<async_nats::Client, NatsConnectError> {
        let mut options = self.auth_options().await?;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(NatsConnectError::IncompleteClientCertificate);
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.require_tls || self.tls_ca.is_some() || self.tls_cert.is_some() {
            options = options.require_tls(true);
        }
        options = options
            .name(&self.client_name)
            .connection_timeout(self.connect_timeout)
            .request_timeout(Some(self.request_timeout))
            .max_reconnects(None)
            .event_callback(|event| async move { log_event(&event) });
        if retry_initial {
            options = options.retry_on_initial_connect();
        }
        let urls: Vec<&str> = self.url.split(',').map(str::trim).collect();
        let addrs: Vec<async_nats::ServerAddr> = urls
            .iter()
            .map(|u| u.parse())
            .collect::<Result<_, _>>()
            .map_err(|e: std::io::Error| NatsConnectError::Connect {
                url: self.url.clone(),
                source: async_nats::ConnectError::with_source(
                    async_nats::ConnectErrorKind::ServerParse,
                    e,
                ),
            })?;
        options
            .connect(addrs.as_slice())
            .await
            .map_err(|source| NatsConnectError::Connect {
                url: self.url.clone(),
                source,
            })
    }

    async fn auth_options(&self) -> Result<ConnectOptions, NatsConnectError> {
        let mut methods = Vec::new();
        if self.user.is_some() {
            methods.push("user/password");
        }
        if self.token.is_some() {
            methods.push("token");
        }
        if self.nkey_seed.is_some() {
            methods.push("nkey seed");
        }
        if self.creds_file.is_some() {
            methods.push("creds file");
        }
        if methods.len() > 1 {
            return Err(NatsConnectError::ConflictingAuth(methods.join(", ")));
        }
        let options = ConnectOptions::new();
        Ok(
            match (&self.user, &self.token, &self.nkey_seed, &self.creds_file) {
                (Some(user), ..) => {
                    let password = self
                        .password
                        .clone()
                        .ok_or(NatsConnectError::UserWithoutPassword)?;
                    options.user_and_password(user.clone(), password)
                }
                (_, Some(token), ..) => options.token(token.clone()),
                (_, _, Some(seed), _) => options.nkey(seed.clone()),
                (_, _, _, Some(path)) => {
                    options.credentials_file(path).await.map_err(|source| {
                        NatsConnectError::CredsFile {
                            path: path.clone(),
                            source,
                        }
                    })?
                }
                _ => options,
            },
        )
    }
}

fn log_event(event: &Event) {
    match event {
        Event::Connected => tracing::info!("connected to NATS"),
        Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
        Event::LameDuckMode => tracing::warn!("NATS server entered lame duck mode"),
        other => tracing::warn!(event = %other, "NATS client event"),
    }
}
