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
mod proxy;
mod tls;

pub use nats::{NatsCluster, NatsOptions, NatsServer, nats_server_binary};
pub use postgres::{Postgres, PostgresOptions};
pub use proxy::TcpProxy;
pub use tls::TlsFiles;

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;

/// A loopback port for a server under test that cannot pick its own, reserved for the
/// rest of this process's life.
///
/// Ports are drawn below the kernel's ephemeral range (which starts at 32768), so no
/// outgoing connection and no server binding port 0 can take one between our choosing it
/// and the server binding it. Test binaries run as parallel processes, so each port is
/// also claimed with an exclusive `flock` on a file under the temporary directory; the
/// kernel drops the lock when this process exits, so nothing stale is left behind.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    let dir = std::env::temp_dir().join("nomnom-test-ports");
    std::fs::create_dir_all(&dir).expect("create the port reservation directory");
    let mut next = port_seed();
    for _attempt in 0..COUNT {
        next = next
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let port = (FIRST + (next >> 33) as u32 % COUNT) as u16;
        if reserve(&dir, port) && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no free loopback port between {FIRST} and {}",
        FIRST + COUNT
    );
}

/// Different in every process and every call, without a random-number dependency.
fn port_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or_default();
    nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ CALLS
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Takes the lock for `port` and keeps its file open until the process exits.
fn reserve(dir: &std::path::Path, port: u16) -> bool {
    use rustix::fs::{FlockOperation, flock};
    use std::sync::Mutex;
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))
    else {
        return false;
    };
    if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        return false;
    }
    HELD.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(file);
    true
}

/// The workspace root, where `.tools/` (installed by `scripts/install-deps.sh`) lives.
pub fn workspace_root() -> PathBuf {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    root.canonicalize().unwrap_or(root)
}
