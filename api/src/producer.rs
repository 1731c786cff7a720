//! The issue producer: idempotent, `acks=all`, with a delivery report per
//! message that says whether the broker has it.
//!
//! rdkafka's `FutureProducer` drops a failed message's persistence status,
//! which is exactly what decides between compensating and answering
//! `pending`, so the delivery callback here reads it (librdkafka's
//! `rd_kafka_message_status`) and hands it to the waiting request.
//!
//! A producer whose idempotence state is broken can never send again: after
//! a fatal error, or when the broker refuses its producer id, epoch or
//! sequence. It is replaced by a new one (a fresh producer id) on the next
//! send, and the old one is dropped on a thread of its own, which purges its
//! buffer: the messages it still held get failed reports with their
//! persistence status, as any other failure. (After a merely timed-out
//! message Apache Kafka lets librdkafka bump the epoch and go on; the
//! replacement is for the states it cannot recover from.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use common::message::CouponIssued;
use common::settings::{KafkaSettings, Partitioning};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Partitioner, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::oneshot;

/// What the broker said about one message.
#[derive(Debug)]
pub enum Delivery {
    /// In the broker's log (acknowledged by all in-sync replicas).
    Persisted,
    /// Failed, and the broker never received it: safe to compensate.
    NotPersisted(KafkaError),
    /// Failed after it was sent: it may be in the log. Never compensate.
    PossiblyPersisted(KafkaError),
}

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("the producer's buffer stayed full for {0:?}")]
    BufferFull(Duration),
    #[error("the producer refused the message: {0}")]
    Refused(KafkaError),
}

/// Waits for a message's delivery report.
#[derive(Debug)]
pub struct DeliveryReceipt {
    report: oneshot::Receiver<Delivery>,
    unconfirmed: bool,
}

impl DeliveryReceipt {
    pub async fn wait(self) -> Delivery {
        // The sender is consumed only by the delivery callback, which
        // librdkafka calls exactly once per message, also when a producer is
        // purged. If it were ever dropped without a report, the message's
        // fate would be unknown: that is `PossiblyPersisted`.
        let delivery = self
            .report
            .await
            .unwrap_or_else(|_| Delivery::PossiblyPersisted(KafkaError::Canceled));
        match delivery {
            Delivery::Persisted if self.unconfirmed => Delivery::PossiblyPersisted(
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
            ),
            other => other,
        }
    }

    /// A message enqueued after its deadline: even delivered, it reached the
    /// broker later than a repair assumes it can, and may be refused as
    /// `late`, so its report counts as unconfirmed (the user reads
    /// `pending`, and `/coupons/me` tells the end).
    pub fn unconfirmed(self) -> Self {
        Self {
            unconfirmed: true,
            ..self
        }
    }
}

#[derive(Debug)]
pub struct DeliveryContext {
    /// Set when this producer can no longer deliver and must be replaced.
    broken: AtomicBool,
    /// `kafka.partitioning = sticky`; otherwise librdkafka's `partitioner`.
    sticky: Option<StickyPartitioner>,
    /// The last time a broker refused this client's TLS or SASL settings,
    /// and what it said.
    refused: std::sync::Mutex<Option<(Instant, String)>>,
    /// Where librdkafka's statistics go, and under which client label.
    metrics: common::metrics::KafkaClientMetrics,
    client: &'static str,
}

/// Keeps every message on one partition for an interval, then moves to the
/// next available one (`kafka.partitioning = sticky`, see its settings).
///
/// librdkafka batches per partition, so with the key hash a produce request
/// of a busy instance carries one small batch for every partition; on the
/// local broker each batch costs about as much as a message (measured in
/// docs/PERFORMANCE.md). Sticky, a request carries one batch of everything
/// that lingered. The start partition is random, so instances spread out.
#[derive(Debug)]
pub struct StickyPartitioner {
    interval_us: u64,
    epoch: Instant,
    /// `(stay until, µs since epoch) << 16 | partition`.
    state: AtomicU64,
}

