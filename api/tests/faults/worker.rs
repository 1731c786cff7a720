//! The worker's faults (2, 6, 7, 8, 13): they do not depend on the strategy
//! and run once.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::testkit::read_topic;
use ngrinder_equivalent::load::{self};
use ngrinder_equivalent::users::UserMode;

use crate::cell::{Cell, CellOptions};
use crate::support::*;

/// 2. kill -9 of the worker, again and again, while it drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f02_worker_killed_while_draining() {
    let started = Instant::now();
    let cell = Cell::start(1, 0, &[]).await;
    let n = pick(10_000, 50_000);
    let (campaign, out) = backlog(&cell, n).await;
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
    let cell = Cell::start(1, 0, &[]).await;
    let n = pick(10_000, 50_000);
    let (campaign, out) = backlog(&cell, n).await;
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

/// 13. The broker frozen through four of the gate keeper's failed rebuilds
/// (a Redis restart lost the gate state meanwhile), then thawed at once:
/// the campaign is rebuilt within a tick, the rebuild's settle wait and its
/// reads of the thaw, at the production defaults, whatever back-off the
/// failures built. Before, each failure doubled the keeper's wait for the
/// next attempt (2, 4, 8, 16 s), and nothing brought it forward: thawed
/// just after the fourth failure, the broker waited out 16 s more before a
/// rebuild even began (rebuilt 31 s after the thaw; the fault campaign's
/// long run, rule 10: a campaign answering 503 for 25 s after the broker
/// came back).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f13_broker_down_through_failed_rebuilds() {
    let started = Instant::now();
    let logs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/faults/13-logs");
    let _ = std::fs::remove_dir_all(&logs);
    let cell = Cell::start_with(CellOptions {
        apis: 1,
        workers: 1,
        logs: Some(logs),
        ..CellOptions::default()
    })
    .await;
    let campaign = cell.campaign(1_000).await;
    cell.wait_assigned(0).await;
    // The worker's count of failed rebuilds (scraped until it answers).
    let failed = || async {
        for _ in 0..40 {
            if let Some(n) = cell
                .worker_metric(0, "worker_gate_rebuilds_total{result=\"failed\"}")
                .await
            {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("the worker's metrics did not answer for 10 s");
    };
    let failed_before = failed().await;
    cell.broker.freeze(true);
    // An empty Redis: the campaign's gate state is missing until rebuilt.
    cell.redis.launch();
    let frozen = Instant::now();
    // Each attempt waits 14 s for the takes to settle, then fails its
    // first read of the broker after 10 s; the waits between them are 2, 4
    // and 8 s: the fourth failure comes about 115 s after the freeze.
    while failed().await < failed_before + 4.0 {
        assert!(
            frozen.elapsed() < Duration::from_secs(240),
            "the keeper's rebuilds did not fail four times within 240 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let failures_after = frozen.elapsed();
    cell.broker.freeze(false);
    let thawed = Instant::now();
    while cell
        .admin
        .campaign(&campaign)
        .await
        .map(|c| c.taken.is_none())
        .unwrap_or(true)
    {
        assert!(
            thawed.elapsed() < Duration::from_secs(90),
            "the gate keeper did not rebuild the campaign within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let rebuilt_after = thawed.elapsed();
    Figures::new("13-broker-down-through-failed-rebuilds")
        .note("four_failures_after_secs", failures_after.as_secs_f64())
        .note("rebuilt_after_thaw_secs", rebuilt_after.as_secs_f64())
        .report(started);
    // A tick (1 s) and a probe, the rebuild's settle (`takes_settle_within`
    // + 1 s: 14 s) and its reads, with 8 s for the machine.
    let bound =
        common::settings::Settings::default().takes_settle_within() + Duration::from_secs(11);
    assert!(
        rebuilt_after < bound,
        "rebuilt {rebuilt_after:?} after the broker came back (bound {bound:?})"
    );
}
