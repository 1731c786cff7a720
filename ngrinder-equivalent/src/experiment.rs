//! Strategies × vusers × instances × repeats on the local stack: for each
//! cell, `scripts/stack up --instances N --strategy S`, a warm-up, a run, an
//! audit; then one report directory with every result (JSON, CSV), a
//! Markdown report in the seed's table layout beside its published figures,
//! and PNG charts (`tables`), after the harness is measured against wrk
//! (`honesty`). A run's campaign keys are deleted from Redis afterwards.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::admin::AdminClient;
use crate::procs;
use crate::report::RunResult;
use crate::run::{RunRequest, perform};
use crate::spec::{Endpoint, LoadModel, RoomSpec, RunSpec};
use crate::users::UserMode;

mod honesty;
mod tables;

use honesty::honesty_check;
pub use honesty::{HONEST_WITHIN, Honesty};
use tables::{draw_charts, write_tables};

/// A plan file (TOML).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// `APP_STRATEGY` values; a lock strategy may carry its lock mode after
    /// a `+` (`fair-lock+naive`; without one, the engine's default,
    /// [`DEFAULT_LOCK_MODE`]).
    pub strategies: Vec<String>,
    pub vusers: Vec<u32>,
    pub instances: Vec<u32>,
    #[serde(default = "one")]
    pub repeats: u32,
    pub duration_secs: u64,
    #[serde(default)]
    pub warmup_secs: u64,
    #[serde(default = "unique")]
    pub users: UserMode,
    /// `client-side` (vusers spread over the instances, as the seed's
    /// discovery client did) or `balancer` (through HAProxy).
    #[serde(default = "client_side")]
    pub spread: String,
    /// Campaign stock; absent: never sells out.
    pub stock: Option<i64>,
    #[serde(default = "timeout_ms")]
    pub request_timeout_ms: u64,
    /// Ramp: every vuser at once unless set.
    pub ramp_step: Option<u32>,
    /// nGrinder's stop rule: end a run when more than this share of its
    /// requests fail. Off (1.0) by default in experiments, so that a
    /// strategy that sheds load (503) is measured for the whole cell.
    #[serde(default = "never")]
    pub stop_error_ratio: f64,
    #[serde(default = "ramp_interval")]
    pub ramp_interval_secs: u64,
    /// Waiting rooms to run every cell behind: the admissions per second
    /// of each, 0 for none (the direct path). Default: none.
    #[serde(default = "no_room")]
    pub waiting_rooms: Vec<u32>,
    /// Seconds an admitted user has to issue (rooms only).
    #[serde(default = "admission_ttl")]
    pub admission_ttl_secs: u32,
}

fn no_room() -> Vec<u32> {
    vec![0]
}
fn admission_ttl() -> u32 {
    120
}

fn one() -> u32 {
    1
}
fn unique() -> UserMode {
    UserMode::Unique
}
fn client_side() -> String {
    "client-side".into()
}
fn timeout_ms() -> u64 {
    10_000
}
fn ramp_interval() -> u64 {
    1
}
fn never() -> f64 {
    1.0
}

impl Plan {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let plan: Self = toml::from_str(&text)?;
        anyhow::ensure!(
            plan.spread == "client-side" || plan.spread == "balancer",
            "spread must be client-side or balancer"
        );
        Ok(plan)
    }

    pub fn cells(&self) -> usize {
        self.strategies.len()
            * self.vusers.len()
            * self.instances.len()
            * self.waiting_rooms.len().max(1)
            * self.repeats as usize
    }
}

/// Where the experiment finds the stack and its secrets.
#[derive(Debug, Clone)]
pub struct Environment {
    pub stack: PathBuf,
    pub state_dir: PathBuf,
    pub redis_url: String,
    pub threads: usize,
    pub ports: StackPorts,
}

/// The ports `scripts/stack` puts its api instances, HAProxy and the worker
/// on: its own variables and defaults, read the same way. Each instance's
/// ops listener is its port − 1000.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackPorts {
    /// The first api instance's; the others follow it.
    pub api_base: u16,
    pub balancer: u16,
    pub worker: u16,
}

