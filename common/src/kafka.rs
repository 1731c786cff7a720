//! Kafka client configuration shared by the api's producer, the worker's
//! consumer and DLQ producer, and topic creation.
//!
//! librdkafka is linked from the `rdkafka` crate's bundled build (2.12), the
//! same on every machine, rather than whatever the system ships.

use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use secrecy::ExposeSecret;

use crate::settings::KafkaSettings;

/// The brokers and how to talk to them (TLS, SASL): the base of every
/// client this project makes, tools included. Secrets go to librdkafka
/// only; `ClientConfig` is never logged.
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("security.protocol", settings.security_protocol.as_str());
    let files = [
        ("ssl.ca.location", &settings.ssl_ca_location),
        (
            "ssl.certificate.location",
            &settings.ssl_certificate_location,
        ),
        ("ssl.key.location", &settings.ssl_key_location),
    ];
    for (key, value) in files {
        if let Some(path) = value {
            config.set(key, path);
        }
    }
    if let Some(password) = &settings.ssl_key_password {
        config.set("ssl.key.password", password.expose_secret());
    }
    if settings.security_protocol.uses_sasl() {
        config.set("sasl.mechanism", settings.sasl_mechanism.as_str());
        if let Some(user) = &settings.sasl_username {
            config.set("sasl.username", user);
        }
        if let Some(password) = &settings.sasl_password {
            config.set("sasl.password", password.expose_secret());
        }
    }
    config
}

/// An idempotent producer that waits for all in-sync replicas (`acks=all`),
/// with `message.timeout.ms` bounding how
/// long a message may wait for its delivery report.
pub fn producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = client_config(settings);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            settings.delivery_timeout_ms.to_string(),
        )
        .set("linger.ms", settings.linger_ms.to_string())
        .set("compression.codec", &settings.compression)
        // The Java client's partitioner, so keys land where Kafka tools expect.
        .set("partitioner", "murmur2_random")
        .set("socket.keepalive.enable", "true")
        // Produce requests go out at once, not behind an unacknowledged one:
        // about 5% more issues a second at 100 connections (one instance,
        // interleaved runs, 2026-12-04), nothing lost alone.
        .set("socket.nagle.disable", "true")
        // librdkafka checks message timeouts from the broker's thread, which
        // sleeps up to this backoff while the broker is unreachable: the
        // 10 s default stretched a 3 s delivery timeout to about 9 s.
        .set("reconnect.backoff.max.ms", "500");
    config
}

/// A consumer in the worker's group that stores offsets only when told to
/// (after the database commit) and commits stored offsets in the background.
pub fn consumer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = client_config(settings);
    config
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "partition.assignment.strategy",
            &settings.assignment_strategy,
        )
        .set(
            "session.timeout.ms",
            settings.session_timeout_ms.to_string(),
        )
        .set("fetch.min.bytes", settings.fetch_min_bytes.to_string())
        .set("fetch.wait.max.ms", settings.fetch_wait_max_ms.to_string())
        .set("enable.partition.eof", "false");
    if let Some(id) = &settings.group_instance_id {
        config.set("group.instance.id", id);
    }
    config
}

/// Creates the issue topic and its dead-letter topic when missing.
pub async fn ensure_topics(settings: &KafkaSettings) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(settings)
        .create()
        .context("creating the Kafka admin client")?;
    let replication = || TopicReplication::Fixed(settings.replication_factor);
    let topics = [
        NewTopic::new(&settings.topic, settings.partitions, replication()),
        NewTopic::new(&settings.dlq_topic, 1, replication()),
    ];
    // A broker that refuses the connection's TLS or SASL is retried until
    // the request timeout: 15 s, not librdkafka's 60, so that `migrate`
    // reports it while someone is still watching.
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    let results = admin
        .create_topics(&topics, &options)
        .await
        .with_context(|| format!("creating topics on {}", settings.brokers))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}
