//! `issuer-worker rebuild --campaign C [--force]`: reloads a campaign's gate
//! state after Redis lost it. The api never recreates gate state (it answers
//! 503 while the meta is missing); this is the only writer of it besides
//! campaign creation.
//!
//! Under the campaign's admin lock, and with the meta absent (so no slot is
//! taken meanwhile):
//! 1. wait until every take made before the loss has settled
//!    (`Settings::takes_settle_within`), so that its message has reached
//!    the broker or never will;
//! 2. users = the campaign's rows ∪ the users of messages the worker's group
//!    has not consumed yet (from its committed offsets to the end of the
//!    topic). The offsets are read *before* the rows: the worker commits an
//!    offset only after the rows below it are in PostgreSQL, so every message
//!    below the offsets read is in the rows read afterwards, and every
//!    message at or above them is read from the topic. Read the other way
//!    round, a batch committed between the two reads is in neither set;
//! 3. write the set and the counter, then the meta from PostgreSQL (stock,
//!    window, closed or open), which reopens the gate.
//!
//! `--force` rebuilds a campaign whose meta is present: it first deletes the
//! meta (stopping takes) and then proceeds as above.

use std::collections::BTreeSet;

use anyhow::Context;
use common::entities::campaigns;
use common::ids::CampaignId;
use common::redis_state::{CampaignMeta, CampaignMetas, RedisClient, Repair};
use common::settings::Settings;
use sea_orm::{DatabaseConnection, EntityTrait};
use serde::Serialize;

use crate::admin_lock;
use crate::reconcile::row_users;
use crate::topic;

#[derive(Debug, Serialize)]
pub struct RebuildReport {
    pub campaign: CampaignId,
    pub rows: u64,
    /// Users of messages not consumed yet and not already rows.
    pub in_flight: u64,
    /// Users with a slot after the rebuild.
    pub users: u64,
    pub closed: bool,
}

pub async fn run(
    settings: &Settings,
    db: &DatabaseConnection,
    campaign: CampaignId,
    force: bool,
) -> anyhow::Result<RebuildReport> {
    let row = campaigns::Entity::find_by_id(campaign.as_uuid())
        .one(db)
        .await?
        .with_context(|| format!("no campaign {campaign} in PostgreSQL"))?;
    let redis = RedisClient::new(&settings.redis, None)?;
    let (metas, repair) = (
        CampaignMetas::new(redis.clone()),
        Repair::new(redis.clone()),
    );
    let lock = admin_lock::acquire(&redis, &campaign).await?;
    if metas.is_loaded(&campaign).await? {
        anyhow::ensure!(
            force,
            "campaign {campaign} has gate state in Redis; rebuild only replaces it with --force"
        );
        metas.unload(&campaign).await?;
        tracing::warn!(campaign.id = %campaign, "meta deleted for a forced rebuild; takes stopped");
    }
    tokio::time::sleep(settings.takes_settle_within() + std::time::Duration::from_secs(1)).await;

    let from = topic::group_positions(&settings.kafka).await?;
    let rows = row_users(db, &campaign).await?;
    let to = topic::end_offsets(&settings.kafka).await?;
    let pending: BTreeSet<String> = topic::read_range(&settings.kafka, &from, &to)
        .await?
        .into_iter()
        .filter(|m| m.campaign_id == campaign)
        .map(|m| m.user_id.as_str().to_owned())
        .filter(|u| !rows.contains(u))
        .collect();
    let users: Vec<String> = rows.iter().chain(pending.iter()).cloned().collect();

    repair.replace(&campaign, &users).await?;
    let meta = CampaignMeta {
        stock: row.stock,
        starts_at: row.starts_at,
        ends_at: row.ends_at,
        closed: row.state == "closed",
        room: row.room(),
    };
    metas.load(&campaign, &meta).await?;
    lock.release().await?;
    tracing::info!(
        campaign.id = %campaign,
        rows = rows.len(),
        in_flight = pending.len(),
        "gate state rebuilt"
    );
    Ok(RebuildReport {
        campaign,
        rows: rows.len() as u64,
        in_flight: pending.len() as u64,
        users: users.len() as u64,
        closed: meta.closed,
    })
}
