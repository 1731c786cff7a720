//! `coupons.campaign_id` without a foreign key; deleting a campaign that
//! has coupons is refused by a trigger on `campaigns` instead.
//!
//! The only writer of `coupons` is the worker's batch (`crate::persist`),
//! which locks each campaign of the batch (`FOR UPDATE`) and writes rows
//! only for the campaigns it found, in the same transaction: a row can never
//! name a campaign that does not exist. The foreign key checked that again
//! for every row, with a trigger query per row, and cost a quarter of the
//! drain rate (docs/PERFORMANCE.md, "The worker's drain"). What it also did,
//! refuse to delete or renumber a campaign that has coupons, the trigger
//! below keeps, at a cost paid on `campaigns`' rare deletes and never on an
//! insert. Its query runs after the campaign's row is locked, so a batch
//! that holds the lock commits first and its rows are seen.

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
ALTER TABLE coupons DROP CONSTRAINT coupons_campaign_id_fkey;

CREATE FUNCTION campaigns_keep_coupons() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM coupons WHERE campaign_id = OLD.id) THEN
        RAISE EXCEPTION 'campaign % has coupons', OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;

CREATE TRIGGER campaigns_keep_coupons
    BEFORE DELETE OR UPDATE OF id ON campaigns
    FOR EACH ROW EXECUTE FUNCTION campaigns_keep_coupons();
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TRIGGER campaigns_keep_coupons ON campaigns; \
                 DROP FUNCTION campaigns_keep_coupons(); \
                 ALTER TABLE coupons ADD CONSTRAINT coupons_campaign_id_fkey \
                 FOREIGN KEY (campaign_id) REFERENCES campaigns (id);",
            )
            .await?;
        Ok(())
    }
}
