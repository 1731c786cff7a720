//! The campaign's report: `report.md` (the verdict, each round's figures,
//! every violation with the window of history that shows it, the schedule
//! and the faults as they ran) and the summary printed at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::check::{Violation, rule_name, window};
use super::history::{History, Kind};
use super::schedule::{Config, Plan};

/// Violations shown with their window, per rule (the rest one line each).
const WINDOWS_PER_RULE: usize = 4;
/// Violations listed at all, per rule.
const LISTED_PER_RULE: usize = 60;

/// The command that replays this run.
pub fn replay(config: &Config) -> String {
    let mut cmd = format!(
        "scripts/faults --campaign --seed {} --minutes {} --forms {}",
        config.seed,
        config.minutes,
        config.forms.join(",")
    );
    if !config.skip.is_empty() {
        let skip: Vec<&str> = config.skip.iter().map(|k| k.name()).collect();
        let _ = write!(cmd, " --skip {}", skip.join(","));
    }
    if config.fsync != "always" {
        cmd = format!("COUPON_CAMPAIGN_FSYNC={} {cmd}", config.fsync);
    }
    if config.clients != super::DEFAULT_CLIENTS {
        cmd = format!("COUPON_CAMPAIGN_CLIENTS={} {cmd}", config.clients);
    }
    cmd
}

fn outcomes(h: &History, campaign: &str) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in h
        .requests
        .iter()
        .filter(|r| r.campaign == campaign && r.kind() == Kind::Issue)
    {
        let key = match (r.status, &r.outcome) {
            (Some(s), Some(o)) => format!("{s} {o}"),
            (Some(s), None) => s.to_string(),
            (None, _) => "no reply".into(),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `report.md`.
pub fn markdown(
    config: &Config,
    plan: &Plan,
    h: &History,
    violations: &[Violation],
    seconds: f64,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Fault campaign, seed {}\n", config.seed);
    let _ = writeln!(out, "Replay: `{}`\n", replay(config));
    let injected = h.faults.iter().filter(|f| f.index.is_some()).count();
    let failed = h
        .faults
        .iter()
        .filter(|f| f.index.is_some() && !f.ok)
        .count();
    let _ = writeln!(
        out,
        "{} rounds, {} requests, {} faults injected ({} did not do what they meant to), Redis appendfsync {}, {} clients per campaign; {:.0} s.\n",
        h.rounds.len(),
        h.requests.len(),
        injected,
        failed,
        config.fsync,
        config.clients,
        seconds
    );
    if violations.is_empty() {
        let _ = writeln!(out, "**Passed**: no promise broken.\n");
    } else {
        let mut rules: BTreeMap<u8, usize> = BTreeMap::new();
        for v in violations {
            *rules.entry(v.rule).or_default() += 1;
        }
        let _ = writeln!(
            out,
            "**Failed**: {} violations ({}).\n",
            violations.len(),
            rules
                .iter()
                .map(|(r, n)| format!("rule {r} ×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(
        out,
        "The run's clock started at {} (the processes' logs under `logs/` carry the wall clock).\n",
        h.started_at
    );
    let _ = writeln!(out, "## Rounds\n");
    for r in &h.rounds {
        let s = &r.settle;
        if !s.lag_zero {
            let _ = writeln!(
                out,
                "- Round {} ({}): the worker did not drain after the heal (group lag {:?}, worker_paused {:?}, partitions assigned {:?}): its rows-based findings (rules 2, 3, 5, 6) may all follow from that.",
                r.round, r.form, s.group_lag, s.paused, s.assigned
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| round | form | campaign | stock | rows after repair | taken after repair | rows after top-up | issue replies |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for r in &h.rounds {
        for c in &r.campaigns {
            let _ = writeln!(
                out,
                "| {} | {} | {} `{}` | {} | {} | {} | {} | {} |",
                r.round,
                r.form,
                c.which.as_str(),
                c.id,
                c.stock,
                c.after_repair.rows.len(),
                c.after_repair
                    .api_taken
                    .map_or("?".to_owned(), |t| t.to_string()),
                c.after_topup
                    .as_ref()
                    .map_or("(closed)".to_owned(), |s| s.rows.len().to_string()),
                outcomes(h, &c.id),
            );
        }
    }
    let _ = writeln!(out);
    if !violations.is_empty() {
        let _ = writeln!(out, "## Violations\n");
        let mut by_rule: BTreeMap<u8, Vec<&Violation>> = BTreeMap::new();
        for v in violations {
            by_rule.entry(v.rule).or_default().push(v);
        }
        for (rule, vs) in by_rule {
            let _ = writeln!(out, "### Rule {rule}: {} ({})\n", rule_name(rule), vs.len());
            for (i, v) in vs.iter().enumerate().take(LISTED_PER_RULE) {
                let _ = writeln!(out, "- {}", line(v));
                if i < WINDOWS_PER_RULE {
                    let _ = writeln!(out, "\n```\n{}```\n", window(h, v));
                }
            }
            if vs.len() > LISTED_PER_RULE {
                let _ = writeln!(out, "- … {} more", vs.len() - LISTED_PER_RULE);
            }
            let _ = writeln!(out);
        }
    }
    let _ = writeln!(out, "## Schedule\n\n```\n{}```\n", plan.render());
    let _ = writeln!(out, "## Faults as they ran\n\n```");
    for f in &h.faults {
        let _ = writeln!(out, "{}", f.line());
    }
    let _ = writeln!(out, "```");
    out
}

/// Every violation, one JSON line each (`violations.jsonl`).
pub fn jsonl(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| serde_json::to_string(v).unwrap_or_default() + "\n")
        .collect()
}

/// One violation on one line.
pub fn line(v: &Violation) -> String {
    format!(
        "rule {} ({}){}{}: {}",
        v.rule,
        rule_name(v.rule),
        v.round.map(|r| format!(", round {r}")).unwrap_or_default(),
        v.campaign
            .as_ref()
            .map(|c| format!(", campaign {c}"))
            .unwrap_or_default(),
        v.text
    )
}

/// What is printed at the end of a run.
pub fn summary(config: &Config, h: &History, violations: &[Violation], path: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "CAMPAIGN seed {}: {} violations",
        config.seed,
        violations.len()
    );
    let mut shown: BTreeMap<u8, usize> = BTreeMap::new();
    for v in violations {
        let n = shown.entry(v.rule).or_default();
        *n += 1;
        if *n <= 3 {
            let _ = writeln!(out, "VIOLATION {}", line(v));
            if *n <= 2 {
                let _ = write!(out, "{}", window(h, v));
            }
        }
    }
    for (rule, n) in shown {
        if n > 3 {
            let _ = writeln!(out, "… rule {rule}: {} more (report.md)", n - 3);
        }
    }
    let _ = writeln!(out, "replay: {}", replay(config));
    let _ = writeln!(out, "report: {path}");
    out
}
