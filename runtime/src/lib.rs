//! What nats-api and every generated nomnom worker share: the envelope wire format, the
//! stream and its settings, the NATS connection, the status table, metrics and logging.
//!
//! Only this crate defines the wire format (see [`envelope`]).

pub mod allocator;
pub mod apply;
mod calendar;
pub mod change;
pub mod cli;
pub mod db;
mod decimal;
pub mod defaults;
pub mod dlq;
pub mod duration;
pub mod envelope;
pub mod healthcheck;
pub mod json;
pub mod metrics;
pub mod nats;
pub mod otlp;
pub mod parse;
mod partial;
pub mod row;
pub mod sql;
pub mod status;
pub mod stream;
pub mod subject;
pub mod telemetry;
pub mod traceparent;
pub mod worker;

pub use envelope::{Body, BodyRef, Envelope, IdempotencyKey};
pub use nats::NatsConfig;
pub use stream::StreamSettings;
pub use subject::EntityName;
pub use traceparent::TraceParent;

pub use allocator::Allocator;
