//! Taken vs persisted, as two gauges: the slots taken (the gate's counts)
//! and the campaigns' `persisted` columns, each summed over recent campaigns. Their
//! gap is what the worker still owes; a gap that does not close while the
//! consumer lag is zero means leaked slots (docs/RUNBOOK.md). Summed, so the
//! labels stay bounded: per-campaign figures come from the admin API.

use std::time::Duration;

use common::ids::CampaignId;
use common::redis_state::Gate;
use prometheus::IntGauge;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

/// Campaigns created within this window count.
const WINDOW_DAYS: i32 = 7;
const EVERY: Duration = Duration::from_secs(15);

pub async fn run(db: DatabaseConnection, gate: Gate, taken: IntGauge, persisted: IntGauge) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        match sample(&db, &gate).await {
            Ok((t, p)) => {
                taken.set(t);
                persisted.set(p);
            }
            Err(e) => tracing::debug!(error = %e, "taken/persisted gauges not refreshed"),
        }
    }
}

async fn sample(db: &DatabaseConnection, gate: &Gate) -> anyhow::Result<(i64, i64)> {
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id, persisted FROM campaigns \
             WHERE created_at > now() - make_interval(days => $1) ORDER BY created_at DESC LIMIT 1000",
            [WINDOW_DAYS.into()],
        ))
        .await?;
    let (mut taken, mut persisted) = (0, 0);
    for row in rows {
        let id: uuid::Uuid = row.try_get("", "id")?;
        persisted += row.try_get::<i64>("", "persisted")?;
        taken += gate.taken(&CampaignId::from(id)).await?.unwrap_or(0);
    }
    Ok((taken, persisted))
}
