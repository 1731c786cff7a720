//! The request path of the issue endpoint, switchable at start-up
//! (`APP_STRATEGY`). Handlers call [`Strategy::issue`] and never know which
//! one runs; every strategy is made of the steps of [`Issuance`]:
//!
//! | strategy | where | reply |
//! |---|---|---|
//! | `sync` | [`Issuance::issue_now`] | `accepted` / `pending` after the delivery report |
//! | `async-queue` | [`async_queue`], each queued request through `issue_now` | `queued` at once; the final state in `/coupons/me` |
//! | `distributed-lock` | [`locked`] with the lease lock | `pending`; delivery settled in the background |
//! | `fair-lock` | [`locked`] with the fair ticket lock | `pending`, as above |

use std::sync::Arc;
use std::time::Instant;

use common::ids::{CampaignId, CouponId, UserId};
use common::redis_state::RedisClient;
pub use common::redis_state::Refusal;
use common::settings::{Settings, StrategyKind};

use crate::producer::ReportWait;

pub mod async_queue;
pub mod gate_batch;
pub mod issuance;
pub mod locked;

pub use issuance::Issuance;

/// Whether a reply of `kind` waits for its message's delivery report: only
/// `sync`'s does. async-queue answers `queued` before its consumers produce,
/// the lock forms answer `pending` before the report; the producer builds its
/// quick lane only for the first (`IssueProducer::new`).
pub fn report_wait(kind: StrategyKind) -> ReportWait {
    match kind {
        StrategyKind::Sync => ReportWait::Reply,
        StrategyKind::AsyncQueue | StrategyKind::DistributedLock | StrategyKind::FairLock => {
            ReportWait::Background
        }
    }
}

/// Why an issue request got no coupon.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IssueError {
    #[error("{}", .0.as_str())]
    Refused(Refusal),
    #[error("unknown campaign")]
    UnknownCampaign,
    /// The campaign exists but its gate state is not in Redis.
    #[error("campaign state missing in Redis")]
    StateMissing,
    /// The campaign's gate state was loaded on another Redis server (this
    /// one restarted or took over): fenced until the worker's gate keeper
    /// rebuilds it. Nothing was taken.
    #[error("campaign state fenced after a Redis restart")]
    Fenced,
    /// A dependency failed or a bound was hit (queue full, lock wait).
    /// No slot was taken, or a slot that could not be given back is left
    /// to reconciliation (and shows as pending).
    #[error("{0}")]
    Unavailable(String),
}

impl IssueError {
    /// The outcome recorded for a request that was answered before it was
    /// decided (`queued`, `pending`) and then failed.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Refused(r) => r.as_str(),
            Self::UnknownCampaign => "unknown_campaign",
            Self::StateMissing | Self::Fenced | Self::Unavailable(_) => "unavailable",
        }
    }
}

/// How an issue request was accepted (its 202 reply): only `Accepted`
/// means issued; `Pending` and `Queued` are settled later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    /// Durably in Kafka: the row will exist.
    Accepted(CouponId),
    /// A slot taken, delivery not confirmed; settled later.
    Pending(CouponId),
    /// In this instance's queue, nothing decided yet.
    Queued,
}

impl Acceptance {
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Accepted(_) => "accepted",
            Self::Pending(_) => "pending",
            Self::Queued => "queued",
        }
    }

    pub fn coupon_id(&self) -> Option<CouponId> {
        match self {
            Self::Accepted(id) | Self::Pending(id) => Some(*id),
            Self::Queued => None,
        }
    }
}

/// The strategy chosen at start-up.
#[derive(Debug)]
pub enum Strategy {
    Sync(Arc<Issuance>),
    AsyncQueue(async_queue::AsyncQueueStrategy),
    /// `distributed-lock` and `fair-lock`: one strategy, its lock a parameter.
    Locked(locked::LockedStrategy),
}

impl Strategy {
    /// Builds the strategy of `settings.strategy` on `redis`; background
    /// tasks (queue consumers) start on the current runtime.
    pub fn build(settings: &Settings, issuance: Arc<Issuance>, redis: &RedisClient) -> Self {
        match settings.strategy {
            StrategyKind::Sync => Self::Sync(issuance),
            StrategyKind::AsyncQueue => Self::AsyncQueue(async_queue::AsyncQueueStrategy::start(
                issuance,
                redis,
                &settings.queue,
            )),
            StrategyKind::DistributedLock => Self::Locked(locked::LockedStrategy::new(
                issuance,
                redis,
                locked::LockKind::Lease,
                &settings.lock,
            )),
            StrategyKind::FairLock => Self::Locked(locked::LockedStrategy::new(
                issuance,
                redis,
                locked::LockKind::Fair,
                &settings.lock,
            )),
        }
    }

    /// The lock strategies' `lock.mode`; `None` for the others.
    pub fn lock_mode(&self) -> Option<common::settings::LockMode> {
        match self {
            Self::Locked(s) => Some(s.mode()),
            Self::Sync(_) | Self::AsyncQueue(_) => None,
        }
    }

    pub fn kind(&self) -> StrategyKind {
        match self {
            Self::Sync(_) => StrategyKind::Sync,
            Self::AsyncQueue(_) => StrategyKind::AsyncQueue,
            Self::Locked(s) => s.kind(),
        }
    }

    pub async fn issue(
        &self,
        campaign: CampaignId,
        user: UserId,
    ) -> Result<Acceptance, IssueError> {
        match self {
            Self::Sync(issuance) => {
                issuance
                    .issue_now(campaign, user, || {}, ReportWait::Reply)
                    .await
            }
            Self::AsyncQueue(s) => s.issue(campaign, user).await,
            Self::Locked(s) => s.issue(campaign, user).await,
        }
    }

    /// Shutdown, once no request comes in any more: finishes or settles
    /// what the strategy still holds by `deadline`.
    pub async fn drain(&self, deadline: Instant) {
        match self {
            Self::AsyncQueue(s) => s.drain(deadline).await,
            Self::Sync(_) | Self::Locked(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only `sync`'s replies wait for a delivery report, so only its
    /// producer builds a quick lane.
    #[test]
    fn only_sync_replies_wait_for_the_report() {
        for kind in StrategyKind::ALL {
            let expected = if kind == StrategyKind::Sync {
                ReportWait::Reply
            } else {
                ReportWait::Background
            };
            assert_eq!(report_wait(kind), expected, "{}", kind.as_str());
        }
    }
}
