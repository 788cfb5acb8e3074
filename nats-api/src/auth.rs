//! Optional API-key authentication: `Authorization: Bearer <key>`, compared in constant time.

use std::path::Path;
use std::sync::{Arc, RwLock};

use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{error::ApiError, state::AppState};

/// The accepted keys, kept only as SHA-256 digests.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            digests: keys
                .into_iter()
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(|k| Sha256::digest(k.as_bytes()).into())
                .collect(),
        }
    }

    /// Keys from `--api-keys` plus those in `file` (one per line; `#` starts a comment).
    pub fn load(inline: &[String], file: Option<&Path>) -> std::io::Result<Self> {
        let mut keys: Vec<String> = inline.to_vec();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)?;
            keys.extend(
                text.lines()
                    .map(|line| line.split('#').next().unwrap_or("").trim().to_owned())
                    .filter(|k| !k.is_empty()),
            );
        }
        Ok(Self::new(keys.iter().map(String::as_str)))
    }

    pub fn is_enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` is one of the keys. Hashing first makes the comparison
    /// independent of key lengths, and every key is compared, so timing reveals nothing.
    pub fn accepts(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |found, key| {
                found | key.ct_eq(&digest)
            })
            .into()
    }
}

/// Keys shared by all requests and replaced atomically on reload.
pub type SharedKeys = Arc<RwLock<Arc<ApiKeys>>>;

/// Put on a POST that came without a valid API key while webhook rules are configured:
/// the handler, once it has the body, verifies its signature, or refuses it when no rule
/// covers its route and `keys_required`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unverified {
    pub keys_required: bool,
}

/// Middleware: refuses requests without a valid key when keys are configured, except
/// POSTs a webhook rule may cover, which go on marked [`Unverified`].
pub async fn require_api_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let keys = state.current_api_keys();
    let webhooks = !state.config.webhooks.is_empty();
    if !keys.is_enabled() && !webhooks {
        return next.run(request).await;
    }
    match bearer_key(request.headers()) {
        Some(key) if keys.is_enabled() && keys.accepts(key) => next.run(request).await,
        _ if webhooks && request.method() == http::Method::POST => {
            request.extensions_mut().insert(Unverified {
                keys_required: keys.is_enabled(),
            });
            next.run(request).await
        }
        _ if !keys.is_enabled() => next.run(request).await,
        _ => {
            metrics::counter!("ingest_auth_failures_total").increment(1);
            ApiError::Unauthorized.into_response()
        }
    }
}

/// The key of `Authorization: Bearer <key>` (the scheme in any case, as RFC 9110 allows).
pub(crate) fn bearer_key(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_keys() {
        let keys = ApiKeys::new(["alpha", " beta ", ""]);
        assert_eq!(keys.len(), 2);
        assert!(keys.accepts("alpha"));
        assert!(keys.accepts("beta"));
        assert!(!keys.accepts("alph"));
        assert!(!keys.accepts(""));
        assert!(!ApiKeys::default().is_enabled());
    }

    #[test]
    fn loads_keys_from_a_file_with_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# team keys\nfile-key-1\n\n  file-key-2  # ops\n").unwrap();
        let keys = ApiKeys::load(&["inline".into()], Some(&path)).unwrap();
        assert_eq!(keys.len(), 3);
        assert!(keys.accepts("file-key-2"));
        assert!(keys.accepts("inline"));
        assert!(!keys.accepts("# team keys"));
    }
}
