//! The request path of the issue endpoint, switchable at start-up
//! (`APP_STRATEGY`). Handlers call [`Strategy::issue`] and never know which
//! one runs; each strategy lives in its own file and builds on the shared
//! steps of [`pipeline`]:
//!
//! | strategy | file | reply |
//! |---|---|---|
//! | `sync` | [`sync`] | `accepted` / `pending` after the delivery report |
//! | `async-queue` | [`async_queue`] | `queued` at once; the final state in `/coupons/me` |
//! | `distributed-lock` | [`distributed_lock`] + [`locked`] | `pending`; delivery settled in the background |
//! | `fair-lock` | [`fair_lock`] + [`locked`] | `pending`, as above |

use std::sync::Arc;
use std::time::Instant;

use common::ids::{CampaignId, CouponId, UserId};
use common::settings::{Settings, StrategyKind};

pub mod async_queue;
pub mod distributed_lock;
pub mod fair_lock;
mod locked;
pub mod pipeline;
pub mod sync;

pub use pipeline::Pipeline;

/// A refusal that is a normal business answer, not a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The user already holds a slot (issued, pending or queued).
    Duplicate,
    /// No stock left; the user was not marked.
    SoldOut,
    /// Before `starts_at`.
    NotOpen,
    /// After `ends_at`, or closed by an admin.
    Closed,
    /// The campaign has a waiting room that has not let the user in (or
    /// whose admission expired).
    NotAdmitted,
}

impl Refusal {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::SoldOut => "sold_out",
            Self::NotOpen => "not_open",
            Self::Closed => "closed",
            Self::NotAdmitted => "not_admitted",
        }
    }
}

/// Why an issue request got no coupon.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{}", .0.as_str())]
    Refused(Refusal),
    #[error("unknown campaign")]
    UnknownCampaign,
    /// The campaign exists but its gate state is not in Redis.
    #[error("campaign state missing in Redis")]
    StateMissing,
    /// A dependency failed or a bound was hit (queue full, lock wait).
    /// Nothing was admitted, or a slot that could not be given back is left
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
            Self::StateMissing | Self::Unavailable(_) => "unavailable",
        }
    }
}

/// A successful issue reply (202).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issued {
    /// Durably in Kafka: the row will exist.
    Accepted(CouponId),
    /// Admitted, delivery not confirmed; settled later.
    Pending(CouponId),
    /// In this instance's queue, nothing decided yet.
    Queued,
}

impl Issued {
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
    Sync(sync::SyncStrategy),
    AsyncQueue(async_queue::AsyncQueueStrategy),
    DistributedLock(distributed_lock::DistributedLockStrategy),
    FairLock(fair_lock::FairLockStrategy),
}

impl Strategy {
    /// Builds the strategy of `settings.strategy`; background tasks (queue
    /// consumers) start on the current runtime.
    pub fn build(settings: &Settings, pipeline: Arc<Pipeline>) -> Self {
        match settings.strategy {
            StrategyKind::Sync => Self::Sync(sync::SyncStrategy::new(pipeline)),
            StrategyKind::AsyncQueue => Self::AsyncQueue(async_queue::AsyncQueueStrategy::start(
                pipeline,
                &settings.queue,
            )),
            StrategyKind::DistributedLock => Self::DistributedLock(
                distributed_lock::DistributedLockStrategy::new(pipeline, &settings.lock),
            ),
            StrategyKind::FairLock => {
                Self::FairLock(fair_lock::FairLockStrategy::new(pipeline, &settings.lock))
            }
        }
    }

    pub fn kind(&self) -> StrategyKind {
        match self {
            Self::Sync(_) => StrategyKind::Sync,
            Self::AsyncQueue(_) => StrategyKind::AsyncQueue,
            Self::DistributedLock(_) => StrategyKind::DistributedLock,
            Self::FairLock(_) => StrategyKind::FairLock,
        }
    }

    pub async fn issue(&self, campaign: CampaignId, user: UserId) -> Result<Issued, IssueError> {
        match self {
            Self::Sync(s) => s.issue(campaign, user).await,
            Self::AsyncQueue(s) => s.issue(campaign, user).await,
            Self::DistributedLock(s) => s.issue(campaign, user).await,
            Self::FairLock(s) => s.issue(campaign, user).await,
        }
    }

    /// Shutdown, once no request comes in any more: finishes or settles
    /// what the strategy still holds by `deadline`.
    pub async fn drain(&self, deadline: Instant) {
        match self {
            Self::AsyncQueue(s) => s.drain(deadline).await,
            Self::Sync(_) | Self::DistributedLock(_) | Self::FairLock(_) => {}
        }
    }
}
