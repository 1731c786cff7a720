//! The per-campaign lock that reconcile, rebuild and a re-drive hold, so
//! that two of them never interleave on one campaign.

use std::time::Duration;

use common::ids::CampaignId;
use common::keys::CampaignKeys;
use common::lock::{LeaseLock, LockGuard, LockTiming};
use common::redis_state::RedisClient;

pub async fn acquire(redis: &RedisClient, campaign: &CampaignId) -> anyhow::Result<LockGuard> {
    let lock = LeaseLock::new(
        redis.clone(),
        LockTiming {
            lease: Duration::from_secs(30),
            wait: Duration::from_secs(30),
        },
        None,
    );
    lock.acquire(&CampaignKeys::new(campaign).admin_lock())
        .await
        .map_err(|e| {
            anyhow::anyhow!("another reconcile, rebuild or re-drive holds campaign {campaign}: {e}")
        })
}
