//! The faults, done to the cell: [`Injector::run`] carries out one planned
//! fault at its time (kill, stop, freeze; restart or thaw after its
//! duration; a tool or an oversized message) and records when it really
//! started and ended; [`Injector::heal`] thaws and restarts whatever is
//! still down after the window, waits for readiness, and rebuilds a
//! campaign whose gate state is missing (what an operator would do after a
//! failed `rebuild --force`).
//!
//! The blocking parts (waiting for a process to exit, for a broker to
//! listen) run on the blocking pool; one that panics is recorded as a fault
//! that did not succeed, not as a failure of the campaign.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::testkit::signal_quietly;
use serde_json::{Value, json};

use super::history::{FaultRecord, Recorder};
use super::schedule::{FaultKind, PlannedFault, Target, Which};
use crate::cell::Cell;

/// The issue topic of the cell.
pub const TOPIC: &str = "coupon.issue.v1";

/// The bytes of the oversized message: under the broker's default
/// `message.max.bytes` (1,048,588) with its key and the record batch's
/// overhead, so the broker takes it; its dead letter adds the `dlq.*`
/// headers and is over it.
pub const OVERSIZED_BYTES: usize = 1_048_588 - 160;

/// Does the faults of one round to the cell.
#[derive(Clone)]
pub struct Injector {
    pub cell: Arc<Cell>,
    pub rec: Recorder,
    pub round: usize,
    /// The api instances' settings for this round's form.
    pub api_env: Vec<(String, String)>,
    /// The round's campaigns: (plain, room) ids.
    pub campaigns: [String; 2],
    /// One lock per target, held while a fault acts on it: the plan keeps
    /// two faults on one target apart, but a fault can outlast its planned
    /// end (a drain, a slow restart), and two faults restarting one process
    /// at once would leave one of its processes untracked.
    pub busy: Arc<Targets>,
}

/// The per-target locks of [`Injector::busy`].
#[derive(Debug, Default)]
pub struct Targets {
    locks: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Targets {
    fn of(&self, target: Target) -> Arc<tokio::sync::Mutex<()>> {
        // Both campaigns' tools share one slot, as in the plan.
        let name = match target {
            Target::Campaign(_) => "campaign".to_owned(),
            t => t.to_string(),
        };
        self.locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(name)
            .or_default()
            .clone()
    }
}

/// Runs `f` on the blocking pool; its result, or the panic's message.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        if e.is_panic() {
            let p = e.into_panic();
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panicked".into())
        } else {
            e.to_string()
        }
    })
}

impl Injector {
    fn campaign(&self, which: Which) -> &str {
        &self.campaigns[which as usize]
    }

