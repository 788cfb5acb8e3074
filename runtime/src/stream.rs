//! The stream every message lives in, and its idempotent create-or-update.
//!
//! Both nats-api and the workers call [`ensure_stream`] with [`StreamSettings`] built from
//! the same flags and defaults, so whoever starts first creates the same stream. A setting
//! that differs from the running stream is updated and logged, never silently ignored.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    object_store::{self, ObjectStore},
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};

use crate::{defaults, subject};

/// The stream's settings. Build with `..Default::default()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    pub name: String,
    /// Subjects the stream captures.
    pub subjects: Vec<String>,
    /// Prefix messages are published under; must be inside `subjects`.
    pub subject_prefix: String,
    pub duplicate_window: Duration,
    pub max_age: Duration,
    /// Size limit in bytes, -1 for none. When full, publishes fail: nothing is discarded.
    pub max_bytes: i64,
    pub replicas: usize,
    /// Object Store bucket for bodies over the server's max_payload.
    pub body_bucket: String,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            name: defaults::STREAM_NAME.to_owned(),
            subjects: vec![defaults::STREAM_SUBJECTS.to_owned()],
            subject_prefix: defaults::INGEST_SUBJECT_PREFIX.to_owned(),
            duplicate_window: defaults::DUPLICATE_WINDOW,
            max_age: defaults::STREAM_MAX_AGE,
            max_bytes: defaults::STREAM_MAX_BYTES,
            replicas: defaults::STREAM_REPLICAS,
            body_bucket: defaults::BODY_BUCKET.to_owned(),
        }
    }
}

/// Why the stream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StreamSetupError {
    #[error("invalid stream settings: {0}")]
    Invalid(String),
    #[error("cannot look up stream {name}: {source}")]
    Lookup {
        name: String,
        source: jetstream::context::GetStreamError,
    },
    #[error("cannot create stream {name}: {source}")]
    Create {
        name: String,
        source: jetstream::context::CreateStreamError,
    },
    #[error("cannot update stream {name} ({changes}): {source}")]
    Update {
        name: String,
        changes: String,
        source: jetstream::context::UpdateStreamError,
    },
    #[error("cannot read stream {name}: {source}")]
    Info {
        name: String,
        source: stream::InfoError,
    },
    #[error("cannot set up object store bucket {bucket}: {message}")]
    BodyStore { bucket: String, message: String },
}

impl StreamSetupError {
    /// JetStream did not answer, or answered that it cannot serve now (no quorum in a
    /// cluster that lost nodes, a leader election): worth retrying, unlike a refusal.
    pub fn is_unavailable(&self) -> bool {
        use jetstream::context::{CreateStreamErrorKind, GetStreamErrorKind};
        match self {
            Self::Lookup { source, .. } => match source.kind() {
                GetStreamErrorKind::Request => true,
                GetStreamErrorKind::JetStream(error) => is_unavailable_code(&error),
                _ => false,
            },
            Self::Create { source, .. } => match source.kind() {
                CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => {
                    true
                }
                CreateStreamErrorKind::JetStream(error) => is_unavailable_code(&error),
                _ => false,
            },
            Self::Info { .. } => true,
            _ => false,
        }
    }
}

