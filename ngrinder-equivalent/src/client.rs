//! The load client: one HTTP/1.1 keep-alive connection per virtual user on
//! hyper's low-level connection API (no pool, no per-request lookups), and a
//! reply parser that reads the status and the `outcome` field only.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, HOST, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::stats::Outcome;

/// One server to send to (an api instance, or the balancer).
#[derive(Debug, Clone)]
pub struct Target {
    pub base: String,
    addr: SocketAddr,
    host: HeaderValue,
}

impl Target {
    /// From a base URL such as `http://127.0.0.1:8081`.
    pub fn parse(base: &str) -> anyhow::Result<Self> {
        let uri: Uri = base.parse()?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http"),
            "{base}: only http:// targets"
        );
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow::anyhow!("{base}: no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(authority.host(), port))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{base}: host does not resolve"))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            addr,
            host: HeaderValue::from_str(authority.as_str())?,
        })
    }
}

/// A connection that reconnects after any failure.
#[derive(Debug)]
pub struct Conn {
    target: Target,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

impl Conn {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            sender: None,
        }
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Empty<Bytes>>, ()> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(self.target.addr).await.map_err(|_| ())?;
            let _ = stream.set_nodelay(true);
            let (sender, connection) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|_| ())?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.sender = Some(sender);
        }
        self.sender.as_mut().ok_or(())
    }

    /// `method path`, with an `Authorization` value unless empty, and no
    /// body; the classified reply. Any failure drops the connection.
    pub async fn send(
        &mut self,
        method: &Method,
        path: &str,
        authorization: &str,
        timeout: Duration,
    ) -> Outcome {
        match tokio::time::timeout(timeout, self.exchange(method, path, authorization)).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(())) => {
                self.sender = None;
                Outcome::Connection
            }
            Err(_) => {
                self.sender = None;
                Outcome::Timeout
            }
        }
    }

    async fn exchange(
        &mut self,
        method: &Method,
        path: &str,
        authorization: &str,
    ) -> Result<Outcome, ()> {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, self.target.host.clone());
        if !authorization.is_empty() {
            request = request.header(AUTHORIZATION, authorization);
        }
        let request = request.body(Empty::<Bytes>::new()).map_err(|_| ())?;
        let sender = self.connect().await?;
        sender.ready().await.map_err(|_| ())?;
        let response = sender.send_request(request).await.map_err(|_| ())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|_| ())?
            .to_bytes();
        Ok(Outcome::from_reply(status, outcome_field(&body)))
    }
}

/// The value of the first `"outcome":"…"` in a JSON reply, without parsing
/// the rest.
pub fn outcome_field(body: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"outcome\":\"";
    let start = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = body[start..].iter().position(|&b| b == b'"')?;
    Some(&body[start..start + len])
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
}
