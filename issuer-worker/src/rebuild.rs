//! Rebuilds a campaign's gate state (its slots: the users set, the count,
//! and the meta with the current server's epoch) from the system of record,
//! when Redis lost it or it is fenced: the meta missing (Redis restarted
//! empty), or loaded on another server (a restart that reloaded an AOF
//! whose last writes may be gone, a failover to a replica that may lag;
//! `common/lua/fence.lua`). The api never recreates gate state: while it is
//! missing or fenced, issue requests are answered 503 and take nothing.
//!
//! Two callers: the gate keeper (`keeper`), which does it on its own for
//! every such campaign, and `issuer-worker rebuild --campaign C [--force]`.
//!
//! Under the campaign's admin lock, with the campaign fenced (no slot is
//! taken meanwhile):
//! 1. wait until every take made before the loss has settled
//!    (`Settings::takes_settle_within`), so that its message has reached
//!    the broker or never will;
//! 2. read the group's committed offsets and the topic's end offsets, and
//!    record a cutoff at the end (`crate::cutoff`): a message of a take
//!    made before the rebuild that reaches the topic after this is refused
//!    as `late`, since the rebuilt gate will not count it;
//! 3. users = the campaign's rows ∪ the users of messages the worker's group
//!    has not consumed yet (from its committed offsets to the end offsets).
//!    The offsets are read *before* the rows: the worker commits an offset
//!    only after the rows below it are in PostgreSQL, so every message below
//!    the committed offsets is in the rows read afterwards, every message
//!    between them is read from the topic, and a message beyond the end that
//!    a batch persisted before the cutoff is in the rows. Read the other way
//!    round, a batch committed between the two reads is in neither set.
//!    A message an earlier cutoff makes `late` is left out: the worker
//!    dead-letters it, and its user would keep a slot with no row;
//! 4. stage those users beside the campaign's set, then install them in one
//!    atomic step (`common/lua/rebuild_install.lua`): the set and the count
//!    replaced (the slots' coupon ids dropped: a rebuilt slot has no take a
//!    withdrawal could name), `none` (`given_back`) recorded for the users
//!    whose slot it drops, and the meta loaded from PostgreSQL (stock,
//!    window, closed or open) with the epoch of the server the rebuild
//!    started on, which unfences the campaign.
//!
//! The install writes nothing unless the rebuild is still the one the
//! campaign waits for: the same server (one that restarted meanwhile would
//! get a state built on its predecessor), the campaign's rebuild token its
//! own (each rebuild writes a new one when it starts), and the meta still
//! fenced or missing. The admin lock alone does not ensure that: a Redis
//! restart wipes it, and a rebuild paused past its lease loses it, while
//! the rebuild goes on; such a rebuild used to replace the set after the
//! next one had unfenced the campaign, dropping the slots taken since.
//!
//! Where it can stop: a rebuild that dies (or fails) before the install
//! leaves the campaign fenced, its staged users deleted (or, if it died,
//! expiring with its token: `REBUILD_TTL`), and the gate keeper's next
//! attempt starts over; one
//! that dies after it has done all of it. A lost install reply leaves the
//! rebuild unsure: it reports a failure, and the next attempt finds the
//! campaign current (or rebuilds it again, harmlessly).
//!
//! A campaign an operator archived (`POST /api/v1/campaigns/{id}/archive`:
//! `campaigns.archived_at` set, its users set and slots hash deleted) is
//! rebuilt archived: the same reads, but its users are neither staged nor
//! loaded, and the count is set to their number. So a Redis restart, and
//! the gate keeper's rebuild after it, no longer undo an archive. The row is
//! read at both steps: one archived while the rebuild ran is installed
//! archived too (its staged users deleted by the install). An archive holds
//! the admin lock too, so none lands between the two reads but one made by
//! an archive whose lock ran out, whose delete is fenced on it.
//! `rebuild --force --unarchive` ([`run_unarchiving`]) loads the users back
//! whatever the mark, and clears it once they are installed, under the same
//! lock: one that fails leaves the campaign archived, as it was.
//!
//! The waiting room's keys are left as they are: reloaded from the AOF with
//! the rest, or gone with a Redis that restarted empty, in which case its
//! line is empty and waiting users join again.
//!
//! `--force` rebuilds a campaign whose state is current: it fences it first.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use common::entities::campaigns;
use common::ids::CampaignId;
use common::ids::{CouponId, UserId};
use common::redis_state::{
    CampaignMeta, CampaignMetas, DroppedSlot, EpochState, Installed, RebuildId, RecordedState,
    RedisClient, Repair, StatusRecord,
};
use common::settings::Settings;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde::Serialize;