    /// Starts api `i` again and waits until it is ready (at most 30 s).
    pub async fn respawn_api(&self, i: usize) -> Result<(), String> {
        let (cell, env) = (self.cell.clone(), self.api_env.clone());
        blocking(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            cell.spawn_api(i, &env);
        })
        .await?;
        ready(self.cell.ops_ports[i], "/readyz", Duration::from_secs(30)).await
    }

    async fn respawn_worker(&self) -> Result<(), String> {
        let cell = self.cell.clone();
        blocking(move || cell.spawn_worker(0, &[])).await?;
        ready(
            self.cell.worker_port(0),
            "/healthz",
            Duration::from_secs(30),
        )
        .await
    }

    /// Carries out `f` (whose start the caller has waited for) and records it.
    pub async fn run(&self, f: PlannedFault) -> FaultRecord {
        // Waits for a fault still acting on the same target; the record's
        // start is when this one really began.
        let target = self.busy.of(f.target);
        let _busy = target.lock().await;
        let start_ms = self.rec.now();
        let hold = Duration::from_millis(f.for_ms);
        let cell = self.cell.clone();
        let (ok, detail) = match (f.kind, f.target) {
            (FaultKind::ApiKill, Target::Api(i)) => {
                let c = cell.clone();
                let exit = blocking(move || c.stop_api_if_running(i, "-KILL")).await;
                tokio::time::sleep(hold).await;
                let back = self.respawn_api(i).await;
                (
                    back.is_ok(),
                    json!({"exit": format!("{exit:?}"), "restart": back.err()}),
                )
            }
            (FaultKind::ApiPause, Target::Api(i)) => {
                let pid = cell.api_pid(i);
                let stopped = pid.is_some_and(|p| signal_quietly(p, "-STOP"));
                tokio::time::sleep(hold).await;
                if let Some(p) = pid {
                    signal_quietly(p, "-CONT");
                }
                (stopped, json!({"pid": pid}))
            }
            (FaultKind::ApiTerm, Target::Api(i)) => {
                let c = cell.clone();
                let began = Instant::now();
                let exit = blocking(move || c.stop_api_if_running(i, "-TERM")).await;
                let drained_ms = began.elapsed().as_millis() as u64;
                // `None`: it was not running (nothing to drain).
                let status = exit.as_ref().ok().copied().flatten();
                tokio::time::sleep(hold).await;
                let back = self.respawn_api(i).await;
                (
                    back.is_ok() && status.is_some(),
                    json!({
                        "exit_code": status.and_then(|s| s.code()),
                        "exit_signal": status.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s)),
                        "ran": status.is_some(),
                        "drained_ms": drained_ms,
                        "restart": back.err(),
                    }),
                )
            }
            (FaultKind::WorkerKill, _) => {
                let c = cell.clone();
                let _ = blocking(move || c.stop_worker(0, "-KILL")).await;
                tokio::time::sleep(hold).await;
                let back = self.respawn_worker().await;
                (back.is_ok(), json!({"restart": back.err()}))
            }
            (FaultKind::WorkerPause, _) => {
                let pid = cell.worker_pid(0);
                let stopped = pid.is_some_and(|p| signal_quietly(p, "-STOP"));
                tokio::time::sleep(hold).await;
                if let Some(p) = pid {
                    signal_quietly(p, "-CONT");
                }
                (stopped, json!({"pid": pid}))
            }
            (FaultKind::BrokerStop, _) => {
                let c = cell.clone();
                let began = Instant::now();
                let exit = blocking(move || c.broker.terminate()).await;
                let stopped_ms = began.elapsed().as_millis() as u64;
                tokio::time::sleep(hold).await;
                let c = cell.clone();
                let back = blocking(move || c.broker.launch()).await;
                (
                    back.is_ok(),
                    json!({"exit": format!("{exit:?}"), "stopped_ms": stopped_ms, "restart": back.err()}),
                )
            }
            (FaultKind::BrokerKill, _) => {
                let c = cell.clone();
                let _ = blocking(move || c.broker.sigkill()).await;
                tokio::time::sleep(hold).await;
                let c = cell.clone();
                let back = blocking(move || c.broker.launch()).await;
                (back.is_ok(), json!({"restart": back.err()}))
            }
            (FaultKind::BrokerPause, _) => {
                cell.broker.freeze(true);
                tokio::time::sleep(hold).await;
                cell.broker.freeze(false);
                (true, Value::Null)
            }
            (FaultKind::RedisKill, _) => {
                let c = cell.clone();
                let _ = blocking(move || c.redis.sigkill()).await;
                tokio::time::sleep(hold).await;
                let c = cell.clone();
                let back = blocking(move || c.redis.launch()).await;
                (back.is_ok(), json!({"restart": back.err()}))
            }
            (FaultKind::RedisPause, _) => {
                cell.redis.freeze(true);
                tokio::time::sleep(hold).await;
                cell.redis.freeze(false);
                (true, Value::Null)
            }
            (FaultKind::PostgresPause, _) => {
                let c = cell.clone();
                let frozen = blocking(move || c.pg.freeze(true)).await;
                tokio::time::sleep(hold).await;
                let c = cell.clone();
                let thawed = blocking(move || c.pg.freeze(false)).await;
                (
                    frozen.is_ok() && thawed.is_ok(),
                    json!({"freeze": frozen.err(), "thaw": thawed.err()}),
                )
            }
            (FaultKind::PostgresStop, _) => {
                let c = cell.clone();
                let stopped = blocking(move || c.pg.set_running(false)).await;
                tokio::time::sleep(hold).await;
                let c = cell.clone();
                let started = blocking(move || c.pg.set_running(true)).await;
                (
                    stopped.is_ok() && started.is_ok(),
                    json!({"stop": stopped.err(), "start": started.err()}),
                )
            }
            (FaultKind::Reconcile, Target::Campaign(w)) => {
                self.tool(&[
                    "reconcile",
                    "--campaign",
                    self.campaign(w),
                    "--repair",
                    "--patience",
                    "20",
                ])
                .await
            }
            (FaultKind::Rebuild, Target::Campaign(w)) => {
                self.tool(&["rebuild", "--campaign", self.campaign(w), "--force"])
                    .await
            }
            (FaultKind::Oversized, _) => oversized(&cell.broker.address(), self.round).await,
            (kind, target) => (
                false,
                json!({"error": format!("{kind:?} on {target} is not a fault")}),
            ),
        };
        let record = FaultRecord {
            round: self.round,
            index: Some(f.index),
            kind: Some(f.kind),
            action: None,
            target: f.target.to_string(),
            start_ms,
            end_ms: self.rec.now(),
            ok,
            detail,
        };
        self.rec.fault(record.clone());
        record
    }

    /// Runs an `issuer-worker` tool; whether it succeeded, and its report
    /// (or the end of its error output).
    pub async fn tool(&self, args: &[&str]) -> (bool, Value) {
        let cell = self.cell.clone();
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let out = blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cell.tool_output(&args)
        })
        .await;
        match out {
            Ok(out) if out.status.success() => {
                // The report is the JSON at the end of stdout; a log line may
                // come before it (rebuild --force warns on stdout).
                let text = String::from_utf8_lossy(&out.stdout);
                let report = text
                    .find("\n{")
                    .map(|i| &text[i + 1..])
                    .or_else(|| text.starts_with('{').then_some(&text[..]))
                    .and_then(|json| serde_json::from_str(json).ok());
                (true, report.unwrap_or_else(|| json!({"stdout": text})))
            }
            Ok(out) => {
                // The error and its causes, without the backtrace.
                let err = String::from_utf8_lossy(&out.stderr);
                let error: Vec<&str> = err
                    .lines()
                    .skip_while(|l| !l.starts_with("Error"))
                    .take_while(|l| !l.starts_with("Stack backtrace"))
                    .filter(|l| !l.trim().is_empty())
                    .take(8)
                    .collect();
                (
                    false,
                    json!({"exit": out.status.code(), "error": error.join(" / ")}),
                )
            }
            Err(e) => (false, json!({"error": e})),
        }
    }

    fn heal_record(&self, action: &str, target: &str, start_ms: u64, ok: bool, detail: Value) {
        self.rec.fault(FaultRecord {
            round: self.round,
            index: None,
            kind: None,
            action: Some(format!("heal:{action}")),
            target: target.to_owned(),
            start_ms,
            end_ms: self.rec.now(),
            ok,
            detail,
        });
    }

    /// After the window: thaws everything, restarts whatever is down, and
    /// waits until every api is ready and the worker answers. What is not
    /// ready after that, by name.
    pub async fn heal(&self) -> Vec<String> {
        let cell = &self.cell;
        for i in 0..cell.api_ports.len() {
            if let Some(p) = cell.api_pid(i) {
                signal_quietly(p, "-CONT");
            }
        }
        if let Some(p) = cell.worker_pid(0) {
            signal_quietly(p, "-CONT");
        }
        cell.broker.freeze(false);
        cell.redis.freeze(false);
        if cell.pg.is_frozen() {
            let c = cell.clone();
            let _ = blocking(move || c.pg.freeze(false)).await;
        }
        let mut not_ready = Vec::new();
        if !cell.redis.is_running() {
            let t = self.rec.now();
            let c = cell.clone();
            let r = blocking(move || c.redis.launch()).await;
            self.heal_record(
                "restart",
                "redis",
                t,
                r.is_ok(),
                json!({"error": r.as_ref().err()}),
            );
            if let Err(e) = r {
                not_ready.push(format!("redis: {e}"));
            }
        }
        if !cell.pg.is_running() {
            let t = self.rec.now();
            let c = cell.clone();
            let r = blocking(move || c.pg.set_running(true)).await;
            self.heal_record(
                "restart",
                "postgres",
                t,
                r.is_ok(),
                json!({"error": r.as_ref().err()}),
            );
            if let Err(e) = r {
                not_ready.push(format!("postgres: {e}"));
            }
        }
        if !cell.broker.is_running() {
            let t = self.rec.now();
            let c = cell.clone();
            let r = blocking(move || c.broker.launch()).await;
            self.heal_record(
                "restart",
                "broker",
                t,
                r.is_ok(),
                json!({"error": r.as_ref().err()}),
            );
            if let Err(e) = r {
                not_ready.push(format!("broker: {e}"));
            }
        }
        if cell.worker_exited(0) {
            let t = self.rec.now();
            let r = self.respawn_worker().await;
            self.heal_record(
                "restart",
                "worker",
                t,
                r.is_ok(),
                json!({"error": r.as_ref().err()}),
            );
        }
        for i in 0..cell.api_ports.len() {
            if cell.api_exited(i) {
                let t = self.rec.now();
                let r = self.respawn_api(i).await;
                self.heal_record(
                    "restart",
                    &format!("api{i}"),
                    t,
                    r.is_ok(),
                    json!({"error": r.as_ref().err()}),
                );
            }
        }
        for i in 0..cell.api_ports.len() {
            if let Err(e) = ready(cell.ops_ports[i], "/readyz", Duration::from_secs(30)).await {
                not_ready.push(format!("api{i}: {e}"));
            }
        }
        if let Err(e) = ready(cell.worker_port(0), "/healthz", Duration::from_secs(30)).await {
            not_ready.push(format!("worker: {e}"));
        }
        not_ready
    }

    /// Rebuilds (without `--force`) each campaign whose gate state is
    /// missing: a `rebuild --force` that failed after deleting the meta
    /// leaves it so, and the contract's remedy is to run rebuild again.
    pub async fn rebuild_missing(&self) {
        for which in Which::BOTH {
            let id = self.campaign(which).to_owned();
            let gate = match super::evidence::campaign_json(&self.cell, &id).await {
                Ok(c) => c["gate"].as_str().map(str::to_owned),
                Err(_) => None,
            };
            if gate.as_deref() == Some("missing") {
                let t = self.rec.now();
                let (ok, detail) = self.tool(&["rebuild", "--campaign", &id]).await;
                self.heal_record(
                    "rebuild",
                    &format!("campaign:{}", which.as_str()),
                    t,
                    ok,
                    detail,
                );
            }
        }
    }
}

