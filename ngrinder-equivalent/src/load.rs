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
use tokio_util::sync::CancellationToken;

use crate::client::{Conn, Method, Target, number_field, outcome_field, string_field};
use crate::spec::{Endpoint, LoadModel, RunSpec};
use crate::stats::{Collector, Outcome, Recorder, Summary};
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
    /// Open model: sends whose time had come but which no connection had
    /// sent when the run stopped (recorded as `unsent`, with their wait).
    #[serde(default)]
    pub unsent_sends: u64,
    /// The client, not the server, limited the run.
    pub saturated: bool,
    pub saturation_reason: Option<String>,
}

/// What a run through a waiting room measured besides its issue requests.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RoomFigures {
    pub joins: u64,
    /// Reads of `/room/me` (joins not included).
    pub status_reads: u64,
    /// Latency of joins and status reads together, every reply included.
    pub status_p50_us: u64,
    pub status_p99_us: u64,
    /// From a user's join to the reply that said it was admitted.
    pub wait_p50_ms: u64,
    pub wait_p99_ms: u64,
    pub wait_max_ms: u64,
    /// Users admitted.
    pub admitted: u64,
}

/// The waiting room's side of a run.
struct Room {
    join: String,
    look: String,
    joins: AtomicU64,
    reads: AtomicU64,
    admitted: AtomicU64,
    status_us: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
    wait_ms: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
}

impl Room {
    fn new(campaign: &str) -> Self {
        let histogram = || std::sync::Mutex::new(crate::stats::new_histogram());
        Self {
            join: format!("/api/v1/campaigns/{campaign}/room"),
            look: format!("/api/v1/campaigns/{campaign}/room/me"),
            joins: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            status_us: histogram(),
            wait_ms: histogram(),
        }
    }

    fn record(histogram: &std::sync::Mutex<hdrhistogram::Histogram<u64>>, value: u64) {
        histogram
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .saturating_record(value.max(1));
    }

    fn figures(&self) -> RoomFigures {
        let status = self
            .status_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let wait = self
            .wait_ms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        RoomFigures {
            joins: self.joins.load(Ordering::Relaxed),
            status_reads: self.reads.load(Ordering::Relaxed),
            status_p50_us: status.value_at_quantile(0.5),
            status_p99_us: status.value_at_quantile(0.99),
            wait_p50_ms: wait.value_at_quantile(0.5),
            wait_p99_ms: wait.value_at_quantile(0.99),
            wait_max_ms: wait.max(),
            admitted: self.admitted.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug)]
pub struct RunOutput {
    pub run_id: String,
    pub collector: Collector,
    pub summary: Summary,
    pub ledger: Ledger,
    pub client: ClientUse,
    pub stopped_by: Option<String>,
    pub room: Option<RoomFigures>,
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
    /// Users go through the campaign's waiting room first.
    room: Option<Room>,
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
    let room = match (spec.waiting_room, &spec.model) {
        (None, _) => None,
        (Some(_), LoadModel::Closed { .. }) if as_user => Some(Room::new(campaign)),
        (Some(_), _) => {
            anyhow::bail!("a waiting room needs the closed model and the issue endpoint")
        }
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
        room,
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
    let (late, unsent) = load.await.unwrap_or((0, 0));
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
    } else if offered.is_some() && (late + unsent) * 100 > collector.summary().executed.max(1) {
        Some(format!(
            "{late} sends late and {unsent} unsent at the end: the connections could not keep the rate"
        ))
    } else {
        None
    };
    let summary = collector.summary();
    let room = shared.room.as_ref().map(Room::figures);
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
            unsent_sends: unsent,
            saturated: saturation_reason.is_some(),
            saturation_reason,
        },
        stopped_by,
        room,
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
        let (outcome, latency) = match &shared.room {
            Some(room) => match through_room(&shared, room, &mut conn, &auth).await {
                Some(done) => done,
                None => break,
            },
            None => {
                let sent = Instant::now();
                let outcome = conn
                    .send(shared.method, &shared.path, &auth, shared.timeout)
                    .await;
                (outcome, sent.elapsed())
            }
        };
        shared.recorder.record(id as usize, outcome, latency);
        shared.ledger.record(id, key, outcome);
        seq += 1;
        if !think.is_zero() {
            tokio::time::sleep(think).await;
        }
    }
    shared.active.fetch_sub(1, Ordering::Relaxed);
}

