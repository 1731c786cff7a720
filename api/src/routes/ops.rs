//! Operations endpoints: liveness, readiness and metrics.
//!
//! `/readyz` answers 200 while this instance serves, even when a shared
//! dependency is down: every instance shares Redis, PostgreSQL and Kafka, so
//! taking them all out of the balancer would only replace the api's JSON 503
//! with the balancer's error page. It answers 503 once the instance drains.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::state::AppState;

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process is alive")))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

fn up(ok: bool) -> &'static str {
    if ok { "up" } else { "down" }
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Serving; the body lists each dependency as up or down"),
        (status = 503, description = "Draining (shutting down)"),
    )
)]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let pipeline = state.pipeline.clone();
    let (redis, postgres, kafka) = tokio::join!(
        tokio::time::timeout(PROBE_TIMEOUT, state.pipeline.gate.ping()),
        tokio::time::timeout(PROBE_TIMEOUT, state.campaigns.ping()),
        tokio::task::spawn_blocking(move || pipeline.producer.broker_reachable(PROBE_TIMEOUT)),
    );
    let body = json!({
        "status": if state.is_draining() { "draining" } else { "ready" },
        "strategy": state.strategy.kind().as_str(),
        "per_user_rate_limit": state.limiter.enabled(),
        "dependencies": {
            "redis": up(matches!(redis, Ok(Ok(())))),
            "postgres": up(matches!(postgres, Ok(Ok(())))),
            "kafka": up(matches!(kafka, Ok(true))),
        },
    });
    if state.is_draining() {
        HttpResponse::ServiceUnavailable().json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state
        .metrics
        .producer_queue
        .set(i64::from(state.pipeline.producer.in_flight()));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(common::metrics::render(&state.metrics.registry))
}

/// The OpenAPI document of this api.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "This document")))]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(<crate::openapi::ApiDoc as utoipa::OpenApi>::openapi())
}
