//! `issuer-worker reconcile --campaign C [--repair]`: compares a campaign's
//! gate with its rows once every message that could still land has landed.
//!
//! 1. Take the campaign's admin lock (one reconcile or rebuild at a time).
//! 2. Snapshot the gate's slots at t0: each user with the coupon id its slot
//!    names.
//! 3. Wait until every take of the snapshot has settled
//!    (`Settings::takes_settle_within`: the gate call, the api's bound
//!    between the take and produce, the delivery timeout): a message for a
//!    user of the snapshot has by then reached the broker or never will. The
//!    api enforces the middle bound (it gives a slot back rather than
//!    produce late), so this is a bound, not a guess.
//! 4. Read the topic's end offsets; with `--repair`, record a cutoff there
//!    (`crate::cutoff`: a message of the snapshot's takes that reaches the
//!    topic after this is refused as `late`, so a slot given back never gets
//!    a row later); wait until the worker's group has consumed past them.
//! 5. A user of the snapshot without a row is a *leaked slot* (a crash
//!    between gate and produce, a message the stock guard turned away, a
//!    lost delivery); a row whose user is not in the gate once the rows
//!    are read is a *phantom* (the gate lost state and was rebuilt wrongly).
//!    Users whose slot was taken after t0 (an open campaign keeps issuing,
//!    an async queue keeps draining) are neither: the gate is read again for
//!    phantoms, and the counter and the set in one transaction for drift.
//!
//! `--repair` gives back each leaked slot, so that an open campaign can
//! hand it out again, only if it is still the slot of the snapshot (the
//! same coupon id): a slot given back meanwhile (its broker down) and taken
//! again is another slot, whose message may still be on its way, records those users as `none` for
//! `/coupons/me`, gives phantoms their slot back (a row is a coupon: its user
//! must read `duplicate`, and the count must include it), and sets the
//! counter to the set's size.
//!
//! A campaign an operator archived (`campaigns.archived_at`: its users set
//! and slots hash deleted from Redis) is refused: every row would read as a
//! phantom, and `--repair` would load every user back.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use common::entities::campaigns;
use common::ids::{CampaignId, CouponId, UserId};
use common::redis_state::{
    AdminHold, CampaignMetas, EpochState, RecordedState, RedisClient, Repair, StatusRecord,
    StatusRecords,
};
use common::settings::Settings;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, Statement};
use serde::Serialize;

use crate::admin_lock;
use crate::cutoff;
use crate::topic;

#[derive(Debug, Serialize)]
pub struct ReconcileReport {
    pub campaign: CampaignId,
    pub gate_users: u64,
    pub rows: u64,
    pub leaked: u64,
    pub leaked_examples: Vec<String>,
    pub phantoms: u64,
    pub phantom_examples: Vec<String>,
    /// Counter minus set size, as found.
    pub count_drift: i64,
    pub repaired: bool,
    /// Leaked slots given back by `--repair`.
    pub given_back: u64,
    /// Phantoms given their slot back by `--repair`.
    pub restored: u64,
}

/// The users with a row in the campaign.
pub async fn row_users(
    db: &DatabaseConnection,
    campaign: &CampaignId,
) -> anyhow::Result<BTreeSet<String>> {
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT user_id FROM coupons WHERE campaign_id = $1",
            [campaign.as_uuid().into()],
        ))
        .await?;
    rows.iter()
        .map(|r| Ok(r.try_get::<String>("", "user_id")?))
        .collect()
}

pub async fn run(
    settings: &Settings,
    db: &DatabaseConnection,
    campaign: CampaignId,
    repairing: bool,
    patience: Duration,
) -> anyhow::Result<ReconcileReport> {
    let redis = RedisClient::new(&settings.redis, None)?;
    admin_lock::holding(&redis, &campaign, |hold| {
        Box::pin(reconcile_locked(
            settings, db, &redis, campaign, repairing, patience, hold,
        ))
    })
    .await
}

