//! Cutoff tickets: each `reconcile --repair` and rebuild takes a ticket
//! from one sequence as it starts, and records its cutoff with it; a cutoff
//! whose ticket is older than one already recorded for the campaign is
//! refused (`issuer-worker`'s `cutoff` module). Cutoffs recorded before
//! have no ticket, which counts as older than every ticket.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                r#"
CREATE SEQUENCE cutoff_tickets;
ALTER TABLE campaign_cutoffs ADD COLUMN ticket bigint;
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE campaign_cutoffs DROP COLUMN ticket; DROP SEQUENCE cutoff_tickets;",
            )
            .await?;
        Ok(())
    }
}
