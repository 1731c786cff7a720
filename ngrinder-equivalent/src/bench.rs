//! `bench`: the performance plan of docs/PERFORMANCE.md in one go, on the
//! local stack (3 api instances, strategy `sync`, unique users, stock that
//! never sells out, the worker draining meanwhile):
//! - the issue path at each vuser level, repeated, with the vusers spread
//!   over the instances by the client, each run audited, on the plan's
//!   first broker (Apache Kafka unless told otherwise);
//! - at the same levels, side by side: the trivial endpoint spread the same
//!   way, the trivial endpoint through HAProxy, and the issue path through
//!   HAProxy — the ratios that stay meaningful on a shared, noisy machine;
//! - end-to-end lag (request to committed row) at a fixed open-model rate,
//!   from the worker's histogram;
//! - the issue path and the lag again on each further broker of the plan
//!   (`--brokers kafka,tansu-memory,tansu`), side by side;
//! - for every run, each component's CPU and largest resident set
//!   ([`procs`](crate::procs)).
//!
//! It writes `bench.json` (everything) and `bench.md` (the tables, the
//! ratios and each target's verdict) into one directory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::experiment::{Environment, stack_up};
use crate::procs::{self, ProcUse};
use crate::report::{Machine, RunResult};
use crate::run::{RunRequest, perform};
use crate::spec::{Endpoint, LoadModel, RunSpec};
use crate::users::UserMode;

const INSTANCES: u32 = 3;
const WORKER_METRICS: &str = "http://127.0.0.1:9100/metrics";
const BALANCER: &str = "http://127.0.0.1:8080";

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
    /// `scripts/stack --broker` kinds; the first carries the whole plan, the
    /// others the issue path and the lag, side by side.
    #[serde(default = "default_brokers")]
    pub brokers: Vec<String>,
}

fn default_brokers() -> Vec<String> {
    vec!["kafka".into()]
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
            brokers: default_brokers(),
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
            brokers: default_brokers(),
        }
    }
}

/// One run with what the stack used meanwhile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub kind: String,
    pub vusers: u32,
    pub result: RunResult,
    pub procs: ProcUse,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LagResult {
    pub broker: String,
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
    /// One per broker, in the plan's order.
    pub lags: Vec<LagResult>,
}

impl BenchResult {
    fn of(&self, kind: &str, vusers: u32) -> Vec<&Measured> {
        self.runs
            .iter()
            .filter(|m| m.kind == kind && m.vusers == vusers)
            .collect()
    }

