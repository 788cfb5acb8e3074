//! Webhook signatures: each configured rule verifies the requests of its routes against
//! a set of shared secrets, over the raw body, before anything is published.
//!
//! Schemes: GitHub (`X-Hub-Signature-256: sha256=<hex>`), Standard Webhooks
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`), Stripe
//! (`Stripe-Signature: t=…,v1=<hex>`) and a shared token in a header (GitLab's
//! `X-Gitlab-Token`). Every configured secret is tried (several are valid at once, so a
//! secret can be rotated), MACs are compared in constant time, and the secrets are kept
//! behind an `Arc` swapped whole when the secrets file changes or on SIGHUP.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use nomnom_runtime::{EntityName, duration};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Default timestamp tolerance of the Standard Webhooks and Stripe schemes (both
/// specifications recommend five minutes).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);
/// Default header of the `token` scheme: GitLab's.
pub const DEFAULT_TOKEN_HEADER: &str = "x-gitlab-token";
/// How often secrets files are checked for changes.
pub const SECRETS_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How a sender signs its deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.
    Github,
    /// <https://www.standardwebhooks.com>: HMAC-SHA256 of `<id>.<timestamp>.<body>` with a
    /// `whsec_<base64>` secret, in `webhook-signature: v1,<base64>` (space-separated list).
    StandardWebhooks,
    /// `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (several `v1`).
    Stripe,
    /// A shared secret sent as is in a header (`X-Gitlab-Token` by default).
    Token,
}

impl Scheme {
    pub const NAMES: &'static str = "github, standard-webhooks, stripe or token";

    fn parse(text: &str) -> Option<Self> {
        match text {
            "github" => Some(Self::Github),
            "standard-webhooks" | "standard" => Some(Self::StandardWebhooks),
            "stripe" => Some(Self::Stripe),
            "token" => Some(Self::Token),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Github => "github",
            Self::StandardWebhooks => "standard-webhooks",
            Self::Stripe => "stripe",
            Self::Token => "token",
        }
    }

    fn uses_timestamps(self) -> bool {
        matches!(self, Self::StandardWebhooks | Self::Stripe)
    }
}

/// One signature rule as configured: which scheme, for which routes, with which secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRule {
    pub scheme: Scheme,
    /// The routes (entity hints, after `--entity-map`) it covers; empty: every request,
    /// with or without a route, that no route-specific rule covers.
    pub routes: Vec<EntityName>,
    /// Secrets given inline (the Rust API; tests).
    pub secrets: Vec<String>,
    /// A file with one secret per line (`#` comments), re-read when it changes.
    pub secrets_file: Option<PathBuf>,
    /// An environment variable with comma-separated secrets, read at start.
    pub secrets_env: Option<String>,
    /// Standard Webhooks and Stripe: how far a delivery's timestamp may be from now.
    pub tolerance: Duration,
    /// `token`: the header carrying the token.
    pub header: HeaderName,
}

impl WebhookRule {
    pub fn new(scheme: Scheme) -> Self {
        Self {
            scheme,
            routes: Vec::new(),
            secrets: Vec::new(),
            secrets_file: None,
            secrets_env: None,
            tolerance: DEFAULT_TOLERANCE,
            header: HeaderName::from_static(DEFAULT_TOKEN_HEADER),
        }
    }

