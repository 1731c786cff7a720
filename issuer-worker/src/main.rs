use anyhow::Context;
use clap::{Parser, Subcommand};
use common::settings::Settings;
use issuer_worker::startup::Application;
use tokio_util::sync::CancellationToken;

/// Persists admitted coupon issuances from Kafka into PostgreSQL.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume the issue topic (the default).
    Run,
    /// Apply database migrations and create the Kafka topics, then exit.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load()?;
    common::telemetry::init(&settings.log);
    match cli.command.unwrap_or(Command::Run) {
        Command::Migrate => {
            let db = common::db::connect(&settings.database).await?;
            issuer_worker::migration::migrate(&db)
                .await
                .context("applying migrations")?;
            common::kafka::ensure_topics(&settings.kafka).await?;
            tracing::info!(topic = %settings.kafka.topic, "schema and topics ready");
            Ok(())
        }
        Command::Run => {
            let app = Application::build(settings).await?;
            let shutdown = CancellationToken::new();
            let trigger = shutdown.clone();
            tokio::spawn(async move {
                common::shutdown::signal().await;
                tracing::info!("shutdown signal received; draining");
                trigger.cancel();
            });
            app.run_until_stopped(shutdown).await
        }
    }
}
