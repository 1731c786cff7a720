//! The load client: one HTTP/1.1 keep-alive connection per virtual user,
//! driven by the vuser's own task. Requests are written from a reused
//! buffer and replies parsed in place (`httparse`): the status, the body's
//! length, and the `outcome` field, nothing else. A first version on hyper's
//! connection API (a separate task per connection, a channel hop per request)
//! reached 77% of wrk's rate on a trivial endpoint on this 2-core machine;
//! this one, on one event loop per thread (see `load`), is measured against
//! wrk in docs/RESULTS.md.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stats::Outcome;

/// One server to send to (an api instance, or the balancer).
#[derive(Debug, Clone)]
pub struct Target {
    pub base: String,
    addr: SocketAddr,
    host: String,
}

impl Target {
    /// From a base URL such as `http://127.0.0.1:8081`.
    pub fn parse(base: &str) -> anyhow::Result<Self> {
        let rest = base
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("{base}: only http:// targets"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        anyhow::ensure!(!authority.is_empty(), "{base}: no host");
        let with_port = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{base}: host does not resolve"))?;
        Ok(Self {
            base: format!("http://{authority}"),
            addr,
            host: authority.to_owned(),
        })
    }
}

/// Request method of the load (no body is ever sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// A connection that reconnects after any failure.
#[derive(Debug)]
pub struct Conn {
    target: Target,
    stream: Option<TcpStream>,
    request: Vec<u8>,
    buffer: Vec<u8>,
}

/// A reply's head: status, where the body starts, how long it is.
struct Head {
    status: u16,
    body_start: usize,
    body: BodyLength,
    close: bool,
}

enum BodyLength {
    Known(usize),
    Chunked,
}

impl Conn {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            stream: None,
            request: Vec::with_capacity(512),
            buffer: Vec::with_capacity(4096),
        }
    }

    /// `method path`, with an `Authorization` value unless empty, and no
    /// body; the classified reply. Any failure drops the connection.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        authorization: &str,
        timeout: Duration,
    ) -> Outcome {
        match self.call(method, path, authorization, timeout).await {
            Ok((status, body)) => Outcome::from_reply(status, outcome_field(&body)),
            Err(failed) => failed,
        }
    }

    /// One request; its status and body, or how it failed (a timeout, a
    /// connection failure).
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        authorization: &str,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), Outcome> {
        match tokio::time::timeout(timeout, self.exchange(method, path, authorization)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(())) => {
                self.stream = None;
                Err(Outcome::Connection)
            }
            Err(_) => {
                self.stream = None;
                Err(Outcome::Timeout)
            }
        }
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        authorization: &str,
    ) -> Result<(u16, Vec<u8>), ()> {
        self.request.clear();
        self.request.extend_from_slice(match method {
            Method::Get => b"GET ",
            Method::Post => b"POST ",
        });
        self.request.extend_from_slice(path.as_bytes());
        self.request.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        self.request.extend_from_slice(self.target.host.as_bytes());
        if !authorization.is_empty() {
            self.request.extend_from_slice(b"\r\nAuthorization: ");
            self.request.extend_from_slice(authorization.as_bytes());
        }
        self.request
            .extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");

        if self.stream.is_none() {
            let stream = TcpStream::connect(self.target.addr).await.map_err(|_| ())?;
            let _ = stream.set_nodelay(true);
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().ok_or(())?;
        stream.write_all(&self.request).await.map_err(|_| ())?;

        self.buffer.clear();
        let head = loop {
            if let Some(head) = parse_head(&self.buffer)? {
                break head;
            }
            read_more(stream, &mut self.buffer).await?;
        };
        let body = match head.body {
            BodyLength::Known(n) => {
                while self.buffer.len() < head.body_start + n {
                    read_more(stream, &mut self.buffer).await?;
                }
                self.buffer[head.body_start..head.body_start + n].to_vec()
            }
            BodyLength::Chunked => loop {
                if let Some(body) = dechunk(&self.buffer[head.body_start..])? {
                    break body;
                }
                read_more(stream, &mut self.buffer).await?;
            },
        };
        if head.close {
            self.stream = None;
        }
        Ok((head.status, body))
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<(), ()> {
    if buffer.capacity() - buffer.len() < 1024 {
        buffer.reserve(4096);
    }
    match stream.read_buf(buffer).await {
        Ok(0) | Err(_) => Err(()),
        Ok(_) => Ok(()),
    }
}

fn parse_head(buffer: &[u8]) -> Result<Option<Head>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buffer).map_err(|_| ())? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(body_start) => {
            let mut body = BodyLength::Known(0);
            let mut close = false;
            for h in response.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    let n = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .ok_or(())?;
                    body = BodyLength::Known(n);
                } else if h.name.eq_ignore_ascii_case("transfer-encoding")
                    && h.value.eq_ignore_ascii_case(b"chunked")
                {
                    body = BodyLength::Chunked;
                } else if h.name.eq_ignore_ascii_case("connection")
                    && h.value.eq_ignore_ascii_case(b"close")
                {
                    close = true;
                }
            }
            Ok(Some(Head {
                status: response.code.ok_or(())?,
                body_start,
                body,
                close,
            }))
        }
    }
}

