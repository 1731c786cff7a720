//! The message contract's encoding, and the gate script against the Redis of
//! `COUPON_TEST_REDIS_URL` (one call at a time, and 64 at once on the
//! shared multiplexed connections; a `rediss://` URL with the CA in
//! `COUPON_TEST_REDIS_TLS_CA` measures TLS), and the gate's batches: 64
//! takes at once in calls of 1, 4, 16 and 64 takes, each printed with the
//! Redis server's CPU time per take (its `INFO cpu` over the takes made).
//! `cargo bench -p common`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use common::ids::{CampaignId, CouponId, UserId};
use common::message::CouponIssued;
use common::redis_state::{CampaignMeta, CampaignMetas, Gate, RedisClient};
use criterion::{Criterion, criterion_group, criterion_main};

mod support;

fn message(c: &mut Criterion) {
    let m = CouponIssued::new(
        CouponId::new(),
        CampaignId::new(),
        UserId::parse("user-1234567").unwrap(),
        Utc::now(),
        "sync",
    );
    let bytes = m.encode();
    c.bench_function("message_encode", |b| b.iter(|| m.encode()));
    c.bench_function("message_decode", |b| {
        b.iter(|| CouponIssued::decode(&bytes).unwrap())
    });
}

fn gate(c: &mut Criterion) {
    let runtime = support::runtime();
    let settings = support::redis_settings();
    let campaign = CampaignId::new();
    let client = runtime.block_on(async {
        let client = RedisClient::new(&settings, None).unwrap();
        open_for_ever(&client, &campaign).await;
        client
    });
    let gate = Gate::new(client.clone());
    let next = AtomicU64::new(0);
    let user = || UserId::parse(&format!("u{}", next.fetch_add(1, Ordering::Relaxed))).unwrap();
    c.bench_function("gate_take", |b| {
        b.to_async(&runtime).iter(|| async {
            gate.take(&campaign, &user(), &CouponId::new())
                .await
                .unwrap()
        })
    });
    c.bench_function("gate_take_64_concurrent", |b| {
        b.to_async(&runtime).iter(|| async {
            let users: Vec<UserId> = (0..64).map(|_| user()).collect();
            let coupons: Vec<CouponId> = users.iter().map(|_| CouponId::new()).collect();
            futures::future::join_all(
                users
                    .iter()
                    .zip(&coupons)
                    .map(|(u, c)| gate.take(&campaign, u, c)),
            )
            .await
        })
    });
    runtime.block_on(remove_gate_state(&client, &campaign));
}

/// 64 takes at once, in calls of `size` takes (64 / `size` calls, at once
/// on the shared connections), per batch size; then what Redis's CPU time
/// was per take.
fn gate_batch(c: &mut Criterion) {
    let runtime = support::runtime();
    let settings = support::redis_settings();
    let client = runtime.block_on(async { RedisClient::new(&settings, None).unwrap() });
    let gate = Gate::new(client.clone());
    let next = AtomicU64::new(0);
    let made = AtomicU64::new(0);
    let mut group = c.benchmark_group("gate_take_batch");
    group.throughput(criterion::Throughput::Elements(64));
    for size in [1usize, 4, 16, 64] {
        let campaign = CampaignId::new();
        runtime.block_on(open_for_ever(&client, &campaign));
        made.store(0, Ordering::Relaxed);
        let cpu_before = runtime.block_on(redis_cpu_seconds(&client));
        group.bench_function(format!("{size}"), |b| {
            b.to_async(&runtime).iter(|| async {
                let users: Vec<UserId> = (0..64)
                    .map(|_| {
                        UserId::parse(&format!("u{}", next.fetch_add(1, Ordering::Relaxed)))
                            .unwrap()
                    })
                    .collect();
                let coupons: Vec<CouponId> = users.iter().map(|_| CouponId::new()).collect();
                let takes: Vec<(&UserId, &CouponId)> = users.iter().zip(&coupons).collect();
                let replies = futures::future::join_all(
                    takes
                        .chunks(size)
                        .map(|batch| gate.take_batch(&campaign, batch)),
                )
                .await;
                made.fetch_add(64, Ordering::Relaxed);
                replies
            })
        });
        let cpu = runtime.block_on(redis_cpu_seconds(&client)) - cpu_before;
        println!(
            "gate_take_batch/{size}: Redis CPU {:.2} µs per take ({} takes)",
            cpu * 1e6 / made.load(Ordering::Relaxed) as f64,
            made.load(Ordering::Relaxed)
        );
        runtime.block_on(remove_gate_state(&client, &campaign));
    }
    group.finish();
}

/// Loads `campaign`'s gate meta: open since a minute ago, no end, stock
/// without bound.
async fn open_for_ever(client: &RedisClient, campaign: &CampaignId) {
    let meta = CampaignMeta {
        stock: i64::MAX / 2,
        starts_at: Utc::now() - chrono::Duration::minutes(1),
        ends_at: None,
        closed: false,
        room: None,
    };
    CampaignMetas::new(client.clone())
        .load(campaign, &meta)
        .await
        .unwrap();
}

/// The Redis server's CPU time so far (`used_cpu_sys` + `used_cpu_user`).
async fn redis_cpu_seconds(client: &RedisClient) -> f64 {
    let mut conn = client
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_sys" || *k == "used_cpu_user")
        .map(|(_, v)| v.trim().parse::<f64>().unwrap())
        .sum()
}

/// Removes `campaign`'s gate state.
async fn remove_gate_state(client: &RedisClient, campaign: &CampaignId) {
    let keys = common::keys::CampaignKeys::new(campaign);
    let mut conn = client
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("UNLINK")
        .arg(&[keys.meta(), keys.users(), keys.taken(), keys.slots()])
        .query_async(&mut conn)
        .await
        .unwrap();
}

criterion_group!(benches, message, gate, gate_batch);
criterion_main!(benches);
