//! One batch, in four phases: decode (the envelope), parse (the body, into rows), write
//! (one transaction with the status rows) and settle (ack, nak or dead-letter each
//! message). [`Worker::prepare`] does the first two, [`Worker::write_prepared`] and
//! [`Worker::settle_written`] the last two, so that the loop (`mod.rs`) can prepare the
//! next batch while this one is written, and write it while this one is settled.
//! Only committed messages are acknowledged. A message whose status row already says
//! `persisted` (a redelivery after a crash between commit and acknowledgement) is
//! acknowledged without writing again.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, context::ObjectStoreError, object_store::GetError};
use tokio::io::AsyncReadExt;

use super::write::{CountsByName, Pending, WriteError, Written, write_batch};
use super::{EntitySchema, Parsed, Worker};
use crate::{
    Body, Envelope,
    dlq::DeadLetter,
    status::{self, MessageState, StatusRecord},
};

/// One delivered message and what the worker made of it so far.
struct Delivery {
    message: jetstream::Message,
    sequence: u64,
    delivered: i64,
    envelope: Option<Envelope>,
    /// Whether the envelope's body was located without being read
    /// ([`Envelope::decode_leaving_body_unchecked`]): then it is the body only if it is
    /// one JSON document.
    body_unchecked: bool,
    /// The entity the message was routed to, once routing found one: what its status row
    /// and dead letter name.
    entity: Option<&'static str>,
    /// The parsed rows, until they are handed to the writer.
    parsed: Option<Parsed>,
    outcome: Outcome,
    /// The parent of every log line about this message: its sequence, ids and trace.
    /// Made on first use ([`Delivery::span`]), or at once when spans are exported.
    span: std::sync::OnceLock<tracing::Span>,
}

/// What becomes of a message.
enum Outcome {
    /// Written (or to be written): acknowledge.
    Persist,
    /// Refused for good: dead-letter.
    DeadLetter(String),
    /// Failed for now: redeliver later.
    Retry(String),
}

/// Why a message's body gave no rows.
enum Unparsed {
    /// A claim-checked body could not be fetched: retried.
    Unavailable(String),
    /// The body is not one JSON document.
    NotJson(String),
    /// Its parser refused it (routed to this entity, when routing found one).
    Refused(Option<&'static str>, String),
}

/// Why a claim-checked body could not be fetched (retried: the store may come back).
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("cannot open body bucket {bucket}: {source}")]
    Bucket {
        bucket: String,
        source: ObjectStoreError,
    },
    #[error("cannot fetch body {object}: {source}")]
    Get { object: String, source: GetError },
    #[error("cannot read body {object}: {source}")]
    Read {
        object: String,
        source: std::io::Error,
    },
}

impl Delivery {
    fn new(message: jetstream::Message) -> Self {
        let (sequence, delivered) = message
            .info()
            .map(|i| (i.stream_sequence, i.delivered))
            .unwrap_or((0, 1));
        Self {
            message,
            sequence,
            delivered,
            envelope: None,
            body_unchecked: false,
            entity: None,
            parsed: None,
            outcome: Outcome::Persist,
            span: std::sync::OnceLock::new(),
        }
    }

    /// The message's span, the parent of every line logged about it. Made on first use,
    /// after decode and parse (what it names is known then), since most messages have no
    /// line that RUST_LOG lets through: a span with its fields formatted was 2% of the
    /// worker's instructions per message. A `parent:` in a tracing macro is read only
    /// when the line is enabled. When spans are exported, every message has one,
    /// made at once ([`Worker::prepare`]).
    fn span(&self) -> &tracing::Span {
        self.span.get_or_init(|| self.message_span())
    }