impl StickyPartitioner {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval_us: interval.as_micros().max(1) as u64,
            epoch: Instant::now(),
            state: AtomicU64::new(u64::from(rand_partition_seed())),
        }
    }

    fn pick(&self, now_us: u64, partitions: i32, available: impl Fn(i32) -> bool) -> i32 {
        if partitions <= 0 {
            return rdkafka::producer::PARTITION_UA;
        }
        let state = self.state.load(Ordering::Relaxed);
        let (until, current) = (state >> 16, (state & 0xffff) as i32 % partitions);
        if now_us < until && available(current) {
            return current;
        }
        // The next available partition; racing callers may both move on,
        // which costs one extra switch, nothing more.
        let next = (1..=partitions)
            .map(|step| (current + step) % partitions)
            .find(|&p| available(p))
            .unwrap_or((current + 1) % partitions);
        let until = now_us + self.interval_us;
        self.state
            .store((until << 16) | (next as u64 & 0xffff), Ordering::Relaxed);
        next
    }
}

/// A start partition that differs between processes.
fn rand_partition_seed() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ std::process::id().wrapping_mul(2_654_435_761)) as u16
}

impl Partitioner for StickyPartitioner {
    fn partition(
        &self,
        _topic: &str,
        _key: Option<&[u8]>,
        partitions: i32,
        available: impl Fn(i32) -> bool,
    ) -> i32 {
        let now_us = self.epoch.elapsed().as_micros() as u64;
        self.pick(now_us, partitions, available)
    }
}

/// Errors after which the producer's idempotence state cannot recover.
fn breaks_the_producer(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fatal
                | RDKafkaErrorCode::Unknown
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerIdMapping
        )
    )
}

/// A TLS handshake or SASL authentication that failed: the client's
/// configuration, not the broker's availability.
fn refuses_the_configuration(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::SSL | RDKafkaErrorCode::Authentication)
    )
}

impl DeliveryContext {
    fn mark_broken(&self, error: &KafkaError) {
        if !self.broken.swap(true, Ordering::AcqRel) {
            tracing::error!(%error, "producer cannot recover; it will be replaced");
        }
    }
}

impl ClientContext for DeliveryContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.metrics.observe(self.client, &statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if breaks_the_producer(&error) {
            self.mark_broken(&error);
        } else if refuses_the_configuration(&error) {
            let mut refused = self
                .refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if refused.is_none() {
                tracing::error!(
                    %error,
                    reason,
                    "the broker refused this client's TLS or SASL settings \
                     (APP_KAFKA__SSL_CA_LOCATION, APP_KAFKA__SASL_*); /readyz answers 503"
                );
            }
            *refused = Some((Instant::now(), reason.to_owned()));
        } else {
            tracing::warn!(%error, reason, "kafka client error");
        }
    }
}

impl ProducerContext<StickyPartitioner> for DeliveryContext {
    type DeliveryOpaque = Box<oneshot::Sender<Delivery>>;

    fn get_custom_partitioner(&self) -> Option<&StickyPartitioner> {
        self.sticky.as_ref()
    }

    fn delivery(&self, result: &DeliveryResult<'_>, reply: Self::DeliveryOpaque) {
        let delivery = match result {
            Ok(_) => Delivery::Persisted,
            Err((error, message)) => {
                if breaks_the_producer(error) {
                    self.mark_broken(error);
                }
                match persistence_status(message) {
                    rdkafka::bindings::rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_PERSISTED => {
                        Delivery::Persisted
                    }
                    rdkafka::bindings::rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_NOT_PERSISTED => {
                        Delivery::NotPersisted(error.clone())
                    }
                    _ => Delivery::PossiblyPersisted(error.clone()),
                }
            }
        };
        // The request may have gone (client disconnected); nothing to tell.
        let _ = reply.send(delivery);
    }
}

fn persistence_status(message: &BorrowedMessage<'_>) -> rdkafka::bindings::rd_kafka_msg_status_t {
    // SAFETY: `message` borrows a live librdkafka message for the duration of
    // the delivery callback, and `rd_kafka_message_status` only reads it.
    unsafe { rdkafka::bindings::rd_kafka_message_status(message.ptr()) }
}

type Inner = ThreadedProducer<DeliveryContext, StickyPartitioner>;

/// One producer, replaced when its idempotence state breaks.
struct Lane {
    current: RwLock<Arc<Inner>>,
    config: ClientConfig,
    /// The `client` label of its librdkafka statistics.
    client: &'static str,
}

