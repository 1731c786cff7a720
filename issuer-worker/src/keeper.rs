//! The gate keeper: heals a campaign's gate state after Redis lost it, with
//! no operator.
//!
//! Every `worker.keeper_interval_ms` (1 s) it asks which Redis server
//! answers (the `run_id` its connection reached). When that changed (Redis
//! restarted, or another server took over), and at least every
//! `worker.keeper_scan_secs` (30 s) anyway, it looks at every recent
//! campaign's gate state: one that is missing (a Redis that restarted
//! empty) or fenced (its meta's epoch names another server:
//! `common/lua/fence.lua`) is rebuilt (`rebuild::rebuild`), several at once.
//!
//! So after a Redis restart the campaigns answer 503 (`unavailable`, nothing
//! taken) for at most: the tick that notices (1 s), the rebuild's wait for
//! the takes made before the restart to settle (`takes_settle_within` + 1 s:
//! 14 s at the defaults), and the rebuild itself (reading the rows and the
//! unconsumed part of the topic). Every worker runs a keeper; the
//! campaign's admin lock makes one of them rebuild it, the others find it
//! current.
//!
//! What if the keeper dies mid-rebuild? The campaign stays fenced (or
//! missing): the next keeper's scan rebuilds it. What if Redis restarts
//! again mid-rebuild? The rebuild's last step loads the meta only on the
//! server it started on (`CampaignMetas::load_on`); it fails and the
//! campaign stays fenced for the next scan. A failed rebuild (a connection
//! the restart broke, a broker that did not answer) brings the next scan
//! forward to [`RETRY_AFTER`], not the full `keeper_scan_secs`: the
//! campaign's outage is bounded by the retry, not by the periodic scan.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ids::CampaignId;
use common::redis_state::{CampaignMetas, EpochState, RedisClient};
use common::settings::Settings;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use tokio_util::sync::CancellationToken;

use crate::metrics::WorkerMetrics;

/// Campaigns whose window ended more than this long ago are left alone
/// (their gate state is rebuilt on demand with `issuer-worker rebuild`).
const RECENT_DAYS: i32 = 30;
/// The most campaigns rebuilt at once (each mostly waits).
const AT_ONCE: usize = 16;
/// How soon the next scan comes after a rebuild failed.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Runs until `stop`.
pub async fn run(
    settings: Settings,
    db: DatabaseConnection,
    metrics: WorkerMetrics,
    stop: CancellationToken,
) {
    let every = Duration::from_millis(settings.worker.keeper_interval_ms);
    if every.is_zero() {
        return;
    }
    let redis = match RedisClient::new(&settings.redis, None) {
        Ok(redis) => redis,
        Err(e) => {
            tracing::error!(error = %e, "gate keeper not started");
            return;
        }
    };
    let metas = CampaignMetas::new(redis.clone());
    let scan_every = Duration::from_secs(settings.worker.keeper_scan_secs.max(1));
    let settings = Arc::new(settings);
    let rebuilding: Arc<Mutex<HashSet<CampaignId>>> = Arc::default();
    // Set by a rebuild that failed: the next scan comes after RETRY_AFTER.
    let failed = Arc::new(AtomicBool::new(false));
    let mut last_server: Option<String> = None;
    let mut last_scan: Option<Instant> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let server = match redis.server().await {
            Ok(server) => server,
            Err(e) => {
                tracing::debug!(error = %e, "gate keeper: Redis does not answer");
                continue;
            }
        };
        let changed = last_server.as_deref() != Some(server.as_str());
        let due = match last_scan {
            None => true,
            Some(at) if failed.load(Ordering::Relaxed) => at.elapsed() >= RETRY_AFTER,
            Some(at) => at.elapsed() >= scan_every,
        };
        if !changed && !due {
            continue;
        }
        let campaigns = match recent_campaigns(&db).await {
            Ok(campaigns) => campaigns,
            Err(e) => {
                tracing::warn!(error = %e, "gate keeper: campaigns not read");
                continue;
            }
        };
        let mut broken = Vec::new();
        let mut unread = false;
        for campaign in campaigns {
            match metas.epoch_state(&campaign).await {
                Ok((EpochState::Current, _)) => {}
                Ok((state, _)) => broken.push((campaign, state)),
                Err(e) => {
                    tracing::debug!(error = %e, "gate keeper: epoch not read");
                    unread = true;
                    break;
                }
            }
        }
        if unread {
            continue;
        }
        if changed && last_server.is_some() {
            tracing::warn!(
                campaigns = broken.len(),
                "Redis answers from another server now; rebuilding fenced gate states"
            );
        }
        last_server = Some(server);
        last_scan = Some(Instant::now());
        failed.store(false, Ordering::Relaxed);
        metrics.stale_campaigns.set(broken.len() as i64);
        for (campaign, state) in broken {
            if rebuilding
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .len()
                >= AT_ONCE
            {
                break;
            }
            if !rebuilding
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(campaign)
            {
                continue;
            }
            tracing::info!(campaign.id = %campaign, ?state, "gate keeper rebuilding");
            let (settings, db, redis, metrics, rebuilding, failed) = (
                settings.clone(),
                db.clone(),
                redis.clone(),
                metrics.clone(),
                rebuilding.clone(),
                failed.clone(),
            );
            tokio::spawn(async move {
                let result = crate::rebuild::rebuild(&settings, &db, &redis, campaign, false).await;
                let label = match &result {
                    Ok(Some(_)) => "rebuilt",
                    Ok(None) => "current",
                    Err(e) => {
                        tracing::warn!(campaign.id = %campaign, error = %e, "gate keeper: rebuild failed; the next scan tries again");
                        failed.store(true, Ordering::Relaxed);
                        "failed"
                    }
                };
                metrics.rebuilds.with_label_values(&[label]).inc();
                rebuilding
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&campaign);
            });
        }
    }
}

/// Campaigns created within [`RECENT_DAYS`] whose window has not ended more
/// than a day ago, newest first.
async fn recent_campaigns(db: &DatabaseConnection) -> Result<Vec<CampaignId>, sea_orm::DbErr> {
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id FROM campaigns \
             WHERE created_at > now() - make_interval(days => $1) \
               AND (ends_at IS NULL OR ends_at > now() - interval '1 day') \
             ORDER BY created_at DESC LIMIT 10000",
            [RECENT_DAYS.into()],
        ))
        .await?;
    rows.iter()
        .map(|r| r.try_get::<uuid::Uuid>("", "id").map(CampaignId::from))
        .collect()
}
