//! A campaign's archive: when an operator had the gate's users and slots of
//! a closed campaign deleted from Redis (`POST /api/v1/campaigns/{id}/archive`).
//! A rebuild (the gate keeper's after a Redis restart among them) reads it
//! and loads the campaign's count and meta without its users, so an archive
//! outlives the Redis state it freed.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE campaigns ADD COLUMN archived_at timestamptz;")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE campaigns DROP COLUMN archived_at;")
            .await?;
        Ok(())
    }
}
