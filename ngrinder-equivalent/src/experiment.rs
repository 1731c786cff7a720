//! Strategies × vusers × instances × repeats on the local stack: for each
//! cell, `scripts/stack up --instances N --strategy S`, a warm-up, a run, an
//! audit; then one report directory with every result (JSON, CSV), a
//! Markdown report in the seed's table layout beside its published figures,
//! and PNG charts. A run's campaign keys are deleted from Redis afterwards.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::charts::{self, Scale, Series};
use crate::procs;
use crate::report::RunResult;
use crate::run::{RunRequest, perform};
use crate::seed;
use crate::spec::{Endpoint, LoadModel, RoomSpec, RunSpec};
use crate::users::UserMode;

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
    /// The stack's broker: `kafka` (Apache Kafka, the default), `tansu`
    /// or `tansu-memory` (`scripts/stack --broker`).
    #[serde(default = "kafka")]
    pub broker: String,
    /// Every cell starts on an empty broker (`scripts/stack --fresh-broker`).
    /// Tansu's memory storage slows as it fills (its fetches scan every
    /// stored batch), so a plan on it needs this for cells to start alike;
    /// Apache Kafka does not.
    #[serde(default)]
    pub fresh_broker: bool,
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
    /// Seconds a let-in user has to issue (rooms only).
    #[serde(default = "admission_ttl")]
    pub admission_ttl_secs: u32,
}

fn no_room() -> Vec<u32> {
    vec![0]
}
fn admission_ttl() -> u32 {
    120
}

fn kafka() -> String {
    "kafka".into()
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
/// on: its own variables and defaults, read the same way.
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

/// What `stack_up` does with the broker's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerState {
    /// Kept as it is.
    Kept,
    /// Emptied first (`--fresh-broker`; see [`Plan::fresh_broker`]).
    Emptied,
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

/// `scripts/stack up` with the cell's instances, strategy and broker; the
/// lock mode is always passed, so a cell means the same whatever the
/// stack's own default.
pub fn stack_up(
    env: &Environment,
    instances: u32,
    strategy: &str,
    broker: &str,
    data: BrokerState,
) -> anyhow::Result<()> {
    let (strategy, lock_mode) = strategy_and_mode(strategy);
    let mut cmd = std::process::Command::new(&env.stack);
    cmd.args([
        "up",
        "--instances",
        &instances.to_string(),
        "--strategy",
        strategy,
        "--lock-mode",
        lock_mode,
    ]);
    cmd.args(["--broker", broker]);
    if data == BrokerState::Emptied {
        cmd.arg("--fresh-broker");
    }
    let status = cmd.stdout(std::process::Stdio::null()).status()?;
    anyhow::ensure!(
        status.success(),
        "{} up failed ({status})",
        env.stack.display()
    );
    Ok(())
}

/// Deletes every Redis key of a campaign (`coupon:{<id>}:*`).
pub async fn delete_campaign_keys(redis_url: &str, campaign: &str) -> anyhow::Result<u64> {
    let mut conn = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let pattern = format!("coupon:{{{campaign}}}:*");
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            deleted += redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<u64>(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
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
            stack_up(env, 1, first, &plan.broker, BrokerState::Kept)?;
            let honesty = honesty_check(env).await?;
            std::fs::write(
                out.join("honesty.json"),
                serde_json::to_vec_pretty(&honesty)?,
            )?;
            honesty
        }
    };
    let mut results: Vec<RunResult> = Vec::new();
    let mut cell = 0;
    for &instances in &plan.instances {
        for strategy in &plan.strategies {
            let labels = cell_labels(plan, strategy, instances);
            let done: Vec<RunResult> = labels
                .iter()
                .filter_map(|label| finished_run(out, label))
                .collect();
            if done.len() == labels.len() {
                eprintln!(
                    "== {instances} instances, {strategy}: all {} cells done earlier",
                    done.len()
                );
                cell += done.len();
                results.extend(done);
                continue;
            }
            eprintln!("== stack: {instances} instances, {strategy}");
            stack_up(env, instances, strategy, &plan.broker, BrokerState::Kept)?;
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
                    if let Some(earlier) = finished_run(out, &label) {
                        eprintln!("== cell {cell}/{}: {label} done earlier", plan.cells());
                        results.push(earlier);
                        continue;
                    }
                    eprintln!("== cell {cell}/{}: {label}", plan.cells());
                    if plan.fresh_broker {
                        stack_up(env, instances, strategy, &plan.broker, BrokerState::Emptied)?;
                    }
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
                    match delete_campaign_keys(&env.redis_url, &result.campaign_id).await {
                        Ok(n) => eprintln!("   cleaned up {n} Redis keys"),
                        Err(e) => eprintln!("   Redis keys not cleaned up: {e}"),
                    }
                    results.push(result);
                    // An interrupted grid leaves the report of what it ran.
                    write_tables(out, plan, &results, &honesty)?;
                }
            }
        }
    }
    write_tables(out, plan, &results, &honesty)?;
    draw_charts(out, &results)?;
    Ok(results.iter().all(RunResult::passed))
}

