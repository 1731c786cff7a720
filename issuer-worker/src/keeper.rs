//! The gate keeper: heals a campaign's gate state after Redis lost it, with
//! no operator.
//!
//! Every `worker.keeper_interval_ms` (1 s) it asks which Redis server
//! answers (the `run_id` its connection reached) and which campaigns a
//! forced rebuild fenced (`keys::FENCED_CAMPAIGNS`). When the server
//! changed (Redis restarted, or another server took over), when a fenced
//! campaign has no rebuild under way here, and at least every
//! `worker.keeper_scan_secs` (30 s) anyway, it looks at the gate state of
//! every campaign it keeps ([`kept_campaigns`]: those on sale or still to
//! open, and the closed and ended ones of the last 30 days): one that is
//! missing (a Redis that restarted empty) or fenced (its meta's epoch names
//! another server: `common/lua/fence.lua`) is rebuilt (`rebuild::rebuild`),
//! up to [`AT_ONCE`] at once, in that order: those on sale now first, then
//! those still to open, then the sold-out, closed and ended ones. Every
//! worker takes the same ones in the same order; the campaign's admin lock
//! makes one of them rebuild it, the others find it current (so more
//! workers do not rebuild more at once).
//!
//! When a scan finds more broken than that, the next scan comes at the
//! first tick after a rebuild here ended well, not at the full scan, so the
//! rebuilds follow each other in waves. A failed rebuild's campaign waits
//! out its back-off, and for its first two failures keeps its turn
//! ([`to_start`]): a rebuild stays free for its retry instead of going to a
//! campaign further down the order. (Before, the newest went first and
//! each further wave waited for the full scan: after a restart, a sale
//! created before 47 other recent campaigns answered 503 for 78 s at the
//! defaults, two full scans and a wave, while closed campaigns were
//! rebuilt.)
//!
//! So after a Redis restart, with PostgreSQL and the broker answering, a
//! campaign on sale answers 503 (`unavailable`, nothing taken) for: the
//! tick that notices (1 s), the scan's read of every kept campaign's epoch
//! ([`READS_AT_ONCE`] round trips at a time), the rebuild's wait for the
//! takes made before the restart to settle (`takes_settle_within` + 1 s:
//! 14 s at the defaults), and the rebuild itself (reading the rows and the
//! unconsumed part of the topic); and one such wave more (a tick, a scan, a
//! rebuild) for every [`AT_ONCE`] campaigns ahead of it in the order.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ids::CampaignId;
use common::redis_state::{CampaignMetas, EpochState, RedisClient};
use common::settings::Settings;
use futures::StreamExt;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use tokio_util::sync::CancellationToken;

use crate::metrics::WorkerMetrics;

