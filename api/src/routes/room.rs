//! The waiting room's user endpoints: join a campaign's room, and read
//! one's place in it. The room itself (rate, windows, shuffle) is
//! `common::redis_state::room` and `common/lua/room.lua`; the issue
//! endpoint takes a slot only for a user the room has admitted.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use common::ids::{CampaignId, UserId};
use common::redis_state::{RoomReply, RoomState, RoomView};
use serde::Serialize;
use utoipa::ToSchema;

use super::campaign_id;
use super::issue::caller;
use crate::auth::User;
use crate::campaigns::RoomFacts;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::strategy::IssueError;

/// Where a user stands in a waiting room: `RoomState` as the api shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlaceState {
    /// Never joined.
    None,
    /// In line; `ahead` and `retry_after_ms` say how long.
    Waiting,
    /// Admitted until `admitted_until`.
    Admitted,
    /// Admitted, did not issue in time.
    Expired,
    /// Has a slot (issued, pending or queued).
    Taken,
    /// Nothing left to wait for.
    SoldOut,
    Closed,
}

/// A user's place in a campaign's waiting room.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlaceReply {
    state: PlaceState,
    /// 1, 2, 3, …: present for every user who joined; `null` before the
    /// start, while the block of early joiners is not yet shuffled.
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<Option<u64>>,
    /// Positions ahead not yet admitted (`waiting`).
    #[serde(skip_serializing_if = "Option::is_none")]
    ahead: Option<u64>,
    /// When to ask again (`waiting`); also as `Retry-After` in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
    /// Until when the user may issue (`admitted`).
    #[serde(skip_serializing_if = "Option::is_none")]
    admitted_until: Option<DateTime<Utc>>,
    /// Positions admitted per second: with `ahead`, the wait to expect.
    #[serde(skip_serializing_if = "Option::is_none")]
    admit_per_second: Option<u32>,
    /// When the sale opens: until then nobody is admitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    starts_at: Option<DateTime<Utc>>,
    /// On a 410: the error code, as in every error reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'static str>,
}

impl PlaceState {
    fn of(state: RoomState) -> Self {
        match state {
            RoomState::None => Self::None,
            RoomState::Waiting => Self::Waiting,
            RoomState::Admitted => Self::Admitted,
            RoomState::Expired => Self::Expired,
            RoomState::Taken => Self::Taken,
            RoomState::SoldOut => Self::SoldOut,
            RoomState::Closed => Self::Closed,
        }
    }
}

impl PlaceReply {
    fn of(view: &RoomView, facts: Option<RoomFacts>) -> Self {
        Self {
            state: PlaceState::of(view.state),
            position: view.joined.then_some(view.position),
            ahead: view.ahead,
            retry_after_ms: view.retry_after_ms,
            admitted_until: view.admitted_until,
            admit_per_second: facts.map(|f| f.admit_per_second),
            starts_at: facts.map(|f| f.starts_at),
            outcome: None,
            message: None,
        }
    }
}