    /// Parses `--webhook` text: comma-separated `key=value` pairs, e.g.
    /// `scheme=github,secrets-file=/run/secrets/github,route=push,route=issues`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut scheme = None;
        let mut rule = Self::new(Scheme::Github);
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                format!("{pair:?} is not key=value; write e.g. scheme=github,secrets-file=/run/secrets/github")
            })?;
            let value = value.trim();
            match key.trim() {
                "scheme" => {
                    scheme = Some(Scheme::parse(value).ok_or_else(|| {
                        format!("unknown scheme {value:?}; use {}", Scheme::NAMES)
                    })?)
                }
                "route" => rule
                    .routes
                    .push(EntityName::parse(value).map_err(|e| format!("route {value:?}: {e}"))?),
                "secrets-file" => rule.secrets_file = Some(PathBuf::from(value)),
                "secrets-env" => rule.secrets_env = Some(value.to_owned()),
                "tolerance" => {
                    rule.tolerance = duration::parse(value).map_err(|e| e.to_string())?
                }
                "header" => {
                    rule.header = HeaderName::from_bytes(value.as_bytes())
                        .map_err(|_| format!("{value:?} is not an HTTP header name"))?
                }
                other => {
                    return Err(format!(
                        "unknown key {other:?}; use scheme, route, secrets-file, secrets-env, tolerance or header"
                    ));
                }
            }
        }
        rule.scheme =
            scheme.ok_or_else(|| format!("no scheme= in {text:?}; use {}", Scheme::NAMES))?;
        if rule.secrets_file.is_none() && rule.secrets_env.is_none() {
            return Err(format!(
                "no secrets in {text:?}; add secrets-file=<path> or secrets-env=<VARIABLE>"
            ));
        }
        Ok(rule)
    }

    /// Where the rule's secrets come from, for messages.
    fn source(&self) -> String {
        match (&self.secrets_file, &self.secrets_env) {
            (Some(file), _) => file.display().to_string(),
            (None, Some(var)) => format!("${var}"),
            (None, None) => "the configured secrets".into(),
        }
    }
}

/// Why the webhook secrets could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "cannot read the webhook secrets file {path}: {error}; fix the path in --webhook (NOMNOM_WEBHOOKS)"
    )]
    File {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "the environment variable {0} named by a --webhook rule (NOMNOM_WEBHOOKS) is not set or is empty; set it to the secret(s), comma-separated"
    )]
    Env(String),
    #[error("the {scheme} webhook rule has no secret in {origin}; add one")]
    NoSecret {
        scheme: &'static str,
        origin: String,
    },
    #[error(
        "secret {index} in {origin} is not a Standard Webhooks secret (whsec_ followed by base64, as the sender shows it); copy it again from the sender"
    )]
    StandardSecret { index: usize, origin: String },
    #[error("two --webhook rules cover route {0}; give each route one rule")]
    DuplicateRoute(String),
    #[error(
        "two --webhook rules cover every route (no route=); give at most one rule without routes"
    )]
    DuplicateDefault,
}

/// A rule with its secrets loaded.
struct LoadedRule {
    rule: WebhookRule,
    /// HMAC keys (github, stripe: the secret's bytes; standard webhooks: base64-decoded),
    /// or SHA-256 digests of tokens.
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for LoadedRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedRule")
            .field("scheme", &self.rule.scheme)
            .field("routes", &self.rule.routes)
            .field("secrets", &self.keys.len())
            .finish()
    }
}

/// The configured rules with their secrets. Immutable: a reload builds a new one.
#[derive(Debug, Default)]
pub struct Webhooks {
    rules: Vec<LoadedRule>,
}

/// Why a request's signature was refused (401; nothing is published).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error(
        "the {header} header is missing: {what} takes only deliveries signed by the {scheme} scheme (or an API key); set the webhook's secret at the sender"
    )]
    Missing {
        header: String,
        what: String,
        scheme: &'static str,
    },
    #[error("the {header} header is malformed: expected {expected}")]
    Malformed {
        header: &'static str,
        expected: &'static str,
    },
    #[error(
        "the {header} header does not match the body with any configured secret: the sender's secret differs from nats-api's, or the body was changed on the way"
    )]
    Mismatch { header: &'static str },
    #[error(
        "the {header} header does not hold a configured token; set the webhook's secret token at the sender to one nats-api has"
    )]
    WrongToken { header: String },
    #[error(
        "the delivery's timestamp {timestamp} is {off} s from now, over the {tolerance} s tolerance: a replayed or late delivery, or a clock that is off; the sender must send a fresh delivery"
    )]
    Stale {
        timestamp: i64,
        off: u64,
        tolerance: u64,
    },
}

