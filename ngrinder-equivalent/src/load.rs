//! Offers the load of a [`RunSpec`] and measures it: the closed model
//! (vusers, ramp-up, think time) and the open model (a target rate, latency
//! from the intended send time), a 1 s sampler with nGrinder's stop rules,
//! a live progress line, and the client's own CPU use.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::client::{Conn, Method, Target};
use crate::spec::{Endpoint, LoadModel, RunSpec};
use crate::stats::{Collector, Recorder, Summary};
use crate::token::Minter;
use crate::users::{Ledger, UserMode};

const SHARDS: usize = 64;

/// The client side of a run: what it cost, and whether it kept up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClientUse {
    /// CPU time of this process over wall time, in percent of one core.
    pub cpu_percent: f64,
    pub cores: usize,
    pub threads: usize,
    /// Open model: sends that found no free connection at their time.
    pub late_sends: u64,
    /// Open model: sends skipped because the backlog was full.
    pub dropped_sends: u64,
    /// The client, not the server, limited the run.
    pub saturated: bool,
    pub saturation_reason: Option<String>,
}

#[derive(Debug)]
pub struct RunOutput {
    pub run_id: String,
    pub collector: Collector,
    pub summary: Summary,
    pub ledger: Ledger,
    pub client: ClientUse,
    pub stopped_by: Option<String>,
}

struct Shared {
    method: Method,
    path: String,
    /// Requests carry a user token (the issue endpoint).
    as_user: bool,
    recorder: Recorder,
    ledger: Ledger,
    minter: Minter,
    mode: UserMode,
    run_id: String,
    stop: CancellationToken,
    /// Requests left when a request budget is set.
    budget: Option<AtomicI64>,
    timeout: Duration,
    active: AtomicU64,
    /// Closed model: event loops the vusers are spread over.
    threads: usize,
}

impl Shared {
    fn take_budget(&self) -> bool {
        self.budget
            .as_ref()
            .is_none_or(|b| b.fetch_sub(1, Ordering::Relaxed) > 0)
    }
}

