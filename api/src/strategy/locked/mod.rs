//! `distributed-lock` and `fair-lock`: one strategy, its lock a parameter
//! ([`LockKind`]):
//! - `distributed-lock`: a per-campaign lease lock (`SET NX PX` with a unique
//!   token, compare-and-delete release, a watchdog renewing the lease);
//! - `fair-lock`: a fair ticket lock (grants in arrival order, O(1) per
//!   operation; `common::lock::FairLock`), which costs waiting: every request
//!   waits behind every earlier one of its campaign, up to
//!   `lock.max_waiters` in line; past that a request is answered 503 at once.
//!
//! Waiting is bounded (`lock.wait_ms`): past it the reply is 503 and no slot
//! is taken. The critical section is the seed's check-then-act as
//! separate Redis commands (meta and time, SISMEMBER, GET), made a unit by
//! the campaign's lock, then the take (SADD, INCR) as one script fenced by
//! that lock: it happens only while the lock is still the caller's
//! (`common/lua/locked_take.lua`). That is the point of these variants:
//! they show what a lock costs next to the single atomic script of `sync`.
//!
//! `lock.mode` says how the lock is used: `naive`, one hold per request (the
//! seed's design, and the section above); `combining`, one hold serves every
//! request of this instance waiting for the campaign's lock at that moment
//! ([`combining`]: flat combining, as a database's group commit): the holder
//! reads the meta once, sends the users' fenced takes together in arrival
//! order (the script stops them at the stock), releases, and answers each.
//!
//! The reply is `pending` without waiting for the delivery report; the report
//! is settled in the background (see [`Issuance::produce_in_background`]),
//! and the message takes the producer's batching lane.
//! A holder paused past its lease (its checks done, its lock gone) writes
//! nothing: the fence answers `lost` and the request gets a 503.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ids::{CampaignId, CouponId, UserId};
use common::keys::CampaignKeys;
use common::lock::{FairLock, LeaseLock, LockError, LockGuard, LockTiming};
use common::lock_waker::LockWaker;
use common::redis_state::{
    CampaignMeta, CampaignMetas, FencedTake, LockSections, Precheck, RedisClient,
};
use common::settings::{LockMode, LockSettings, StrategyKind};

use super::issuance::{TakenSlot, redis_unavailable, withdrawn};
use super::{Acceptance, Issuance, IssueError, Refusal};

/// Which lock makes the section a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// `distributed-lock`.
    Lease,
    /// `fair-lock`.
    Fair,
}

#[derive(Debug)]
pub(super) enum CampaignLock {
    Lease(LeaseLock),
    Fair(FairLock),
}

impl CampaignLock {
    pub(super) async fn acquire(&self, campaign: &CampaignId) -> Result<LockGuard, LockError> {
        let keys = CampaignKeys::new(campaign);
        match self {
            Self::Lease(lock) => lock.acquire(&keys.lock()).await,
            Self::Fair(lock) => lock.acquire(&keys.fair_lock()).await,
        }
    }
}

#[derive(Debug)]
pub struct LockedStrategy {
    section: Arc<Section>,
    lock: Arc<CampaignLock>,
    mode: LockMode,
    combiner: Arc<Combiner>,
}

mod combining;
use combining::Combiner;

/// What a section runs on: the issuance steps, and the section's own Redis
/// calls (the meta and time, and the reads and the fenced take).
#[derive(Debug)]
pub(super) struct Section {
    pub(super) issuance: Arc<Issuance>,
    metas: CampaignMetas,
    calls: LockSections,
}

impl LockedStrategy {
    pub fn new(
        issuance: Arc<Issuance>,
        redis: &RedisClient,
        kind: LockKind,
        settings: &LockSettings,
    ) -> Self {
        let waker = LockWaker::new(redis.client().clone());
        let redis_longest_call = redis.longest_call();
        let timing = LockTiming {
            lease: Duration::from_millis(settings.lease_ms),
            wait: Duration::from_millis(settings.wait_ms),
        };
        let redis = redis.clone();
        let section = Arc::new(Section {
            issuance,
            metas: CampaignMetas::new(redis.clone()),
            calls: LockSections::new(redis.clone()),
        });
        let lock = match kind {
            LockKind::Lease => CampaignLock::Lease(LeaseLock::new(redis, timing, Some(waker))),
            LockKind::Fair => CampaignLock::Fair(
                FairLock::new(redis, timing, Some(waker)).with_max_waiters(settings.max_waiters),
            ),
        };
        Self {
            section,
            lock: Arc::new(lock),
            mode: settings.mode,
            combiner: Arc::new(Combiner::new(settings, redis_longest_call)),
        }
    }

    pub fn mode(&self) -> LockMode {
        self.mode
    }

    pub fn kind(&self) -> StrategyKind {
        match *self.lock {
            CampaignLock::Lease(_) => StrategyKind::DistributedLock,
            CampaignLock::Fair(_) => StrategyKind::FairLock,
        }
    }

    pub async fn issue(
        &self,
        campaign: CampaignId,
        user: UserId,
    ) -> Result<Acceptance, IssueError> {
        let section = &self.section;
        precheck(section, &campaign, &user).await?;
        match self.mode {
            LockMode::Naive => {
                let guard = self
                    .lock
                    .acquire(&campaign)
                    .await
                    .map_err(lock_unavailable)?;
                issue_under(section, guard, campaign, user).await
            }
            LockMode::Combining => {
                let slot = self
                    .combiner
                    .take(&self.section, &self.lock, campaign, user.clone())
                    .await?;
                crate::faults::after_gate(&section.issuance.faults, &user).await;
                let coupon_id = section
                    .issuance
                    .produce_in_background(slot, campaign, user)
                    .await?;
                Ok(Acceptance::Pending(coupon_id))
            }
        }
    }
}

