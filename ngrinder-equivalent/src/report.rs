//! The result of a run: JSON (everything), CSV (one row per 1 s sample), and
//! the summary printed on stdout.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::admin::ServerInfo;
use crate::audit::AuditReport;
use crate::load::{ClientUse, RoomFigures};
use crate::spec::{RunSpec, Spread};
use crate::stats::{Outcome, Sample, Summary};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    pub version: u32,
    pub label: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub machine: Machine,
    pub spec: RunSpec,
    pub spread: Spread,
    pub server: ServerInfo,
    pub campaign_id: String,
    pub stock: i64,
    pub summary: Summary,
    pub samples: Vec<Sample>,
    pub client: ClientUse,
    pub stopped_by: Option<String>,
    /// Through a waiting room: joins, status reads, waits.
    #[serde(default)]
    pub room: Option<RoomFigures>,
    /// What the stack's processes used while the run was measured
    /// (experiments only).
    #[serde(default)]
    pub processes: Option<crate::procs::ProcUse>,
    pub audit: Option<AuditReport>,
    /// The HdrHistogram interval log of the run (written as `<stem>.hlog`,
    /// not kept in the JSON).
    #[serde(skip)]
    pub hlog: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
}

impl Machine {
    pub fn here() -> Self {
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

impl RunResult {
    /// `passed` unless the audit failed (a run without audit passes).
    pub fn passed(&self) -> bool {
        self.audit.as_ref().is_none_or(|a| a.passed)
    }

    /// Writes `<stem>.json`, `<stem>.csv`, `<stem>.hlog` (the HdrHistogram
    /// interval log) and the run's charts (`<stem>-tps.png`, `-latency.png`,
    /// `-errors.png`) into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(format!("{stem}.csv")), samples_csv(&self.samples))?;
        std::fs::write(dir.join(format!("{stem}.hlog")), &self.hlog)?;
        crate::charts::run_charts(dir, stem, &self.samples)?;
        // The JSON last and whole (written aside, then renamed): a resumed
        // experiment takes a cell whose JSON exists as done.
        let json = dir.join(format!("{stem}.json"));
        let partial = dir.join(format!("{stem}.json.partial"));
        std::fs::write(&partial, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&partial, &json)?;
        Ok(())
    }

    /// The summary table, percentiles, outcomes, client and audit blocks.
    pub fn render(&self) -> String {
        let s = &self.summary;
        let mut out = String::new();
        let spread = match self.spread {
            Spread::Balancer => format!("through {}", self.spec.targets.join(", ")),
            Spread::ClientSide => format!(
                "spread over {} instances by the client ({})",
                self.spec.targets.len(),
                self.spec.targets.join(", ")
            ),
        };
        let _ = writeln!(out, "run {}: {spread}", self.label);
        let _ = writeln!(
            out,
            "strategy {}, per-user rate limit {}, users {}, campaign {} (stock {})",
            self.server.strategy.as_deref().unwrap_or("?"),
            match self.server.per_user_rate_limit {
                Some(true) => "on",
                Some(false) => "off",
                None => "unknown",
            },
            self.spec.users.describe(),
            self.campaign_id,
            self.stock,
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| vuser | TPS | peak TPS | mean time | executed tests | errors |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.0} | {:.2} ms | {} | {} |",
            self.spec.model.concurrency(),
            s.tps,
            s.peak_tps,
            s.mean_ms,
            s.executed,
            s.errors
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "latency (tests, µs): p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us
        );
        let _ = writeln!(
            out,
            "latency (every request, errors included, µs): p50 {}  p99 {}  p99.9 {}  max {}{}",
            s.all_p50_us,
            s.all_p99_us,
            s.all_p999_us,
            s.all_max_us,
            match self.spec.model {
                crate::spec::LoadModel::Open { .. } =>
                    " (from each send's intended time: coordinated omission corrected)",
                crate::spec::LoadModel::Closed { .. } =>
                    " (closed model: not corrected for coordinated omission)",
            }
        );
        if let Some(room) = &self.room {
            let _ = writeln!(
                out,
                "waiting room: {} joins, {} status reads (p50 {} µs, p99 {} µs), {} admitted; wait p50 {} ms, p99 {} ms, max {} ms",
                room.joins,
                room.status_reads,
                room.status_p50_us,
                room.status_p99_us,
                room.admitted,
                room.wait_p50_ms,
                room.wait_p99_ms,
                room.wait_max_ms
            );
        }
        let outcomes: Vec<String> = s.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "outcomes: {}", outcomes.join(", "));
        if s.errors > 0 {
            let kinds: Vec<String> = s
                .errors_by_kind
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{} {v}",
                        serde_json::to_value(k)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    )
                })
                .collect();
            let _ = writeln!(out, "errors: {}", kinds.join(", "));
        }
        let _ = writeln!(
            out,
            "measured {:.0} s after a {} s warm-up{}",
            s.measured_secs,
            self.spec.warmup_secs,
            self.stopped_by
                .as_deref()
                .map(|r| format!("; {r}"))
                .unwrap_or_default()
        );
        let c = &self.client;
        let _ = writeln!(
            out,
            "client: {:.0}% CPU ({} threads, {} cores), late sends {}, unsent {}",
            c.cpu_percent, c.threads, c.cores, c.late_sends, c.unsent_sends
        );
        if let Some(reason) = &c.saturation_reason {
            let _ = writeln!(out, "WARNING: {reason}");
        }
        if let Some(a) = &self.audit {
            let _ = writeln!(out);
            let _ = writeln!(out, "audit: {}", if a.passed { "PASS" } else { "FAIL" });
            let _ = writeln!(
                out,
                "  rows {} (distinct {}), stock {}, gate {:?}, persisted {}, accepted {}, deferred {} (followed {}: {:?}), lost {}, phantoms {}, waited {:.1} s",
                a.rows,
                a.distinct_users,
                a.stock,
                a.gate_count,
                a.persisted_column,
                a.accepted,
                a.deferred,
                a.deferred_followed,
                a.deferred_finals,
                a.lost,
                a.phantoms,
                a.waited_secs
            );
            for f in &a.failures {
                let _ = writeln!(out, "  FAIL: {f}");
            }
        }
        out
    }
}

