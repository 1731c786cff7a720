//! Admin endpoints: create, list, read, close and archive campaigns, and page through
//! a campaign's persisted coupons. All need the admin token.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use common::ids::{CampaignId, UserId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::campaign_id;
use crate::auth::Admin;
use crate::campaigns::{CampaignRequest, CampaignView, CouponView};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

#[utoipa::path(
    post,
    path = "/api/v1/campaigns",
    tag = "admin",
    security(("admin" = [])),
    request_body = CampaignRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "1–255 visible ASCII characters: a retry with the same key and body gets the first reply again")),
    responses(
        (status = 201, description = "Created; `Location` names it", body = CampaignView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 403, description = "A user token", body = ErrorBody),
        (status = 413, description = "Body over 16 KiB", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 409, description = "request_in_progress: a request with this Idempotency-Key is still running", body = ErrorBody),
        (status = 422, description = "Well-formed but invalid; or idempotency_key_reused", body = ErrorBody),
        (status = 503, description = "PostgreSQL or Redis unavailable; nothing created", body = ErrorBody),
    )
)]
pub async fn create(
    _: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<CampaignRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.into_inner();
    // The body as understood, so that spacing and key order do not make
    // two requests differ.
    let fingerprint = serde_json::to_vec(&request).map_err(|e| ApiError::Internal(e.into()))?;
    // Refused before the Idempotency-Key is claimed: nothing kept for it.
    let new = request.validate(Utc::now()).map_err(ApiError::Invalid)?;
    let campaigns = state.campaigns.clone();
    state
        .idempotency
        .run(
            &req,
            ADMIN_CALLER,
            "/api/v1/campaigns",
            &fingerprint,
            |key| async move {
                // With a key, the id comes from it: a retry of a create whose
                // reply was lost finds the campaign the first one made.
                let id = key.map(|k| CampaignId::from(k.uuid("campaign")));
                let view = campaigns.create(new, id).await?;
                Ok(HttpResponse::Created()
                    .insert_header((header::LOCATION, format!("/api/v1/campaigns/{}", view.id)))
                    .json(view))
            },
        )
        .await
}

/// Who an `Idempotency-Key` of an admin request belongs to (one admin
/// token, one caller).
const ADMIN_CALLER: &str = "admin";

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// 1–10,000 (default 100), newest first.
    limit: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignList {
    campaigns: Vec<CampaignView>,
}

#[utoipa::path(
    get,
    path = "/api/v1/campaigns",
    tag = "admin",
    security(("admin" = [])),
    params(ListQuery),
    responses(
        (status = 200, body = CampaignList),
        (status = 400, description = "Bad query string", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn list(
    _: Admin,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(query.limit)?;
    let campaigns = state.campaigns.list(limit).await?;
    Ok(HttpResponse::Ok().json(CampaignList { campaigns }))
}

#[utoipa::path(
    get,
    path = "/api/v1/campaigns/{id}",
    tag = "admin",
    security(("admin" = [])),
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    responses(
        (status = 200, body = CampaignView),
        (status = 400, description = "Not a UUID", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "unknown_campaign", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn get(
    _: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = campaign_id(&req)?;
    Ok(HttpResponse::Ok().json(state.campaigns.get(&id).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/close",
    tag = "admin",
    security(("admin" = [])),
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    responses(
        (status = 200, description = "Closed (idempotent)", body = CampaignView),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn close(
    _: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = campaign_id(&req)?;
    Ok(HttpResponse::Ok().json(state.campaigns.close(&id).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/archive",
    tag = "admin",
    security(("admin" = [])),
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    responses(
        (status = 200, description = "Archived: its users and slots deleted from Redis, for good (idempotent)", body = CampaignView),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "not_closed: close it first; nothing changed", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn archive(
    _: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = campaign_id(&req)?;
    Ok(HttpResponse::Ok().json(state.campaigns.archive(&id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CouponsQuery {
    /// The last `user_id` of the previous page.
    after: Option<String>,
    /// 1–10,000 (default 100).
    limit: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CouponPage {
    coupons: Vec<CouponView>,
    /// Pass as `after` to get the next page; `null` on the last page.
    next_after: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/campaigns/{id}/coupons",
    tag = "admin",
    security(("admin" = [])),
    params(("id" = String, Path, description = "Campaign id (UUID)"), CouponsQuery),
    responses(
        (status = 200, description = "Persisted coupons ordered by user id", body = CouponPage),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn coupons(
    _: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<CouponsQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = campaign_id(&req)?;
    let limit = page_limit(query.limit)?;
    let after = query
        .after
        .as_deref()
        .map(UserId::parse)
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("after: {e}")))?;
    let coupons = state.campaigns.coupons(&id, after.as_ref(), limit).await?;
    let next_after = (coupons.len() as u64 == limit)
        .then(|| coupons.last().map(|c| c.user_id.clone()))
        .flatten();
    Ok(HttpResponse::Ok().json(CouponPage {
        coupons,
        next_after,
    }))
}

pub const DEFAULT_PAGE: u64 = 100;
pub const MAX_PAGE: u64 = 10_000;

fn page_limit(limit: Option<u64>) -> Result<u64, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        ))),
    }
}