/// One user through the waiting room: join, read its place again when the
/// reply says (`retry_after_ms`), issue once admitted. The request recorded
/// as the user's test is the issue, or the room reply that ended the wait
/// without one (sold out, closed, an error). `None`: the run stopped while
/// the user waited.
async fn through_room(
    shared: &Shared,
    room: &Room,
    conn: &mut Conn,
    auth: &str,
) -> Option<(Outcome, Duration)> {
    let joined = Instant::now();
    let mut sent = Instant::now();
    let mut reply = conn
        .call(Method::Post, &room.join, auth, shared.timeout)
        .await;
    room.joins.fetch_add(1, Ordering::Relaxed);
    loop {
        let latency = sent.elapsed();
        Room::record(&room.status_us, latency.as_micros() as u64);
        let (status, body) = match reply {
            Ok(r) => r,
            Err(failed) => return Some((failed, latency)),
        };
        match string_field(&body, "state") {
            Some(b"admitted") => break,
            Some(b"waiting") => {
                let wait = number_field(&body, "retry_after_ms").unwrap_or(1_000);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                    _ = shared.stop.cancelled() => return None,
                }
            }
            _ => return Some((Outcome::from_reply(status, outcome_field(&body)), latency)),
        }
        sent = Instant::now();
        reply = conn
            .call(Method::Get, &room.look, auth, shared.timeout)
            .await;
        room.reads.fetch_add(1, Ordering::Relaxed);
    }
    room.admitted.fetch_add(1, Ordering::Relaxed);
    Room::record(&room.wait_ms, joined.elapsed().as_millis() as u64);
    let sent = Instant::now();
    let outcome = conn
        .send(shared.method, &shared.path, auth, shared.timeout)
        .await;
    Some((outcome, sent.elapsed()))
}

/// How long after its time a send may be taken and still count as on time:
/// the timer's tick, which the sleeps of the schedule round to anyway. The
/// same tick is what a send's wake-up may lag its time by and still be the
/// client's own: its latency then runs from the wake-up (see [`open`]).
const LATE_AFTER: Duration = Duration::from_millis(1);

