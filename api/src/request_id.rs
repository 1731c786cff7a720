//! `X-Request-Id`: every reply carries one, taken from the request when it
//! brings a usable one (1–128 visible ASCII characters), else made here (a
//! UUID v7). The request runs inside a `request` span holding it, so every
//! log line of the request, including those of the work it hands to
//! background tasks (`Issuance::run_to_end`, `Issuance::spawn`), carries it;
//! with tracing on, that span is the trace's server span ([`span`]).

use actix_web::HttpRequest;
use actix_web::http::header::{HeaderName, HeaderValue};

/// The header, in requests and replies.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The longest request id taken from a client.
pub const MAX_LEN: usize = 128;

/// The request's own id if usable, else a new one.
pub fn of(req: &HttpRequest) -> HeaderValue {
    req.headers()
        .get(&X_REQUEST_ID)
        .filter(|v| usable(v.as_bytes()))
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("-"))
        })
}

/// The `request` span every log line of the request carries (with its id).
/// With tracing on it is the trace's server span, named by method and
/// route, and the child of the caller's `traceparent` when one is given;
/// with tracing off those steps are skipped.
pub fn span(req: &HttpRequest, id: &HeaderValue) -> tracing::Span {
    let id = id.to_str().unwrap_or_default();
    if !common::telemetry::tracing_on() {
        // The log subscriber formats every field of a span when it is
        // created: tracing's fields would cost a fifth more here.
        return tracing::warn_span!("request", request_id = id);
    }
    let span = tracing::warn_span!(
        "request",
        request_id = id,
        otel.kind = "server",
        otel.name = tracing::field::Empty,
    );
    {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        // Named before it starts: a started span keeps its name.
        let route = req.match_pattern();
        let route = route.as_deref().unwrap_or("unmatched");
        span.record("otel.name", format!("{} {route}", req.method()));
        if let Some(parent) = req
            .headers()
            .get(common::telemetry::TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(common::telemetry::parent_from)
        {
            let _ = span.set_parent(parent);
        }
    }
    span
}

fn usable(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len()) && id.iter().all(|b| (0x21..=0x7e).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn a_usable_id_is_kept_and_anything_else_replaced() {
        let with = |v: &str| {
            of(&TestRequest::default()
                .insert_header((X_REQUEST_ID, v))
                .to_http_request())
        };
        assert_eq!(with("abc-123"), "abc-123");
        for bad in ["has space", &"x".repeat(MAX_LEN + 1)] {
            let made = with(bad);
            assert_ne!(made, bad);
            assert!(uuid::Uuid::parse_str(made.to_str().unwrap()).is_ok());
        }
        let none = of(&TestRequest::default().to_http_request());
        assert!(uuid::Uuid::parse_str(none.to_str().unwrap()).is_ok());
    }
}