/// Runs the load against `campaign` and returns what it measured.
pub async fn execute(spec: &RunSpec, campaign: &str, minter: Minter) -> anyhow::Result<RunOutput> {
    let targets = spec
        .targets
        .iter()
        .map(|t| Target::parse(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!targets.is_empty(), "no target URL");
    let run_id: String = {
        let mut rng = rand::rng();
        (0..6)
            .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
            .collect()
    };
    let (method, path, as_user) = match spec.endpoint {
        Endpoint::Issue => (
            Method::Post,
            format!("/api/v1/campaigns/{campaign}/issue"),
            true,
        ),
        Endpoint::Trivial => (Method::Get, "/healthz".to_owned(), false),
    };
    let shared = Arc::new(Shared {
        method,
        path,
        as_user,
        recorder: Recorder::new(SHARDS),
        ledger: Ledger::new(SHARDS),
        minter,
        mode: spec.users,
        run_id: run_id.clone(),
        stop: CancellationToken::new(),
        budget: spec.requests.map(|n| AtomicI64::new(n as i64)),
        timeout: Duration::from_millis(spec.request_timeout_ms),
        active: AtomicU64::new(0),
        threads: spec.threads.max(1),
    });
    let cpu_start = cpu_seconds();
    let started = Instant::now();

    let load = {
        let shared = shared.clone();
        let model = spec.model.clone();
        tokio::spawn(async move {
            match model {
                LoadModel::Closed {
                    vusers,
                    ramp_initial,
                    ramp_step,
                    ramp_interval_secs,
                    think_ms,
                } => {
                    let threads = shared.threads;
                    closed(
                        shared,
                        targets,
                        vusers,
                        Ramp {
                            initial: ramp_initial,
                            step: ramp_step,
                            interval: Duration::from_secs(ramp_interval_secs),
                        },
                        Duration::from_millis(think_ms),
                        threads,
                    )
                    .await;
                    (0, 0)
                }
                LoadModel::Open {
                    rate,
                    max_connections,
                } => open(shared, targets, rate, max_connections).await,
            }
        })
    };

    let (collector, stopped_by) = sample_until_done(spec, &shared, &load).await;
    let (late, dropped) = load.await.unwrap_or((0, 0));
    let wall = started.elapsed().as_secs_f64();
    let cpu_percent = (cpu_seconds() - cpu_start) / wall.max(1e-9) * 100.0;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = spec.threads.max(1);
    let offered = match spec.model {
        LoadModel::Open { rate, .. } => Some(rate),
        LoadModel::Closed { .. } => None,
    };
    let saturation_reason = if cpu_percent >= 90.0 * threads as f64 {
        Some(format!(
            "the load client used {cpu_percent:.0}% CPU with {threads} thread(s): it, not the server, was the limit"
        ))
    } else if offered.is_some() && (late + dropped) * 100 > collector.summary().executed.max(1) {
        Some(format!(
            "{late} sends late and {dropped} dropped: the connections could not keep the rate"
        ))
    } else {
        None
    };
    let summary = collector.summary();
    let shared =
        Arc::try_unwrap(shared).map_err(|_| anyhow::anyhow!("load tasks still running"))?;
    Ok(RunOutput {
        run_id,
        summary,
        collector,
        ledger: shared.ledger,
        client: ClientUse {
            cpu_percent,
            cores,
            threads,
            late_sends: late,
            dropped_sends: dropped,
            saturated: saturation_reason.is_some(),
            saturation_reason,
        },
        stopped_by,
    })
}

async fn sample_until_done(
    spec: &RunSpec,
    shared: &Arc<Shared>,
    load: &tokio::task::JoinHandle<(u64, u64)>,
) -> (Collector, Option<String>) {
    let mut collector = Collector::default();
    let progress = progress_bar();
    let warmup = spec.warmup_secs as i64;
    let end = spec.duration_secs.map(|d| warmup + d as i64);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last = Instant::now();
    let mut second: i64 = 0;
    let mut zero_tps_for = 0u64;
    let mut stopped_by = None;
    loop {
        tick.tick().await;
        let now = Instant::now();
        let length = now - last;
        last = now;
        let t = second - warmup;
        second += 1;
        let vusers = shared.active.load(Ordering::Relaxed);
        let sample = collector.sample(&shared.recorder, t, length, vusers);
        let totals = collector.summary();
        let message = format!(
            "{:>4}s {} | vusers {:>5} | TPS {:>8.0} | p99 {:>7.1} ms | tests {:>9} | errors {:>6}",
            second,
            if t < 0 { "warm-up " } else { "measured" },
            vusers,
            sample.tps,
            sample.p99_ms,
            totals.tests,
            totals.errors,
        );
        match &progress {
            Some(bar) => bar.set_message(message),
            None if second % 10 == 0 => eprintln!("{message}"),
            None => {}
        }
        // nGrinder's stop rules: too many errors, or no progress at all.
        if totals.executed >= 1_000
            && totals.errors as f64 > spec.stop_error_ratio * totals.executed as f64
        {
            stopped_by = Some(format!(
                "stopped: {} of {} requests failed",
                totals.errors, totals.executed
            ));
        }
        zero_tps_for = if sample.tests == 0 && t >= 0 {
            zero_tps_for + 1
        } else {
            0
        };
        if zero_tps_for >= spec.stop_zero_tps_secs.max(1) {
            stopped_by = Some(format!("stopped: no successful test for {zero_tps_for} s"));
        }
        if stopped_by.is_some() || end.is_some_and(|e| second >= e) || load.is_finished() {
            break;
        }
    }
    shared.stop.cancel();
    // Let requests in flight finish and land in a last (partial) sample.
    let deadline = Instant::now() + shared.timeout + Duration::from_millis(500);
    while !load.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = second - warmup;
    collector.sample(&shared.recorder, t, last.elapsed(), 0);
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    (collector, stopped_by)
}

fn progress_bar() -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    Some(bar)
}

/// nGrinder's ramp-up: `initial` vusers at once, then `step` more every
/// `interval`.
#[derive(Debug, Clone, Copy)]
struct Ramp {
    initial: u32,
    step: u32,
    interval: Duration,
}

impl Ramp {
    /// When vuser `id` starts, after the run's start.
    fn start_of(&self, id: u32) -> Duration {
        let initial = self.initial.max(1);
        if id < initial {
            return Duration::ZERO;
        }
        let batch = (id - initial) / self.step.max(1) + 1;
        self.interval * batch
    }
}

/// The closed model. Vuser `i` runs on event loop `i % threads`: each loop is
/// a single-threaded runtime on a thread of its own, like wrk's, so that a
/// reply wakes its vuser on the thread that waits for it, with no hand-over
/// between threads (a multi-threaded runtime reached about 80% of wrk's rate
/// on the same endpoint; docs/RESULTS.md).
async fn closed(
    shared: Arc<Shared>,
    targets: Vec<Target>,
    vusers: u32,
    ramp: Ramp,
    think: Duration,
    threads: usize,
) {
    let loops: Vec<_> = (0..threads.max(1))
        .map(|t| {
            let shared = shared.clone();
            let targets = targets.clone();
            let mine: Vec<u32> = (0..vusers)
                .filter(|id| *id as usize % threads.max(1) == t)
                .collect();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            let spawned = std::thread::Builder::new()
                .name(format!("vusers-{t}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(error = %e, "no runtime for the vusers");
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let mut set = tokio::task::JoinSet::new();
                        for id in mine {
                            let target = targets[id as usize % targets.len()].clone();
                            let shared = shared.clone();
                            let delay = ramp.start_of(id);
                            set.spawn(async move {
                                if !delay.is_zero() {
                                    tokio::select! {
                                        _ = tokio::time::sleep(delay) => {}
                                        _ = shared.stop.cancelled() => return,
                                    }
                                }
                                vuser(shared, id, target, think).await;
                            });
                        }
                        while set.join_next().await.is_some() {}
                    });
                    let _ = done_tx.send(());
                });
            (spawned, done_rx)
        })
        .collect();
    for (spawned, done) in loops {
        if spawned.is_ok() {
            let _ = done.await;
        }
    }
}

