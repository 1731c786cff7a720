//! The gate keeper: heals a campaign's gate state after Redis lost it, with
//! no operator.
//!
//! Every `worker.keeper_interval_ms` (1 s) it asks which Redis server
//! answers (the `run_id` its connection reached) and which campaigns a
//! forced rebuild fenced (`keys::FENCED_CAMPAIGNS`). When the server
//! changed (Redis restarted, or another server took over), when a fenced
//! campaign has no rebuild under way here, and at least every
//! `worker.keeper_scan_secs` (30 s) anyway, it looks at every recent
//! campaign's gate state: one that is missing (a Redis that restarted
//! empty) or fenced (its meta's epoch names another server:
//! `common/lua/fence.lua`) is rebuilt (`rebuild::rebuild`), several at once.
//!
//! So after a Redis restart, with PostgreSQL and the broker answering, the
//! campaigns answer 503 (`unavailable`, nothing taken) for at most: the tick that notices (1 s), the rebuild's wait for
//! the takes made before the restart to settle (`takes_settle_within` + 1 s:
//! 14 s at the defaults), and the rebuild itself (reading the rows and the
//! unconsumed part of the topic). Every worker runs a keeper; the
//! campaign's admin lock makes one of them rebuild it, the others find it
//! current.
//!
//! What if the keeper dies mid-rebuild? The campaign stays fenced (or
//! missing): the next keeper's scan rebuilds it. What if Redis restarts
//! again mid-rebuild? The rebuild's install writes only on the server it
//! started on (`Repair::install`); it fails and the campaign stays fenced
//! for the next scan. A failed rebuild (a connection the restart broke, a
//! broker that did not answer) brings that campaign's next attempt forward
//! to [`RETRY_AFTER`], not the full `keeper_scan_secs`: the campaign's
//! outage is bounded by the retry, not by the periodic scan. Each further
//! failure doubles the wait, up to `keeper_scan_secs`, so a campaign whose
//! rebuild keeps failing for a cause of its own does not hold its admin
//! lock almost all the time.
//!
//! While a rebuild waits for its retry, the keeper also asks every tick
//! whether what a rebuild reads answers (the *probe*: PostgreSQL, and the
//! broker's partitions and end offsets, each within [`PROBE_WITHIN`]; Redis
//! answered the tick). After two ticks or more in a row without an answer,
//! the first tick that gets one again makes every waiting rebuild due at
//! once, its back-off forgotten: the failures were that outage's, and a
//! broker back just after the fourth failure no longer waits out a 16 s
//! back-off before a rebuild even begins (the fault campaign's long run,
//! rule 10). The probe only brings retries forward, never holds anything
//! back: a probe that cannot pass (a slow broker, a busy pool) leaves the
//! keeper doing what it did without it. What if the probe hangs? PostgreSQL's
//! part gives up after [`PROBE_WITHIN`], the broker's after three times that
//! (`topic::answers`), and a stop ends the wait at once. Each probe opens
//! a client of its own: one connection a tick, only while a rebuild waits.

use std::collections::{HashMap, HashSet};
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
/// How soon a campaign's rebuild is tried again after it failed once;
/// doubled by each further failure, up to `keeper_scan_secs`.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// How long each part of the keeper's probe of PostgreSQL and the broker
/// may take before it counts as not answering.
const PROBE_WITHIN: Duration = Duration::from_secs(2);

/// The campaigns whose last rebuild failed: how often in a row, and when
/// the next attempt is due.
#[derive(Debug, Default)]
struct Retries(HashMap<CampaignId, (u32, Instant)>);

impl Retries {
    fn failed(&mut self, campaign: CampaignId, cap: Duration) {
        let (failures, due) = self.0.entry(campaign).or_insert((0, Instant::now()));
        *failures += 1;
        let wait = RETRY_AFTER
            .saturating_mul(1 << (*failures - 1).min(16))
            .min(cap);
        *due = Instant::now() + wait;
    }

    fn succeeded(&mut self, campaign: &CampaignId) {
        self.0.remove(campaign);
    }

    /// Whether the campaign may be tried now.
    fn is_due(&self, campaign: &CampaignId) -> bool {
        self.0
            .get(campaign)
            .is_none_or(|(_, due)| Instant::now() >= *due)
    }

