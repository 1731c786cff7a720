//! The consumer loop: collect a batch, persist it, dead-letter what cannot be
//! persisted, and only then store the batch's offsets (at-least-once).
//!
//! While PostgreSQL (or the DLQ) is unavailable the loop pauses its
//! partitions and keeps polling, so the group keeps this member and nothing
//! new piles up in memory; it stores no offsets and dead-letters nothing
//! until the batch is settled. A dead-letter topic that refuses a letter for
//! longer than `worker.dead_letter_patience_ms` (topic missing, access
//! refused, its leader gone) does not stall the partitions for good: the
//! batch's letters are parked in PostgreSQL (`parked_letters`, with an
//! alert), and so is every letter for one more patience before the topic is
//! tried again. On shutdown the batch in hand gets
//! `worker.shutdown_timeout_ms` to settle; if it cannot, its offsets are not
//! stored and the messages are redelivered to whoever owns the partitions next.
//!
//! Here: the loop (collect, settle, pause and resume, store offsets);
//! `attempt`: one attempt at a batch (write, account, set letters aside);
//! `context`: the librdkafka context (rebalances, lag, commits).

use std::collections::{BTreeMap, VecDeque};
use std::pin::pin;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::message::CouponIssued;
use common::redis_state::{RedisClient, StatusRecords};
use common::settings::{KafkaSettings, Settings, WorkerSettings};
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer, RebalanceProtocol, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use crate::dlq::DeadLetters;
use crate::metrics::WorkerMetrics;

mod attempt;
mod context;

pub use context::WorkerContext;

/// How often librdkafka reports its statistics (lag, unstarted partitions).
const STATISTICS_INTERVAL: Duration = Duration::from_secs(5);

/// How long a partition may be held without its fetch starting before the
/// loop takes it again (`restart_unstarted`), as the statistics see it.
/// Reading a committed offset takes milliseconds, and a rebalance seconds.
/// The statistics come every 5 s, the loop looks every `WATCH_INTERVAL`:
/// a partition is taken again 10–11 s after the first report that shows
/// it unstarted, and the next report, 5 s later, shows it started; the
/// fault campaign allows a stalled worker 20 s after its cause.
const UNSTARTED_PATIENCE: Duration = Duration::from_secs(10);

/// How often the loop looks for partitions to take again.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// One message as it came off the topic, decoded if it could be.
#[derive(Debug)]
struct Received {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    decoded: Result<CouponIssued, String>,
    /// The api's trace context from the message's headers (tracing on).
    trace: Option<opentelemetry::Context>,
}

impl Received {
    fn from_message(m: &BorrowedMessage<'_>) -> Self {
        let payload = m.payload().map(<[u8]>::to_vec);
        let decoded = match &payload {
            Some(bytes) => CouponIssued::decode(bytes).map_err(|e| e.to_string()),
            None => Err("empty payload".to_owned()),
        };
        Self {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload,
            decoded,
            trace: common::telemetry::parent_of(m.headers()),
        }
    }
}

enum Settled {
    Done,
    Abandoned,
}

#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("database: no answer within {0:?}")]
    DatabaseTimeout(Duration),
    #[error("dead-letter topic: {0}")]
    DeadLetter(anyhow::Error),
}

