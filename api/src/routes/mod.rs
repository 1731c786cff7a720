//! HTTP routes. Every reply that is not a plain resource is JSON with an
//! `outcome`; extractor failures (bad JSON, wrong content type, oversized
//! bodies, bad query strings) are mapped here to the contract's statuses
//! instead of actix's defaults.
//!
//! `page` is the waiting room's page for shoppers (`/campaigns/{id}/room`).
//! `openapi` builds the OpenAPI document from the handlers' annotations
//! (served at `/openapi.json`, read by `/docs`). The operations endpoints
//! (`ops`) are another listener's (`http.ops_port`), but for `/healthz`.

use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::{HttpRequest, HttpResponse, web};

use crate::error::ApiError;

pub mod campaigns;
pub mod docs;
pub mod issue;
pub mod openapi;
pub mod ops;
pub mod page;
pub mod room;

/// Registers every route; `body_limit` bounds JSON bodies.
pub fn configure(
    body_limit: usize,
    room_page: page::RoomPage,
) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(
            web::JsonConfig::default()
                .limit(body_limit)
                .content_type_required(true)
                .error_handler(move |e, _| json_error(e, body_limit).into()),
        )
        .app_data(web::PayloadConfig::default().limit(body_limit))
        .app_data(web::QueryConfig::default().error_handler(|e, _| query_error(e).into()))
        .service(
            // Resources are tried in order: the issue endpoint, which carries
            // the load, first.
            web::scope("/api/v1/campaigns")
                .wrap(actix_web::middleware::from_fn(
                    crate::middleware::in_flight_limit,
                ))
                .service(
                    web::resource("/{id}/issue")
                        .route(web::post().to(issue::issue))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/{id}/room/me")
                        .route(web::get().to(room::my_place))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/{id}/room")
                        .route(web::post().to(room::join))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/{id}/coupons/me")
                        .route(web::get().to(issue::my_coupon))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("")
                        .route(web::post().to(campaigns::create))
                        .route(web::get().to(campaigns::list))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/{id}")
                        .route(web::get().to(campaigns::get))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/{id}/close")
                        .route(web::post().to(campaigns::close))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/{id}/archive")
                        .route(web::post().to(campaigns::archive))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/{id}/coupons")
                        .route(web::get().to(campaigns::coupons))
                        .default_service(web::to(method_not_allowed)),
                ),
        )
        .route("/healthz", web::get().to(ops::healthz))
        .route("/openapi.json", web::get().to(openapi::serve))
        .configure(docs::configure)
        .configure(|cfg| room_page.configure(cfg))
        .default_service(web::to(not_found));
    }
}

fn json_error(e: JsonPayloadError, body_limit: usize) -> ApiError {
    match e {
        JsonPayloadError::ContentType => {
            ApiError::UnsupportedMediaType("expected Content-Type: application/json".into())
        }
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
            ApiError::PayloadTooLarge(body_limit)
        }
        JsonPayloadError::Deserialize(e) if e.is_data() => ApiError::Invalid(e.to_string()),
        JsonPayloadError::Deserialize(e) => ApiError::BadRequest(format!("malformed JSON: {e}")),
        other => ApiError::BadRequest(other.to_string()),
    }
}

fn query_error(e: QueryPayloadError) -> ApiError {
    ApiError::BadRequest(format!("bad query string: {e}"))
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound)
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

/// The `{id}` segment as a campaign id, or 400.
pub(crate) fn campaign_id(req: &HttpRequest) -> Result<common::ids::CampaignId, ApiError> {
    let raw = req.match_info().get("id").unwrap_or_default();
    common::ids::CampaignId::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}