/// Whether a reply waits for a message's delivery report. Only then is the
/// quick lane worth its small produce requests: a lock form's burst of
/// replies (each message enqueued as its take returns) sent through it went
/// out about 4 messages a produce request against about 10 through the
/// batching lane, and the forms served more without it (docs/PERFORMANCE.md,
/// "The quick lane, only where a reply waits").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportWait {
    /// A client's reply waits for the report (`sync`): the quick lane while
    /// fewer than `kafka.quick_lane_depth` messages are in flight (at the
    /// default, while none is).
    Reply,
    /// No reply waits for it, the client was answered before (async-queue's
    /// consumers; the lock forms, whose reports are settled in the
    /// background): the batching lane.
    Background,
}

/// The issue producer: one or two lanes, each an idempotent producer of its
/// own.
///
/// librdkafka's `linger.ms` trades a request's latency for batches: at
/// the default (1 ms) a request alone waited about 1.8 ms for its delivery
/// report (p50, one connection, one instance, measured 2026-12-04 on the
/// 2-core machine), against 0.53 ms with no linger; under load (100
/// connections) no linger cost a third of the throughput (9.0k/s against
/// 13k/s), the broker then answering a produce request per message. So a
/// request takes the *quick* lane (no linger) while fewer than
/// `kafka.quick_lane_depth` messages are in flight on both (1 by default:
/// only while none is), and the *batching* lane (`kafka.linger_ms`)
/// otherwise: alone, nothing waits for a batch to fill; under load, batches
/// fill. (With a depth of 8, three instances at 100 connections sent 4.8–4.9
/// messages a produce request against 7.1–7.9 with 1, and depth 1 served
/// 8–27% more: docs/PERFORMANCE.md, "The quick lane, only while nothing is
/// in flight".) A message
/// no reply waits for always takes the batching lane ([`ReportWait`]). Nothing
/// needs one order across the lanes (docs/CONTRACT.md, the message). With
/// `kafka.linger_ms = 0` or `kafka.quick_lane_depth = 0` there is one lane,
/// and so there is for a strategy whose replies never wait for a report
/// (built with [`ReportWait::Background`]): a quick lane would be a second
/// client, its threads and connections, carrying nothing.
pub struct IssueProducer {
    lanes: Vec<Lane>,
    quick_lane_depth: i32,
    metrics: common::metrics::KafkaClientMetrics,
    sticky: Option<Duration>,
    topic: String,
    enqueue_timeout: Duration,
}

impl std::fmt::Debug for IssueProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssueProducer")
            .field("topic", &self.topic)
            .field("lanes", &self.lanes.len())
            .finish_non_exhaustive()
    }
}

