//! The consumer's librdkafka context: rebalances logged and counted, the
//! consumer lag from librdkafka's statistics, commit failures, and the
//! loop's pause applied to every partition a rebalance assigns.

use std::sync::atomic::{AtomicBool, Ordering};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Statistics, TopicPartitionList};

use crate::metrics::WorkerMetrics;

/// Rebalance logging and consumer-lag metrics from librdkafka's statistics.
#[derive(Debug)]
pub struct WorkerContext {
    pub(super) metrics: WorkerMetrics,
    pub(super) topic: String,
    /// Whether the loop has paused consumption (a batch it cannot settle).
    /// librdkafka keeps an application's pause on a partition across a
    /// revoke and a later assign, and the loop pauses and resumes the
    /// assignment it sees: a partition paused, revoked in a rebalance while
    /// the loop resumed the rest, then assigned again came back paused for
    /// good, with nothing to say so (the fault campaign's seed 953359013:
    /// the worker assigned, not paused, its lag never moving). So every
    /// assignment is set to this state as it arrives.
    pub(super) paused: AtomicBool,
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
        let lag: i64 = statistics
            .topics
            .get(&self.topic)
            .map(|t| {
                t.partitions
                    .values()
                    .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                    .map(|p| p.consumer_lag)
                    .sum()
            })
            .unwrap_or(0);
        self.metrics.consumer_lag.set(lag);
        self.metrics.kafka.observe("consumer", &statistics);
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::info!(rebalance = ?describe(rebalance), "partitions being rebalanced");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.metrics.rebalances.inc();
        if let Ok(assignment) = consumer.assignment() {
            self.metrics
                .assigned_partitions
                .set(assignment.count() as i64);
            if matches!(rebalance, Rebalance::Assign(_)) && assignment.count() > 0 {
                let applied = if self.paused.load(Ordering::SeqCst) {
                    consumer.pause(&assignment)
                } else {
                    consumer.resume(&assignment)
                };
                if let Err(e) = applied {
                    tracing::warn!(error = %e, "setting the assigned partitions' pause");
                }
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            // A commit for a partition this member no longer owns fails; the
            // new owner resumes from the last commit, so this only means
            // some messages are delivered again (and deduplicated).
            tracing::debug!(error = %e, "offset commit failed");
        }
    }
}

fn describe(rebalance: &Rebalance<'_>) -> String {
    let list = |tpl: &TopicPartitionList| {
        tpl.elements()
            .iter()
            .map(|e| e.partition().to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    match rebalance {
        Rebalance::Assign(tpl) => format!("assign [{}]", list(tpl)),
        Rebalance::Revoke(tpl) => format!("revoke [{}]", list(tpl)),
        Rebalance::Error(e) => format!("error {e}"),
    }
}
