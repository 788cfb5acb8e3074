//! The durable pull consumer every replica shares: creating it, fetching batches, and
//! recovering when the stream or consumer went away.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{
        Consumer as PullConsumer,
        pull::{self, Batch, BatchError},
    },
    context::{GetStreamError, GetStreamErrorKind},
    stream::{ConsumerError, ConsumerErrorKind},
};
use futures::StreamExt;

use super::{Shutdown, WorkerConfig, WorkerError};
use crate::stream;

/// Fetch failures in a row after which the worker gives up (exits non-zero).
const MAX_FETCH_FAILURES: u32 = 10;

/// Why the consumer could not be looked up or created.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerSetupError {
    #[error("cannot find its stream: {0}")]
    Stream(#[from] GetStreamError),
    #[error(transparent)]
    Create(#[from] ConsumerError),
}

impl ConsumerSetupError {
    /// JetStream did not answer, or answered that it cannot serve now: worth waiting for.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Stream(err) => match err.kind() {
                GetStreamErrorKind::Request => true,
                GetStreamErrorKind::JetStream(error) => stream::is_unavailable_code(&error),
                _ => false,
            },
            Self::Create(err) => match err.kind() {
                ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request => true,
                ConsumerErrorKind::JetStream(error) => stream::is_unavailable_code(&error),
                _ => false,
            },
        }
    }
}

/// The worker's handle on the durable consumer.
pub(super) struct Consumer {
    js: jetstream::Context,
    config: WorkerConfig,
    inner: PullConsumer<pull::Config>,
    /// When the stream was created (µs since 1970): which incarnation its sequences
    /// belong to.
    stream_created: i64,
    /// Fetches failed in a row.
    failures: u32,
}

impl Consumer {
    pub(super) async fn ensure(
        js: jetstream::Context,
        config: &WorkerConfig,
    ) -> Result<Self, ConsumerSetupError> {
        let (inner, stream_created) = create(&js, config).await?;
        Ok(Self {
            js,
            config: config.clone(),
            inner,
            stream_created,
            failures: 0,
        })
    }

    /// When the stream the consumer reads was created (µs since 1970).
    pub(super) fn stream_created(&self) -> i64 {
        self.stream_created
    }

    /// Asks for up to `max` messages, waiting up to `wait` for them.
    pub(super) async fn fetch(&self, max: usize, wait: Duration) -> Result<Batch, BatchError> {
        self.inner
            .fetch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
    }

    /// The messages of a fetched batch. After a failed fetch, recovers the stream and
    /// consumer (and returns no messages), or gives up. `None`: shutdown was requested
    /// while waiting for JetStream to come back.
    pub(super) async fn receive(
        &mut self,
        fetched: Result<Batch, BatchError>,
        shutdown: &Shutdown,
    ) -> Result<Option<Vec<jetstream::Message>>, WorkerError> {
        let mut batch = match fetched {
            Ok(batch) => batch,
            Err(err) => {
                return Ok(self.recover(Box::new(err), shutdown).await?.then(Vec::new));
            }
        };
        let mut messages = Vec::new();
        let mut error = None;
        while let Some(message) = batch.next().await {
            match message {
                Ok(message) => messages.push(message),
                Err(err) => {
                    error = Some(err);
                    break;
                }
            }
        }
        match error {
            // A fetch while NATS is gone ends empty, without an error, at its expiry: not
            // a success. Waiting for JetStream says so in the log (and is where SIGTERM
            // finds the worker) instead of fetching in silence.
            None if messages.is_empty()
                && self.js.client().connection_state()
                    != async_nats::connection::State::Connected =>
            {
                let lost = "the NATS connection is lost".into();
                return Ok(self.recover(lost, shutdown).await?.then(Vec::new));
            }
            None => self.failures = 0,
            Some(err) if messages.is_empty() => {
                return Ok(self.recover(err, shutdown).await?.then_some(messages));
            }
            Some(_) => {}
        }
        Ok(Some(messages))
    }

    /// After a fetch error: recreates the stream and consumer if they were deleted; gives
    /// up (exit non-zero) when that keeps failing, instead of idling forever. Waits for
    /// JetStream while it is unreachable; false if shutdown was requested meanwhile.
    async fn recover(
        &mut self,
        error: async_nats::Error,
        shutdown: &Shutdown,
    ) -> Result<bool, WorkerError> {
        self.failures += 1;
        tracing::warn!(%error, attempt = self.failures, "fetch failed; checking the stream and consumer");
        if self.failures > MAX_FETCH_FAILURES {
            return Err(WorkerError::ConsumerLost {
                name: self.config.consumer.clone(),
                source: error,
            });
        }
        let mut delay = Duration::from_millis(200 * u64::from(self.failures));
        loop {
            if !shutdown.sleep(delay).await {
                return Ok(false);
            }
            // JetStream unreachable or without a quorum (a cluster that lost nodes) is not
            // a lost stream: wait for it, logging each attempt, instead of exiting.
            // Anything else (a refusal) ends the worker with the reason.
            let Some(recreated) = shutdown.unless_requested(self.recreate()).await else {
                return Ok(false);
            };
            let unavailable = match recreated {
                Ok(()) => return Ok(true),
                Err(WorkerError::Stream(err)) if err.is_unavailable() => err.to_string(),
                Err(WorkerError::Consumer { source, .. }) if source.is_unavailable() => {
                    source.to_string()
                }
                Err(err) => return Err(err),
            };
            tracing::warn!(error = %unavailable, retry_in_ms = delay.as_millis() as u64, "JetStream unavailable; waiting for it");
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn recreate(&mut self) -> Result<(), WorkerError> {
        stream::ensure_stream(&self.js, &self.config.stream).await?;
        (self.inner, self.stream_created) =
            create(&self.js, &self.config)
                .await
                .map_err(|source| WorkerError::Consumer {
                    name: self.config.consumer.clone(),
                    source,
                })?;
        Ok(())
    }
}

/// Creates or updates the consumer: changed settings (ack wait, backoff, ...) apply on
/// restart. Also returns when the stream was created (µs since 1970).
async fn create(
    js: &jetstream::Context,
    config: &WorkerConfig,
) -> Result<(PullConsumer<pull::Config>, i64), ConsumerSetupError> {
    let stream = js.get_stream(&config.stream.name).await?;
    let created = stream.cached_info().created.unix_timestamp_nanos() / 1_000;
    let created = i64::try_from(created).unwrap_or(i64::MAX);
    Ok((
        stream.create_consumer(config.consumer_config()).await?,
        created,
    ))
}
