//! Reading the issue topic for reconciliation and rebuild: its end offsets,
//! how far the worker's group has got, and the messages in between.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::message::CouponIssued;
use common::settings::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Offsets per partition.
pub type Offsets = BTreeMap<i32, i64>;

/// A consumer that joins no group: it reads and fetches metadata, and with
/// the worker's group id it can read the group's committed offsets.
fn reader(settings: &KafkaSettings) -> anyhow::Result<BaseConsumer> {
    common::kafka::client_config(settings)
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .context("creating a topic reader")
}

fn partitions(consumer: &BaseConsumer, topic: &str, within: Duration) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer.fetch_metadata(Some(topic), within)?;
    let t = metadata
        .topics()
        .first()
        .ok_or_else(|| anyhow::anyhow!("topic {topic} not found"))?;
    Ok(t.partitions().iter().map(|p| p.id()).collect())
}

/// The next offset to be written on every partition (high watermarks).
pub async fn end_offsets(settings: &KafkaSettings) -> anyhow::Result<Offsets> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        let consumer = reader(&settings)?;
        ends_of(&consumer, &settings.topic, TIMEOUT)
    })
    .await?
}

/// Whether the broker answers the topic's partitions and their end offsets,
/// each request within `within` (the gate keeper's probe). Not the group's
/// committed offsets, which a rebuild reads too: a probe that passes does
/// not promise a rebuild that succeeds. Its client joins no group, so it
/// has no coordinator to look for and closes at once, whatever state the
/// broker is in.
pub async fn answers(settings: &KafkaSettings, within: Duration) -> bool {
    let settings = settings.clone();
    let probe = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = common::kafka::client_config(&settings)
            .set("enable.auto.commit", "false")
            .create()?;
        ends_of(&consumer, &settings.topic, within)
    });
    // A client stuck past its own timeouts (it should not be) costs the
    // caller no more than a few of them: the blocking thread is left to end.
    matches!(tokio::time::timeout(within * 3, probe).await, Ok(Ok(Ok(_))))
}

fn ends_of(consumer: &BaseConsumer, topic: &str, within: Duration) -> anyhow::Result<Offsets> {
    let mut ends = Offsets::new();
    for p in partitions(consumer, topic, within)? {
        let (_, high) = consumer.fetch_watermarks(topic, p, within)?;
        ends.insert(p, high);
    }
    Ok(ends)
}

/// Where the worker's group will resume on every partition: its committed
/// offset, or the log start when it has none.
pub async fn group_positions(settings: &KafkaSettings) -> anyhow::Result<Offsets> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        let consumer = reader(&settings)?;
        let mut tpl = TopicPartitionList::new();
        let all = partitions(&consumer, &settings.topic, TIMEOUT)?;
        for &p in &all {
            tpl.add_partition(&settings.topic, p);
        }
        let committed = consumer.committed_offsets(tpl, TIMEOUT)?;
        let mut positions = Offsets::new();
        for p in all {
            let (low, _) = consumer.fetch_watermarks(&settings.topic, p, TIMEOUT)?;
            let offset = match committed
                .find_partition(&settings.topic, p)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => o,
                _ => low,
            };
            positions.insert(p, offset.max(low));
        }
        Ok(positions)
    })
    .await?
}

/// Waits (at most `patience`) until the group's positions reach `ends` on
/// every partition.
pub async fn wait_for_group(
    settings: &KafkaSettings,
    ends: &Offsets,
    patience: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let positions = group_positions(settings).await?;
        let behind: i64 = ends
            .iter()
            .map(|(p, end)| (end - positions.get(p).copied().unwrap_or(0)).max(0))
            .sum();
        if behind == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < patience,
            "the worker group is still {behind} messages behind after {patience:?}; is the worker running?"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The messages between `from` and `to` (exclusive) on every partition.
/// Messages that do not parse are skipped (they are the DLQ's business).
pub async fn read_range(
    settings: &KafkaSettings,
    from: &Offsets,
    to: &Offsets,
) -> anyhow::Result<Vec<(i32, i64, CouponIssued)>> {
    let settings = settings.clone();
    let (from, to) = (from.clone(), to.clone());
    tokio::task::spawn_blocking(move || {
        let consumer = reader(&settings)?;
        let mut tpl = TopicPartitionList::new();
        let mut remaining = 0i64;
        for (&p, &start) in &from {
            let end = to.get(&p).copied().unwrap_or(start);
            if end > start {
                tpl.add_partition_offset(&settings.topic, p, Offset::Offset(start))?;
                remaining += end - start;
            }
        }
        if remaining == 0 {
            return Ok(Vec::new());
        }
        consumer.assign(&tpl)?;
        let mut messages = Vec::new();
        let started = Instant::now();
        while remaining > 0 {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(300),
                "reading the topic timed out"
            );
            let Some(received) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let m = received?;
            if m.offset() >= to.get(&m.partition()).copied().unwrap_or(0) {
                continue;
            }
            remaining -= 1;
            if let Some(Ok(issued)) = m.payload().map(CouponIssued::decode) {
                messages.push((m.partition(), m.offset(), issued));
            }
        }
        Ok(messages)
    })
    .await?
}