impl StackPorts {
    /// `COUPON_API_BASE_PORT` (8081), `COUPON_LB_PORT` (8080),
    /// `COUPON_WORKER_PORT` (9100), as `scripts/stack` reads them.
    pub fn from_env() -> anyhow::Result<Self> {
        let port = |name: &str, default: u16| -> anyhow::Result<u16> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .with_context(|| format!("{name}={v:?} is not a port")),
                Err(_) => Ok(default),
            }
        };
        Ok(Self {
            api_base: port("COUPON_API_BASE_PORT", 8081)?,
            balancer: port("COUPON_LB_PORT", 8080)?,
            worker: port("COUPON_WORKER_PORT", 9100)?,
        })
    }

    pub fn instance_url(&self, i: u32) -> String {
        format!("http://127.0.0.1:{}", u32::from(self.api_base) + i)
    }

    /// Instance `i`'s ops listener (`/readyz`, `/metrics`).
    pub fn instance_ops_url(&self, i: u32) -> String {
        format!("http://127.0.0.1:{}", u32::from(self.api_base) + i - 1000)
    }

    pub fn instance_urls(&self, instances: u32) -> Vec<String> {
        (0..instances).map(|i| self.instance_url(i)).collect()
    }

    pub fn balancer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.balancer)
    }

    pub fn worker_metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.worker)
    }
}

/// The admin token and JWT secret: the environment's, else the stack's.
pub fn secrets(state_dir: &Path) -> anyhow::Result<(String, String)> {
    let from_env = (
        std::env::var("APP_AUTH__ADMIN_TOKEN").ok(),
        std::env::var("APP_AUTH__JWT_SECRET").ok(),
    );
    if let (Some(a), Some(j)) = from_env {
        return Ok((a, j));
    }
    stack_secrets(state_dir)
}

/// The admin token and JWT secret `scripts/stack` generated (its
/// `secrets.env`); the one reader of that file.
pub fn stack_secrets(state_dir: &Path) -> anyhow::Result<(String, String)> {
    let path = state_dir.join("secrets.env");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (run scripts/stack up)", path.display()))?;
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("{name} missing from secrets.env"))
    };
    Ok((get("LOCAL_ADMIN_TOKEN")?, get("LOCAL_JWT_SECRET")?))
}

/// The engine's `lock.mode` when none is set (`APP_LOCK__MODE`).
pub const DEFAULT_LOCK_MODE: &str = "combining";

/// A plan's strategy split into `APP_STRATEGY` and the lock mode named after
/// a `+` (`distributed-lock+naive`), [`DEFAULT_LOCK_MODE`] without one.
fn strategy_and_mode(strategy: &str) -> (&str, &str) {
    strategy
        .split_once('+')
        .unwrap_or((strategy, DEFAULT_LOCK_MODE))
}

/// How many connections at once the stack's HAProxy lets one source address
/// hold while the harness drives it (`COUPON_LB_CONN_PER_SOURCE`). The load
/// client is one address sending every vuser's connection; at the stack's
/// own cap (200) a run through HAProxy at 1,000 vusers had most of its
/// connections refused. Above the largest vusers any plan sends.
pub const LOAD_CLIENT_CONNECTIONS: u32 = 10_000;

/// `scripts/stack up` with the cell's instances and strategy; the lock mode
/// is always passed, so a cell means the same whatever the stack's own
/// default. HAProxy's per-source cap is raised to [`LOAD_CLIENT_CONNECTIONS`]
/// and stays so until the stack is brought up again without it.
pub fn stack_up(env: &Environment, instances: u32, strategy: &str) -> anyhow::Result<()> {
    let (strategy, lock_mode) = strategy_and_mode(strategy);
    let mut cmd = std::process::Command::new(&env.stack);
    cmd.env(
        "COUPON_LB_CONN_PER_SOURCE",
        LOAD_CLIENT_CONNECTIONS.to_string(),
    );
    cmd.args([
        "up",
        "--instances",
        &instances.to_string(),
        "--strategy",
        strategy,
        "--lock-mode",
        lock_mode,
    ]);
    let status = cmd.stdout(std::process::Stdio::null()).status()?;
    anyhow::ensure!(
        status.success(),
        "{} up failed ({status})",
        env.stack.display()
    );
    Ok(())
}

