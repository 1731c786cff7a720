//! Every error reply of the api: JSON `{"outcome", "message"}` with the status
//! the contract gives it. The mapping from domain errors to statuses lives
//! here, in exhaustive matches, so a new variant forces a decision.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::campaigns::StoreError;
use crate::strategy::{IssueError, Refusal};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    Invalid(String),
    #[error("no such route")]
    RouteNotFound,
    /// Another method on a known route, or a method outside HTTP's own.
    #[error("method not allowed here")]
    MethodNotAllowed,
    #[error("no campaign with this id")]
    UnknownCampaign,
    #[error("this campaign has no waiting room")]
    NoWaitingRoom,
    /// An archive asked of a campaign that is not closed.
    #[error("only a closed campaign's gate state can be archived; close it first")]
    NotClosed,
    #[error("{}", refusal_message(.0))]
    Refused(Refusal),
    #[error("this Idempotency-Key was used for another request (method, path or body)")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still running; retry later")]
    RequestInProgress,
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("this caller already keeps {0} Idempotency-Key records; retry later, or without a key")]
    TooManyKeys(u64),
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: u64,
    },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

fn refusal_message(refusal: &Refusal) -> &'static str {
    match refusal {
        Refusal::Duplicate => {
            "this user already has a slot in this campaign; GET .../coupons/me tells its state"
        }
        Refusal::SoldOut => "the campaign's stock is exhausted",
        Refusal::NotOpen => "the campaign has not started yet",
        Refusal::Closed => "the campaign is closed",
        Refusal::NotAdmitted => {
            "the campaign's waiting room has not admitted this user (join it with POST .../room, then issue while admitted)"
        }
    }
}

/// The body of every error reply.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// A snake_case code: `unauthorized`, `sold_out`, `unavailable`, ...
    pub outcome: &'a str,
    pub message: String,
}

impl ApiError {
    /// 429 with `Retry-After`: `wait` rounded up to whole seconds, at least 1.
    pub fn rate_limited(wait: std::time::Duration) -> Self {
        Self::RateLimited {
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            retry_after_secs: 1,
        }
    }

    /// The snake_case code in the reply's `outcome`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::BadRequest(_) => "bad_request",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::Invalid(_) => "invalid_input",
            Self::RouteNotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UnknownCampaign => "unknown_campaign",
            Self::NoWaitingRoom => "no_waiting_room",
            Self::NotClosed => "not_closed",
            Self::Refused(r) => r.as_str(),
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::RequestInProgress => "request_in_progress",
            Self::RateLimited { .. } | Self::TooManyKeys(_) => "rate_limited",
            Self::Unavailable { .. } => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_secs }
            | Self::Unavailable {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            Self::RequestInProgress => Some(1),
            Self::TooManyKeys(_) => Some(60),
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RouteNotFound | Self::UnknownCampaign | Self::NoWaitingRoom => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Refused(Refusal::Duplicate) => StatusCode::CONFLICT,
            Self::Refused(Refusal::SoldOut | Refusal::Closed) => StatusCode::GONE,
            Self::Refused(Refusal::NotOpen | Refusal::NotAdmitted) => StatusCode::FORBIDDEN,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RequestInProgress | Self::NotClosed => StatusCode::CONFLICT,
            Self::RateLimited { .. } | Self::TooManyKeys(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Internal(e) = self {
            // Logged once, here, where it turns into a reply.
            tracing::error!(error = format!("{e:#}"), "internal error");
        }
        let mut reply = HttpResponse::build(self.status_code());
        if let Some(secs) = self.retry_after() {
            reply.insert_header((header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        let mut reply = reply.json(ErrorBody {
            outcome: self.outcome(),
            message: self.to_string(),
        });
        reply.extensions_mut().insert(ReplyOutcome(self.outcome()));
        reply
    }
}

/// The outcome word of a reply (an error's code, an issue's `accepted`...),
/// left in the response's extensions for the access log line.
#[derive(Debug, Clone, Copy)]
pub struct ReplyOutcome(pub &'static str);

impl From<IssueError> for ApiError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::Refused(r) => Self::Refused(r),
            IssueError::UnknownCampaign => Self::UnknownCampaign,
            IssueError::StateMissing => Self::Unavailable {
                message: "the campaign's gate state is not loaded; the worker's gate keeper loads it, retry shortly"
                    .into(),
                retry_after_secs: 5,
            },
            IssueError::Fenced => Self::Unavailable {
                message: "the campaign's gate state is being rebuilt after a Redis restart; nothing was issued, retry shortly"
                    .into(),
                retry_after_secs: 5,
            },
            IssueError::Unavailable(message) => Self::unavailable(message),
        }
    }
}

/// Replies name the dependency that failed, never its error text (a
/// database's message can carry table names and values): the detail is
/// logged, with the request's id.
impl From<common::redis_state::RedisCallError> for ApiError {
    fn from(e: common::redis_state::RedisCallError) -> Self {
        tracing::warn!(error = %e, "redis call failed");
        if matches!(e, common::redis_state::RedisCallError::AdminLockLost) {
            return Self::unavailable(
                "the campaign's admin lock ran out before its Redis keys were changed; they are kept, retry to finish",
            );
        }
        Self::unavailable("redis unavailable; retry later")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownCampaign => Self::UnknownCampaign,
            StoreError::IdReused => Self::IdempotencyKeyReused,
            StoreError::NotClosed => Self::NotClosed,
            StoreError::AdminLockHeld => Self::Unavailable {
                message: "a reconcile, rebuild, re-drive or archive of this campaign holds its admin lock; nothing changed, retry shortly".into(),
                retry_after_secs: 5,
            },
            StoreError::Database(e) => {
                tracing::warn!(error = %e, "database call failed");
                Self::unavailable("database unavailable; retry later")
            }
            StoreError::Redis(e) => e.into(),
            StoreError::Timeout(what) => Self::unavailable(format!("{what} timed out")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    #[actix_web::test]
    async fn error_replies_are_json_with_outcome_and_retry_after_when_due() {
        let reply = ApiError::RateLimited {
            retry_after_secs: 3,
        }
        .error_response();
        assert_eq!(reply.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reply.headers().get(header::RETRY_AFTER).unwrap(), "3");
        let body = to_bytes(reply.into_body()).await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["outcome"], "rate_limited");
        assert!(json["message"].as_str().unwrap().contains("retry"));
    }

    #[test]
    fn refusals_get_the_contract_statuses() {
        let status = |r| ApiError::Refused(r).status_code().as_u16();
        assert_eq!(status(Refusal::Duplicate), 409);
        assert_eq!(status(Refusal::SoldOut), 410);
        assert_eq!(status(Refusal::Closed), 410);
        assert_eq!(status(Refusal::NotOpen), 403);
    }
}