    /// One span with every field, rather than a span filled in by later `record` calls.
    /// Error level: a span exists only when its level is enabled, and its ids must be on
    /// every line about the message that RUST_LOG lets through.
    /// When spans are exported, the span is a child of nats-api's request span, whose id
    /// is the envelope's traceparent's parent id.
    fn message_span(&self) -> tracing::Span {
        let envelope = self.envelope.as_ref();
        let trace = envelope.and_then(|e| e.traceparent.as_ref());
        let span = tracing::error_span!(
            "message",
            sequence = self.sequence,
            delivered = self.delivered,
            message_id = envelope.map(|e| tracing::field::display(e.message_id)),
            request_id = envelope.and_then(|e| e.request_id.as_deref()),
            trace_id = trace.map(|t| t.trace_id()),
            parent_span_id = trace.map(|t| t.parent_id()),
            entity = self.entity,
        );
        crate::otlp::follow(&span, trace);
        span
    }

    /// The message's status row. Its entity is the entity the message was routed to,
    /// whatever the outcome; none when the message matched no entity.
    fn status_record(&self, state: MessageState, error: Option<String>) -> StatusRecord {
        let envelope = self.envelope.as_ref();
        StatusRecord {
            message_id: envelope.map_or_else(uuid::Uuid::nil, |e| e.message_id),
            entity: self.entity.map(str::to_owned),
            status: state,
            attempts: self.delivered as i32,
            error,
            received_at: envelope.map_or_else(chrono::Utc::now, |e| e.received_at),
            processed_at: chrono::Utc::now(),
            stream_sequence: Some(self.sequence as i64),
        }
    }
}

/// A fetched batch, decoded and parsed: ready to be written.
pub(super) struct Prepared {
    deliveries: Vec<Delivery>,
    /// When its messages were received.
    started: Instant,
    /// When the stream its messages came from was created: their sequences' incarnation.
    stream_created: i64,
    /// The rows its write takes locks on; left empty with one writer.
    keys: Keys,
}

impl Prepared {
    pub(super) fn len(&self) -> usize {
        self.deliveries.len()
    }

    /// The rows its write takes locks on.
    pub(super) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Its keys, kept by the loop while it is written.
    pub(super) fn take_keys(&mut self) -> Keys {
        std::mem::take(&mut self.keys)
    }
}

/// The rows a batch's write touches, hashed: each root row's table and key (its
/// children are keyed under it) and each message's status row. Two batches whose keys
/// are disjoint write different rows, so their transactions can run at once without
/// waiting on each other's locks; a hash collision only makes two batches wait in turn.
#[derive(Debug, Default)]
pub(super) struct Keys(HashSet<u64>);

impl Keys {
    fn of(deliveries: &[Delivery]) -> Self {
        let mut keys = HashSet::with_capacity(deliveries.len() * 2);
        for delivery in deliveries {
            let Some(parsed) = &delivery.parsed else {
                continue;
            };
            if let Some(envelope) = &delivery.envelope {
                let mut hasher = DefaultHasher::new();
                (crate::defaults::STATUS_TABLE, envelope.message_id).hash(&mut hasher);
                keys.insert(hasher.finish());
            }
            for change in &parsed.changes {
                let mut hasher = DefaultHasher::new();
                if change.hash_key(&mut hasher) {
                    keys.insert(hasher.finish());
                }
            }
        }
        Self(keys)
    }

    /// Whether a row is in both.
    pub(super) fn meet(&self, other: &Keys) -> bool {
        let (small, large) = if self.0.len() <= other.0.len() {
            (self, other)
        } else {
            (other, self)
        };
        small.0.iter().any(|key| large.0.contains(key))
    }
}

/// What became of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Processed {
    /// Written, or failed (each message then marked for a retry or the dead-letter
    /// stream): ready to be settled.
    Written,
    /// Shutdown was requested and its grace period ended with the write still running:
    /// nothing of the batch was acknowledged (or naked, or dead-lettered). The database
    /// rolls the transaction back when the process exits, unless it committed, in which
    /// case the redeliveries find their status rows and are skipped.
    Abandoned,
}

