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
//!
//! Who serves the delivery reports (runs the callback that answers the
//! waiting request): an actix worker thread, woken by librdkafka itself.
//! librdkafka writes a byte to a socket when a report lands on a
//! producer's empty queue; one worker of the instance
//! ([`IssueProducer::serve_reports_here`]) waits on that socket in its event
//! loop and serves the queue there, so a report crosses one thread (the
//! broker thread's to the worker's) instead of two (to a polling thread of
//! the producer's, then to the worker). Each producer keeps a thread of its
//! own as a net: while no worker serves, it waits on the queue and serves
//! it, as rdkafka's `ThreadedProducer` does; while one does, it looks every
//! [`REPORT_NET_INTERVAL`] and serves only what waits while the worker has
//! not taken a turn at that producer's reports for a whole interval (a
//! worker that stalls, a wake-up lost, or a producer replaced). Either may serve a report; each report is
//! served once (librdkafka pops it once).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use common::message::CouponIssued;
use common::settings::{KafkaSettings, Partitioning};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Partitioner, Producer, ProducerContext,
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

/// How often a producer's report thread looks at its queue while a worker
/// serves the reports. A report waits for a stalled worker for one to two
/// intervals, then the thread serves it.
pub const REPORT_NET_INTERVAL: Duration = Duration::from_millis(5);

/// The events (each a batch of reports) served in one turn before the
/// worker's other tasks get a go.
const EVENTS_PER_TURN: usize = 256;

/// The socket librdkafka writes to when a report lands on a producer's
/// empty queue, every lane's and every replacement's.
#[derive(Debug)]
struct ReportWake {
    read: std::os::unix::net::UnixStream,
    /// Non-blocking: a full socket never holds up librdkafka's thread (the
    /// byte is dropped; the one already there wakes the worker).
    write: std::os::unix::net::UnixStream,
    /// Whether a worker serves the reports now (at most one does).
    served: AtomicBool,
}

impl ReportWake {
    fn new() -> anyhow::Result<Self> {
        let (read, write) = std::os::unix::net::UnixStream::pair()
            .context("creating the delivery reports' wake-up socket")?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        Ok(Self {
            read,
            write,
            served: AtomicBool::new(false),
        })
    }
}

/// A handle on a producer's main queue, where its reports land.
struct MainQueue(std::ptr::NonNull<rdkafka::bindings::rd_kafka_queue_t>);

// SAFETY: librdkafka's queue handles may be used from any thread.
unsafe impl Send for MainQueue {}
unsafe impl Sync for MainQueue {}

impl MainQueue {
    fn of(producer: &BaseProducer<DeliveryContext, StickyPartitioner>) -> anyhow::Result<Self> {
        // SAFETY: the client is live; the handle is given back in `drop`,
        // before the client is destroyed (`ProducerClient`'s field order).
        let queue =
            unsafe { rdkafka::bindings::rd_kafka_queue_get_main(producer.client().native_ptr()) };
        std::ptr::NonNull::new(queue)
            .map(Self)
            .context("the producer has no main queue")
    }

    /// librdkafka writes `1` to `wake` when an event lands on the queue
    /// while it is empty and not being served.
    fn wake_through(&self, wake: &ReportWake) {
        use std::os::fd::AsRawFd;
        let payload = [1u8];
        // SAFETY: the handle is live; librdkafka copies the payload, and
        // `wake` outlives the client (`ProducerClient`'s field order).
        unsafe {
            rdkafka::bindings::rd_kafka_queue_io_event_enable(
                self.0.as_ptr(),
                wake.write.as_raw_fd(),
                payload.as_ptr().cast(),
                payload.len(),
            );
        }
    }

    fn len(&self) -> usize {
        // SAFETY: the handle is live.
        unsafe { rdkafka::bindings::rd_kafka_queue_length(self.0.as_ptr()) }
    }
}

impl Drop for MainQueue {
    fn drop(&mut self) {
        // SAFETY: the handle came from `rd_kafka_queue_get_main` and is
        // given back once.
        unsafe { rdkafka::bindings::rd_kafka_queue_destroy(self.0.as_ptr()) }
    }
}