    /// Forgets the campaigns no longer broken (another worker rebuilt them).
    fn keep_only(&mut self, broken: &[(CampaignId, EpochState)]) {
        let broken: HashSet<&CampaignId> = broken.iter().map(|(c, _)| c).collect();
        self.0.retain(|c, _| broken.contains(c));
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Makes every waiting rebuild due now, its back-off forgotten (the
    /// outage that failed it is over).
    fn all_due_now(&mut self) {
        let now = Instant::now();
        for entry in self.0.values_mut() {
            *entry = (0, now);
        }
    }

    /// The earliest retry due, if any.
    fn next_due(&self) -> Option<Instant> {
        self.0.values().map(|(_, due)| *due).min()
    }
}

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
    // Campaigns whose rebuild failed: a scan comes when the first is due.
    let retries: Arc<Mutex<Retries>> = Arc::default();
    let mut last_server: Option<String> = None;
    let mut last_scan: Option<Instant> = None;
    // Ticks in a row whose probe went unanswered while a rebuild waited.
    let mut unanswered = 0u32;
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
                if !lock(&retries).is_empty() {
                    unanswered += 1;
                }
                continue;
            }
        };
        if lock(&retries).is_empty() {
            unanswered = 0;
        } else {
            let answered = tokio::select! {
                _ = stop.cancelled() => return,
                answered = dependencies_answer(&settings, &db) => answered,
            };
            if !answered {
                unanswered += 1;
            } else if std::mem::take(&mut unanswered) >= 2 {
                tracing::info!(
                    "gate keeper: PostgreSQL, Redis and the broker answer again; failed rebuilds are tried now"
                );
                lock(&retries).all_due_now();
            }
        }
        let changed = last_server.as_deref() != Some(server.as_str());
        let retry_due = lock(&retries)
            .next_due()
            .is_some_and(|due| Instant::now() >= due);
        // A forced rebuild's campaign that no rebuild here is under way for
        // (it failed, or its process died): scan now, not at the full scan.
        let (hints_read_at, hints) = match metas.fenced_hints().await {
            Ok(hints) => hints,
            Err(e) => {
                tracing::debug!(error = %e, "gate keeper: hints not read");
                (0, Vec::new())
            }
        };
        let hinted = {
            let rebuilding = lock(&rebuilding);
            let retries = lock(&retries);
            hints
                .iter()
                .any(|c| !rebuilding.contains(c) && retries.is_due(c))
        };
        let due = retry_due || hinted || last_scan.is_none_or(|at| at.elapsed() >= scan_every);
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
        // Hints whose campaign is current now (rebuilt), or not a recent
        // one, are done, unless a fence added them again since the hints
        // were read (before the epochs).
        let done: Vec<CampaignId> = hints
            .into_iter()
            .filter(|c| !broken.iter().any(|(b, _)| b == c))
            .collect();
        if let Err(e) = metas.clear_hints(&done, hints_read_at).await {
            tracing::debug!(error = %e, "gate keeper: hints not cleared");
        }
        if changed && last_server.is_some() {
            tracing::warn!(
                campaigns = broken.len(),
                "Redis answers from another server now; rebuilding fenced gate states"
            );
        }
        last_server = Some(server);
        last_scan = Some(Instant::now());
        metrics.stale_campaigns.set(broken.len() as i64);
        lock(&retries).keep_only(&broken);
        for (campaign, state) in broken {
            // A campaign that failed lately waits for its turn, unless
            // Redis changed servers (a new start for every campaign).
            if !changed && !lock(&retries).is_due(&campaign) {
                continue;
            }
            if lock(&rebuilding).len() >= AT_ONCE {
                break;
            }
            if !lock(&rebuilding).insert(campaign) {
                continue;
            }
            tracing::info!(campaign.id = %campaign, ?state, "gate keeper rebuilding");
            let (settings, db, redis, metrics, rebuilding, retries) = (
                settings.clone(),
                db.clone(),
                redis.clone(),
                metrics.clone(),
                rebuilding.clone(),
                retries.clone(),
            );
            tokio::spawn(async move {
                let result = crate::rebuild::rebuild(&settings, &db, &redis, campaign, false).await;
                let mut retries = lock(&retries);
                let label = match &result {
                    Ok(Some(_)) => "rebuilt",
                    Ok(None) => "current",
                    Err(e) => {
                        tracing::warn!(campaign.id = %campaign, error = %e, "gate keeper: rebuild failed; tried again after a back-off");
                        retries.failed(campaign, scan_every);
                        "failed"
                    }
                };
                if result.is_ok() {
                    retries.succeeded(&campaign);
                }
                drop(retries);
                metrics.rebuilds.with_label_values(&[label]).inc();
                lock(&rebuilding).remove(&campaign);
            });
        }
    }
}

/// Whether PostgreSQL and the broker (the end offsets a rebuild reads)
/// answer, each within [`PROBE_WITHIN`].
async fn dependencies_answer(settings: &Settings, db: &DatabaseConnection) -> bool {
    let database = tokio::time::timeout(PROBE_WITHIN, db.ping())
        .await
        .is_ok_and(|r| r.is_ok());
    database && crate::topic::answers(&settings.kafka, PROBE_WITHIN).await
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
