//! What every fault uses: the figures to pick (CI or full), the load it
//! offers, the audit after it, and the report it prints.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::settings::LockMode;
use ngrinder_equivalent::audit::{self, AuditReport};
use ngrinder_equivalent::load::{self, RunOutput};
use ngrinder_equivalent::spec::{Endpoint, LoadModel, RunSpec};
use ngrinder_equivalent::stats::ErrorKind;
use ngrinder_equivalent::users::UserMode;
use serde::Serialize;
use serde_json::Value;

use crate::cell::Cell;

pub fn full() -> bool {
    std::env::var("COUPON_FAULTS").as_deref() == Ok("full")
}

/// The strategies the request-path faults run under: every strategy, the
/// lock strategies in both lock modes (`distributed-lock+naive`: the mode
/// after a `+`; none: the default, `combining`). `COUPON_FAULTS_STRATEGIES`
/// (comma-separated, same spelling) narrows them.
pub fn strategies() -> Vec<&'static str> {
    const ALL: [&str; 6] = [
        "sync",
        "async-queue",
        "distributed-lock",
        "distributed-lock+naive",
        "fair-lock",
        "fair-lock+naive",
    ];
    match std::env::var("COUPON_FAULTS_STRATEGIES") {
        Ok(list) if !list.trim().is_empty() => {
            let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
            for w in &wanted {
                assert!(
                    ALL.contains(w),
                    "unknown strategy {w} in COUPON_FAULTS_STRATEGIES"
                );
            }
            ALL.into_iter().filter(|s| wanted.contains(s)).collect()
        }
        _ => ALL.to_vec(),
    }
}

/// A cell's environment for one of [`strategies`], with `more`.
pub fn strategy_env(
    variant: &'static str,
    more: &[(&'static str, &'static str)],
) -> Vec<(&'static str, &'static str)> {
    let (strategy, mode) = variant
        .split_once('+')
        .unwrap_or((variant, LockMode::default().as_str()));
    let mut env = vec![("APP_STRATEGY", strategy), ("APP_LOCK__MODE", mode)];
    env.extend_from_slice(more);
    env
}

/// The CI figure, or the full one.
pub fn pick(ci: u64, full_run: u64) -> u64 {
    if full() { full_run } else { ci }
}

pub fn spec(
    targets: Vec<String>,
    vusers: u32,
    requests: Option<u64>,
    duration: Option<u64>,
    users: UserMode,
) -> RunSpec {
    RunSpec {
        label: "fault".into(),
        targets,
        endpoint: Endpoint::Issue,
        waiting_room: None,
        model: LoadModel::Closed {
            vusers,
            ramp_initial: vusers,
            ramp_step: vusers,
            ramp_interval_secs: 1,
            think_ms: 0,
        },
        duration_secs: duration,
        requests,
        warmup_secs: 0,
        users,
        request_timeout_ms: 15_000,
        stop_error_ratio: 1.0,
        stop_zero_tps_secs: 60,
        threads: 2,
    }
}

pub async fn offer(cell: &Cell, campaign: &str, spec: &RunSpec) -> RunOutput {
    load::execute(spec, campaign, cell.minter.clone())
        .await
        .unwrap()
}

/// A campaign of `n` stock on `cell` with `n` unique users admitted: the
/// backlog a worker fault drains (the cell starts without a worker).
pub async fn backlog(cell: &Cell, n: u64) -> (String, RunOutput) {
    let campaign = cell.campaign(n as i64).await;
    let out = offer(
        cell,
        &campaign,
        &spec(cell.targets(), 100, Some(n), None, UserMode::Unique),
    )
    .await;
    (campaign, out)
}

pub fn failures_seen(out: &RunOutput) -> bool {
    out.summary.errors_by_kind.keys().any(|k| {
        matches!(
            k,
            ErrorKind::Server5xx | ErrorKind::Timeout | ErrorKind::Connection
        )
    })
}

pub async fn audit_of(
    cell: &Cell,
    campaign: &str,
    outs: &[&RunOutput],
    mode: &UserMode,
) -> AuditReport {
    let mut promised = BTreeMap::new();
    for out in outs {
        for (user, outcome) in out.ledger.promised(mode, &out.run_id) {
            promised.entry(user).or_insert(outcome);
        }
    }
    let sold_out = outs
        .iter()
        .any(|o| o.summary.outcomes.contains_key("sold_out"));
    let failed = outs.iter().any(|o| failures_seen(o));
    audit::run(
        &cell.admin,
        &cell.minter,
        campaign,
        &promised,
        sold_out,
        failed,
        Duration::from_secs(180),
    )
    .await
    .unwrap()
}

/// What a fault reports.
#[derive(Debug, Serialize)]
pub struct Figures {
    fault: String,
    scale: &'static str,
    requests: u64,
    accepted: u64,
    rows: u64,
    duplicates: u64,
    lost: u64,
    leaked: i64,
    notes: BTreeMap<&'static str, Value>,
    seconds: f64,
}

impl Figures {
    pub fn new(fault: impl Into<String>) -> Self {
        Self {
            fault: fault.into(),
            scale: if full() { "full" } else { "ci" },
            requests: 0,
            accepted: 0,
            rows: 0,
            duplicates: 0,
            lost: 0,
            leaked: 0,
            notes: BTreeMap::new(),
            seconds: 0.0,
        }
    }

    pub fn with_audit(mut self, requests: u64, a: &AuditReport) -> Self {
        self.requests = requests;
        self.accepted = a.accepted + a.deferred_finals.get("issued").copied().unwrap_or(0);
        self.rows = a.rows;
        self.duplicates = a.rows - a.distinct_users;
        self.lost = a.lost;
        self.leaked = a.gate_count.unwrap_or(0) - a.rows as i64;
        self
    }

    pub fn note(mut self, key: &'static str, value: impl Serialize) -> Self {
        self.notes.insert(key, serde_json::to_value(value).unwrap());
        self
    }

    pub fn report(mut self, started: Instant) {
        self.seconds = started.elapsed().as_secs_f64();
        println!(
            "FAULT {}: requests {} accepted {} rows {} duplicates {} lost {} leaked {} {} ({:.0} s, {})",
            self.fault,
            self.requests,
            self.accepted,
            self.rows,
            self.duplicates,
            self.lost,
            self.leaked,
            serde_json::to_string(&self.notes).unwrap(),
            self.seconds,
            self.scale,
        );
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/faults");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("{}.json", self.fault)),
            serde_json::to_vec_pretty(&self).unwrap(),
        )
        .unwrap();
    }
}