impl<S: EntitySchema> Worker<S> {
    /// Decodes and parses a fetched batch: the CPU work, done while the batch before it
    /// is written.
    pub(super) async fn prepare(
        &self,
        messages: Vec<jetstream::Message>,
        stream_created: i64,
    ) -> Prepared {
        let started = Instant::now();
        metrics::counter!("worker_messages_consumed_total").increment(messages.len() as u64);
        metrics::histogram!("worker_batch_size_items").record(messages.len() as f64);
        let mut deliveries = Vec::with_capacity(messages.len());
        for message in messages {
            let mut delivery = Delivery::new(message);
            self.decode(&mut delivery);
            let refused = self.parse(&mut delivery).await;
            if crate::otlp::exporting() {
                delivery.span();
            }
            if let (true, Outcome::DeadLetter(error)) = (refused, &delivery.outcome) {
                tracing::debug!(parent: delivery.span(), %error, "message refused by its parser");
            }
            deliveries.push(delivery);
        }
        let redelivered = deliveries.iter().filter(|d| d.delivered > 1).count();
        metrics::counter!("worker_redeliveries_total").increment(redelivered as u64);
        // With one writer no batch is written beside another: nothing to compare.
        let keys = if self.config.writers > 1 {
            Keys::of(&deliveries)
        } else {
            Keys::default()
        };
        let batch = Prepared {
            keys,
            deliveries,
            started,
            stream_created,
        };
        // A slow batch (large claim-checked bodies, say) must not outlive ack_wait.
        if started.elapsed() > self.progress_every() {
            self.keep_alive(&batch).await;
        }
        batch
    }

    /// Writes a prepared batch in one transaction; [`Worker::settle_written`] then
    /// settles each message, unless the write was abandoned.
    pub(super) async fn write_prepared(&self, batch: &mut Prepared) -> Processed {
        let created = batch.stream_created;
        self.write(&mut batch.deliveries, created).await
    }

    /// Acknowledges, naks or dead-letters each message of a written batch.
    pub(super) async fn settle_written(&self, batch: Prepared) {
        self.settle(&batch.deliveries).await;
        let elapsed = batch.started.elapsed();
        metrics::histogram!("worker_batch_duration_seconds").record(elapsed.as_secs_f64());
        tracing::debug!(
            messages = batch.len(),
            elapsed_ms = elapsed.as_millis() as u64,
            "batch done"
        );
    }

    /// Tells JetStream a batch in hand, not being written yet, is still being worked on.
    pub(super) async fn keep_alive(&self, batch: &Prepared) {
        report_progress(&batch.deliveries).await;
    }

    /// Hands back a batch that will not be written (shutdown came first): each message
    /// is naked without delay, so that it is redelivered at once, to another replica or
    /// the next worker, rather than after ack_wait.
    pub(super) async fn release(&self, batch: Prepared) {
        tracing::info!(
            messages = batch.len(),
            "shutdown requested; handing back the batch waiting behind the write (naked for prompt redelivery)"
        );
        for delivery in &batch.deliveries {
            if let Err(err) = delivery.message.ack_with(AckKind::Nak(None)).await {
                tracing::warn!(parent: delivery.span(), error = %err, "nak failed; the message will be redelivered after ack_wait");
            }
        }
        let client = self.js.client();
        if !matches!(
            tokio::time::timeout(self.config.nats.request_timeout, client.flush()).await,
            Ok(Ok(()))
        ) {
            tracing::warn!(
                "naks not confirmed; unconfirmed messages will be redelivered after ack_wait"
            );
        }
    }

    /// How often a batch in hand tells JetStream it is still being worked on.
    pub(super) fn progress_every(&self) -> Duration {
        self.config.effective_ack_wait() / 3
    }

    /// Reads the envelope; refuses a message back after its last delivery. The body is
    /// located, not read: [`Worker::parse`] reads it.
    fn decode(&self, delivery: &mut Delivery) {
        let payload = &delivery.message.payload;
        let decoded = match Envelope::decode_leaving_body_unchecked(payload) {
            Some(envelope) => {
                delivery.body_unchecked = true;
                Ok(envelope)
            }
            None => Envelope::decode(payload.clone()),
        };
        match decoded {
            Err(err) => {
                delivery.outcome = Outcome::DeadLetter(format!("unreadable envelope: {err}"));
            }
            Ok(envelope) => {
                if self.config.max_deliver > 0 && delivery.delivered > self.config.max_deliver {
                    // Back after its last delivery without an outcome: the worker crashed
                    // or timed out on it, or could not dead-letter it. Do not try again.
                    delivery.outcome = Outcome::DeadLetter(format!(
                        "gave up after {} deliveries without an outcome (worker crashed or timed out on it, or its dead-lettering failed)",
                        delivery.delivered - 1
                    ));
                }
                delivery.envelope = Some(envelope);
            }
        }
    }

