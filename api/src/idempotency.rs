//! `Idempotency-Key` on the writes (`POST .../issue`, `POST .../room`,
//! `POST /api/v1/campaigns`), with the semantics of the IETF httpapi draft:
//!
//! - a key is 1–255 visible ASCII characters (a quoted structured-field
//!   string is accepted too, and means its content); anything else is 400;
//! - keys are scoped by caller: the record is found by a digest of the
//!   caller and the key, so one caller can never reach another's replies;
//! - the first request with a key claims it atomically (a Lua script): a
//!   second one while it runs gets 409 `request_in_progress` with
//!   `Retry-After`; one after it finished gets its reply again (status,
//!   body, `Location`) with `Idempotent-Replayed: true`; one whose method,
//!   path or body differs gets 422 `idempotency_key_reused`;
//! - a reply that changed nothing and asks for a retry (429, 5xx) is not
//!   kept: the key is freed, and the retry runs afresh. Any other reply is
//!   kept for `idempotency.ttl_secs` (24 h by default);
//! - a request that dies while running (a crash, a client that hangs up
//!   before the handler finished) holds its key until its running record
//!   expires ([`Settings::longest_request`](common::settings::Settings::longest_request)).

use std::future::Future;

use actix_web::body::{BoxBody, to_bytes};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use common::keys;
use common::redis_state::RedisClient;
use common::scripts;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::metrics::ApiMetrics;

/// The request header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on a reply that is a replay of an earlier one.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// Where keys and replies live.
#[derive(Debug, Clone)]
pub struct IdempotencyStore {
    redis: RedisClient,
    ttl_secs: u64,
    expiry_secs: u64,
    metrics: ApiMetrics,
}

/// A key's record in Redis.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// Digest of the method, the path and the body.
    fingerprint: String,
    /// Present while the request runs; unique to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    running: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply: Option<Reply>,
}

/// A finished request's reply, as replayed.
#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    location: Option<String>,
    body: String,
}

impl IdempotencyStore {
    pub fn new(redis: RedisClient, ttl_secs: u64, expiry_secs: u64, metrics: ApiMetrics) -> Self {
        Self {
            redis,
            ttl_secs: ttl_secs.max(1),
            expiry_secs: expiry_secs.max(1),
            metrics,
        }
    }

    /// Runs `work` unless the request's `Idempotency-Key` says otherwise
    /// (see the module's doc). Without the header, `work` just runs.
    /// `caller` names who is asking (the user, or the admin); `body` is
    /// the request's body as the handler understood it (empty for the
    /// endpoints that ignore their body).
    pub async fn run<Fut>(
        &self,
        req: &HttpRequest,
        caller: &str,
        body: &[u8],
        work: Fut,
    ) -> Result<HttpResponse, ApiError>
    where
        Fut: Future<Output = Result<HttpResponse, ApiError>>,
    {
        let Some(key) = key_of(req)? else {
            return work.await;
        };
        let record_key = keys::idempotency(&digest(&[caller.as_bytes(), key.as_bytes()]));
        let fingerprint = digest(&[
            req.method().as_str().as_bytes(),
            req.path().as_bytes(),
            body,
        ]);
        let running = serde_json::to_string(&Record {
            fingerprint: fingerprint.clone(),
            running: Some(uuid::Uuid::now_v7().to_string()),
            reply: None,
        })
        .map_err(|e| ApiError::Internal(e.into()))?;
        let expiry = self.expiry_secs.to_string();
        let found: Option<String> = self
            .redis
            .run_script(
                &scripts::IDEMPOTENCY_CLAIM,
                &[record_key.as_str()],
                &[running.as_str(), expiry.as_str()],
            )
            .await?;
        if let Some(found) = found {
            return self.answer_from(&found, &fingerprint);
        }

        let reply = work.await.unwrap_or_else(|e| e.error_response());
        let (reply, kept) = self.keep(reply).await;
        let done = match kept {
            Some(kept) => serde_json::to_string(&Record {
                fingerprint,
                running: None,
                reply: Some(kept),
            })
            .map_err(|e| ApiError::Internal(e.into()))?,
            None => String::new(),
        };
        let ttl = self.ttl_secs.to_string();
        let finished: Result<i64, _> = self
            .redis
            .run_script(
                &scripts::IDEMPOTENCY_FINISH,
                &[record_key.as_str()],
                &[running.as_str(), done.as_str(), ttl.as_str()],
            )
            .await;
        let result = match finished {
            Ok(1) if done.is_empty() => "freed",
            Ok(1) => "kept",
            Ok(_) => "expired",
            Err(e) => {
                // The key stays marked running until its record expires; a
                // retry meanwhile is told to wait (409), never run twice.
                tracing::warn!(error = %e, "idempotency record not finished");
                "not_finished"
            }
        };
        self.count(result);
        Ok(reply)
    }

