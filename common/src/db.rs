//! The PostgreSQL connection (sea-orm over sqlx).

use std::time::Duration;

use anyhow::Context;
use sea_orm::{ConnectOptions, Database, DatabaseConnection};
use secrecy::ExposeSecret;

use crate::settings::DatabaseSettings;

/// Opens a pool. Connections are made lazily and retried, so a database that
/// is down at start-up delays the first query instead of the process.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(settings.url.expose_secret().to_owned());
    options
        .max_connections(settings.max_connections)
        .min_connections(0)
        .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .acquire_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .connect_lazy(true)
        .sqlx_logging(false);
    if let Some(ca) = settings.ssl_root_cert.clone() {
        options.map_sqlx_postgres_opts(move |o| o.ssl_root_cert(&ca));
    }
    Database::connect(options)
        .await
        .context("configuring the PostgreSQL pool")
}