/// The reconcile proper, under the campaign's admin lock: its repairs of
/// the slots are fenced on `hold`, so one that lost the lock (paused past
/// its lease) writes nothing and fails.
async fn reconcile_locked(
    settings: &Settings,
    db: &DatabaseConnection,
    redis: &RedisClient,
    campaign: CampaignId,
    repairing: bool,
    patience: Duration,
    hold: AdminHold,
) -> anyhow::Result<ReconcileReport> {
    // Read once the lock is held, which an archive holds too: no archive
    // deletes the users set while this reads it, and one done before is
    // seen here. (A repair of this reconcile's that lost the lock to a
    // pause is fenced: nothing written.)
    let row = campaigns::Entity::find_by_id(campaign.as_uuid())
        .one(db)
        .await?
        .with_context(|| format!("no campaign {campaign} in PostgreSQL"))?;
    if let Some(at) = row.archived_at {
        anyhow::bail!(
            "campaign {campaign} was archived at {at}: its gate holds no users to compare with its rows (issuer-worker rebuild --campaign {campaign} --force --unarchive loads them back)"
        );
    }
    let repair = Repair::new(redis.clone());
    let status = StatusRecords::new(redis.clone(), settings.redis.status_ttl_secs);
    // Before anything is read: a rebuild or reconcile that starts after
    // this one (this one paused past its lease) overtakes its cutoff.
    let serial = cutoff::serial(db).await?;
    let (epoch, server) = CampaignMetas::new(redis.clone())
        .epoch_state(&campaign)
        .await?;
    if epoch != EpochState::Current {
        anyhow::bail!(
            "campaign {campaign}'s gate state is {epoch:?}: the gate keeper rebuilds it (or issuer-worker rebuild); reconcile it afterwards"
        );
    }

    let seen: std::collections::BTreeMap<String, Option<String>> =
        repair.slots(&campaign).await?.into_iter().collect();
    let taken_before = Utc::now();
    let snapshot: BTreeSet<String> = seen.keys().cloned().collect();
    tracing::info!(campaign.id = %campaign, users = snapshot.len(), "gate snapshot taken; waiting for its takes to settle");
    // Given up as soon as Redis answers from another server: the campaign
    // is fenced there, and the gate keeper's rebuild must not wait behind
    // this reconcile's admin lock.
    crate::rebuild::settle(
        redis,
        &campaign,
        &server,
        settings.takes_settle_within() + Duration::from_secs(1),
    )
    .await?;
    let ends = topic::end_offsets(&settings.kafka).await?;
    if repairing {
        // Before the rows are read: a slot about to be given back must not
        // get its row later (crate::cutoff).
        cutoff::record(
            db,
            &campaign,
            serial,
            settings.requested_before(taken_before),
            &ends,
            "reconcile",
        )
        .await?;
    }
    topic::wait_for_group(&settings.kafka, &ends, patience).await?;

    let rows = row_users(db, &campaign).await?;
    let leaked: Vec<&String> = snapshot.difference(&rows).collect();
    let now: BTreeSet<String> = repair.users(&campaign).await?.into_iter().collect();
    let phantoms: Vec<&String> = rows.difference(&now).collect();
    let count_drift = repair.count_drift(&campaign).await?;

    let mut given_back = 0;
    let mut restored = 0;
    if repairing {
        restored = repair.restore(&campaign, &phantoms, &hold).await?;
        if restored > 0 {
            tracing::warn!(campaign.id = %campaign, restored, "phantom rows given their slot back");
        }
        for user in &leaked {
            let user = UserId::parse(user).context("a gate member is not a valid user id")?;
            let coupon = seen.get(user.as_str()).cloned().flatten();
            if repair
                .give_back_if(&campaign, user.as_str(), coupon.as_deref(), &hold)
                .await?
            {
                given_back += 1;
                let record = StatusRecord {
                    state: RecordedState::None,
                    coupon_id: coupon.as_deref().and_then(|c| CouponId::parse(c).ok()),
                    outcome: Some("given_back".into()),
                    at: Utc::now(),
                };
                status.record(&campaign, &user, &record).await?;
            }
        }
        let drift = repair.fix_count(&campaign, &hold).await?;
        if drift != 0 {
            tracing::warn!(campaign.id = %campaign, drift, "gate counter corrected to the set's size");
        }
    }

    let examples = |v: &[&String]| v.iter().take(5).map(|s| (*s).clone()).collect();
    Ok(ReconcileReport {
        campaign,
        gate_users: snapshot.len() as u64,
        rows: rows.len() as u64,
        leaked: leaked.len() as u64,
        leaked_examples: examples(&leaked),
        phantoms: phantoms.len() as u64,
        phantom_examples: examples(&phantoms),
        count_drift,
        repaired: repairing,
        given_back,
        restored,
    })
}
