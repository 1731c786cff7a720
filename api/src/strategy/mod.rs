//! The request path of the issue endpoint, switchable at start-up
//! (`APP_STRATEGY`). Handlers call [`Strategy::issue`] and never know which
//! one runs; each strategy lives in its own file and builds on the shared
//! steps of [`pipeline`].

use std::sync::Arc;

use common::ids::{CampaignId, CouponId, UserId};
use common::settings::StrategyKind;

pub mod pipeline;
mod sync;

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
}

impl Refusal {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::SoldOut => "sold_out",
            Self::NotOpen => "not_open",
            Self::Closed => "closed",
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
    /// A dependency failed. Nothing was admitted, or a slot that could not
    /// be given back is left to reconciliation (and shows as pending).
    #[error("{0}")]
    Unavailable(String),
}

/// A successful issue reply (202).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issued {
    /// Durably in Kafka: the row will exist.
    Accepted(CouponId),
    /// Admitted, delivery not confirmed; reconciliation settles it.
    Pending(CouponId),
}

impl Issued {
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Accepted(_) => "accepted",
            Self::Pending(_) => "pending",
        }
    }

    pub fn coupon_id(&self) -> CouponId {
        match self {
            Self::Accepted(id) | Self::Pending(id) => *id,
        }
    }
}

/// The strategy chosen at start-up.
#[derive(Debug)]
pub enum Strategy {
    Sync(sync::SyncStrategy),
}

impl Strategy {
    pub fn build(kind: StrategyKind, pipeline: Arc<Pipeline>) -> Self {
        match kind {
            StrategyKind::Sync => Self::Sync(sync::SyncStrategy::new(pipeline)),
        }
    }

    pub fn kind(&self) -> StrategyKind {
        match self {
            Self::Sync(_) => StrategyKind::Sync,
        }
    }

    pub async fn issue(&self, campaign: CampaignId, user: UserId) -> Result<Issued, IssueError> {
        match self {
            Self::Sync(s) => s.issue(campaign, user).await,
        }
    }
}