/// Waits until `GET path` on `port` answers 2xx; the last answer if not
/// within `within`.
pub async fn ready(port: u16, path: &str, within: Duration) -> Result<(), String> {
    let started = Instant::now();
    let http = reqwest::Client::new();
    loop {
        let last = match http
            .get(format!("http://127.0.0.1:{port}{path}"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => e.to_string(),
        };
        if started.elapsed() > within {
            return Err(format!("not ready after {within:?}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Produces the oversized message (random bytes: no compression shrinks
/// it) straight onto the issue topic; where it landed, or why not.
async fn oversized(brokers: &str, round: usize) -> (bool, Value) {
    use rand::RngCore;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = match rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "2000000")
        .set("compression.type", "none")
        .set("acks", "all")
        .set("message.timeout.ms", "15000")
        .create()
    {
        Ok(p) => p,
        Err(e) => return (false, json!({"error": e.to_string()})),
    };
    let mut payload = vec![0u8; OVERSIZED_BYTES];
    rand::rng().fill_bytes(&mut payload);
    let key = format!("oversized-{round}");
    let sent = producer
        .send(
            FutureRecord::to(TOPIC).key(&key).payload(&payload),
            Duration::from_secs(15),
        )
        .await;
    match sent {
        Ok(delivery) => (
            true,
            json!({"bytes": OVERSIZED_BYTES, "partition": delivery.partition, "offset": delivery.offset}),
        ),
        Err((e, _)) => (
            false,
            json!({"bytes": OVERSIZED_BYTES, "error": e.to_string()}),
        ),
    }
}
