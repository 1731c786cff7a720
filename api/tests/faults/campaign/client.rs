//! Requests as the history records them: every call to the api goes through
//! [`Api::send`], which sends it to one instance with the caller's timeout
//! and records it ([`Req`]): when it started and ended, its status or why
//! there was none, and the parts of the reply the checker reads.

use std::time::Duration;

use ngrinder_equivalent::token::Minter;
use serde_json::Value;

use super::history::{Kind, Recorder, Req};

/// The api instances of the cell, as a client sees them.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    bases: Vec<String>,
    minter: Minter,
    admin_token: String,
    pub rec: Recorder,
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub client: &'a str,
    pub round: usize,
    pub campaign: &'a str,
    pub kind: Kind,
    pub user: Option<&'a str>,
    pub key: Option<&'a str>,
    pub instance: usize,
    pub timeout: Duration,
    pub follows: Option<u64>,
}

/// The timeout of a request that means to wait for its reply: longer than
/// the longest request the api can run (a lock wait, the gate and its
/// withdrawal, the produce bound, the delivery timeout, 30 s of margin:
/// 42.5 s at the defaults).
pub const PATIENT: Duration = Duration::from_secs(45);

impl Api {
    pub fn new(bases: Vec<String>, minter: Minter, admin_token: &str, rec: Recorder) -> Self {
        Self {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(1))
                .pool_idle_timeout(Duration::from_secs(5))
                .pool_max_idle_per_host(64)
                .tcp_nodelay(true)
                .build()
                .expect("an HTTP client"),
            bases,
            minter,
            admin_token: admin_token.to_owned(),
            rec,
        }
    }

    pub fn instances(&self) -> usize {
        self.bases.len()
    }

    /// Sends `call` and records it; the record is also returned.
    pub async fn send(&self, call: &Call<'_>) -> Req {
        let base = &self.bases[call.instance % self.bases.len()];
        let c = call.campaign;
        let (method, path) = match call.kind {
            Kind::Issue => (
                reqwest::Method::POST,
                format!("/api/v1/campaigns/{c}/issue"),
            ),
            Kind::CouponsMe => (
                reqwest::Method::GET,
                format!("/api/v1/campaigns/{c}/coupons/me"),
            ),
            Kind::RoomJoin => (reqwest::Method::POST, format!("/api/v1/campaigns/{c}/room")),
            Kind::RoomMe => (
                reqwest::Method::GET,
                format!("/api/v1/campaigns/{c}/room/me"),
            ),
            Kind::Close => (
                reqwest::Method::POST,
                format!("/api/v1/campaigns/{c}/close"),
            ),
        };
        let mut request = self
            .http
            .request(method, format!("{base}{path}"))
            .timeout(call.timeout);
        let auth = match call.user {
            Some(user) => {
                let mut out = String::new();
                self.minter.bearer(user, &mut out);
                out
            }
            None => format!("Bearer {}", self.admin_token),
        };
        request = request.header("authorization", auth);
        if let Some(key) = call.key {
            request = request.header("idempotency-key", key);
        }
        let mut req = Req {
            id: self.rec.next_id(),
            client: call.client.to_owned(),
            round: call.round,
            campaign: c.to_owned(),
            kind: Some(call.kind),
            user: call.user.map(str::to_owned),
            key: call.key.map(str::to_owned),
            instance: call.instance % self.bases.len(),
            start_ms: self.rec.now(),
            timeout_ms: call.timeout.as_millis() as u64,
            follows: call.follows,
            ..Req::default()
        };
        let result = async {
            let res = request.send().await?;
            let status = res.status().as_u16();
            let replayed = res
                .headers()
                .get("idempotent-replayed")
                .is_some_and(|v| v.as_bytes() == b"true");
            let retry_after = res
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let body = res.text().await?;
            Ok::<_, reqwest::Error>((status, replayed, retry_after, body))
        }
        .await;
        req.end_ms = self.rec.now();
        match result {
            Ok((status, replayed, retry_after, body)) => {
                req.status = Some(status);
                req.replayed = replayed;
                let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let text = |k: &str| json.get(k).and_then(Value::as_str).map(str::to_owned);
                req.outcome = text("outcome");
                req.coupon_id = text("coupon_id");
                req.state = text("state");
                req.position = json.get("position").and_then(Value::as_u64);
                req.retry_after_ms = json
                    .get("retry_after_ms")
                    .and_then(Value::as_u64)
                    .or(retry_after.map(|s| s * 1000));
                if matches!(call.kind, Kind::Issue | Kind::RoomJoin) {
                    req.body = Some(body);
                }
            }
            Err(e) => req.error = Some(describe(&e)),
        }
        self.rec.request(req.clone());
        req
    }
}

/// Why a request got no reply, in a few words.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timeout".into();
    }
    if e.is_connect() {
        return "connect".into();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    format!("io: {}", text.chars().take(160).collect::<String>())
}

/// Whether a request that got no reply never reached the api (the
/// connection was refused): it may be sent elsewhere as it is.
pub fn not_sent(r: &Req) -> bool {
    r.error.as_deref() == Some("connect")
}
