//! `healthcheck`: the binaries probe themselves, so container images need no shell or
//! HTTP client (the Docker images are `FROM scratch`). `nats-api healthcheck` and
//! `<worker> healthcheck` GET a path (`/ready` by default) on the process's own listen
//! address and exit 0 on a 2xx answer, 1 otherwise with one line saying why.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// How long the probe waits to connect and for the answer.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// The subcommand shared by nats-api and every generated worker.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Probe this process's own endpoint on its listen address and exit 0 if it answers
    /// 2xx: a container healthcheck for images without a shell or HTTP client.
    Healthcheck {
        /// Path to probe: /ready (dependencies reachable) or /health (process alive).
        #[arg(default_value = "/ready")]
        path: String,
    },
}

/// Where to reach a server listening on `listen`: a wildcard address is probed on
/// loopback of the same family.
pub fn probe_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// GETs `path` from the server listening on `listen`; the status code on a 2xx answer.
///
/// # Errors
/// One line saying what failed: no connection, no HTTP answer, or a non-2xx status.
pub fn probe(listen: SocketAddr, path: &str, timeout: Duration) -> Result<u16, String> {
    let address = probe_address(listen);
    let url = format!("http://{address}{path}");
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .map_err(|e| format!("{url}: cannot connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("{url}: {e}"))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{url}: cannot send the request: {e}"))?;
    // The status line is all we need; the body may be large (/metrics) or slow.
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < head.len() && !head[..read].contains(&b'\n') {
        match stream.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(format!("{url}: no answer: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..read]);
    let line = line.lines().next().unwrap_or_default().trim();
    let status: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{url}: not an HTTP answer: {line:?}"))?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(format!("{url}: answered {line}"))
    }
}

/// Runs the probe as a command: exit 0 on success; otherwise the reason on stderr, exit 1.
pub fn exit_code(listen: SocketAddr, path: &str) -> ExitCode {
    match probe(listen, path, TIMEOUT) {
        Ok(_) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("unhealthy: {why}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot server answering `reply` to the first connection.
    fn answer_once(reply: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // Read the whole request first: answering and closing after its first bytes
            // would break the client's pipe while it still writes the rest.
            let mut request = Vec::new();
            let mut chunk = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = stream.write_all(reply.as_bytes());
        });
        address
    }

    #[test]
    fn a_2xx_answer_is_healthy_and_anything_else_is_not() {
        let ok = answer_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        assert_eq!(probe(ok, "/ready", TIMEOUT), Ok(200));
        let unavailable = answer_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let err = probe(unavailable, "/ready", TIMEOUT).unwrap_err();
        assert!(
            err.ends_with("answered HTTP/1.1 503 Service Unavailable"),
            "{err}"
        );
        let garbage = answer_once("SSH-2.0-OpenSSH\r\n");
        let err = probe(garbage, "/ready", TIMEOUT).unwrap_err();
        assert!(err.contains("not an HTTP answer"), "{err}");
    }

    #[test]
    fn nothing_listening_is_a_clear_failure() {
        let address = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        // The listener is dropped: the port refuses connections.
        let err = probe(address, "/health", TIMEOUT).unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
        assert!(
            err.starts_with(&format!("http://{address}/health")),
            "{err}"
        );
    }

    #[test]
    fn wildcard_listen_addresses_are_probed_on_loopback() {
        assert_eq!(
            probe_address("0.0.0.0:8080".parse().unwrap()),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            probe_address("[::]:9090".parse().unwrap()),
            "[::1]:9090".parse().unwrap()
        );
        assert_eq!(
            probe_address("10.0.0.5:80".parse().unwrap()),
            "10.0.0.5:80".parse().unwrap()
        );
    }
}
