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
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use secrecy::SecretString;

use crate::settings::Settings;

pub mod reads;
pub mod services;
pub mod tls;
pub mod topics;

pub use reads::*;
pub use services::*;
pub use topics::*;

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
    s.http.ops_port = 0;
    s.http.workers = 2;
    s.worker.http_port = 0;
    s.worker.batch_linger_ms = 5;
    // The shared services hold every test's campaigns: a gate keeper would
    // rebuild the gate state of campaigns other tests left without one on
    // purpose. Tests of the keeper turn it on, on services of their own.
    s.worker.keeper_interval_ms = 0;
    s.log.filter = std::env::var("COUPON_TEST_LOG").unwrap_or_else(|_| "warn".into());
    s
}

/// A port nothing listens on right now.
/// Chosen below the kernel's ephemeral range (`ip_local_port_range`): a port
/// in that range that is free when chosen can be taken as the local port of
/// any outgoing connection before the service binds it (a Redis Cluster
/// node of a CI run once failed to open its port that way, among the many
/// connections of the tests beside it). Never one this process handed out
/// before: a port is taken only when its process binds it, so two choices in
/// a row (an api's and a worker's) could otherwise get the same one.
pub fn spare_port() -> u16 {
    spare_port_below(ephemeral_floor())
}

/// A spare port whose Redis Cluster bus port (port + 10000) is spare too,
/// both below the ephemeral range: a node whose bus port is taken exits at
/// start.
fn spare_cluster_port() -> u16 {
    loop {
        let port = spare_port_below(ephemeral_floor() - 10_000);
        if is_free(port + 10_000) && hand_out(port + 10_000) {
            return port;
        }
    }
}

const LOWEST_SPARE_PORT: u16 = 10_000;

fn spare_port_below(limit: u16) -> u16 {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new();
    let mut attempt = 0_u64;
    loop {
        attempt += 1;
        let span = u64::from(limit - LOWEST_SPARE_PORT);
        let port = LOWEST_SPARE_PORT + (random.hash_one(attempt) % span) as u16;
        if is_free(port) && hand_out(port) {
            return port;
        }
    }
}

fn is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Records `port` as handed out; false when it was already.
fn hand_out(port: u16) -> bool {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(port)
}

/// The first port of the kernel's ephemeral range (32768 when unreadable),
/// never above what leaves room for a cluster node's bus port.
fn ephemeral_floor() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768_u16)
        .clamp(LOWEST_SPARE_PORT + 10_000 + 1_000, 32_768)
}

pub fn wait_for_port(port: u16, within: Duration, what: &str) {
    wait_for_port_or(port, within, || format!("{what} did not open port {port}"));
}

/// As `wait_for_port`, failing with `failure()` (e.g. the service's log).
pub fn wait_for_port_or(port: u16, within: Duration, failure: impl Fn() -> String) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < within, "{}", failure());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coupon-{what}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
