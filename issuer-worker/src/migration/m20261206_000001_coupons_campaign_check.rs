//! `coupons.campaign_id` without a foreign key; deleting a campaign that
//! has coupons is refused by a trigger on `campaigns` instead.
//!
//! The only writer of `coupons` is the worker's batch (`crate::persist`),
//! which locks each campaign of the batch (`FOR UPDATE`) and writes rows
//! only for the campaigns it found, in the same transaction: a row can never
//! name a campaign that does not exist. The foreign key checked that again
//! for every row, with a trigger query per row, and cost a quarter of the
//! drain rate (docs/PERFORMANCE.md, "The worker's drain"). What it also did,
//! refuse to delete, renumber or truncate away a campaign that has
//! coupons, the triggers below keep, at a cost paid on `campaigns`' rare
//! deletes and never on an insert. The row trigger's query runs after the
//! campaign's row is locked, so a batch that holds the lock commits first
//! and its rows are seen. A writer of `coupons` added later must do what the
//! batch does: lock the campaign's row and update it (`persisted`) in the
//! same transaction, or a delete under `REPEATABLE READ` could miss its rows.
//!
//! The foreign key is found by its tables, not its name, so a database
//! whose constraint was renamed or already dropped migrates too.

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
DO $$
DECLARE
    fk name;
BEGIN
    FOR fk IN
        SELECT conname FROM pg_constraint
        WHERE conrelid = 'coupons'::regclass AND confrelid = 'campaigns'::regclass
          AND contype = 'f'
    LOOP
        EXECUTE format('ALTER TABLE coupons DROP CONSTRAINT %I', fk);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION campaigns_keep_coupons() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        IF EXISTS (SELECT 1 FROM coupons) THEN
            RAISE EXCEPTION 'campaigns has coupons'
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.id = OLD.id THEN
        RETURN NEW;
    END IF;
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

CREATE TRIGGER campaigns_keep_coupons_on_truncate
    BEFORE TRUNCATE ON campaigns
    FOR EACH STATEMENT EXECUTE FUNCTION campaigns_keep_coupons();
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TRIGGER campaigns_keep_coupons_on_truncate ON campaigns; \
                 DROP TRIGGER campaigns_keep_coupons ON campaigns; \
                 DROP FUNCTION campaigns_keep_coupons(); \
                 ALTER TABLE coupons ADD CONSTRAINT coupons_campaign_id_fkey \
                 FOREIGN KEY (campaign_id) REFERENCES campaigns (id) NOT VALID; \
                 ALTER TABLE coupons VALIDATE CONSTRAINT coupons_campaign_id_fkey;",
            )
            .await?;
        Ok(())
    }
}