use crate::admin_lock;
use crate::cutoff;
use crate::persist::{self, Consumed};
use crate::reconcile::row_users;
use crate::topic;

#[derive(Debug, Serialize)]
pub struct RebuildReport {
    pub campaign: CampaignId,
    /// What the state was before: `current` (forced), `stale`, `missing`.
    pub found: &'static str,
    pub rows: u64,
    /// Users of messages not consumed yet and not already rows.
    pub in_flight: u64,
    /// Users with a slot after the rebuild (for an archived campaign, the
    /// count: its users are not loaded).
    pub users: u64,
    pub closed: bool,
    /// Rebuilt archived: the count without the users set.
    pub archived: bool,
}

/// `issuer-worker rebuild`: refuses a campaign whose state is current
/// unless `force`.
pub async fn run(
    settings: &Settings,
    db: &DatabaseConnection,
    campaign: CampaignId,
    force: bool,
) -> anyhow::Result<RebuildReport> {
    let redis = RedisClient::new(&settings.redis, None)?;
    match rebuild(settings, db, &redis, campaign, force).await? {
        Some(report) => Ok(report),
        None => anyhow::bail!(
            "campaign {campaign} has current gate state in Redis; rebuild only replaces it with --force"
        ),
    }
}

/// `issuer-worker rebuild --force --unarchive`: a forced rebuild that
/// loads an archived campaign's users back and then clears its mark.
pub async fn run_unarchiving(
    settings: &Settings,
    db: &DatabaseConnection,
    campaign: CampaignId,
) -> anyhow::Result<RebuildReport> {
    let redis = RedisClient::new(&settings.redis, None)?;
    rebuild_with(settings, db, &redis, campaign, true, true)
        .await?
        .with_context(|| format!("campaign {campaign}'s forced rebuild did not run"))
}

/// Rebuilds `campaign` if its state is missing or fenced (or `force`);
/// `Ok(None)` when it is current and not forced (another keeper got there
/// first, or nothing was wrong).
pub async fn rebuild(
    settings: &Settings,
    db: &DatabaseConnection,
    redis: &RedisClient,
    campaign: CampaignId,
    force: bool,
) -> anyhow::Result<Option<RebuildReport>> {
    rebuild_with(settings, db, redis, campaign, force, false).await
}

async fn rebuild_with(
    settings: &Settings,
    db: &DatabaseConnection,
    redis: &RedisClient,
    campaign: CampaignId,
    force: bool,
    unarchive: bool,
) -> anyhow::Result<Option<RebuildReport>> {
    // An unknown campaign fails before the lock (the row is read again
    // before the load).
    campaigns::Entity::find_by_id(campaign.as_uuid())
        .one(db)
        .await?
        .with_context(|| format!("no campaign {campaign} in PostgreSQL"))?;
    let work = Box::pin(async {
        match plan(settings, db, redis, campaign, force, unarchive).await? {
            Some(plan) => install(settings, db, redis, plan).await.map(Some),
            None => Ok(None),
        }
    });
    admin_lock::holding(redis, &campaign, |_| work).await
}

/// Waits `wait` for the takes made before the loss to settle, giving up as
/// soon as Redis answers from another server than `server` (it restarted
/// again, or failed over): the load at the end would be refused there, and
/// the next rebuild (the keeper's, which noticed the change too) should not
/// wait behind this one's admin lock for the rest of the wait.
/// Reconcile waits the same way, for the same reason.
pub(crate) async fn settle(
    redis: &RedisClient,
    campaign: &CampaignId,
    server: &str,
    wait: Duration,
) -> anyhow::Result<()> {
    let until = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep_until(until.min(tokio::time::Instant::now() + Duration::from_secs(1)))
            .await;
        // A Redis that does not answer now may answer by the end: only an
        // answer from another server ends the wait early. (In Redis
        // Cluster the pool knows no server, "": the load decides.)
        if let Ok(now) = redis.server().await
            && !now.is_empty()
            && now != server
        {
            anyhow::bail!(
                "Redis changed servers while campaign {campaign}'s takes settled; it stays fenced until the gate keeper rebuilds it"
            );
        }
    }
    Ok(())
}

