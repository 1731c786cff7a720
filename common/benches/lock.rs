//! One hold of the naive lock strategies, step by step, against the Redis
//! of `COUPON_TEST_REDIS_URL`: what `distributed-lock` in `naive` mode does
//! per request (api `strategy/locked.rs`), each step timed alone, the whole
//! hold with nobody else in line, and the hold as 100 contenders of one
//! process see it (its handoff included). `cargo bench -p common --bench
//! lock`; docs/STRATEGIES.md reads the floor of naive mode from it.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::ids::{CampaignId, CouponId, UserId};
use common::keys::CampaignKeys;
use common::lock::{LeaseLock, LockGuard, LockTiming};
use common::lock_waker::LockWaker;
use common::redis_state::{CampaignMeta, CampaignMetas, LockSections, RedisClient};
use common::settings::LockSettings;
use criterion::{Criterion, criterion_group, criterion_main};

mod support;

/// The naive section under `guard`, as the strategy runs it: the meta and
/// the time, the holder check, the count, then the fenced write.
async fn section(redis: &Handles, guard: &LockGuard, campaign: &CampaignId, user: &UserId) {
    let (meta, _now) = redis.metas.read(campaign).await.unwrap();
    let meta = meta.unwrap();
    assert!(!redis.sections.has_slot(campaign, user).await.unwrap());
    assert!(redis.sections.count(campaign).await.unwrap() < meta.stock);
    redis
        .sections
        .take(
            guard.key(),
            guard.token(),
            &CampaignKeys::new(campaign),
            user,
            &CouponId::new(),
        )
        .await
        .unwrap();
}

/// The handles the section uses.
#[derive(Clone)]
struct Handles {
    client: RedisClient,
    metas: CampaignMetas,
    sections: LockSections,
}

fn hold(c: &mut Criterion) {
    let runtime = support::runtime();
    let settings = support::redis_settings();
    let production = LockSettings::default();
    let campaign = CampaignId::new();
    let keys = CampaignKeys::new(&campaign);
    let (redis, lock) = runtime.block_on(async {
        let client = RedisClient::new(&settings, None).unwrap();
        let redis = Handles {
            metas: CampaignMetas::new(client.clone()),
            sections: LockSections::new(client.clone()),
            client,
        };
        redis
            .metas
            .load(
                &campaign,
                &CampaignMeta {
                    stock: i64::MAX / 2,
                    starts_at: Utc::now() - chrono::Duration::minutes(1),
                    ends_at: None,
                    closed: false,
                    room: None,
                },
            )
            .await
            .unwrap();
        let lock = LeaseLock::new(
            redis.client.clone(),
            LockTiming {
                lease: Duration::from_millis(production.lease_ms),
                wait: Duration::from_millis(production.wait_ms),
            },
            Some(LockWaker::new(redis.client.client().clone())),
        );
        (redis, Arc::new(lock))
    });
    let next = Arc::new(AtomicU64::new(0));
    let user = {
        let next = next.clone();
        move || UserId::parse(&format!("u{}", next.fetch_add(1, Ordering::Relaxed))).unwrap()
    };

    let mut group = c.benchmark_group("naive_hold");
    group.bench_function("acquire_and_release", |b| {
        b.to_async(&runtime).iter(|| async {
            lock.acquire(&keys.lock())
                .await
                .unwrap()
                .release()
                .await
                .unwrap()
        })
    });
    group.bench_function("read_meta_and_time", |b| {
        b.to_async(&runtime)
            .iter(|| async { redis.metas.read(&campaign).await.unwrap() })
    });
    group.bench_function("has_slot", |b| {
        b.to_async(&runtime)
            .iter(|| async { redis.sections.has_slot(&campaign, &user()).await.unwrap() })
    });
    group.bench_function("count", |b| {
        b.to_async(&runtime)
            .iter(|| async { redis.sections.count(&campaign).await.unwrap() })
    });
    let guard = runtime.block_on(lock.acquire(&keys.lock())).unwrap();
    group.bench_function("fenced_take", |b| {
        b.to_async(&runtime).iter(|| async {
            redis
                .sections
                .take(guard.key(), guard.token(), &keys, &user(), &CouponId::new())
                .await
                .unwrap()
        })
    });
    runtime.block_on(guard.release()).unwrap();
    group.bench_function("whole_hold_alone", |b| {
        b.to_async(&runtime).iter(|| async {
            let guard = lock.acquire(&keys.lock()).await.unwrap();
            section(&redis, &guard, &campaign, &user()).await;
            guard.release().await.unwrap();
        })
    });
    // 100 contenders in one process share `iters` holds: the time per hold
    // is the lock's cycle as a loaded campaign sees it (hold + handoff).
    group.sample_size(10);
    group.bench_function("per_hold_with_100_in_line", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let left = Arc::new(AtomicU64::new(iters));
                let started = Instant::now();
                let contenders = (0..100).map(|_| {
                    let (redis, lock, left, user) =
                        (redis.clone(), lock.clone(), left.clone(), user.clone());
                    tokio::spawn(async move {
                        let key = CampaignKeys::new(&campaign).lock();
                        while left
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                n.checked_sub(1)
                            })
                            .is_ok()
                        {
                            let guard = lock.acquire(&key).await.unwrap();
                            section(&redis, &guard, &campaign, &user()).await;
                            guard.release().await.unwrap();
                        }
                    })
                });
                futures::future::join_all(contenders).await;
                started.elapsed()
            })
        })
    });
    group.finish();
    runtime.block_on(async {
        let mut conn = redis
            .client
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = redis::cmd("DEL")
            .arg(&[
                keys.meta(),
                keys.users(),
                keys.taken(),
                keys.slots(),
                keys.lock(),
            ])
            .query_async(&mut conn)
            .await
            .unwrap();
    });
}

criterion_group!(benches, hold);
criterion_main!(benches);
