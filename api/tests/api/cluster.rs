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
use common::settings::{Settings, StrategyKind};
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
