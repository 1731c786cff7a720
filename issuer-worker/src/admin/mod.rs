//! The admin commands of the `issuer-worker` binary, for operators and
//! their scripts:
//!
//! - [`campaigns`] — `campaigns create|list|show|close`, through the api's
//!   admin endpoints (at `admin.api_url` or `--api`, with `auth.admin_token`).
//! - [`letters`] — the dead-letter topic read: `dlq list|show`.
//! - [`redrive`] — `dlq redrive`: letters' messages back on the issue topic,
//!   only where the worker can persist them once and within the stock.
//!
//! Each command prints text for people, or with `--output json` one JSON
//! document for scripts; `dlq redrive` prints one audit line per letter, and
//! with `--output json` JSON lines. Logs go to stderr, so stdout is only
//! the output. The exit codes are [`EXIT_CODES`].

use clap::{Args, Subcommand, ValueEnum};
use common::settings::Settings;

pub mod campaigns;
pub mod letters;
pub mod redrive;

/// The commands' exit codes, as `--help` shows them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  failed: the api, Kafka, Redis or PostgreSQL did not answer or failed
  2  usage: bad arguments or settings (e.g. APP_AUTH__ADMIN_TOKEN not set)
  3  not found: no such campaign, or no letter at that place
  4  refused by the api: not authorised (401, 403) or invalid (400, 409, 413, 415, 422)
  5  dlq redrive: some letters were not re-driven (each one's line says why)";

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_NOT_FOUND: i32 = 3;
pub const EXIT_REFUSED: i32 = 4;
pub const EXIT_NOT_ALL_REDRIVEN: i32 = 5;

/// The admin subcommands of `issuer-worker`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create, list, show and close campaigns through the api's admin
    /// endpoints (the api at APP_ADMIN__API_URL or --api, the token of
    /// APP_AUTH__ADMIN_TOKEN).
    #[command(after_help = EXIT_CODES)]
    Campaigns(campaigns::CampaignsArgs),
    /// Read the dead-letter topic, and re-drive letters to the issue topic
    /// once their cause is fixed (Kafka, Redis and PostgreSQL of the APP_*
    /// settings).
    #[command(after_help = EXIT_CODES)]
    Dlq(DlqArgs),
}

/// How a command prints its result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// For scripts.
    Json,
}

#[derive(Debug, Args)]
pub struct DlqArgs {
    /// text, or json for scripts: one JSON document (list, show), JSON
    /// lines (redrive: one audit line per letter).
    #[arg(long, global = true, value_enum, default_value_t)]
    output: Output,
    #[command(subcommand)]
    command: letters::DlqCommand,
}

/// What went wrong, by the exit code it gives.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

impl AdminError {
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) => EXIT_USAGE,
            Self::NotFound(_) => EXIT_NOT_FOUND,
            Self::Refused(_) => EXIT_REFUSED,
            Self::Failed(_) => EXIT_FAILED,
        }
    }
}

/// Runs an admin command with the settings of the environment; returns
/// the exit code. Errors are reported on stderr.
pub async fn run(command: AdminCommand) -> i32 {
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    common::telemetry::init_stderr(&settings.log);
    settings.log_notices();
    let result = match command {
        AdminCommand::Campaigns(args) => campaigns::run(&settings, args).await,
        AdminCommand::Dlq(args) => letters::run(&settings, args.command, args.output).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Refuses, in production, plaintext or unauthenticated Redis and Kafka
/// (as the services do) for a command that talks to them.
fn require_secure(settings: &Settings, redis: bool, kafka: bool) -> Result<(), AdminError> {
    settings
        .require_secure_dependencies(redis, kafka)
        .map_err(|e| AdminError::Usage(e.to_string()))
}

/// One JSON document on stdout.
#[allow(clippy::print_stdout)]
fn print_json(value: &impl serde::Serialize) -> Result<(), AdminError> {
    let text = serde_json::to_string_pretty(value).map_err(anyhow::Error::from)?;
    println!("{text}");
    Ok(())
}

/// One JSON line on stdout (an audit stream).
#[allow(clippy::print_stdout)]
fn print_json_line(value: &impl serde::Serialize) -> Result<(), AdminError> {
    let text = serde_json::to_string(value).map_err(anyhow::Error::from)?;
    println!("{text}");
    Ok(())
}

/// Text on stdout.
#[allow(clippy::print_stdout)]
fn print_text(text: &str) {
    println!("{text}");
}