/// The body of a complete chunked encoding, or `None` if more is needed.
fn dechunk(mut data: &[u8]) -> Result<Option<Vec<u8>>, ()> {
    let mut body = Vec::new();
    loop {
        let Ok(httparse::Status::Complete((used, size))) = httparse::parse_chunk_size(data) else {
            return match httparse::parse_chunk_size(data) {
                Ok(httparse::Status::Partial) => Ok(None),
                _ => Err(()),
            };
        };
        let size = usize::try_from(size).map_err(|_| ())?;
        if data.len() < used + size + 2 {
            return Ok(None);
        }
        if size == 0 {
            return Ok(Some(body));
        }
        body.extend_from_slice(&data[used..used + size]);
        data = &data[used + size + 2..];
    }
}

/// The value of the first `"outcome":"…"` in a JSON reply, without parsing
/// the rest.
pub fn outcome_field(body: &[u8]) -> Option<&[u8]> {
    string_field(body, "outcome")
}

/// The value of the string field `name` of a flat JSON reply, unparsed.
pub fn string_field<'a>(body: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let key = format!("\"{name}\":\"");
    let start = body.windows(key.len()).position(|w| w == key.as_bytes())? + key.len();
    let len = body[start..].iter().position(|&b| b == b'"')?;
    Some(&body[start..start + len])
}

/// The value of the unsigned number field `name` of a flat JSON reply.
pub fn number_field(body: &[u8], name: &str) -> Option<u64> {
    let key = format!("\"{name}\":");
    let start = body.windows(key.len()).position(|w| w == key.as_bytes())? + key.len();
    let len = body[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&body[start..start + len])
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_outcome_field() {
        assert_eq!(
            outcome_field(br#"{"outcome":"accepted","coupon_id":"x"}"#),
            Some(&b"accepted"[..])
        );
        assert_eq!(
            outcome_field(br#"{"message":"m","outcome":"sold_out"}"#),
            Some(&b"sold_out"[..])
        );
        assert_eq!(outcome_field(b"<html>"), None);
    }

    #[test]
    fn targets_need_http_and_a_resolvable_host() {
        let t = Target::parse("http://127.0.0.1:8081/").unwrap();
        assert_eq!(t.base, "http://127.0.0.1:8081");
        assert!(Target::parse("https://127.0.0.1").is_err());
    }

    #[test]
    fn heads_give_status_length_and_connection() {
        let reply = b"HTTP/1.1 202 Accepted\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello";
        let head = parse_head(reply).unwrap().unwrap();
        assert_eq!(head.status, 202);
        assert!(matches!(head.body, BodyLength::Known(5)));
        assert!(head.close);
        assert_eq!(&reply[head.body_start..], b"hello");
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-le")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn chunked_bodies_are_reassembled() {
        assert_eq!(
            dechunk(b"4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n")
                .unwrap()
                .unwrap(),
            b"abcdef"
        );
        assert!(dechunk(b"4\r\nab").unwrap().is_none());
    }
}
