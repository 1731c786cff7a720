//! Operations endpoints: liveness, readiness and metrics, on a listener of
//! their own (`http.ops_port`: not routed by the public balancer, so that
//! an anonymous client can neither read the metrics nor make the instance
//! probe its dependencies). `/healthz` is on the public listener too (it
//! costs nothing and touches nothing).
//!
//! `/readyz` answers 200 while this instance serves, even when a shared
//! dependency is down, and 503 while it drains or while a dependency refuses
//! its configuration (`crate::readiness` says why). The probes' result is
//! reused for a second.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

/// The ops listener's routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .default_service(web::to(|| async {
            Err::<HttpResponse, ApiError>(ApiError::RouteNotFound)
        }));
}

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
    let readiness = state.readiness.get(&state).await;
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