    /// The reply to a request whose key was already claimed.
    fn answer_from(&self, found: &str, fingerprint: &str) -> Result<HttpResponse, ApiError> {
        let record: Record = serde_json::from_str(found).map_err(|e| {
            ApiError::Internal(anyhow::anyhow!("unreadable idempotency record: {e}"))
        })?;
        if record.fingerprint != fingerprint {
            self.count("reused");
            return Err(ApiError::IdempotencyKeyReused);
        }
        let Some(reply) = record.reply else {
            self.count("in_progress");
            return Err(ApiError::RequestInProgress);
        };
        self.count("replayed");
        let status = StatusCode::from_u16(reply.status)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored status: {e}")))?;
        let mut replay = HttpResponse::build(status);
        replay.insert_header((
            HeaderName::from_static(IDEMPOTENT_REPLAYED),
            HeaderValue::from_static("true"),
        ));
        if let Some(v) = reply.content_type {
            replay.insert_header((header::CONTENT_TYPE, v));
        }
        if let Some(v) = reply.location {
            replay.insert_header((header::LOCATION, v));
        }
        Ok(replay.body(reply.body))
    }

    /// Splits a finished reply into what is sent and what is kept. A reply
    /// that asks for a retry (429, 5xx) is not kept.
    async fn keep(&self, reply: HttpResponse) -> (HttpResponse, Option<Reply>) {
        let status = reply.status();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return (reply, None);
        }
        let (head, body) = reply.into_parts();
        let Ok(bytes) = to_bytes(body).await else {
            return (head.set_body(BoxBody::new(())), None);
        };
        let text = |name| {
            head.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let kept = Reply {
            status: status.as_u16(),
            content_type: text(header::CONTENT_TYPE),
            location: text(header::LOCATION),
            body: String::from_utf8_lossy(&bytes).into_owned(),
        };
        (head.set_body(BoxBody::new(bytes)), Some(kept))
    }

    fn count(&self, result: &str) {
        self.metrics.idempotency.with_label_values(&[result]).inc();
    }
}

/// The request's `Idempotency-Key`, if it has one; 400 if it is not 1–255
/// visible ASCII characters or comes twice. A quoted string (the draft's
/// structured-field form) stands for its content.
fn key_of(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let mut values = req.headers().get_all(IDEMPOTENCY_KEY);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::BadRequest(
            "more than one Idempotency-Key header".into(),
        ));
    }
    let bad = || {
        ApiError::BadRequest(format!(
            "Idempotency-Key must be 1–{MAX_KEY_LEN} visible ASCII characters"
        ))
    };
    let raw = value.to_str().map_err(|_| bad())?;
    let key = raw
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .unwrap_or(raw);
    let visible = |b: &u8| (0x21..=0x7e).contains(b);
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| visible(&b)) {
        return Err(bad());
    }
    Ok(Some(key.to_owned()))
}

/// Hex SHA-256 over length-prefixed parts (so that parts cannot run into
/// each other).
fn digest(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    format!("{:x}", hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn key(value: &str) -> Result<Option<String>, ApiError> {
        key_of(
            &TestRequest::default()
                .insert_header((IDEMPOTENCY_KEY, value))
                .to_http_request(),
        )
    }

    #[test]
    fn keys_are_visible_ascii_of_1_to_255_characters() {
        assert_eq!(key("abc-123").unwrap().as_deref(), Some("abc-123"));
        assert_eq!(key("\"8e03978e\"").unwrap().as_deref(), Some("8e03978e"));
        assert_eq!(key(&"k".repeat(255)).unwrap().unwrap().len(), 255);
        for bad in ["", "\"\"", "two words", "tab\there"] {
            assert!(key(bad).is_err(), "{bad:?}");
        }
        assert!(key(&"k".repeat(256)).is_err());
        assert!(
            key_of(&TestRequest::default().to_http_request())
                .unwrap()
                .is_none()
        );
        let twice = TestRequest::default()
            .append_header((IDEMPOTENCY_KEY, "a"))
            .append_header((IDEMPOTENCY_KEY, "b"))
            .to_http_request();
        assert!(key_of(&twice).is_err());
    }

    #[test]
    fn digests_keep_their_parts_apart() {
        assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]));
        assert_eq!(digest(&[b"a"]).len(), 64);
    }
}