/// One producer and its main queue. Fields drop in order: the queue handle
/// first, then the producer (which purges, serves its last reports and
/// joins librdkafka's threads), then the wake-up socket they write to.
struct ProducerClient {
    queue: MainQueue,
    producer: BaseProducer<DeliveryContext, StickyPartitioner>,
    wake: Arc<ReportWake>,
    /// The serving worker's turns at this producer's reports: its report
    /// thread serves only while they stand still (also once the producer
    /// is replaced, when the worker serves its successor instead).
    turns: AtomicU64,
}

impl ProducerClient {
    /// Serves the reports waiting now, up to [`EVENTS_PER_TURN`]; `true`
    /// if more are left.
    fn serve(&self) -> bool {
        // One poll even when the queue looks empty: polling marks it served,
        // so the next report writes to the socket again.
        self.producer.poll(Duration::ZERO);
        for _ in 0..EVENTS_PER_TURN {
            if self.queue.len() == 0 {
                return false;
            }
            self.producer.poll(Duration::ZERO);
        }
        self.queue.len() > 0
    }
}

/// A lane's producer, with its report thread (stopped and joined on drop).
struct Inner {
    client: Arc<ProducerClient>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Inner {
    fn new(
        producer: BaseProducer<DeliveryContext, StickyPartitioner>,
        wake: Arc<ReportWake>,
    ) -> anyhow::Result<Self> {
        let queue = MainQueue::of(&producer)?;
        queue.wake_through(&wake);
        let client = Arc::new(ProducerClient {
            queue,
            producer,
            wake,
            turns: AtomicU64::new(0),
        });
        // What landed before the wake-up was switched on wrote no byte, and
        // nothing will while it waits: served now, the next event writes.
        while client.serve() {}
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("kafka reports".into())
            .spawn({
                let (client, stop) = (client.clone(), stop.clone());
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        if !client.wake.served.load(Ordering::Acquire) {
                            client.producer.poll(Duration::from_millis(100));
                            continue;
                        }
                        let turns = client.turns.load(Ordering::Acquire);
                        std::thread::sleep(REPORT_NET_INTERVAL);
                        // Reports wait and the worker took no turn at them
                        // for a whole interval: it stalls, its wake-up was
                        // lost, or this producer was replaced. Served until
                        // the worker takes a turn again.
                        while client.queue.len() > 0
                            && client.turns.load(Ordering::Acquire) == turns
                            && !stop.load(Ordering::Relaxed)
                        {
                            if !client.serve() {
                                break;
                            }
                        }
                    }
                }
            })
            .context("starting the producer's report thread")?;
        Ok(Self {
            client,
            stop,
            thread: Some(thread),
        })
    }
}

impl std::ops::Deref for Inner {
    type Target = BaseProducer<DeliveryContext, StickyPartitioner>;

    fn deref(&self) -> &Self::Target {
        &self.client.producer
    }
}

