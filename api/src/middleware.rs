//! What wraps every request, outermost first:
//!
//! 1. [`known_methods`]: a method outside the HTTP standard's (a made-up
//!    `FOO`, a 4,000-character one) is answered 405 at once, before anything
//!    records it (a 4xx: what a client makes up never pages the 5xx alert), so no label or log line carries what a client made up.
//! 2. [`observe`]: the request's id (`X-Request-Id`) and its `request` span,
//!    the request metrics (route pattern, method, status: bounded labels) and
//!    the optional access log line.
//! 3. [`in_flight_limit`] (user and admin routes only): at most
//!    `http.max_in_flight` requests at once; past it a fast 503 rather than
//!    a queue behind a slow dependency. The permit is shared with the work a
//!    request hands to a tracked task ([`InFlight`]), so a client that hangs
//!    up does not free its place while its issue still runs.

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, ResponseError, web};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use crate::error::ApiError;
use crate::state::AppState;

/// The methods the api knows; every other is `other` in labels and is
/// refused by [`known_methods`].
const KNOWN: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
    Method::OPTIONS,
    Method::TRACE,
    Method::PATCH,
];

/// A method as a metric label or log field: one of the standard's, never
/// what a client made up.
pub fn method_label(method: &Method) -> &'static str {
    KNOWN
        .iter()
        .find(|m| *m == method)
        .map_or("other", |m| match *m {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::CONNECT => "CONNECT",
            Method::OPTIONS => "OPTIONS",
            Method::TRACE => "TRACE",
            _ => "PATCH",
        })
}

/// 405 for a method outside the standard's, before [`observe`] sees it (it
/// is counted once, as `other`, in `http_unknown_methods_total`).
pub async fn known_methods(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if method_label(req.method()) == "other" {
        if let Some(state) = req.app_data::<web::Data<AppState>>() {
            state.metrics.unknown_methods.inc();
        }
        let reply = ApiError::MethodNotAllowed.error_response();
        return Ok(req.into_response(reply));
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_boxed_body)
}

/// The request's id and span, its metrics and its access log line.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let method = method_label(req.method());
    let started = Instant::now();
    if let Some(s) = &state {
        s.metrics.in_flight.inc();
    }
    // Every log line of the request carries its id.
    let request_id = crate::request_id::of(req.request());
    let span = crate::request_id::span(req.request(), &request_id);
    // Every route turns its errors into replies, so an `Err` here is
    // actix's own (it answers it itself).
    let response = next.call(req).instrument(span.clone()).await;
    if let Some(s) = &state {
        s.metrics.in_flight.dec();
    }
    let mut res = response?;
    res.headers_mut()
        .insert(crate::request_id::X_REQUEST_ID, request_id);
    let route = res.request().match_pattern();
    let route = route.as_deref().unwrap_or("unmatched");
    let status = res.status();
    let took = started.elapsed();
    let Some(state) = state else {
        return Ok(res);
    };
    let labels = [route, method, status.as_str()];
    state.metrics.requests.with_label_values(&labels).inc();
    state
        .metrics
        .request_seconds
        .with_label_values(&labels)
        .observe(took.as_secs_f64());
    if state.access_log {
        let outcome = res
            .response()
            .extensions()
            .get::<crate::error::ReplyOutcome>()
            .map_or("-", |o| o.0);
        span.in_scope(|| {
            tracing::info!(
                target: "access",
                method,
                route,
                status = status.as_u16(),
                outcome,
                latency_ms = took.as_secs_f64() * 1000.0,
                "request served"
            );
        });
    }
    Ok(res)
}

/// A request's place among those in flight: held by the request and by
/// whatever it hands to a tracked task, released when both are done.
#[derive(Debug, Clone)]
pub struct InFlight(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// At most `http.max_in_flight` user and admin requests at once.
pub async fn in_flight_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let permit = match req.app_data::<web::Data<AppState>>() {
        Some(state) => match state.in_flight.clone().try_acquire_owned() {
            Ok(permit) => Some(InFlight(Arc::new(permit))),
            // A reply, not an error: the outer middleware counts it and
            // gives it its request id.
            Err(_) => {
                let reply = ApiError::Unavailable {
                    message: "this instance is at its limit of requests in flight; retry later"
                        .into(),
                    retry_after_secs: 1,
                }
                .error_response();
                return Ok(req.into_response(reply));
            }
        },
        None => None,
    };
    if let Some(permit) = &permit {
        req.extensions_mut().insert(permit.clone());
    }
    // Held until the response is ready (and by the tracked task, if any).
    let response = next.call(req).await;
    drop(permit);
    response.map(ServiceResponse::map_into_boxed_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_are_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let made_up = Method::from_bytes(b"FROBNICATE").unwrap();
        assert_eq!(method_label(&made_up), "other");
        let long = Method::from_bytes("X".repeat(4000).as_bytes()).unwrap();
        assert_eq!(method_label(&long), "other");
    }
}
