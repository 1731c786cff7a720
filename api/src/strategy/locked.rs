//! `distributed-lock` and `fair-lock`: one strategy, its lock a parameter
//! ([`LockKind`]):
//! - `distributed-lock`: a per-campaign lease lock (`SET NX PX` with a unique
//!   token, compare-and-delete release, a watchdog renewing the lease);
//! - `fair-lock`: a fair ticket lock (grants in arrival order, O(1) per
//!   operation; `common::lock::FairLock`), which costs waiting: every request
//!   waits behind every earlier one of its campaign, up to
//!   `lock.max_waiters` in line; past that a request is answered 503 at once.
//!
//! Waiting is bounded (`lock.wait_ms`): past it the reply is 503 and nothing
//! is admitted. The critical section is the seed's check-then-act as
//! separate Redis commands (meta and time, SISMEMBER, GET), made a unit by
//! the campaign's lock, then the writes (SADD, INCR) as one script fenced by
//! that lock: they happen only while the lock is still the caller's, and
//! INCR only when SADD added the user (`common/lua/locked_admit.lua`). That
//! is the point of these variants: they show what a lock costs next to the
//! single atomic script of `sync`.
//!
//! `lock.mode` says how the lock is used: `naive`, one hold per request (the
//! seed's design, and the section above); `combining`, one hold serves every
//! request of this instance waiting for the campaign's lock at that moment
//! ([`Combiner`]: flat combining, as a database's group commit): the holder
//! reads the meta once, sends the users' fenced writes together in arrival
//! order (the script stops them at the stock), releases, and answers each.
//!
//! A batch's work belongs to no single request: it runs in a `lock_hold` span
//! of its own (the campaign, the batch's size), linked to the span of every
//! request it serves (follows-from, a link in a trace), so a log line of the
//! hold never carries the request id of whichever request started the task.
//!
//! The reply is `pending` without waiting for the delivery report; the report
//! is settled in the background (see [`Issuance::produce_in_background`]).
//! A holder paused past its lease (its checks done, its lock gone) writes
//! nothing: the fence answers `lost` and the request gets a 503.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ids::{CampaignId, CouponId, UserId};
use common::keys::CampaignKeys;
use common::lock::{FairLock, FencedAdmission, LeaseLock, LockError, LockGuard, LockTiming};
use common::lock_waker::LockWaker;
use common::redis_state::CampaignMeta;
use common::settings::{LockMode, LockSettings, StrategyKind};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::issuance::{Admitted, redis_unavailable, withdrawn};
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
enum CampaignLock {
    Lease(LeaseLock),
    Fair(FairLock),
}

impl CampaignLock {
    async fn acquire(&self, campaign: &CampaignId) -> Result<LockGuard, LockError> {
        let keys = CampaignKeys::new(campaign);
        match self {
            Self::Lease(lock) => lock.acquire(&keys.lock()).await,
            Self::Fair(lock) => lock.acquire(&keys.fair_lock()).await,
        }
    }
}

#[derive(Debug)]
pub struct LockedStrategy {
    issuance: Arc<Issuance>,
    lock: Arc<CampaignLock>,
    mode: LockMode,
    combiner: Arc<Combiner>,
}

impl LockedStrategy {
    pub fn new(issuance: Arc<Issuance>, kind: LockKind, settings: &LockSettings) -> Self {
        let waker = LockWaker::new(issuance.redis.client().clone());
        let timing = LockTiming {
            lease: Duration::from_millis(settings.lease_ms),
            wait: Duration::from_millis(settings.wait_ms),
        };
        let redis = issuance.redis.clone();
        let lock = match kind {
            LockKind::Lease => CampaignLock::Lease(LeaseLock::new(redis, timing, Some(waker))),
            LockKind::Fair => CampaignLock::Fair(
                FairLock::new(redis, timing, Some(waker)).with_max_waiters(settings.max_waiters),
            ),
        };
        Self {
            issuance,
            lock: Arc::new(lock),
            mode: settings.mode,
            combiner: Arc::default(),
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
        precheck(&self.issuance, &campaign, &user).await?;
        match self.mode {
            LockMode::Naive => {
                let guard = self
                    .lock
                    .acquire(&campaign)
                    .await
                    .map_err(lock_unavailable)?;
                issue_under(&self.issuance, guard, campaign, user).await
            }
            LockMode::Combining => {
                let admitted = self.combined(campaign, user.clone()).await?;
                crate::faults::after_gate(&self.issuance.faults, &user).await;
                let coupon_id = self
                    .issuance
                    .produce_in_background(admitted, campaign, user)
                    .await?;
                Ok(Acceptance::Pending(coupon_id))
            }
        }
    }

    /// `combining`: joins the campaign's line in this instance; the first
    /// to find no holder serving it starts one ([`serve`]).
    async fn combined(&self, campaign: CampaignId, user: UserId) -> Result<Admitted, IssueError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut lines = self.combiner.lines();
            let line = lines.entry(campaign).or_default();
            line.waiting.push(Waiter {
                user,
                reply,
                span: tracing::Span::current(),
            });
            !std::mem::replace(&mut line.serving, true)
        };
        if start {
            // Its own root span: the task outlives the request that started
            // it. At `warn`, as the request span, so that the lines it logs
            // under the default filter carry it.
            let line = tracing::warn_span!(parent: None, "lock_line", campaign.id = %campaign);
            self.issuance.spawn(
                serve(
                    self.issuance.clone(),
                    self.lock.clone(),
                    self.combiner.clone(),
                    campaign,
                )
                .instrument(line),
            );
        }
        answer.await.unwrap_or_else(|_| {
            Err(IssueError::Unavailable(
                "the request was dropped before its turn; nothing was issued, retry later".into(),
            ))
        })
    }
}

