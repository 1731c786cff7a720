//! The harness measured against wrk before a grid (`honesty.json`, a section
//! of the report).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Environment, secrets};
use crate::run::{RunRequest, perform};
use crate::spec::{Endpoint, LoadModel, RunSpec};
use crate::users::UserMode;

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

    pub(super) fn render(&self) -> String {
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
pub(super) async fn honesty_check(env: &Environment) -> anyhow::Result<Honesty> {
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
        ops_url: Some(env.ports.instance_ops_url(0)),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