impl Drop for Inner {
    /// Stops the report thread (its round ends within 100 ms), then the
    /// producer is destroyed: it purges its buffer and serves the last
    /// reports for up to half a second. So it is done at the process's end,
    /// before it exits; a producer replaced while requests run is let go
    /// on a thread of its own ([`let_go`]).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Destroys a producer on a thread of its own if this was its last
/// handle: not on the caller's thread, which may be an actix worker.
fn let_go(producer: Arc<Inner>) {
    if let Some(last) = Arc::into_inner(producer) {
        std::thread::spawn(move || drop(last));
    }
}

/// One producer, replaced when its idempotence state breaks.
struct Lane {
    current: RwLock<Arc<Inner>>,
    config: ClientConfig,
    /// The `client` label of its librdkafka statistics.
    client: &'static str,
}

impl Lane {
    /// Its producer now, broken or not.
    fn current(&self) -> Arc<Inner> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
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
    wake: Arc<ReportWake>,
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
        let wake = Arc::new(ReportWake::new()?);
        let lanes = configs
            .into_iter()
            .enumerate()
            .map(|(i, config)| {
                let client = if quick && i == 0 {
                    "producer_quick"
                } else {
                    "producer"
                };
                let producer = Self::create(&config, sticky, metrics.clone(), client, &wake)?;
                Ok(Lane {
                    current: RwLock::new(Arc::new(producer)),
                    config,
                    client,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            lanes,
            wake,
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
        wake: &Arc<ReportWake>,
    ) -> anyhow::Result<Inner> {
        let context = DeliveryContext {
            broken: AtomicBool::new(false),
            sticky: sticky.map(StickyPartitioner::new),
            refused: std::sync::Mutex::new(None),
            metrics,
            client,
        };
        let producer = config
            .create_with_context(context)
            .context("creating the Kafka producer")?;
        Inner::new(producer, wake.clone())
    }

    /// The lane's producer, replaced first if it broke.
    fn producer(&self, lane: &Lane) -> Arc<Inner> {
        let current = lane.current();
        if !current.context().broken.load(Ordering::Acquire) {
            return current;
        }
        drop(current);
        let mut slot = lane
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.context().broken.load(Ordering::Acquire) {
            match Self::create(
                &lane.config,
                self.sticky,
                self.metrics.clone(),
                lane.client,
                &self.wake,
            ) {
                Ok(fresh) => {
                    let_go(std::mem::replace(&mut *slot, Arc::new(fresh)));
                    tracing::warn!("producer replaced");
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
    /// reports and events not served yet.
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

    /// Serves the delivery reports on this thread from now on: on an actix
    /// worker (called from the server's app factory, which runs on each),
    /// a task of this thread's event loop waits on the wake-up socket and
    /// serves every lane's reports, so the callback that answers a request
    /// waiting on this thread runs on it. The first worker to call this
    /// serves; the others' calls do nothing. When that worker stops, its
    /// task ends and the producers' own threads serve again.
    ///
    /// If its thread stalls (a long task on it), reports wait for one to two
    /// [`REPORT_NET_INTERVAL`]s, then the producers' threads serve them. If
    /// the task fails to start, the producers' threads go on serving.
    /// A report is served by whichever polls first, once: librdkafka pops
    /// each from its queue once.
    pub fn serve_reports_here(self: &Arc<Self>) {
        /// Hands the reports back to the producers' threads when the task
        /// ends (its worker stopped, or the socket failed), also when it is
        /// dropped before its first poll, or never starts: made as the flag
        /// is set, moved into the task.
        struct Served(Arc<ReportWake>);
        impl Drop for Served {
            fn drop(&mut self) {
                self.0.served.store(false, Ordering::Release);
                tracing::info!("delivery reports are served by the producers' threads");
            }
        }
        if self.wake.served.swap(true, Ordering::AcqRel) {
            return;
        }
        let served = Served(self.wake.clone());
        let read = self
            .wake
            .read
            .try_clone()
            .and_then(tokio::net::UnixStream::from_std);
        let read = match read {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(%error, "no worker thread serves the delivery reports");
                return;
            }
        };
        let producer = Arc::clone(self);
        tokio::task::spawn_local(async move {
            let _served = served;
            let mut bytes = [0u8; 64];
            loop {
                if read.readable().await.is_err() {
                    return;
                }
                loop {
                    match read.try_read(&mut bytes) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => return,
                    }
                }
                while producer.serve_reports() {
                    tokio::task::yield_now().await;
                }
            }
        });
    }

    /// Serves every lane's waiting reports, up to a turn's worth each;
    /// `true` if more are left. A producer that broke is replaced by the
    /// next send, not here, and a lane whose replacement is being set up
    /// right now (its lock held) is skipped: the set-up stays off the
    /// thread that serves, and the lane's report thread serves what waits
    /// meanwhile. A replaced producer's report thread serves its last
    /// reports until it is destroyed.
    fn serve_reports(&self) -> bool {
        let mut more = false;
        for lane in &self.lanes {
            let producer = match lane.current.try_read() {
                Ok(current) => current.clone(),
                Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner().clone(),
                Err(std::sync::TryLockError::WouldBlock) => continue,
            };
            more |= producer.client.serve();
            producer.client.turns.fetch_add(1, Ordering::AcqRel);
            let_go(producer);
        }
        more
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
    ///
    /// Each lane's current producer, also a broken one: it holds the
    /// messages to wait for (a replacement would hold none), and fails them
    /// quickly.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let deadline = Instant::now() + timeout;
        for lane in &self.lanes {
            lane.current()
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
        // The refused connections' events count until the report thread has
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
        let _receipt = lanes
            .send(&a_message(), ReportWait::Reply)
            .await
            .expect("enqueued");
        assert!(lanes.in_flight() >= 1);
        assert_eq!(lanes.pick(ReportWait::Reply).context().client, "producer");
    }

    fn a_message() -> CouponIssued {
        CouponIssued::new(
            common::ids::CouponId::new(),
            common::ids::CampaignId::new(),
            common::ids::UserId::parse("alice").expect("a user id"),
            chrono::Utc::now(),
            "sync",
        )
    }

    /// A broker that is not there: every message's report is `NotPersisted`
    /// once its delivery timeout passes.
    fn unreachable() -> KafkaSettings {
        KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            delivery_timeout_ms: 200,
            ..KafkaSettings::default()
        }
    }

    /// A worker's event loop: a thread with a single-threaded runtime and
    /// its local tasks, as an actix worker has.
    fn on_a_worker<T: Send + 'static>(
        work: impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = T>>> + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            tokio::task::LocalSet::new().block_on(&runtime, work())
        })
    }

    /// One worker serves the reports: a request waiting on it gets its
    /// report; a second worker's call does nothing; when the worker stops,
    /// the producers' threads serve again.
    #[test]
    fn a_worker_serves_the_reports_until_it_stops() {
        let lanes = Arc::new(producer(&unreachable(), ReportWait::Reply));
        let worker = on_a_worker({
            let lanes = lanes.clone();
            move || {
                Box::pin(async move {
                    lanes.serve_reports_here();
                    assert!(lanes.wake.served.load(Ordering::Acquire));
                    // A second call, as the next worker's factory makes.
                    lanes.serve_reports_here();
                    let receipt = lanes
                        .send(&a_message(), ReportWait::Reply)
                        .await
                        .expect("enqueued");
                    receipt.wait().await
                })
            }
        });
        let delivery = worker.join().expect("the worker");
        assert!(
            matches!(delivery, Delivery::NotPersisted(_)),
            "{delivery:?}"
        );
        // The worker's runtime is gone, its task with it.
        assert!(!lanes.wake.served.load(Ordering::Acquire));
        let delivery = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(async {
                let receipt = lanes
                    .send(&a_message(), ReportWait::Reply)
                    .await
                    .expect("enqueued");
                receipt.wait().await
            });
        assert!(
            matches!(delivery, Delivery::NotPersisted(_)),
            "{delivery:?}"
        );
    }

    /// The serving worker's thread stalls (a long task on it): a request
    /// waiting elsewhere still gets its report, from the producer's own
    /// thread, before the stall ends.
    #[test]
    fn a_report_does_not_wait_for_a_stalled_worker() {
        const STALL: Duration = Duration::from_secs(5);
        let lanes = Arc::new(producer(&unreachable(), ReportWait::Reply));
        let (sent, receipt) = std::sync::mpsc::channel();
        let worker = on_a_worker({
            let lanes = lanes.clone();
            move || {
                Box::pin(async move {
                    lanes.serve_reports_here();
                    let receipt = lanes
                        .send(&a_message(), ReportWait::Reply)
                        .await
                        .expect("enqueued");
                    sent.send(receipt).expect("the test waits");
                    std::thread::sleep(STALL);
                    lanes.wake.served.load(Ordering::Acquire)
                })
            }
        });
        let receipt = receipt.recv().expect("a receipt");
        let started = Instant::now();
        let delivery = futures::executor::block_on(receipt.wait());
        assert!(
            matches!(delivery, Delivery::NotPersisted(_)),
            "{delivery:?}"
        );
        assert!(
            started.elapsed() < STALL - Duration::from_secs(1),
            "the report waited {:?} for the stalled worker",
            started.elapsed()
        );
        assert!(
            worker.join().expect("the worker"),
            "the worker served throughout"
        );
        // Its task was never polled again: the producers' threads serve.
        assert!(!lanes.wake.served.load(Ordering::Acquire));
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
