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
//!    round, a batch committed between the two reads is in neither set;
//! 4. record `none` (`given_back`) for the users of the state found whose
//!    slot is not in that set (`record_dropped`), then
//!    write the set and the count (the slots' coupon ids are dropped: a
//!    rebuilt slot has no take a withdrawal could name), then the meta from
//!    PostgreSQL (stock, window, closed or open) with the epoch of the
//!    server the rebuild started on: loaded only if that server still
//!    answers (one that restarted meanwhile would get a state built on its
//!    predecessor), and that unfences the campaign.
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
    CampaignMeta, CampaignMetas, EpochState, RecordedState, RedisClient, Repair, StatusRecord,
    StatusRecords,
};
use common::settings::Settings;
use sea_orm::{DatabaseConnection, EntityTrait};
use serde::Serialize;

use crate::admin_lock;
use crate::cutoff;
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
    /// Users with a slot after the rebuild.
    pub users: u64,
    pub closed: bool,
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
    // An unknown campaign fails before the lock (the row is read again
    // before the load).
    campaigns::Entity::find_by_id(campaign.as_uuid())
        .one(db)
        .await?
        .with_context(|| format!("no campaign {campaign} in PostgreSQL"))?;
    let lock = admin_lock::acquire(redis, &campaign).await?;
    let result = rebuild_locked(settings, db, redis, campaign, force).await;
    // Released on every path: a rebuild that failed (a connection a Redis
    // restart broke) must not keep the next attempt waiting for the lease.
    // If the release fails too, the lease (30 s) bounds the wait.
    if let Err(e) = lock.release().await {
        tracing::warn!(campaign.id = %campaign, error = %e, "admin lock not released; its lease ends it");
    }
    result
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

/// Records `none` (outcome `given_back`) for every user whose slot the
/// rebuild drops: a slot in the state found (what a Redis restart kept, or
/// the current state of a forced rebuild) with neither a row nor a message
/// in the topic. Such a user was answered `pending` or `queued` by a take
/// whose message never reached the broker (or reaches it past the cutoff,
/// refused as `late`); without this record `/coupons/me` kept reading
/// `pending` for the record's lifetime. Written before the set is
/// replaced, so a rebuild that fails here finds the same users next time;
/// a user with a slot of another coupon is left alone (`record_status.lua`).
async fn record_dropped(
    settings: &Settings,
    redis: &RedisClient,
    campaign: &CampaignId,
    users: &[String],
) -> anyhow::Result<u64> {
    let kept: BTreeSet<&str> = users.iter().map(String::as_str).collect();
    let status = StatusRecords::new(redis.clone(), settings.redis.status_ttl_secs);
    let mut dropped = 0;
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
            at: chrono::Utc::now(),
        };
        status.record(campaign, &user, &record).await?;
        dropped += 1;
    }
    Ok(dropped)
}

/// The rebuild proper, under the campaign's admin lock.
async fn rebuild_locked(
    settings: &Settings,
    db: &DatabaseConnection,
    redis: &RedisClient,
    campaign: CampaignId,
    force: bool,
) -> anyhow::Result<Option<RebuildReport>> {
    let (metas, repair) = (
        CampaignMetas::new(redis.clone()),
        Repair::new(redis.clone()),
    );
    let (state, server) = metas.epoch_state(&campaign).await?;
    let found = match state {
        EpochState::Current if !force => return Ok(None),
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
    cutoff::record(
        db,
        &campaign,
        settings.requested_before(taken_before),
        &to,
        "rebuild",
    )
    .await?;
    let rows = row_users(db, &campaign).await?;
    let pending: BTreeSet<String> = topic::read_range(&settings.kafka, &from, &to)
        .await?
        .into_iter()
        .filter(|m| m.campaign_id == campaign)
        .map(|m| m.user_id.as_str().to_owned())
        .filter(|u| !rows.contains(u))
        .collect();
    let users: Vec<String> = rows.iter().chain(pending.iter()).cloned().collect();

    let dropped = record_dropped(settings, redis, &campaign, &users).await?;
    repair.replace(&campaign, &users).await?;
    // The row again, just before the load: a close answered while the
    // rebuild waited is in it. (On a fenced meta the close is also kept by
    // the load itself, load_meta.lua; on a missing one, close.lua writes
    // nothing and only the row has it.)
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
    let loaded = metas.load_on(&campaign, &meta, &server).await?;
    anyhow::ensure!(
        loaded,
        "Redis changed servers while campaign {campaign} was rebuilt; it stays fenced for the next rebuild"
    );
    tracing::info!(
        campaign.id = %campaign,
        rows = rows.len(),
        in_flight = pending.len(),
        dropped,
        "gate state rebuilt"
    );
    Ok(Some(RebuildReport {
        campaign,
        found,
        rows: rows.len() as u64,
        in_flight: pending.len() as u64,
        users: users.len() as u64,
        closed: meta.closed,
    }))
}
