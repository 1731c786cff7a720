//! User endpoints: issue a coupon, and read one's own coupon state.
//! The user id comes only from the verified credential, never from the path
//! or a body.

use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use common::ids::{CampaignId, UserId};
use common::redis_state::RecordedState;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::campaign_id;
use crate::auth::User;
use crate::error::{ApiError, ErrorBody};
use crate::middleware::InFlight;
use crate::state::AppState;
use crate::strategy::Acceptance;

/// The outcome of a 202 issue reply: the words of `Acceptance::outcome`, which
/// the metrics use (a test keeps the two equal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IssueOutcome {
    /// In the broker: the row will exist.
    Accepted,
    /// A slot taken; delivery not confirmed yet (`/coupons/me` follows it).
    Pending,
    /// In the instance's queue (async-queue); nothing decided yet.
    Queued,
}

impl IssueOutcome {
    fn of(issued: Acceptance) -> Self {
        match issued {
            Acceptance::Accepted(_) => Self::Accepted,
            Acceptance::Pending(_) => Self::Pending,
            Acceptance::Queued => Self::Queued,
        }
    }
}

/// A 202 reply of the issue endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssueReply {
    outcome: IssueOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    coupon_id: Option<Uuid>,
}

/// `POST /api/v1/campaigns/{id}/issue`. A body, if any, is ignored.
#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/issue",
    tag = "user",
    security(("user" = [])),
    params(
        ("id" = String, Path, description = "Campaign id (UUID)"),
        ("Idempotency-Key" = Option<String>, Header, description = "1–255 visible ASCII characters: a retry with the same key gets the first reply again (with `Idempotent-Replayed: true`)"),
    ),
    responses(
        (status = 202, description = "accepted (in the broker: the row will exist), pending (delivery unconfirmed), or queued (async-queue)", body = IssueReply),
        (status = 400, description = "Campaign id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing, forged, expired or alg-none token", body = ErrorBody),
        (status = 403, description = "not_open", body = ErrorBody),
        (status = 404, description = "unknown_campaign", body = ErrorBody),
        (status = 409, description = "duplicate: the user has a slot; or request_in_progress: a request with this Idempotency-Key is still running", body = ErrorBody),
        (status = 410, description = "sold_out or closed", body = ErrorBody),
        (status = 422, description = "idempotency_key_reused: the key was used for another request", body = ErrorBody),
        (status = 429, description = "rate_limited; no stock spent", body = ErrorBody),
        (status = 503, description = "unavailable: nothing taken (or, rarely, a slot left to reconciliation)", body = ErrorBody),
    )
)]
pub async fn issue(
    req: HttpRequest,
    state: web::Data<AppState>,
    User(user): User,
) -> Result<HttpResponse, ApiError> {
    // What refuses without changing anything comes before the
    // Idempotency-Key is claimed, so such a request keeps no record (a
    // retry of a kept reply is still replayed, whatever the bucket says).
    let campaign = campaign_id(&req).inspect_err(|e| count_outcome(&state, e.outcome()))?;
    let limited = state.limiter.check(&user).map_err(ApiError::rate_limited);
    let in_flight = req.extensions().get::<InFlight>().cloned();
    // The body is ignored, so it is no part of the request's fingerprint.
    let resource = format!("/api/v1/campaigns/{campaign}/issue");
    state
        .idempotency
        .run_unless(&req, &caller(&user), &resource, b"", limited, |_| async {
            let result = issue_as(&state, campaign, user, in_flight).await;
            count_outcome(
                &state,
                match &result {
                    Ok(issued) => issued.outcome(),
                    Err(e) => e.outcome(),
                },
            );
            let issued = result?;
            let mut reply = HttpResponse::Accepted().json(IssueReply {
                outcome: IssueOutcome::of(issued),
                coupon_id: issued.coupon_id().map(|c| c.as_uuid()),
            });
            reply
                .extensions_mut()
                .insert(crate::error::ReplyOutcome(issued.outcome()));
            Ok(reply)
        })
        .await
}

/// Who an `Idempotency-Key` of a user's request belongs to.
pub(crate) fn caller(user: &UserId) -> String {
    format!("user:{user}")
}

