//! Cutoff serials: each `reconcile --repair` and rebuild takes a serial
//! from one sequence as it starts, and each cutoff is stored with one taken
//! as it is recorded; a tool whose campaign has a cutoff recorded since it
//! started records none (`issuer-worker`'s `cutoff` module). Cutoffs
//! recorded before have no serial, which counts as older than every one.

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
CREATE SEQUENCE cutoff_serials;
ALTER TABLE campaign_cutoffs ADD COLUMN serial bigint;
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE campaign_cutoffs DROP COLUMN serial; DROP SEQUENCE cutoff_serials;",
            )
            .await?;
        Ok(())
    }
}
