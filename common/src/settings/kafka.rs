//! Kafka (`kafka.*`): brokers, topics, the producer, the worker's group,
//! TLS and SASL.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::check_tls_files;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    pub topic: String,
    pub dlq_topic: String,
    /// `migrate` creates the topics (with `partitions` and
    /// `replication_factor`). Off where an operator owns them (Strimzi's
    /// KafkaTopic resources): `migrate` then does not talk to Kafka.
    pub create_topics: bool,
    /// Partitions of the issue topic when `migrate` creates it.
    pub partitions: i32,
    /// Replication factor when `migrate` creates topics (3 on a real cluster).
    pub replication_factor: i32,
    /// `message.timeout.ms`: how long a request may wait for its delivery
    /// report once the gate took its slot.
    pub delivery_timeout_ms: u64,
    pub linger_ms: u64,
    /// The api's quick lane (no linger) takes a message whose reply waits
    /// for its delivery report (`sync`) while fewer than this many are in
    /// flight on both lanes; the batching lane (`linger_ms`) takes the rest,
    /// and every message no reply waits for (`api/src/producer.rs`). Only
    /// `sync`'s replies wait: the other strategies build no quick lane, and
    /// this setting does nothing for them. 0: one lane, the batching one.
    /// 1 (the default): the quick lane only while nothing is in flight, so
    /// a request alone waits for no linger and a loaded producer batches
    /// (docs/PERFORMANCE.md, "The quick lane, only while nothing is in
    /// flight").
    pub quick_lane_depth: u32,
    /// How the api spreads messages over the topic's partitions.
    pub partitioning: Partitioning,
    /// `sticky` partitioning: how long a producer stays on one partition.
    pub sticky_partition_ms: u64,
    /// `compression.codec`: none, gzip, snappy or lz4 (zstd is not compiled
    /// into the bundled librdkafka; the producer refuses it at start-up).
    pub compression: String,
    /// Longest wait for space in the producer's buffer before answering 503.
    pub enqueue_timeout_ms: u64,
    pub group_id: String,
    /// Static membership (`group.instance.id`); unset means dynamic.
    pub group_instance_id: Option<String>,
    pub session_timeout_ms: u64,
    /// `partition.assignment.strategy` of the worker group.
    pub assignment_strategy: String,
    /// The worker's `fetch.min.bytes` / `fetch.wait.max.ms`: the broker
    /// answers a fetch when this much data is there, or after this long.
    /// With 1 byte every produce request answered a fetch of its own, a
    /// couple of messages each at 10 connections, each waking the broker's
    /// handlers and the worker; 16 KiB served more at 10 vusers in 11 pairs
    /// of 12 (−7% to +30%), the same at 100, with the end-to-end lag p99 at
    /// an open 10,000/s at most 75 ms against 100–150, while a row written
    /// at an idle moment waits for the 100 ms (lag p99 at most 125 ms at
    /// 100/s against 20): docs/PERFORMANCE.md, "The worker's fetches".
    pub fetch_min_bytes: u32,
    pub fetch_wait_max_ms: u32,
    /// `security.protocol`: how every client (producer, consumer, admin,
    /// tools) talks to the brokers.
    pub security_protocol: KafkaSecurityProtocol,
    /// `ssl.ca.location`: a PEM file with the CA certificates that signed
    /// the brokers' certificates; unset, the system's trust store. Broker
    /// host names are verified against their certificates.
    pub ssl_ca_location: Option<String>,
    /// `ssl.certificate.location` / `ssl.key.location`: PEM files of a
    /// client certificate and its key, for brokers that authenticate
    /// clients by certificate (mutual TLS).
    pub ssl_certificate_location: Option<String>,
    pub ssl_key_location: Option<String>,
    /// `ssl.key.password`, when the key file is encrypted.
    #[serde(serialize_with = "super::redacted_option")]
    pub ssl_key_password: Option<SecretString>,
    /// `sasl.mechanism` for `sasl_plaintext` / `sasl_ssl`.
    pub sasl_mechanism: SaslMechanism,
    /// `sasl.username` / `sasl.password` (both required with SASL).
    pub sasl_username: Option<String>,
    #[serde(serialize_with = "super::redacted_option")]
    pub sasl_password: Option<SecretString>,
}

/// Kafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KafkaSecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl KafkaSecurityProtocol {
    /// The value librdkafka takes.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    pub fn uses_tls(&self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    pub fn uses_sasl(&self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// Kafka's `sasl.mechanism` (the ones a managed Kafka offers with a user
/// name and password).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
pub enum SaslMechanism {
    #[default]
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::Plain => "PLAIN",
        }
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "coupon.issue.v1".into(),
            dlq_topic: "coupon.issue.v1.dlq".into(),
            create_topics: true,
            partitions: 12,
            replication_factor: 1,
            delivery_timeout_ms: 5_000,
            linger_ms: 1,
            quick_lane_depth: 1,
            partitioning: Partitioning::Sticky,
            sticky_partition_ms: 10,
            compression: "none".into(),
            enqueue_timeout_ms: 50,
            group_id: "coupon-issuer".into(),
            group_instance_id: None,
            session_timeout_ms: 10_000,
            assignment_strategy: "cooperative-sticky".into(),
            fetch_min_bytes: 16 * 1024,
            fetch_wait_max_ms: 100,
            security_protocol: KafkaSecurityProtocol::Plaintext,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            ssl_key_password: None,
            sasl_mechanism: SaslMechanism::ScramSha512,
            sasl_username: None,
            sasl_password: None,
        }
    }
}

/// Where the api's producer puts each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Partitioning {
    /// Every producer writes to one partition for `sticky_partition_ms`,
    /// then moves to another (Kafka's KIP-480, applied to keyed messages):
    /// each produce request carries one large batch instead of a small one
    /// per partition. Nothing here needs a key's messages in one partition:
    /// each (campaign, user) has one message, and the worker deduplicates
    /// on `UNIQUE(campaign_id, user_id)` whichever partition a copy is in.
    #[default]
    Sticky,
    /// The partition is the Java client's murmur2 hash of the key.
    Key,
}

impl KafkaSettings {
    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms)
    }

    /// Why the connection settings cannot work, if they cannot: SASL without
    /// a user name or password (empty counts as missing), a certificate
    /// without its key, a file that is not there. Messages name the setting,
    /// never a secret's value.
    pub(super) fn security_problems(&self, problems: &mut Vec<String>) {
        let protocol = self.security_protocol;
        if protocol.uses_sasl() {
            if self
                .sasl_username
                .as_deref()
                .is_none_or(|u| u.trim().is_empty())
            {
                problems.push(format!(
                    "APP_KAFKA__SASL_USERNAME not set (security protocol {})",
                    protocol.as_str()
                ));
            }
            if self
                .sasl_password
                .as_ref()
                .is_none_or(|p| p.expose_secret().is_empty())
            {
                problems.push(format!(
                    "APP_KAFKA__SASL_PASSWORD not set (security protocol {})",
                    protocol.as_str()
                ));
            }
        }
        let files = [
            ("APP_KAFKA__SSL_CA_LOCATION", &self.ssl_ca_location),
            (
                "APP_KAFKA__SSL_CERTIFICATE_LOCATION",
                &self.ssl_certificate_location,
            ),
            ("APP_KAFKA__SSL_KEY_LOCATION", &self.ssl_key_location),
        ];
        let why_off = format!("APP_KAFKA__SECURITY_PROTOCOL is {}", protocol.as_str());
        check_tls_files(&files, protocol.uses_tls(), &why_off, problems);
        if self.ssl_certificate_location.is_some() != self.ssl_key_location.is_some() {
            problems.push(
                "APP_KAFKA__SSL_CERTIFICATE_LOCATION and APP_KAFKA__SSL_KEY_LOCATION go together"
                    .to_owned(),
            );
        }
    }
}
