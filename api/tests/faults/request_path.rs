//! The faults of the request path (1, 3, 4, 5, 12): run once per strategy,
//! each on a cell of its own.

use std::time::{Duration, Instant};

use ngrinder_equivalent::load::{self};
use ngrinder_equivalent::users::UserMode;

use crate::cell::Cell;
use crate::support::*;

// 1. Load with duplicates over three instances.
per_strategy!(f01_load_with_duplicates => f01);

async fn f01(strategy: &'static str) {
    let started = Instant::now();
    let cell = Cell::start(3, 1, &strategy_env(strategy, &[])).await;
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

// 3. The broker stopped under load, then restarted (durable storage).
per_strategy!(f03_broker_stopped_under_load => f03);

async fn f03(strategy: &'static str) {
    let started = Instant::now();
    let cell = Cell::start(2, 1, &strategy_env(strategy, &[])).await;
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
    cell.broker.sigkill();
    tokio::time::sleep(outage).await;
    cell.broker.launch();
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

// 4. Redis restarted empty mid-campaign.
per_strategy!(f04_redis_restarted_empty => f04);

async fn f04(strategy: &'static str) {
    let started = Instant::now();
    let cell = Cell::start(2, 1, &strategy_env(strategy, &[])).await;
    let stock = pick(300, 3_000);
    let campaign = cell.campaign(stock as i64).await;
    let id = common::ids::CampaignId::parse(&campaign).unwrap();
    let first = offer(
        &cell,
        &campaign,
        &spec(cell.targets(), 50, Some(stock / 2), None, UserMode::Unique),
    )
    .await;

    cell.redis.launch();
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

    // No operator: the worker's gate keeper rebuilds the state.
    let healed = Instant::now();
    while cell
        .admin
        .campaign(&campaign)
        .await
        .map(|c| c.taken.is_none())
        .unwrap_or(true)
    {
        assert!(
            healed.elapsed() < Duration::from_secs(60),
            "the gate keeper did not rebuild the campaign within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let rebuilt = serde_json::json!({ "healed_after_secs": healed.elapsed().as_secs_f64() });
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
    let with_slot: std::collections::BTreeSet<String> = {
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
    assert_eq!(with_slot, rows, "the rebuilt set differs from the rows");
}

// 5. An api instance crashing between gate and produce.
per_strategy!(f05_crash_between_gate_and_produce => f05);

async fn f05(strategy: &'static str) {
    let started = Instant::now();
    let fault = strategy_env(strategy, &[("APP_FAULTS__CRASH_AFTER_GATE_USER", "victim")]);
    let cell = Cell::start(1, 1, &fault).await;
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
    // task takes the slot and crashes; the other strategies crash first.
    if strategy != "async-queue" {
        assert!(crashed.is_err(), "the api answered instead of crashing");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cell.api_exited(0) {
        assert!(Instant::now() < deadline, "the api did not crash");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cell.spawn_api(0, &fault);
    crate::cell::wait_ready(cell.ops_ports[0]).await;

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

// 12. SIGTERM to one api instance under load behind HAProxy.
per_strategy!(f12_sigterm_behind_haproxy => f12);

async fn f12(strategy: &'static str) {
    let started = Instant::now();
    let cell = Cell::start(
        3,
        1,
        &strategy_env(strategy, &[("APP_HTTP__DRAIN_DELAY_MS", "1500")]),
    )
    .await;
    let campaign = cell.campaign(1_000_000).await;
    let port = common::testkit::spare_port();
    let dir = std::env::temp_dir().join(format!("coupon-haproxy-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let servers: String = cell
        .api_ports
        .iter()
        .zip(&cell.ops_ports)
        .enumerate()
        .map(|(i, (p, o))| format!("    server api{i} 127.0.0.1:{p} check port {o}\n"))
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
    // nobody. The other strategies shed load by design and take no slot
    // when they do (the audit above holds): a request still waiting for the
    // campaign's lock after the production lock wait (2 s), or finding the
    // async queue full, is answered 503; the figures count them.
    if strategy == "sync" {
        assert_eq!(count("unavailable"), 0, "{:?}", out.summary.outcomes);
    }
}
