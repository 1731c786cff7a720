//! How fast the worker drains a backlog: `COUPON_DRAIN_MESSAGES` messages
//! (default 300,000) of one campaign are put in a fresh topic first, then the
//! worker starts; the figure is rows per second from its first committed
//! row to its last, with the time to the first row (joining the group)
//! reported beside it.
//!
//! `COUPON_DRAIN_BATCH_SIZE` sets `worker.batch_size` (default: the
//! production default).
//!
//! `cargo bench -p issuer-worker --bench drain` against the broker of
//! `COUPON_TEST_BROKERS` and the database of `COUPON_TEST_DATABASE_URL`
//! (`scripts/bench` sets both).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use chrono::Utc;
use common::ids::{CouponId, UserId};
use common::message::CouponIssued;
use common::testkit::{db, insert_campaign, isolated_settings, rows};
use issuer_worker::startup::Application;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use sea_orm::ConnectionTrait;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; this harness takes no arguments.
    let n: u64 = std::env::var("COUPON_DRAIN_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let mut settings = isolated_settings();
    settings.kafka.partitions = common::settings::KafkaSettings::default().partitions;
    settings.worker = common::settings::WorkerSettings {
        http_port: 0,
        ..Default::default()
    };
    if let Some(size) = std::env::var("COUPON_DRAIN_BATCH_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        settings.worker.batch_size = size;
    }
    let db = db().await;
    issuer_worker::migration::migrate(&db).await.unwrap();
    common::kafka::ensure_topics(&settings.kafka).await.unwrap();

    let campaign = insert_campaign(&db, "drain bench", n as i64).await;

    let preload = Instant::now();
    let producer: ThreadedProducer<_> = common::kafka::producer_config(&settings.kafka)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    for i in 0..n {
        let m = CouponIssued::new(
            CouponId::new(),
            campaign,
            UserId::parse(&format!("drain-{i}")).unwrap(),
            Utc::now(),
            "sync",
        );
        let (key, payload) = (m.key(), m.encode());
        loop {
            match producer.send(
                BaseRecord::<str, [u8]>::to(&settings.kafka.topic)
                    .key(&key)
                    .payload(&payload),
            ) {
                Ok(()) => break,
                Err((_, _)) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    let preload_secs = preload.elapsed().as_secs_f64();

    let app = Application::build(settings.clone()).await.unwrap();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(app.run_until_stopped(stop.clone()));
    let mut first_row: Option<Instant> = None;
    let deadline = started + Duration::from_secs(600);
    loop {
        let done = rows(&db, &campaign).await;
        if done > 0 && first_row.is_none() {
            first_row = Some(Instant::now());
        }
        if done >= n || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let finished = Instant::now();
    stop.cancel();
    task.await.unwrap().unwrap();
    let persisted = rows(&db, &campaign).await;
    let first = first_row.unwrap_or(finished);
    let drain_secs = finished.duration_since(first).as_secs_f64().max(1e-9);
    println!(
        "drain: {persisted} of {n} rows; {:.0} rows/s from the first row to the last ({drain_secs:.2} s), \
         first row {:.2} s after start; preload {:.0} messages/s; {} partitions, batches of {}",
        persisted as f64 / drain_secs,
        first.duration_since(started).as_secs_f64(),
        n as f64 / preload_secs,
        settings.kafka.partitions,
        settings.worker.batch_size,
    );
    db.execute_unprepared(&format!(
        "DELETE FROM coupons WHERE campaign_id = '{campaign}'; DELETE FROM campaigns WHERE id = '{campaign}'"
    ))
    .await
    .unwrap();
    assert_eq!(persisted, n, "the worker did not drain the backlog");
}
