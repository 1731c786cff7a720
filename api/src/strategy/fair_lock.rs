//! `fair-lock`: Redisson's fair lock (a wait queue in Redis; only its head
//! may take the lock) around the same section as `distributed-lock`. Grants
//! follow arrival order at the lock, which costs waiting: every request
//! queues behind every earlier one of its campaign.

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
        let lock = FairLock::new(pipeline.gate.clone(), timing(settings), Some(waker));
        Self { pipeline, lock }
    }

    pub async fn issue(&self, campaign: CampaignId, user: UserId) -> Result<Issued, IssueError> {
        precheck(&self.pipeline, &campaign, &user).await?;
        let keys = CampaignKeys::new(&campaign).fair_lock();
        let guard = self.lock.acquire(&keys).await.map_err(lock_unavailable)?;
        issue_under(&self.pipeline, guard, campaign, user).await
    }
}
