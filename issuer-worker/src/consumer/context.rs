//! The consumer's librdkafka context: rebalances logged and counted, the
//! consumer lag from librdkafka's statistics, commit failures, the loop's
//! pause applied to every partition a rebalance assigns, and the partitions
//! held but never started (`Unstarted`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
    /// The partitions held but not started, from the last statistics.
    pub(super) unstarted: Mutex<Unstarted>,
}

/// Partitions this member holds (`desired`) whose fetch has not started
/// (`fetch_state` `none`, or `stopped` for one fetched before and assigned
/// again), each with when the statistics first showed it so.
///
/// A partition stays so while librdkafka reads its committed offset, which
/// takes milliseconds. But librdkafka 2.12.1 never retries that read when
/// the broker refuses the whole OffsetFetch request (`NOT_COORDINATOR` as
/// the group's coordinator moves), nor when the answer comes after the
/// assignment changed: the partition stays assigned and unread until it is
/// unassigned (`rdkafka_assignment.c`, "will not be added back to .pending
/// ... until the application unassigns it"). A real broker's refusal names
/// no partition, so they also stay on librdkafka's list of reads under way,
/// which holds back every later read and can hold a cooperative rebalance
/// in `wait-incr-unassign-to-complete` for good. The fault campaign's seed
/// 84950045 saw a worker hold six partitions for 134 s after a broker
/// restart. The loop gives such partitions back and takes them again
/// (`restart_unstarted`): giving back clears both lists, taking again reads
/// the offsets anew.
#[derive(Debug, Default)]
pub(super) struct Unstarted {
    since: BTreeMap<i32, Instant>,
    /// The group's coordinator was known at the last statistics, and the
    /// member was steady or waiting for its own revoke to finish (which a
    /// stuck read can hold up for good).
    settled: bool,
    /// Since the last rebalance handed to this member (assign or revoke),
    /// as of `at`.
    rebalance_age: Duration,
    /// When the last statistics came.
    at: Option<Instant>,
}

/// The fetch states of a partition whose fetch has not started.
const NOT_STARTED: [&str; 2] = ["none", "stopped"];

/// The join states in which the loop may give partitions back and take
/// them again: steady, or waiting for a cooperative revoke to finish, which
/// a stuck read holds up for good. Not while librdkafka waits for the
/// application to answer a rebalance (`wait-assign-call`,
/// `wait-unassign-call`): an assignment call then would be taken for the
/// answer. (In the second state it still can be: giving the partitions
/// back lets the revoke finish, librdkafka hands the member its next
/// assignment at once, and taking them again is taken for the answer; the
/// member may then rejoin before the loop adds the new partitions, which
/// costs a rebalance and perhaps messages delivered twice, not a loss.
/// Not tested: it needs two members and a stuck read during a revoke.)
const SETTLED_JOIN_STATES: [&str; 2] = ["steady", "wait-incr-unassign-to-complete"];

impl Unstarted {
    /// Records one statistics report.
    fn observe(&mut self, statistics: &Statistics, topic: &str, now: Instant) {
        let held: Vec<i32> = statistics
            .topics
            .get(topic)
            .map(|t| {
                t.partitions
                    .values()
                    .filter(|p| {
                        p.partition >= 0
                            && p.desired
                            && NOT_STARTED.contains(&p.fetch_state.as_str())
                    })
                    .map(|p| p.partition)
                    .collect()
            })
            .unwrap_or_default();
        self.since.retain(|p, _| held.contains(p));
        for p in &held {
            self.since.entry(*p).or_insert(now);
        }
        let group = statistics.cgrp.as_ref();
        self.settled = group.is_some_and(|g| {
            g.state == "up" && SETTLED_JOIN_STATES.contains(&g.join_state.as_str())
        });
        self.rebalance_age =
            Duration::from_millis(group.map_or(0, |g| g.rebalance_age).max(0).unsigned_abs());
        self.at = Some(now);
    }

    /// How many partitions the last statistics showed held and not started.
    pub(super) fn count(&self) -> usize {
        self.since.len()
    }

    /// The partitions the last statistics showed held and not started for
    /// at least `patience`, with the group settled and no rebalance of this
    /// member for `patience` either (a rebalance under way is librdkafka's
    /// to finish). Judged from the reports alone, and only while the last
    /// is fresh (`fresh_for` before `now`): a loop that did not poll for a
    /// while has reports waiting that may say otherwise.
    pub(super) fn overdue(
        &self,
        patience: Duration,
        fresh_for: Duration,
        now: Instant,
    ) -> Vec<i32> {
        let Some(at) = self.at else {
            return Vec::new();
        };
        if !self.settled
            || self.rebalance_age < patience
            || now.saturating_duration_since(at) > fresh_for
        {
            return Vec::new();
        }
        self.since
            .iter()
            .filter(|(_, since)| at.saturating_duration_since(**since) >= patience)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Starts these partitions' count again (they were taken again).
    pub(super) fn forget(&mut self, partitions: &[i32]) {
        self.since.retain(|p, _| !partitions.contains(p));
    }
}

impl WorkerContext {
    pub(super) fn unstarted(&self) -> std::sync::MutexGuard<'_, Unstarted> {
        self.unstarted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets `assignment` to the loop's pause state.
    pub(super) fn apply_pause<C: Consumer<Self>>(
        &self,
        consumer: &C,
        assignment: &TopicPartitionList,
    ) {
        let applied = if self.paused.load(Ordering::SeqCst) {
            consumer.pause(assignment)
        } else {
            consumer.resume(assignment)
        };
        if let Err(e) = applied {
            tracing::warn!(error = %e, "setting the assigned partitions' pause");
        }
    }
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
        let unstarted = {
            let mut u = self.unstarted();
            u.observe(&statistics, &self.topic, Instant::now());
            u.count()
        };
        self.metrics.unstarted_partitions.set(unstarted as i64);
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
                self.apply_pause(consumer, &assignment);
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
