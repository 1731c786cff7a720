//! `bench`: the performance plan of docs/PERFORMANCE.md in one go, on the
//! local stack (3 api instances, strategy `sync`, unique users, stock that
//! never sells out, the worker draining meanwhile):
//! - the issue path at each vuser level, repeated, with the vusers spread
//!   over the instances by the client, each run audited;
//! - at the same levels, side by side: the trivial endpoint spread the same
//!   way, the trivial endpoint through HAProxy, and the issue path through
//!   HAProxy — the ratios that stay meaningful on a shared, noisy machine;
//! - end-to-end lag (request to committed row) at a fixed open-model rate,
//!   from the worker's histogram;
//! - for every run, each component's CPU and largest resident set
//!   ([`procs`](crate::procs)).
//!
//! It writes `bench.json` (everything) and `bench.md` (the tables, the
//! ratios and each target's verdict) into one directory.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::experiment::{Environment, stack_up};
use crate::procs::{self, ProcUse};
use crate::report::{Machine, RunResult};
use crate::run::{RunRequest, perform};
use crate::scrape::{Histogram, Scrape};

mod render;
use crate::spec::{Endpoint, LoadModel, RunSpec};
use crate::users::UserMode;
pub use render::render;

const INSTANCES: u32 = 3;

/// What the bench runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchPlan {
    pub vusers: Vec<u32>,
    pub repeats: u32,
    pub duration_secs: u64,
    pub warmup_secs: u64,
    /// Open-model rate of the end-to-end lag run, and its length.
    pub lag_rate: u64,
    pub lag_secs: u64,
}

impl BenchPlan {
    /// The performance plan's runs: 60 s after a 10 s warm-up, median of 3.
    pub fn full() -> Self {
        Self {
            vusers: vec![100, 1_000, 2_000],
            repeats: 3,
            duration_secs: 60,
            warmup_secs: 10,
            lag_rate: 10_000,
            lag_secs: 60,
        }
    }

    /// A few minutes: one repeat of shorter runs.
    pub fn quick() -> Self {
        Self {
            vusers: vec![100, 1_000],
            repeats: 1,
            duration_secs: 15,
            warmup_secs: 5,
            lag_rate: 10_000,
            lag_secs: 15,
        }
    }
}

/// One run with what the stack used meanwhile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub kind: RunKind,
    pub vusers: u32,
    pub result: RunResult,
    pub procs: ProcUse,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LagResult {
    pub rate: u64,
    pub tps: f64,
    pub messages: f64,
    pub p50_secs: Option<f64>,
    pub p99_secs: Option<f64>,
    /// The run's audit passed.
    pub passed: bool,
    pub procs: ProcUse,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    pub plan: BenchPlan,
    pub machine: Machine,
    pub date: String,
    pub runs: Vec<Measured>,
    pub lag: LagResult,
}

impl BenchResult {
    fn of(&self, kind: &RunKind, vusers: u32) -> Vec<&Measured> {
        self.runs
            .iter()
            .filter(|m| m.kind == *kind && m.vusers == vusers)
            .collect()
    }

    /// Median TPS of the runs of one kind and level.
    pub fn median_tps(&self, kind: &RunKind, vusers: u32) -> Option<f64> {
        let mut v: Vec<f64> = self
            .of(kind, vusers)
            .iter()
            .map(|m| m.result.summary.tps)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    }

    /// The run of median TPS (its p99 and CPU split are the ones reported).
    fn median_run(&self, kind: &RunKind, vusers: u32) -> Option<&Measured> {
        let mut runs = self.of(kind, vusers);
        runs.sort_by(|a, b| a.result.summary.tps.total_cmp(&b.result.summary.tps));
        runs.get(runs.len() / 2).copied()
    }
}

/// The kinds of run, in the order they are made at each level.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// The issue path, the vusers spread over the instances by the client.
    Issue,
    /// The trivial endpoint, spread the same way.
    Trivial,
    /// The trivial endpoint through HAProxy.
    TrivialBalanced,
    /// The issue path through HAProxy.
    IssueBalanced,
}

impl RunKind {
    /// The baselines run beside the issue path at each level.
    const BASELINES: [Self; 3] = [Self::Trivial, Self::TrivialBalanced, Self::IssueBalanced];

    fn endpoint(&self) -> Endpoint {
        match self {
            Self::Issue | Self::IssueBalanced => Endpoint::Issue,
            Self::Trivial | Self::TrivialBalanced => Endpoint::Trivial,
        }
    }

    /// Through HAProxy rather than spread by the client.
    fn balanced(&self) -> bool {
        matches!(self, Self::TrivialBalanced | Self::IssueBalanced)
    }

    /// A label fit for a file name.
    fn slug(&self) -> String {
        match self {
            Self::Issue => "issue".into(),
            Self::Trivial => "trivial".into(),
            Self::TrivialBalanced => "trivial-haproxy".into(),
            Self::IssueBalanced => "issue-haproxy".into(),
        }
    }
}

impl std::fmt::Display for RunKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Issue => f.write_str("issue, client-side"),
            Self::Trivial => f.write_str("trivial, client-side"),
            Self::TrivialBalanced => f.write_str("trivial, HAProxy"),
            Self::IssueBalanced => f.write_str("issue, HAProxy"),
        }
    }
}

