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

/// Runs `work` holding the campaign's admin lock, which is released on
/// every path: a rebuild or reconcile that failed (a connection a Redis
/// restart broke, a worker group behind) must not keep the next one (the
/// gate keeper's) waiting for the lease. If the release fails too, the
/// lease (30 s) ends it. (`work` is a future: it starts once the lock is
/// held.)
pub async fn holding<T>(
    redis: &RedisClient,
    campaign: &CampaignId,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let lock = acquire(redis, campaign).await?;
    let result = work.await;
    if let Err(e) = lock.release().await {
        tracing::warn!(campaign.id = %campaign, error = %e, "admin lock not released; its lease ends it");
    }
    result
}