/// If a run passed its audit (every accepted user has a row, nothing is in
/// flight): closes its campaign, then archives its users set and slots hash
/// (the admin API's `close` and `archive`), so that the runs after it share
/// the machine with neither a Redis that grows by every run's users (and the
/// append-only file's rewrites of it) nor the gate keeper rebuilding it
/// after a Redis restart: the archive is marked in the campaign's row, and
/// a rebuild keeps it. A failed audit's campaign is kept, to look at. Best
/// effort: a failure is said, and the campaign's state is kept (an open
/// campaign's always: its users set is what refuses a second slot).
pub async fn archive_campaign(admin_url: &str, admin_token: &str, result: &RunResult) {
    if !result.passed() {
        eprintln!("   the audit did not pass: the campaign and its keys are kept");
        return;
    }
    let campaign = result.campaign_id.as_str();
    let admin = match AdminClient::new(admin_url, admin_token) {
        Ok(admin) => admin,
        Err(e) => {
            eprintln!("   campaign not closed; its Redis keys kept: {e}");
            return;
        }
    };
    if let Err(e) = admin.close_campaign(campaign).await {
        eprintln!("   campaign not closed; its Redis keys kept: {e}");
        return;
    }
    match admin.archive_campaign(campaign).await {
        Ok(()) => eprintln!("   campaign closed and archived"),
        Err(e) => eprintln!("   campaign closed, not archived (its Redis keys kept): {e}"),
    }
}

/// Runs the plan; writes the report into `out`. Returns whether every
/// audit passed.
///
/// A cell whose run is already in `out/runs/<label>.json` (an experiment
/// interrupted and resumed with `--resume out`) is kept, not run again; the
/// plan in `out/plan.toml` must then be this one.
pub async fn run(plan: &Plan, env: &Environment, out: &Path) -> anyhow::Result<bool> {
    std::fs::create_dir_all(out.join("runs"))?;
    let plan_file = out.join("plan.toml");
    let plan_text = toml::to_string_pretty(plan)?;
    if let Ok(earlier) = std::fs::read_to_string(&plan_file) {
        let earlier: Plan = toml::from_str(&earlier)?;
        anyhow::ensure!(
            toml::to_string_pretty(&earlier)? == plan_text,
            "{} holds another plan; resume it with its own plan or use another directory",
            plan_file.display()
        );
    }
    std::fs::write(&plan_file, plan_text)?;
    let honesty = match std::fs::read(out.join("honesty.json")) {
        Ok(earlier) => serde_json::from_slice(&earlier)?,
        Err(_) => {
            let first = plan.strategies.first().map_or("sync", String::as_str);
            stack_up(env, 1, first)?;
            let honesty = honesty_check(env).await?;
            std::fs::write(
                out.join("honesty.json"),
                serde_json::to_vec_pretty(&honesty)?,
            )?;
            honesty
        }
    };
    let mut cell = 0;
    for &instances in &plan.instances {
        for strategy in &plan.strategies {
            let labels = cell_labels(plan, strategy, instances);
            if labels
                .iter()
                .all(|label| finished_run(out, label).is_some())
            {
                eprintln!(
                    "== {instances} instances, {strategy}: all {} cells done earlier",
                    labels.len()
                );
                cell += labels.len();
                continue;
            }
            eprintln!("== stack: {instances} instances, {strategy}");
            stack_up(env, instances, strategy)?;
            let (admin_token, jwt_secret) = secrets(&env.state_dir)?;
            let instance_urls = env.ports.instance_urls(instances);
            let targets = if plan.spread == "balancer" {
                vec![env.ports.balancer_url()]
            } else {
                instance_urls.clone()
            };
            for (&vusers, &room) in plan
                .vusers
                .iter()
                .flat_map(|v| plan.waiting_rooms.iter().map(move |r| (v, r)))
            {
                for repeat in 1..=plan.repeats {
                    cell += 1;
                    let label = cell_label(strategy, instances, vusers, room, repeat);
                    if finished_run(out, &label).is_some() {
                        eprintln!("== cell {cell}/{}: {label} done earlier", plan.cells());
                        continue;
                    }
                    eprintln!("== cell {cell}/{}: {label}", plan.cells());
                    let spec = RunSpec {
                        label: label.clone(),
                        targets: targets.clone(),
                        endpoint: Endpoint::Issue,
                        waiting_room: (room > 0).then_some(RoomSpec {
                            admit_per_second: room,
                            admission_ttl_secs: plan.admission_ttl_secs,
                        }),
                        model: LoadModel::Closed {
                            vusers,
                            ramp_initial: plan.ramp_step.unwrap_or(vusers),
                            ramp_step: plan.ramp_step.unwrap_or(vusers),
                            ramp_interval_secs: plan.ramp_interval_secs,
                            think_ms: 0,
                        },
                        duration_secs: Some(plan.duration_secs),
                        requests: None,
                        warmup_secs: plan.warmup_secs,
                        users: plan.users,
                        request_timeout_ms: plan.request_timeout_ms,
                        stop_error_ratio: plan.stop_error_ratio,
                        stop_zero_tps_secs: 15,
                        threads: env.threads,
                    };
                    // What the stack's processes use while the cell is measured.
                    let stop = tokio_util::sync::CancellationToken::new();
                    let processes = tokio::spawn(procs::sample(
                        stop.clone(),
                        Duration::from_secs(plan.warmup_secs),
                        Duration::from_secs(plan.duration_secs),
                    ));
                    let result = perform(&RunRequest {
                        spec,
                        admin_url: instance_urls[0].clone(),
                        ops_url: Some(env.ports.instance_ops_url(0)),
                        admin_token: admin_token.clone(),
                        jwt_secret: jwt_secret.clone(),
                        stock: plan.stock,
                        campaign: None,
                        audit: true,
                        audit_patience: Duration::from_secs(120),
                        redis_url: Some(env.redis_url.clone()),
                    })
                    .await;
                    stop.cancel();
                    let mut result = result?;
                    result.processes = processes.await.ok();
                    #[allow(clippy::print_stdout)] // a CLI: each run's summary is its output
                    {
                        println!("{}", result.render());
                    }
                    result.write(&out.join("runs"), &label)?;
                    archive_campaign(&instance_urls[0], &admin_token, &result).await;
                    // An interrupted grid leaves the report of what it ran,
                    // in this sitting and earlier ones, wherever in the plan.
                    write_tables(out, plan, &finished_runs(plan, out), &honesty)?;
                }
            }
        }
    }
    write_report(plan, out, &honesty)
}