/// The slots the rebuild drops, each with the record its user gets: a
/// slot in the state found (what a Redis restart kept, or the current
/// state of a forced rebuild) with neither a row nor a message in the
/// topic. Such a user was answered `pending` or `queued` by a take whose
/// message never reached the broker (or reaches it past the cutoff,
/// refused as `late`); without a record `/coupons/me` kept reading
/// `pending` for the record's lifetime. The records are written by the
/// install, with the state, for the users whose slot is still the one seen
/// here (a user with a slot of another coupon since is left alone).
async fn dropped_slots(
    redis: &RedisClient,
    campaign: &CampaignId,
    users: &[String],
) -> anyhow::Result<Vec<DroppedSlot>> {
    let kept: BTreeSet<&str> = users.iter().map(String::as_str).collect();
    let at = chrono::Utc::now();
    let mut dropped = Vec::new();
    for (user, coupon) in Repair::new(redis.clone()).slots(campaign).await? {
        if kept.contains(user.as_str()) {
            continue;
        }
        let Ok(user) = UserId::parse(&user) else {
            continue;
        };
        let record = StatusRecord {
            state: RecordedState::None,
            coupon_id: coupon.as_deref().and_then(|c| CouponId::parse(c).ok()),
            outcome: Some("given_back".into()),
            at,
        };
        dropped.push(DroppedSlot {
            user,
            coupon,
            record: serde_json::to_string(&record)?,
        });
    }
    Ok(dropped)
}

/// A rebuild read and ready to install: what [`plan`] found, to be written
/// by [`install`].
#[derive(Debug)]
pub struct Plan {
    campaign: CampaignId,
    found: &'static str,
    /// This rebuild's token (`CampaignKeys::rebuild`).
    token: String,
    /// The run_id of the server the rebuild started on.
    server: String,
    rows: u64,
    in_flight: u64,
    users: Vec<String>,
    /// The row said archived when the plan read it: nothing staged.
    archived: bool,
    /// Load the users whatever the mark, and clear it once installed.
    unarchive: bool,
}

/// The rebuild's reads, under the campaign's admin lock: takes over the
/// campaign (its token), fences it, waits for the takes made before to
/// settle, records the cutoff, reads the rows and the topic, and stages the
/// users found (none for an archived campaign, unless `unarchive`: its
/// users are loaded whatever the mark, which the install then clears).
/// `Ok(None)` when the state is current and not `force`.
pub async fn plan(
    settings: &Settings,
    db: &DatabaseConnection,
    redis: &RedisClient,
    campaign: CampaignId,
    force: bool,
    unarchive: bool,
) -> anyhow::Result<Option<Plan>> {
    let (metas, repair) = (
        CampaignMetas::new(redis.clone()),
        Repair::new(redis.clone()),
    );
    // First of all: from here on a rebuild that started earlier (and lost
    // its admin lock) installs nothing, so a state read as fenced below
    // stays fenced until this rebuild installs (or a later one takes over).
    let serial = cutoff::serial(db).await?;
    let token = uuid::Uuid::now_v7().to_string();
    repair.begin_rebuild(&campaign, &token).await?;
    let (state, server) = metas.epoch_state(&campaign).await?;
    if state == EpochState::Current && !force {
        return Ok(None);
    }
    let found = match state {
        EpochState::Current => {
            metas.fence(&campaign).await?;
            tracing::warn!(campaign.id = %campaign, "campaign fenced for a forced rebuild; takes stopped");
            "current"
        }
        EpochState::Stale => "stale",
        EpochState::Missing => "missing",
    };
    let taken_before = chrono::Utc::now();
    tracing::warn!(campaign.id = %campaign, found, "rebuilding the gate state; takes wait for it");
    settle(
        redis,
        &campaign,
        &server,
        settings.takes_settle_within() + Duration::from_secs(1),
    )
    .await?;

    let from = topic::group_positions(&settings.kafka).await?;
    let to = topic::end_offsets(&settings.kafka).await?;
    // A rebuild that a later one took over records no cutoff: the later
    // one records its own, and this one's could come after it read the
    // topic. (The token check here is the common case; the serial in the
    // record is what holds when this rebuild pauses between the two.)
    anyhow::ensure!(
        repair.is_rebuilding(&campaign, &token).await?,
        "campaign {campaign}'s rebuild was taken over by a later one; it stops"
    );
    cutoff::record(
        db,
        &campaign,
        serial,
        settings.requested_before(taken_before),
        &to,
        "rebuild",
    )
    .await?;
    let rows = row_users(db, &campaign).await?;
    // A message an earlier cutoff makes `late` is dead-lettered by the
    // worker, never a row: its user is left out, as the worker will.
    let cutoffs = persist::read_cutoffs(db, &[campaign.as_uuid()]).await?;
    let pending: BTreeSet<String> = topic::read_range(&settings.kafka, &from, &to)
        .await?
        .into_iter()
        .filter(|(partition, offset, m)| {
            m.campaign_id == campaign
                && !cutoffs.is_late(&Consumed {
                    message: m,
                    partition: *partition,
                    offset: *offset,
                })
        })
        .map(|(_, _, m)| m.user_id.as_str().to_owned())
        .filter(|u| !rows.contains(u))
        .collect();
    let users: Vec<String> = rows.iter().chain(pending.iter()).cloned().collect();
    // Only this rebuild's own `unarchive` clears the mark, so a row read
    // archived now is archived at the install: its users are counted, not
    // staged.
    let archived = !unarchive && is_archived(db, &campaign).await?;
    if !archived && let Err(e) = repair.stage(&campaign, &token, &users).await {
        repair.unstage(&campaign, &token).await;
        return Err(e.into());
    }
    Ok(Some(Plan {
        campaign,
        found,
        token,
        server,
        rows: rows.len() as u64,
        in_flight: pending.len() as u64,
        users,
        archived,
        unarchive,
    }))
}