impl Webhooks {
    /// Loads every rule's secrets (files and environment variables).
    pub fn load(rules: &[WebhookRule]) -> Result<Self, WebhookError> {
        let mut routes = BTreeSet::new();
        let mut defaults = 0;
        let mut loaded = Vec::with_capacity(rules.len());
        for rule in rules {
            if rule.routes.is_empty() {
                defaults += 1;
                if defaults > 1 {
                    return Err(WebhookError::DuplicateDefault);
                }
            }
            for route in &rule.routes {
                if !routes.insert(route.as_str()) {
                    return Err(WebhookError::DuplicateRoute(route.to_string()));
                }
            }
            loaded.push(LoadedRule {
                keys: load_keys(rule)?,
                rule: rule.clone(),
            });
        }
        Ok(Self { rules: loaded })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Secrets loaded, over all rules.
    pub fn secrets(&self) -> usize {
        self.rules.iter().map(|r| r.keys.len()).sum()
    }

    /// Verifies a request against the rule covering `route`: the rule naming it, else the
    /// rule without routes. `Ok(false)`: no rule covers it.
    pub fn verify(
        &self,
        route: Option<&EntityName>,
        headers: &HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<bool, SignatureError> {
        let named =
            route.and_then(|route| self.rules.iter().find(|r| r.rule.routes.contains(route)));
        let Some(rule) = named.or_else(|| self.rules.iter().find(|r| r.rule.routes.is_empty()))
        else {
            return Ok(false);
        };
        let what = route.map_or_else(|| "this endpoint".to_owned(), |r| format!("route {r}"));
        rule.verify(&what, headers, body, now_unix)?;
        Ok(true)
    }
}

/// The secrets of one rule, as its scheme uses them.
fn load_keys(rule: &WebhookRule) -> Result<Vec<Vec<u8>>, WebhookError> {
    let mut secrets: Vec<String> = rule.secrets.clone();
    if let Some(var) = &rule.secrets_env {
        let value = std::env::var(var).unwrap_or_default();
        let before = secrets.len();
        secrets.extend(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
        if secrets.len() == before {
            return Err(WebhookError::Env(var.clone()));
        }
    }
    if let Some(path) = &rule.secrets_file {
        secrets.extend(read_secrets_file(path)?);
    }
    if secrets.is_empty() {
        return Err(WebhookError::NoSecret {
            scheme: rule.scheme.name(),
            origin: rule.source(),
        });
    }
    secrets
        .iter()
        .enumerate()
        .map(|(index, secret)| match rule.scheme {
            Scheme::Github | Scheme::Stripe => Ok(secret.as_bytes().to_vec()),
            Scheme::Token => Ok(Sha256::digest(secret.as_bytes()).to_vec()),
            Scheme::StandardWebhooks => {
                let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
                BASE64
                    .decode(encoded)
                    .ok()
                    .filter(|key| !key.is_empty())
                    .ok_or_else(|| WebhookError::StandardSecret {
                        index: index + 1,
                        origin: rule.source(),
                    })
            }
        })
        .collect()
}

/// One secret per line; blank lines and `#` comments are skipped.
fn read_secrets_file(path: &Path) -> Result<Vec<String>, WebhookError> {
    let text = std::fs::read_to_string(path).map_err(|error| WebhookError::File {
        path: path.to_owned(),
        error,
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

/// The contents of every secrets file the rules read, to notice a change.
pub fn secrets_files_fingerprint(rules: &[WebhookRule]) -> Vec<Option<Vec<u8>>> {
    rules
        .iter()
        .filter_map(|r| r.secrets_file.as_deref())
        .map(|path| std::fs::read(path).ok())
        .collect()
}

impl LoadedRule {
    fn verify(
        &self,
        what: &str,
        headers: &HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), SignatureError> {
        let scheme = self.rule.scheme;
        let missing = |header: &str| SignatureError::Missing {
            header: header.to_owned(),
            what: what.to_owned(),
            scheme: scheme.name(),
        };
        match scheme {
            Scheme::Github => {
                const HEADER: &str = "X-Hub-Signature-256";
                let value = header_text(headers, HEADER).ok_or_else(|| missing(HEADER))?;
                let signature = value
                    .strip_prefix("sha256=")
                    .and_then(|hex_text| hex::decode(hex_text).ok())
                    .ok_or(SignatureError::Malformed {
                        header: HEADER,
                        expected: "sha256=<64 hex digits>",
                    })?;
                self.check_macs(&[&signature], HEADER, |mac| mac.update(body))
            }
            Scheme::StandardWebhooks => {
                // Svix, where the specification comes from, sends the same headers
                // under its own prefix.
                let svix = !headers.contains_key("webhook-id") && headers.contains_key("svix-id");
                let (id_header, timestamp_header, signature_header) = if svix {
                    ("svix-id", "svix-timestamp", "svix-signature")
                } else {
                    ("webhook-id", "webhook-timestamp", "webhook-signature")
                };
                let id = header_text(headers, id_header).ok_or_else(|| missing(id_header))?;
                let timestamp = header_text(headers, timestamp_header)
                    .ok_or_else(|| missing(timestamp_header))?;
                let value = header_text(headers, signature_header)
                    .ok_or_else(|| missing(signature_header))?;
                let seconds = timestamp
                    .parse::<i64>()
                    .map_err(|_| SignatureError::Malformed {
                        header: timestamp_header,
                        expected: "Unix seconds",
                    })?;
                // Version prefixes other than v1 (v1a: asymmetric) are not ours to check.
                let signatures: Vec<Vec<u8>> = value
                    .split_ascii_whitespace()
                    .filter_map(|s| s.strip_prefix("v1,"))
                    .filter_map(|b64| BASE64.decode(b64).ok())
                    .collect();
                if signatures.is_empty() {
                    return Err(SignatureError::Malformed {
                        header: signature_header,
                        expected: "v1,<base64>, space-separated",
                    });
                }
                // The signature first: a forged delivery learns nothing from the clock.
                let refs: Vec<&[u8]> = signatures.iter().map(Vec::as_slice).collect();
                self.check_macs(&refs, signature_header, |mac| {
                    mac.update(id.as_bytes());
                    mac.update(b".");
                    mac.update(timestamp.as_bytes());
                    mac.update(b".");
                    mac.update(body);
                })?;
                self.check_time(seconds, now_unix)
            }
            Scheme::Stripe => {
                const HEADER: &str = "Stripe-Signature";
                let value = header_text(headers, HEADER).ok_or_else(|| missing(HEADER))?;
                let malformed = SignatureError::Malformed {
                    header: HEADER,
                    expected: "t=<unix seconds>,v1=<hex>",
                };
                let mut timestamp = None;
                let mut signatures = Vec::new();
                for (key, item) in value.split(',').filter_map(|p| p.trim().split_once('=')) {
                    match key {
                        "t" => timestamp = Some(item),
                        "v1" => signatures.extend(hex::decode(item).ok()),
                        _ => {}
                    }
                }
                let timestamp = timestamp.ok_or(malformed.clone())?;
                let seconds = timestamp.parse::<i64>().map_err(|_| malformed.clone())?;
                if signatures.is_empty() {
                    return Err(malformed);
                }
                let refs: Vec<&[u8]> = signatures.iter().map(Vec::as_slice).collect();
                self.check_macs(&refs, HEADER, |mac| {
                    mac.update(timestamp.as_bytes());
                    mac.update(b".");
                    mac.update(body);
                })?;
                self.check_time(seconds, now_unix)
            }
            Scheme::Token => {
                let header = &self.rule.header;
                let Some(value) = headers.get(header) else {
                    return Err(missing(header.as_str()));
                };
                let digest = Sha256::digest(value.as_bytes());
                let found = self
                    .keys
                    .iter()
                    .fold(subtle::Choice::from(0), |found, key| {
                        found | key.as_slice().ct_eq(digest.as_slice())
                    });
                if bool::from(found) {
                    Ok(())
                } else {
                    Err(SignatureError::WrongToken {
                        header: header.to_string(),
                    })
                }
            }
        }
    }

    /// Computes the MAC with every secret and compares it, in constant time, with every
    /// signature sent.
    fn check_macs(
        &self,
        signatures: &[&[u8]],
        header: &'static str,
        feed: impl Fn(&mut HmacSha256),
    ) -> Result<(), SignatureError> {
        let mut found = subtle::Choice::from(0);
        for key in &self.keys {
            let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
            feed(&mut mac);
            let expected = mac.finalize().into_bytes();
            for signature in signatures {
                found |= expected.as_slice().ct_eq(signature);
            }
        }
        if bool::from(found) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch { header })
        }
    }

    fn check_time(&self, timestamp: i64, now_unix: i64) -> Result<(), SignatureError> {
        debug_assert!(self.rule.scheme.uses_timestamps());
        let off = now_unix.abs_diff(timestamp);
        let tolerance = self.rule.tolerance.as_secs();
        if off > tolerance {
            return Err(SignatureError::Stale {
                timestamp,
                off,
                tolerance,
            });
        }
        Ok(())
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(scheme: Scheme, secrets: &[&str]) -> WebhookRule {
        WebhookRule {
            secrets: secrets.iter().map(|s| (*s).to_owned()).collect(),
            ..WebhookRule::new(scheme)
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn github_example_from_its_documentation() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
        let hooks =
            Webhooks::load(&[rule(Scheme::Github, &["It's a Secret to Everybody"])]).unwrap();
        let good = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(hooks.verify(None, &good, b"Hello, World!", 0), Ok(true));
        assert!(matches!(
            hooks.verify(None, &good, b"Hello, World?", 0),
            Err(SignatureError::Mismatch { .. })
        ));
    }

    #[test]
    fn standard_webhooks_example_from_the_specification() {
        // The reference libraries' test vector.
        let hooks = Webhooks::load(&[rule(
            Scheme::StandardWebhooks,
            &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
        )])
        .unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sent = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        assert_eq!(hooks.verify(None, &sent, body, 1_614_265_330), Ok(true));
        assert!(matches!(
            hooks.verify(None, &sent, body, 1_614_265_330 + 301),
            Err(SignatureError::Stale { off: 301, .. })
        ));
        // Svix's own header names.
        let svix: HeaderMap = sent
            .iter()
            .map(|(name, value)| {
                let renamed = name.as_str().replace("webhook-", "svix-");
                (
                    HeaderName::from_bytes(renamed.as_bytes()).unwrap(),
                    value.clone(),
                )
            })
            .collect();
        assert_eq!(hooks.verify(None, &svix, body, 1_614_265_330), Ok(true));
        assert!(matches!(
            hooks.verify(None, &svix, b"{}", 1_614_265_330),
            Err(SignatureError::Mismatch {
                header: "svix-signature"
            })
        ));
    }

    #[test]
    fn routes_pick_their_rule_and_unlisted_routes_none() {
        let mut stripe = rule(Scheme::Stripe, &["whsec_x"]);
        stripe.routes = vec![EntityName::parse("stripe").unwrap()];
        let hooks = Webhooks::load(&[stripe]).unwrap();
        let other = EntityName::parse("order").unwrap();
        assert_eq!(
            hooks.verify(Some(&other), &HeaderMap::new(), b"{}", 0),
            Ok(false)
        );
        let route = EntityName::parse("stripe").unwrap();
        assert!(matches!(
            hooks.verify(Some(&route), &HeaderMap::new(), b"{}", 0),
            Err(SignatureError::Missing { .. })
        ));
    }

    #[test]
    fn rules_parse_from_flag_text() {
        let rule = WebhookRule::parse(
            "scheme=token, header=X-Gitlab-Token, secrets-env=GITLAB_TOKENS, route=push, route=merge_request",
        )
        .unwrap();
        assert_eq!(rule.scheme, Scheme::Token);
        assert_eq!(rule.routes.len(), 2);
        assert_eq!(rule.header.as_str(), "x-gitlab-token");
        for bad in [
            "scheme=gitea,secrets-env=X",
            "scheme=github",
            "secrets-file=/x",
            "scheme=github,secrets-file=/x,route=System Hook",
        ] {
            assert!(WebhookRule::parse(bad).is_err(), "{bad}");
        }
    }
}