    /// Median TPS of the runs of one kind and level.
    pub fn median_tps(&self, kind: &str, vusers: u32) -> Option<f64> {
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
    fn median_run(&self, kind: &str, vusers: u32) -> Option<&Measured> {
        let mut runs = self.of(kind, vusers);
        runs.sort_by(|a, b| a.result.summary.tps.total_cmp(&b.result.summary.tps));
        runs.get(runs.len() / 2).copied()
    }
}

/// The kinds of run, in the order they are made at each level.
pub const ISSUE: &str = "issue, client-side";
pub const TRIVIAL: &str = "trivial, client-side";
pub const TRIVIAL_LB: &str = "trivial, HAProxy";
pub const ISSUE_LB: &str = "issue, HAProxy";
/// The issue path, client-side, on a further broker of the plan.
pub fn issue_on(broker: &str) -> String {
    format!("{ISSUE}, broker {broker}")
}

/// Whether a broker kind needs emptying before each run: Tansu's memory
/// storage slows as it fills (its fetches scan every stored batch).
fn needs_fresh(broker: &str) -> bool {
    broker == "tansu-memory"
}

fn instance_urls() -> Vec<String> {
    (0..INSTANCES)
        .map(|i| format!("http://127.0.0.1:{}", 8081 + i))
        .collect()
}

async fn measured(
    env: &Environment,
    plan: &BenchPlan,
    kind: &str,
    vusers: u32,
    label: String,
    model: Option<LoadModel>,
) -> anyhow::Result<Measured> {
    let (admin_token, jwt_secret) = crate::experiment::secrets(&env.state_dir)?;
    let (targets, endpoint) = match kind {
        // ISSUE, or ISSUE on a further broker (`issue_on`).
        k if k.starts_with(ISSUE) => (instance_urls(), Endpoint::Issue),
        TRIVIAL => (instance_urls(), Endpoint::Trivial),
        TRIVIAL_LB => (vec![BALANCER.to_owned()], Endpoint::Trivial),
        ISSUE_LB => (vec![BALANCER.to_owned()], Endpoint::Issue),
        other => anyhow::bail!("unknown run kind {other}"),
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
        admin_url: instance_urls()[0].clone(),
        admin_token,
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
        let _ = crate::experiment::delete_campaign_keys(&env.redis_url, &result.campaign_id).await;
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
        kind: kind.to_owned(),
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
    let main = plan
        .brokers
        .first()
        .ok_or_else(|| anyhow::anyhow!("the plan names no broker"))?;
    let fresh = |env: &Environment| stack_up(env, INSTANCES, "sync", main, needs_fresh(main));
    for &vusers in &plan.vusers {
        for r in 1..=plan.repeats {
            eprintln!("== issue at {vusers} vusers, repeat {r}");
            fresh(env)?;
            runs.push(
                measured(
                    env,
                    plan,
                    ISSUE,
                    vusers,
                    format!("issue-v{vusers}-r{r}"),
                    None,
                )
                .await?,
            );
        }
        eprintln!("== baselines at {vusers} vusers");
        for kind in [TRIVIAL, TRIVIAL_LB, ISSUE_LB] {
            fresh(env)?;
            let label = format!("{}-v{vusers}", kind.replace([',', ' '], ""));
            runs.push(measured(env, plan, kind, vusers, label, None).await?);
        }
    }
    let mut lags = vec![lag(env, plan, main).await?];
    for broker in plan.brokers.iter().skip(1) {
        eprintln!("== broker {broker}");
        for &vusers in &plan.vusers {
            stack_up(env, INSTANCES, "sync", broker, needs_fresh(broker))?;
            let kind = issue_on(broker);
            let label = format!("{broker}-v{vusers}");
            runs.push(measured(env, plan, &kind, vusers, label, None).await?);
        }
        lags.push(lag(env, plan, broker).await?);
    }
    let passed = runs.iter().all(|m| m.result.passed()) && lags.iter().all(|l| l.passed);

    let result = BenchResult {
        plan: plan.clone(),
        machine: Machine::here(),
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        runs,
        lags,
    };
    std::fs::write(out.join("bench.json"), serde_json::to_vec_pretty(&result)?)?;
    std::fs::write(out.join("bench.md"), render(&result))?;
    Ok(passed)
}

/// End-to-end lag at the plan's open-model rate on one broker.
async fn lag(env: &Environment, plan: &BenchPlan, broker: &str) -> anyhow::Result<LagResult> {
    eprintln!(
        "== end-to-end lag at {} requests/s ({broker})",
        plan.lag_rate
    );
    stack_up(env, INSTANCES, "sync", broker, needs_fresh(broker))?;
    let before = scrape_lag().await.unwrap_or_default();
    let lag_plan = BenchPlan {
        duration_secs: plan.lag_secs,
        ..plan.clone()
    };
    let open = LoadModel::Open {
        rate: plan.lag_rate,
        max_connections: 1_000,
    };
    let label = format!("lag-{broker}");
    let run = measured(env, &lag_plan, ISSUE, 0, label, Some(open)).await?;
    let after = scrape_lag().await.unwrap_or_default();
    let delta = after.minus(&before);
    Ok(LagResult {
        broker: broker.to_owned(),
        rate: plan.lag_rate,
        tps: run.result.summary.tps,
        messages: delta.count(),
        p50_secs: delta.quantile(0.50),
        p99_secs: delta.quantile(0.99),
        passed: run.result.passed(),
        procs: run.procs,
    })
}

/// A cumulative Prometheus histogram: (upper bound, count) pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram(Vec<(f64, f64)>);

impl Histogram {
    /// The `<name>_bucket{le="…"}` lines of a scrape.
    pub fn parse(text: &str, name: &str) -> Self {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|rest| {
                let (le, value) = rest.split_once("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, value.trim().parse().ok()?))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self(buckets)
    }

    pub fn minus(&self, earlier: &Self) -> Self {
        Self(
            self.0
                .iter()
                .map(|&(le, n)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(l, _)| *l == le)
                        .map_or(0.0, |(_, c)| *c);
                    (le, n - before)
                })
                .collect(),
        )
    }

    pub fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |(_, n)| *n)
    }

