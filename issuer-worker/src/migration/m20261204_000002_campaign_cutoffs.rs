//! Cutoffs: the points at which `reconcile --repair` or a rebuild settled a
//! campaign's takes (`issuer-worker`'s `cutoff` module). The worker refuses,
//! as `late`, a message beyond a cutoff's end offsets requested before it.

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
CREATE TABLE campaign_cutoffs (
    campaign_id      uuid        NOT NULL REFERENCES campaigns (id),
    requested_before timestamptz NOT NULL,
    end_offsets      bigint[]    NOT NULL,
    recorded_by      text        NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX campaign_cutoffs_campaign ON campaign_cutoffs (campaign_id);
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE campaign_cutoffs;")
            .await?;
        Ok(())
    }
}
