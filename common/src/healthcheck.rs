//! `api healthcheck` / `issuer-worker healthcheck`: a container healthcheck
//! without curl in the image. Asks the process's own `/healthz` on loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Whether `GET /healthz` on `127.0.0.1:port` answers 200 within two seconds.
pub fn probe(port: u16) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}
