//! Test support shared by the api's and the worker's integration tests
//! (feature `testkit`, dev-dependencies only): where the real services are,
//! settings isolated per test, services of a test's own to break, and reads
//! of the broker, Redis and PostgreSQL to check outcomes against.
//!
//! The shared services: `COUPON_TEST_DATABASE_URL`, `COUPON_TEST_REDIS_URL`,
//! `COUPON_TEST_BROKERS` (scripts/test sets them and starts the services);
//! A test that runs a broker of its own starts Apache Kafka through
//! `scripts/kafka run` (the jars are fetched once into the cache).
//!
//! | file | what |
//! |---|---|
//! | this one | where the shared services are, settings per test, ports |
//! | [`services`] | a broker, Redis, Redis Cluster or PostgreSQL of a test's own |
//! | [`tls`] | a certificate authority made with `openssl`, for TLS tests |
//! | [`reads`] | reads of the topic, PostgreSQL and Redis to check outcomes |
//! | [`scrape`] | a `/metrics` page read back |
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use secrecy::SecretString;

use crate::settings::Settings;

pub mod reads;
pub mod scrape;
pub mod services;
pub mod tls;

pub use reads::*;
pub use scrape::Scrape;
pub use services::*;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

pub fn database_url() -> String {
    env_or(
        "COUPON_TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/coupons_test?sslmode=disable",
    )
}

pub fn redis_url() -> String {
    env_or("COUPON_TEST_REDIS_URL", "redis://127.0.0.1:6379")
}

pub fn brokers() -> String {
    env_or("COUPON_TEST_BROKERS", "127.0.0.1:9092")
}

/// Settings for one test: the shared services, its own topic, DLQ and
/// consumer group, a short delivery timeout, port 0 everywhere.
pub fn isolated_settings() -> Settings {
    let mut s = Settings::default();
    let tag = uuid::Uuid::now_v7().simple().to_string();
    s.database.url = SecretString::from(database_url());
    s.redis.url = redis_url();
    // Timeouts, lock waits and delivery timeouts stay at their production
    // defaults: the promises are tested where they must hold.
    s.kafka.brokers = brokers();
    s.kafka.topic = format!("coupon.issue.test.{tag}");
    s.kafka.dlq_topic = format!("coupon.issue.test.{tag}.dlq");
    s.kafka.partitions = 3;
    s.kafka.group_id = format!("coupon-issuer-test-{tag}");
    s.kafka.session_timeout_ms = 6_000;
    s.http.port = 0;
    s.http.workers = 2;
    s.http.shutdown_timeout_secs = 10;
    s.worker.http_port = 0;
    s.worker.batch_linger_ms = 5;
    s.log.filter = "warn".into();
    broker_quirks(&mut s);
    s
}

/// The settings that only Tansu needs, when `COUPON_TEST_BROKER` names it
/// (`tansu` or `tansu-memory`; unset or `kafka`: Apache Kafka, the defaults):
/// idempotence off and the worker's gap guard on, as `scripts/stack` sets
/// them (see `KafkaSettings::idempotence`, `WorkerSettings::gap_patience_ms`).
pub fn broker_quirks(s: &mut Settings) {
    if std::env::var("COUPON_TEST_BROKER").is_ok_and(|b| b.starts_with("tansu")) {
        s.kafka.idempotence = false;
        s.worker.gap_patience_ms = 2_000;
    }
}

/// A port nothing listens on right now.
/// Never one this process handed out before: a port is free when chosen but
/// taken only when its process binds it, so two choices in a row (an api's
/// and a worker's) could otherwise get the same one.
pub fn spare_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        if GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(port)
        {
            return port;
        }
    }
}

/// A spare port whose Redis Cluster bus port (port + 10000) is spare too: a
/// node whose bus port is taken exits at start.
fn spare_cluster_port() -> u16 {
    loop {
        let port = spare_port();
        if port <= 55_535 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

pub fn wait_for_port(port: u16, within: Duration, what: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < within,
            "{what} did not open port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coupon-{what}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
