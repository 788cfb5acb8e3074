//! A loopback TCP proxy that can hold traffic in one direction and sever every
//! connection, for putting a process into the states between two network writes: a
//! worker that committed but whose acks never reached NATS, an API whose publish was
//! stored but whose PubAck never came back.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Forwards `127.0.0.1:<port>` to an upstream port, one thread per direction per
/// connection. Dropping it severs every connection.
#[derive(Debug)]
pub struct TcpProxy {
    port: u16,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Client → upstream bytes are read but not forwarded while set.
    hold_upstream: AtomicBool,
    /// Upstream → client bytes are read but not forwarded while set.
    hold_downstream: AtomicBool,
    severed: AtomicBool,
    streams: Mutex<Vec<TcpStream>>,
}

impl TcpProxy {
    /// Starts forwarding to `127.0.0.1:<upstream>`.
    pub fn start(upstream: u16) -> TcpProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared::default());
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.severed.load(Ordering::Acquire) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(client_reader), Ok(server_reader)) =
                    (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                {
                    let mut streams = accepting.streams.lock().unwrap();
                    streams.push(client.try_clone().expect("clone a socket"));
                    streams.push(server.try_clone().expect("clone a socket"));
                }
                let up = Arc::clone(&accepting);
                std::thread::spawn(move || pump(client_reader, server, &up, &up.hold_upstream));
                let down = Arc::clone(&accepting);
                std::thread::spawn(move || {
                    pump(server_reader, client, &down, &down.hold_downstream)
                });
            }
        });
        TcpProxy { port, shared }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops forwarding client → upstream bytes (they are kept, not dropped).
    pub fn hold_upstream(&self) {
        self.shared.hold_upstream.store(true, Ordering::Release);
    }

    /// Stops forwarding upstream → client bytes (they are kept, not dropped).
    pub fn hold_downstream(&self) {
        self.shared.hold_downstream.store(true, Ordering::Release);
    }

    /// Closes every connection and refuses new ones; held bytes are never delivered.
    pub fn sever(&self) {
        self.shared.severed.store(true, Ordering::Release);
        for stream in self.shared.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // Wake the accept loop so it sees `severed`.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.sever();
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared, hold: &AtomicBool) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        // Held bytes wait here; severing drops them.
        while hold.load(Ordering::Acquire) && !shared.severed.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(2));
        }
        if shared.severed.load(Ordering::Acquire) || to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    if !hold.load(Ordering::Acquire) {
        let _ = to.shutdown(Shutdown::Write);
    }
}
