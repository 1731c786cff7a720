//! Schema migrations of the system of record, applied by `issuer-worker migrate`.

use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use sea_orm_migration::prelude::*;

mod m20261123_000001_create_schema;
mod m20261202_000001_waiting_room;
mod m20261204_000001_parked_letters;
mod m20261204_000002_campaign_cutoffs;
mod m20261205_000001_cutoff_serials;
mod m20261206_000001_coupons_campaign_check;
mod m20261207_000001_campaign_archive;

#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_create_schema::Migration),
            Box::new(m20261202_000001_waiting_room::Migration),
            Box::new(m20261204_000001_parked_letters::Migration),
            Box::new(m20261204_000002_campaign_cutoffs::Migration),
            Box::new(m20261205_000001_cutoff_serials::Migration),
            Box::new(m20261206_000001_coupons_campaign_check::Migration),
            Box::new(m20261207_000001_campaign_archive::Migration),
        ]
    }
}

/// Arbitrary key of the advisory lock that serialises concurrent `migrate`
/// runs (several test processes, or replicas starting together).
const MIGRATION_LOCK_KEY: i64 = 0x636f_7570_6f6e;

/// Grants `role` what the services need and no more (`database.service_role`):
/// rows read and written, never the schema changed.
pub async fn grant_service_role(db: &DatabaseConnection, role: &str) -> Result<(), DbErr> {
    let role = quote_ident(role);
    for statement in [
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"),
        format!("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"),
        format!("REVOKE CREATE ON SCHEMA public FROM {role}"),
    ] {
        db.execute_unprepared(&statement).await?;
    }
    Ok(())
}

/// A PostgreSQL identifier, quoted.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Applies every pending migration, one runner at a time.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    let txn = db.begin().await?;
    txn.execute_unprepared(&format!(
        "SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
    ))
    .await?;
    Migrator::up(&txn, None).await?;
    txn.commit().await
}
