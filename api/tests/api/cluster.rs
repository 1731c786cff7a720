//! Redis Cluster: a real three-master cluster started for the test. Every
//! key of a campaign carries the campaign as its hash tag, so the gate, its
//! compensation and both locks (scripts touching several keys) work there,
//! with the api and the worker in cluster mode.

use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;
use common::ids::CampaignId;
use common::lock::{FairLock, LeaseLock, LockTiming};
use common::lock_waker::LockWaker;
use common::redis_state::RedisClient;
use common::scripts;
use common::settings::{LockMode, Settings, StrategyKind};
use futures::future::join_all;
use reqwest::StatusCode;

async fn cluster_settings(cluster: &OwnRedisCluster) -> Settings {
    let mut s = test_settings().await;
    s.redis.cluster_nodes = cluster.nodes();
    s
}

/// Distinct slots of the campaigns' tags: the test spreads over nodes.
fn spread(campaigns: &[CampaignId]) -> usize {
    let mut slots: Vec<u16> = campaigns
        .iter()
        .map(|c| {
            let tag = c.to_string();
            crc16_xmodem(tag.as_bytes()) % 16_384
        })
        .collect();
    slots.sort_unstable();
    slots.dedup();
    slots.len()
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_strategy_issues_exactly_the_stock_on_a_cluster() {
    let cluster = OwnRedisCluster::start();
    let db = db().await;
    let mut campaigns = Vec::new();
    for strategy in StrategyKind::ALL {
        let mut settings = cluster_settings(&cluster).await;
        settings.strategy = strategy;
        let api = spawn_api(&settings).await;
        let worker = spawn_worker(&settings).await;
        let campaign = api.open_campaign(20).await;
        campaigns.push(campaign);
        let replies = join_all((0..100).map(|u| {
            let (api, campaign) = (&api, &campaign);
            async move {
                let user = format!("user-{}", u % 60);
                (user.clone(), api.issue(campaign, &user).await.1)
            }
        }))
        .await;
        let audit = audit(&api, &campaign, &replies).await;
        assert!(audit.passed, "{audit:?}");
        // Demand exceeded the stock: every slot ends as a row.
        assert_eq!(audit.rows, 20, "{audit:?}");
        let (_, view) = api.campaign(&campaign).await;
        assert_eq!(view["taken"], 20, "{strategy}: {view}");
        assert_eq!(rows(&db, &campaign).await, 20);
        worker.stop().await;
        api.stop().await;
    }
    assert!(
        spread(&campaigns) > 1,
        "all campaigns hashed to one slot; nothing spread"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compensation_gives_the_slot_back_on_a_cluster() {
    let cluster = OwnRedisCluster::start();
    let mut broker = OwnBroker::start();
    let mut settings = cluster_settings(&cluster).await;
    settings.kafka.brokers = broker.address();
    common::kafka::ensure_topics(&settings.kafka).await.unwrap();
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(5).await;
    broker.kill();
    let (status, body) = api.issue(&campaign, "alice").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (_, view) = api.campaign(&campaign).await;
    assert_eq!(view["taken"], 0, "the slot was not given back: {view}");
    let (_, me) = api.my_coupon(&campaign, "alice").await;
    assert_eq!(me["state"], "none");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_locks_exclude_on_a_cluster() {
    let cluster = OwnRedisCluster::start();
    let settings = cluster_settings(&cluster).await;
    let redis = RedisClient::new(&settings.redis, None).unwrap();
    let waker = Some(LockWaker::new(
        redis::Client::open(format!("redis://127.0.0.1:{}", cluster.ports[0])).unwrap(),
    ));
    let timing = LockTiming {
        lease: Duration::from_secs(2),
        wait: Duration::from_secs(60),
    };
    let campaign = CampaignId::new();
    let keys = common::keys::CampaignKeys::new(&campaign);
    let counter = Arc::new(std::sync::Mutex::new((0u32, 0u32)));

    let lease = LeaseLock::new(redis.clone(), timing, waker.clone());
    join_all((0..100).map(|_| async {
        let guard = lease.acquire(&keys.lock()).await.unwrap();
        {
            let mut c = counter.lock().unwrap();
            c.0 += 1;
            assert_eq!(c.0, 1, "two holders of the lease lock");
        }
        tokio::time::sleep(Duration::from_micros(300)).await;
        counter.lock().unwrap().0 -= 1;
        guard.release().await.unwrap();
    }))
    .await;

    let fair = FairLock::new(redis.clone(), timing, waker);
    let fair_keys = keys.fair_lock();
    join_all((0..100).map(|_| async {
        let guard = fair.acquire(&fair_keys).await.unwrap();
        {
            let mut c = counter.lock().unwrap();
            c.1 += 1;
            assert_eq!(c.1, 1, "two holders of the fair lock");
        }
        tokio::time::sleep(Duration::from_micros(300)).await;
        counter.lock().unwrap().1 -= 1;
        guard.release().await.unwrap();
    }))
    .await;
    // The fair lock's line and counters are gone (on the campaign's node).
    for key in fair_keys.all() {
        let exists: bool = redis
            .run_script(
                &redis::Script::new("return redis.call('EXISTS', KEYS[1])"),
                &[key],
                &[],
            )
            .await
            .map(|n: i64| n == 1)
            .unwrap();
        assert!(!exists, "{key} left behind");
    }
}

/// A take whose reply a broken connection lost, on a cluster: the cluster
/// client sends it again, and the run again answers what the first did (the
/// slot is the request's own) — the user gets the coupon, not a 409 for a
/// slot no message would fill (with async-queue: a 202 whose coupon never
/// came). Every strategy, both lock modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_take_sent_again_after_its_reply_was_lost_issues_once() {
    let cluster = OwnRedisCluster::start_behind_proxies();
    let db = db().await;
    let gate = || Cut::script(&scripts::GATE).naming_the_user();
    let locked = || Cut::script(&scripts::LOCKED_TAKE).naming_the_user();
    let cases = [
        (StrategyKind::Sync, LockMode::Combining, gate()),
        (StrategyKind::AsyncQueue, LockMode::Combining, gate()),
        (StrategyKind::DistributedLock, LockMode::Naive, locked()),
        (StrategyKind::DistributedLock, LockMode::Combining, locked()),
        (StrategyKind::FairLock, LockMode::Naive, locked()),
        (StrategyKind::FairLock, LockMode::Combining, locked()),
    ];
    let mut refused = Vec::new();
    for (strategy, mode, cut) in cases {
        if let Err(e) = issues_once_through_a_cut(&cluster, &db, strategy, mode, cut).await {
            refused.push(e);
        }
    }
    assert!(refused.is_empty(), "{refused:#?}");
}

/// The other calls of the request path a cluster client may send again
/// after a lost reply answer as once too: the async-queue's mark (it used to
/// find its own record and answer 409 with nothing queued), the lease lock's
/// `SET NX` and the fair lock's first acquire (they used to find their own
/// lock and wait it out: 503 busy), and an `Idempotency-Key`'s claim (it
/// used to find its own claim: 409 in progress, the key blocked).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_call_sent_again_after_its_reply_was_lost_acts_once() {
    let cluster = OwnRedisCluster::start_behind_proxies();
    let db = db().await;
    let lease = || Cut {
        needles: vec![b"SET".to_vec(), b":lock\r\n".to_vec(), b"NX".to_vec()],
        key: None,
    };
    let fair = || Cut::script(&scripts::FAIR_LOCK_ACQUIRE);
    let cases = [
        (
            StrategyKind::AsyncQueue,
            LockMode::Combining,
            Cut::script(&scripts::MARK_QUEUED).naming_the_user(),
        ),
        (StrategyKind::DistributedLock, LockMode::Naive, lease()),
        (StrategyKind::DistributedLock, LockMode::Combining, lease()),
        (StrategyKind::FairLock, LockMode::Naive, fair()),
        (StrategyKind::FairLock, LockMode::Combining, fair()),
        (
            StrategyKind::Sync,
            LockMode::Combining,
            Cut {
                key: Some("one-key"),
                ..Cut::script(&scripts::IDEMPOTENCY_CLAIM)
            },
        ),
    ];
    let mut refused = Vec::new();
    for (strategy, mode, cut) in cases {
        if let Err(e) = issues_once_through_a_cut(&cluster, &db, strategy, mode, cut).await {
            refused.push(e);
        }
    }
    assert!(refused.is_empty(), "{refused:#?}");
}

/// Where [`issues_once_through_a_cut`] cuts: after the first chunk sent to
/// the cluster that holds every needle; `key`, the request's
/// `Idempotency-Key`.
struct Cut {
    needles: Vec<Vec<u8>>,
    key: Option<&'static str>,
}

impl Cut {
    /// After a call of `script` (by its hash: no other script's call, and
    /// no `NOSCRIPT` answer, since the warm-up loaded it).
    fn script(script: &redis::Script) -> Self {
        Self {
            needles: vec![script.get_hash().as_bytes().to_vec()],
            key: None,
        }
    }

    /// Only a call naming the request's user.
    fn naming_the_user(mut self) -> Self {
        self.needles.push(b"victim".to_vec());
        self
    }
}

/// One issue request of "victim" (after one of "warm-up"), cut after the
/// call `cut` names ran: the request succeeds, and exactly one coupon is
/// made for it. `Err` names the form whose request was refused (the others'
/// checks panic).
///
/// The Redis command timeout is 5 s here, not the production 500 ms: what is
/// tested is the call sent again; a reconnection slower than the timeout on
/// a loaded machine would take the withdraw's path (a 503, nothing taken,
/// tested in `strategies.rs`) and fail the case for nothing.
async fn issues_once_through_a_cut(
    cluster: &OwnRedisCluster,
    db: &sea_orm::DatabaseConnection,
    strategy: StrategyKind,
    mode: LockMode,
    cut: Cut,
) -> Result<(), String> {
    let mut settings = cluster_settings(cluster).await;
    settings.strategy = strategy;
    settings.lock.mode = mode;
    settings.redis.command_timeout_ms = 5_000;
    let api = spawn_api(&settings).await;
    let worker = spawn_worker(&settings).await;
    let campaign = api.open_campaign(5).await;
    // Every script a request sends is loaded on every node first: a cut
    // after an `EVALSHA` a node answers `NOSCRIPT` would cut a call that did
    // not run.
    for port in &cluster.ports {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        for script in [
            &scripts::GATE,
            &scripts::LOCKED_TAKE,
            &scripts::MARK_QUEUED,
            &scripts::RECORD_STATUS,
            &scripts::IDEMPOTENCY_CLAIM,
            &scripts::IDEMPOTENCY_FINISH,
            &scripts::FAIR_LOCK_ACQUIRE,
            &scripts::FAIR_LOCK_RELEASE,
            &scripts::FAIR_LOCK_RENEW,
            &scripts::LOCK_RELEASE,
            &scripts::LOCK_RENEW,
        ] {
            let _: String = script.prepare_invoke().load_async(&mut conn).await.unwrap();
        }
    }
    let (status, warm_up) = api.issue_keyed(&campaign, "warm-up", cut.key).await;
    assert!(status.is_success(), "{strategy} {mode:?}: {warm_up}");
    let needles: Vec<&[u8]> = cut.needles.iter().map(Vec::as_slice).collect();
    cluster.cut_after(&needles);
    let (status, body) = api.issue_keyed(&campaign, "victim", cut.key).await;
    let form = format!(
        "{strategy} {mode:?}, cut after {:?}",
        needles
            .iter()
            .map(|n| String::from_utf8_lossy(n))
            .collect::<Vec<_>>()
    );
    // async-queue answers before its queue's take runs: the cut may come
    // after the reply.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cluster.cut_reply().is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_run = cluster.cut_reply();
    assert!(
        first_run
            .as_ref()
            .is_some_and(|reply| !reply.starts_with('-')),
        "{form}: no call that ran was cut ({first_run:?}): {body}"
    );
    if !status.is_success() {
        worker.stop().await;
        api.stop().await;
        return Err(format!(
            "{form}: a call sent again refused its own first run ({first_run:?}): {status} {body}"
        ));
    }
    let replies = [("warm-up".to_owned(), warm_up), ("victim".to_owned(), body)];
    let audit = audit(&api, &campaign, &replies).await;
    assert!(audit.passed, "{form}: {audit:?}");
    assert_eq!(rows(db, &campaign).await, 2, "{form}");
    let (_, view) = api.campaign(&campaign).await;
    assert_eq!(view["taken"], 2, "{form}: {view}");
    let (status, body) = api.issue(&campaign, "victim").await;
    assert_eq!(status, StatusCode::CONFLICT, "{form}: {body}");
    worker.stop().await;
    api.stop().await;
    Ok(())
}
