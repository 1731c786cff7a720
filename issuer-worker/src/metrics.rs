//! The worker's metrics, declared together with bounded labels (a DLQ reason,
//! never a campaign or user id).

use common::message::DlqReason;
use common::metrics::{counter, counter_vec, gauge, histogram, latency_buckets};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, Registry};

/// Buckets of `worker_end_to_end_lag_seconds`, in seconds: every 25 ms
/// from 100 to 250 ms and every 50 to 100 ms up to 500, where the
/// performance target (p99 under 250 ms at 10,000 requests/s,
/// docs/PERFORMANCE.md) and an operator's alerts sit. Doubling buckets
/// (128, 256, 512 ms) left a p99 of 173 or 327 ms to interpolation.
const LAG_BUCKETS: [f64; 30] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.225, 0.25,
    0.3, 0.35, 0.4, 0.5, 0.6, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    pub registry: Registry,
    pub consumed: IntCounter,
    pub persisted: IntCounter,
    pub duplicates: IntCounter,
    pub dead_lettered: IntCounterVec,
    pub truncated_letters: IntCounter,
    pub parked: IntCounterVec,
    pub db_errors: IntCounter,
    pub paused: IntGauge,
    pub batch_size: Histogram,
    pub batch_seconds: Histogram,
    pub end_to_end_lag_seconds: Histogram,
    pub consumer_lag: IntGauge,
    pub assigned_partitions: IntGauge,
    pub unstarted_partitions: IntGauge,
    pub partition_restarts: IntCounter,
    pub rebalances: IntCounter,
    pub campaigns_taken: IntGauge,
    pub campaigns_persisted: IntGauge,
    pub stale_campaigns: IntGauge,
    pub rebuilds: IntCounterVec,
    pub kafka: common::metrics::KafkaClientMetrics,
}

impl WorkerMetrics {
    pub fn new() -> Self {
        let r = Registry::new();
        common::metrics::register_process(&r);
        let dead_lettered = counter_vec(
            &r,
            "worker_dead_lettered_total",
            "Messages sent to the DLQ, by reason.",
            &["reason"],
        );
        let parked = counter_vec(
            &r,
            "worker_parked_letters_total",
            "Dead letters the DLQ topic refused for worker.dead_letter_patience_ms, kept in PostgreSQL's parked_letters instead, by reason.",
            &["reason"],
        );
        for reason in DlqReason::ALL {
            dead_lettered.with_label_values(&[reason.as_str()]);
            parked.with_label_values(&[reason.as_str()]);
        }
        let rebuilds = counter_vec(
            &r,
            "worker_gate_rebuilds_total",
            "Gate states the keeper rebuilt (rebuilt), found current when it got to them (current), or failed to rebuild (failed: tried again at the next scan).",
            &["result"],
        );
        for result in ["rebuilt", "current", "failed"] {
            rebuilds.with_label_values(&[result]);
        }
        Self {
            consumed: counter(
                &r,
                "worker_messages_consumed_total",
                "Messages taken off the issue topic.",
            ),
            persisted: counter(&r, "worker_coupons_persisted_total", "Coupon rows written."),
            duplicates: counter(
                &r,
                "worker_duplicates_total",
                "Messages whose (campaign, user) already had a row: redeliveries.",
            ),
            dead_lettered,
            truncated_letters: counter(
                &r,
                "worker_truncated_letters_total",
                "Dead letters too large for the DLQ topic, sent as a truncated copy (dlq.truncated).",
            ),
            parked,
            db_errors: counter(
                &r,
                "worker_db_errors_total",
                "Database transactions that failed and were retried.",
            ),
            paused: gauge(
                &r,
                "worker_paused",
                "1 while consumption is paused because PostgreSQL is unavailable.",
            ),
            batch_size: histogram(
                &r,
                "worker_batch_size",
                "Messages per database transaction.",
                vec![
                    1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0,
                ],
            ),
            batch_seconds: histogram(
                &r,
                "worker_batch_duration_seconds",
                "Time to persist one batch, transaction included.",
                latency_buckets(),
            ),
            end_to_end_lag_seconds: histogram(
                &r,
                "worker_end_to_end_lag_seconds",
                "From the api's requested_at to the committed row.",
                LAG_BUCKETS.to_vec(),
            ),
            consumer_lag: gauge(
                &r,
                "worker_consumer_lag_offsets",
                "Offsets behind the end of the topic, summed over assigned partitions.",
            ),
            assigned_partitions: gauge(
                &r,
                "worker_assigned_partitions",
                "Partitions this member holds (0 when it left or lost the group).",
            ),
            unstarted_partitions: gauge(
                &r,
                "worker_unstarted_partitions",
                "Partitions this member holds but has not started fetching (no committed offset read yet), as of the last statistics.",
            ),
            partition_restarts: counter(
                &r,
                "worker_partition_restarts_total",
                "Times this member gave back and took again partitions it held without fetching for 10 s, 30 s with an eager assignment strategy (librdkafka never retried their committed-offset read).",
            ),
            rebalances: counter(
                &r,
                "worker_rebalances_total",
                "Rebalances this member went through (its first assignment included).",
            ),
            campaigns_taken: gauge(
                &r,
                "worker_campaigns_taken",
                "Slots taken at the gate, summed over recent campaigns (Redis counters).",
            ),
            campaigns_persisted: gauge(
                &r,
                "worker_campaigns_persisted",
                "Coupon rows, summed over recent campaigns (the persisted columns).",
            ),
            stale_campaigns: gauge(
                &r,
                "worker_gate_stale_campaigns",
                "Kept campaigns whose gate state the keeper found missing or fenced at its last scan.",
            ),
            rebuilds,
            kafka: common::metrics::KafkaClientMetrics::new(&r),
            registry: r,
        }
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