/// The most requests one hold serves: it bounds the hold (each user is one
/// script call in the pipeline).
const MOST_PER_HOLD: usize = 512;

/// `combining`: the requests of this instance waiting for each campaign's
/// lock.
#[derive(Debug, Default)]
struct Combiner {
    lines: std::sync::Mutex<HashMap<CampaignId, Line>>,
}

impl Combiner {
    fn lines(&self) -> std::sync::MutexGuard<'_, HashMap<CampaignId, Line>> {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Debug, Default)]
struct Line {
    waiting: Vec<Waiter>,
    /// A task is serving this line (taking the lock for its batches).
    serving: bool,
}

#[derive(Debug)]
struct Waiter {
    user: UserId,
    reply: oneshot::Sender<Result<Admitted, IssueError>>,
    /// The request's span, which the hold that serves it links to.
    span: tracing::Span,
}

/// Serves a campaign's line until it is empty: takes what waits (up to
/// [`MOST_PER_HOLD`]), holds the lock once for all of it, answers each.
async fn serve(
    issuance: Arc<Issuance>,
    lock: Arc<CampaignLock>,
    combiner: Arc<Combiner>,
    campaign: CampaignId,
) {
    loop {
        let batch: Vec<Waiter> = {
            let mut lines = combiner.lines();
            let Some(line) = lines.get_mut(&campaign) else {
                return;
            };
            if line.waiting.is_empty() {
                lines.remove(&campaign);
                return;
            }
            let n = line.waiting.len().min(MOST_PER_HOLD);
            line.waiting.drain(..n).collect()
        };
        let hold = tracing::warn_span!("lock_hold", batch = batch.len());
        for waiter in &batch {
            hold.follows_from(&waiter.span);
        }
        let results = hold_once(&issuance, &lock, &campaign, &batch)
            .instrument(hold)
            .await;
        for (waiter, result) in batch.into_iter().zip(results) {
            let _ = waiter.reply.send(result);
        }
    }
}

/// One hold for a batch: the lock, the section, the release.
async fn hold_once(
    issuance: &Issuance,
    lock: &CampaignLock,
    campaign: &CampaignId,
    batch: &[Waiter],
) -> Vec<Result<Admitted, IssueError>> {
    let guard = match lock.acquire(campaign).await {
        Ok(guard) => guard,
        Err(e) => {
            let e = lock_unavailable(e);
            return batch.iter().map(|_| Err(e.clone())).collect();
        }
    };
    let started = took(issuance, &guard);
    let users: Vec<UserId> = batch.iter().map(|w| w.user.clone()).collect();
    let results = combined_section(issuance, &guard, campaign, &users).await;
    release(issuance, guard, campaign, started).await;
    results
}

/// The section for a batch under one hold: the meta and window once, then
/// every user's fenced write (`locked_admit.lua`: not a holder yet, the
/// count below the stock, the lock still ours), sent together in arrival
/// order on the shared connection. A user twice in one batch is a
/// duplicate the second time.
async fn combined_section(
    issuance: &Issuance,
    guard: &LockGuard,
    campaign: &CampaignId,
    users: &[UserId],
) -> Vec<Result<Admitted, IssueError>> {
    if let Err(e) = open_now(issuance, campaign).await {
        return users.iter().map(|_| Err(e.clone())).collect();
    }
    for user in users {
        crate::faults::pause_lock_holder(&issuance.faults, guard, user).await;
    }
    let keys = CampaignKeys::new(campaign);
    let mut seen = HashSet::new();
    let writes = users.iter().map(|user| {
        let first = seen.insert(user);
        let keys = &keys;
        async move {
            if !first {
                return Err(IssueError::Refused(Refusal::Duplicate));
            }
            let coupon = CouponId::new();
            match guard.admit(keys, user, &coupon).await {
                Ok(admission) => fenced(admission, coupon, campaign, user),
                Err(e) => Err(issuance.admission_failed(e, campaign, user, &coupon).await),
            }
        }
    });
    futures::future::join_all(writes).await
}

/// A lock just taken: observes how long it was waited for; returns when
/// the section starts.
fn took(issuance: &Issuance, guard: &LockGuard) -> Instant {
    issuance
        .metrics
        .lock_wait_seconds
        .observe(guard.waited.as_secs_f64());
    Instant::now()
}

/// The section done: observes how long it held the lock, and releases it.
async fn release(issuance: &Issuance, guard: LockGuard, campaign: &CampaignId, started: Instant) {
    issuance
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
async fn open_now(issuance: &Issuance, campaign: &CampaignId) -> Result<CampaignMeta, IssueError> {
    let (meta, now_ms) = issuance
        .redis
        .read_meta(campaign)
        .await
        .map_err(redis_unavailable)?;
    let Some(meta) = meta else {
        return Err(issuance.classify_missing(campaign).await);
    };
    if meta.closed || meta.ends_at.is_some_and(|e| now_ms >= e.timestamp_millis()) {
        return Err(IssueError::Refused(Refusal::Closed));
    }
    if now_ms < meta.starts_at.timestamp_millis() {
        return Err(IssueError::Refused(Refusal::NotOpen));
    }
    Ok(meta)
}

/// The reply to a fenced write.
fn fenced(
    admission: FencedAdmission,
    coupon: CouponId,
    campaign: &CampaignId,
    user: &UserId,
) -> Result<Admitted, IssueError> {
    match admission {
        FencedAdmission::Admitted => Ok(Admitted::now(coupon)),
        FencedAdmission::Refused(refusal) => Err(IssueError::Refused(refusal)),
        FencedAdmission::Withdrawn => Err(withdrawn()),
        FencedAdmission::Lost => {
            tracing::warn!(campaign.id = %campaign, user.id = %user, "lock lost before the section's writes; nothing admitted");
            Err(IssueError::Unavailable(
                "the campaign lock was lost; nothing was issued, retry later".into(),
            ))
        }
    }
}

/// Maps a failed acquisition to a 503: nothing was admitted.
fn lock_unavailable(e: LockError) -> IssueError {
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
async fn precheck(
    issuance: &Issuance,
    campaign: &CampaignId,
    user: &UserId,
) -> Result<(), IssueError> {
    match issuance
        .redis
        .precheck(campaign, user)
        .await
        .map_err(redis_unavailable)?
    {
        Some(refusal) => Err(IssueError::Refused(refusal)),
        None => Ok(()),
    }
}

/// Runs the section under `guard`, releases it, then produces.
async fn issue_under(
    issuance: &Arc<Issuance>,
    guard: LockGuard,
    campaign: CampaignId,
    user: UserId,
) -> Result<Acceptance, IssueError> {
    let started = took(issuance, &guard);
    let admitted = section(issuance, &guard, &campaign, &user).await;
    release(issuance, guard, &campaign, started).await;
    let admitted = admitted?;
    crate::faults::after_gate(&issuance.faults, &user).await;
    let coupon_id = issuance
        .produce_in_background(admitted, campaign, user)
        .await?;
    Ok(Acceptance::Pending(coupon_id))
}

async fn section(
    issuance: &Issuance,
    guard: &LockGuard,
    campaign: &CampaignId,
    user: &UserId,
) -> Result<Admitted, IssueError> {
    let redis = &issuance.redis;
    let meta = open_now(issuance, campaign).await?;
    if redis
        .holds_slot(campaign, user)
        .await
        .map_err(redis_unavailable)?
    {
        return Err(IssueError::Refused(Refusal::Duplicate));
    }
    if redis.count(campaign).await.map_err(redis_unavailable)? >= meta.stock {
        return Err(IssueError::Refused(Refusal::SoldOut));
    }
    crate::faults::pause_lock_holder(&issuance.faults, guard, user).await;
    let coupon = CouponId::new();
    let admission = match guard
        .admit(&CampaignKeys::new(campaign), user, &coupon)
        .await
    {
        Ok(admission) => admission,
        Err(e) => return Err(issuance.admission_failed(e, campaign, user, &coupon).await),
    };
    fenced(admission, coupon, campaign, user)
}