/// JetStream's "temporarily unavailable" answers (HTTP-like code 503).
pub(crate) fn is_unavailable_code(error: &jetstream::Error) -> bool {
    error.code() == 503
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl StreamSettings {
    /// Checks the settings before any request reaches the server.
    pub fn validate(&self) -> Result<(), StreamSetupError> {
        let invalid = |m: String| Err(StreamSetupError::Invalid(m));
        if !is_valid_name(&self.name) {
            return invalid(format!(
                "stream name {:?} must be letters, digits, '_' or '-'",
                self.name
            ));
        }
        if !is_valid_name(&self.body_bucket) {
            return invalid(format!(
                "body bucket {:?} must be letters, digits, '_' or '-'",
                self.body_bucket
            ));
        }
        if self.subjects.is_empty() {
            return invalid("the stream needs at least one subject".into());
        }
        let filter = subject::ingest_filter(&self.subject_prefix);
        if !self
            .subjects
            .iter()
            .any(|s| subject::subject_matches(s, &filter))
        {
            return invalid(format!(
                "subject prefix {:?} is not captured by the stream subjects {:?}; pick a prefix under them",
                self.subject_prefix, self.subjects
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return invalid(format!("replicas must be 1 to 5, got {}", self.replicas));
        }
        if self.duplicate_window > self.max_age && !self.max_age.is_zero() {
            return invalid("duplicate window must not exceed max age".into());
        }
        Ok(())
    }

    /// The JetStream configuration these settings stand for.
    pub fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            description: Some("nomnom ingested messages".into()),
            subjects: self.subjects.clone(),
            retention: RetentionPolicy::Limits,
            // A full stream must refuse new messages, never drop unprocessed ones.
            discard: DiscardPolicy::New,
            storage: StorageType::File,
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            max_messages: -1,
            max_messages_per_subject: -1,
            max_consumers: -1,
            duplicate_window: self.duplicate_window,
            num_replicas: self.replicas,
            // Status lookups read single messages by subject.
            allow_direct: true,
            ..Default::default()
        }
    }

    /// What the Object Store bucket for large bodies looks like.
    pub fn body_store_config(&self) -> object_store::Config {
        object_store::Config {
            bucket: self.body_bucket.clone(),
            description: Some("nomnom message bodies larger than max_payload".into()),
            max_age: self.max_age,
            storage: StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }
}

/// The managed settings in which `running` differs from `desired`, described for a log line.
pub fn differences(running: &stream::Config, desired: &stream::Config) -> Vec<String> {
    let mut changes = Vec::new();
    let mut compare = |name: &str, old: String, new: String| {
        if old != new {
            changes.push(format!("{name} {old} -> {new}"));
        }
    };
    compare(
        "subjects",
        format!("{:?}", running.subjects),
        format!("{:?}", desired.subjects),
    );
    compare(
        "max_age",
        crate::duration::format(running.max_age),
        crate::duration::format(desired.max_age),
    );
    compare(
        "max_bytes",
        running.max_bytes.to_string(),
        desired.max_bytes.to_string(),
    );
    compare(
        "duplicate_window",
        crate::duration::format(running.duplicate_window),
        crate::duration::format(desired.duplicate_window),
    );
    compare(
        "replicas",
        running.num_replicas.to_string(),
        desired.num_replicas.to_string(),
    );
    compare(
        "discard",
        format!("{:?}", running.discard),
        format!("{:?}", desired.discard),
    );
    compare(
        "allow_direct",
        running.allow_direct.to_string(),
        desired.allow_direct.to_string(),
    );
    changes
}

/// Creates the stream, or brings a running one in line with `settings`. Safe to call from
/// many processes at once.
pub async fn ensure_stream(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<stream::Info, StreamSetupError> {
    settings.validate()?;
    let desired = settings.stream_config();
    let name = settings.name.clone();
    for _attempt in 0..3 {
        match js.get_stream(&name).await {
            Ok(mut stream) => {
                let info = stream
                    .info()
                    .await
                    .map_err(|source| StreamSetupError::Info {
                        name: name.clone(),
                        source,
                    })?
                    .clone();
                let changes = differences(&info.config, &desired);
                if changes.is_empty() {
                    return Ok(info);
                }
                let changes = changes.join(", ");
                tracing::warn!(stream = %name, %changes, "stream settings differ from the configured ones; updating the stream");
                return js.update_stream(&desired).await.map_err(|source| {
                    StreamSetupError::Update {
                        name: name.clone(),
                        changes,
                        source,
                    }
                });
            }
            Err(err) if is_not_found(&err.kind()) => {
                match js.create_stream(desired.clone()).await {
                    Ok(stream) => {
                        tracing::info!(stream = %name, "created stream");
                        return Ok(stream.cached_info().clone());
                    }
                    // Another process created it in between: look again.
                    Err(err) if is_name_taken(&err.kind()) => {
                        tracing::debug!(stream = %name, error = %err, "stream create raced; retrying");
                        continue;
                    }
                    Err(source) => {
                        return Err(StreamSetupError::Create { name, source });
                    }
                }
            }
            Err(source) => return Err(StreamSetupError::Lookup { name, source }),
        }
    }
    Err(StreamSetupError::Invalid(format!(
        "stream {name} could neither be created nor read; check the server log and that JetStream is enabled"
    )))
}

fn is_not_found(kind: &jetstream::context::GetStreamErrorKind) -> bool {
    matches!(kind, jetstream::context::GetStreamErrorKind::JetStream(e)
        if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

fn is_name_taken(kind: &jetstream::context::CreateStreamErrorKind) -> bool {
    matches!(kind, jetstream::context::CreateStreamErrorKind::JetStream(e)
        if e.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST)
}

/// Opens (creating it if missing) the Object Store bucket that holds oversized bodies.
pub async fn ensure_body_store(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<ObjectStore, StreamSetupError> {
    let bucket = settings.body_bucket.clone();
    if let Ok(store) = js.get_object_store(&bucket).await {
        return Ok(store);
    }
    match js.create_object_store(settings.body_store_config()).await {
        Ok(store) => Ok(store),
        Err(create_err) => {
            js.get_object_store(&bucket)
                .await
                .map_err(|_| StreamSetupError::BodyStore {
                    bucket,
                    message: create_err.to_string(),
                })
        }
    }
}
