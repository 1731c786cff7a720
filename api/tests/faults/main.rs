//! The reliability suite: real faults injected into a real deployment of
//! the engine, each on services of its own (see `cell.rs`). Every fault
//! prints its figures — requests, accepted, rows, duplicates, lost, leaked —
//! and writes them to `target/faults/<fault>.json`.
//!
//! Run serially (`scripts/faults`, or `cargo test -p api --test faults --
//! --test-threads=1`). CI runs scaled-down numbers; `COUPON_FAULTS=full`
//! runs the full ones (docs/RELIABILITY.md).
//!
//! The faults of the request path (1, 3, 4, 5, 12) run once per strategy,
//! each on a cell of its own; `COUPON_FAULTS_STRATEGIES` (comma-separated)
//! narrows them. The worker's faults and the input checks do not depend on
//! the strategy and run once.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod cell;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cell::{ADMIN_TOKEN, Cell};
use common::settings::StrategyKind;
use common::testkit::read_topic;
use ngrinder_equivalent::audit::{self, AuditReport};
use ngrinder_equivalent::load::{self, RunOutput};
use ngrinder_equivalent::spec::{Endpoint, LoadModel, RunSpec};
use ngrinder_equivalent::stats::ErrorKind;
use ngrinder_equivalent::users::UserMode;
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

fn full() -> bool {
    std::env::var("COUPON_FAULTS").as_deref() == Ok("full")
}

/// The strategies the request-path faults run under.
fn strategies() -> Vec<&'static str> {
    let all = StrategyKind::ALL.map(|k| k.as_str());
    match std::env::var("COUPON_FAULTS_STRATEGIES") {
        Ok(list) if !list.trim().is_empty() => {
            let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
            for w in &wanted {
                assert!(
                    all.contains(w),
                    "unknown strategy {w} in COUPON_FAULTS_STRATEGIES"
                );
            }
            all.into_iter().filter(|s| wanted.contains(s)).collect()
        }
        _ => all.to_vec(),
    }
}

/// The CI figure, or the full one.
fn pick(ci: u64, full_run: u64) -> u64 {
    if full() { full_run } else { ci }
}

