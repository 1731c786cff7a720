use anyhow::Context;
use clap::{Parser, Subcommand};
use common::ids::CampaignId;
use common::settings::Settings;
use issuer_worker::admin::AdminCommand;
use issuer_worker::startup::Application;
use tokio_util::sync::CancellationToken;

/// The same allocator as the api (where it was measured: docs/PERFORMANCE.md),
/// so both processes behave alike; the worker itself was not measured with
/// glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Persists coupon issuances (slots the gate took) from Kafka into PostgreSQL; and the
/// operators' commands.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Service(ServiceCommand),
    #[command(flatten)]
    Admin(AdminCommand),
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Consume the issue topic (the default).
    Run,
    /// Apply database migrations and create the Kafka topics (unless
    /// `APP_KAFKA__CREATE_TOPICS=false`), grant `APP_DATABASE__SERVICE_ROLE`
    /// its rights, then exit.
    Migrate,
    /// The settings: `--names` prints every `APP_` variable the services
    /// read, one per line.
    Settings {
        #[arg(long)]
        names: bool,
    },
    /// Exit 0 if this host's worker answers `/healthz` (container healthcheck).
    Healthcheck,
    /// Compare a campaign's gate with its rows; `--repair` gives back leaked slots.
    Reconcile {
        #[arg(long)]
        campaign: String,
        #[arg(long)]
        repair: bool,
        /// How long to wait for the worker group to catch up, seconds.
        #[arg(long, default_value_t = 300)]
        patience: u64,
    },
    /// Reload a campaign's gate state from PostgreSQL and the unconsumed messages.
    Rebuild {
        #[arg(long)]
        campaign: String,
        /// Replace gate state that is present (stops takes meanwhile).
        #[arg(long)]
        force: bool,
        /// Load an archived campaign's users back and undo its archive (to
        /// reconcile it, or re-drive a letter of it).
        #[arg(long, requires = "force")]
        unarchive: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = match Cli::parse().command {
        Some(Command::Admin(admin)) => std::process::exit(issuer_worker::admin::run(admin).await),
        Some(Command::Service(command)) => command,
        None => ServiceCommand::Run,
    };
    if let ServiceCommand::Settings { names } = command {
        return print_settings(names);
    }
    let settings = Settings::load()?;
    common::telemetry::init(&settings.log, "coupon-issuer-worker");
    settings.log_notices();
    let (redis, kafka) = match &command {
        ServiceCommand::Run | ServiceCommand::Reconcile { .. } | ServiceCommand::Rebuild { .. } => {
            (true, true)
        }
        ServiceCommand::Migrate => (false, settings.kafka.create_topics),
        ServiceCommand::Healthcheck | ServiceCommand::Settings { .. } => (false, false),
    };
    settings.require_secure_dependencies(redis, kafka)?;
    match command {
        ServiceCommand::Settings { names } => print_settings(names),
        ServiceCommand::Healthcheck => {
            std::process::exit(if common::healthcheck::probe(settings.worker.http_port) {
                0
            } else {
                1
            })
        }
        ServiceCommand::Migrate => {
            let db = common::db::connect(&settings.database, LONG_TOOL_STATEMENTS).await?;
            issuer_worker::migration::migrate(&db)
                .await
                .context("applying migrations")?;
            if let Some(role) = &settings.database.service_role {
                issuer_worker::migration::grant_service_role(&db, role)
                    .await
                    .with_context(|| format!("granting {role} its rights"))?;
            }
            if settings.kafka.create_topics {
                common::kafka::ensure_topics(&settings.kafka).await?;
            }
            tracing::info!(topic = %settings.kafka.topic, topics = settings.kafka.create_topics, "schema and topics ready");
            Ok(())
        }
        ServiceCommand::Reconcile {
            campaign,
            repair,
            patience,
        } => {
            let campaign = CampaignId::parse(&campaign)?;
            let db = common::db::connect(&settings.database, LONG_TOOL_STATEMENTS).await?;
            let report = issuer_worker::reconcile::run(
                &settings,
                &db,
                campaign,
                repair,
                std::time::Duration::from_secs(patience),
            )
            .await?;
            print_json(&report)
        }
        ServiceCommand::Rebuild {
            campaign,
            force,
            unarchive,
        } => {
            let campaign = CampaignId::parse(&campaign)?;
            let db = common::db::connect(&settings.database, LONG_TOOL_STATEMENTS).await?;
            let report = if unarchive {
                issuer_worker::rebuild::run_unarchiving(&settings, &db, campaign).await?
            } else {
                issuer_worker::rebuild::run(&settings, &db, campaign, force).await?
            };
            print_json(&report)
        }
        ServiceCommand::Run => {
            let app = Application::build(settings).await?;
            let shutdown = CancellationToken::new();
            let trigger = shutdown.clone();
            tokio::spawn(async move {
                common::shutdown::signal().await;
                tracing::info!("shutdown signal received; draining");
                trigger.cancel();
            });
            let stopped = app.run_until_stopped(shutdown).await;
            common::telemetry::shutdown();
            stopped
        }
    }
}

/// The server-side statement bound of the one-shot tools (migrations, and
/// the full reads of reconcile and rebuild).
const LONG_TOOL_STATEMENTS: std::time::Duration = std::time::Duration::from_secs(300);

/// `settings --names`: every `APP_` variable, one per line (what the
/// deployment files are checked against); without `--names`, the defaults
/// as JSON with secrets redacted.
#[allow(clippy::print_stdout)]
fn print_settings(names: bool) -> anyhow::Result<()> {
    if names {
        for name in common::settings::known_names() {
            println!("{name}");
        }
    } else {
        println!("{}", serde_json::to_string_pretty(&Settings::default())?);
    }
    Ok(())
}

/// Reports of the one-shot commands go to stdout as JSON.
#[allow(clippy::print_stdout)]
fn print_json(report: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(report)?);
    Ok(())
}