    /// The q-quantile, interpolated linearly inside its bucket (as
    /// Prometheus's `histogram_quantile`); `None` without observations or
    /// when it falls in the `+Inf` bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, n) in &self.0 {
            if n >= rank {
                if le.is_infinite() {
                    return None;
                }
                let (low_le, low_n) = lower;
                let width = n - low_n;
                let within = if width > 0.0 {
                    (rank - low_n) / width
                } else {
                    1.0
                };
                return Some(low_le + (le - low_le) * within);
            }
            lower = (le, n);
        }
        None
    }
}

async fn scrape_lag() -> anyhow::Result<Histogram> {
    let text = reqwest::get(WORKER_METRICS).await?.text().await?;
    Ok(Histogram::parse(&text, "worker_end_to_end_lag_seconds"))
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

fn cpu_split(p: &ProcUse) -> String {
    let mut parts: Vec<(&String, &f64)> = p.cpu_percent.iter().collect();
    parts.sort_by(|a, b| b.1.total_cmp(a.1));
    parts
        .iter()
        .map(|(c, v)| format!("{c} {v:.0}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Markdown report: the targets' table (docs/PERFORMANCE.md), the ratios, the lag, the
/// memory, and where the CPU went.
pub fn render(r: &BenchResult) -> String {
    let mut out = String::new();
    let p = &r.plan;
    let _ = writeln!(
        out,
        "# Bench\n\n{} on {} cores (kernel {}). Strategy sync, {INSTANCES} api instances, \
         unique users, stock that never sells out, the worker draining meanwhile. \
         {} s measured after a {} s warm-up, median of {} repeat(s), on broker {} \
         (Tansu's memory storage is emptied before each run).\n",
        r.date,
        r.machine.cores,
        r.machine.kernel,
        p.duration_secs,
        p.warmup_secs,
        p.repeats,
        p.brokers.first().map_or("?", String::as_str)
    );
    let _ = writeln!(
        out,
        "| vusers | TPS (median) | runs | p99 | errors | audit |\n|---|---|---|---|---|---|"
    );
    for &v in &p.vusers {
        let runs = r.of(ISSUE, v);
        let Some(m) = r.median_run(ISSUE, v) else {
            continue;
        };
        let tps: Vec<String> = runs
            .iter()
            .map(|m| format!("{:.0}", m.result.summary.tps))
            .collect();
        let errors: u64 = runs.iter().map(|m| m.result.summary.errors).sum();
        let audits = if runs.iter().all(|m| m.result.passed()) {
            "pass"
        } else {
            "FAIL"
        };
        let _ = writeln!(
            out,
            "| {v} | {:.0} | {} | {} | {errors} | {audits} |",
            m.result.summary.tps,
            tps.join(" / "),
            ms(m.result.summary.p99_us)
        );
    }

    let _ = writeln!(
        out,
        "\nSide by side at each level (one run each):\n\n| vusers | {ISSUE} | {TRIVIAL} | issue / trivial | {ISSUE_LB} | {TRIVIAL_LB} | issue / trivial |\n|---|---|---|---|---|---|---|"
    );
    let tps = |kind: &str, v: u32| r.median_tps(kind, v);
    let fmt = |x: Option<f64>| x.map_or("-".to_owned(), |t| format!("{t:.0}"));
    let audited = |kind: &str, v: u32| {
        let runs = r.of(kind, v);
        let cell = fmt(tps(kind, v));
        if runs.iter().all(|m| m.result.passed()) {
            cell
        } else {
            format!("{cell} (audit FAIL)")
        }
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b * 100.0),
        _ => None,
    };
    let pct = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.0}%"));
    let mut direct_ratios = Vec::new();
    let mut lb_ratios = Vec::new();
    for &v in &p.vusers {
        let (i, t, il, tl) = (
            tps(ISSUE, v),
            tps(TRIVIAL, v),
            tps(ISSUE_LB, v),
            tps(TRIVIAL_LB, v),
        );
        direct_ratios.extend(ratio(i, t));
        lb_ratios.extend(ratio(il, tl));
        let _ = writeln!(
            out,
            "| {v} | {} | {} | {} | {} | {} | {} |",
            audited(ISSUE, v),
            fmt(t),
            pct(ratio(i, t)),
            audited(ISSUE_LB, v),
            fmt(tl),
            pct(ratio(il, tl)),
        );
    }

    if p.brokers.len() > 1 {
        brokers_side_by_side(&mut out, r);
    }

    let _ = writeln!(
        out,
        "\n## Targets\n\n| target | measured | verdict |\n|---|---|---|"
    );
    let targets = [
        (100, 30_000.0, 100_000),
        (1_000, 27_000.0, 100_000),
        (2_000, 25_000.0, 150_000),
    ];
    for (v, want_tps, want_p99_us) in targets {
        if let Some(m) = r.median_run(ISSUE, v) {
            let s = &m.result.summary;
            let errors: u64 = r.of(ISSUE, v).iter().map(|m| m.result.summary.errors).sum();
            let ok = s.tps >= want_tps && s.p99_us < want_p99_us && errors == 0;
            let _ = writeln!(
                out,
                "| {v} vusers: ≥ {want_tps:.0} TPS, p99 < {}, 0 errors, audit pass | {:.0} TPS, p99 {}, {errors} errors | {} |",
                ms(want_p99_us),
                s.tps,
                ms(s.p99_us),
                verdict(ok && r.of(ISSUE, v).iter().all(|m| m.result.passed()))
            );
        }
    }
    let worst = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    if !lb_ratios.is_empty() {
        let w = worst(&lb_ratios);
        let _ = writeln!(
            out,
            "| through HAProxy: issue ≥ 50% of trivial | {w:.0}% (lowest level) | {} |",
            verdict(w >= 50.0)
        );
    }
    if !direct_ratios.is_empty() {
        let w = worst(&direct_ratios);
        let _ = writeln!(
            out,
            "| direct: issue ≥ 40% of trivial | {w:.0}% (lowest level) | {} |",
            verdict(w >= 40.0)
        );
    }
    let (lo, hi) = (p.vusers.first().copied(), p.vusers.last().copied());
    if let (Some(lo), Some(hi)) = (lo, hi)
        && lo != hi
        && let Some(ratio) = ratio(tps(ISSUE, hi), tps(ISSUE, lo))
    {
        let _ = writeln!(
            out,
            "| TPS at {hi} vusers ≥ 85% of TPS at {lo} | {ratio:.0}% | {} |",
            verdict(ratio >= 85.0)
        );
    }
    if let Some(lag) = r.lags.first() {
        let p99 = lag.p99_secs;
        let _ = writeln!(
            out,
            "| end-to-end lag p99 < 1 s at {} TPS | {} at {:.0} TPS ({:.0} rows) | {} |",
            lag.rate,
            p99.map_or("above the last bucket".to_owned(), |s| format!(
                "{:.0} ms",
                s * 1000.0
            )),
            lag.tps,
            lag.messages,
            verdict(p99.is_some_and(|s| s < 1.0))
        );
    }
    if let Some(hi) = hi
        && let Some(m) = r.median_run(ISSUE, hi)
    {
        let api = m.procs.max_rss_mib.get("api").copied().unwrap_or(0.0);
        let worker = m.procs.max_rss_mib.get("worker").copied().unwrap_or(0.0);
        let _ = writeln!(
            out,
            "| RSS at {hi} vusers: api < 100 MB, worker < 150 MB | api {api:.0} MiB, worker {worker:.0} MiB | {} |",
            verdict(api < 100.0 && worker < 150.0)
        );
    }

    let _ = writeln!(
        out,
        "\n## Where the CPU goes (percent of one core; the machine has {})\n\n| run | TPS | CPU by component |\n|---|---|---|",
        r.machine.cores * 100
    );
    let mut kinds: BTreeMap<(u32, &str), &Measured> = BTreeMap::new();
    for m in &r.runs {
        if m.kind != ISSUE {
            kinds.entry((m.vusers, m.kind.as_str())).or_insert(m);
        }
    }
    for &v in &p.vusers {
        if let Some(m) = r.median_run(ISSUE, v) {
            let _ = writeln!(
                out,
                "| {ISSUE}, {v} vusers | {:.0} | {} |",
                m.result.summary.tps,
                cpu_split(&m.procs)
            );
        }
        for ((_, kind), m) in kinds.range((v, "")..(v + 1, "")) {
            let _ = writeln!(
                out,
                "| {kind}, {v} vusers | {:.0} | {} |",
                m.result.summary.tps,
                cpu_split(&m.procs)
            );
        }
    }
    for lag in &r.lags {
        let _ = writeln!(
            out,
            "| open model at {} requests/s, broker {} | {:.0} | {} |",
            lag.rate,
            lag.broker,
            lag.tps,
            cpu_split(&lag.procs)
        );
    }
    out
}

/// The issue path and the lag on every broker of the plan, one run each:
/// TPS and p99 by level, the broker's CPU and largest RSS at the highest
/// level, the lag at the open-model rate.
fn brokers_side_by_side(out: &mut String, r: &BenchResult) {
    let p = &r.plan;
    let levels: Vec<String> = p.vusers.iter().map(|v| format!("{v} vusers")).collect();
    let _ = writeln!(
        out,
        "\nBrokers side by side (the first carries the plan; one run each on the others):\n\n\
         | broker | {} | broker CPU, RSS at {} vusers | lag p50 / p99 at {}/s (TPS) |\n|---|{}---|---|",
        levels.join(" | "),
        p.vusers.last().copied().unwrap_or(0),
        p.lag_rate,
        "---|".repeat(levels.len()),
    );
    for (i, broker) in p.brokers.iter().enumerate() {
        let kind = if i == 0 {
            ISSUE.to_owned()
        } else {
            issue_on(broker)
        };
        let cells: Vec<String> = p
            .vusers
            .iter()
            .map(|&v| match r.median_run(&kind, v) {
                Some(m) => format!(
                    "{:.0} TPS, p99 {}{}",
                    m.result.summary.tps,
                    ms(m.result.summary.p99_us),
                    if m.result.passed() {
                        ""
                    } else {
                        " (audit FAIL)"
                    }
                ),
                None => "-".to_owned(),
            })
            .collect();
        let top = p
            .vusers
            .last()
            .and_then(|&v| r.median_run(&kind, v))
            .map_or("-".to_owned(), |m| {
                format!(
                    "{:.0}%, {:.0} MiB",
                    m.procs.cpu_percent.get("broker").copied().unwrap_or(0.0),
                    m.procs.max_rss_mib.get("broker").copied().unwrap_or(0.0)
                )
            });
        let lag = r
            .lags
            .iter()
            .find(|l| &l.broker == broker)
            .map_or("-".to_owned(), |l| {
                let f =
                    |x: Option<f64>| x.map_or("-".to_owned(), |s| format!("{:.0} ms", s * 1000.0));
                format!("{} / {} ({:.0})", f(l.p50_secs), f(l.p99_secs), l.tps)
            });
        let _ = writeln!(out, "| {broker} | {} | {top} | {lag} |", cells.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "# TYPE worker_end_to_end_lag_seconds histogram\n\
        worker_end_to_end_lag_seconds_bucket{le=\"0.1\"} 10\n\
        worker_end_to_end_lag_seconds_bucket{le=\"0.2\"} 90\n\
        worker_end_to_end_lag_seconds_bucket{le=\"0.4\"} 100\n\
        worker_end_to_end_lag_seconds_bucket{le=\"+Inf\"} 100\n\
        worker_end_to_end_lag_seconds_sum 15\n\
        worker_end_to_end_lag_seconds_count 100\n";

    #[test]
    fn histogram_quantiles_interpolate_inside_the_bucket() {
        let h = Histogram::parse(SCRAPE, "worker_end_to_end_lag_seconds");
        assert_eq!(h.count(), 100.0);
        // Rank 50 of 100 lies half-way through the (0.1, 0.2] bucket.
        let p50 = h.quantile(0.5).unwrap();
        assert!((p50 - 0.15).abs() < 1e-9, "{p50}");
        // Rank 99 lies 90% of the way through (0.2, 0.4].
        let p99 = h.quantile(0.99).unwrap();
        assert!((p99 - 0.38).abs() < 1e-9, "{p99}");
        assert_eq!(Histogram::default().quantile(0.99), None);
    }

    #[test]
    fn the_delta_of_two_scrapes_counts_only_what_happened_between() {
        let before = Histogram::parse(SCRAPE, "worker_end_to_end_lag_seconds");
        let later = SCRAPE
            .replace("} 100\n", "} 200\n")
            .replace("} 90\n", "} 190\n");
        let after = Histogram::parse(&later, "worker_end_to_end_lag_seconds");
        let delta = after.minus(&before);
        assert_eq!(delta.count(), 100.0);
        // All 100 new observations fell in (0.1, 0.2].
        assert!(delta.quantile(0.99).unwrap() <= 0.2);
    }
}
