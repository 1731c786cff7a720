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
//!
//! A cutoff recorded late is as harmful as none: a rebuild or reconcile
//! that lost its admin lock (paused past the lease) and then records its
//! cutoff after a later rebuild read the cutoffs makes `late` a message
//! that rebuild counted (its slot then has no row: `pending` until a
//! reconcile gives it back). So each tool takes a [`ticket`] as it starts
//! (from one PostgreSQL sequence: later starts, larger tickets, whatever
//! the hosts' clocks), and [`record`] refuses a cutoff whose ticket is
//! older than one the campaign already has: that tool was overtaken, and
//! stops.

use chrono::{DateTime, Utc};
use common::ids::CampaignId;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait, Value};

use crate::topic::Offsets;

/// A tool's place in the order of repairs: taken as it starts, before it
/// reads anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(i64);

/// Takes the next [`Ticket`] (`nextval('cutoff_tickets')`).
pub async fn ticket(db: &DatabaseConnection) -> anyhow::Result<Ticket> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT nextval('cutoff_tickets') AS ticket",
        ))
        .await?
        .ok_or_else(|| anyhow::anyhow!("nextval returned no row"))?;
    Ok(Ticket(row.try_get::<i64>("", "ticket")?))
}

/// Records a cutoff for `campaign`: messages at or beyond `ends` whose
/// `requested_at` is before `requested_before` are `late`. `by` names the
/// tool (`reconcile`, `rebuild`). Fails, recording nothing, when the
/// campaign has a cutoff of a later `ticket` (a tool that started after
/// this one and may have read the cutoffs already).
pub async fn record(
    db: &DatabaseConnection,
    campaign: &CampaignId,
    ticket: Ticket,
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
    // Under the row lock: a later tool's cutoff is either here, or is
    // recorded after this one (and reads it).
    let latest = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT coalesce(max(ticket), 0) AS latest FROM campaign_cutoffs WHERE campaign_id = $1",
            [campaign.as_uuid().into()],
        ))
        .await?
        .map(|row| row.try_get::<i64>("", "latest"))
        .transpose()?
        .unwrap_or(0);
    anyhow::ensure!(
        latest <= ticket.0,
        "a later reconcile or rebuild of campaign {campaign} recorded its cutoff first; this {by} was overtaken and stops"
    );
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO campaign_cutoffs (campaign_id, requested_before, end_offsets, recorded_by, ticket) \
         VALUES ($1, $2, $3, $4, $5)",
        [
            campaign.as_uuid().into(),
            requested_before.into(),
            Value::from(end_offsets),
            by.into(),
            ticket.0.into(),
        ],
    ))
    .await?;
    txn.commit().await?;
    tracing::info!(campaign.id = %campaign, %requested_before, by, "cutoff recorded: older messages beyond the topic's end are late");
    Ok(())
}
