//! The four request-path strategies, each through two real api instances:
//! the same burst, the same audit. And what only some of them have: the
//! paused lock holder, the full queue, the queue at shutdown.

use std::time::Duration;

use crate::helpers::*;
use common::settings::{LockMode, Settings, StrategyKind};
use futures::future::join_all;
use rand::seq::SliceRandom;
use reqwest::StatusCode;
use serde_json::Value;

async fn settings_for(strategy: StrategyKind) -> Settings {
    let mut s = test_settings().await;
    s.strategy = strategy;
    // The production lock wait (2 s) and timeouts: under the lock
    // strategies part of a burst is shed as 503 busy, which must take
    // nobody (the audit checks it).
    s
}

/// Stock 100, 2,000 requests from 500 users (repeats included), spread over
/// two instances; then the audit.
async fn burst(strategy: StrategyKind) {
    burst_with(strategy, LockMode::Naive).await;
}

async fn burst_with(strategy: StrategyKind, mode: LockMode) {
    let _alone = BURSTS.lock().await;
    let mut settings = settings_for(strategy).await;
    settings.lock.mode = mode;
    let apis = [spawn_api(&settings).await, spawn_api(&settings).await];
    let worker = spawn_worker(&settings).await;
    let campaign = apis[0].open_campaign(100).await;

    let mut users: Vec<String> = (0..500)
        .flat_map(|u| std::iter::repeat_n(format!("user-{u}"), 4))
        .collect();
    users.shuffle(&mut rand::rng());
    let replies: Vec<(String, Value)> = join_all(users.iter().enumerate().map(|(i, user)| {
        let api = &apis[i % apis.len()];
        let campaign = &campaign;
        async move { (user.clone(), api.issue(campaign, user).await.1) }
    }))
    .await;

    let expected: &[&str] = match strategy {
        StrategyKind::Sync => &[
            "accepted",
            "pending",
            "duplicate",
            "sold_out",
            "rate_limited",
        ],
        StrategyKind::AsyncQueue => &["queued", "duplicate", "sold_out", "rate_limited"],
        StrategyKind::DistributedLock | StrategyKind::FairLock => {
            &["pending", "duplicate", "sold_out", "rate_limited"]
        }
    };
    for (_, body) in &replies {
        let outcome = body["outcome"].as_str().unwrap_or("?");
        if outcome == "unavailable" {
            // Shedding load is an answer, if it says so; a Redis that
            // answered in time taken for a dead one is not.
            let message = body["message"].as_str().unwrap_or_default();
            assert!(
                !message.contains("did not answer in time"),
                "{strategy}: a busy instance took itself for a dead Redis: {body}"
            );
            continue;
        }
        assert!(
            expected.contains(&outcome),
            "{strategy}: unexpected reply {body}"
        );
    }
    // A client told to retry (503, 429) does, until it has its answer: then
    // demand (500 users) exceeds the stock (100), however loaded the machine
    // and whatever share of the burst was shed.
    let mut replies = replies;
    let answered: std::collections::HashSet<&String> = replies
        .iter()
        .filter(|(_, b)| {
            !["unavailable", "rate_limited"].contains(&b["outcome"].as_str().unwrap_or("?"))
        })
        .map(|(u, _)| u)
        .collect();
    let mut unanswered: Vec<String> = users
        .iter()
        .filter(|u| !answered.contains(u))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let retrying = std::time::Instant::now();
    while !unanswered.is_empty() {
        assert!(
            retrying.elapsed() < Duration::from_secs(120),
            "{strategy}: {} users never got an answer",
            unanswered.len()
        );
        let api = &apis[0];
        let retried = join_all(unanswered.iter().map(|user| {
            let campaign = &campaign;
            async move { (user.clone(), api.issue(campaign, user).await.1) }
        }))
        .await;
        unanswered = retried
            .iter()
            .filter(|(_, b)| {
                ["unavailable", "rate_limited"].contains(&b["outcome"].as_str().unwrap_or("?"))
            })
            .map(|(u, _)| u.clone())
            .collect();
        replies.extend(retried);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let audit = audit(&apis[1], &campaign, &replies).await;
    eprintln!("{strategy}: {audit:?}");
    assert!(audit.passed, "{audit:?}");
    // Demand exceeded the stock: every slot ends as a row.
    assert_eq!(audit.rows, 100, "{audit:?}");
    worker.stop().await;
    for api in apis {
        api.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_passes_the_audit() {
    burst(StrategyKind::Sync).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_queue_passes_the_audit() {
    burst(StrategyKind::AsyncQueue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distributed_lock_passes_the_audit() {
    burst(StrategyKind::DistributedLock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fair_lock_passes_the_audit() {
    burst(StrategyKind::FairLock).await;
}

/// `lock.mode = combining`: one hold serves a batch of each instance's
/// waiting requests (users repeated within a batch included); the same
/// audit, the stock exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_locks_in_combining_mode_pass_the_audit() {
    burst_with(StrategyKind::DistributedLock, LockMode::Combining).await;
    burst_with(StrategyKind::FairLock, LockMode::Combining).await;
}

/// Plans and the fault suite spell a lock strategy without a mode as the
/// engine's default mode; the harness must know which that is.
#[test]
fn the_harness_knows_the_default_lock_mode() {
    assert_eq!(
        LockMode::default().as_str(),
        ngrinder_equivalent::experiment::DEFAULT_LOCK_MODE
    );
}

/// A lock holder stops past its lease (as a paused process would) after its
/// checks, before its writes; another instance takes the lock meanwhile.
/// The writes are fenced by the lock, so the paused holder writes nothing
/// when it wakes (503), whoever the other instance admitted:
/// - another user, for the last unit of stock: no slot beyond the stock;
/// - the same user, retrying elsewhere: the slot is counted once.
///
/// Either way SCARD == the counter == rows, and the accepted reply's coupon
/// id is the row's.
async fn paused_holder(strategy: StrategyKind, mode: LockMode) {
    let mut slow_settings = settings_for(strategy).await;
    slow_settings.lock.mode = mode;
    slow_settings.faults.pause_lock_holder_user = Some("slow".into());
    // Past the production lease (3 s), so the lock goes to another holder.
    slow_settings.faults.pause_lock_holder_ms = slow_settings.lock.lease_ms + 1_500;
    let mut fast_settings = slow_settings.clone();
    fast_settings.faults.pause_lock_holder_user = None;
    let slow_api = spawn_api(&slow_settings).await;
    let fast_api = spawn_api(&fast_settings).await;
    let worker = spawn_worker(&slow_settings).await;
    let db = db().await;

    for (stock, other) in [(1, "fast"), (5, "slow")] {
        let campaign = slow_api.open_campaign(stock).await;
        let paused = tokio::spawn({
            let (url, campaign) = (slow_api.address.clone(), campaign);
            async move {
                reply(
                    reqwest::Client::new()
                        .post(format!("{url}/api/v1/campaigns/{campaign}/issue"))
                        .bearer_auth(mint_jwt("slow", 60))
                        .send()
                        .await
                        .unwrap(),
                )
                .await
            }
        });
        // Half a second before the paused holder's lease runs out: the
        // other request's lock wait (2 s) spans the moment it does.
        tokio::time::sleep(Duration::from_millis(slow_settings.lock.lease_ms - 500)).await;
        let (status, admitted) = fast_api.issue(&campaign, other).await;
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "{strategy} {other}: {admitted}"
        );
        let (status, woke) = paused.await.unwrap();
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{strategy} {other}: the paused holder wrote after losing its lock: {woke}"
        );
        assert_eq!(woke["outcome"], "unavailable", "{woke}");

        let (set, count) = gate_state(&campaign).await;
        assert_eq!(set, [other], "{strategy} {other}");
        assert_eq!(count, Some(1), "{strategy} {other}: SCARD != counter");
        wait_for_rows(&db, &campaign, 1, Duration::from_secs(30)).await;
        assert_eq!(row_users(&db, &campaign).await, [other]);
        assert_eq!(persisted_column(&db, &campaign).await, 1);
        let (_, me) = fast_api.my_coupon(&campaign, other).await;
        assert_eq!(me["state"], "issued", "{me}");
        assert_eq!(me["coupon_id"], admitted["coupon_id"], "{me} vs {admitted}");
    }
    assert!(
        read_topic(&slow_settings.kafka.brokers, &slow_settings.kafka.dlq_topic)
            .await
            .is_empty(),
        "{strategy}: nothing over the stock reached the worker"
    );

    worker.stop().await;
    slow_api.stop().await;
    fast_api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_distributed_lock_holder_cannot_over_issue() {
    paused_holder(StrategyKind::DistributedLock, LockMode::Naive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_fair_lock_holder_cannot_over_issue() {
    paused_holder(StrategyKind::FairLock, LockMode::Naive).await;
}

/// The same pause in `combining` mode: the task holding the lock for a
/// batch stops past its lease before the batch's writes; they are fenced
/// all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_combining_holder_cannot_over_issue() {
    paused_holder(StrategyKind::DistributedLock, LockMode::Combining).await;
    paused_holder(StrategyKind::FairLock, LockMode::Combining).await;
}

/// async-queue after an admin's close: a request is refused `closed` at
/// once, as `sync` refuses it, never answered `queued` to be refused later
/// (the fault campaign's rule 7: 2,737 `queued` replies after one close in
/// seed 174430510, each ending `rejected: closed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_queue_refuses_at_once_after_a_close() {
    let settings = settings_for(StrategyKind::AsyncQueue).await;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(100).await;
    let (status, body) = api.close_campaign(&campaign).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api.issue(&campaign, "after-close").await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::GONE, Some("closed")),
        "{body}"
    );
    let (_, me) = api.my_coupon(&campaign, "after-close").await;
    assert_eq!(me["state"], "none", "{me}");
    api.stop().await;
}

/// A queue whose consumer is stuck (the broker is frozen) fills up; the next
/// request gets 503 and nobody is admitted for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_503_and_admits_nobody() {
    let broker = OwnBroker::start();
    let mut settings = settings_for(StrategyKind::AsyncQueue).await;
    settings.kafka.brokers = broker.address();
    settings.queue.capacity = 3;
    settings.queue.consumers = 1;
    common::kafka::ensure_topics(&settings.kafka).await.unwrap();
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(100).await;

    broker.freeze(true);
    // One request occupies the consumer, three fill the queue.
    for i in 0..4 {
        let (status, body) = api.issue(&campaign, &format!("q{i}")).await;
        assert_eq!(body["outcome"], "queued", "{status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = api.issue(&campaign, "one-too-many").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["outcome"], "unavailable");
    let (members, _) = gate_state(&campaign).await;
    assert!(!members.contains(&"one-too-many".to_owned()));
    let (_, me) = api.my_coupon(&campaign, "one-too-many").await;
    assert_eq!(me["state"], "none", "the refused request left a mark");
    broker.freeze(false);
    api.stop().await;
}

/// Back-pressure: a request that finds the queue full waits for space (up to
/// `queue.enqueue_wait_ms`) and is queued once there is; with no wait it is
/// answered 503 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_makes_a_request_wait_for_room_before_it_answers_503() {
    for wait_ms in [3_000, 0] {
        let mut settings = settings_for(StrategyKind::AsyncQueue).await;
        settings.queue.capacity = 1;
        settings.queue.consumers = 1;
        settings.queue.enqueue_wait_ms = wait_ms;
        // The only consumer stops after the gate for 1.2 s on this user.
        settings.faults.pause_after_gate_user = Some("slow".into());
        settings.faults.pause_after_gate_ms = 1_200;
        let api = spawn_api(&settings).await;
        // The row is what says `issued`.
        let worker = spawn_worker(&settings).await;
        let campaign = api.open_campaign(100).await;
        let (_, body) = api.issue(&campaign, "slow").await;
        assert_eq!(body["outcome"], "queued", "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, body) = api.issue(&campaign, "fills-the-queue").await;
        assert_eq!(body["outcome"], "queued", "{body}");

        let started = std::time::Instant::now();
        let (status, body) = api.issue(&campaign, "waits").await;
        let took = started.elapsed();
        if wait_ms > 0 {
            assert_eq!(body["outcome"], "queued", "{status} {body}");
            assert!(
                took >= Duration::from_millis(500),
                "queued at once ({took:?}) into a full queue"
            );
            let settled = std::time::Instant::now();
            loop {
                let (_, me) = api.my_coupon(&campaign, "waits").await;
                if me["state"] == "issued" {
                    break;
                }
                assert!(settled.elapsed() < Duration::from_secs(10), "{me}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        } else {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert!(took < Duration::from_millis(500), "took {took:?}");
            let (_, me) = api.my_coupon(&campaign, "waits").await;
            assert_eq!(me["state"], "none", "the refused request left a mark");
        }
        worker.stop().await;
        api.stop().await;
    }
}

/// A broker stall keeps a request in the queue longer than its `queued`
/// mark's TTL: the mark is renewed while the request waits, so its user
/// reads `queued` throughout and a second request is a `duplicate` (with a
/// mark that simply expired, the user read `none` and was queued twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queued_mark_lives_as_long_as_its_request_waits() {
    let broker = OwnBroker::start();
    let mut settings = settings_for(StrategyKind::AsyncQueue).await;
    settings.kafka.brokers = broker.address();
    settings.queue.consumers = 1;
    // The property is the renewal (every third of the TTL, the same code at
    // any TTL); a 2 s TTL shows it in seconds, the 60 s default in minutes.
    settings.queue.mark_ttl_secs = 2;
    common::kafka::ensure_topics(&settings.kafka).await.unwrap();
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(100).await;

    broker.freeze(true);
    // The first request holds the only consumer for a delivery timeout (5 s
    // by default); the second waits behind it, past its mark's TTL.
    for user in ["first", "second"] {
        let (_, body) = api.issue(&campaign, user).await;
        assert_eq!(body["outcome"], "queued", "{body}");
    }
    let started = std::time::Instant::now();
    let wait =
        Duration::from_millis(settings.kafka.delivery_timeout_ms) - Duration::from_millis(500);
    assert!(wait > Duration::from_secs(settings.queue.mark_ttl_secs + 1));
    while started.elapsed() < wait {
        let (_, me) = api.my_coupon(&campaign, "second").await;
        assert_eq!(me["state"], "queued", "at {:?}: {me}", started.elapsed());
        let (status, again) = api.issue(&campaign, "second").await;
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "at {:?}: {again}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    broker.freeze(false);
    api.stop().await;
}

/// SIGTERM-equivalent stop with a full queue and a stuck consumer: every
/// queued request ends issued, pending or rejected; none stays queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopping_with_a_full_queue_settles_every_queued_request() {
    let broker = OwnBroker::start();
    let mut settings = settings_for(StrategyKind::AsyncQueue).await;
    settings.kafka.brokers = broker.address();
    // A drain shorter than a batch's run, so that its deadline passes with
    // requests still queued and one in a consumer's batch: at the defaults
    // (a 10 s drain, a 5 s delivery timeout) the drain outlasts every batch
    // and this path is not reached.
    settings.kafka.delivery_timeout_ms = 2_000;
    settings.queue.capacity = 50;
    settings.queue.consumers = 1;
    settings.queue.drain_timeout_ms = 300;
    common::kafka::ensure_topics(&settings.kafka).await.unwrap();
    let api = spawn_api(&settings).await;
    let observer = spawn_api(&settings).await;
    let campaign = api.open_campaign(100).await;

    broker.freeze(true);
    let users: Vec<String> = (0..20).map(|i| format!("queued-{i}")).collect();
    for user in &users {
        let (_, body) = api.issue(&campaign, user).await;
        assert_eq!(body["outcome"], "queued", "{body}");
    }
    let unfreeze = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        broker.freeze(false);
        broker
    });
    api.stop().await;
    let _broker = unfreeze.await.unwrap();

    let mut finals = std::collections::BTreeMap::<String, usize>::new();
    for user in &users {
        let (_, me) = observer.my_coupon(&campaign, user).await;
        let state = me["state"].as_str().unwrap().to_owned();
        assert!(
            ["issued", "pending", "rejected"].contains(&state.as_str()),
            "{user}: {me}"
        );
        if state == "rejected" {
            assert_eq!(me["outcome"], "unavailable", "{me}");
        }
        *finals.entry(state).or_default() += 1;
    }
    assert!(
        finals.get("rejected").copied().unwrap_or(0) >= 18,
        "{finals:?}"
    );
    observer.stop().await;
}

/// A client that hangs up while its request is between the gate and the
/// produce does not stop the request: take, produce and settle run on a
/// tracked task (not in the handler's future, which the server may drop), so
/// no slot is left taken half-way (in the set without a message). The user
/// ends `issued` and the gate equals the rows, under every strategy whose
/// reply waits for the gate.
async fn hang_up_between_gate_and_produce(strategy: StrategyKind) {
    let mut settings = settings_for(strategy).await;
    settings.faults.pause_after_gate_user = Some("gone".into());
    settings.faults.pause_after_gate_ms = 1_000;
    let api = spawn_api(&settings).await;
    let worker = spawn_worker(&settings).await;
    let campaign = api.open_campaign(10).await;

    let hung_up = reqwest::Client::new()
        .post(format!("{}/api/v1/campaigns/{campaign}/issue", api.address))
        .bearer_auth(mint_jwt("gone", 60))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(
        hung_up.as_ref().is_err_and(reqwest::Error::is_timeout),
        "{strategy}: the client was to give up during the pause: {hung_up:?}"
    );

    let started = std::time::Instant::now();
    let state = loop {
        let (_, me) = api.my_coupon(&campaign, "gone").await;
        let state = me["state"].as_str().unwrap().to_owned();
        if state == "issued" || started.elapsed() > Duration::from_secs(30) {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        state, "issued",
        "{strategy}: the request stopped when its client left"
    );
    assert_eq!(
        gate_state(&campaign).await,
        (vec!["gone".to_owned()], Some(1))
    );
    assert_eq!(rows(&db().await, &campaign).await, 1);

    worker.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sync_issue_whose_client_hangs_up_runs_to_its_end() {
    hang_up_between_gate_and_produce(StrategyKind::Sync).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_distributed_lock_issue_whose_client_hangs_up_runs_to_its_end() {
    hang_up_between_gate_and_produce(StrategyKind::DistributedLock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fair_lock_issue_whose_client_hangs_up_runs_to_its_end() {
    hang_up_between_gate_and_produce(StrategyKind::FairLock).await;
}

/// A request that stalls between the gate and the produce for longer than
/// the api allows (`PRODUCE_WITHIN`) gives its slot back and answers 503:
/// no message is produced late, so `reconcile` can never release a slot
/// whose message is still on its way (it waits that bound, not a guess).
async fn late_produce(strategy: StrategyKind) {
    let mut settings = settings_for(strategy).await;
    settings.faults.pause_after_gate_user = Some("late".into());
    settings.faults.pause_after_gate_ms =
        (common::settings::PRODUCE_WITHIN + Duration::from_millis(500)).as_millis() as u64;
    let api = spawn_api(&settings).await;
    let worker = spawn_worker(&settings).await;
    let campaign = api.open_campaign(10).await;

    let (status, body) = api.issue(&campaign, "late").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{strategy}: {body}"
    );
    assert_eq!(gate_state(&campaign).await, (vec![], Some(0)), "{strategy}");
    let (status, body) = api.issue(&campaign, "on-time").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{strategy}: {body}");
    let db = db().await;
    wait_for_rows(&db, &campaign, 1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(row_users(&db, &campaign).await, ["on-time"], "{strategy}");
    worker.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sync_request_stalled_after_the_gate_gives_its_slot_back() {
    late_produce(StrategyKind::Sync).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locked_request_stalled_after_the_gate_gives_its_slot_back() {
    late_produce(StrategyKind::DistributedLock).await;
}

/// The campaign's lock, held from outside for `hold` (another instance's
/// long hold): requests of this instance line up behind it meanwhile.
async fn hold_campaign_lock(
    settings: &Settings,
    campaign: &common::ids::CampaignId,
    hold: Duration,
) -> tokio::task::JoinHandle<()> {
    let redis = common::redis_state::RedisClient::new(&settings.redis, None).unwrap();
    let lock = common::lock::LeaseLock::new(
        redis,
        common::lock::LockTiming {
            lease: Duration::from_millis(settings.lock.lease_ms),
            wait: Duration::from_secs(10),
        },
        None,
    );
    let guard = lock
        .acquire(&common::keys::CampaignKeys::new(campaign).lock())
        .await
        .unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        guard.release().await.unwrap();
    })
}

/// `combining` keeps the bounds of `naive`: the line of one campaign in
/// one instance holds at most `lock.max_waiters` requests, waiting or in
/// the batch in hand (the next request is answered 503 at once), and no
/// request waits much past two lock waits (its wait for a batch, then its
/// batch's wait for the lock), whatever the line. (The line had no bound,
/// nor the wait; then the batch in hand was not counted, so twice the
/// bound could wait.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_combining_line_is_bounded_in_length_and_in_wait() {
    let _alone = BURSTS.lock().await;
    let mut settings = settings_for(StrategyKind::DistributedLock).await;
    settings.lock.mode = LockMode::Combining;
    // A short line, so that a few requests reach its cap; a long wait, so
    // that every request arrives while the first ones still wait, however
    // slow the machine (the cap, not the wait, is what turns them away).
    settings.lock.max_waiters = 20;
    settings.lock.wait_ms = 6_000;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(100).await;
    let held = hold_campaign_lock(&settings, &campaign, Duration::from_secs(30)).await;
    let started = std::time::Instant::now();
    let replies = join_all((0..40).map(|i| {
        let (api, campaign) = (&api, &campaign);
        async move {
            let (status, body) = api.issue(campaign, &format!("line-{i}")).await;
            (status, body, started.elapsed())
        }
    }))
    .await;
    let wait = Duration::from_millis(settings.lock.wait_ms);
    let mut at_once = 0;
    for (status, body, took) in &replies {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            *took < wait * 2 + Duration::from_secs(3),
            "answered after {took:?}: {body}"
        );
        if body["message"]
            .as_str()
            .unwrap()
            .contains("already waiting")
        {
            at_once += 1;
            assert!(*took < wait, "the full line answered after {took:?}");
        }
    }
    assert_eq!(at_once, 20, "turned away by the full line");
    assert_eq!(gate_state(&campaign).await.0, Vec::<String>::new());
    held.abort();
    api.stop().await;
}

/// With no wait at all (`lock.wait_ms = 0`) a free lock is still taken:
/// the deadline bounds the request, not whether the server may serve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_with_no_wait_still_serves_a_free_campaign() {
    let _alone = BURSTS.lock().await;
    let mut settings = settings_for(StrategyKind::DistributedLock).await;
    settings.lock.wait_ms = 0;
    for mode in [LockMode::Naive, LockMode::Combining] {
        settings.lock.mode = mode;
        let api = spawn_api(&settings).await;
        let campaign = api.open_campaign(10).await;
        let (status, body) = api.issue(&campaign, "alone").await;
        assert_eq!(status, StatusCode::ACCEPTED, "{mode:?}: {body}");
        api.stop().await;
    }
}

/// A TCP proxy in front of the test Redis, to break one connection in a
/// chosen way. `cut_after`: the first chunk a client sends that holds every
/// needle is forwarded, then the connection is cut before its reply comes
/// back (the command ran; its reply is lost). `swallow`: chunks that hold
/// every needle are never forwarded (a connection that stopped answering).
async fn breaking_proxy(
    cut_after: Option<Vec<&'static [u8]>>,
    swallow: Option<Vec<&'static [u8]>>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = common::testkit::redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let fired = Arc::new(AtomicBool::new(false));
    let fired_any = fired.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            let cut = Arc::new(tokio::sync::Notify::new());
            let (fired, cut_after, swallow, cut_up) = (
                fired_any.clone(),
                cut_after.clone(),
                swallow.clone(),
                cut.clone(),
            );
            let up = tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = match from_client.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let chunk = &buf[..n];
                    let has = |needle: &[u8]| {
                        chunk
                            .windows(needle.len())
                            .any(|w| w.eq_ignore_ascii_case(needle))
                    };
                    if swallow.as_ref().is_some_and(|s| s.iter().all(|n| has(n))) {
                        continue;
                    }
                    let cutting = cut_after
                        .as_ref()
                        .is_some_and(|needles| needles.iter().all(|n| has(n)))
                        && !fired.swap(true, Ordering::SeqCst);
                    // Told before the command is written: the reply can
                    // then never be forwarded ahead of the cut.
                    if cutting {
                        cut_up.notify_one();
                    }
                    if to_server.write_all(chunk).await.is_err() || cutting {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                let cut = cut.notified();
                tokio::pin!(cut);
                loop {
                    tokio::select! {
                        // The cut first: a reply read in the same poll is
                        // never forwarded.
                        biased;
                        _ = &mut cut => {
                            // Let the command run, then drop both sides
                            // before its reply reaches the client.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            up.abort();
                            return;
                        }
                        read = from_server.read(&mut buf) => {
                            let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                            if to_client.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (url, fired)
}

/// A take whose connection breaks after the command was written (a reset,
/// a proxy, a failover) may have run: it is withdrawn like one that timed
/// out, not left as a slot no message fills (the user's retry would read
/// `duplicate` and `/coupons/me` `pending` until a reconcile).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_take_lost_with_its_connection_is_withdrawn() {
    let _alone = BURSTS.lock().await;
    for (strategy, mode) in [
        (StrategyKind::Sync, LockMode::Naive),
        (StrategyKind::DistributedLock, LockMode::Combining),
    ] {
        let (url, fired) = breaking_proxy(Some(vec![b"victim", b":void:", b"EVAL"]), None).await;
        let mut settings = settings_for(strategy).await;
        settings.lock.mode = mode;
        settings.redis.url = url;
        let api = spawn_api(&settings).await;
        let campaign = api.open_campaign(10).await;
        let (status, body) = api.issue(&campaign, "victim").await;
        assert!(
            fired.load(std::sync::atomic::Ordering::SeqCst),
            "{strategy}: the take's connection was not cut: {body}"
        );
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{strategy}: {body}"
        );
        assert_eq!(
            gate_state(&campaign).await,
            (vec![], Some(0)),
            "{strategy}: the 503'd take kept its slot"
        );
        let (status, body) = api.issue(&campaign, "victim").await;
        assert_eq!(status, StatusCode::ACCEPTED, "{strategy}: retry: {body}");
        api.stop().await;
    }
}

/// A pub/sub connection that stops answering (the lock's wake-ups) holds no
/// request up: the lock's waiters poll, and every request is answered
/// within its bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_wake_up_connection_holds_no_request_up() {
    let _alone = BURSTS.lock().await;
    let (url, _) = breaking_proxy(None, Some(vec![b"SUBSCRIBE"])).await;
    for mode in [LockMode::Naive, LockMode::Combining] {
        let mut settings = settings_for(StrategyKind::DistributedLock).await;
        settings.lock.mode = mode;
        settings.redis.url = url.clone();
        let api = spawn_api(&settings).await;
        let (one, two) = (api.open_campaign(10).await, api.open_campaign(10).await);
        let held = hold_campaign_lock(&settings, &one, Duration::from_millis(300)).await;
        let held_too = hold_campaign_lock(&settings, &two, Duration::from_millis(300)).await;
        let bound = Duration::from_millis(settings.lock.wait_ms) * 2 + Duration::from_secs(6);
        let (first, second) = tokio::join!(
            tokio::time::timeout(bound, api.issue(&one, "waits")),
            tokio::time::timeout(bound, api.issue(&two, "waits-too")),
        );
        held.await.unwrap();
        held_too.await.unwrap();
        let first = first.unwrap_or_else(|_| panic!("{mode:?}: no answer within {bound:?}"));
        let second = second.unwrap_or_else(|_| panic!("{mode:?}: no answer within {bound:?}"));
        assert_eq!(first.0, StatusCode::ACCEPTED, "{mode:?}: {}", first.1);
        assert_eq!(second.0, StatusCode::ACCEPTED, "{mode:?}: {}", second.1);
        api.stop().await;
    }
}

/// A take whose request is gone is withdrawn without holding up the other
/// replies of its batch: with that withdrawal stuck (Redis does not answer
/// it), the healthy request of the batch is still answered in time (it
/// used to wait for the withdrawal, and its slot aged past the produce
/// deadline and was given back).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_lost_reply_does_not_hold_up_the_rest_of_its_batch() {
    let _alone = BURSTS.lock().await;
    // The withdrawal of "gone": EVALSHA with four keys and three arguments.
    let (url, _) = breaking_proxy(None, Some(vec![b"*10\r\n$7\r\nEVALSHA", b"gone"])).await;
    let mut settings = settings_for(StrategyKind::DistributedLock).await;
    settings.lock.mode = LockMode::Combining;
    settings.redis.url = url;
    settings.faults.drop_reply_user = Some("gone".into());
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(10).await;
    let held = hold_campaign_lock(&settings, &campaign, Duration::from_millis(500)).await;
    let (_, _, alive) = tokio::join!(
        api.issue(&campaign, "first"),
        async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            api.issue(&campaign, "gone").await
        },
        async {
            tokio::time::sleep(Duration::from_millis(250)).await;
            api.issue(&campaign, "alive").await
        },
    );
    held.await.unwrap();
    assert_eq!(
        alive.0,
        StatusCode::ACCEPTED,
        "a healthy request lost its slot: {}",
        alive.1
    );
    api.stop().await;
}

/// A user twice in one combining batch gets what its first request makes
/// of the campaign: two refusals of a sold-out campaign are two `sold_out`,
/// not a `sold_out` and a `duplicate` for a slot nobody holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeat_in_one_combining_batch_is_answered_as_the_campaign_stands() {
    let _alone = BURSTS.lock().await;
    let mut settings = settings_for(StrategyKind::FairLock).await;
    settings.lock.mode = LockMode::Combining;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(1).await;
    let (status, _) = api.issue(&campaign, "first").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // The requests line up behind a hold from outside, then go in one batch.
    let held = hold_campaign_lock(&settings, &campaign, Duration::from_millis(500)).await;
    let replies = join_all((0..4).map(|_| api.issue(&campaign, "twice"))).await;
    for (status, body) in &replies {
        assert_eq!(*status, StatusCode::GONE, "{body}");
        assert_eq!(body["outcome"], "sold_out", "{body}");
    }
    held.await.unwrap();
    api.stop().await;
}

/// A combining take whose request is gone (its task died with its reply)
/// is given back, not left as a slot no message will fill; and a serving
/// task that dies does not stop the campaign's line for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn combining_gives_back_what_nobody_will_produce_and_survives_its_server() {
    let _alone = BURSTS.lock().await;
    let mut settings = settings_for(StrategyKind::DistributedLock).await;
    settings.lock.mode = LockMode::Combining;
    settings.faults.drop_reply_user = Some("gone".into());
    settings.faults.panic_in_lock_line_user = Some("boom".into());
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(10).await;

    let (status, _) = api.issue(&campaign, "gone").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The server takes the slot, finds the reply gone, gives it back.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gate_state(&campaign).await.0.contains(&"gone".to_owned()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot of a gone request stayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gate_state(&campaign).await, (vec![], Some(0)));

    let (status, body) = api.issue(&campaign, "boom").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let after = tokio::time::timeout(Duration::from_secs(10), api.issue(&campaign, "after"))
        .await
        .expect("the line never came back");
    assert_eq!(after.0, StatusCode::ACCEPTED, "{}", after.1);
    assert_eq!(gate_state(&campaign).await.0, ["after"]);
    api.stop().await;
}
