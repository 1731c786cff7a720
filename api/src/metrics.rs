//! The api's metrics, declared together. Labels are bounded: a route
//! pattern, a method, a status code, a strategy, an outcome. Never a user id
//! or a campaign id.

use common::metrics::{counter_vec, gauge, gauge_vec, histogram, histogram_vec, latency_buckets};
use prometheus::{Histogram, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Registry};

#[derive(Debug, Clone)]
pub struct ApiMetrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub in_flight: IntGauge,
    pub unknown_methods: prometheus::IntCounter,
    pub issue_outcomes: IntCounterVec,
    pub jwt_verify_seconds: Histogram,
    pub gate_seconds: Histogram,
    pub gate_batch_takes: Histogram,
    pub produce_seconds: Histogram,
    pub redis_pool_wait_seconds: Histogram,
    pub compensations: IntCounterVec,
    pub idempotency: IntCounterVec,
    pub room_replies: IntCounterVec,
    pub room_wait_seconds: Histogram,
    pub producer_buffered: IntGauge,
    pub queue_depth: IntGauge,
    pub lock_wait_seconds: Histogram,
    pub info: IntGaugeVec,
    pub kafka: common::metrics::KafkaClientMetrics,
}

impl ApiMetrics {
    pub fn new() -> Self {
        let r = Registry::new();
        common::metrics::register_process(&r);
        let metrics = Self {
            requests: counter_vec(
                &r,
                "http_requests_total",
                "HTTP requests by route pattern, method and status.",
                &["route", "method", "status"],
            ),
            request_seconds: histogram_vec(
                &r,
                "http_request_duration_seconds",
                "HTTP request latency by route pattern, method and status.",
                &["route", "method", "status"],
                latency_buckets(),
            ),
            in_flight: gauge(&r, "http_requests_in_flight", "Requests being served."),
            unknown_methods: common::metrics::counter(
                &r,
                "http_unknown_methods_total",
                "Requests with a method outside the HTTP standard's, answered 405 before anything else.",
            ),
            issue_outcomes: counter_vec(
                &r,
                "issue_outcomes_total",
                "Replies of the issue endpoint by strategy and outcome.",
                &["strategy", "outcome"],
            ),
            jwt_verify_seconds: histogram(
                &r,
                "jwt_verify_duration_seconds",
                "Time to verify a user JWT.",
                latency_buckets(),
            ),
            gate_seconds: histogram(
                &r,
                "gate_duration_seconds",
                "Time of the gate decision (pool wait included): the gate script, or the Redis calls of the locked section under a lock strategy.",
                latency_buckets(),
            ),
            gate_batch_takes: histogram(
                &r,
                "gate_batch_takes",
                "Takes one gate call carried (gate.batch_size; 1: a take alone). Its count is the gate calls made.",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
            ),
            produce_seconds: histogram(
                &r,
                "produce_duration_seconds",
                "From enqueueing a message to its delivery report.",
                latency_buckets(),
            ),
            redis_pool_wait_seconds: histogram(
                &r,
                "redis_pool_wait_seconds",
                "Wait for a Redis connection (long only while one is opened).",
                latency_buckets(),
            ),
            compensations: counter_vec(
                &r,
                "gate_compensations_total",
                "Slots given back after a failed produce (given_back), takes whose reply timed out withdrawn (withdrawn: it had taken the slot; voided: it had not run), and give-backs that failed (failed).",
                &["result"],
            ),
            idempotency: counter_vec(
                &r,
                "idempotency_keys_total",
                "Requests with an Idempotency-Key by what became of it: kept (reply stored), freed (a 429/5xx: the key may run again), replayed, in_progress (409), reused (422), expired (the running record expired before the request finished), not_finished (Redis refused the record).",
                &["result"],
            ),
            room_replies: counter_vec(
                &r,
                "waiting_room_replies_total",
                "Waiting-room calls (join, look) by the state they answered (none, waiting, admitted, expired, taken, sold_out, closed, no_waiting_room, missing).",
                &["call", "state"],
            ),
            room_wait_seconds: histogram(
                &r,
                "waiting_room_wait_seconds",
                "How long users who issued behind a waiting room waited between joining and being admitted.",
                vec![
                    0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                ],
            ),
            producer_buffered: gauge(
                &r,
                "producer_buffered_messages",
                "Messages in the producer's buffer or in flight (sampled at scrape).",
            ),
            queue_depth: gauge(
                &r,
                "issue_queue_depth",
                "Requests waiting in the async-queue strategy's queue.",
            ),
            lock_wait_seconds: histogram(
                &r,
                "lock_wait_seconds",
                "Wait for the campaign lock (lock strategies).",
                latency_buckets(),
            ),
            info: gauge_vec(
                &r,
                "api_info",
                "Always 1; labels say which strategy and version run.",
                &["strategy", "version"],
            ),
            kafka: common::metrics::KafkaClientMetrics::new(&r),
            registry: r,
        };
        // Zero series from the start, so that rates and alerts see them.
        for result in ["released", "withdrawn", "voided", "failed"] {
            metrics.compensations.with_label_values(&[result]);
        }
        metrics
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}
