//! Writing to the issue topic as a producer would (good messages, raw
//! bytes, one partition on purpose) and reading its dead letters.

use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};

use super::reads::{ReadMessage, read_topic};
use crate::message::{CouponIssued, DLQ_REASON_HEADER};
use crate::settings::KafkaSettings;

/// A producer on a test's issue topic (`kafka.topic`).
#[allow(missing_debug_implementations)]
pub struct IssueTopic {
    producer: FutureProducer,
    name: String,
}

impl IssueTopic {
    pub fn new(settings: &KafkaSettings) -> Self {
        Self {
            producer: crate::kafka::producer_config(settings)
                .create()
                .expect("a producer"),
            name: settings.topic.clone(),
        }
    }

    /// A message as the api writes it (its key picks the partition).
    pub async fn send(&self, m: &CouponIssued) {
        self.send_raw(&m.key(), &m.encode()).await;
    }

    /// Any bytes, under any key.
    pub async fn send_raw(&self, key: &str, payload: &[u8]) {
        self.deliver(FutureRecord::to(&self.name).key(key).payload(payload))
            .await;
    }

    /// To partition 0, whatever the key: messages that must queue behind
    /// one another.
    pub async fn send_to_first(&self, key: &str, payload: &[u8]) {
        self.deliver(
            FutureRecord::to(&self.name)
                .partition(0)
                .key(key)
                .payload(payload),
        )
        .await;
    }

    async fn deliver(&self, record: FutureRecord<'_, str, [u8]>) {
        self.producer
            .send(record, Duration::from_secs(5))
            .await
            .map_err(|(e, _)| e)
            .expect("the broker took the message");
    }
}

/// The dead letters of a test's topics once there are `n` (or after 20 s),
/// with their reasons sorted.
pub async fn dead_letters(settings: &KafkaSettings, n: usize) -> (Vec<ReadMessage>, Vec<String>) {
    let started = Instant::now();
    let letters = loop {
        let letters = read_topic(&settings.brokers, &settings.dlq_topic).await;
        if letters.len() >= n || started.elapsed() > Duration::from_secs(20) {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut reasons: Vec<_> = letters
        .iter()
        .map(|l| l.header(DLQ_REASON_HEADER).unwrap_or("?").to_owned())
        .collect();
    reasons.sort();
    (letters, reasons)
}
