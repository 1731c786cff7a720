//! User endpoints: issue a coupon, and read one's own coupon state.
//! The user id comes only from the verified credential, never from the path
//! or a body.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use common::gate::RecordedState;
use serde::Serialize;
use uuid::Uuid;

use super::campaign_id;
use crate::auth::{AuthenticatedUser, Authenticator};
use crate::error::ApiError;
use crate::startup::AppState;
use crate::strategy::Issued;

#[derive(Debug, Serialize)]
struct IssueReply {
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    coupon_id: Option<Uuid>,
}

/// `POST /api/v1/campaigns/{id}/issue`. A body, if any, is ignored.
pub async fn issue(
    req: HttpRequest,
    state: web::Data<AppState>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, ApiError> {
    let result = issue_for(&req, &state, &auth).await;
    let outcome = match &result {
        Ok(issued) => issued.outcome(),
        Err(e) => e.outcome(),
    };
    state
        .metrics
        .issue_outcomes
        .with_label_values(&[state.strategy.kind().as_str(), outcome])
        .inc();
    let issued = result?;
    Ok(HttpResponse::Accepted().json(IssueReply {
        outcome: issued.outcome(),
        coupon_id: issued.coupon_id().map(|c| c.as_uuid()),
    }))
}

async fn issue_for(
    req: &HttpRequest,
    state: &AppState,
    auth: &Authenticator,
) -> Result<Issued, ApiError> {
    let user = auth.user(req)?;
    let campaign = campaign_id(req)?;
    state
        .limiter
        .check(&user)
        .map_err(|wait| ApiError::RateLimited {
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        })?;
    Ok(state.strategy.issue(campaign, user).await?)
}

/// `state` ∈ none, queued, pending, issued, rejected.
#[derive(Debug, Serialize)]
pub struct MyCoupon {
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    coupon_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    issued_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<String>,
}

impl MyCoupon {
    fn state(state: &'static str) -> Self {
        Self {
            state,
            coupon_id: None,
            issued_at: None,
            outcome: None,
        }
    }
}

/// `GET /api/v1/campaigns/{id}/coupons/me`: the row if the worker wrote it;
/// else the recorded asynchronous state; else `pending` while the user holds
/// a slot in the gate (admitted, not yet persisted); else `none`.
pub async fn my_coupon(
    AuthenticatedUser(user): AuthenticatedUser,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let campaign = campaign_id(&req)?;
    if !state.campaigns.exists(&campaign).await? {
        return Err(ApiError::UnknownCampaign);
    }
    if let Some(row) = state.campaigns.coupon_of(&campaign, &user).await? {
        return Ok(HttpResponse::Ok().json(MyCoupon {
            coupon_id: Some(row.id),
            issued_at: Some(row.issued_at),
            ..MyCoupon::state("issued")
        }));
    }
    let gate = &state.pipeline.gate;
    let redis_down = |e| ApiError::unavailable(format!("redis unavailable: {e}"));
    if let Some(record) = gate.status(&campaign, &user).await.map_err(redis_down)? {
        let name = match record.state {
            RecordedState::Queued => "queued",
            RecordedState::Pending => "pending",
            RecordedState::Issued => "issued",
            RecordedState::Rejected => "rejected",
            RecordedState::None => "none",
        };
        return Ok(HttpResponse::Ok().json(MyCoupon {
            coupon_id: record.coupon_id.map(|c| c.as_uuid()),
            issued_at: (record.state == RecordedState::Issued).then_some(record.at),
            outcome: record.outcome,
            ..MyCoupon::state(name)
        }));
    }
    let holds = gate
        .holds_slot(&campaign, &user)
        .await
        .map_err(redis_down)?;
    Ok(HttpResponse::Ok().json(MyCoupon::state(if holds { "pending" } else { "none" })))
}