fn spec(
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

async fn offer(cell: &Cell, campaign: &str, spec: &RunSpec) -> RunOutput {
    load::execute(spec, campaign, cell.minter.clone())
        .await
        .unwrap()
}

fn failures_seen(out: &RunOutput) -> bool {
    out.summary.errors_by_kind.keys().any(|k| {
        matches!(
            k,
            ErrorKind::Server5xx | ErrorKind::Timeout | ErrorKind::Connection
        )
    })
}

async fn audit_of(
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
struct Figures {
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
    fn new(fault: impl Into<String>) -> Self {
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

    fn with_audit(mut self, requests: u64, a: &AuditReport) -> Self {
        self.requests = requests;
        self.accepted = a.accepted + a.deferred_finals.get("issued").copied().unwrap_or(0);
        self.rows = a.rows;
        self.duplicates = a.rows - a.distinct_users;
        self.lost = a.lost;
        self.leaked = a.gate_count.unwrap_or(0) - a.rows as i64;
        self
    }

    fn note(mut self, key: &'static str, value: impl Serialize) -> Self {
        self.notes.insert(key, serde_json::to_value(value).unwrap());
        self
    }

    fn report(mut self, started: Instant) {
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

/// 1. Load with duplicates over three instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f01_load_with_duplicates() {
    for strategy in strategies() {
        f01(strategy).await;
    }
}

async fn f01(strategy: &'static str) {
    let started = Instant::now();
    let cell = Cell::start(3, 1, &[("APP_STRATEGY", strategy)]).await;
    let (stock, users, requests) = (pick(500, 5_000), pick(2_000, 20_000), pick(20_000, 200_000));
    let campaign = cell.campaign(stock as i64).await;
    let mode = UserMode::Hot {
        users: users as u32,
    };
    let out = offer(
        &cell,
        &campaign,
        &spec(cell.targets(), 100, Some(requests), None, mode),
    )
    .await;
    let a = audit_of(&cell, &campaign, &[&out], &mode).await;
    Figures::new(format!("01-load-with-duplicates-{strategy}"))
        .with_audit(out.summary.executed, &a)
        .note("stock", stock)
        .note("users", users)
        .note("outcomes", &out.summary.outcomes)
        .report(started);
    assert!(a.passed, "{a:?}");
    assert_eq!(a.rows, stock, "{a:?}");
}

/// 2. kill -9 of the worker, again and again, while it drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f02_worker_killed_while_draining() {
    let started = Instant::now();
    let mut cell = Cell::start(1, 0, &[]).await;
    let n = pick(10_000, 50_000);
    let campaign = cell.campaign(n as i64).await;
    let out = offer(
        &cell,
        &campaign,
        &spec(cell.targets(), 100, Some(n), None, UserMode::Unique),
    )
    .await;
    assert_eq!(out.summary.outcomes.get("accepted"), Some(&n));
    // Small batches, so that the drain takes long enough to be killed often.
    // No static membership (`group.instance.id`): with the local broker a
    // restarted static member rejoins without getting its partitions back
    // (docs/ARCHITECTURE.md, The local broker); plain members rebalance.
    let slow_worker = [("APP_WORKER__BATCH_SIZE", "2")];
    let id = common::ids::CampaignId::parse(&campaign).unwrap();
    let db = cell.db.clone();
    let rows = || common::testkit::rows(&db, &id);
    cell.spawn_worker(0, &slow_worker);
    let (kills, every) = (pick(5, 10), Duration::from_secs(pick(1, 2)));
    let mut rows_at_kill = Vec::new();
    let mut resume_secs = Vec::new();
    for _ in 0..kills {
        // Kill only while it drains: wait for progress since the restart
        // (after the killed process's last commit, which can still land).
        let restarted = Instant::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = rows().await;
        while rows().await <= before && restarted.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        resume_secs.push((restarted.elapsed().as_secs_f64() * 10.0).round() / 10.0);
        tokio::time::sleep(every).await;
        let now = rows().await;
        if now >= n {
            break;
        }
        rows_at_kill.push(now);
        cell.stop_worker(0, "-KILL");
        cell.spawn_worker(0, &slow_worker);
    }
    let a = audit_of(&cell, &campaign, &[&out], &UserMode::Unique).await;
    let assigned = cell.worker_metric(0, "worker_assigned_partitions").await;
    let lag = cell.worker_metric(0, "worker_consumer_lag_offsets").await;
    Figures::new("02-worker-kill-9")
        .note("final_assigned_partitions", assigned)
        .note("final_consumer_lag", lag)
        .with_audit(out.summary.executed, &a)
        .note("kills", rows_at_kill.len())
        .note("rows_at_each_kill", &rows_at_kill)
        .note("seconds_to_resume_after_each_restart", &resume_secs)
        .report(started);
    assert!(a.passed, "{a:?}");
    assert_eq!(a.rows, a.accepted, "{a:?}");
    assert!(
        rows_at_kill.len() as u64 >= kills.min(3),
        "it drained before enough kills: {rows_at_kill:?}"
    );
    assert!(
        rows_at_kill.windows(2).all(|w| w[0] < w[1]),
        "no progress between kills: {rows_at_kill:?}"
    );
}

/// 3. The broker stopped under load, then restarted (durable storage).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f03_broker_stopped_under_load() {
    for strategy in strategies() {
        f03(strategy).await;
    }
}

async fn f03(strategy: &'static str) {
    let started = Instant::now();
    let mut cell = Cell::start(2, 1, &[("APP_STRATEGY", strategy)]).await;
    let campaign = cell.campaign(1_000_000).await;
    let outage = Duration::from_secs(pick(5, 20));
    let run = spec(
        cell.targets(),
        50,
        None,
        Some(outage.as_secs() + 12),
        UserMode::Unique,
    );
    let load = {
        let (spec, campaign, minter) = (run.clone(), campaign.clone(), cell.minter.clone());
        tokio::spawn(async move { load::execute(&spec, &campaign, minter).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    cell.broker.kill();
    tokio::time::sleep(outage).await;
    cell.broker.restart();
    let out = load.await.unwrap();
    let report = cell.tool(&["reconcile", "--campaign", &campaign, "--repair"]);
    let a = audit_of(&cell, &campaign, &[&out], &UserMode::Unique).await;
    Figures::new(format!("03-broker-outage-{strategy}"))
        .with_audit(out.summary.executed, &a)
        .note("outage_secs", outage.as_secs())
        .note("outcomes", &out.summary.outcomes)
        .note("reconcile", &report)
        .report(started);
    // The whole audit (no phantom, `persisted` == rows, …), not a part of it.
    assert!(a.passed, "{a:?}");
    assert_eq!(a.lost, 0, "{a:?}");
    assert_eq!(a.phantoms, 0, "{a:?}");
    assert_eq!(a.persisted_column, a.rows as i64, "{a:?}");
    assert_eq!(
        a.gate_count,
        Some(a.rows as i64),
        "the reconciliation gap did not close: {a:?}"
    );
    // A deferred (pending or queued) user ends with a coupon or without
    // one: `none`, or `rejected` with the outcome that stopped it.
    for state in a.deferred_finals.keys() {
        assert!(
            state == "issued" || state == "none" || state == "rejected",
            "a deferred user ended {state}: {a:?}"
        );
    }
    // Felt as 503s where the reply waits for the broker (sync; async-queue
    // through its full queue), as rejected deferred users where it does not.
    let unavailable = out
        .summary
        .outcomes
        .get("unavailable")
        .copied()
        .unwrap_or(0);
    let rejected = a.deferred_finals.get("rejected").copied().unwrap_or(0);
    assert!(
        unavailable + rejected > 0,
        "the outage was not felt: {:?} {a:?}",
        out.summary.outcomes
    );
}

/// 4. Redis restarted empty mid-campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f04_redis_restarted_empty() {
    for strategy in strategies() {
        f04(strategy).await;
    }
}

async fn f04(strategy: &'static str) {
    let started = Instant::now();
    let mut cell = Cell::start(2, 1, &[("APP_STRATEGY", strategy)]).await;
    let stock = pick(300, 3_000);
    let campaign = cell.campaign(stock as i64).await;
    let id = common::ids::CampaignId::parse(&campaign).unwrap();
    let first = offer(
        &cell,
        &campaign,
        &spec(cell.targets(), 50, Some(stock / 2), None, UserMode::Unique),
    )
    .await;

    cell.redis.restart();
    let during = offer(
        &cell,
        &campaign,
        &spec(cell.targets(), 20, Some(200), None, UserMode::Unique),
    )
    .await;
    assert_eq!(
        during.summary.outcomes.get("unavailable"),
        Some(&200),
        "{:?}",
        during.summary.outcomes
    );
    assert!(common::testkit::rows(&cell.db, &id).await <= stock);

    let rebuilt = cell.tool(&["rebuild", "--campaign", &campaign]);
    let after = offer(
        &cell,
        &campaign,
        &spec(cell.targets(), 50, Some(stock * 2), None, UserMode::Unique),
    )
    .await;
    let a = audit_of(
        &cell,
        &campaign,
        &[&first, &during, &after],
        &UserMode::Unique,
    )
    .await;
    let holders: std::collections::BTreeSet<String> = {
        let mut conn = redis::Client::open(cell.redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(common::keys::CampaignKeys::new(&id).users())
            .query_async(&mut conn)
            .await
            .unwrap();
        members.into_iter().collect()
    };
    let rows: std::collections::BTreeSet<String> = common::testkit::row_users(&cell.db, &id)
        .await
        .into_iter()
        .collect();
    Figures::new(format!("04-redis-lost-{strategy}"))
        .with_audit(
            first.summary.executed + during.summary.executed + after.summary.executed,
            &a,
        )
        .note("rebuild", &rebuilt)
        .note("answered_503_while_lost", during.summary.executed)
        .report(started);
    assert!(a.passed, "{a:?}");
    assert_eq!(a.rows, stock);
    assert_eq!(holders, rows, "the rebuilt set differs from the rows");
}

/// 5. An api instance crashing between gate and produce.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f05_crash_between_gate_and_produce() {
    for strategy in strategies() {
        f05(strategy).await;
    }
}

async fn f05(strategy: &'static str) {
    let started = Instant::now();
    let fault = [
        ("APP_FAULTS__CRASH_AFTER_GATE_USER", "victim"),
        ("APP_STRATEGY", strategy),
    ];
    let mut cell = Cell::start(1, 1, &fault).await;
    let stock = pick(20, 200);
    let campaign = cell.campaign(stock as i64).await;
    let mut token = String::new();
    cell.minter.bearer("victim", &mut token);
    let crashed = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/campaigns/{campaign}/issue",
            cell.targets()[0]
        ))
        .header("authorization", &token)
        .send()
        .await;
    // Under async-queue the reply (`queued`) may leave before the queue's
    // task admits the user and crashes; the other strategies crash first.
    if strategy != "async-queue" {
        assert!(crashed.is_err(), "the api answered instead of crashing");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cell.api_exited(0) {
        assert!(Instant::now() < deadline, "the api did not crash");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cell.spawn_api(0, &fault);
    cell::wait_ready(cell.api_ports[0]).await;

    let before = offer(
        &cell,
        &campaign,
        &spec(cell.targets(), 20, Some(stock * 3), None, UserMode::Unique),
    )
    .await;
    let report = cell.tool(&["reconcile", "--campaign", &campaign, "--repair"]);
    assert_eq!(report["leaked"], 1, "{report}");
    assert_eq!(report["leaked_examples"][0], "victim", "{report}");
    let after = offer(
        &cell,
        &campaign,
        &spec(cell.targets(), 20, Some(stock), None, UserMode::Unique),
    )
    .await;
    let a = audit_of(&cell, &campaign, &[&before, &after], &UserMode::Unique).await;
    Figures::new(format!("05-crash-between-gate-and-produce-{strategy}"))
        .with_audit(before.summary.executed + after.summary.executed + 1, &a)
        .note("reconcile", &report)
        .report(started);
    assert!(a.passed, "{a:?}");
    assert_eq!(a.rows, stock, "the freed slot was not issued again");
}

/// 6. PostgreSQL stopped under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f06_postgres_stopped() {
    let started = Instant::now();
    // Staying in the group through the outage is what this fault checks, so
    // it runs at the production session timeout (10 s), not the cell's 6 s
    // (kept short so that other faults' rebalances finish in time).
    let cell = Cell::start(
        1,
        1,
        &[
            ("APP_WORKER__RETRY_MAX_MS", "500"),
            ("APP_KAFKA__SESSION_TIMEOUT_MS", "10000"),
        ],
    )
    .await;
    let campaign = cell.campaign(1_000_000).await;
    // The outage starts once the worker is in the group: on the cell's fresh
    // broker its first assignment can take seconds, and a gauge still at 0
    // then read as "left the group" (two CI runs).
    let joined_after = cell.wait_assigned(0).await;
    let outage = Duration::from_secs(pick(5, 30));
    let run = spec(
        cell.targets(),
        30,
        None,
        Some(outage.as_secs() + 8),
        UserMode::Unique,
    );
    let load = {
        let (spec, campaign, minter) = (run.clone(), campaign.clone(), cell.minter.clone());
        tokio::spawn(async move { load::execute(&spec, &campaign, minter).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rebalances_before = cell.worker_metric(0, "worker_rebalances_total").await;
    cell.pg.set_running(false);
    let outage_started = Instant::now();
    let (mut paused_seen, mut min_assigned, mut dlq_max) = (false, f64::MAX, 0.0f64);
    while outage_started.elapsed() < outage {
        paused_seen |= cell.worker_metric(0, "worker_paused").await == Some(1.0);
        if let Some(a) = cell.worker_metric(0, "worker_assigned_partitions").await {
            min_assigned = min_assigned.min(a);
        }
        for reason in ["unparseable", "unknown_campaign", "over_stock"] {
            let name = format!("worker_dead_lettered_total{{reason=\"{reason}\"}}");
            dlq_max = dlq_max.max(cell.worker_metric(0, &name).await.unwrap_or(0.0));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let rebalances_after = cell.worker_metric(0, "worker_rebalances_total").await;
    cell.pg.set_running(true);
    let out = load.await.unwrap();
    let a = audit_of(&cell, &campaign, &[&out], &UserMode::Unique).await;
    Figures::new("06-postgres-outage")
        .with_audit(out.summary.executed, &a)
        .note("outage_secs", outage.as_secs())
        .note("paused_seen", paused_seen)
        .note("first_assignment_ms", joined_after.as_millis())
        .note("min_assigned_partitions", min_assigned)
        .note(
            "rebalances_during_outage",
            rebalances_after.zip(rebalances_before).map(|(a, b)| a - b),
        )
        .note("dead_lettered", dlq_max)
        .report(started);
    assert!(a.passed, "{a:?}");
    assert!(paused_seen, "the worker never paused");
    assert!(
        min_assigned > 0.0,
        "the worker left the group during the outage"
    );
    assert!(rebalances_before.is_some(), "the worker did not answer");
    assert_eq!(
        rebalances_after, rebalances_before,
        "the worker went through a rebalance during the outage"
    );
    assert_eq!(dlq_max, 0.0, "an outage dead-lettered messages");
}

/// 7. Workers 1 → 3 → 1 during a drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f07_rebalance_while_draining() {
    let started = Instant::now();
    let mut cell = Cell::start(1, 0, &[]).await;
    let n = pick(10_000, 50_000);
    let campaign = cell.campaign(n as i64).await;
    let out = offer(
        &cell,
        &campaign,
        &spec(cell.targets(), 100, Some(n), None, UserMode::Unique),
    )
    .await;
    cell.spawn_worker(0, &[]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cell.spawn_worker(1, &[]);
    cell.spawn_worker(2, &[]);
    tokio::time::sleep(Duration::from_secs(pick(3, 5))).await;
    cell.stop_worker(1, "-TERM");
    cell.stop_worker(2, "-TERM");
    let a = audit_of(&cell, &campaign, &[&out], &UserMode::Unique).await;
    Figures::new("07-rebalance-1-3-1")
        .with_audit(out.summary.executed, &a)
        .report(started);
    assert!(a.passed, "{a:?}");
    assert_eq!(a.rows, a.accepted);
}

/// 8. Poison messages among valid traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f08_poison_messages() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let started = Instant::now();
    let cell = Cell::start(1, 1, &[]).await;
    let campaign = cell.campaign(1_000_000).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cell.broker.address())
        .create()
        .unwrap();
    let poison = pick(20, 200);
    let load = {
        let (spec, campaign, minter) = (
            spec(
                cell.targets(),
                20,
                Some(pick(2_000, 20_000)),
                None,
                UserMode::Unique,
            ),
            campaign.clone(),
            cell.minter.clone(),
        );
        tokio::spawn(async move { load::execute(&spec, &campaign, minter).await.unwrap() })
    };
    for i in 0..poison {
        let payload = if i % 2 == 0 {
            b"{not json".to_vec()
        } else {
            br#"{"v":7}"#.to_vec()
        };
        producer
            .send(
                FutureRecord::to("coupon.issue.v1")
                    .key(&format!("poison-{i}"))
                    .payload(&payload),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let out = load.await.unwrap();
    let a = audit_of(&cell, &campaign, &[&out], &UserMode::Unique).await;
    let letters = read_topic(&cell.broker.address(), "coupon.issue.v1.dlq").await;
    let unparseable = letters
        .iter()
        .filter(|l| l.header("dlq.reason") == Some("unparseable"))
        .count();
    Figures::new("08-poison-messages")
        .with_audit(out.summary.executed, &a)
        .note("injected", poison)
        .note("dead_lettered", letters.len())
        .report(started);
    assert!(a.passed, "{a:?}");
    assert_eq!(letters.len() as u64, poison);
    assert_eq!(unparseable as u64, poison);
}

/// What bad input could change: a campaign's gate state, the topic, the rows.
async fn footprint(cell: &Cell, campaign: &str) -> (Value, i64, u64) {
    let id = common::ids::CampaignId::parse(campaign).unwrap();
    let state = cell.admin.campaign(campaign).await.unwrap();
    (
        json!([state.issued, state.persisted, state.state]),
        common::testkit::topic_messages(&cell.broker.address(), "coupon.issue.v1").await,
        common::testkit::rows(&cell.db, &id).await,
    )
}

/// 9. Bad input: hand-written cases, then schemathesis when available.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f09_bad_input() {
    let started = Instant::now();
    let cell = Cell::start(1, 1, &[]).await;
    let campaign = cell.campaign(100).await;
    let before = footprint(&cell, &campaign).await;
    let base = cell.targets()[0].clone();
    let client = reqwest::Client::new();
    let mut token = String::new();
    cell.minter.bearer("fuzzer", &mut token);
    let expired = {
        let m = ngrinder_equivalent::token::Minter::new(cell::JWT_SECRET, -3_600).unwrap();
        let mut t = String::new();
        m.bearer("fuzzer", &mut t);
        t
    };
    let long_id = "x".repeat(10_000);
    let cases: Vec<(reqwest::Method, String, Option<String>, Vec<u8>)> = vec![
        (
            reqwest::Method::POST,
            format!("/api/v1/campaigns/{long_id}/issue"),
            Some(token.clone()),
            vec![],
        ),
        (
            reqwest::Method::POST,
            "/api/v1/campaigns/%FF%FE/issue".into(),
            Some(token.clone()),
            vec![],
        ),
        (
            reqwest::Method::POST,
            "/api/v1/campaigns/1'%20OR%20'1'='1/issue".into(),
            Some(token.clone()),
            vec![],
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/campaigns/{campaign}/issue"),
            Some(expired.clone()),
            vec![],
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/campaigns/{campaign}/issue"),
            Some("Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.".into()),
            vec![],
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/campaigns/{campaign}/issue"),
            Some(format!("Bearer {}", "a".repeat(100_000))),
            vec![],
        ),
        (
            reqwest::Method::POST,
            "/api/v1/campaigns".into(),
            Some(format!("Bearer {ADMIN_TOKEN}")),
            vec![b'{'; 1 << 20],
        ),
        (
            reqwest::Method::POST,
            "/api/v1/campaigns".into(),
            Some(format!("Bearer {ADMIN_TOKEN}")),
            br#"{"name": 5, "stock": "many"}"#.to_vec(),
        ),
        (
            reqwest::Method::POST,
            "/api/v1/campaigns".into(),
            Some(format!("Bearer {ADMIN_TOKEN}")),
            vec![0xff, 0xfe, 0x00],
        ),
        (
            reqwest::Method::GET,
            format!("/api/v1/campaigns/{campaign}/coupons?after=%FF&limit=-1"),
            Some(format!("Bearer {ADMIN_TOKEN}")),
            vec![],
        ),
        (
            reqwest::Method::GET,
            format!("/api/v1/campaigns/{campaign}/coupons?limit=99999999999999999999"),
            Some(format!("Bearer {ADMIN_TOKEN}")),
            vec![],
        ),
    ];
    let mut statuses = BTreeMap::new();
    for (method, path, auth, body) in &cases {
        let mut req = client
            .request(method.clone(), format!("{base}{path}"))
            .body(body.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req = req.header("content-type", "application/json");
        // A request that got no reply at all (a dropped connection, a
        // timeout) is a failure like a 5xx: bad input gets a clear 4xx.
        let status = match req.send().await {
            Ok(r) => r.status().as_u16(),
            Err(e) => panic!("{method} {}: no reply: {e}", &path[..path.len().min(80)]),
        };
        assert!(
            (400..500).contains(&status),
            "{method} {} → {status}",
            &path[..path.len().min(80)]
        );
        *statuses.entry(status).or_insert(0) += 1;
    }
    // A header byte no client library sends (DEL), written on the wire.
    let raw = raw_status(
        &base,
        &format!(
            "POST /api/v1/campaigns/{campaign}/issue HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer \x7f\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!((400..500).contains(&raw), "a DEL in the token → {raw}");
    *statuses.entry(raw).or_insert(0) += 1;
    let schemathesis = std::env::var("COUPON_SCHEMATHESIS").ok();
    let mut fuzz = json!("not run (COUPON_SCHEMATHESIS unset)");
    if let Some(bin) = &schemathesis {
        let output = std::process::Command::new(bin)
            .args(["run", &format!("{base}/openapi.json")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,response_schema_conformance",
            ])
            .args(["--header", &format!("Authorization: {token}")])
            .args(["--max-examples", &pick(30, 300).to_string()])
            .output()
            .expect("schemathesis");
        let text = String::from_utf8_lossy(&output.stdout);
        fuzz = json!({"passed": output.status.success(), "tail": text.lines().rev().take(8).collect::<Vec<_>>()});
        assert!(
            output.status.success(),
            "schemathesis found failures:\n{text}"
        );
    }
    let after = footprint(&cell, &campaign).await;
    Figures::new("09-bad-input")
        .note("hand_written_cases", cases.len())
        .note("statuses", &statuses)
        .note("schemathesis", fuzz)
        .report(started);
    assert_eq!(before, after, "bad input changed state");
}

/// Sends `request` as written to the server at `base` (`http://host:port`)
/// and returns the status of its reply; panics if there is none.
async fn raw_status(base: &str, request: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply).await;
    let text = String::from_utf8_lossy(&reply);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no reply to a raw request: {text:?}"))
}

/// 10. Authorization.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f10_authorization() {
    let started = Instant::now();
    let cell = Cell::start(1, 1, &[]).await;
    let campaign = cell.campaign(10).await;
    let base = cell.targets()[0].clone();
    let client = reqwest::Client::new();
    let user = |name: &str| {
        let mut t = String::new();
        cell.minter.bearer(name, &mut t);
        t
    };
    let admin_routes = [
        (reqwest::Method::POST, "/api/v1/campaigns".to_owned()),
        (reqwest::Method::GET, "/api/v1/campaigns".to_owned()),
        (
            reqwest::Method::GET,
            format!("/api/v1/campaigns/{campaign}"),
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/campaigns/{campaign}/close"),
        ),
        (
            reqwest::Method::GET,
            format!("/api/v1/campaigns/{campaign}/coupons"),
        ),
    ];
    for (method, path) in &admin_routes {
        let none = client
            .request(method.clone(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(none.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        let as_user = client
            .request(method.clone(), format!("{base}{path}"))
            .header("authorization", user("alice"))
            .json(&json!({"name": "x", "stock": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(as_user.status(), StatusCode::FORBIDDEN, "{method} {path}");
    }
    // The user id comes from the token only: a body naming another user is ignored.
    let issued = client
        .post(format!("{base}/api/v1/campaigns/{campaign}/issue"))
        .header("authorization", user("alice"))
        .json(&json!({"user_id": "mallory", "sub": "mallory"}))
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), StatusCode::ACCEPTED);
    let me = |name: &str| {
        client
            .get(format!("{base}/api/v1/campaigns/{campaign}/coupons/me"))
            .header("authorization", user(name))
            .send()
    };
    let alice: Value = me("alice").await.unwrap().json().await.unwrap();
    let mallory: Value = me("mallory").await.unwrap().json().await.unwrap();
    assert!(
        alice["state"] == "issued" || alice["state"] == "pending",
        "{alice}"
    );
    assert_eq!(
        mallory["state"], "none",
        "mallory sees someone else's coupon: {mallory}"
    );
    Figures::new("10-authorization")
        .note("admin_routes_checked", admin_routes.len())
        .report(started);
}

/// 11. One user hammering with the per-user limit on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f11_rate_limiting() {
    let started = Instant::now();
    let limits = [
        ("APP_RATE_LIMIT__PER_USER__ENABLED", "true"),
        ("APP_RATE_LIMIT__PER_USER__PER_SECOND", "2"),
        ("APP_RATE_LIMIT__PER_USER__BURST", "5"),
    ];
    let cell = Cell::start(1, 1, &limits).await;
    let campaign = cell.campaign(1_000_000).await;
    let seconds = pick(5, 30);
    let polite = |duration| {
        let mut s = spec(cell.targets(), 20, None, Some(duration), UserMode::Unique);
        if let LoadModel::Closed { think_ms, .. } = &mut s.model {
            *think_ms = 20;
        }
        s
    };
    let alone = if full() {
        Some(offer(&cell, &campaign, &polite(seconds)).await)
    } else {
        None
    };
    let hammer = {
        let (spec, campaign, minter) = (
            spec(
                cell.targets(),
                20,
                None,
                Some(seconds),
                UserMode::Hot { users: 1 },
            ),
            campaign.clone(),
            cell.minter.clone(),
        );
        tokio::spawn(async move { load::execute(&spec, &campaign, minter).await.unwrap() })
    };
    let beside = if full() {
        Some(offer(&cell, &campaign, &polite(seconds)).await)
    } else {
        None
    };
    let hammer = hammer.await.unwrap();
    let limited = hammer
        .summary
        .outcomes
        .get("rate_limited")
        .copied()
        .unwrap_or(0);
    let accepted = hammer
        .summary
        .outcomes
        .get("accepted")
        .copied()
        .unwrap_or(0);
    let mut figures = Figures::new("11-rate-limiting")
        .note("hammer_requests", hammer.summary.executed)
        .note("hammer_rate_limited", limited)
        .note("hammer_accepted", accepted);
    if let (Some(alone), Some(beside)) = (&alone, &beside) {
        figures = figures
            .note("polite_p99_us_unloaded", alone.summary.p99_us)
            .note("polite_p99_us_beside_hammer", beside.summary.p99_us);
    }
    figures.report(started);
    assert!(
        limited > hammer.summary.executed / 2,
        "the hammer was not limited"
    );
    assert_eq!(accepted, 1);
    let state = cell.admin.campaign(&campaign).await.unwrap();
    let polite_accepted: u64 = [&alone, &beside]
        .iter()
        .filter_map(|o| o.as_ref())
        .map(|o| o.summary.outcomes.get("accepted").copied().unwrap_or(0))
        .sum();
    assert_eq!(
        state.issued,
        Some(1 + polite_accepted as i64),
        "the hammer spent stock"
    );
}

/// 12. SIGTERM to one api instance under load behind HAProxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f12_sigterm_behind_haproxy() {
    for strategy in strategies() {
        f12(strategy).await;
    }
}

async fn f12(strategy: &'static str) {
    let started = Instant::now();
    let mut cell = Cell::start(
        3,
        1,
        &[
            ("APP_HTTP__DRAIN_DELAY_MS", "1500"),
            ("APP_STRATEGY", strategy),
        ],
    )
    .await;
    let campaign = cell.campaign(1_000_000).await;
    let port = common::testkit::spare_port();
    let dir = std::env::temp_dir().join(format!("coupon-haproxy-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let servers: String = cell
        .api_ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("    server api{i} 127.0.0.1:{p} check\n"))
        .collect();
    let config = format!(
        "global\n    maxconn 4000\ndefaults\n    mode http\n    option http-keep-alive\n    option redispatch\n    retries 2\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\nfrontend f\n    bind 127.0.0.1:{port}\n    default_backend b\nbackend b\n    balance leastconn\n    option httpchk GET /readyz\n    http-check expect status 200\n    default-server inter 200ms fall 2 rise 2\n{servers}"
    );
    std::fs::write(dir.join("haproxy.cfg"), config).unwrap();
    let mut haproxy = std::process::Command::new("haproxy")
        .args(["-f", &dir.join("haproxy.cfg").display().to_string()])
        .spawn()
        .expect("haproxy");
    common::testkit::wait_for_port(port, Duration::from_secs(10), "haproxy");
    tokio::time::sleep(Duration::from_millis(600)).await;

    let run = spec(
        vec![format!("http://127.0.0.1:{port}")],
        30,
        None,
        Some(pick(8, 20)),
        UserMode::Unique,
    );
    let load = {
        let (spec, campaign, minter) = (run.clone(), campaign.clone(), cell.minter.clone());
        tokio::spawn(async move { load::execute(&spec, &campaign, minter).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let exit = cell.stop_api(1, "-TERM");
    let out = load.await.unwrap();
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    let a = audit_of(&cell, &campaign, &[&out], &UserMode::Unique).await;
    Figures::new(format!("12-sigterm-behind-haproxy-{strategy}"))
        .with_audit(out.summary.executed, &a)
        .note("errors", out.summary.errors)
        .note("outcomes", &out.summary.outcomes)
        .note("api_exit", exit.code())
        .report(started);
    assert!(exit.success(), "the api did not exit cleanly: {exit}");
    assert!(a.passed, "{a:?}");
    // HAProxy routed around the draining instance: no error of its own
    // (its 502/503 pages), no connection dropped, no request left hanging.
    let count = |outcome: &str| out.summary.outcomes.get(outcome).copied().unwrap_or(0);
    let routing_errors = count("unexpected_5xx") + count("timeout") + count("connection");
    assert_eq!(
        routing_errors, 0,
        "HAProxy did not route around the draining instance: {:?}",
        out.summary.outcomes
    );
    // The engine's own 503s: none under `sync`, where a request waits for
    // nobody. The other strategies shed load by design and admit nobody
    // when they do (the audit above holds): a request still waiting for the
    // campaign's lock after the production lock wait (2 s), or finding the
    // async queue full, is answered 503; the figures count them.
    if strategy == "sync" {
        assert_eq!(count("unavailable"), 0, "{:?}", out.summary.outcomes);
    }
}
