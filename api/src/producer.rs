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
//! queue: the messages it still held get failed reports with their
//! persistence status, as any other failure. (Apache Kafka lets librdkafka
//! bump the epoch after a timed-out message instead; the local broker does
//! not implement that bump and answers it with an unknown error, so there the
//! replacement is what brings issuance back after a broker outage.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use common::message::CouponIssued;
use common::settings::KafkaSettings;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
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
    #[error("the producer queue stayed full for {0:?}")]
    QueueFull(Duration),
    #[error("the producer refused the message: {0}")]
    Refused(KafkaError),
}

/// Waits for a message's delivery report.
#[derive(Debug)]
pub struct DeliveryReceipt(oneshot::Receiver<Delivery>);

impl DeliveryReceipt {
    pub async fn wait(self) -> Delivery {
        // The sender is consumed only by the delivery callback, which
        // librdkafka calls exactly once per message, also when a producer is
        // purged. If it were ever dropped without a report, the message's
        // fate would be unknown: that is `PossiblyPersisted`.
        self.0
            .await
            .unwrap_or_else(|_| Delivery::PossiblyPersisted(KafkaError::Canceled))
    }
}

#[derive(Debug, Default)]
pub struct DeliveryContext {
    /// Set when this producer can no longer deliver and must be replaced.
    broken: AtomicBool,
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

impl DeliveryContext {
    fn mark_broken(&self, error: &KafkaError) {
        if !self.broken.swap(true, Ordering::AcqRel) {
            tracing::error!(%error, "producer cannot recover; it will be replaced");
        }
    }
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if breaks_the_producer(&error) {
            self.mark_broken(&error);
        } else {
            tracing::warn!(%error, reason, "kafka client error");
        }
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<oneshot::Sender<Delivery>>;

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

type Inner = ThreadedProducer<DeliveryContext>;

pub struct IssueProducer {
    current: RwLock<Arc<Inner>>,
    config: ClientConfig,
    topic: String,
    enqueue_timeout: Duration,
}

impl std::fmt::Debug for IssueProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssueProducer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl IssueProducer {
    pub fn new(settings: &KafkaSettings) -> anyhow::Result<Self> {
        let config = common::kafka::producer_config(settings);
        let producer = Self::create(&config)?;
        Ok(Self {
            current: RwLock::new(Arc::new(producer)),
            config,
            topic: settings.topic.clone(),
            enqueue_timeout: Duration::from_millis(settings.enqueue_timeout_ms),
        })
    }

    fn create(config: &ClientConfig) -> anyhow::Result<Inner> {
        config
            .create_with_context(DeliveryContext::default())
            .context("creating the Kafka producer")
    }

    fn producer(&self) -> Arc<Inner> {
        let current = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if !current.context().broken.load(Ordering::Acquire) {
            return current;
        }
        drop(current);
        let mut slot = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.context().broken.load(Ordering::Acquire) {
            match Self::create(&self.config) {
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

    /// Puts the message in the producer's queue. Fails, without the message
    /// having left this process, when the queue stays full for
    /// `kafka.enqueue_timeout_ms` or librdkafka refuses it.
    pub async fn send(&self, message: &CouponIssued) -> Result<DeliveryReceipt, EnqueueError> {
        let key = message.key();
        let payload = message.encode();
        let started = Instant::now();
        loop {
            let (tx, rx) = oneshot::channel();
            let record = BaseRecord::with_opaque_to(&self.topic, Box::new(tx))
                .key(key.as_bytes())
                .payload(&payload);
            match self.producer().send(record) {
                Ok(()) => return Ok(DeliveryReceipt(rx)),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if started.elapsed() >= self.enqueue_timeout {
                        return Err(EnqueueError::QueueFull(self.enqueue_timeout));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => return Err(EnqueueError::Refused(e)),
            }
        }
    }

    /// Messages waiting in the queue or in flight.
    pub fn in_flight(&self) -> i32 {
        self.producer().in_flight_count()
    }

    /// Whether a broker answers a metadata request within `timeout`
    /// (blocking; call from a blocking thread).
    pub fn broker_reachable(&self, timeout: Duration) -> bool {
        self.producer()
            .client()
            .fetch_metadata(Some(&self.topic), timeout)
            .is_ok()
    }

    /// Waits for every queued message's delivery report (blocking).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer().flush(timeout)
    }
}
