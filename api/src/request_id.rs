//! `X-Request-Id`: every reply carries one, taken from the request when it
//! brings a usable one (1–128 visible ASCII characters), else made here (a
//! UUID v7). The request runs inside a `request` span holding it, so every
//! log line of the request, including those of the work it hands to
//! background tasks (`Pipeline::run_to_end`, `Pipeline::spawn`), carries it.

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
