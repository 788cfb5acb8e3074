//! Real servers for tests: `nats-server -js` and PostgreSQL, started from the machine's
//! binaries on free loopback ports, each with its own temporary data directory.
//!
//! Everything here waits on conditions (a health endpoint answering, a port accepting)
//! with deadlines, never on fixed sleeps, and panics with the server's log tail when a
//! server does not come up.

mod nats;
mod postgres;
mod process;

pub use nats::{NatsOptions, NatsServer, nats_server_binary};
pub use postgres::Postgres;

use std::net::{Ipv4Addr, TcpListener};

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

/// The workspace root (where `.tools/` lives).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support sits in the workspace")
        .to_path_buf()
}
