//! The `ngrinder-equivalent` command line; its reports go to stdout.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ngrinder_equivalent::bench::{self, BenchPlan};
use ngrinder_equivalent::experiment::{self, Environment, Plan, StackPorts};
use ngrinder_equivalent::run::{RunRequest, perform};
use ngrinder_equivalent::spec::{Endpoint, LoadModel, RoomSpec, RunSpec};
use ngrinder_equivalent::users::UserMode;

/// Load tests for the coupon engine, with nGrinder's figures, percentiles,
/// an open model, and an audit of what was issued after every run.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One test against one URL (a balancer) or several instance URLs.
    Run(Box<RunArgs>),
    /// A plan (TOML) of strategies × vusers × instances × repeats on the local stack.
    Experiment(ExperimentArgs),
    /// The performance plan: issue TPS by vusers, baselines side by side, lag, memory.
    Bench(BenchArgs),
    /// Two or more JSON results side by side; non-zero exit on a regression.
    Compare(CompareArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Users {
    Unique,
    PerVuser,
    Hot,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Target base URL; repeat (or comma-separate) to spread vusers over instances.
    #[arg(
        long = "url",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    urls: Vec<String>,
    /// Closed model: virtual users.
    #[arg(long, default_value_t = 100)]
    vusers: u32,
    /// Vusers started at once (default: all).
    #[arg(long)]
    ramp_initial: Option<u32>,
    /// Vusers added every `--ramp-interval` seconds.
    #[arg(long)]
    ramp_step: Option<u32>,
    #[arg(long, default_value_t = 1)]
    ramp_interval: u64,
    /// Think time between a reply and the vuser's next request, ms.
    #[arg(long, default_value_t = 0)]
    think_ms: u64,
    /// Open model: target requests per second (instead of vusers).
    #[arg(long)]
    rate: Option<u64>,
    /// Open model: connections to send on.
    #[arg(long, default_value_t = 1000)]
    max_connections: u32,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Stop after this many requests instead.
    #[arg(long)]
    requests: Option<u64>,
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    #[arg(long, value_enum, default_value_t = Users::Unique)]
    users: Users,
    /// `--users hot`: how many users repeat.
    #[arg(long, default_value_t = 100)]
    hot_users: u32,
    /// Stock of the campaign to create (default: never sells out).
    #[arg(long)]
    stock: Option<i64>,
    /// Use an existing campaign instead of creating one.
    #[arg(long)]
    campaign: Option<String>,
    /// Admin API base URL (default: the first target).
    #[arg(long)]
    admin_url: Option<String>,
    /// An api instance's ops listener, asked which strategy runs (default:
    /// the first instance of the local stack, its port − 1000).
    #[arg(long)]
    ops_url: Option<String>,
    #[arg(long, env = "APP_AUTH__ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[arg(long, env = "APP_AUTH__JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Where the local stack keeps its generated secrets.
    #[arg(long, default_value = "target/stack")]
    stack_state: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    #[arg(long)]
    no_audit: bool,
    /// Call `GET /healthz` instead of issuing: the HTTP path alone.
    #[arg(long)]
    trivial: bool,
    /// Put a waiting room admitting this many users per second in front
    /// of the campaign created: each user joins, polls as told, then issues.
    #[arg(long)]
    waiting_room: Option<u32>,
    /// With `--waiting-room`: seconds an admitted user has to issue.
    #[arg(long, default_value_t = 120)]
    admission_ttl_secs: u32,
    #[arg(long, default_value_t = 120)]
    audit_patience: u64,
    /// Where the audit reads a waiting room's state.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Once the audit passed, close the campaign the run created and
    /// archive it (the admin API's `archive`: its users and slots deleted
    /// from Redis, for good), as the experiment does after each cell: the
    /// runs after it share the machine with neither a Redis grown by this
    /// run's users nor its rewrites. A campaign whose audit failed is kept,
    /// to look at. (`--release`, its name before, still works for the
    /// committed scripts under docs/results.)
    #[arg(long, alias = "release", conflicts_with_all = ["campaign", "trivial", "no_audit"])]
    archive: bool,
    /// Directory for `<label>.json`, `.csv`, `.hlog` and the charts.
    #[arg(long, default_value = "target/ngrinder")]
    out: PathBuf,
    #[arg(long)]
    label: Option<String>,
    /// Load-client runtime threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value_t = 0.3)]
    stop_error_ratio: f64,
    #[arg(long, default_value_t = 15)]
    stop_zero_tps_secs: u64,
}

#[derive(Debug, Args)]
struct ExperimentArgs {
    /// The plan file.
    plan: Option<PathBuf>,
    /// The small built-in plan (a few minutes).
    #[arg(long)]
    quick: bool,
    /// Repeats of every cell, in place of the plan's.
    #[arg(long)]
    repeats: Option<u32>,
    /// Report directory (default: target/experiments/<timestamp>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the experiment of this report directory where it stopped:
    /// its plan (`plan.toml`) again, every cell whose run was written kept,
    /// the others run.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["plan", "quick", "repeats", "out"])]
    resume: Option<PathBuf>,
    /// With `--resume`: write the report (and charts) of the runs already in
    /// DIR, and run nothing.
    #[arg(long, requires = "resume")]
    report_only: bool,
    #[command(flatten)]
    stack: StackArgs,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// One repeat of shorter runs (a few minutes) instead of the full plan.
    #[arg(long)]
    quick: bool,
    /// Report directory (default: target/bench/<timestamp>).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    stack: StackArgs,
}

/// The local stack that `experiment` and `bench` drive.
#[derive(Debug, Args)]
struct StackArgs {
    #[arg(long, default_value = "scripts/stack")]
    stack: PathBuf,
    #[arg(long, default_value = "target/stack")]
    stack_state: PathBuf,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[arg(long)]
    threads: Option<usize>,
}

impl StackArgs {
    fn environment(self, threads: usize) -> anyhow::Result<Environment> {
        Ok(Environment {
            stack: self.stack,
            state_dir: self.stack_state,
            redis_url: self.redis_url,
            threads,
            ports: ngrinder_equivalent::experiment::StackPorts::from_env()?,
        })
    }
}

/// `given`, or `target/<kind>/<timestamp>`.
fn report_dir(given: Option<PathBuf>, kind: &str) -> PathBuf {
    given.unwrap_or_else(|| {
        PathBuf::from(format!(
            "target/{kind}/{}",
            chrono::Utc::now().format("%Y%m%d-%H%M%S")
        ))
    })
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// Result JSON files; the first is the baseline.
    results: Vec<PathBuf>,
    /// A metric worse than the baseline by more than this (percent) fails.
    #[arg(long, default_value_t = 10.0)]
    max_regression: f64,
    /// Changes within this (percent) count as the same.
    #[arg(long, default_value_t = 3.0)]
    tolerance: f64,
}

const QUICK_PLAN: &str = include_str!("../plans/quick.toml");

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_writer(std::io::stderr)
        .init();
    let threads = match &cli.command {
        Command::Run(a) => a.threads,
        Command::Experiment(a) => a.stack.threads,
        Command::Bench(a) => a.stack.threads,
        Command::Compare(_) => Some(1),
    }
    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(cli.command, threads)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(command: Command, threads: usize) -> anyhow::Result<bool> {
    match command {
        Command::Run(a) => {
            let (stack_admin, stack_jwt) = match experiment::stack_secrets(&a.stack_state) {
                Ok((admin, jwt)) => (Some(admin), Some(jwt)),
                Err(_) => (None, None),
            };
            let admin_token = a.admin_token.or(stack_admin).ok_or_else(|| {
                anyhow::anyhow!("no admin token: set APP_AUTH__ADMIN_TOKEN or run scripts/stack up")
            })?;
            let jwt_secret = a.jwt_secret.or(stack_jwt).ok_or_else(|| {
                anyhow::anyhow!("no JWT secret: set APP_AUTH__JWT_SECRET or run scripts/stack up")
            })?;
            let model = match a.rate {
                Some(rate) => LoadModel::Open {
                    rate,
                    max_connections: a.max_connections,
                },
                None => LoadModel::Closed {
                    vusers: a.vusers,
                    ramp_initial: a.ramp_initial.unwrap_or(a.vusers),
                    ramp_step: a.ramp_step.unwrap_or(a.vusers),
                    ramp_interval_secs: a.ramp_interval,
                    think_ms: a.think_ms,
                },
            };
            let users = match a.users {
                Users::Unique => UserMode::Unique,
                Users::PerVuser => UserMode::PerVuser,
                Users::Hot => UserMode::Hot { users: a.hot_users },
            };
            let label = a
                .label
                .unwrap_or_else(|| chrono::Utc::now().format("run-%Y%m%d-%H%M%S").to_string());
            let spec = RunSpec {
                label: label.clone(),
                targets: a.urls.clone(),
                endpoint: if a.trivial {
                    Endpoint::Trivial
                } else {
                    Endpoint::Issue
                },
                waiting_room: a.waiting_room.map(|admit_per_second| RoomSpec {
                    admit_per_second,
                    admission_ttl_secs: a.admission_ttl_secs,
                }),
                model,
                duration_secs: if a.requests.is_some() {
                    None
                } else {
                    Some(a.duration)
                },
                requests: a.requests,
                warmup_secs: a.warmup,
                users,
                request_timeout_ms: a.timeout_ms,
                stop_error_ratio: a.stop_error_ratio,
                stop_zero_tps_secs: a.stop_zero_tps_secs,
                threads,
            };
            let admin_url = a.admin_url.unwrap_or_else(|| a.urls[0].clone());
            let archive = a.archive.then(|| (admin_url.clone(), admin_token.clone()));
            let result = perform(&RunRequest {
                spec,
                admin_url,
                ops_url: Some(a.ops_url.unwrap_or_else(|| {
                    StackPorts::from_env().map_or_else(|_| String::new(), |p| p.instance_ops_url(0))
                })),
                admin_token,
                jwt_secret,
                stock: a.stock,
                campaign: a.campaign,
                audit: !a.no_audit,
                audit_patience: Duration::from_secs(a.audit_patience),
                redis_url: Some(a.redis_url.clone()),
            })
            .await?;
            result.write(&a.out, &label)?;
            println!("{}", result.render());
            println!("results: {}", a.out.join(format!("{label}.json")).display());
            if let Some((admin_url, admin_token)) = archive {
                experiment::archive_campaign(&admin_url, &admin_token, &result).await;
            }
            Ok(result.passed())
        }
        Command::Experiment(a) => {
            let (plan, out) = if let Some(dir) = a.resume {
                (Plan::load(&dir.join("plan.toml"))?, dir)
            } else {
                let mut plan: Plan = match (&a.plan, a.quick) {
                    (Some(path), _) => Plan::load(path)?,
                    (None, true) => toml::from_str(QUICK_PLAN)?,
                    (None, false) => anyhow::bail!("give a plan file, --quick or --resume DIR"),
                };
                if let Some(repeats) = a.repeats {
                    anyhow::ensure!(repeats > 0, "--repeats must be at least 1");
                    plan.repeats = repeats;
                }
                (plan, report_dir(a.out, "experiments"))
            };
            let passed = if a.report_only {
                experiment::report_only(&plan, &out)?
            } else {
                let env = a.stack.environment(threads)?;
                experiment::run(&plan, &env, &out).await?
            };
            println!("{}", std::fs::read_to_string(out.join("report.md"))?);
            println!("report: {}", out.display());
            Ok(passed)
        }
        Command::Bench(a) => {
            let plan = if a.quick {
                BenchPlan::quick()
            } else {
                BenchPlan::full()
            };
            let out = report_dir(a.out, "bench");
            let env = a.stack.environment(threads)?;
            let passed = bench::run(&plan, &env, &out).await?;
            println!("{}", std::fs::read_to_string(out.join("bench.md"))?);
            println!("report: {}", out.display());
            Ok(passed)
        }
        Command::Compare(a) => {
            let (table, regressed) =
                ngrinder_equivalent::compare::compare(&a.results, a.max_regression, a.tolerance)?;
            println!("{table}");
            Ok(!regressed)
        }
    }
}
