//! One batch transaction of the worker (500 new rows of one campaign: lock,
//! read existing pairs, insert, advance `persisted`) against the PostgreSQL
//! of `COUPON_TEST_DATABASE_URL`. `cargo bench -p issuer-worker --bench persist`.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use common::ids::{CouponId, UserId};
use common::message::CouponIssued;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use issuer_worker::persist::Consumed;
use sea_orm::ConnectionTrait;

const BATCH: u64 = 500;

fn persist(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (db, campaign) = runtime.block_on(async {
        let db = common::testkit::db().await;
        issuer_worker::migration::migrate(&db).await.unwrap();
        let campaign = common::testkit::insert_campaign(&db, "persist bench", i64::MAX / 2).await;
        (db, campaign)
    });
    let next = AtomicU64::new(0);
    let mut group = c.benchmark_group("worker");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(20);
    group.bench_function("persist_batch_of_500", |b| {
        b.to_async(&runtime).iter(|| async {
            let batch: Vec<CouponIssued> = (0..BATCH)
                .map(|_| {
                    let user = format!("p{}", next.fetch_add(1, Ordering::Relaxed));
                    CouponIssued::new(
                        CouponId::new(),
                        campaign,
                        UserId::parse(&user).unwrap(),
                        Utc::now(),
                        "sync",
                    )
                })
                .collect();
            let refs: Vec<Consumed<'_>> = batch
                .iter()
                .zip(0..)
                .map(|(message, offset)| Consumed {
                    message,
                    partition: 0,
                    offset,
                })
                .collect();
            issuer_worker::persist::persist(&db, &refs).await.unwrap()
        })
    });
    group.finish();
    runtime.block_on(async {
        db.execute_unprepared(&format!(
            "DELETE FROM coupons WHERE campaign_id = '{campaign}'; DELETE FROM campaigns WHERE id = '{campaign}'"
        ))
        .await
        .unwrap();
    });
}

criterion_group!(benches, persist);
criterion_main!(benches);
