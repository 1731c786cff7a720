//! The PostgreSQL connection (sea-orm over sqlx).

use std::time::Duration;

use anyhow::Context;
use sea_orm::{ConnectOptions, Database, DatabaseConnection};
use secrecy::ExposeSecret;

use crate::settings::DatabaseSettings;

/// Opens a pool. Connections are made lazily and retried, so a database that
/// is down at start-up delays the first query instead of the process.
///
/// Every session runs with `statement_timeout` and
/// `idle_in_transaction_session_timeout` set to `longest` on the server:
/// the client-side bounds stop waiting, and these make PostgreSQL stop
/// working on (and release the locks of) what nobody waits for any more.
pub async fn connect(
    settings: &DatabaseSettings,
    longest: Duration,
) -> anyhow::Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(settings.url.expose_secret().to_owned());
    options
        .max_connections(settings.max_connections)
        .min_connections(0)
        .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .acquire_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .connect_lazy(true)
        .sqlx_logging(false);
    let ms = longest.as_millis().max(1).to_string();
    let ca = settings.ssl_root_cert.clone();
    options.map_sqlx_postgres_opts(move |o| {
        let o = o.options([
            ("statement_timeout", ms.as_str()),
            ("idle_in_transaction_session_timeout", ms.as_str()),
        ]);
        match &ca {
            Some(ca) => o.ssl_root_cert(ca),
            None => o,
        }
    });
    Database::connect(options)
        .await
        .context("configuring the PostgreSQL pool")
}
