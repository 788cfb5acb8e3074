//! Real servers for integration tests: `nats-server` with JetStream and PostgreSQL,
//! started from the machine's binaries on loopback ports, each with its own temporary
//! directory, and cleaned up on drop.
//!
//! The API is synchronous (`std::process`), so it works from sync and async tests alike.
//! Everything waits on conditions (a health endpoint answering, a query succeeding) with
//! deadlines, never on fixed sleeps, and panics with the server's log tail when a server
//! does not come up. `scripts/install-deps.sh` installs the binaries.

mod nats;
mod postgres;
mod process;

pub use nats::{NatsOptions, NatsServer, nats_server_binary};
pub use postgres::Postgres;

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;

/// A loopback port that was free a moment ago, for servers under test that cannot pick
/// their own. Another process may take it before it is bound: retry on "address in use".
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind a free loopback port")
}

/// The workspace root, where `.tools/` (installed by `scripts/install-deps.sh`) lives.
pub fn workspace_root() -> PathBuf {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    root.canonicalize().unwrap_or(root)
}