/// A lock just taken: observes how long it was waited for; returns when
/// the section starts.
pub(super) fn took(section: &Section, guard: &LockGuard) -> Instant {
    section
        .issuance
        .metrics
        .lock_wait_seconds
        .observe(guard.waited.as_secs_f64());
    Instant::now()
}

/// The section done: observes how long it held the lock, and releases it.
pub(super) async fn release(
    section: &Section,
    guard: LockGuard,
    campaign: &CampaignId,
    started: Instant,
) {
    section
        .issuance
        .metrics
        .gate_seconds
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = guard.release().await {
        // The lease runs out by itself; the next holder waits for it.
        tracing::warn!(campaign.id = %campaign, error = %e, "lock not released");
    }
}

/// The section's first check, as separate commands (`HMGET` meta, `TIME`):
/// the campaign's meta, if it is known and open right now.
pub(super) async fn open_now(
    section: &Section,
    campaign: &CampaignId,
) -> Result<CampaignMeta, IssueError> {
    let (meta, now_ms) = section
        .metas
        .read(campaign)
        .await
        .map_err(redis_unavailable)?;
    let Some(meta) = meta else {
        return Err(section.issuance.classify_missing(campaign).await);
    };
    if meta.closed || meta.ends_at.is_some_and(|e| now_ms >= e.timestamp_millis()) {
        return Err(IssueError::Refused(Refusal::Closed));
    }
    if now_ms < meta.starts_at.timestamp_millis() {
        return Err(IssueError::Refused(Refusal::NotOpen));
    }
    Ok(meta)
}

/// The section's write: a take fenced by `guard`'s lock, and its reply.
pub(super) async fn fenced_take(
    section: &Section,
    guard: &LockGuard,
    keys: &CampaignKeys,
    campaign: &CampaignId,
    user: &UserId,
    coupon: CouponId,
) -> Result<TakenSlot, IssueError> {
    let take = section
        .calls
        .take(guard.key(), guard.token(), keys, user, &coupon)
        .await;
    match take {
        Ok(FencedTake::Taken) => Ok(TakenSlot::now(coupon)),
        Ok(FencedTake::Refused(refusal)) => Err(IssueError::Refused(refusal)),
        Ok(FencedTake::Withdrawn) => Err(withdrawn()),
        Ok(FencedTake::Missing) => Err(section.issuance.classify_missing(campaign).await),
        Ok(FencedTake::Stale) => Err(IssueError::Fenced),
        Ok(FencedTake::Lost) => {
            guard.mark_lost();
            tracing::warn!(campaign.id = %campaign, user.id = %user, "lock lost before the section's take; nothing taken");
            Err(IssueError::Unavailable(
                "the campaign lock was lost; nothing was issued, retry later".into(),
            ))
        }
        Err(e) => Err(section
            .issuance
            .take_failed(e, campaign, user, &coupon)
            .await),
    }
}

/// Maps a failed acquisition to a 503: nothing was taken.
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
/// has a slot, or a campaign already sold out, is answered without waiting
/// for the lock. The section checks both again under the lock.
async fn precheck(
    section: &Section,
    campaign: &CampaignId,
    user: &UserId,
) -> Result<(), IssueError> {
    match section
        .calls
        .precheck(campaign, user)
        .await
        .map_err(redis_unavailable)?
    {
        Precheck::Go => Ok(()),
        Precheck::Refused(refusal) => Err(IssueError::Refused(refusal)),
        Precheck::Stale => Err(IssueError::Fenced),
    }
}

/// Runs the section under `guard`, releases it, then produces.
async fn issue_under(
    section: &Section,
    guard: LockGuard,
    campaign: CampaignId,
    user: UserId,
) -> Result<Acceptance, IssueError> {
    let started = took(section, &guard);
    let slot = naive_section(section, &guard, &campaign, &user).await;
    release(section, guard, &campaign, started).await;
    let slot = slot?;
    crate::faults::after_gate(&section.issuance.faults, &user).await;
    let coupon_id = section
        .issuance
        .produce_in_background(slot, campaign, user)
        .await?;
    Ok(Acceptance::Pending(coupon_id))
}

/// `naive`: the seed's check-then-act for one user, as separate commands.
async fn naive_section(
    section: &Section,
    guard: &LockGuard,
    campaign: &CampaignId,
    user: &UserId,
) -> Result<TakenSlot, IssueError> {
    let calls = &section.calls;
    let meta = open_now(section, campaign).await?;
    if calls
        .has_slot(campaign, user)
        .await
        .map_err(redis_unavailable)?
    {
        return Err(IssueError::Refused(Refusal::Duplicate));
    }
    if calls.count(campaign).await.map_err(redis_unavailable)? >= meta.stock {
        return Err(IssueError::Refused(Refusal::SoldOut));
    }
    crate::faults::pause_lock_holder(&section.issuance.faults, guard, user).await;
    fenced_take(
        section,
        guard,
        &CampaignKeys::new(campaign),
        campaign,
        user,
        CouponId::new(),
    )
    .await
}
