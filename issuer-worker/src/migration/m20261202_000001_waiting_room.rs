//! A campaign's waiting room: its rate, its admission window and the seed
//! of the shuffle of early joiners, recorded with the campaign (so the order
//! can be audited afterwards, and a rebuilt gate gets its room back).

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
ALTER TABLE campaigns
    ADD COLUMN room_admit_per_second integer CHECK (room_admit_per_second > 0),
    ADD COLUMN room_admission_ttl_secs integer CHECK (room_admission_ttl_secs > 0),
    ADD COLUMN room_shuffle_seed bigint,
    ADD CONSTRAINT campaigns_room_complete CHECK (
        (room_admit_per_second IS NULL) = (room_admission_ttl_secs IS NULL)
        AND (room_admit_per_second IS NULL) = (room_shuffle_seed IS NULL)
    );
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE campaigns DROP CONSTRAINT campaigns_room_complete, \
                 DROP COLUMN room_admit_per_second, DROP COLUMN room_admission_ttl_secs, \
                 DROP COLUMN room_shuffle_seed;",
            )
            .await?;
        Ok(())
    }
}