/// The report and charts of the runs an earlier sitting wrote in `out`, in
/// the plan's order, without running anything; whether they all passed.
pub fn report_only(plan: &Plan, out: &Path) -> anyhow::Result<bool> {
    let honesty: Honesty = serde_json::from_slice(
        &std::fs::read(out.join("honesty.json"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", out.join("honesty.json").display()))?,
    )?;
    write_report(plan, out, &honesty)
}

/// The report and charts of every run of the plan in `out`; whether they
/// all passed.
fn write_report(plan: &Plan, out: &Path, honesty: &Honesty) -> anyhow::Result<bool> {
    let results = finished_runs(plan, out);
    write_tables(out, plan, &results, honesty)?;
    draw_charts(out, &results)?;
    Ok(results.iter().all(RunResult::passed))
}

/// The runs of the plan's cells that `out/runs/` holds, in the plan's order.
fn finished_runs(plan: &Plan, out: &Path) -> Vec<RunResult> {
    plan.instances
        .iter()
        .flat_map(|&instances| {
            plan.strategies
                .iter()
                .flat_map(move |strategy| cell_labels(plan, strategy, instances))
        })
        .filter_map(|label| finished_run(out, &label))
        .collect()
}

/// The label of one cell's run (its file name under `runs/`).
fn cell_label(strategy: &str, instances: u32, vusers: u32, room: u32, repeat: u32) -> String {
    match room {
        0 => format!("{strategy}-i{instances}-v{vusers}-r{repeat}"),
        n => format!("{strategy}-i{instances}-v{vusers}-wr{n}-r{repeat}"),
    }
}

/// Every cell label of one stack (instances × strategy) of the plan.
fn cell_labels(plan: &Plan, strategy: &str, instances: u32) -> Vec<String> {
    let mut labels = Vec::new();
    for &vusers in &plan.vusers {
        for &room in &plan.waiting_rooms {
            for repeat in 1..=plan.repeats {
                labels.push(cell_label(strategy, instances, vusers, room, repeat));
            }
        }
    }
    labels
}

/// The run of a cell written by an earlier sitting, if it is complete (its
/// JSON parses). A cell cut off mid-run left no JSON and runs again.
fn finished_run(out: &Path, label: &str) -> Option<RunResult> {
    let text = std::fs::read(out.join("runs").join(format!("{label}.json"))).ok()?;
    serde_json::from_slice(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_plan_loads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plans");
        let mut loaded = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let plan = Plan::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for strategy in &plan.strategies {
                let (kind, mode) = strategy_and_mode(strategy);
                assert!(
                    ["sync", "async-queue", "distributed-lock", "fair-lock"].contains(&kind)
                        && ["naive", "combining"].contains(&mode),
                    "{}: {strategy}",
                    path.display()
                );
            }
            loaded += 1;
        }
        assert!(loaded >= 4, "{loaded} plans");
    }

    #[test]
    fn a_resumed_experiment_keeps_only_cells_whose_run_was_written_whole() {
        let plan: Plan = toml::from_str(
            "strategies = [\"sync\"]\nvusers = [100, 1000]\ninstances = [3]\nrepeats = 3\nduration_secs = 60\n",
        )
        .unwrap();
        let labels = cell_labels(&plan, "sync", 3);
        assert_eq!(labels.len(), plan.cells());
        assert_eq!(labels[0], "sync-i3-v100-r1");
        assert_eq!(labels[5], "sync-i3-v1000-r3");

        let out = std::env::temp_dir().join(format!("resume-{}", std::process::id()));
        std::fs::create_dir_all(out.join("runs")).unwrap();
        // A run cut off while its JSON was written does not count as done.
        std::fs::write(
            out.join("runs/sync-i3-v100-r1.json"),
            b"{\"version\": 1, \"lab",
        )
        .unwrap();
        assert!(finished_run(&out, "sync-i3-v100-r1").is_none());
        assert!(finished_run(&out, "sync-i3-v100-r2").is_none());
        std::fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn a_resumed_report_holds_every_finished_cell_wherever_it_is_in_the_plan() {
        let plan: Plan = toml::from_str(
            "strategies = [\"sync\", \"async-queue\"]\nvusers = [100]\ninstances = [2, 3]\nrepeats = 2\nduration_secs = 60\n",
        )
        .unwrap();
        let out = std::env::temp_dir().join(format!("resume-report-{}", std::process::id()));
        std::fs::create_dir_all(out.join("runs")).unwrap();
        let run: RunResult =
            serde_json::from_str(include_str!("experiment/fixtures/sync-run.json")).unwrap();
        // Written out of order: a later stack's cell first, as when a grid
        // was resumed after cells further on had run.
        for label in ["async-queue-i3-v100-r2", "sync-i2-v100-r1"] {
            RunResult {
                label: label.into(),
                ..run.clone()
            }
            .write(&out.join("runs"), label)
            .unwrap();
        }
        let labels: Vec<String> = finished_runs(&plan, &out)
            .into_iter()
            .map(|r| r.label)
            .collect();
        assert_eq!(labels, ["sync-i2-v100-r1", "async-queue-i3-v100-r2"]);

        let honesty = Honesty {
            url: "http://127.0.0.1:8081".into(),
            connections: 100,
            secs: 10,
            harness_rps: 1.0,
            wrk_rps: None,
        };
        std::fs::write(
            out.join("honesty.json"),
            serde_json::to_vec(&honesty).unwrap(),
        )
        .unwrap();
        assert!(report_only(&plan, &out).unwrap());
        let text = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert!(text.contains("**Partial**: 2 of 8 cells"), "{text}");
        // The runs sampled the stack's processes: their CPU per test shows.
        assert!(text.contains(" µs (api "), "{text}");
        std::fs::remove_dir_all(&out).unwrap();
    }
}