/// The report and charts of the runs an earlier sitting wrote in `out`, in
/// the plan's order, without running anything; whether they all passed.
pub fn report_only(plan: &Plan, out: &Path) -> anyhow::Result<bool> {
    let honesty: Honesty = serde_json::from_slice(
        &std::fs::read(out.join("honesty.json"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", out.join("honesty.json").display()))?,
    )?;
    let mut results = Vec::new();
    for &instances in &plan.instances {
        for strategy in &plan.strategies {
            results.extend(
                cell_labels(plan, strategy, instances)
                    .iter()
                    .filter_map(|label| finished_run(out, label)),
            );
        }
    }
    write_tables(out, plan, &results, &honesty)?;
    draw_charts(out, &results)?;
    Ok(results.iter().all(RunResult::passed))
}

/// `results.json`, `results.csv` and `report.md` of the runs so far.
fn write_tables(
    out: &Path,
    plan: &Plan,
    results: &[RunResult],
    honesty: &Honesty,
) -> anyhow::Result<()> {
    std::fs::write(
        out.join("results.json"),
        serde_json::to_vec_pretty(results)?,
    )?;
    std::fs::write(out.join("results.csv"), results_csv(results))?;
    std::fs::write(out.join("report.md"), report(plan, results, honesty))?;
    Ok(())
}

/// The harness measured against wrk, before the grid: the trivial endpoint
/// (`/healthz`) of one instance, the same connections for the same time,
/// one after the other. Within [`HONEST_WITHIN`] of wrk, the harness's
/// figures are the server's, not the client's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Honesty {
    pub url: String,
    pub connections: u32,
    pub secs: u64,
    pub harness_rps: f64,
    /// `None` when wrk is not installed (`scripts/stack up` installs it).
    pub wrk_rps: Option<f64>,
}

/// How far the harness may be from wrk on the trivial endpoint.
pub const HONEST_WITHIN: f64 = 0.10;

impl Honesty {
    /// harness / wrk.
    pub fn ratio(&self) -> Option<f64> {
        self.wrk_rps
            .filter(|w| *w > 0.0)
            .map(|w| self.harness_rps / w)
    }

    pub fn passed(&self) -> Option<bool> {
        self.ratio().map(|r| (r - 1.0).abs() <= HONEST_WITHIN)
    }

    fn render(&self) -> String {
        let verdict = match (self.ratio(), self.passed()) {
            (Some(r), Some(true)) => format!("{r:.2}× wrk: within {:.0}%", HONEST_WITHIN * 100.0),
            (Some(r), _) => format!(
                "{r:.2}× wrk: NOT within {:.0}%; the grid's figures may be the client's limit",
                HONEST_WITHIN * 100.0
            ),
            (None, _) => "wrk not installed: not checked".to_owned(),
        };
        format!(
            "## The harness against wrk\n\n`GET {}/healthz`, {} connections, {} s each, one after the other: harness {:.0} requests/s, wrk {}. {verdict}.\n",
            self.url,
            self.connections,
            self.secs,
            self.harness_rps,
            self.wrk_rps
                .map_or_else(|| "–".to_owned(), |w| format!("{w:.0} requests/s")),
        )
    }
}

/// Runs the trivial endpoint with the harness, then with wrk.
async fn honesty_check(env: &Environment) -> anyhow::Result<Honesty> {
    const CONNECTIONS: u32 = 100;
    const SECS: u64 = 10;
    let url = env.ports.instance_url(0);
    eprintln!(
        "== the harness against wrk: {url}/healthz, {CONNECTIONS} connections, {SECS} s each"
    );
    let (admin_token, jwt_secret) = secrets(&env.state_dir)?;
    let result = perform(&RunRequest {
        spec: RunSpec {
            label: "honesty-harness".into(),
            targets: vec![url.clone()],
            endpoint: Endpoint::Trivial,
            waiting_room: None,
            model: LoadModel::Closed {
                vusers: CONNECTIONS,
                ramp_initial: CONNECTIONS,
                ramp_step: CONNECTIONS,
                ramp_interval_secs: 1,
                think_ms: 0,
            },
            duration_secs: Some(SECS),
            requests: None,
            warmup_secs: 2,
            users: UserMode::Unique,
            request_timeout_ms: 10_000,
            stop_error_ratio: 1.0,
            stop_zero_tps_secs: 15,
            threads: env.threads,
        },
        admin_url: url.clone(),
        admin_token,
        jwt_secret,
        stock: None,
        campaign: None,
        audit: false,
        audit_patience: Duration::from_secs(1),
        redis_url: None,
    })
    .await?;
    let wrk = std::process::Command::new("wrk")
        .args([
            "-t",
            &env.threads.max(1).to_string(),
            "-c",
            &CONNECTIONS.to_string(),
            "-d",
            &format!("{SECS}s"),
            &format!("{url}/healthz"),
        ])
        .output();
    let wrk_rps = match wrk {
        Ok(output) if output.status.success() => {
            wrk_requests_per_second(&String::from_utf8_lossy(&output.stdout))
        }
        _ => None,
    };
    Ok(Honesty {
        url,
        connections: CONNECTIONS,
        secs: SECS,
        harness_rps: result.summary.tps,
        wrk_rps,
    })
}

/// `Requests/sec: 12345.67` from wrk's output.
fn wrk_requests_per_second(output: &str) -> Option<f64> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A cell whose repeats' TPS vary more than this (coefficient of variation)
/// is flagged in the report.
const NOISY_CV: f64 = 0.10;

/// Standard deviation over mean (population), with two values or more.
fn coefficient_of_variation(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if mean <= 0.0 {
        return None;
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    Some(variance.sqrt() / mean)
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

/// The strategy of a run, and its waiting room if it ran behind one (such
/// runs are cells of their own).
fn strategy_of(r: &RunResult) -> String {
    let mut strategy = r.server.strategy.clone().unwrap_or_else(|| "?".into());
    // Spelled as in plans: the mode only when it is not the default.
    if let Some(mode) = r.server.lock_mode.as_deref()
        && mode != DEFAULT_LOCK_MODE
    {
        strategy.push('+');
        strategy.push_str(mode);
    }
    match r.spec.waiting_room {
        Some(room) => format!("{strategy}+room{}", room.admit_per_second),
        None => strategy,
    }
}

fn results_csv(results: &[RunResult]) -> String {
    let mut out = String::from(
        "label,strategy,instances,vusers,tps,peak_tps,mean_ms,executed,errors,p50_us,p90_us,p99_us,p999_us,client_cpu_percent,audit\n",
    );
    for r in results {
        let s = &r.summary;
        let _ = writeln!(
            out,
            "{},{},{},{},{:.1},{:.1},{:.3},{},{},{},{},{},{},{:.0},{}",
            r.label,
            strategy_of(r),
            r.spec.targets.len(),
            r.spec.model.concurrency(),
            s.tps,
            s.peak_tps,
            s.mean_ms,
            s.executed,
            s.errors,
            s.p50_us,
            s.p90_us,
            s.p99_us,
            s.p999_us,
            r.client.cpu_percent,
            if r.passed() { "pass" } else { "FAIL" }
        );
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// (instances, strategy) → (vusers, repeats) rows of one report table.
type Groups<'a> = BTreeMap<(usize, String), Vec<(u32, Vec<&'a RunResult>)>>;

/// (strategy, instances, vusers) → the repeats of that cell.
type Cells<'a> = BTreeMap<(String, usize, u32), Vec<&'a RunResult>>;

fn cells(results: &[RunResult]) -> Cells<'_> {
    let mut cells: Cells<'_> = BTreeMap::new();
    for r in results {
        let instances = r
            .label
            .split("-i")
            .nth(1)
            .and_then(|s| s.split('-').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(r.spec.targets.len());
        cells
            .entry((strategy_of(r), instances, r.spec.model.concurrency()))
            .or_default()
            .push(r);
    }
    cells
}

fn report(plan: &Plan, results: &[RunResult], honesty: &Honesty) -> String {
    let mut out = String::new();
    let machine = results.first().map(|r| r.machine.clone());
    let _ = writeln!(out, "# Experiment report\n");
    let _ = writeln!(
        out,
        "Date {}. Machine: {} cores, kernel {}. Plan: strategies {:?}, vusers {:?}, instances {:?}, {} repeat(s), {} s after a {} s warm-up, users {}, spread {}, broker {}.\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        machine.as_ref().map_or(0, |m| m.cores),
        machine.as_ref().map_or("?", |m| m.kernel.as_str()),
        plan.strategies,
        plan.vusers,
        plan.instances,
        plan.repeats,
        plan.duration_secs,
        plan.warmup_secs,
        plan.users.describe(),
        plan.spread,
        plan.broker,
    );
    if results.len() < plan.cells() {
        let _ = writeln!(
            out,
            "**Partial**: {} of {} cells so far (the charts come at the end); `experiment --resume <this directory>` runs the rest.\n",
            results.len(),
            plan.cells()
        );
    }
    let _ = writeln!(
        out,
        "Figures are medians over the repeats (min–max in brackets when there are several; the TPS spread column gives the coefficient of variation, flagged ⚠ over {:.0}%: such a cell's median is not to be trusted alone). TPS and mean time are over tests (expected business outcomes); peak TPS is the best 2 s window; p99 in ms. Seed rows are the published nGrinder figures (5-minute cells, peak = best single sample).\n",
        NOISY_CV * 100.0
    );
    let cells = cells(results);
    let mut groups: Groups<'_> = BTreeMap::new();
    for ((strategy, instances, vusers), runs) in cells {
        groups
            .entry((instances, strategy))
            .or_default()
            .push((vusers, runs));
    }
    for ((instances, strategy), rows) in &groups {
        let _ = writeln!(out, "## {strategy}, {instances} instances\n");
        let _ = writeln!(
            out,
            "| vuser | TPS | TPS spread | peak TPS | mean time | executed tests | errors | p99 | audit |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
        for (vusers, runs) in rows {
            let tps: Vec<f64> = runs.iter().map(|r| r.summary.tps).collect();
            let spread = if runs.len() > 1 {
                format!(
                    " ({:.0}–{:.0})",
                    tps.iter().copied().fold(f64::MAX, f64::min),
                    tps.iter().copied().fold(0.0, f64::max)
                )
            } else {
                String::new()
            };
            let passed = runs.iter().filter(|r| r.passed()).count();
            let variation = match coefficient_of_variation(&tps) {
                Some(cv) if cv > NOISY_CV => format!("CV {:.1}% ⚠", cv * 100.0),
                Some(cv) => format!("CV {:.1}%", cv * 100.0),
                None => "–".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {vusers} | {:.1}{spread} | {variation} | {:.0} | {:.2}ms | {:.0} | {:.0} | {:.1} | {passed}/{} pass |",
                median(tps.clone()),
                median(runs.iter().map(|r| r.summary.peak_tps).collect()),
                median(runs.iter().map(|r| r.summary.mean_ms).collect()),
                median(runs.iter().map(|r| r.summary.executed as f64).collect()),
                median(runs.iter().map(|r| r.summary.errors as f64).collect()),
                median(
                    runs.iter()
                        .map(|r| r.summary.p99_us as f64 / 1000.0)
                        .collect()
                ),
                runs.len(),
            );
        }
        for (vusers, _) in rows {
            if let Some(s) = seed::find(strategy, *instances as u32, *vusers) {
                let _ = writeln!(
                    out,
                    "| seed {} | {:.1} | – | {:.0} | {:.2}ms | {} | {} | – | – |",
                    s.vusers, s.tps, s.peak_tps, s.mean_ms, s.executed, s.errors
                );
            }
        }
        let _ = writeln!(out);
    }
    if results.iter().any(|r| r.room.is_some()) {
        let _ = writeln!(out, "{}", rooms_table(results));
    }
    let _ = writeln!(out, "{}", honesty.render());
    let _ = writeln!(
        out,
        "Charts: `tps-<strategy>-i<N>.png` (TPS over time), `tps-by-vusers-i<N>.png`, `p99-by-vusers-i<N>.png`. Every run's JSON and per-second CSV are under `runs/`."
    );
    out
}

/// The direct path and the waiting room side by side, cell by cell: issue
/// TPS and p99, status reads, waits, and what the backend's processes used.
fn rooms_table(results: &[RunResult]) -> String {
    let mut out = String::from(
        "## With and without a waiting room\n\n| strategy | instances | vusers | room (let in /s) | issue TPS | issue p99 ms | status reads /s | status p99 ms | wait p50 / p99 s | api CPU % | Redis CPU % | audit |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for ((strategy, instances, vusers), runs) in cells(results) {
        let m = |f: &dyn Fn(&RunResult) -> f64| median(runs.iter().map(|r| f(r)).collect());
        let cpu = |component: &str| {
            m(&|r| {
                r.processes
                    .as_ref()
                    .and_then(|p| p.cpu_percent.get(component).copied())
                    .unwrap_or(0.0)
            })
        };
        let room = runs[0]
            .spec
            .waiting_room
            .map_or("–".to_owned(), |r| r.admit_per_second.to_string());
        let reads = |r: &RunResult| {
            r.room.as_ref().map_or(0.0, |f| {
                f.status_reads as f64 / (r.summary.measured_secs.max(1.0))
            })
        };
        let room_cell = |f: &dyn Fn(&crate::load::RoomFigures) -> f64, unit: f64| {
            if runs[0].room.is_some() {
                format!("{:.1}", m(&|r| r.room.as_ref().map_or(0.0, f)) / unit)
            } else {
                "–".to_owned()
            }
        };
        let passed = runs.iter().filter(|r| r.passed()).count();
        let _ = writeln!(
            out,
            "| {} | {instances} | {vusers} | {room} | {:.1} | {:.1} | {} | {} | {} / {} | {:.0} | {:.0} | {passed}/{} pass |",
            strategy.split('+').next().unwrap_or_default(),
            m(&|r| r.summary.tps),
            m(&|r| r.summary.p99_us as f64 / 1000.0),
            if runs[0].room.is_some() {
                format!("{:.0}", m(&reads))
            } else {
                "–".to_owned()
            },
            room_cell(&|f| f.status_p99_us as f64, 1000.0),
            room_cell(&|f| f.wait_p50_ms as f64, 1000.0),
            room_cell(&|f| f.wait_p99_ms as f64, 1000.0),
            cpu("api"),
            cpu("redis"),
            runs.len(),
        );
    }
    out.push_str("\nWith a room, a test is a user's issue once let in (or the room reply that ended its wait: sold out); TPS is bounded by the rate let in, by design. Status p99 covers joins and reads, every reply included; the wait runs from the join to the reply that let the user in.\n");
    out
}

fn draw_charts(out: &Path, results: &[RunResult]) -> anyhow::Result<()> {
    let cells = cells(results);
    let instances: std::collections::BTreeSet<usize> = cells.keys().map(|k| k.1).collect();
    for &n in &instances {
        let mut tps: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut p99: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for ((strategy, i, vusers), runs) in &cells {
            if *i != n {
                continue;
            }
            let x = f64::from(*vusers);
            tps.entry(strategy.clone())
                .or_default()
                .push((x, median(runs.iter().map(|r| r.summary.tps).collect())));
            p99.entry(strategy.clone()).or_default().push((
                x,
                median(
                    runs.iter()
                        .map(|r| r.summary.p99_us as f64 / 1000.0)
                        .collect(),
                ),
            ));
        }
        let to_series = |m: BTreeMap<String, Vec<(f64, f64)>>| -> Vec<Series> {
            m.into_iter()
                .map(|(name, points)| Series { name, points })
                .collect()
        };
        let tps = to_series(tps);
        charts::lines(
            &out.join(format!("tps-by-vusers-i{n}.png")),
            &format!("TPS by vusers, {n} instances"),
            "vusers",
            "TPS",
            Scale::fitting(&tps),
            &tps,
        )?;
        let p99 = to_series(p99);
        charts::lines(
            &out.join(format!("p99-by-vusers-i{n}.png")),
            &format!("p99 by vusers, {n} instances"),
            "vusers",
            "p99 (ms)",
            Scale::fitting(&p99),
            &p99,
        )?;
        let strategies: std::collections::BTreeSet<&String> =
            cells.keys().filter(|k| k.1 == n).map(|k| &k.0).collect();
        for strategy in strategies {
            let series: Vec<Series> = cells
                .iter()
                .filter(|((s, i, _), _)| s == strategy && *i == n)
                .map(|((_, _, vusers), runs)| Series {
                    name: format!("{vusers} vusers"),
                    // The last sample covers only part of a second.
                    points: runs[0]
                        .samples
                        .iter()
                        .take(runs[0].samples.len().saturating_sub(1))
                        .map(|s| (s.t as f64, s.tps))
                        .collect(),
                })
                .collect();
            charts::lines(
                &out.join(format!("tps-{strategy}-i{n}.png")),
                &format!("TPS over time, {strategy}, {n} instances"),
                "seconds (negative: warm-up)",
                "TPS",
                Scale::fitting(&series),
                &series,
            )?;
        }
    }
    Ok(())
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
    fn wrk_output_is_read_and_judged() {
        let output = "Running 10s test @ http://127.0.0.1:8081/healthz\n  2 threads and 100 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     3.10ms    1.20ms  30.00ms   80.00%\n  250000 requests in 10.00s, 20.00MB read\nRequests/sec:  25000.50\nTransfer/sec:      2.00MB\n";
        assert_eq!(wrk_requests_per_second(output), Some(25_000.5));
        assert_eq!(wrk_requests_per_second("nothing"), None);
        let honesty = |harness_rps, wrk_rps| Honesty {
            url: "http://127.0.0.1:8081".into(),
            connections: 100,
            secs: 10,
            harness_rps,
            wrk_rps,
        };
        assert_eq!(honesty(23_000.0, Some(25_000.0)).passed(), Some(true));
        assert_eq!(honesty(20_000.0, Some(25_000.0)).passed(), Some(false));
        assert_eq!(honesty(20_000.0, None).passed(), None);
        assert!(
            honesty(20_000.0, Some(25_000.0))
                .render()
                .contains("NOT within")
        );
    }

    #[test]
    fn the_spread_is_the_coefficient_of_variation() {
        assert_eq!(coefficient_of_variation(&[100.0]), None);
        assert_eq!(coefficient_of_variation(&[100.0, 100.0]), Some(0.0));
        // Mean 100, population standard deviation 20.
        let cv = coefficient_of_variation(&[80.0, 120.0]).unwrap();
        assert!((cv - 0.2).abs() < 1e-12, "{cv}");
        assert!(cv > NOISY_CV);
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
    fn a_report_of_part_of_the_grid_says_so() {
        let plan: Plan = toml::from_str(
            "strategies = [\"sync\"]\nvusers = [100, 1000]\ninstances = [3]\nrepeats = 3\nduration_secs = 60\n",
        )
        .unwrap();
        let honesty = Honesty {
            url: "http://127.0.0.1:8081".into(),
            connections: 100,
            secs: 10,
            harness_rps: 1.0,
            wrk_rps: None,
        };
        let text = report(&plan, &[], &honesty);
        assert!(text.contains("**Partial**: 0 of 6 cells"), "{text}");
    }
}