/// A closed or ended campaign created longer ago than this is left alone
/// (its gate state is rebuilt on demand with `issuer-worker rebuild`); one
/// on sale or still to open is kept whatever its age.
const RECENT_DAYS: i32 = 30;
/// The most campaigns the keeper keeps ([`kept_campaigns`]).
const KEPT_AT_MOST: usize = 10_000;
/// The most campaigns rebuilt at once (each mostly waits).
const AT_ONCE: usize = 16;
/// How soon a campaign's rebuild is tried again after it failed once;
/// doubled by each further failure, up to `keeper_scan_secs`.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// How many failures in a row a campaign keeps its turn for
/// ([`Retries::keeps_turn`]): its back-offs of 2 and 4 s.
const KEEPS_TURN_FOR: u32 = 2;
/// How many epochs a scan reads at once (one Redis connection, pipelined).
const READS_AT_ONCE: usize = 32;
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

    /// The earliest retry due of a campaign not being rebuilt, if any.
    fn next_due(&self, running: &HashSet<CampaignId>) -> Option<Instant> {
        self.0
            .iter()
            .filter(|(c, _)| !running.contains(c))
            .map(|(_, (_, due))| *due)
            .min()
    }

    /// Whether a campaign waiting out its back-off keeps its turn: a
    /// rebuild is kept free for its retry, not given to one further down
    /// the order. Only for its first [`KEEPS_TURN_FOR`] failures, so that
    /// campaigns that keep failing for a cause of their own do not hold
    /// the others up.
    fn keeps_turn(&self, campaign: &CampaignId) -> bool {
        self.0
            .get(campaign)
            .is_some_and(|(failures, _)| *failures <= KEEPS_TURN_FOR)
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
    // Whether the last scan left a broken campaign for want of a free
    // rebuild (more than `AT_ONCE` at once), and how many rebuilds here had
    // ended well (rebuilt, or found current) when it read the campaigns.
    let mut backlog = false;
    let ended_well = Arc::new(AtomicU64::new(0));
    let mut ended_well_at_scan = 0;
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
        let retry_due = {
            let running = lock(&rebuilding);
            running.len() < AT_ONCE
                && lock(&retries)
                    .next_due(&running)
                    .is_some_and(|due| Instant::now() >= due)
        };
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
        // Campaigns a full cap left waiting: scan again as soon as a
        // rebuild here has ended well, not at the next full scan. (Not
        // after a failed one: its campaign waits out its back-off, and a
        // scan now would give its place to one further down the order.)
        let backlog_due = backlog
            && ended_well.load(Ordering::Relaxed) != ended_well_at_scan
            && lock(&rebuilding).len() < AT_ONCE;
        let due = retry_due
            || hinted
            || backlog_due
            || last_scan.is_none_or(|at| at.elapsed() >= scan_every);
        if !changed && !due {
            continue;
        }
        let ended_well_before = ended_well.load(Ordering::Relaxed);
        let campaigns = match kept_campaigns(&db).await {
            Ok(campaigns) => campaigns,
            Err(e) => {
                tracing::warn!(error = %e, "gate keeper: campaigns not read");
                continue;
            }
        };
        let mut broken = Vec::new();
        let mut unread = false;
        let mut states = futures::stream::iter(campaigns)
            .map(|campaign| {
                let metas = &metas;
                async move { (campaign, metas.epoch_state(&campaign).await) }
            })
            .buffered(READS_AT_ONCE);
        while let Some((campaign, state)) = states.next().await {
            match state {
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
        // Hints whose campaign is current now (rebuilt), or not a kept
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
        ended_well_at_scan = ended_well_before;
        metrics.stale_campaigns.set(broken.len() as i64);
        lock(&retries).keep_only(&broken);
        let start = {
            let mut running = lock(&rebuilding);
            let (start, left) = to_start(&broken, &running, &lock(&retries), changed);
            backlog = left;
            running.extend(start.iter().map(|(campaign, _)| *campaign));
            start
        };
        for (campaign, state) in start {
            tracing::info!(campaign.id = %campaign, ?state, "gate keeper rebuilding");
            let (settings, db, redis, metrics, rebuilding, retries, ended_well) = (
                settings.clone(),
                db.clone(),
                redis.clone(),
                metrics.clone(),
                rebuilding.clone(),
                retries.clone(),
                ended_well.clone(),
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
                // After the rebuild is out of the running set: a scan that
                // sees the count moved also sees the free rebuild.
                if result.is_ok() {
                    ended_well.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
}

/// Which of the broken campaigns (in the keeper's order) to start rebuilding
/// now, beside those `running`, and whether one was left for want of a
/// free rebuild (the backlog: the next scan comes as soon as one ends
/// well). A campaign that failed lately waits out its back-off, unless
/// Redis changed servers (a new start for every campaign); in its first
/// back-offs it keeps its turn ([`Retries::keeps_turn`]): a rebuild stays
/// free for its retry, so the campaigns behind it do not take its place.
fn to_start(
    broken: &[(CampaignId, EpochState)],
    running: &HashSet<CampaignId>,
    retries: &Retries,
    changed: bool,
) -> (Vec<(CampaignId, EpochState)>, bool) {
    let mut start = Vec::new();
    let mut kept = 0;
    for &(campaign, state) in broken {
        if running.contains(&campaign) {
            continue;
        }
        if !changed && !retries.is_due(&campaign) {
            if retries.keeps_turn(&campaign) {
                kept += 1;
            }
            continue;
        }
        if running.len() + start.len() + kept >= AT_ONCE {
            return (start, true);
        }
        start.push((campaign, state));
    }
    (start, false)
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

/// The campaigns the keeper keeps, in the order their rebuilds start: those
/// on sale now (open, started, not ended, not sold out), then those still
/// to open (the soonest first), then the sold-out ones on sale, whatever
/// their age; then the rest created within [`RECENT_DAYS`] whose window has
/// not ended more than a day ago (closed, or ended within the day), newest
/// first. Shoppers wait on the first two: a sold-out or closed campaign
/// answers 503 for its 410 meanwhile. At most [`KEPT_AT_MOST`], the last in
/// that order left out (with a warning). (Before, a campaign on sale that
/// was created more than 30 days ago was never rebuilt: it answered 503
/// after a Redis restart until an operator ran `issuer-worker rebuild`.)
async fn kept_campaigns(db: &DatabaseConnection) -> Result<Vec<CampaignId>, sea_orm::DbErr> {
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id FROM campaigns \
             WHERE (state = 'open' AND (ends_at IS NULL OR ends_at > now())) \
                OR (created_at > now() - make_interval(days => $1) \
                    AND (ends_at IS NULL OR ends_at > now() - interval '1 day')) \
             ORDER BY \
               CASE WHEN state = 'open' AND starts_at <= now() \
                         AND (ends_at IS NULL OR ends_at > now()) \
                         AND persisted < stock THEN 0 \
                    WHEN state = 'open' AND starts_at > now() THEN 1 \
                    WHEN state = 'open' AND (ends_at IS NULL OR ends_at > now()) THEN 2 \
                    ELSE 3 END, \
               CASE WHEN state = 'open' AND starts_at > now() THEN starts_at END, \
               created_at DESC \
             LIMIT $2",
            [RECENT_DAYS.into(), (KEPT_AT_MOST as i64).into()],
        ))
        .await?;
    if rows.len() >= KEPT_AT_MOST {
        tracing::warn!(
            kept = KEPT_AT_MOST,
            "gate keeper: more campaigns to keep than it keeps; the last in its order (the oldest closed ones first) are left to `issuer-worker rebuild`: close the campaigns that are over"
        );
    }
    rows.iter()
        .map(|r| r.try_get::<uuid::Uuid>("", "id").map(CampaignId::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaigns(n: usize) -> Vec<(CampaignId, EpochState)> {
        (0..n)
            .map(|_| (CampaignId::new(), EpochState::Stale))
            .collect()
    }

    fn ids(list: &[(CampaignId, EpochState)]) -> Vec<CampaignId> {
        list.iter().map(|(c, _)| *c).collect()
    }

    #[test]
    fn the_first_in_order_start_up_to_the_cap_and_the_rest_are_a_backlog() {
        let broken = campaigns(20);
        let (start, backlog) = to_start(&broken, &HashSet::new(), &Retries::default(), true);
        assert_eq!(ids(&start), ids(&broken[..AT_ONCE]));
        assert!(backlog);
        // With 10 of them running, the next 6 start.
        let running: HashSet<CampaignId> = ids(&broken[..10]).into_iter().collect();
        let (start, backlog) = to_start(&broken, &running, &Retries::default(), false);
        assert_eq!(ids(&start), ids(&broken[10..16]));
        assert!(backlog);
        // Nothing left beside those running: no backlog.
        let running: HashSet<CampaignId> = ids(&broken[..16]).into_iter().collect();
        let (start, backlog) = to_start(&broken[..16], &running, &Retries::default(), false);
        assert!(start.is_empty());
        assert!(!backlog, "a scan that left nobody waiting set the backlog");
    }

    /// A failed rebuild frees its place while its campaign waits out its
    /// back-off: a scan then (another rebuild ended well) must not give it
    /// to one further down the order, for its first back-offs; afterwards
    /// it does, so that a campaign that keeps failing holds nobody up.
    #[test]
    fn a_campaign_in_its_first_back_offs_keeps_its_turn() {
        let broken = campaigns(20);
        let sale = broken[0].0;
        let running: HashSet<CampaignId> = ids(&broken[1..16]).into_iter().collect();
        let mut retries = Retries::default();
        retries.failed(sale, Duration::from_secs(30));
        let (start, backlog) = to_start(&broken, &running, &retries, false);
        assert!(
            start.is_empty(),
            "the sale's place went to {:?}",
            ids(&start)
        );
        assert!(backlog);
        retries.failed(sale, Duration::from_secs(30));
        let (start, _) = to_start(&broken, &running, &retries, false);
        assert!(start.is_empty(), "after two failures");
        retries.failed(sale, Duration::from_secs(30));
        let (start, _) = to_start(&broken, &running, &retries, false);
        assert_eq!(ids(&start), [broken[16].0], "after three failures");
        // Redis changed servers: a new start for every campaign, the sale first.
        let (start, _) = to_start(&broken, &HashSet::new(), &retries, true);
        assert_eq!(start[0].0, sale);
        // Its back-off over, it goes first.
        retries.all_due_now();
        let (start, _) = to_start(&broken, &running, &retries, false);
        assert_eq!(ids(&start), [sale]);
    }

    /// A retry under way is no reason to scan again at every tick.
    #[test]
    fn a_retry_under_way_is_not_due() {
        let sale = CampaignId::new();
        let mut retries = Retries::default();
        retries.failed(sale, Duration::from_secs(30));
        retries.all_due_now();
        assert!(retries.next_due(&HashSet::new()).is_some());
        assert_eq!(retries.next_due(&HashSet::from([sale])), None);
    }
}
