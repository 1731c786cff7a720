//! Two or more run results side by side: each metric against the first
//! (the baseline), with a verdict, and a non-zero exit when a metric
//! regresses past the threshold (for CI).

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::report::RunResult;

/// Which direction is better for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

struct Metric {
    name: &'static str,
    better: Better,
    get: fn(&RunResult) -> f64,
}

const METRICS: &[Metric] = &[
    Metric {
        name: "TPS",
        better: Better::Higher,
        get: |r| r.summary.tps,
    },
    Metric {
        name: "peak TPS",
        better: Better::Higher,
        get: |r| r.summary.peak_tps,
    },
    Metric {
        name: "mean ms",
        better: Better::Lower,
        get: |r| r.summary.mean_ms,
    },
    Metric {
        name: "p50 µs",
        better: Better::Lower,
        get: |r| r.summary.p50_us as f64,
    },
    Metric {
        name: "p99 µs",
        better: Better::Lower,
        get: |r| r.summary.p99_us as f64,
    },
    Metric {
        name: "p99.9 µs",
        better: Better::Lower,
        get: |r| r.summary.p999_us as f64,
    },
    Metric {
        name: "errors",
        better: Better::Lower,
        get: |r| r.summary.errors as f64,
    },
    Metric {
        name: "client CPU %",
        better: Better::Lower,
        get: |r| r.client.cpu_percent,
    },
];

/// How a value compares with the baseline's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Better,
    Same,
    Worse,
    Regressed,
}

/// `threshold` and `tolerance` in percent: within `tolerance` is the same;
/// worse by more than `threshold` is a regression.
pub fn verdict(
    base: f64,
    value: f64,
    higher_is_better: bool,
    tolerance: f64,
    threshold: f64,
) -> Verdict {
    let change = if base == 0.0 {
        if value == 0.0 { 0.0 } else { 100.0 }
    } else {
        (value - base) / base.abs() * 100.0
    };
    let gain = if higher_is_better { change } else { -change };
    if gain >= tolerance {
        Verdict::Better
    } else if gain > -tolerance {
        Verdict::Same
    } else if -gain > threshold {
        Verdict::Regressed
    } else {
        Verdict::Worse
    }
}

/// Prints the comparison; returns whether any metric regressed (or an audit
/// failed).
pub fn compare(
    paths: &[PathBuf],
    threshold: f64,
    tolerance: f64,
) -> anyhow::Result<(String, bool)> {
    anyhow::ensure!(paths.len() >= 2, "compare needs at least two result files");
    let runs: Vec<RunResult> = paths
        .iter()
        .map(|p| -> anyhow::Result<RunResult> { Ok(serde_json::from_slice(&std::fs::read(p)?)?) })
        .collect::<anyhow::Result<_>>()?;
    let mut out = String::new();
    let mut regressed = false;
    let _ = write!(out, "| metric | {} (baseline) |", runs[0].label);
    for r in &runs[1..] {
        let _ = write!(out, " {} | verdict |", r.label);
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "|---|---|{}", "---|---|".repeat(runs.len() - 1));
    for m in METRICS {
        let base = (m.get)(&runs[0]);
        let _ = write!(out, "| {} | {:.1} |", m.name, base);
        for r in &runs[1..] {
            let value = (m.get)(r);
            let delta = if base == 0.0 {
                0.0
            } else {
                (value - base) / base * 100.0
            };
            let v = verdict(
                base,
                value,
                m.better == Better::Higher,
                tolerance,
                threshold,
            );
            if v == Verdict::Regressed && m.name != "client CPU %" {
                regressed = true;
            }
            let _ = write!(out, " {value:.1} ({delta:+.1}%) | {v:?} |");
        }
        let _ = writeln!(out);
    }
    let _ = write!(out, "| audit | {} |", audit_word(&runs[0]));
    for r in &runs[1..] {
        if !r.passed() {
            regressed = true;
        }
        let _ = write!(out, " {} | |", audit_word(r));
    }
    let _ = writeln!(out);
    Ok((out, regressed))
}

fn audit_word(r: &RunResult) -> &'static str {
    match &r.audit {
        Some(a) if a.passed => "pass",
        Some(_) => "FAIL",
        None => "not run",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_respect_direction_tolerance_and_threshold() {
        assert_eq!(verdict(100.0, 103.0, true, 5.0, 10.0), Verdict::Same);
        assert_eq!(verdict(100.0, 110.0, true, 5.0, 10.0), Verdict::Better);
        assert_eq!(verdict(100.0, 92.0, true, 5.0, 10.0), Verdict::Worse);
        assert_eq!(verdict(100.0, 80.0, true, 5.0, 10.0), Verdict::Regressed);
        // Latency: lower is better.
        assert_eq!(verdict(100.0, 80.0, false, 5.0, 10.0), Verdict::Better);
        assert_eq!(verdict(100.0, 130.0, false, 5.0, 10.0), Verdict::Regressed);
        assert_eq!(verdict(0.0, 0.0, false, 5.0, 10.0), Verdict::Same);
        assert_eq!(verdict(0.0, 3.0, false, 5.0, 10.0), Verdict::Regressed);
    }
}