async fn vuser(shared: Arc<Shared>, id: u32, target: Target, think: Duration) {
    shared.active.fetch_add(1, Ordering::Relaxed);
    let mut conn = Conn::new(target);
    let mut user = String::with_capacity(32);
    let mut auth = String::with_capacity(256);
    let mut seq = 0u64;
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    while !shared.stop.is_cancelled() && shared.take_budget() {
        let key = shared.mode.key(seq, rng.random());
        if shared.as_user {
            shared.mode.user(&shared.run_id, id, key, &mut user);
            shared.minter.bearer(&user, &mut auth);
        }
        let sent = Instant::now();
        let outcome = conn
            .send(shared.method, &shared.path, &auth, shared.timeout)
            .await;
        shared.recorder.record(id as usize, outcome, sent.elapsed());
        shared.ledger.record(id, key, outcome);
        seq += 1;
        if !think.is_zero() {
            tokio::time::sleep(think).await;
        }
    }
    shared.active.fetch_sub(1, Ordering::Relaxed);
}

/// The open model; returns (late, dropped) sends.
async fn open(
    shared: Arc<Shared>,
    targets: Vec<Target>,
    rate: u64,
    max_connections: u32,
) -> (u64, u64) {
    let connections = max_connections.max(1) as usize;
    let idle: Arc<Mutex<Vec<Conn>>> = Arc::new(Mutex::new(
        (0..connections)
            .map(|i| Conn::new(targets[i % targets.len()].clone()))
            .collect(),
    ));
    let permits = Arc::new(Semaphore::new(connections));
    let waiting = Arc::new(AtomicU64::new(0));
    let (mut late, mut dropped) = (0u64, 0u64);
    let backlog = rate.max(1);
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let start = tokio::time::Instant::now();
    shared.active.store(connections as u64, Ordering::Relaxed);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0u64.. {
        let intended = start + period.mul_f64(i as f64);
        tokio::select! {
            _ = tokio::time::sleep_until(intended) => {}
            _ = shared.stop.cancelled() => break,
        }
        if !shared.take_budget() {
            break;
        }
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                late += 1;
                if waiting.load(Ordering::Relaxed) >= backlog {
                    dropped += 1;
                    continue;
                }
                None
            }
        };
        let (shared, idle, permits, waiting) = (
            shared.clone(),
            idle.clone(),
            permits.clone(),
            waiting.clone(),
        );
        let intended: Instant = intended.into_std();
        tasks.spawn(async move {
            let _permit = match permit {
                Some(p) => p,
                None => {
                    waiting.fetch_add(1, Ordering::Relaxed);
                    let p = permits.acquire_owned().await;
                    waiting.fetch_sub(1, Ordering::Relaxed);
                    match p {
                        Ok(p) => p,
                        Err(_) => return,
                    }
                }
            };
            let Some(mut conn) = idle.lock().await.pop() else {
                return;
            };
            let (mut user, mut auth) = (String::new(), String::new());
            let key = shared.mode.key(i, rand::rng().random());
            if shared.as_user {
                shared.mode.user(&shared.run_id, 0, key, &mut user);
                shared.minter.bearer(&user, &mut auth);
            }
            let outcome = conn
                .send(shared.method, &shared.path, &auth, shared.timeout)
                .await;
            shared
                .recorder
                .record(i as usize, outcome, intended.elapsed());
            shared.ledger.record(0, key, outcome);
            idle.lock().await.push(conn);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    shared.active.store(0, Ordering::Relaxed);
    (late, dropped)
}

/// User + system CPU seconds of this process (Linux `/proc/self/stat`).
fn cpu_seconds() -> f64 {
    crate::procs::own_cpu_seconds()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ramp_starts_the_initial_vusers_at_once_then_a_step_per_interval() {
        let ramp = Ramp {
            initial: 10,
            step: 5,
            interval: Duration::from_secs(2),
        };
        assert_eq!(ramp.start_of(0), Duration::ZERO);
        assert_eq!(ramp.start_of(9), Duration::ZERO);
        assert_eq!(ramp.start_of(10), Duration::from_secs(2));
        assert_eq!(ramp.start_of(14), Duration::from_secs(2));
        assert_eq!(ramp.start_of(15), Duration::from_secs(4));
    }
}