pub struct Worker {
    consumer: StreamConsumer<WorkerContext>,
    db: DatabaseConnection,
    /// Where a user turned away by the stock guard is recorded as `none`.
    status: StatusRecords,
    dead_letters: DeadLetters,
    /// Until when letters are parked in PostgreSQL without trying the
    /// dead-letter topic, and why (set when the topic refused a letter for
    /// `worker.dead_letter_patience_ms`).
    parking: std::sync::Mutex<Option<(Instant, String)>>,
    metrics: WorkerMetrics,
    settings: WorkerSettings,
    topic: String,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Worker {
    pub fn new(
        settings: &Settings,
        db: DatabaseConnection,
        metrics: WorkerMetrics,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            consumer: subscribe(&settings.kafka, metrics.clone())?,
            db,
            status: StatusRecords::new(
                RedisClient::new(&settings.redis, None)?,
                settings.redis.status_ttl_secs,
            ),
            dead_letters: DeadLetters::new(&settings.kafka)?,
            parking: std::sync::Mutex::new(None),
            metrics,
            settings: settings.worker.clone(),
            topic: settings.kafka.topic.clone(),
        })
    }

    /// Consumes until `shutdown` is cancelled, then settles or abandons the
    /// batch in hand, commits the stored offsets and returns. Returns an
    /// error, after the same commit, if partitions it gave back could not
    /// be taken again (`restart_unstarted`): only a new consumer gets them
    /// back, so the process exits to be restarted.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(topic = %self.topic, "worker consuming");
        let mut carry = VecDeque::new();
        let mut watch = tokio::time::interval(WATCH_INTERVAL);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failure = None;
        loop {
            let batch = match self.collect(&mut carry, &mut watch, &shutdown).await {
                Ok(batch) => batch,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            if !batch.is_empty() {
                match self.settle(&batch, &mut carry, &shutdown).await {
                    Settled::Done => self.store_offsets(&batch),
                    Settled::Abandoned => {
                        tracing::warn!(
                            messages = batch.len(),
                            "shutdown deadline passed; batch abandoned, it will be redelivered"
                        );
                        break;
                    }
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            // NoOffset: nothing was stored since the last commit.
            tracing::debug!(error = %e, "final commit");
        }
        self.dead_letters.flush(Duration::from_secs(5));
        tracing::info!("worker stopped");
        failure.map_or(Ok(()), Err)
    }

    /// Fills a batch: up to `batch_size` messages, waiting at most
    /// `batch_linger_ms` after the first one; returns early on shutdown.
    /// At every `watch` tick it takes again the partitions held without
    /// fetching (`restart_unstarted`), and fails if it lost them doing so.
    async fn collect(
        &self,
        carry: &mut VecDeque<Received>,
        watch: &mut tokio::time::Interval,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Vec<Received>> {
        let size = self.settings.batch_size.max(1);
        let linger = Duration::from_millis(self.settings.batch_linger_ms);
        let take = carry.len().min(size);
        let mut batch: Vec<Received> = carry.drain(..take).collect();
        let mut deadline = (!batch.is_empty()).then(|| tokio::time::Instant::now() + linger);
        while batch.len() < size {
            let received = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = sleep_until_or_forever(deadline) => break,
                _ = watch.tick() => {
                    restart_unstarted(&self.consumer, &self.topic)?;
                    continue;
                }
                m = self.consumer.recv() => m,
            };
            match received {
                Ok(m) => {
                    batch.push(Received::from_message(&m));
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + linger);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        self.metrics.consumed.inc_by(batch.len() as u64);
        Ok(batch)
    }

    /// Retries the batch until it is persisted and dead-lettered, pausing
    /// consumption while a dependency is down.
    async fn settle(
        &self,
        batch: &[Received],
        carry: &mut VecDeque<Received>,
        shutdown: &CancellationToken,
    ) -> Settled {
        let mut backoff = Duration::from_millis(self.settings.retry_initial_ms.max(1));
        let max_backoff = Duration::from_millis(self.settings.retry_max_ms.max(1));
        let grace = Duration::from_millis(self.settings.shutdown_timeout_ms);
        let mut stop_by: Option<Instant> = None;
        let mut paused = false;
        let patience = Duration::from_millis(self.settings.dead_letter_patience_ms);
        let mut letters_refused_since: Option<Instant> = None;
        let settled = loop {
            let result = {
                let mut attempt = pin!(self.attempt(batch));
                tokio::select! {
                    r = &mut attempt => Some(r),
                    _ = shutdown.cancelled() => {
                        let deadline = *stop_by.get_or_insert_with(|| Instant::now() + grace);
                        let left = deadline.saturating_duration_since(Instant::now());
                        tokio::time::timeout(left, &mut attempt).await.ok()
                    }
                }
            };
            match result {
                Some(Ok(())) => break Settled::Done,
                None => break Settled::Abandoned,
                Some(Err(e)) => {
                    match &e {
                        AttemptError::Database(_) | AttemptError::DatabaseTimeout(_) => {
                            self.metrics.db_errors.inc();
                        }
                        AttemptError::DeadLetter(refusal) => {
                            let since = *letters_refused_since.get_or_insert_with(Instant::now);
                            if since.elapsed() >= patience {
                                tracing::error!(
                                    error = %refusal,
                                    refused_for = ?since.elapsed(),
                                    "the dead-letter topic refuses letters; parking them in PostgreSQL"
                                );
                                *self.parking.lock().unwrap_or_else(|p| p.into_inner()) =
                                    Some((Instant::now() + patience, refusal.to_string()));
                            }
                        }
                    }
                    tracing::warn!(error = %e, retry_in = ?backoff, "batch not settled; pausing consumption");
                    if !paused {
                        self.pause();
                        paused = true;
                    }
                }
            }
            if shutdown.is_cancelled()
                && stop_by
                    .get_or_insert_with(|| Instant::now() + grace)
                    .saturating_duration_since(Instant::now())
                    < backoff
            {
                break Settled::Abandoned;
            }
            self.poll_while_paused(backoff, carry).await;
            backoff = (backoff * 2).min(max_backoff);
        };
        if paused {
            self.resume();
        }
        settled
    }

    fn pause(&self) {
        self.metrics.paused.set(1);
        self.consumer
            .context()
            .paused
            .store(true, std::sync::atomic::Ordering::SeqCst);
        match self.consumer.assignment() {
            Ok(tpl) => {
                if let Err(e) = self.consumer.pause(&tpl) {
                    tracing::warn!(error = %e, "pausing partitions");
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the assignment"),
        }
    }

    fn resume(&self) {
        self.metrics.paused.set(0);
        // Before the assignment is read: a rebalance that assigns after
        // this store resumes what it assigns (`WorkerContext::paused`).
        self.consumer
            .context()
            .paused
            .store(false, std::sync::atomic::Ordering::SeqCst);
        match self.consumer.assignment() {
            Ok(tpl) => {
                if let Err(e) = self.consumer.resume(&tpl) {
                    tracing::warn!(error = %e, "resuming partitions");
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the assignment"),
        }
        tracing::info!("consumption resumed");
    }

    /// Sleeps for `pause` while polling the consumer, so that the group keeps
    /// this member. A message that still arrives (a partition assigned since
    /// the pause) is kept for the next batch and its partition paused too.
    async fn poll_while_paused(&self, pause: Duration, carry: &mut VecDeque<Received>) {
        let until = tokio::time::Instant::now() + pause;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return,
                m = self.consumer.recv() => {
                    if let Ok(m) = m {
                        carry.push_back(Received::from_message(&m));
                        self.pause();
                    }
                }
            }
        }
    }

    /// Stores, per partition, the offset after the batch's last message.
    fn store_offsets(&self, batch: &[Received]) {
        let mut last: BTreeMap<i32, i64> = BTreeMap::new();
        for r in batch {
            let o = last.entry(r.partition).or_insert(r.offset);
            *o = (*o).max(r.offset);
        }
        for (partition, offset) in last {
            if let Err(e) = self.consumer.store_offset(&self.topic, partition, offset) {
                // The partition was revoked meanwhile: its new owner will
                // read these messages again and find their rows.
                tracing::debug!(partition, error = %e, "offset not stored; will be redelivered");
            }
        }
    }
}

/// The group's consumer, subscribed to the issue topic, with statistics
/// every `STATISTICS_INTERVAL`.
fn subscribe(
    settings: &KafkaSettings,
    metrics: WorkerMetrics,
) -> anyhow::Result<StreamConsumer<WorkerContext>> {
    let context = WorkerContext {
        metrics,
        topic: settings.topic.clone(),
        paused: std::sync::atomic::AtomicBool::new(false),
        unstarted: Default::default(),
    };
    let consumer: StreamConsumer<WorkerContext> = common::kafka::consumer_config(settings)
        .set(
            "statistics.interval.ms",
            STATISTICS_INTERVAL.as_millis().to_string(),
        )
        .create_with_context(context)
        .context("creating the Kafka consumer")?;
    consumer
        .subscribe(&[&settings.topic])
        .with_context(|| format!("subscribing to {}", settings.topic))?;
    Ok(consumer)
}

/// Gives back and takes again the partitions this member has held for
/// `UNSTARTED_PATIENCE` without starting to fetch them (`context::Unstarted`
/// says why librdkafka can leave them so), which makes librdkafka read their
/// committed offsets anew.
///
/// Only partitions still in the assignment, and only while the group is
/// settled and this member has had no rebalance for the patience: a
/// rebalance under way is librdkafka's, and an assignment call while
/// librdkafka waits for the application's answer to one would be taken for
/// it (the statistics can be 5 s old, so that stays possible: the
/// partitions a rebalance takes away are then fetched a moment longer, and
/// their messages may be delivered twice; the rows' key keeps one).
///
/// With the cooperative protocol (the default) only those partitions are
/// taken again. With an eager one librdkafka takes only whole assignments,
/// so the whole one is, and every partition restarts from its committed
/// offset (its messages since delivered twice); the patience is then three
/// times as long, to spare the healthy partitions while a slow coordinator
/// loads the group's offsets.
///
/// Nothing is lost either way: a partition's offsets are stored only after
/// its batch is settled, and both giving back and taking again reset them.
/// If taking again fails after the giving back succeeded (librdkafka
/// refuses assignment calls only once the consumer has a fatal error or is
/// closing), only a new consumer gets the partitions back: this returns an
/// error, and the worker exits to be restarted (`Worker::run`). A failed
/// giving back leaves them assigned, to be tried at the next tick.
/// Giving back while librdkafka still retries a read drops that read: the
/// partition is read again when taken again, and a stale answer that sticks
/// it once more is met at the next patience.
fn restart_unstarted(consumer: &StreamConsumer<WorkerContext>, topic: &str) -> anyhow::Result<()> {
    let context = consumer.context();
    let protocol = consumer.rebalance_protocol();
    let patience = match protocol {
        RebalanceProtocol::Cooperative => UNSTARTED_PATIENCE,
        _ => 3 * UNSTARTED_PATIENCE,
    };
    let fresh_for = STATISTICS_INTERVAL + Duration::from_secs(2);
    let overdue = context
        .unstarted()
        .overdue(patience, fresh_for, Instant::now());
    if overdue.is_empty() {
        return Ok(());
    }
    let assignment = match consumer.assignment() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "reading the assignment");
            return Ok(());
        }
    };
    let assigned: Vec<i32> = assignment
        .elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect();
    // Statistics older than a rebalance may name partitions gone since.
    let overdue: Vec<i32> = overdue
        .into_iter()
        .filter(|p| assigned.contains(p))
        .collect();
    if overdue.is_empty() {
        return Ok(());
    }
    let list = |partitions: &[i32]| {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            // No offset: librdkafka reads the committed one.
            tpl.add_partition(topic, *p);
        }
        tpl
    };
    tracing::warn!(
        partitions = ?overdue,
        held_for = ?patience,
        "partitions held without fetching; giving them back and taking them again"
    );
    let again = match protocol {
        RebalanceProtocol::Cooperative => list(&overdue),
        _ => list(&assigned),
    };
    let taken = match protocol {
        RebalanceProtocol::Cooperative => consumer
            .incremental_unassign(&again)
            .map_err(|e| (e, false))
            .and_then(|()| consumer.incremental_assign(&again).map_err(|e| (e, true))),
        // An eager assignment call clears the assignment first.
        _ => consumer.assign(&again).map_err(|e| (e, true)),
    };
    match taken {
        Ok(()) => {
            context.unstarted().forget(&overdue);
            context.apply_pause(consumer, &again);
            context.metrics.partition_restarts.inc();
            Ok(())
        }
        Err((e, true)) => Err(anyhow::anyhow!(
            "partitions {overdue:?} given back could not be taken again ({e}); \
             only a new consumer gets them back"
        )),
        Err((e, false)) => {
            tracing::warn!(error = %e, "giving back the unstarted partitions");
            Ok(())
        }
    }
}

async fn sleep_until_or_forever(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
