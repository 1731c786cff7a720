//! `campaigns` and `coupons`. The constraints are the last fence whatever the
//! api's strategy: one coupon per (campaign, user), never more rows than stock.

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
CREATE TABLE campaigns (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    stock       bigint      NOT NULL CHECK (stock >= 0),
    persisted   bigint      NOT NULL DEFAULT 0 CHECK (persisted >= 0 AND persisted <= stock),
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz CHECK (ends_at IS NULL OR ends_at > starts_at),
    state       text        NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closed')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE coupons (
    id           uuid        PRIMARY KEY,
    campaign_id  uuid        NOT NULL REFERENCES campaigns (id),
    user_id      text        NOT NULL,
    issued_at    timestamptz NOT NULL,
    CONSTRAINT coupons_campaign_user_key UNIQUE (campaign_id, user_id)
);
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE coupons; DROP TABLE campaigns;")
            .await?;
        Ok(())
    }
}