/// Clears the campaign's archive mark, once its users are loaded back.
async fn clear_archive(db: &DatabaseConnection, campaign: &CampaignId) -> anyhow::Result<()> {
    campaigns::Entity::update_many()
        .col_expr(
            campaigns::Column::ArchivedAt,
            sea_orm::sea_query::Expr::value(Option::<chrono::DateTime<chrono::Utc>>::None),
        )
        .filter(campaigns::Column::Id.eq(campaign.as_uuid()))
        .exec(db)
        .await?;
    Ok(())
}

/// Whether an operator archived the campaign (its users and slots deleted
/// from Redis).
async fn is_archived(db: &DatabaseConnection, campaign: &CampaignId) -> anyhow::Result<bool> {
    Ok(campaigns::Entity::find_by_id(campaign.as_uuid())
        .one(db)
        .await?
        .with_context(|| format!("no campaign {campaign} in PostgreSQL"))?
        .archived_at
        .is_some())
}

/// The rebuild's write: the staged users, the count, the dropped slots'
/// records and the meta from the campaign's row, in one atomic step
/// (`Repair::install`), which unfences the campaign. Refused, with nothing
/// written, when the rebuild is no longer the one the campaign waits for:
/// Redis changed servers, a later rebuild took over, or one finished first.
///
/// The row is read again just before: a close answered while the rebuild
/// waited is in it. (The install keeps a close itself too: on a fenced
/// meta close.lua wrote it there, and on a missing one its mark,
/// `lua/meta.lua`.)
pub async fn install(
    settings: &Settings,
    db: &DatabaseConnection,
    redis: &RedisClient,
    plan: Plan,
) -> anyhow::Result<RebuildReport> {
    let result = install_staged(settings, db, redis, &plan).await;
    if result.is_err() {
        // A refusal deleted the staged users already; any other failure
        // leaves them to this, or to their TTL if Redis does not answer.
        Repair::new(redis.clone())
            .unstage(&plan.campaign, &plan.token)
            .await;
    }
    result
}

async fn install_staged(
    settings: &Settings,
    db: &DatabaseConnection,
    redis: &RedisClient,
    plan: &Plan,
) -> anyhow::Result<RebuildReport> {
    let campaign = plan.campaign;
    let dropped = dropped_slots(redis, &campaign, &plan.users).await?;
    let row = campaigns::Entity::find_by_id(campaign.as_uuid())
        .one(db)
        .await?
        .with_context(|| format!("no campaign {campaign} in PostgreSQL"))?;
    let meta = CampaignMeta {
        stock: row.stock,
        starts_at: row.starts_at,
        ends_at: row.ends_at,
        closed: row.state == "closed",
        room: row.room(),
    };
    let rebuild = RebuildId {
        token: &plan.token,
        server: &plan.server,
    };
    let archived = !plan.unarchive && (plan.archived || row.archived_at.is_some());
    let installed = Repair::new(redis.clone())
        .install(
            &campaign,
            &rebuild,
            &meta,
            &dropped,
            settings.redis.status_ttl_secs,
            archived.then_some(plan.users.len() as u64),
        )
        .await?;
    let recorded = match installed {
        Installed::Done { recorded } => recorded,
        Installed::Refused(why) => {
            anyhow::bail!("campaign {campaign}'s rebuild installed nothing: {why}")
        }
    };
    if plan.unarchive {
        clear_archive(db, &campaign).await.with_context(|| {
            format!("campaign {campaign}'s users are loaded back, but its archive's mark was not cleared: run it again")
        })?;
    }
    tracing::info!(
        campaign.id = %campaign,
        rows = plan.rows,
        in_flight = plan.in_flight,
        dropped = recorded,
        archived,
        "gate state rebuilt"
    );
    Ok(RebuildReport {
        campaign,
        found: plan.found,
        rows: plan.rows,
        in_flight: plan.in_flight,
        users: plan.users.len() as u64,
        closed: meta.closed,
        archived,
    })
}