/// `POST /api/v1/campaigns/{id}/room`: join (joining again returns the
/// same place).
#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/room",
    tag = "user",
    security(("user" = [])),
    params(
        ("id" = String, Path, description = "Campaign id (UUID)"),
        ("Idempotency-Key" = Option<String>, Header, description = "1–255 visible ASCII characters: a retry with the same key gets the first reply again"),
    ),
    responses(
        (status = 200, description = "admitted (issue before admitted_until), or taken (the user has a slot)", body = PlaceReply),
        (status = 202, description = "waiting: position, ahead, retry_after_ms (and Retry-After)", body = PlaceReply),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "unknown_campaign, or no_waiting_room", body = ErrorBody),
        (status = 409, description = "request_in_progress (Idempotency-Key)", body = ErrorBody),
        (status = 410, description = "sold_out, closed, or expired (the user's admission ran out): nothing left to wait for", body = PlaceReply),
        (status = 422, description = "idempotency_key_reused", body = ErrorBody),
        (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn join(
    req: HttpRequest,
    state: web::Data<AppState>,
    User(user): User,
) -> Result<HttpResponse, ApiError> {
    // Refused before the Idempotency-Key is claimed: nothing kept for them.
    let campaign = campaign_id(&req)?;
    let limited = state.limiter.check(&user).map_err(ApiError::rate_limited);
    let resource = format!("/api/v1/campaigns/{campaign}/room");
    state
        .idempotency
        .run_unless(&req, &caller(&user), &resource, b"", limited, |_| async {
            let facts = state.campaigns.room_facts(&campaign).await?;
            let view = room_call(&state, &campaign, &user, Call::Join).await?;
            Ok(join_reply(&view, facts))
        })
        .await
}

/// `GET /api/v1/campaigns/{id}/room/me`: the caller's place. Asking also
/// moves the room along (it admits whoever's time has come).
#[utoipa::path(
    get,
    path = "/api/v1/campaigns/{id}/room/me",
    tag = "user",
    security(("user" = [])),
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    responses(
        (status = 200, description = "The caller's place, whatever its state (none if it never joined)", body = PlaceReply),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "unknown_campaign, or no_waiting_room", body = ErrorBody),
        (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn my_place(
    req: HttpRequest,
    state: web::Data<AppState>,
    User(user): User,
) -> Result<HttpResponse, ApiError> {
    let campaign = campaign_id(&req)?;
    state
        .read_limiter
        .check(&user)
        .map_err(ApiError::rate_limited)?;
    let facts = state.campaigns.room_facts(&campaign).await?;
    let view = room_call(&state, &campaign, &user, Call::Look).await?;
    let mut reply = HttpResponse::Ok();
    retry_after(&mut reply, &view);
    Ok(reply.json(PlaceReply::of(&view, facts)))
}

#[derive(Debug, Clone, Copy)]
enum Call {
    Join,
    Look,
}

impl Call {
    fn as_str(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Look => "look",
        }
    }
}

async fn room_call(
    state: &AppState,
    campaign: &CampaignId,
    user: &UserId,
    call: Call,
) -> Result<RoomView, ApiError> {
    let reply = match call {
        Call::Join => state.rooms.join(campaign, user).await,
        Call::Look => state.rooms.look(campaign, user).await,
    }?;
    let label = match &reply {
        RoomReply::View(view) => view.state.as_str(),
        RoomReply::NoRoom => "no_waiting_room",
        RoomReply::Missing => "missing",
        RoomReply::Stale => "stale",
    };
    state
        .metrics
        .room_replies
        .with_label_values(&[call.as_str(), label])
        .inc();
    match reply {
        RoomReply::View(view) => Ok(view),
        RoomReply::NoRoom => Err(ApiError::NoWaitingRoom),
        RoomReply::Stale => Err(IssueError::Fenced.into()),
        RoomReply::Missing => Err(match state.issuance.classify_missing(campaign).await {
            IssueError::UnknownCampaign => ApiError::UnknownCampaign,
            other => other.into(),
        }),
    }
}

/// A join's status: 202 while waiting, 200 once admitted (or with a slot),
/// 410 when there is nothing left to wait for.
fn join_reply(view: &RoomView, facts: Option<RoomFacts>) -> HttpResponse {
    let mut body = PlaceReply::of(view, facts);
    let status = match view.state {
        RoomState::Waiting => StatusCode::ACCEPTED,
        RoomState::Admitted | RoomState::Taken | RoomState::None => StatusCode::OK,
        RoomState::SoldOut => {
            body.outcome = Some("sold_out");
            body.message = Some("the campaign's stock is exhausted");
            StatusCode::GONE
        }
        RoomState::Closed => {
            body.outcome = Some("closed");
            body.message = Some("the campaign is closed");
            StatusCode::GONE
        }
        RoomState::Expired => {
            body.outcome = Some("expired");
            body.message = Some(
                "this user was admitted and did not issue in time; the place went to the next",
            );
            StatusCode::GONE
        }
    };
    let mut reply = HttpResponse::build(status);
    retry_after(&mut reply, view);
    reply.json(body)
}

/// `Retry-After` (whole seconds, at least 1) on a waiting user's reply.
fn retry_after(reply: &mut actix_web::HttpResponseBuilder, view: &RoomView) {
    if let Some(ms) = view.retry_after_ms {
        reply.insert_header((
            header::RETRY_AFTER,
            HeaderValue::from(ms.div_ceil(1000).max(1)),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn place_states_are_the_room_states_words() {
        for state in [
            RoomState::None,
            RoomState::Waiting,
            RoomState::Admitted,
            RoomState::Expired,
            RoomState::Taken,
            RoomState::SoldOut,
            RoomState::Closed,
        ] {
            assert_eq!(
                serde_json::to_value(PlaceState::of(state)).unwrap(),
                state.as_str()
            );
        }
    }
}
