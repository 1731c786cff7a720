//! `fair-lock`: a fair lock (a ticket lock in Redis: grants in arrival
//! order, O(1) per operation; `common::lock::FairLock`) around the same
//! section as `distributed-lock`. Grants follow arrival order at the lock,
//! which costs waiting: every request waits behind every earlier one of its
//! campaign, up to `lock.max_waiters` in line; past that a request is
//! answered 503 at once.

use std::sync::Arc;

use common::ids::{CampaignId, UserId};
use common::keys::CampaignKeys;
use common::lock::FairLock;
use common::lock_waker::LockWaker;
use common::settings::LockSettings;

use super::distributed_lock::timing;
use super::locked::{issue_under, lock_unavailable, precheck};
use super::{IssueError, Issued, Pipeline};

#[derive(Debug)]
pub struct FairLockStrategy {
    pipeline: Arc<Pipeline>,
    lock: FairLock,
}

impl FairLockStrategy {
    pub fn new(pipeline: Arc<Pipeline>, settings: &LockSettings) -> Self {
        let waker = LockWaker::new(pipeline.gate.client().clone());
        let lock = FairLock::new(pipeline.gate.clone(), timing(settings), Some(waker))
            .with_max_waiters(settings.max_waiters);
        Self { pipeline, lock }
    }

    pub async fn issue(&self, campaign: CampaignId, user: UserId) -> Result<Issued, IssueError> {
        precheck(&self.pipeline, &campaign, &user).await?;
        let keys = CampaignKeys::new(&campaign).fair_lock();
        let guard = self.lock.acquire(&keys).await.map_err(lock_unavailable)?;
        issue_under(&self.pipeline, guard, campaign, user).await
    }
}