    /// Fetches the body if it is claim-checked, and parses it into rows. True if the
    /// parser refused the message (for good).
    async fn parse(&self, delivery: &mut Delivery) -> bool {
        let (Outcome::Persist, Some(envelope)) = (&delivery.outcome, &delivery.envelope) else {
            return false;
        };
        let mut parsed = self.read_body(envelope).await;
        if delivery.body_unchecked && matches!(parsed, Err(Unparsed::NotJson(_))) {
            // The located body is not one JSON document, so it may not be the body
            // member (a member after it, a malformed envelope): the full decode says
            // what the envelope holds.
            delivery.body_unchecked = false;
            match Envelope::decode(delivery.message.payload.clone()) {
                Err(err) => {
                    delivery.envelope = None;
                    delivery.outcome = Outcome::DeadLetter(format!("unreadable envelope: {err}"));
                    return false;
                }
                Ok(whole) => {
                    if whole.body != envelope.body {
                        parsed = self.read_body(&whole).await;
                    }
                    delivery.envelope = Some(whole);
                }
            }
        }
        let (entity, outcome) = match parsed {
            Ok(parsed) => {
                delivery.entity = Some(parsed.entity);
                delivery.parsed = Some(parsed);
                return false;
            }
            Err(Unparsed::Unavailable(error)) => (None, Outcome::Retry(error)),
            Err(Unparsed::NotJson(error)) => (None, Outcome::DeadLetter(error)),
            Err(Unparsed::Refused(entity, error)) => (entity, Outcome::DeadLetter(error)),
        };
        let refused = matches!(outcome, Outcome::DeadLetter(_));
        delivery.entity = entity;
        delivery.outcome = outcome;
        refused
    }

    /// The body's rows, or why there are none.
    async fn read_body(&self, envelope: &Envelope) -> Result<Parsed, Unparsed> {
        let body = body_of(&self.js, envelope)
            .await
            .map_err(|err| Unparsed::Unavailable(err.to_string()))?;
        let value = crate::json::from_slice(&body)
            .map_err(|e| Unparsed::NotJson(format!("body is not JSON: {e}")))?;
        crate::parse::body_object(&value)
            .and_then(|()| self.schema.parse(envelope, &value))
            .map_err(|e| Unparsed::Refused(e.entity, e.to_string()))
    }

    /// Writes the parsed messages in one transaction with their status rows; marks the
    /// refused ones for the dead-letter stream, or all for a retry if the database failed.
    async fn write(&self, batch: &mut [Delivery], stream_created: i64) -> Processed {
        let pending: Vec<Pending> = batch
            .iter_mut()
            .enumerate()
            .filter_map(|(index, delivery)| {
                let parsed = delivery.parsed.take()?;
                let record = delivery.status_record(MessageState::Persisted, None);
                Some(Pending {
                    index,
                    record,
                    changes: parsed.changes,
                })
            })
            .collect();
        match self.commit(pending, batch, stream_created).await {
            Ok(written) => {
                // Redeliveries of messages already persisted (a crash between commit and
                // ack, a replica paused past ack_wait): acknowledged, not written again.
                metrics::counter!("worker_messages_skipped_total")
                    .increment(written.skipped as u64);
                // Older than their rows, or patches of missing rows: recorded, not errors.
                metrics::counter!("worker_messages_stale_total").increment(written.stale as u64);
                for &(table, n) in &written.rows.0 {
                    metrics::counter!("worker_rows_persisted_total", "table" => table).increment(n);
                }
                for (index, err) in written.refused {
                    tracing::debug!(parent: batch[index].span(), error = %err, "the database refused the message's rows");
                    batch[index].outcome =
                        Outcome::DeadLetter(format!("the database refused the rows: {err}"));
                }
            }
            Err(WriteError::Abandoned) => return Processed::Abandoned,
            Err(error) => {
                // The database is down: retry later, and stop fetching until it is back.
                self.health.set_database_ok(false);
                let error = error.to_string();
                for delivery in batch.iter_mut() {
                    if matches!(delivery.outcome, Outcome::Persist) {
                        delivery.outcome = Outcome::Retry(error.clone());
                    }
                }
            }
        }
        Processed::Written
    }

