//! Recording a campaign's cutoff: the point after which a message of a take
//! that `reconcile --repair` or a rebuild settled without it must not be
//! persisted (`crate::persist::Cutoff` says how the worker applies it).
//!
//! Why a cutoff is needed: `reconcile` gives back a slot whose message it
//! did not find, and a rebuild leaves out a take whose message it did not
//! find, once `Settings::takes_settle_within` has passed since those takes.
//! A message whose delivery timed out (its user told `pending`) may still
//! be appended later (a paused broker, a follower that commits it late);
//! persisted, it would be a coupon for a slot given back or never counted,
//! and the stock guard would turn away someone else, perhaps a user told
//! `accepted`. With the cutoff, the worker refuses it as `late` instead.
//!
//! The order that makes it hold: wait `takes_settle_within`, read the
//! topic's end offsets, record the cutoff *under the campaign's row lock*
//! (the lock every worker batch takes), and only then read the rows. A
//! batch that persisted a message beyond the offsets committed before the
//! cutoff, so its rows are read; every batch after sees the cutoff.

use chrono::{DateTime, Utc};
use common::ids::CampaignId;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait, Value};

use crate::topic::Offsets;

/// Records a cutoff for `campaign`: messages at or beyond `ends` whose
/// `requested_at` is before `requested_before` are `late`. `by` names the
/// tool (`reconcile`, `rebuild`).
pub async fn record(
    db: &DatabaseConnection,
    campaign: &CampaignId,
    requested_before: DateTime<Utc>,
    ends: &Offsets,
    by: &str,
) -> anyhow::Result<()> {
    // Indexed by partition; a gap (a partition the metadata did not list)
    // gets 0, which refuses everything old on it: the safe side.
    let size = ends.keys().max().map_or(0, |p| *p as usize + 1);
    let mut end_offsets = vec![0_i64; size];
    for (p, end) in ends {
        end_offsets[*p as usize] = *end;
    }
    let txn = db.begin().await?;
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT 1 FROM campaigns WHERE id = $1 FOR UPDATE",
        [campaign.as_uuid().into()],
    ))
    .await?;
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO campaign_cutoffs (campaign_id, requested_before, end_offsets, recorded_by) \
         VALUES ($1, $2, $3, $4)",
        [
            campaign.as_uuid().into(),
            requested_before.into(),
            Value::from(end_offsets),
            by.into(),
        ],
    ))
    .await?;
    txn.commit().await?;
    tracing::info!(campaign.id = %campaign, %requested_before, by, "cutoff recorded: older messages beyond the topic's end are late");
    Ok(())
}