async fn measured(
    env: &Environment,
    plan: &BenchPlan,
    kind: RunKind,
    vusers: u32,
    label: String,
    model: Option<LoadModel>,
) -> anyhow::Result<Measured> {
    let (admin_token, jwt_secret) = crate::experiment::secrets(&env.state_dir)?;
    let endpoint = kind.endpoint();
    let targets = if kind.balanced() {
        vec![env.ports.balancer_url()]
    } else {
        env.ports.instance_urls(INSTANCES)
    };
    let spec = RunSpec {
        waiting_room: None,
        label,
        targets,
        endpoint,
        model: model.unwrap_or(LoadModel::Closed {
            vusers,
            ramp_initial: vusers,
            ramp_step: vusers,
            ramp_interval_secs: 1,
            think_ms: 0,
        }),
        duration_secs: Some(plan.duration_secs),
        requests: None,
        warmup_secs: plan.warmup_secs,
        users: UserMode::Unique,
        request_timeout_ms: 10_000,
        stop_error_ratio: 1.0,
        stop_zero_tps_secs: 15,
        threads: env.threads,
    };
    let stop = CancellationToken::new();
    let sampler = tokio::spawn(procs::sample(
        stop.clone(),
        Duration::from_secs(plan.warmup_secs),
        Duration::from_secs(plan.duration_secs),
    ));
    let result = perform(&RunRequest {
        spec,
        admin_url: env.ports.instance_url(0),
        ops_url: Some(env.ports.instance_ops_url(0)),
        admin_token: admin_token.clone(),
        jwt_secret,
        stock: None,
        campaign: None,
        audit: endpoint == Endpoint::Issue,
        audit_patience: Duration::from_secs(120),
        redis_url: None,
    })
    .await;
    stop.cancel();
    let procs = sampler.await.unwrap_or_default();
    let result = result?;
    if endpoint == Endpoint::Issue {
        crate::experiment::archive_campaign(&env.ports.instance_url(0), &admin_token, &result)
            .await;
    }
    eprintln!(
        "   {kind} at {vusers}: TPS {:.0}, p99 {:.1} ms, errors {}, audit {}",
        result.summary.tps,
        result.summary.p99_us as f64 / 1000.0,
        result.summary.errors,
        match &result.audit {
            Some(a) if a.passed => "pass",
            Some(_) => "FAIL",
            None => "-",
        }
    );
    Ok(Measured {
        kind,
        vusers,
        result,
        procs,
    })
}

/// Runs the plan; writes `bench.json` and `bench.md` into `out`. Returns
/// whether every audit passed.
pub async fn run(plan: &BenchPlan, env: &Environment, out: &Path) -> anyhow::Result<bool> {
    std::fs::create_dir_all(out)?;
    let mut runs = Vec::new();
    let fresh = |env: &Environment| stack_up(env, INSTANCES, "sync");
    for &vusers in &plan.vusers {
        for r in 1..=plan.repeats {
            eprintln!("== issue at {vusers} vusers, repeat {r}");
            fresh(env)?;
            runs.push(
                measured(
                    env,
                    plan,
                    RunKind::Issue,
                    vusers,
                    format!("issue-v{vusers}-r{r}"),
                    None,
                )
                .await?,
            );
        }
        eprintln!("== baselines at {vusers} vusers");
        for kind in RunKind::BASELINES {
            fresh(env)?;
            let label = format!("{}-v{vusers}", kind.slug());
            runs.push(measured(env, plan, kind, vusers, label, None).await?);
        }
    }
    let lag = lag(env, plan).await?;
    let passed = runs.iter().all(|m| m.result.passed()) && lag.passed;

    let result = BenchResult {
        plan: plan.clone(),
        machine: Machine::here(),
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        runs,
        lag,
    };
    std::fs::write(out.join("bench.json"), serde_json::to_vec_pretty(&result)?)?;
    std::fs::write(out.join("bench.md"), render(&result))?;
    Ok(passed)
}

/// End-to-end lag at the plan's open-model rate.
async fn lag(env: &Environment, plan: &BenchPlan) -> anyhow::Result<LagResult> {
    eprintln!("== end-to-end lag at {} requests/s", plan.lag_rate);
    stack_up(env, INSTANCES, "sync")?;
    let before = scrape_lag(env).await.unwrap_or_default();
    let lag_plan = BenchPlan {
        duration_secs: plan.lag_secs,
        ..plan.clone()
    };
    let open = LoadModel::Open {
        rate: plan.lag_rate,
        max_connections: 1_000,
    };
    let label = "lag".to_owned();
    let run = measured(env, &lag_plan, RunKind::Issue, 0, label, Some(open)).await?;
    let after = scrape_lag(env).await.unwrap_or_default();
    let delta = after.minus(&before);
    Ok(LagResult {
        rate: plan.lag_rate,
        tps: run.result.summary.tps,
        messages: delta.count(),
        p50_secs: delta.quantile(0.50),
        p99_secs: delta.quantile(0.99),
        passed: run.result.passed(),
        procs: run.procs,
    })
}

async fn scrape_lag(env: &Environment) -> anyhow::Result<Histogram> {
    let text = reqwest::get(env.ports.worker_metrics_url())
        .await?
        .text()
        .await?;
    Ok(Scrape::parse(&text).histogram("worker_end_to_end_lag_seconds"))
}
