//! Admin endpoints: create, list, read and close campaigns, and page through
//! a campaign's persisted coupons. All need the admin token.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use common::ids::UserId;
use serde::{Deserialize, Serialize};

use super::campaign_id;
use crate::auth::Admin;
use crate::campaigns::{CampaignRequest, CampaignView, CouponView};
use crate::error::ApiError;
use crate::startup::AppState;

pub async fn create(
    _: Admin,
    state: web::Data<AppState>,
    body: web::Json<CampaignRequest>,
) -> Result<HttpResponse, ApiError> {
    let new = body
        .into_inner()
        .validate(Utc::now())
        .map_err(ApiError::Invalid)?;
    let view = state.campaigns.create(new).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/campaigns/{}", view.id)))
        .json(view))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<u64>,
}

#[derive(Debug, Serialize)]
struct CampaignList {
    campaigns: Vec<CampaignView>,
}

pub async fn list(
    _: Admin,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(query.limit)?;
    let campaigns = state.campaigns.list(limit).await?;
    Ok(HttpResponse::Ok().json(CampaignList { campaigns }))
}

pub async fn get(
    _: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = campaign_id(&req)?;
    Ok(HttpResponse::Ok().json(state.campaigns.get(&id).await?))
}

pub async fn close(
    _: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = campaign_id(&req)?;
    Ok(HttpResponse::Ok().json(state.campaigns.close(&id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CouponsQuery {
    /// The last `user_id` of the previous page.
    after: Option<String>,
    limit: Option<u64>,
}

#[derive(Debug, Serialize)]
struct CouponPage {
    coupons: Vec<CouponView>,
    /// Pass as `after` to get the next page; `null` on the last page.
    next_after: Option<String>,
}

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
