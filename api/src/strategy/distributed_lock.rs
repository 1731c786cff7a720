//! `distributed-lock`: a per-campaign lease lock (`SET NX PX` with a unique
//! token, compare-and-delete release, a watchdog renewing the lease) around
//! the separate commands of [`super::locked`]. Waiting is bounded
//! (`lock.wait_ms`): past it the reply is 503 and nothing is admitted.

use std::sync::Arc;

use common::ids::{CampaignId, UserId};
use common::keys::CampaignKeys;
use common::lock::{LeaseLock, LockTiming};
use common::lock_waker::LockWaker;
use common::settings::LockSettings;

use super::locked::{issue_under, lock_unavailable, precheck};
use super::{IssueError, Issued, Pipeline};

#[derive(Debug)]
pub struct DistributedLockStrategy {
    pipeline: Arc<Pipeline>,
    lock: LeaseLock,
}

impl DistributedLockStrategy {
    pub fn new(pipeline: Arc<Pipeline>, settings: &LockSettings) -> Self {
        let waker = LockWaker::new(pipeline.gate.client().clone());
        let lock = LeaseLock::new(pipeline.gate.clone(), timing(settings), Some(waker));
        Self { pipeline, lock }
    }

    pub async fn issue(&self, campaign: CampaignId, user: UserId) -> Result<Issued, IssueError> {
        precheck(&self.pipeline, &campaign, &user).await?;
        let key = CampaignKeys::new(&campaign).lock();
        let guard = self.lock.acquire(&key).await.map_err(lock_unavailable)?;
        issue_under(&self.pipeline, guard, campaign, user).await
    }
}

pub(super) fn timing(settings: &LockSettings) -> LockTiming {
    LockTiming {
        lease: std::time::Duration::from_millis(settings.lease_ms),
        wait: std::time::Duration::from_millis(settings.wait_ms),
    }
}
