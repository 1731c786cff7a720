//! The critical section shared by `distributed-lock` and `fair-lock`: the
//! seed's check-then-act as separate Redis commands (meta and time,
//! SISMEMBER, GET), made a unit by the campaign's lock, then the writes
//! (SADD, INCR) as one script fenced by that lock: they happen only while
//! the lock is still the caller's, and INCR only when SADD added the user
//! (`common/lua/locked_admit.lua`). That is the point of these variants:
//! they show what a lock costs next to the single atomic script of `sync`.
//!
//! The reply is `pending` without waiting for the delivery report; the report
//! is settled in the background (see [`Pipeline::produce_in_background`]).
//! A holder paused past its lease (its checks done, its lock gone) writes
//! nothing: the fence answers `lost` and the request gets a 503.

use std::sync::Arc;

use common::gate::Admission;
use common::ids::{CampaignId, CouponId, UserId};
use common::keys::CampaignKeys;
use common::lock::{FencedAdmission, LockError, LockGuard};

use super::pipeline::{Admitted, redis_unavailable, withdrawn};
use super::{IssueError, Issued, Pipeline, Refusal};

/// Maps a failed acquisition to a 503: nothing was admitted.
pub(super) fn lock_unavailable(e: LockError) -> IssueError {
    match e {
        LockError::WaitTimeout(wait) => IssueError::Unavailable(format!(
            "the campaign is busy (no lock within {} ms); retry later",
            wait.as_millis()
        )),
        LockError::LineFull(line) => IssueError::Unavailable(format!(
            "the campaign is busy ({line} requests already waiting for its lock); retry later"
        )),
        LockError::Redis(e) => redis_unavailable(e),
    }
}

/// The validation the seed ran before taking its lock: a user who already
/// holds a slot, or a campaign already sold out, is answered without
/// queueing for the lock. The section re-checks both under the lock.
pub(super) async fn precheck(
    pipeline: &Pipeline,
    campaign: &CampaignId,
    user: &UserId,
) -> Result<(), IssueError> {
    match pipeline
        .gate
        .precheck(campaign, user)
        .await
        .map_err(redis_unavailable)?
    {
        Some(Admission::Duplicate) => Err(IssueError::Refused(Refusal::Duplicate)),
        Some(Admission::SoldOut) => Err(IssueError::Refused(Refusal::SoldOut)),
        _ => Ok(()),
    }
}

/// Runs the section under `guard`, releases it, then produces.
pub(super) async fn issue_under(
    pipeline: &Arc<Pipeline>,
    guard: LockGuard,
    campaign: CampaignId,
    user: UserId,
) -> Result<Issued, IssueError> {
    pipeline
        .metrics
        .lock_wait_seconds
        .observe(guard.waited.as_secs_f64());
    let started = std::time::Instant::now();
    let admitted = section(pipeline, &guard, &campaign, &user).await;
    pipeline
        .metrics
        .gate_seconds
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = guard.release().await {
        // The lease runs out by itself; the next holder waits for it.
        tracing::warn!(campaign.id = %campaign, error = %e, "lock not released");
    }
    let admitted = admitted?;
    crate::faults::after_gate(&pipeline.faults, &user).await;
    let coupon_id = pipeline
        .produce_in_background(admitted, campaign, user)
        .await?;
    Ok(Issued::Pending(coupon_id))
}

async fn section(
    pipeline: &Pipeline,
    guard: &LockGuard,
    campaign: &CampaignId,
    user: &UserId,
) -> Result<Admitted, IssueError> {
    let gate = &pipeline.gate;
    let (meta, now_ms) = gate.read_meta(campaign).await.map_err(redis_unavailable)?;
    let Some(meta) = meta else {
        return Err(pipeline.classify_missing(campaign).await);
    };
    if meta.closed || meta.ends_at.is_some_and(|e| now_ms >= e.timestamp_millis()) {
        return Err(IssueError::Refused(Refusal::Closed));
    }
    if now_ms < meta.starts_at.timestamp_millis() {
        return Err(IssueError::Refused(Refusal::NotOpen));
    }
    if gate
        .holds_slot(campaign, user)
        .await
        .map_err(redis_unavailable)?
    {
        return Err(IssueError::Refused(Refusal::Duplicate));
    }
    if gate.count(campaign).await.map_err(redis_unavailable)? >= meta.stock {
        return Err(IssueError::Refused(Refusal::SoldOut));
    }
    crate::faults::pause_lock_holder(&pipeline.faults, guard, user).await;
    let coupon = CouponId::new();
    let admission = match guard
        .admit(&CampaignKeys::new(campaign), user, &coupon)
        .await
    {
        Ok(admission) => admission,
        Err(e) => return Err(pipeline.admission_failed(e, campaign, user, &coupon).await),
    };
    match admission {
        FencedAdmission::Admitted => Ok(Admitted::now(coupon)),
        FencedAdmission::Duplicate => Err(IssueError::Refused(Refusal::Duplicate)),
        FencedAdmission::Withdrawn => Err(withdrawn()),
        FencedAdmission::NotAdmitted => Err(IssueError::Refused(Refusal::NotAdmitted)),
        FencedAdmission::Lost => {
            tracing::warn!(campaign.id = %campaign, user.id = %user, "lock lost before the section's writes; nothing admitted");
            Err(IssueError::Unavailable(
                "the campaign lock was lost; nothing was issued, retry later".into(),
            ))
        }
    }
}
