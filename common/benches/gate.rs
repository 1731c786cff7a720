//! The message contract's encoding, and the gate script against the Redis of
//! `COUPON_TEST_REDIS_URL` (one call at a time, and 64 at once on the
//! shared multiplexed connections; a `rediss://` URL with the CA in
//! `COUPON_TEST_REDIS_TLS_CA` measures TLS). `cargo bench -p common`.

#![allow(clippy::unwrap_used)]

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
    let (client, gate) = runtime.block_on(async {
        let client = RedisClient::new(&settings, None).unwrap();
        let meta = CampaignMeta {
            stock: i64::MAX / 2,
            starts_at: Utc::now() - chrono::Duration::minutes(1),
            ends_at: None,
            closed: false,
            room: None,
        };
        CampaignMetas::new(client.clone())
            .load(&campaign, &meta)
            .await
            .unwrap();
        (client.clone(), Gate::new(client))
    });
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
    runtime.block_on(async {
        let keys = common::keys::CampaignKeys::new(&campaign);
        let mut conn = client
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = redis::cmd("DEL")
            .arg(&[keys.meta(), keys.users(), keys.taken(), keys.slots()])
            .query_async(&mut conn)
            .await
            .unwrap();
    });
}

criterion_group!(benches, message, gate);
criterion_main!(benches);
