//! The dead-letter topic: the original bytes of a message the worker cannot
//! persist, with the reason and its source position in headers.

use std::time::Duration;

use anyhow::Context;
use common::message::{
    DLQ_DETAIL_HEADER, DLQ_REASON_HEADER, DLQ_SOURCE_OFFSET_HEADER, DLQ_SOURCE_PARTITION_HEADER,
    DLQ_SOURCE_TOPIC_HEADER, DlqReason,
};
use common::settings::KafkaSettings;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

/// A message being set aside.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub reason: DlqReason,
    pub detail: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
}

pub struct DeadLetters {
    producer: FutureProducer,
    source_topic: String,
    topic: String,
    timeout: Duration,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    pub fn new(settings: &KafkaSettings) -> anyhow::Result<Self> {
        let producer = common::kafka::producer_config(settings)
            .create()
            .context("creating the DLQ producer")?;
        Ok(Self {
            producer,
            source_topic: settings.topic.clone(),
            topic: settings.dlq_topic.clone(),
            timeout: settings.delivery_timeout(),
        })
    }

    /// Sends one dead letter and waits until the broker has it.
    pub async fn send(&self, letter: &DeadLetter<'_>) -> anyhow::Result<()> {
        let partition = letter.partition.to_string();
        let offset = letter.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: DLQ_REASON_HEADER,
                value: Some(letter.reason.as_str()),
            })
            .insert(Header {
                key: DLQ_DETAIL_HEADER,
                value: Some(letter.detail.as_str()),
            })
            .insert(Header {
                key: DLQ_SOURCE_TOPIC_HEADER,
                value: Some(self.source_topic.as_str()),
            })
            .insert(Header {
                key: DLQ_SOURCE_PARTITION_HEADER,
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: DLQ_SOURCE_OFFSET_HEADER,
                value: Some(offset.as_str()),
            });
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = letter.key {
            record = record.key(key);
        }
        if let Some(payload) = letter.payload {
            record = record.payload(payload);
        }
        self.producer
            .send(record, self.timeout)
            .await
            .map_err(|(e, _)| anyhow::anyhow!("sending to {}: {e}", self.topic))?;
        Ok(())
    }

    /// Waits for anything still queued (shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}
