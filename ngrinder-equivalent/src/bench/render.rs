//! `bench.md`: the bench's tables, ratios and each target's verdict.

use std::fmt::Write as _;

use std::collections::BTreeMap;

use super::{BenchResult, INSTANCES, Measured, RunKind};
use crate::procs::ProcUse;

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
         {} s measured after a {} s warm-up, median of {} repeat(s), on Apache Kafka.\n",
        r.date, r.machine.cores, r.machine.kernel, p.duration_secs, p.warmup_secs, p.repeats,
    );
    let _ = writeln!(
        out,
        "| vusers | TPS (median) | runs | p99 | errors | audit |\n|---|---|---|---|---|---|"
    );
    for &v in &p.vusers {
        let runs = r.of(&RunKind::Issue, v);
        let Some(m) = r.median_run(&RunKind::Issue, v) else {
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
        "\nSide by side at each level (one run each):\n\n| vusers | {} | {} | issue / trivial | {} | {} | issue / trivial |\n|---|---|---|---|---|---|---|",
        RunKind::Issue,
        RunKind::Trivial,
        RunKind::IssueBalanced,
        RunKind::TrivialBalanced
    );
    let tps = |kind: &RunKind, v: u32| r.median_tps(kind, v);
    let fmt = |x: Option<f64>| x.map_or("-".to_owned(), |t| format!("{t:.0}"));
    let audited = |kind: &RunKind, v: u32| {
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
            tps(&RunKind::Issue, v),
            tps(&RunKind::Trivial, v),
            tps(&RunKind::IssueBalanced, v),
            tps(&RunKind::TrivialBalanced, v),
        );
        direct_ratios.extend(ratio(i, t));
        lb_ratios.extend(ratio(il, tl));
        let _ = writeln!(
            out,
            "| {v} | {} | {} | {} | {} | {} | {} |",
            audited(&RunKind::Issue, v),
            fmt(t),
            pct(ratio(i, t)),
            audited(&RunKind::IssueBalanced, v),
            fmt(tl),
            pct(ratio(il, tl)),
        );
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
        if let Some(m) = r.median_run(&RunKind::Issue, v) {
            let s = &m.result.summary;
            let errors: u64 = r
                .of(&RunKind::Issue, v)
                .iter()
                .map(|m| m.result.summary.errors)
                .sum();
            let ok = s.tps >= want_tps && s.p99_us < want_p99_us && errors == 0;
            let _ = writeln!(
                out,
                "| {v} vusers: ≥ {want_tps:.0} TPS, p99 < {}, 0 errors, audit pass | {:.0} TPS, p99 {}, {errors} errors | {} |",
                ms(want_p99_us),
                s.tps,
                ms(s.p99_us),
                verdict(ok && r.of(&RunKind::Issue, v).iter().all(|m| m.result.passed()))
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
        && let Some(ratio) = ratio(tps(&RunKind::Issue, hi), tps(&RunKind::Issue, lo))
    {
        let _ = writeln!(
            out,
            "| TPS at {hi} vusers ≥ 85% of TPS at {lo} | {ratio:.0}% | {} |",
            verdict(ratio >= 85.0)
        );
    }
    {
        let lag = &r.lag;
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
        && let Some(m) = r.median_run(&RunKind::Issue, hi)
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
    let mut kinds: BTreeMap<(u32, &RunKind), &Measured> = BTreeMap::new();
    for m in &r.runs {
        if m.kind != RunKind::Issue {
            kinds.entry((m.vusers, &m.kind)).or_insert(m);
        }
    }
    for &v in &p.vusers {
        if let Some(m) = r.median_run(&RunKind::Issue, v) {
            let _ = writeln!(
                out,
                "| {}, {v} vusers | {:.0} | {} |",
                RunKind::Issue,
                m.result.summary.tps,
                cpu_split(&m.procs)
            );
        }
        for ((_, kind), m) in kinds.iter().filter(|((level, _), _)| *level == v) {
            let _ = writeln!(
                out,
                "| {kind}, {v} vusers | {:.0} | {} |",
                m.result.summary.tps,
                cpu_split(&m.procs)
            );
        }
    }
    let _ = writeln!(
        out,
        "| open model at {} requests/s | {:.0} | {} |",
        r.lag.rate,
        r.lag.tps,
        cpu_split(&r.lag.procs)
    );
    out
}