impl IssueProducer {
    /// `metrics`: where librdkafka's per-broker statistics go (every 5 s).
    /// `replies`: whether any reply waits for this producer's reports
    /// ([`ReportWait::Reply`]: `sync`); only then is there a quick lane.
    pub fn new(
        settings: &KafkaSettings,
        metrics: common::metrics::KafkaClientMetrics,
        replies: ReportWait,
    ) -> anyhow::Result<Self> {
        let mut batching = common::kafka::producer_config(settings);
        batching.set("statistics.interval.ms", "5000");
        let mut configs = Vec::new();
        if replies == ReportWait::Reply && settings.linger_ms > 0 && settings.quick_lane_depth > 0 {
            let mut quick = batching.clone();
            quick.set("linger.ms", "0");
            configs.push(quick);
        }
        configs.push(batching);
        let sticky = (settings.partitioning == Partitioning::Sticky)
            .then(|| Duration::from_millis(settings.sticky_partition_ms));
        let quick = configs.len() > 1;
        let lanes = configs
            .into_iter()
            .enumerate()
            .map(|(i, config)| {
                let client = if quick && i == 0 {
                    "producer_quick"
                } else {
                    "producer"
                };
                let producer = Self::create(&config, sticky, metrics.clone(), client)?;
                Ok(Lane {
                    current: RwLock::new(Arc::new(producer)),
                    config,
                    client,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            lanes,
            quick_lane_depth: i32::try_from(settings.quick_lane_depth).unwrap_or(i32::MAX),
            metrics,
            sticky,
            topic: settings.topic.clone(),
            enqueue_timeout: Duration::from_millis(settings.enqueue_timeout_ms),
        })
    }

    fn create(
        config: &ClientConfig,
        sticky: Option<Duration>,
        metrics: common::metrics::KafkaClientMetrics,
        client: &'static str,
    ) -> anyhow::Result<Inner> {
        let context = DeliveryContext {
            broken: AtomicBool::new(false),
            sticky: sticky.map(StickyPartitioner::new),
            refused: std::sync::Mutex::new(None),
            metrics,
            client,
        };
        config
            .create_with_context(context)
            .context("creating the Kafka producer")
    }

    /// The lane's producer, replaced first if it broke.
    fn producer(&self, lane: &Lane) -> Arc<Inner> {
        let current = lane
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if !current.context().broken.load(Ordering::Acquire) {
            return current;
        }
        drop(current);
        let mut slot = lane
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.context().broken.load(Ordering::Acquire) {
            match Self::create(&lane.config, self.sticky, self.metrics.clone(), lane.client) {
                Ok(fresh) => {
                    let old = std::mem::replace(&mut *slot, Arc::new(fresh));
                    tracing::warn!("producer replaced");
                    // Dropping purges and flushes for up to half a second:
                    // not on a request's thread.
                    std::thread::spawn(move || drop(old));
                }
                Err(e) => tracing::error!(error = %e, "could not replace the producer"),
            }
        }
        slot.clone()
    }

    /// The producer a message goes to now: for a reply that waits, the
    /// quick lane's while fewer than `kafka.quick_lane_depth` messages are
    /// in flight in all; else the batching lane's (under load every message
    /// batches: a quick lane kept full cost a fifth of the throughput at
    /// 100 connections). In flight: librdkafka's out queue, the messages
    /// enqueued and not yet reported (in the buffer or sent), and the
    /// reports and events its poll thread has not served yet.
    fn pick(&self, wait: ReportWait) -> Arc<Inner> {
        let Some(batching) = self.lanes.get(1) else {
            return self.producer(&self.lanes[0]);
        };
        let batching = self.producer(batching);
        if wait == ReportWait::Background {
            return batching;
        }
        let quick = self.producer(&self.lanes[0]);
        if quick.in_flight_count() + batching.in_flight_count() < self.quick_lane_depth {
            quick
        } else {
            batching
        }
    }

    /// Puts the message in the producer's buffer. Fails, without the message
    /// having left this process, when the buffer stays full for
    /// `kafka.enqueue_timeout_ms` or librdkafka refuses it. `wait` picks
    /// the lane.
    pub async fn send(
        &self,
        message: &CouponIssued,
        wait: ReportWait,
    ) -> Result<DeliveryReceipt, EnqueueError> {
        let key = message.key();
        let payload = message.encode();
        let started = Instant::now();
        loop {
            let (tx, rx) = oneshot::channel();
            let mut record = BaseRecord::with_opaque_to(&self.topic, Box::new(tx))
                .key(key.as_bytes())
                .payload(&payload);
            if let Some(headers) = common::telemetry::trace_headers() {
                record = record.headers(headers);
            }
            match self.pick(wait).send(record) {
                Ok(()) => {
                    return Ok(DeliveryReceipt {
                        report: rx,
                        unconfirmed: false,
                    });
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if started.elapsed() >= self.enqueue_timeout {
                        return Err(EnqueueError::BufferFull(self.enqueue_timeout));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => return Err(EnqueueError::Refused(e)),
            }
        }
    }

    /// Messages waiting in the buffers or in flight, every lane.
    pub fn in_flight(&self) -> i32 {
        self.lanes
            .iter()
            .map(|lane| self.producer(lane).in_flight_count())
            .sum()
    }

    /// Whether a broker answers a metadata request within `timeout`
    /// (blocking; call from a blocking thread).
    pub fn broker_reachable(&self, timeout: Duration) -> bool {
        self.producer(&self.lanes[0])
            .client()
            .fetch_metadata(Some(&self.topic), timeout)
            .is_ok()
    }

    /// What the broker said when it last refused this client's TLS or SASL
    /// settings, if that was within `within` (either lane).
    pub fn refused_within(&self, within: Duration) -> Option<String> {
        self.lanes.iter().find_map(|lane| {
            let producer = self.producer(lane);
            let refused = producer
                .context()
                .refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            refused
                .as_ref()
                .filter(|(at, _)| at.elapsed() < within)
                .map(|(_, reason)| reason.clone())
        })
    }

    /// Waits for every buffered message's delivery report, every lane,
    /// within `timeout` in all (blocking).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let deadline = Instant::now() + timeout;
        for lane in &self.lanes {
            self.producer(lane)
                .flush(deadline.saturating_duration_since(Instant::now()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Creating a producer connects to nothing: no broker is needed.
    fn producer(settings: &KafkaSettings, replies: ReportWait) -> IssueProducer {
        let metrics = common::metrics::KafkaClientMetrics::new(&prometheus::Registry::new());
        IssueProducer::new(settings, metrics, replies).expect("a producer")
    }

    #[test]
    fn only_a_message_a_reply_waits_for_takes_the_quick_lane() {
        let settings = KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            linger_ms: 1,
            quick_lane_depth: 8,
            ..KafkaSettings::default()
        };
        let lanes = producer(&settings, ReportWait::Reply);
        assert_eq!(lanes.lanes.len(), 2);
        assert_eq!(
            lanes.pick(ReportWait::Reply).context().client,
            "producer_quick"
        );
        // Nobody waits for its report: it batches, however idle the producer.
        assert_eq!(
            lanes.pick(ReportWait::Background).context().client,
            "producer"
        );
        // One lane: everything takes it. So it is for a strategy whose
        // replies never wait for a report: no quick lane is built for it.
        for (one, replies) in [
            (
                KafkaSettings {
                    quick_lane_depth: 0,
                    ..settings.clone()
                },
                ReportWait::Reply,
            ),
            (
                KafkaSettings {
                    linger_ms: 0,
                    ..settings.clone()
                },
                ReportWait::Reply,
            ),
            (settings.clone(), ReportWait::Background),
        ] {
            let one = producer(&one, replies);
            assert_eq!(one.lanes.len(), 1);
            assert_eq!(one.pick(ReportWait::Reply).context().client, "producer");
            assert_eq!(
                one.pick(ReportWait::Background).context().client,
                "producer"
            );
        }
    }

    /// At the defaults, the quick lane takes a message whose reply waits
    /// only while nothing is in flight: once one is (here it waits in the
    /// buffer for a broker that is not there), the next batches.
    #[tokio::test]
    async fn at_the_defaults_the_quick_lane_is_for_a_producer_with_nothing_in_flight() {
        let settings = KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            ..KafkaSettings::default()
        };
        let lanes = producer(&settings, ReportWait::Reply);
        assert_eq!(lanes.lanes.len(), 2);
        // The refused connections' events count until the poll thread has
        // served them: nothing is in flight once it has.
        let deadline = Instant::now() + Duration::from_secs(5);
        let quick = loop {
            let idle = lanes.in_flight() == 0;
            let client = lanes.pick(ReportWait::Reply).context().client;
            if (idle && client == "producer_quick") || Instant::now() > deadline {
                break client;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        assert_eq!(quick, "producer_quick");
        let message = CouponIssued::new(
            common::ids::CouponId::new(),
            common::ids::CampaignId::new(),
            common::ids::UserId::parse("alice").expect("a user id"),
            chrono::Utc::now(),
            "sync",
        );
        let _receipt = lanes
            .send(&message, ReportWait::Reply)
            .await
            .expect("enqueued");
        assert!(lanes.in_flight() >= 1);
        assert_eq!(lanes.pick(ReportWait::Reply).context().client, "producer");
    }

    #[test]
    fn sticky_partitioner_stays_for_the_interval_then_moves_on() {
        let sticky = StickyPartitioner::new(Duration::from_millis(10));
        let all = |_: i32| true;
        let first = sticky.pick(0, 12, all);
        assert!((0..12).contains(&first));
        assert_eq!(sticky.pick(5_000, 12, all), first);
        assert_eq!(sticky.pick(9_999, 12, all), first);
        let second = sticky.pick(10_001, 12, all);
        assert_ne!(second, first);
        assert_eq!(sticky.pick(15_000, 12, all), second);
    }

    #[test]
    fn sticky_partitioner_skips_unavailable_partitions() {
        let sticky = StickyPartitioner::new(Duration::from_millis(10));
        let only_seven = |p: i32| p == 7;
        assert_eq!(sticky.pick(0, 12, only_seven), 7);
        // The sticky partition loses its leader: it moves at once.
        assert_eq!(sticky.pick(1, 12, |p| p == 3), 3);
        // Fewer partitions than the remembered one: stays in range.
        assert!((0..2).contains(&sticky.pick(2, 2, |_| true)));
        assert_eq!(sticky.pick(3, 0, |_| true), rdkafka::producer::PARTITION_UA);
    }
}
