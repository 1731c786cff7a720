//! `Idempotency-Key` on the writes (`POST .../issue`, `POST .../room`,
//! `POST /api/v1/campaigns`), with the semantics of the IETF httpapi draft:
//!
//! - a key is 1–255 visible ASCII characters (a quoted structured-field
//!   string is accepted too, and means its content); anything else is 400;
//! - keys are scoped by caller: the record is found by digests of the caller
//!   and the key, so one caller can never reach another's replies;
//! - the first request with a key claims it atomically (a Lua script): a
//!   second one while it runs gets 409 `request_in_progress` with
//!   `Retry-After`; one after it finished gets its reply again (status,
//!   body, `Location`) with `Idempotent-Replayed: true`; one whose method,
//!   resource or body differs gets 422 `idempotency_key_reused`;
//! - only a reply that changed something (2xx) is kept, for
//!   `idempotency.ttl_secs` (24 h by default); any other (a refusal, a
//!   429, a 5xx: nothing changed) frees the key, and a retry runs afresh.
//!   Handlers refuse what they can (a malformed path, the per-user bucket)
//!   before they claim a key, so those keep nothing at all;
//! - one caller keeps at most `idempotency.max_per_caller` records at once;
//!   a new key past that is answered 429 (the bound on what one user can
//!   make Redis hold);
//! - a request that dies while running (a crash, a client that hangs up
//!   before the handler finished) holds its key until its running record
//!   expires ([`Settings::longest_request`](common::settings::Settings::longest_request)).

use std::future::Future;

use actix_web::body::{BoxBody, to_bytes};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use common::keys::IdempotencyKeys;
use common::redis_state::{Claim, IdempotencyRecords, RedisClient};
use common::settings::IdempotencySettings;
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
    records: IdempotencyRecords,
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
    pub fn new(
        redis: RedisClient,
        settings: &IdempotencySettings,
        running_secs: u64,
        metrics: ApiMetrics,
    ) -> Self {
        Self {
            records: IdempotencyRecords::new(
                redis,
                running_secs,
                settings.ttl_secs,
                settings.max_per_caller,
            ),
            metrics,
        }
    }

    /// Runs `work` unless the request's `Idempotency-Key` says otherwise
    /// (see the module's doc). Without the header, `work` just runs (with
    /// `None`). `caller` names who is asking (the user, or the admin);
    /// `resource` is what the request acts on, spelled canonically (a path
    /// with the campaign id as the api prints it, so that two spellings of
    /// one UUID are one request); `body` is the request's body as the
    /// handler understood it (empty for the endpoints that ignore their
    /// body). `work` gets the key's digest, which a create can derive its
    /// new resource's id from (so that a retry of a create whose reply was
    /// lost finds what the first made).
    pub async fn run<F, Fut>(
        &self,
        req: &HttpRequest,
        caller: &str,
        resource: &str,
        body: &[u8],
        work: F,
    ) -> Result<HttpResponse, ApiError>
    where
        F: FnOnce(Option<KeyDigest>) -> Fut,
        Fut: Future<Output = Result<HttpResponse, ApiError>>,
    {
        self.run_unless(req, caller, resource, body, Ok(()), work)
            .await
    }

    /// As [`IdempotencyStore::run`], for a request a cheap check refused
    /// (`refused`: the per-user bucket): it claims nothing, but a retry of
    /// a request whose reply is kept still gets that reply (a replay spends
    /// nothing); any other gets the refusal.
    pub async fn run_unless<F, Fut>(
        &self,
        req: &HttpRequest,
        caller: &str,
        resource: &str,
        body: &[u8],
        refused: Result<(), ApiError>,
        work: F,
    ) -> Result<HttpResponse, ApiError>
    where
        F: FnOnce(Option<KeyDigest>) -> Fut,
        Fut: Future<Output = Result<HttpResponse, ApiError>>,
    {
        let Some(key) = key_of(req)? else {
            refused?;
            return work(None).await;
        };
        if let Err(refusal) = refused {
            return self
                .replay_or(refusal, caller, &key, req, resource, body)
                .await;
        }
        let caller_digest = digest(&[caller.as_bytes()]);
        let key_digest = KeyDigest(digest(&[caller.as_bytes(), key.as_bytes()]));
        let keys = IdempotencyKeys::new(&caller_digest, &key_digest.0);
        let fingerprint = digest(&[req.method().as_str().as_bytes(), resource.as_bytes(), body]);
        let running = serde_json::to_string(&Record {
            fingerprint: fingerprint.clone(),
            running: Some(uuid::Uuid::now_v7().to_string()),
            reply: None,
        })
        .map_err(|e| ApiError::Internal(e.into()))?;
        match self.records.claim(&keys, &running).await? {
            Claim::Claimed => {}
            Claim::Full => {
                self.count("caller_full");
                return Err(ApiError::TooManyKeys(self.records.max_per_caller()));
            }
            Claim::Found(found) => return self.answer_from(&found, &fingerprint),
        }

        let reply = work(Some(key_digest))
            .await
            .unwrap_or_else(|e| e.error_response());
        let (reply, kept) = self.keep(reply).await;
        let done = match kept {
            Some(kept) => Some(
                serde_json::to_string(&Record {
                    fingerprint,
                    running: None,
                    reply: Some(kept),
                })
                .map_err(|e| ApiError::Internal(e.into()))?,
            ),
            None => None,
        };
        let finished = self.records.finish(&keys, &running, done.as_deref()).await;
        let result = match finished {
            Ok(true) if done.is_none() => "freed",
            Ok(true) => "kept",
            Ok(false) => "expired",
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

    /// A kept reply of `key` for this request, else `refusal` (nothing
    /// claimed, nothing written).
    async fn replay_or(
        &self,
        refusal: ApiError,
        caller: &str,
        key: &str,
        req: &HttpRequest,
        resource: &str,
        body: &[u8],
    ) -> Result<HttpResponse, ApiError> {
        let caller_digest = digest(&[caller.as_bytes()]);
        let key_digest = digest(&[caller.as_bytes(), key.as_bytes()]);
        let keys = IdempotencyKeys::new(&caller_digest, &key_digest);
        let found = self.records.read(&keys).await?;
        let fingerprint = digest(&[req.method().as_str().as_bytes(), resource.as_bytes(), body]);
        match found {
            Some(found)
                if serde_json::from_str::<Record>(&found)
                    .is_ok_and(|r| r.reply.is_some() && r.fingerprint == fingerprint) =>
            {
                self.answer_from(&found, &fingerprint)
            }
            _ => Err(refusal),
        }
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

    /// Splits a finished reply into what is sent and what is kept. Only a
    /// reply that changed something (2xx) is kept.
    async fn keep(&self, reply: HttpResponse) -> (HttpResponse, Option<Reply>) {
        let status = reply.status();
        if !status.is_success() {
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

/// The digest of one caller's key (hex SHA-256): what a create derives its
/// new resource's id from.
#[derive(Debug, Clone)]
pub struct KeyDigest(String);

impl KeyDigest {
    /// A UUID (version 8, RFC 9562) made of the digest: the same key of the
    /// same caller always gives the same id.
    pub fn uuid(&self, purpose: &str) -> uuid::Uuid {
        let d = digest(&[purpose.as_bytes(), self.0.as_bytes()]);
        let mut bytes = [0u8; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&d[2 * i..2 * i + 2], 16).unwrap_or_default();
        }
        uuid::Uuid::new_v8(bytes)
    }
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