    /// Runs the write transaction off the async runtime. A write held up (locks, a slow
    /// disk) must not outlive ack_wait: it keeps telling JetStream the batch is in
    /// progress until the transaction ends. Once shutdown is requested, it waits for the
    /// write at most the shutdown grace period, then gives up on it
    /// ([`WriteError::Abandoned`]).
    async fn commit(
        &self,
        pending: Vec<Pending>,
        batch: &[Delivery],
        created: i64,
    ) -> Result<Written, WriteError> {
        let stream = self.config.stream.name.clone();
        let bases = Arc::clone(&self.sequence_bases);
        let write = self.db.run(move |conn| {
            let base = bases
                .base(conn, &stream, created)
                .map_err(WriteError::Unavailable)?;
            write_batch(conn, &pending, base)
        });
        tokio::pin!(write);
        let every = self.progress_every();
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let grace = self.config.shutdown_grace;
        let mut deadline = None;
        loop {
            let give_up = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = &mut write => return result?,
                _ = heartbeat.tick() => report_progress(batch).await,
                () = self.shutdown.wait(), if deadline.is_none() => {
                    tracing::info!(grace_ms = grace.as_millis() as u64, "shutdown requested mid-write; finishing the batch in hand");
                    deadline = Some(tokio::time::Instant::now() + grace);
                }
                () = give_up => return Err(WriteError::Abandoned),
            }
        }
    }

    /// Acknowledges the committed messages, then retries or dead-letters the rest.
    async fn settle(&self, batch: &[Delivery]) {
        self.acknowledge(batch).await;
        for delivery in batch {
            match &delivery.outcome {
                Outcome::Persist => {}
                Outcome::Retry(error) => self.retry(delivery, error).await,
                Outcome::DeadLetter(error) => self.dead_letter(delivery, error).await,
            }
        }
    }

    /// Plain acks of the committed messages, then one flush (a PING/PONG) so they are
    /// with the server before the next fetch: one round trip per batch instead of one
    /// per message. An ack lost anyway only brings a redelivery, which the status row
    /// turns into a skip.
    async fn acknowledge(&self, batch: &[Delivery]) {
        let committed: Vec<&Delivery> = batch
            .iter()
            .filter(|d| matches!(d.outcome, Outcome::Persist))
            .collect();
        let now = chrono::Utc::now();
        for envelope in committed.iter().filter_map(|d| d.envelope.as_ref()) {
            let latency = (now - envelope.received_at).num_microseconds().unwrap_or(0);
            metrics::histogram!("pipeline_end_to_end_latency_seconds").record(latency as f64 / 1e6);
        }
        let mut failed_acks = 0;
        for delivery in &committed {
            match delivery.message.ack().await {
                Ok(()) => tracing::debug!(parent: delivery.span(), "message persisted"),
                Err(err) => {
                    failed_acks += 1;
                    tracing::warn!(parent: delivery.span(), error = %err, "ack failed; the message will be redelivered and skipped");
                }
            }
        }
        // Bounded: with NATS gone, a flush waits for the reconnection.
        if !committed.is_empty() && failed_acks < committed.len() {
            let client = self.js.client();
            match tokio::time::timeout(self.config.nats.request_timeout, client.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "acks not confirmed; unconfirmed messages will be redelivered and skipped");
                }
                Err(_) => {
                    tracing::warn!(
                        "acks not confirmed in time (NATS unreachable?); unconfirmed messages will be redelivered and skipped"
                    );
                }
            }
        }
        metrics::counter!("worker_messages_persisted_total").increment(committed.len() as u64);
        // By entity, once per batch and entity: a labelled counter costs a lookup.
        let mut by_entity = CountsByName::default();
        for entity in committed.iter().filter_map(|d| d.entity) {
            by_entity.add(entity, 1);
        }
        for (entity, n) in by_entity.0 {
            metrics::counter!("worker_messages_persisted_by_entity_total", "entity" => entity)
                .increment(n);
        }
    }

    /// A transient failure: redeliver after the backoff delay, or give up at the limit.
    async fn retry(&self, delivery: &Delivery, error: &str) {
        if self.config.is_last_delivery(delivery.delivered) {
            let error = format!("gave up after {} attempts: {error}", delivery.delivered);
            self.dead_letter(delivery, &error).await;
        } else {
            let delay = self.config.retry_delay(delivery.delivered);
            tracing::warn!(parent: delivery.span(), %error, retry_in_ms = delay.as_millis() as u64, "transient failure; retrying");
            metrics::counter!("worker_naks_total").increment(1);
            let _ = delivery.message.ack_with(AckKind::Nak(Some(delay))).await;
        }
    }

    /// Copies the message to the dead-letter stream, records it, and terminates it. If
    /// the copy is refused, the message is nak'ed instead: it comes back (the consumer has
    /// no delivery limit of its own) and is dead-lettered then.
    async fn dead_letter(&self, delivery: &Delivery, error: &str) {
        if self.persisted_elsewhere(delivery).await {
            tracing::debug!(parent: delivery.span(), "already persisted by another delivery; acknowledged");
            let _ = delivery.message.double_ack().await;
            return;
        }
        let record = delivery.status_record(MessageState::DeadLettered, Some(error.to_owned()));
        let letter = DeadLetter::new(&record, delivery.sequence, &delivery.message.payload);
        if let Err(err) = self.dead_letters.publish(&letter).await {
            let delay = self.config.retry_delay(delivery.delivered);
            tracing::error!(parent: delivery.span(), error = %err, retry_in_ms = delay.as_millis() as u64, "dead-letter publish failed; the message will be redelivered");
            metrics::counter!("worker_dlq_publish_failures_total").increment(1);
            metrics::counter!("worker_naks_total").increment(1);
            let _ = delivery.message.ack_with(AckKind::Nak(Some(delay))).await;
            return;
        }
        let stored = self.db.run(move |conn| status::upsert(conn, &record)).await;
        if !matches!(stored, Ok(Ok(()))) {
            tracing::warn!(
                parent: delivery.span(),
                "dead-lettered, but its status row could not be written"
            );
        }
        metrics::counter!("worker_dlq_messages_total").increment(1);
        tracing::warn!(parent: delivery.span(), error, "message dead-lettered");
        let _ = delivery.message.ack_with(AckKind::Term).await;
    }

    /// Whether another delivery of this message was committed (a crash before its
    /// acknowledgement, say): then it is done, not dead.
    async fn persisted_elsewhere(&self, delivery: &Delivery) -> bool {
        let Some(id) = delivery.envelope.as_ref().map(|e| e.message_id) else {
            return false;
        };
        let record = self.db.run(move |conn| status::fetch(conn, id)).await;
        matches!(record, Ok(Ok(Some(r))) if r.status.is_final())
    }
}

/// Tells JetStream each message of the batch is still being worked on (resets ack_wait).
async fn report_progress(batch: &[Delivery]) {
    futures::future::join_all(batch.iter().map(|d| d.message.ack_with(AckKind::Progress))).await;
}

/// The body of a message: inline, or fetched from the Object Store by reference.
async fn body_of(js: &jetstream::Context, envelope: &Envelope) -> Result<bytes::Bytes, BodyError> {
    let reference = match &envelope.body {
        Body::Inline(bytes) => return Ok(bytes.clone()),
        Body::Stored(reference) => reference,
    };
    let store = js
        .get_object_store(&reference.bucket)
        .await
        .map_err(|source| BodyError::Bucket {
            bucket: reference.bucket.clone(),
            source,
        })?;
    let mut object = store
        .get(&reference.object)
        .await
        .map_err(|source| BodyError::Get {
            object: reference.object.clone(),
            source,
        })?;
    let mut bytes = Vec::with_capacity(reference.size as usize);
    object
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| BodyError::Read {
            object: reference.object.clone(),
            source,
        })?;
    Ok(bytes.into())
}
