//! Operations endpoints: liveness, readiness and metrics.
//!
//! `/readyz` answers 200 while this instance serves, even when a shared
//! dependency is down, and 503 while it drains or while a dependency refuses
//! its configuration (`crate::readiness` says why).

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::readiness::Readiness;
use crate::state::AppState;

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process is alive")))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Serving; the body lists each dependency as up or down"),
        (status = 503, description = "Draining (shutting down), or a dependency refuses this instance's TLS or credentials (`misconfigured`)"),
    )
)]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let readiness = Readiness::probe(&state).await;
    let status = if state.is_draining() {
        "draining"
    } else if readiness.misconfigured() {
        "misconfigured"
    } else {
        "ready"
    };
    let body = json!({
        "status": status,
        "strategy": state.strategy.kind().as_str(),
        "lock_mode": state.strategy.lock_mode().map(|m| m.as_str()),
        "per_user_rate_limit": state.limiter.enabled(),
        "dependencies": readiness,
    });
    if status == "ready" {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state
        .metrics
        .producer_buffered
        .set(i64::from(state.producer.in_flight()));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(common::metrics::render(&state.metrics.registry))
}

/// The OpenAPI document of this api.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "This document")))]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(<super::openapi::ApiDoc as utoipa::OpenApi>::openapi())
}
