//! The per-campaign lock that reconcile, rebuild, a re-drive and an
//! archive (the api's) hold, so that two of them never interleave on one
//! campaign.

use std::time::Duration;

use common::ids::CampaignId;
use common::lock::LockGuard;
use common::redis_state::{AdminHold, RedisClient};

/// The admin lock's lease. Its holder's watchdog renews it every third, so
/// a long rebuild keeps it; a worker killed or frozen while it held the
/// lock keeps the next taker (another worker's gate keeper) out for at
/// most this long. Losing it to a pause writes nothing stale: a rebuild
/// installs only with its own rebuild token (`rebuild::install`), and the
/// writes of a reconcile's repair and a re-drive's take are fenced on the
/// lock itself (`AdminHold`, `lua/admin_fence.lua`).
pub const LEASE: Duration = common::lock::ADMIN_LEASE;

pub async fn acquire(redis: &RedisClient, campaign: &CampaignId) -> anyhow::Result<LockGuard> {
    common::lock::acquire_admin(redis, campaign, Duration::from_secs(30))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "another reconcile, rebuild, re-drive or archive holds campaign {campaign}: {e}"
            )
        })
}

/// Runs `work` holding the campaign's admin lock, which is released on
/// every path: a rebuild or reconcile that failed (a connection a Redis
/// restart broke, a worker group behind) must not keep the next one (the
/// gate keeper's) waiting for the lease. A release that fails (Redis
/// restarting: the lock may have been persisted before) is tried again
/// until the lease would have ended it anyway, so the next taker gets in as
/// soon as Redis answers again. `work` gets the hold its writes are fenced
/// on; it starts once the lock is held.
pub async fn holding<T, Fut>(
    redis: &RedisClient,
    campaign: &CampaignId,
    work: impl FnOnce(AdminHold) -> Fut,
) -> anyhow::Result<T>
where
    Fut: Future<Output = anyhow::Result<T>>,
{
    let lock = acquire(redis, campaign).await?;
    let result = work(AdminHold::from(&lock)).await;
    if let Err(e) = lock.release_within(LEASE).await {
        tracing::warn!(campaign.id = %campaign, error = %e, "admin lock not released; its lease ends it");
    }
    result
}
