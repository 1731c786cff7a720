//! The loop's watch over partitions held but never started, against
//! librdkafka's own mock broker: the only broker that refuses a whole
//! OffsetFetch on demand. A real one does it while its group coordinator
//! moves, at an instant no test can choose; the fault campaign meets that
//! one (seed 84950045).

use std::collections::BTreeSet;

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use super::*;

const TOPIC: &str = "coupon.issue.v1";
const PARTITIONS: i32 = 3;

/// A worker at the production defaults (but for the assignment `strategy`)
/// on a fresh mock cluster with one message in each partition. PostgreSQL
/// and Redis are never reached: these tests only collect.
fn worker_on(
    cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    strategy: &str,
) -> Worker {
    cluster
        .create_topic(TOPIC, PARTITIONS, 1)
        .expect("creating the topic");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .expect("a producer");
    for p in 0..PARTITIONS {
        producer
            .send(BaseRecord::to(TOPIC).partition(p).key("u").payload("m"))
            .map_err(|(e, _)| e)
            .expect("producing");
    }
    producer
        .flush(Duration::from_secs(10))
        .expect("flushing the producer");
    let mut settings = Settings::default();
    settings.kafka.brokers = cluster.bootstrap_servers();
    settings.kafka.assignment_strategy = strategy.to_owned();
    Worker::new(
        &settings,
        DatabaseConnection::default(),
        WorkerMetrics::new(),
    )
    .expect("a worker")
}

/// A worker at the production defaults that has fetched each partition's
/// message.
async fn fetching_worker(
    cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
) -> Worker {
    let worker = worker_on(cluster, &Settings::default().kafka.assignment_strategy);
    let seen = collect_for(&worker, Duration::from_secs(30)).await;
    assert_eq!(seen.len(), PARTITIONS as usize, "delivered: {seen:?}");
    worker
}

/// Collects as the loop does, for `within`, and returns the partitions
/// whose message arrived.
async fn collect_for(worker: &Worker, within: Duration) -> BTreeSet<i32> {
    let shutdown = CancellationToken::new();
    let mut carry = VecDeque::new();
    let mut watch = tokio::time::interval(WATCH_INTERVAL);
    let mut seen = BTreeSet::new();
    let _ = tokio::time::timeout(within, async {
        while seen.len() < PARTITIONS as usize {
            let batch = worker.collect(&mut carry, &mut watch, &shutdown).await;
            for r in batch.expect("no partitions lost") {
                seen.insert(r.partition);
            }
        }
    })
    .await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_whose_committed_offsets_were_never_read_are_taken_again() {
    let defaults = Settings::default().kafka.assignment_strategy;
    unstarted_partitions_are_taken_again(&defaults).await;
}

/// An eager protocol takes only whole assignments: the whole one is taken
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_eager_protocol_the_whole_assignment_is_taken_again() {
    unstarted_partitions_are_taken_again("range").await;
}

async fn unstarted_partitions_are_taken_again(strategy: &str) {
    let cluster = MockCluster::new(1).expect("a mock cluster");
    // The assignment's one committed-offset read is refused as a whole,
    // as a broker whose group coordinator just moved refuses it.
    cluster.request_errors(
        RDKafkaApiKey::OffsetFetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR],
    );
    let worker = worker_on(&cluster, strategy);
    // The patience, the first statistics and a tick after it, and the
    // mock's first rebalance (3 s) with room for a loaded machine.
    let bound = 3 * UNSTARTED_PATIENCE + 5 * STATISTICS_INTERVAL;
    let started = Instant::now();
    let seen = collect_for(&worker, bound).await;
    assert_eq!(
        seen.len(),
        PARTITIONS as usize,
        "only partitions {seen:?} delivered within {bound:?}"
    );
    assert!(
        worker.metrics.partition_restarts.get() >= 1,
        "delivered after {:?} without taking partitions again: the refusal did not stall them",
        started.elapsed()
    );
    // The gauge is as of the last statistics: one more report.
    let _ = collect_for(&worker, STATISTICS_INTERVAL + Duration::from_secs(1)).await;
    assert_eq!(worker.metrics.unstarted_partitions.get(), 0);
}

/// A partition fetched before and assigned again shows `stopped`, not
/// `none`, while its read is stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_fetched_before_and_assigned_again_unread_are_taken_again() {
    let cluster = MockCluster::new(1).expect("a mock cluster");
    let worker = fetching_worker(&cluster).await;
    // What a rebalance that takes the partitions away and gives them back
    // does, with the read of their offsets refused as it gives them back.
    let mut all = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        all.add_partition(TOPIC, p);
    }
    worker
        .consumer
        .incremental_unassign(&all)
        .expect("giving the partitions back");
    cluster.request_errors(
        RDKafkaApiKey::OffsetFetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR],
    );
    worker
        .consumer
        .incremental_assign(&all)
        .expect("taking the partitions again");
    let bound = 3 * UNSTARTED_PATIENCE + 5 * STATISTICS_INTERVAL;
    let seen = collect_for(&worker, bound).await;
    assert_eq!(
        seen.len(),
        PARTITIONS as usize,
        "only partitions {seen:?} delivered again within {bound:?}"
    );
    assert!(worker.metrics.partition_restarts.get() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_being_fetched_are_never_taken_again() {
    let cluster = MockCluster::new(1).expect("a mock cluster");
    let worker = fetching_worker(&cluster).await;
    // Past the patience with the partitions started and nothing to read.
    let _ = collect_for(&worker, UNSTARTED_PATIENCE + 2 * STATISTICS_INTERVAL).await;
    assert_eq!(worker.metrics.partition_restarts.get(), 0);
    assert_eq!(worker.metrics.unstarted_partitions.get(), 0);
}
