//! What several of the runtime's integration tests share.

use async_nats::jetstream;
use nomnom_runtime::NatsConfig;
use nomnom_test_support::NatsServer;

/// A JetStream context on `nats`, connected as the runtime connects.
pub async fn connect(nats: &NatsServer) -> jetstream::Context {
    let client = NatsConfig {
        url: nats.url(),
        ..Default::default()
    }
    .connect()
    .await
    .expect("connect to the test nats-server");
    jetstream::new(client)
}
