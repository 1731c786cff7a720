//! The dead-letter topic: the original bytes of a message the worker cannot
//! persist, with the reason and its source position in headers.
//!
//! Two ways a letter avoids stalling its partition when the topic will not
//! take it as it is:
//! - too large (the original near `message.max.bytes`, plus the headers):
//!   a truncated copy goes instead ([`Sent::Truncated`]), marked with
//!   [`DLQ_TRUNCATED_HEADER`]; the whole original stays at its source
//!   position until the issue topic's retention removes it;
//! - refused for any other reason for longer than
//!   `worker.dead_letter_patience_ms` (the topic missing, access refused, no
//!   leader): it is parked whole in PostgreSQL ([`park`]) and alerted on.

use std::time::Duration;

use anyhow::Context;
use common::message::{
    DLQ_DETAIL_HEADER, DLQ_REASON_HEADER, DLQ_SOURCE_OFFSET_HEADER, DLQ_SOURCE_PARTITION_HEADER,
    DLQ_SOURCE_TOPIC_HEADER, DLQ_TRUNCATED_HEADER, DlqReason,
};
use common::settings::KafkaSettings;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};

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

/// How a letter reached the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Whole,
    /// Too large to set aside whole (the original near `message.max.bytes`
    /// plus the `dlq.*` headers): its first [`TRUNCATED_BYTES`] of key and
    /// payload, with the original's size in [`DLQ_TRUNCATED_HEADER`].
    Truncated,
}

/// The most of an original's key, payload and detail a truncated letter keeps.
pub const TRUNCATED_BYTES: usize = 1024;

impl DeadLetters {
    /// The dead-letter producer is not idempotent, unlike the api's: a
    /// letter sent twice is harmless (a re-drive persists it once), and a
    /// producer without idempotence has no fatal state to be replaced in
    /// (librdkafka raises fatal errors only for idempotent and transactional
    /// producers), so no error of one letter can disable the next.
    pub fn new(settings: &KafkaSettings) -> anyhow::Result<Self> {
        let producer = common::kafka::producer_config(settings)
            .set("enable.idempotence", "false")
            .create()
            .context("creating the DLQ producer")?;
        Ok(Self {
            producer,
            source_topic: settings.topic.clone(),
            topic: settings.dlq_topic.clone(),
            timeout: settings.delivery_timeout(),
        })
    }

    /// Sends one dead letter and waits until the broker has it. A letter
    /// too large for the topic goes as a truncated copy; any other error
    /// (broker down, topic missing, access refused) is returned and the
    /// caller retries, then parks the letter in PostgreSQL.
    pub async fn send(&self, letter: &DeadLetter<'_>) -> anyhow::Result<Sent> {
        match self.send_as(letter, None).await {
            Ok(()) => Ok(Sent::Whole),
            Err(KafkaError::MessageProduction(code)) if too_large(code) => {
                let original =
                    letter.key.map_or(0, <[u8]>::len) + letter.payload.map_or(0, <[u8]>::len);
                tracing::warn!(
                    partition = letter.partition,
                    offset = letter.offset,
                    bytes = original,
                    "dead letter too large for its topic; setting aside a truncated copy"
                );
                let truncated = DeadLetter {
                    detail: prefix(letter.detail.as_bytes(), TRUNCATED_BYTES)
                        .map(|d| String::from_utf8_lossy(d).into_owned())
                        .unwrap_or_default(),
                    key: letter.key.and_then(|k| prefix(k, TRUNCATED_BYTES)),
                    payload: letter.payload.and_then(|p| prefix(p, TRUNCATED_BYTES)),
                    ..letter.clone()
                };
                self.send_as(&truncated, Some(original))
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("sending a truncated copy to {}: {e}", self.topic)
                    })?;
                Ok(Sent::Truncated)
            }
            Err(e) => Err(anyhow::anyhow!("sending to {}: {e}", self.topic)),
        }
    }

    async fn send_as(
        &self,
        letter: &DeadLetter<'_>,
        truncated_from: Option<usize>,
    ) -> Result<(), KafkaError> {
        let partition = letter.partition.to_string();
        let offset = letter.offset.to_string();
        let original = truncated_from.map(|n| n.to_string());
        let mut headers = OwnedHeaders::new()
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
        if let Some(original) = &original {
            headers = headers.insert(Header {
                key: DLQ_TRUNCATED_HEADER,
                value: Some(original.as_str()),
            });
        }
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
            .map(|_| ())
            .map_err(|(e, _)| e)
    }

    /// Waits for anything still queued (shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

/// The producer (`message.max.bytes`) or the broker (the topic's
/// `max.message.bytes`) refuses the letter for its size: sending it again
/// cannot succeed.
fn too_large(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge
    )
}

/// The first `n` bytes of `bytes` (all of them when shorter).
fn prefix(bytes: &[u8], n: usize) -> Option<&[u8]> {
    Some(&bytes[..bytes.len().min(n)])
}

/// Keeps a letter the dead-letter topic refused in PostgreSQL's
/// `parked_letters`, whole, with the reason the topic gave. Parking the same
/// source position again (a batch retried) keeps the first.
pub async fn park(
    db: &DatabaseConnection,
    source_topic: &str,
    letter: &DeadLetter<'_>,
    refusal: &str,
) -> Result<(), DbErr> {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO parked_letters \
           (source_topic, source_partition, source_offset, reason, detail, refusal, key, payload) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING",
        [
            source_topic.into(),
            letter.partition.into(),
            letter.offset.into(),
            letter.reason.as_str().into(),
            letter.detail.clone().into(),
            refusal.into(),
            letter.key.map(<[u8]>::to_vec).into(),
            letter.payload.map(<[u8]>::to_vec).into(),
        ],
    ))
    .await
    .map(|_| ())
}
