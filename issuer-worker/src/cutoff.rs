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
//! reconcile gives it back). So each tool takes a [`serial`] as it starts,
//! before it reads anything, and [`record`] stores each cutoff with a serial
//! taken as it is recorded (from one PostgreSQL sequence: later, larger,
//! whatever the hosts' clocks). A tool whose campaign has a cutoff recorded
//! since it started refuses to record its own, and stops: another tool ran
//! beside it (one of them lost its lock), and either order of their reads
//! could make the other's view stale. The tool recorded first keeps its
//! cutoff; the later one reads it if it starts again.

use chrono::{DateTime, Utc};
use common::ids::CampaignId;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait, Value};

use crate::topic::Offsets;

/// A place in the order of repairs: a tool takes one as it starts, before
/// it reads anything; each cutoff is stored with one taken as it is
/// recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Serial(i64);

/// Takes the next [`Serial`] (`nextval('cutoff_serials')`).
pub async fn serial(db: &DatabaseConnection) -> anyhow::Result<Serial> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT nextval('cutoff_serials') AS serial",
        ))
        .await?
        .ok_or_else(|| anyhow::anyhow!("nextval returned no row"))?;
    Ok(Serial(row.try_get::<i64>("", "serial")?))
}

/// Records a cutoff for `campaign`: messages at or beyond `ends` whose
/// `requested_at` is before `requested_before` are `late`. `by` names the
/// tool (`reconcile`, `rebuild`); `started` is the serial it took as it
/// started. Fails, recording nothing, when the campaign has a cutoff
/// recorded since then (by a tool that ran beside this one).
pub async fn record(
    db: &DatabaseConnection,
    campaign: &CampaignId,
    started: Serial,
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
    // Under the row lock: a cutoff recorded since this tool started is
    // here, or is recorded after this one and refused in its turn.
    let latest = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT coalesce(max(serial), 0) AS latest FROM campaign_cutoffs WHERE campaign_id = $1",
            [campaign.as_uuid().into()],
        ))
        .await?
        .map(|row| row.try_get::<i64>("", "latest"))
        .transpose()?
        .unwrap_or(0);
    anyhow::ensure!(
        latest < started.0,
        "another reconcile or rebuild of campaign {campaign} recorded a cutoff since this {by} started; it was overtaken and stops"
    );
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO campaign_cutoffs (campaign_id, requested_before, end_offsets, recorded_by, serial) \
         VALUES ($1, $2, $3, $4, nextval('cutoff_serials'))",
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