/// The open model, as wrk2 runs it: a schedule of sends `1 / rate` apart,
/// and `max_connections` connections that each take the next send of the
/// schedule, wait for its time if it has not come, send, and take the next.
/// Latency runs from the intended time, so a send taken late (no connection
/// was free at its time) carries its wait. A send taken in time sleeps until
/// its time, and the timer wakes it up to a tick later (tokio rounds a sleep
/// up to the next millisecond): that lag is the client's clock, not the
/// server's backlog, so its latency runs from the wake-up, but never from
/// later than one tick ([`LATE_AFTER`]) after its time — a wake-up later
/// than that (a starved client) is charged to the request. Without this a
/// server answering in 0.1 ms measured 1.2–1.5 ms at 200/s.
///
/// Sends whose time came but which no connection took in time and none had
/// sent when the run stopped are *unsent*: each is recorded as
/// [`Outcome::Unsent`] with the time it had waited by then, so the backlog
/// the client could not send shows in the every-request percentiles instead
/// of vanishing. (A send a connection took in time and was woken for a
/// timer tick after the stop was not held up, and is not counted.) Returns
/// (late, unsent).
async fn open(
    shared: Arc<Shared>,
    targets: Vec<Target>,
    rate: u64,
    max_connections: u32,
) -> (u64, u64) {
    let connections = max_connections.max(1) as usize;
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let start = tokio::time::Instant::now();
    let intended = move |i: u64| start + period.mul_f64(i as f64);
    // The next send of the schedule no connection has taken.
    let schedule = Arc::new(AtomicU64::new(0));
    let late = Arc::new(AtomicU64::new(0));
    shared.active.store(connections as u64, Ordering::Relaxed);
    let mut workers = tokio::task::JoinSet::new();
    for c in 0..connections {
        let mut conn = Conn::new(targets[c % targets.len()].clone());
        let (shared, schedule, late) = (shared.clone(), schedule.clone(), late.clone());
        // Returns the send it held when the run stopped if it had taken it
        // late (backlog); one taken in time and waiting for its time, or
        // woken for it a timer tick after the stop, was not held up.
        workers.spawn(async move {
            let (mut user, mut auth) = (String::new(), String::new());
            loop {
                let i = schedule.fetch_add(1, Ordering::Relaxed);
                let at = intended(i);
                let taken_late = tokio::time::Instant::now() > at + LATE_AFTER;
                if taken_late {
                    late.fetch_add(1, Ordering::Relaxed);
                }
                tokio::select! {
                    biased;
                    _ = shared.stop.cancelled() => return taken_late.then_some(i),
                    _ = tokio::time::sleep_until(at) => {}
                }
                let from = measured_from(at, tokio::time::Instant::now(), taken_late);
                if !shared.take_budget() {
                    return None;
                }
                let key = shared.mode.key(i, rand::rng().random());
                if shared.as_user {
                    user.clear();
                    auth.clear();
                    shared.mode.user(&shared.run_id, 0, key, &mut user);
                    shared.minter.bearer(&user, &mut auth);
                }
                let outcome = conn
                    .send(shared.method, &shared.path, &auth, shared.timeout)
                    .await;
                shared
                    .recorder
                    .record(i as usize, outcome, from.into_std().elapsed());
                shared.ledger.record(0, key, outcome);
            }
        });
    }
    let stopped_at = tokio::select! {
        _ = shared.stop.cancelled() => Some(tokio::time::Instant::now()),
        _ = async { while workers.join_next().await.is_some() {} } => None,
    };
    let mut held = Vec::new();
    while let Some(joined) = workers.join_next().await {
        held.extend(joined.ok().flatten());
    }
    shared.active.store(0, Ordering::Relaxed);
    let mut unsent = 0u64;
    if let Some(stopped_at) = stopped_at {
        // Every send due by the stop that no connection sent: the ones
        // nobody took, and the ones taken late but not yet sent.
        let due =
            (stopped_at.duration_since(start).as_secs_f64() / period.as_secs_f64()) as u64 + 1;
        let untaken = schedule.load(Ordering::Relaxed).min(due)..due;
        for i in untaken.chain(held.into_iter().filter(|&i| i < due)) {
            let waited = stopped_at.saturating_duration_since(intended(i));
            shared.recorder.record(i as usize, Outcome::Unsent, waited);
            unsent += 1;
        }
    }
    (late.load(Ordering::Relaxed), unsent)
}

/// Where an open-model send's latency runs from ([`open`]): its time `at`
/// if it was taken late, else its wake-up `woke`, but never later than one
/// tick after its time.
fn measured_from(
    at: tokio::time::Instant,
    woke: tokio::time::Instant,
    taken_late: bool,
) -> tokio::time::Instant {
    if taken_late {
        at
    } else {
        woke.min(at + LATE_AFTER)
    }
}

/// User + system CPU seconds of this process (Linux `/proc/self/stat`).
fn cpu_seconds() -> f64 {
    crate::procs::own_cpu_seconds()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_send_in_time_is_not_charged_the_timers_tick_but_a_starved_one_is() {
        let at = tokio::time::Instant::now();
        let ms = Duration::from_millis;
        // Woken 0.7 ms after its time (the timer rounding its sleep up):
        // latency runs from the wake-up.
        let woke = at + Duration::from_micros(700);
        assert_eq!(measured_from(at, woke, false), woke);
        // Woken 3 ms after its time (a starved client): only the first tick
        // is forgiven, the rest is charged to the request.
        assert_eq!(measured_from(at, at + ms(3), false), at + LATE_AFTER);
        // Taken late (no connection was free at its time): the whole wait
        // is the request's.
        assert_eq!(measured_from(at, at + ms(3), true), at);
        assert_eq!(measured_from(at, woke, true), at);
    }

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