fn count_outcome(state: &AppState, outcome: &str) {
    state
        .metrics
        .issue_outcomes
        .with_label_values(&[state.strategy.kind().as_str(), outcome])
        .inc();
}

/// Take, produce and settle run to their end on a tracked task: a slot is
/// never left half-taken because the client went away, and the request's
/// place among those in flight is held until the task ends.
async fn issue_as(
    state: &AppState,
    campaign: CampaignId,
    user: UserId,
    in_flight: Option<InFlight>,
) -> Result<Acceptance, ApiError> {
    let strategy = state.strategy.clone();
    let issued = state
        .issuance
        .run_to_end(async move {
            let issued = strategy.issue(campaign, user).await;
            drop(in_flight);
            issued
        })
        .await
        .ok_or_else(|| ApiError::unavailable("the issue request failed; retry later"))?;
    Ok(issued?)
}

/// A user's coupon of one campaign (the schema of `MyCoupon.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CouponState {
    /// Nothing held (never asked, refused, or released).
    None,
    /// Waiting in an async-queue instance.
    Queued,
    /// A slot taken; the row is not written yet.
    Pending,
    /// The row exists.
    Issued,
    /// Deferred, then refused or failed; `outcome` says why.
    Rejected,
}

/// `GET .../coupons/me`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MyCoupon {
    state: CouponState,
    #[serde(skip_serializing_if = "Option::is_none")]
    coupon_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    issued_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<String>,
}

impl MyCoupon {
    fn state(state: CouponState) -> Self {
        Self {
            state,
            coupon_id: None,
            issued_at: None,
            outcome: None,
        }
    }
}

/// `GET /api/v1/campaigns/{id}/coupons/me`: the row if the worker wrote it;
/// else the recorded asynchronous state; else `pending` while the user has a
/// slot (taken, not yet persisted), with the coupon id the slot names; else
/// `none`.
#[utoipa::path(
    get,
    path = "/api/v1/campaigns/{id}/coupons/me",
    tag = "user",
    security(("user" = [])),
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    responses(
        (status = 200, description = "The caller's own state in the campaign", body = MyCoupon),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn my_coupon(
    req: HttpRequest,
    state: web::Data<AppState>,
    User(user): User,
) -> Result<HttpResponse, ApiError> {
    let campaign = campaign_id(&req)?;
    state
        .read_limiter
        .check(&user)
        .map_err(ApiError::rate_limited)?;
    if !state.campaigns.exists(&campaign).await? {
        return Err(ApiError::UnknownCampaign);
    }
    if let Some(row) = state.campaigns.coupon_of(&campaign, &user).await? {
        return Ok(HttpResponse::Ok().json(MyCoupon {
            coupon_id: Some(row.id),
            issued_at: Some(row.issued_at),
            ..MyCoupon::state(CouponState::Issued)
        }));
    }
    if let Some(record) = state.issuance.status.read(&campaign, &user).await? {
        let name = match record.state {
            RecordedState::Queued => CouponState::Queued,
            RecordedState::Pending => CouponState::Pending,
            RecordedState::Rejected => CouponState::Rejected,
            RecordedState::None => CouponState::None,
        };
        return Ok(HttpResponse::Ok().json(MyCoupon {
            coupon_id: record.coupon_id.map(|c| c.as_uuid()),
            outcome: record.outcome,
            ..MyCoupon::state(name)
        }));
    }
    if let Some(coupon) = state.issuance.gate.slot_coupon(&campaign, &user).await? {
        return Ok(HttpResponse::Ok().json(MyCoupon {
            coupon_id: Some(coupon.as_uuid()),
            ..MyCoupon::state(CouponState::Pending)
        }));
    }
    let has_slot = state.issuance.gate.has_slot(&campaign, &user).await?;
    Ok(HttpResponse::Ok().json(MyCoupon::state(if has_slot {
        CouponState::Pending
    } else {
        CouponState::None
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::ids::CouponId;

    #[test]
    fn reply_outcomes_are_the_words_the_metrics_count() {
        let id = CouponId::new();
        for issued in [
            Acceptance::Accepted(id),
            Acceptance::Pending(id),
            Acceptance::Queued,
        ] {
            assert_eq!(
                serde_json::to_value(IssueOutcome::of(issued)).unwrap(),
                issued.outcome()
            );
        }
    }
}