/// `t,vusers,tests,errors,mean_ms,tps,p50_ms,p99_ms,p999_ms,all_p99_ms`,
/// then a count per outcome (`accepted`, `sold_out`, `timeout`...), one line
/// per sample.
pub fn samples_csv(samples: &[Sample]) -> String {
    let mut out =
        String::from("t,vusers,tests,errors,mean_ms,tps,p50_ms,p99_ms,p999_ms,all_p99_ms");
    for o in Outcome::ALL {
        out.push(',');
        out.push_str(o.as_str());
    }
    out.push('\n');
    for s in samples {
        let _ = write!(
            out,
            "{},{},{},{},{:.3},{:.1},{:.3},{:.3},{:.3},{:.3}",
            s.t,
            s.vusers,
            s.tests,
            s.errors,
            s.mean_ms,
            s.tps,
            s.p50_ms,
            s.p99_ms,
            s.p999_ms,
            s.all_p99_ms
        );
        for i in 0..Outcome::ALL.len() {
            let _ = write!(out, ",{}", s.outcomes.get(i).copied().unwrap_or(0));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_a_header_and_a_line_per_sample() {
        let mut outcomes = vec![0; Outcome::ALL.len()];
        outcomes[1] = 100;
        outcomes[Outcome::ALL.len() - 1] = 1;
        let csv = samples_csv(&[Sample {
            t: -1,
            vusers: 10,
            tests: 100,
            errors: 1,
            mean_ms: 1.5,
            tps: 100.0,
            p50_ms: 1.25,
            p99_ms: 3.25,
            p999_ms: 4.5,
            all_p99_ms: 5.0,
            outcomes,
        }]);
        let lines: Vec<&str> = csv.lines().collect();
        assert!(
            lines[0].starts_with(
                "t,vusers,tests,errors,mean_ms,tps,p50_ms,p99_ms,p999_ms,all_p99_ms,ok,accepted,"
            ),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].ends_with(",timeout,connection,unsent"),
            "{}",
            lines[0]
        );
        assert_eq!(
            lines[1],
            "-1,10,100,1,1.500,100.0,1.250,3.250,4.500,5.000,0,100,0,0,0,0,0,0,0,0,0,0,0,0,0,1"
        );
    }
}
